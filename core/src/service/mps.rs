//! MPS shares (`gpu.mps=<percent>`, `gpu.mps.memory=<size>`).
//!
//! One MPS control daemon per GPU, started on demand with its pipe and log folders under the
//! state directory, shared by that GPU's MPS containers, and told to `quit` when the last one
//! is released. What binds a container (measured on an H100, see docs/mps.md): limits set on
//! the daemon bind every client, and a client can only go lower; limits carried only by the
//! container's env are wishes it can drop. So under the strict policy the daemon carries the
//! ceiling and every container on that GPU gets the same share.
//!
//! A daemon may also serve one MIG instance instead of a whole GPU (an MPS share inside a
//! slice, granted by [`crate::mps_mig`]): its folders are then named for the MIG UUID, the
//! MIG device is its only device, and its clients get that device's nodes.

use crate::compute_mode::ComputeModeError;
use crate::config::{Config, MpsPolicy};
use crate::driver;
use crate::fsutil::now_unix;
use crate::gpu::Gpu;
use crate::gpus::{known_gpus, select, GpuError};
use crate::ledger::{
    Claimant, GpuRecord, Lease, Ledger, LedgerState, MigHost, MpsClient, MpsDaemon,
};
use crate::node::Node;
use crate::request::DeviceSelector;
use crate::spec::{Edit, Mount};
use std::path::PathBuf;
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum MpsError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("no GPU can take an MPS share of {percent}%{memory}: {reasons}")]
    NoRoom {
        percent: u8,
        memory: String,
        reasons: String,
    },
    #[error("cannot start the MPS control daemon {control} for GPU {gpu}: {why}")]
    Start {
        control: String,
        gpu: u32,
        why: String,
    },
    #[error("{what} is more than this node's policy allows (policy.{key} = {limit})")]
    OverPolicy {
        what: String,
        key: &'static str,
        limit: String,
    },
    #[error("policy.max_mps_memory = {value:?} in the config is not a size like 8G")]
    MaxMemory { value: String },
    #[error(transparent)]
    ComputeMode(#[from] crate::compute_mode::ComputeModeError),
    #[error("MPS control daemon of GPU {gpu} refused `{command}`: {why}")]
    Command {
        gpu: u32,
        command: String,
        why: String,
    },
}

crate::gpus::from_gpu_errors!(MpsError);

/// An MPS share granted to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MpsGrant {
    /// The device the container sees: the GPU's UUID, or the MIG UUID of a share in a slice.
    pub gpu_uuid: String,
    pub edit: Edit,
    /// The daemon was already running and the GPU list cached: no NVML, no daemon start.
    pub warm: bool,
    /// Taken by this call (false: the container already held it).
    pub fresh: bool,
}

fn show_memory(memory: Option<u64>) -> String {
    memory.map_or(String::new(), |m| format!(" with {} MiB", m >> 20))
}

pub fn grant(
    cfg: &Config,
    percent: u8,
    memory: Option<u64>,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<MpsGrant, MpsError> {
    let be = crate::nvml::OnDemand::new(cfg);
    let node = crate::node::Host::new(cfg);
    grant_on(cfg, &be, &node, percent, memory, device, who)
}

/// [`grant`] on `be`'s GPUs and `node`'s driver files and processes.
pub fn grant_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    percent: u8,
    memory: Option<u64>,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<MpsGrant, MpsError> {
    check_policy(cfg, percent, memory)?;
    let majors = node.majors()?;
    let locked =
        Ledger::new(&cfg.state_dir).lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut st = locked.load()?;
    if let Some(held) = held_share(cfg, &majors, &st, who) {
        return Ok(held);
    }
    let mut warm = known_gpus(be, &mut st)?;
    crate::compute_mode::repair_and_save(be, &locked, &mut st)?;
    crate::mig_mode::repair_and_save(be, node, &locked, &mut st)?;
    let mut candidates: Vec<String> = Vec::new();
    if select(&st, device)?.iter().all(|g| {
        candidates.push(g.uuid.clone());
        g.mig_enabled
    }) {
        // Every GPU is in MIG mode: mig.manage_mode may turn one off.
        warm = false;
        if let Err(why) = crate::mig_mode::switch_off_one(cfg, be, &locked, &mut st, &candidates)? {
            return Err(MpsError::NoRoom {
                percent,
                memory: show_memory(memory),
                reasons: format!(
                    "every GPU has MIG enabled (ask for gpu.profile there), and gpushare does not turn it off: {}",
                    crate::mig_mode::explain(&why)
                ),
            });
        }
    }
    // GPUs where another process holds a context cannot take a new daemon: the next one may.
    let mut busy: Vec<(String, MpsError)> = Vec::new();
    let (at, gpu) = loop {
        let candidates: Vec<GpuRecord> = select(&st, device)?
            .into_iter()
            .filter(|g| !busy.iter().any(|(u, _)| *u == g.uuid))
            .cloned()
            .collect();
        if candidates.is_empty() {
            if let Some((_, e)) = busy.pop() {
                return Err(e);
            }
        }
        let gpu = match choose_gpu(cfg, &st, &candidates, percent, memory) {
            Err(MpsError::NoRoom {
                percent,
                memory,
                reasons,
            }) if !busy.is_empty() => {
                let mut all: Vec<String> = busy.iter().map(|(_, e)| e.to_string()).collect();
                all.extend((!reasons.is_empty()).then_some(reasons));
                return Err(MpsError::NoRoom {
                    percent,
                    memory,
                    reasons: all.join("; "),
                });
            }
            g => g?,
        };
        let at = match st
            .mps
            .iter()
            .position(|d| d.gpu_uuid == gpu.uuid && d.mig.is_none())
        {
            Some(i) if running(node, &st.mps[i]) => i,
            Some(i) => {
                tracing::warn!(gpu = gpu.index, "the MPS daemon died; starting it again");
                let (p, m) = (st.mps[i].percent, st.mps[i].memory);
                let fresh = start_exclusive(cfg, be, node, &locked, &mut st, &gpu, p, m)?;
                st.mps[i] = MpsDaemon {
                    clients: std::mem::take(&mut st.mps[i].clients),
                    ..fresh
                };
                warm = false;
                i
            }
            None => {
                let (p, m) = match cfg.mps.policy {
                    MpsPolicy::Strict => (percent, memory),
                    MpsPolicy::Cooperative => (100, None),
                };
                match start_exclusive(cfg, be, node, &locked, &mut st, &gpu, p, m) {
                    Ok(d) => st.mps.push(d),
                    Err(e @ MpsError::ComputeMode(ComputeModeError::Busy { .. })) => {
                        busy.push((gpu.uuid.clone(), e));
                        continue;
                    }
                    Err(e) => return Err(e),
                }
                warm = false;
                st.mps.len() - 1
            }
        };
        break (at, gpu);
    };
    let lease = Lease {
        container_id: who.container_id.to_string(),
        since: now_unix(),
        runtime_root: who.runtime_root.map(str::to_string),
    };
    st.mps[at].clients.push(MpsClient {
        lease,
        percent,
        memory,
    });
    crate::mig_mode::settled(&mut st, &gpu.uuid);
    locked.save(&st)?;
    let edit = client_edit(cfg, &majors, &st.mps[at], percent, memory);
    Ok(MpsGrant {
        fresh: true,
        gpu_uuid: gpu.uuid,
        edit,
        warm,
    })
}

/// [`start`], on a GPU made EXCLUSIVE_PROCESS first where `mps.exclusive` asks for it; a
/// daemon that fails to start gives the mode back.
#[allow(clippy::too_many_arguments)]
fn start_exclusive(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    locked: &crate::ledger::Locked,
    st: &mut LedgerState,
    gpu: &GpuRecord,
    percent: u8,
    memory: Option<u64>,
) -> Result<MpsDaemon, MpsError> {
    if !cfg.mps.exclusive {
        return start(cfg, node, gpu, None, percent, memory);
    }
    crate::compute_mode::take(be, locked, st, gpu)?;
    start(cfg, node, gpu, None, percent, memory).inspect_err(|_| {
        // Only a GPU without a daemon entry gets its mode back: a restarted daemon's clients
        // keep theirs, and `gc` or the next grant settles it.
        if st
            .mps
            .iter()
            .any(|d| d.gpu_uuid == gpu.uuid && d.mig.is_none())
        {
            return;
        }
        match crate::compute_mode::give_back(be, st, &gpu.uuid) {
            Ok(_) => {
                let _ = locked.save(st);
            }
            Err(e) => tracing::warn!(gpu = gpu.index, "putting the compute mode back: {e}"),
        }
    })
}

/// The node's ceilings on what a tenant may ask for.
pub(crate) fn check_policy(cfg: &Config, percent: u8, memory: Option<u64>) -> Result<(), MpsError> {
    if percent > cfg.policy.max_mps_percent {
        return Err(MpsError::OverPolicy {
            what: format!("gpu.mps={percent}"),
            key: "max_mps_percent",
            limit: cfg.policy.max_mps_percent.to_string(),
        });
    }
    if let Some(max) = &cfg.policy.max_mps_memory {
        let limit = crate::request::size_bytes(max)
            .ok_or_else(|| MpsError::MaxMemory { value: max.clone() })?;
        // A share with no memory limit could pin the whole GPU.
        if memory.is_none_or(|m| m > limit) {
            return Err(MpsError::OverPolicy {
                what: memory.map_or("an MPS share without gpu.mps.memory".into(), |m| {
                    format!("gpu.mps.memory={} MiB", m >> 20)
                }),
                key: "max_mps_memory",
                limit: max.clone(),
            });
        }
    }
    Ok(())
}

/// The GPU for a new share: one whose daemon already serves this share size, else one with
/// no daemon; never one with MIG enabled, nor one whose pinned-memory limits would add up to
/// more than it has (unless over-commit is allowed).
fn choose_gpu(
    cfg: &Config,
    st: &LedgerState,
    candidates: &[GpuRecord],
    percent: u8,
    memory: Option<u64>,
) -> Result<GpuRecord, MpsError> {
    let mut reasons = Vec::new();
    let mut best: Option<(u8, &GpuRecord)> = None;
    for g in candidates {
        if st.shares.iter().any(|s| s.gpu_uuid == g.uuid) {
            reasons.push(format!(
                "GPU {} is time-sliced whole to other containers (no share can be enforced there)",
                g.index
            ));
            continue;
        }
        if g.mig_enabled {
            reasons.push(format!(
                "GPU {} has MIG enabled (ask for gpu.profile there)",
                g.index
            ));
            continue;
        }
        let daemon = st
            .mps
            .iter()
            .find(|d| d.gpu_uuid == g.uuid && d.mig.is_none());
        if let (Some(d), MpsPolicy::Strict) = (daemon, cfg.mps.policy) {
            if (d.percent, d.memory) != (percent, memory) {
                reasons.push(format!(
                    "GPU {} serves shares of {}%{} (strict policy: one share size per GPU, enforced by its MPS daemon)",
                    g.index,
                    d.percent,
                    show_memory(d.memory)
                ));
                continue;
            }
        }
        if let (Some(m), false) = (memory, cfg.mps.allow_overcommit) {
            let used: u64 = daemon.map_or(0, |d| d.clients.iter().filter_map(|c| c.memory).sum());
            if g.memory_total > 0 && used + m > g.memory_total {
                reasons.push(format!(
                    "GPU {} has {} MiB of {} MiB promised to MPS clients already (over-commit is off: mps.allow_overcommit)",
                    g.index,
                    used >> 20,
                    g.memory_total >> 20
                ));
                continue;
            }
        }
        // Prefer joining a running daemon (no start), then the lowest index.
        let rank = if daemon.is_some() { 0 } else { 1 };
        if best.is_none_or(|(r, b)| rank < r || (rank == r && g.index < b.index)) {
            best = Some((rank, g));
        }
    }
    match best {
        Some((_, g)) => Ok(g.clone()),
        None => Err(MpsError::NoRoom {
            percent,
            memory: show_memory(memory),
            reasons: reasons.join("; "),
        }),
    }
}

/// The share `who` already holds, in a whole GPU or a MIG device: the same container asking
/// again (an engine retrying create) keeps its share, with no NVML and no daemon start.
pub(crate) fn held_share(
    cfg: &Config,
    majors: &driver::Majors,
    st: &LedgerState,
    who: &Claimant<'_>,
) -> Option<MpsGrant> {
    st.mps.iter().find_map(|d| {
        let c = d
            .clients
            .iter()
            .find(|c| c.lease.container_id == who.container_id)?;
        Some(MpsGrant {
            gpu_uuid: d.device_uuid().to_string(),
            edit: client_edit(cfg, majors, d, c.percent, c.memory),
            warm: true,
            fresh: false,
        })
    })
}

pub(crate) fn client_edit(
    cfg: &Config,
    majors: &driver::Majors,
    d: &MpsDaemon,
    percent: u8,
    memory: Option<u64>,
) -> Edit {
    let mut devices = driver::gpu_nodes(majors, d.gpu_minor);
    if let Some(h) = &d.mig {
        // Only the daemon's MIG device: the GPU's other slices stay closed to its clients.
        devices.extend(driver::cap_nodes(majors, h.gi_cap_minor, h.ci_cap_minor));
    }
    Edit {
        devices,
        env: client_env(cfg, d, percent, memory),
        mounts: vec![Mount {
            destination: cfg.mps.mount_path.clone(),
            source: d.pipe_dir.display().to_string(),
            kind: "bind".into(),
            options: ["rbind", "ro", "nosuid", "nodev", "noexec"]
                .map(String::from)
                .to_vec(),
        }],
        ..Edit::default()
    }
}

/// The env of an MPS client of daemon `d` with this share: what its container gets, and what
/// every process exec'd into it gets too.
pub(crate) fn client_env(
    cfg: &Config,
    d: &MpsDaemon,
    percent: u8,
    memory: Option<u64>,
) -> Vec<(String, String)> {
    let device = d.device_uuid().to_string();
    let mut env = vec![
        ("CUDA_VISIBLE_DEVICES".to_string(), device.clone()),
        ("NVIDIA_VISIBLE_DEVICES".to_string(), device),
        (
            "CUDA_MPS_PIPE_DIRECTORY".to_string(),
            cfg.mps.mount_path.clone(),
        ),
        (
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".to_string(),
            percent.to_string(),
        ),
    ];
    if let Some(m) = memory {
        // Device 0: the container sees exactly one GPU (or MIG device).
        env.push((
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".to_string(),
            format!("0={}M", m >> 20),
        ));
    }
    env
}

/// Release `container_id`'s MPS share; the daemon is told to quit when its last client goes.
/// Returns whether it held a share.
pub fn release_client(cfg: &Config, st: &mut LedgerState, container_id: &str) -> bool {
    let be = crate::nvml::OnDemand::new(cfg);
    release_client_on(cfg, &be, &crate::node::Host::new(cfg), st, container_id)
}

/// [`release_client`] on `be`'s GPUs and `node`'s processes.
pub fn release_client_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    st: &mut LedgerState,
    container_id: &str,
) -> bool {
    let Some(i) = st.mps.iter().position(|d| {
        d.clients
            .iter()
            .any(|c| c.lease.container_id == container_id)
    }) else {
        return false;
    };
    st.mps[i]
        .clients
        .retain(|c| c.lease.container_id != container_id);
    if st.mps[i].clients.is_empty() {
        let d = st.mps.remove(i);
        if let Err(e) = stop(cfg, node, &d) {
            tracing::warn!(gpu = d.gpu_index, "stopping the MPS daemon: {e}");
            eprintln!("gpushare: {e}");
        }
        if let Some(h) = &d.mig {
            // The slice goes back to the idle pool; a MIG device's compute mode was never set.
            return_instance(st, h);
            return true;
        }
        // After the daemon quit: the record stays for `gc` if the mode cannot be put back.
        if let Err(e) = crate::compute_mode::give_back(be, st, &d.gpu_uuid) {
            tracing::warn!(gpu = d.gpu_index, "putting the compute mode back: {e}");
            eprintln!(
                "gpushare: putting the compute mode of GPU {} back: {e} (`gpusharectl gc` retries)",
                d.gpu_index
            );
        }
    }
    true
}

/// The instance daemon `h` served goes back to the idle pool (its daemon is gone).
pub(crate) fn return_instance(st: &mut LedgerState, h: &MigHost) {
    let now = now_unix();
    for r in st
        .instances
        .iter_mut()
        .filter(|r| r.mps && r.made.as_ref().is_some_and(|m| m.mig_uuid == h.mig_uuid))
    {
        r.mps = false;
        r.idle_since = Some(now);
    }
}

/// The control program's absolute path.
pub fn control_path(cfg: &Config) -> Option<PathBuf> {
    let c = &cfg.mps.control;
    if c.is_absolute() {
        return c.exists().then(|| c.clone());
    }
    crate::config::find_in_path(c).or_else(|| {
        cfg.inject
            .bin_dirs
            .iter()
            .map(|d| cfg.driver_path(&d.join(c).to_string_lossy()))
            .find(|p| p.exists())
    })
}

/// The daemon's pipe and log folders, named for the device it serves (GPU or MIG UUID).
pub(crate) fn daemon_dirs(cfg: &Config, device_uuid: &str) -> (PathBuf, PathBuf) {
    let base = cfg
        .state_dir
        .join(gpushare_state::MPS_DIR)
        .join(device_uuid);
    (base.join("pipe"), base.join("log"))
}

/// Start a daemon for `gpu`, or for its MIG device `mig`, whose defaults carry the share.
pub(crate) fn start(
    cfg: &Config,
    node: &dyn Node,
    gpu: &GpuRecord,
    mig: Option<&MigHost>,
    percent: u8,
    memory: Option<u64>,
) -> Result<MpsDaemon, MpsError> {
    let fail = |why: String| MpsError::Start {
        control: cfg.mps.control.display().to_string(),
        gpu: gpu.index,
        why,
    };
    let control =
        control_path(cfg).ok_or_else(|| fail("not found on PATH nor in inject.bin_dirs".into()))?;
    let device = mig.map_or(gpu.uuid.as_str(), |h| h.mig_uuid.as_str());
    let (pipe_dir, log_dir) = daemon_dirs(cfg, device);
    // A dead daemon leaves its sockets behind; a new one must not find them.
    let _ = std::fs::remove_dir_all(&pipe_dir);
    for d in [&pipe_dir, &log_dir] {
        std::fs::create_dir_all(d).map_err(|e| fail(format!("{}: {e}", d.display())))?;
        use std::os::unix::fs::PermissionsExt;
        // Clients of any uid connect through the pipe folder.
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    let dirs = crate::node::MpsDaemonDirs {
        control: &control,
        pipe_dir: &pipe_dir,
        log_dir: &log_dir,
    };
    node.mps_start(&dirs, device, cfg.mps.multi_user)
        .map_err(fail)?;
    let deadline = Instant::now() + Duration::from_millis(cfg.mps.start_timeout_ms);
    while !pipe_dir.join("control").exists() || read_pid(&pipe_dir).is_none() {
        if Instant::now() > deadline {
            return Err(fail(format!(
                "no control socket after {} ms; see {}",
                cfg.mps.start_timeout_ms,
                log_dir.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let pid = read_pid(&pipe_dir);
    let daemon = MpsDaemon {
        gpu_uuid: gpu.uuid.clone(),
        gpu_index: gpu.index,
        gpu_minor: gpu.minor,
        pid,
        pipe_dir,
        log_dir,
        percent,
        memory,
        started_at: now_unix(),
        clients: Vec::new(),
        mig: mig.cloned(),
    };
    if percent < 100 {
        command(
            cfg,
            node,
            &daemon,
            &format!("set_default_active_thread_percentage {percent}"),
        )?;
    }
    if let Some(m) = memory {
        command(
            cfg,
            node,
            &daemon,
            &format!("set_default_device_pinned_mem_limit 0 {}M", m >> 20),
        )?;
    }
    tracing::info!(
        gpu = gpu.index,
        pid,
        percent,
        "started the MPS control daemon"
    );
    Ok(daemon)
}

/// The pid the daemon serving `pipe_dir` wrote there.
fn read_pid(pipe_dir: &std::path::Path) -> Option<u32> {
    std::fs::read_to_string(pipe_dir.join("nvidia-cuda-mps-control.pid"))
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
}

/// One command to the control daemon, through the control program's stdin; bounded in time.
pub fn command(
    cfg: &Config,
    node: &dyn Node,
    d: &MpsDaemon,
    line: &str,
) -> Result<String, MpsError> {
    let fail = |why: String| MpsError::Command {
        gpu: d.gpu_index,
        command: line.to_string(),
        why,
    };
    let control = control_path(cfg).ok_or_else(|| fail("control program not found".into()))?;
    let dirs = crate::node::MpsDaemonDirs {
        control: &control,
        pipe_dir: &d.pipe_dir,
        log_dir: &d.log_dir,
    };
    node.mps_command(&dirs, line).map_err(fail)
}

/// The daemon is running: its process exists (and is no zombie a killed daemon leaves until
/// it is reaped) and its control socket is there.
pub fn alive(d: &MpsDaemon) -> bool {
    d.pid
        .is_some_and(|pid| i32::try_from(pid).is_ok_and(crate::running::alive))
        && d.pipe_dir.join("control").exists()
}

/// [`alive`], asking `node` whether the process runs.
fn running(node: &dyn Node, d: &MpsDaemon) -> bool {
    d.pid.is_some_and(|pid| node.process_running(pid)) && d.pipe_dir.join("control").exists()
}

pub(crate) fn stop(cfg: &Config, node: &dyn Node, d: &MpsDaemon) -> Result<(), MpsError> {
    // A record saved before its daemon's pid was known (a grant killed while it started the
    // daemon): the pid file says whether one runs there.
    let found;
    let d = match d.pid {
        Some(_) => d,
        None => {
            found = MpsDaemon {
                pid: read_pid(&d.pipe_dir),
                ..d.clone()
            };
            &found
        }
    };
    if running(node, d) {
        command(cfg, node, d, "quit")?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while running(node, d) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        if let (true, Some(pid)) = (running(node, d), d.pid) {
            tracing::warn!(
                gpu = d.gpu_index,
                pid,
                "the MPS daemon ignored quit; killing it"
            );
            node.kill(pid);
        }
    }
    let _ = std::fs::remove_dir_all(&d.pipe_dir);
    tracing::info!(gpu = d.gpu_index, "stopped the MPS control daemon");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{ComputeModeRecord, Mode};
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};
    use nvml_wrapper::enum_wrappers::device::ComputeMode;

    const PID: u32 = 777_777;

    fn who(id: &str) -> Claimant<'_> {
        Claimant {
            container_id: id,
            runtime_root: None,
        }
    }

    fn lease(id: &str) -> Lease {
        Lease {
            container_id: id.into(),
            since: now_unix(),
            runtime_root: None,
        }
    }

    /// One whole H100 (MIG off) in the ledger's cache, served by a daemon at `percent` with
    /// `clients`, whose pipe folder has its control socket.
    fn node_with_daemon(s: &Scratch, gpu: &FakeGpu, percent: u8, clients: &[&str]) -> LedgerState {
        let mut st = LedgerState::default();
        crate::gpus::refresh_gpus(gpu, &mut st, &gpu.gpus().unwrap()).unwrap();
        let pipe_dir = s.dir().join("pipe");
        std::fs::create_dir_all(&pipe_dir).unwrap();
        std::fs::write(pipe_dir.join("control"), "").unwrap();
        st.mps.push(MpsDaemon {
            gpu_uuid: gpu.info(0).uuid,
            gpu_index: 0,
            gpu_minor: 0,
            pid: Some(PID),
            pipe_dir,
            log_dir: s.dir().join("log"),
            percent,
            memory: None,
            started_at: now_unix(),
            clients: clients
                .iter()
                .map(|id| MpsClient {
                    lease: lease(id),
                    percent,
                    memory: None,
                })
                .collect(),
            mig: None,
        });
        gpu.clear_calls();
        st
    }

    fn whole_gpu() -> FakeGpu {
        let gpu = FakeGpu::h100(1);
        gpu.set_mig(0, false);
        gpu
    }

    #[test]
    fn a_gpu_where_another_process_holds_a_context_gets_no_daemon_and_keeps_its_mode() {
        let s = Scratch::new("mps-busy");
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        gpu.set_contexts(0, &[4242]);

        let err = grant_on(&s.cfg, &gpu, &node, 25, None, None, &who("a")).unwrap_err();
        assert!(
            matches!(
                &err,
                MpsError::ComputeMode(ComputeModeError::Busy { gpu: 0, pids }) if pids == "4242"
            ),
            "{err:?}"
        );
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "the mode is not touched");
        assert_eq!(gpu.mode(0), ComputeMode::Default);
        let st = s.ledger();
        assert!(st.mps.is_empty() && st.compute_modes.is_empty(), "{st:?}");
    }

    #[test]
    fn a_share_joins_the_running_daemon_with_no_start_and_no_nvml() {
        let s = Scratch::new("mps-join");
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        s.save(&node_with_daemon(&s, &gpu, 25, &["first"]));
        node.add_process(PID);

        let g = grant_on(&s.cfg, &gpu, &node, 25, None, None, &who("second")).unwrap();
        assert!(g.warm && g.fresh);
        assert_eq!(gpu.calls(), Vec::<Call>::new());
        assert!(g
            .edit
            .env
            .contains(&("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), "25".into())));
        let st = s.ledger();
        assert_eq!(st.mps.len(), 1);
        assert_eq!(st.mps[0].pid, Some(PID), "the same daemon");
        let clients: Vec<&str> = st.mps[0]
            .clients
            .iter()
            .map(|c| c.lease.container_id.as_str())
            .collect();
        assert_eq!(clients, vec!["first", "second"]);
    }

    #[test]
    fn under_the_strict_policy_a_daemon_serves_one_share_size() {
        let s = Scratch::new("mps-strict");
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        s.save(&node_with_daemon(&s, &gpu, 25, &["first"]));
        node.add_process(PID);

        let err = grant_on(&s.cfg, &gpu, &node, 50, None, None, &who("second")).unwrap_err();
        assert!(
            err.to_string().contains("GPU 0 serves shares of 25%"),
            "{err}"
        );
        assert_eq!(gpu.calls(), Vec::<Call>::new());
        assert_eq!(s.ledger().mps[0].clients.len(), 1);
    }

    /// A config whose control program exists (the double never runs it).
    fn with_control(mut s: Scratch) -> Scratch {
        s.cfg.mps.control = PathBuf::from("/bin/sh");
        s
    }

    #[test]
    fn a_first_share_makes_the_gpu_exclusive_and_starts_a_daemon_that_carries_its_limits() {
        let s = with_control(Scratch::new("mps-start"));
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        let uuid = gpu.info(0).uuid;

        let g = grant_on(&s.cfg, &gpu, &node, 25, Some(4 << 30), None, &who("a")).unwrap();
        assert!(g.fresh && !g.warm);
        assert_eq!(
            gpu.changes(),
            vec![Call::SetComputeMode {
                gpu: 0,
                mode: ComputeMode::ExclusiveProcess
            }]
        );
        assert_eq!(
            node.mps_log(),
            vec![
                format!("start {uuid} -d -M"),
                "set_default_active_thread_percentage 25".into(),
                "set_default_device_pinned_mem_limit 0 4096M".into(),
            ]
        );
        let st = s.ledger();
        assert_eq!(st.compute_modes.len(), 1);
        assert_eq!(st.compute_modes[0].found, Mode::Default, "what to put back");
        assert_eq!(st.mps.len(), 1);
        assert_eq!((st.mps[0].pid, st.mps[0].percent), (Some(50_000), 25));
        assert_eq!(st.mps[0].clients.len(), 1);
    }

    #[test]
    fn mig_is_turned_off_for_a_share_once_no_slice_or_mps_client_holds_the_gpu() {
        let mut s = with_control(Scratch::new("mps-mig-switch"));
        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        crate::allocator::allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who("m")).unwrap();
        crate::mps_mig::grant_on(
            &s.cfg,
            &gpu,
            &node,
            "3g.40gb",
            50,
            None,
            None,
            &who("in-slice"),
        )
        .unwrap();
        gpu.clear_calls();
        let err = grant_on(&s.cfg, &gpu, &node, 25, None, None, &who("a")).unwrap_err();
        let said = err.to_string();
        assert!(
            said.contains("m, in-slice hold(s) it"),
            "the slice's container and the client of the daemon in a slice: {said}"
        );
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "nothing switched");
        let mut st = s.ledger();
        assert!(st.release("m"));
        assert!(release_client_on(&s.cfg, &gpu, &node, &mut st, "in-slice"));
        s.save(&st);
        gpu.clear_calls();

        let g = grant_on(&s.cfg, &gpu, &node, 25, None, None, &who("a")).unwrap();
        assert_eq!(g.gpu_uuid, gpu.info(0).uuid, "the whole GPU");
        let changes = gpu.changes();
        let destroyed = changes
            .iter()
            .filter(|c| matches!(c, Call::Destroy { .. }))
            .count();
        assert_eq!(destroyed, 2, "both idle slices first: {changes:?}");
        assert_eq!(
            changes[2..],
            [
                Call::SetMigMode { gpu: 0, on: false },
                Call::SetComputeMode {
                    gpu: 0,
                    mode: ComputeMode::ExclusiveProcess
                }
            ],
            "{changes:?}"
        );
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)));
        let st = s.ledger();
        assert!(st.instances.is_empty() && st.mig_modes.is_empty(), "{st:?}");
        assert_eq!(st.mps.len(), 1);
        assert!(st.mps[0].mig.is_none() && !st.gpus[0].mig_enabled);
    }

    #[test]
    fn a_dead_daemon_is_started_again_and_keeps_its_clients() {
        let s = with_control(Scratch::new("mps-restart"));
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        let mut st = node_with_daemon(&s, &gpu, 25, &["first"]);
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: gpu.info(0).uuid,
            gpu_index: 0,
            found: Mode::Default,
            since: now_unix(),
        });
        gpu.put_mode(0, ComputeMode::ExclusiveProcess);
        s.save(&st);
        // PID does not run on the node: the daemon died.

        let g = grant_on(&s.cfg, &gpu, &node, 25, None, None, &who("second")).unwrap();
        assert!(g.fresh && !g.warm);
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "already exclusive");
        assert_eq!(
            node.mps_log(),
            vec![
                format!("start {} -d -M", gpu.info(0).uuid),
                "set_default_active_thread_percentage 25".into(),
            ]
        );
        let st = s.ledger();
        assert_eq!(st.mps[0].pid, Some(50_000), "the new daemon");
        let clients: Vec<&str> = st.mps[0]
            .clients
            .iter()
            .map(|c| c.lease.container_id.as_str())
            .collect();
        assert_eq!(clients, vec!["first", "second"]);
        assert_eq!(st.compute_modes.len(), 1, "the first record is kept");
    }

    #[test]
    fn the_last_client_of_a_running_daemon_tells_it_to_quit() {
        let s = with_control(Scratch::new("mps-quit"));
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        let mut st = node_with_daemon(&s, &gpu, 25, &["a"]);
        node.add_process(PID);
        std::fs::write(
            st.mps[0].pipe_dir.join("nvidia-cuda-mps-control.pid"),
            format!("{PID}\n"),
        )
        .unwrap();

        assert!(release_client_on(&s.cfg, &gpu, &node, &mut st, "a"));
        assert_eq!(node.mps_log(), vec!["quit".to_string()]);
        assert!(!node.process_running(PID));
        assert!(st.mps.is_empty());
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "no mode was recorded");
    }

    #[test]
    fn the_last_client_gone_stops_the_daemon_and_puts_the_mode_back() {
        let s = Scratch::new("mps-release");
        let gpu = whole_gpu();
        let node = FakeNode::new(&gpu);
        let mut st = node_with_daemon(&s, &gpu, 25, &["a", "b"]);
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: gpu.info(0).uuid,
            gpu_index: 0,
            found: Mode::Default,
            since: now_unix(),
        });
        gpu.put_mode(0, ComputeMode::ExclusiveProcess);
        // The daemon's process is gone already (the node does not run PID): nothing to tell.

        assert!(release_client_on(&s.cfg, &gpu, &node, &mut st, "a"));
        assert_eq!(st.mps.len(), 1, "b still uses it");
        assert_eq!(gpu.calls(), Vec::<Call>::new());

        assert!(release_client_on(&s.cfg, &gpu, &node, &mut st, "b"));
        assert!(st.mps.is_empty());
        assert!(st.compute_modes.is_empty());
        assert_eq!(
            gpu.changes(),
            vec![Call::SetComputeMode {
                gpu: 0,
                mode: ComputeMode::Default
            }]
        );
        assert_eq!(gpu.mode(0), ComputeMode::Default);
        assert!(!s.dir().join("pipe").exists(), "its sockets are gone");
        assert!(!release_client_on(&s.cfg, &gpu, &node, &mut st, "b"));
    }
}
