//! What `gpusharectl status` shows: the GPUs as NVML sees them (compute mode included), every
//! MIG instance (gpushare's, busy, idle or serving MPS shares, and anyone else's), the leases
//! of every kind (MIG slices, MPS shares, time-sliced GPUs) in one list, and free capacity per
//! profile. Read as a hierarchy: GPU, then the mode it serves in, then its MIG instances, then
//! the MPS clients of a daemon (of the whole GPU, or of one instance).

use crate::config::Config;
use crate::ledger::{self, LedgerState, Mode};
use crate::nvml::{self, Backend};
use crate::placement;
use serde::Serialize;

/// What keeps `status` from reading the node: the ledger or NVML.
#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    #[error(transparent)]
    Ledger(#[from] ledger::LedgerError),
    #[error(transparent)]
    Backend(#[from] nvml::BackendError),
}

#[derive(Debug, Serialize)]
pub struct Status {
    pub driver_version: Option<String>,
    /// `mps.exclusive`: GPUs serving MPS shares are held in EXCLUSIVE_PROCESS.
    pub mps_exclusive: bool,
    pub gpus: Vec<GpuStatus>,
    pub leases: Vec<LeaseStatus>,
    pub stats: crate::stats::Stats,
}

#[derive(Debug, Serialize)]
pub struct GpuStatus {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub mig_enabled: bool,
    /// How the GPU serves now: `mig` (MIG enabled: slices, some perhaps serving MPS),
    /// `mps` (one MPS daemon for the whole GPU), `timeslice`, or `free` (MIG off, nothing of
    /// gpushare's on it).
    pub mode: &'static str,
    pub instances: Vec<InstanceStatus>,
    /// How many more instances of each profile could be made now.
    pub free: Vec<(String, u32)>,
    /// Grants (warm: from the idle pool) and refusals for lack of room on this GPU.
    pub counters: crate::stats::GpuCounters,
    /// NVML's MIG profile table (answered even while MIG is disabled).
    pub profiles: Vec<placement::Profile>,
    /// The MPS daemon of the whole GPU (MIG off); a MIG instance's is under the instance.
    pub mps: Option<MpsStatus>,
    pub timeslice_containers: Vec<String>,
    /// As nvidia-smi names it (`Default`, `Exclusive_Process`, ...); None where NVML has no
    /// compute mode for the GPU (MIG enabled).
    pub compute_mode: Option<String>,
    /// The mode gpushare found and puts back once this GPU's MPS daemon is gone.
    pub compute_mode_found: Option<String>,
    /// A MIG mode change the driver holds until a GPU reset: the mode it would become.
    pub mig_pending: Option<bool>,
    /// A MIG mode switch a crash left unsettled: the mode found, which the next grant or `gc`
    /// puts back.
    pub mig_switch_found: Option<bool>,
    /// What the GPU would need to serve each kind of request now (`mig.manage_mode`'s part).
    pub needs: Vec<crate::readiness::Need>,
}

#[derive(Debug, Serialize)]
pub struct MpsStatus {
    pub pid: Option<u32>,
    pub running: bool,
    /// The daemon's defaults: enforced on every client, which can only go lower.
    pub enforced_percent: u8,
    pub enforced_memory_mib: Option<u64>,
    /// (container, percent, memory MiB): what each container's env asks for.
    pub clients: Vec<(String, u8, Option<u64>)>,
    /// The GPU is in EXCLUSIVE_PROCESS: no client can leave the daemon for a context of its
    /// own. False: a client that points CUDA at another pipe folder escapes every limit.
    pub exclusive: bool,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub profile: String,
    pub gi: u32,
    pub ci: Option<u32>,
    pub placement: placement::Slot,
    pub mig_uuid: Option<String>,
    /// "busy", "idle", "mps" (serving MPS shares), or "foreign" (made by someone else).
    pub state: &'static str,
    pub container_id: Option<String>,
    /// The MPS daemon serving this instance, with its clients.
    pub mps: Option<MpsStatus>,
}

#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    pub container_id: String,
    pub gpu: u32,
    /// MIG: the profile; MPS and time-slicing: the share (`25% + 4096 MiB`, `whole GPU`,
    /// `25% of 3g.40gb` for a share inside a MIG instance).
    pub profile: String,
    /// None for MPS shares of a whole GPU and time-sliced GPUs.
    pub mig_uuid: Option<String>,
    /// Unix time the lease was granted.
    pub since: u64,
    /// `mig`, `mps` or `timeslice`.
    pub mode: &'static str,
    pub gpu_uuid: String,
}

pub fn collect(cfg: &Config) -> Result<Status, StatusError> {
    let st: LedgerState = ledger::snapshot(&cfg.state_dir)?;
    let be = Backend::open(cfg)?;
    let mut gpus = Vec::new();
    for g in be.gpus()? {
        let profiles = be.profiles(g.index)?;
        let mig_enabled = g.mig_mode.is_some_and(|(current, _)| current);
        let existing = if mig_enabled {
            be.gpu_instances(g.index, &profiles)?
        } else {
            Vec::new()
        };
        let occupied = nvml::occupancy(&existing);
        let instances: Vec<InstanceStatus> = existing
            .iter()
            .map(|gi| {
                let ours = st.instances.iter().find(|r| {
                    r.gpu_uuid == g.uuid
                        && r.made.as_ref().is_some_and(|m| m.gi == gi.id)
                        && r.slot == gi.slot
                });
                let name = profiles
                    .iter()
                    .find(|p| p.id == gi.profile_id)
                    .map_or_else(|| format!("profile {}", gi.profile_id), |p| p.name.clone());
                let mig_uuid = ours.and_then(|r| r.made.as_ref().map(|m| m.mig_uuid.clone()));
                let daemon = st.mps.iter().find(|d| {
                    d.mig
                        .as_ref()
                        .is_some_and(|h| Some(&h.mig_uuid) == mig_uuid.as_ref())
                });
                InstanceStatus {
                    profile: name,
                    gi: gi.id,
                    ci: gi.compute_instances.first().copied(),
                    placement: gi.slot,
                    mig_uuid,
                    state: match ours {
                        Some(r) if r.lease.is_some() => "busy",
                        Some(r) if r.mps => "mps",
                        Some(_) => "idle",
                        None => "foreign",
                    },
                    container_id: ours
                        .and_then(|r| r.lease.as_ref().map(|l| l.container_id.clone())),
                    // A MIG device has no EXCLUSIVE_PROCESS to hold its daemon's clients.
                    mps: daemon.map(|d| mps_status(d, false)),
                }
            })
            .collect();
        let free = if mig_enabled {
            profiles
                .iter()
                .map(|p| (p.name.clone(), placement::capacity(p, &occupied)))
                .collect()
        } else {
            Vec::new()
        };
        // A driver that cannot say is shown as such, not a failed status.
        let compute_mode = be
            .compute_mode(g.index)
            .unwrap_or_else(|e| {
                tracing::warn!(gpu = g.index, "compute mode: {e}");
                None
            })
            .map(|m| Mode::from(m).name().to_string());
        let exclusive = compute_mode.as_deref() == Some(Mode::ExclusiveProcess.name());
        let compute_mode_found = st
            .compute_modes
            .iter()
            .find(|r| r.gpu_uuid == g.uuid)
            .map(|r| r.found.name().to_string());
        let counters = st.stats.per_gpu.get(&g.uuid).cloned().unwrap_or_default();
        let mps = st
            .mps
            .iter()
            .find(|d| d.gpu_uuid == g.uuid && d.mig.is_none())
            .map(|d| mps_status(d, exclusive));
        let seen = crate::readiness::Seen {
            info: &g,
            pids: be.compute_pids(g.index).ok(),
            foreign: instances.iter().filter(|i| i.state == "foreign").count(),
            idle: instances.iter().filter(|i| i.state == "idle").count(),
            room: free.iter().any(|(_, n)| *n > 0),
        };
        let needs = crate::readiness::assess(cfg, &st, &seen);
        let mig_switch_found = st
            .mig_modes
            .iter()
            .find(|r| r.gpu_uuid == g.uuid)
            .map(|r| r.found);
        let mig_pending = g
            .mig_mode
            .and_then(|(current, pending)| (current != pending).then_some(pending));
        let timeslice_containers: Vec<String> = st
            .shares
            .iter()
            .filter(|s| s.gpu_uuid == g.uuid)
            .map(|s| s.lease.container_id.clone())
            .collect();
        let mode = if mig_enabled {
            "mig"
        } else if mps.is_some() {
            "mps"
        } else if !timeslice_containers.is_empty() {
            "timeslice"
        } else {
            "free"
        };
        gpus.push(GpuStatus {
            mode,
            profiles: profiles.clone(),
            mps,
            timeslice_containers,
            counters,
            index: g.index,
            uuid: g.uuid,
            name: g.name,
            mig_enabled,
            instances,
            free,
            compute_mode,
            compute_mode_found,
            mig_pending,
            mig_switch_found,
            needs,
        });
    }
    Ok(Status {
        driver_version: be.driver_version(),
        mps_exclusive: cfg.mps.exclusive,
        leases: leases(&st),
        gpus,
        stats: st.stats,
    })
}

fn mps_status(d: &ledger::MpsDaemon, exclusive: bool) -> MpsStatus {
    MpsStatus {
        pid: d.pid,
        running: crate::mps::alive(d),
        enforced_percent: d.percent,
        enforced_memory_mib: d.memory.map(|m| m >> 20),
        clients: d
            .clients
            .iter()
            .map(|c| {
                (
                    c.lease.container_id.clone(),
                    c.percent,
                    c.memory.map(|m| m >> 20),
                )
            })
            .collect(),
        exclusive,
    }
}

/// Every lease, MIG slices, MPS shares and time-sliced GPUs alike, oldest first.
fn leases(st: &LedgerState) -> Vec<LeaseStatus> {
    let mut out: Vec<LeaseStatus> = st
        .instances
        .iter()
        .filter_map(|r| {
            let l = r.lease.as_ref()?;
            Some(LeaseStatus {
                container_id: l.container_id.clone(),
                gpu: r.gpu_index,
                profile: r.profile.clone(),
                mig_uuid: Some(
                    r.made
                        .as_ref()
                        .map_or_else(|| "(being made)".into(), |m| m.mig_uuid.clone()),
                ),
                since: l.since,
                mode: "mig",
                gpu_uuid: r.gpu_uuid.clone(),
            })
        })
        .collect();
    for d in &st.mps {
        for c in &d.clients {
            let share = match c.memory {
                Some(m) => format!("{}% + {} MiB", c.percent, m >> 20),
                None => format!("{}%", c.percent),
            };
            out.push(LeaseStatus {
                container_id: c.lease.container_id.clone(),
                gpu: d.gpu_index,
                profile: match &d.mig {
                    Some(h) => format!("{share} of {}", h.profile),
                    None => share,
                },
                mig_uuid: d.mig.as_ref().map(|h| h.mig_uuid.clone()),
                since: c.lease.since,
                mode: "mps",
                gpu_uuid: d.gpu_uuid.clone(),
            });
        }
    }
    for s in &st.shares {
        out.push(LeaseStatus {
            container_id: s.lease.container_id.clone(),
            gpu: s.gpu_index,
            profile: "whole GPU".into(),
            mig_uuid: None,
            since: s.lease.since,
            mode: "timeslice",
            gpu_uuid: s.gpu_uuid.clone(),
        });
    }
    out.sort_by(|a, b| (a.since, &a.container_id).cmp(&(b.since, &b.container_id)));
    out
}

/// `since 03:22:52, 4m ago` in the node's local time; the date too when it is not today.
pub fn since_text(since: u64, now: u64) -> String {
    let at = |t: u64| {
        // SAFETY: localtime_r reads the time and fills the struct we own.
        let mut tm: libc::tm = unsafe { std::mem::zeroed() };
        let t = t as libc::time_t;
        unsafe { libc::localtime_r(&t, &mut tm) };
        tm
    };
    let (then, today) = (at(since), at(now));
    let clock = format!("{:02}:{:02}:{:02}", then.tm_hour, then.tm_min, then.tm_sec);
    let when = if (then.tm_year, then.tm_yday) == (today.tm_year, today.tm_yday) {
        clock
    } else {
        format!(
            "{}-{:02}-{:02} {clock}",
            then.tm_year + 1900,
            then.tm_mon + 1,
            then.tm_mday
        )
    };
    format!("since {when}, {}", ago(now.saturating_sub(since)))
}

fn ago(s: u64) -> String {
    match s {
        0..60 => format!("{s}s ago"),
        60..3600 => format!("{}m ago", s / 60),
        3600..86400 => format!("{}h {}m ago", s / 3600, s % 3600 / 60),
        _ => format!("{}d {}h ago", s / 86400, s % 86400 / 3600),
    }
}

/// The memory slots a placement spans: `4-7`, or `6` for a one-slot profile (not `6-6`).
fn slots(p: placement::Slot) -> String {
    match p.size {
        0 | 1 => p.start.to_string(),
        n => format!("{}-{}", p.start, p.start + n - 1),
    }
}

/// The table a person reads.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "driver {}",
        s.driver_version.as_deref().unwrap_or("unknown")
    );
    for g in &s.gpus {
        render_gpu(&mut out, g, s.mps_exclusive);
    }
    let _ = writeln!(out, "\nleases: {}", s.leases.len());
    let now = crate::fsutil::now_unix();
    for l in &s.leases {
        let what = match l.mode {
            "mig" => format!(
                "MIG {}  {}",
                l.profile,
                l.mig_uuid.as_deref().unwrap_or("-")
            ),
            "mps" => match &l.mig_uuid {
                Some(u) => format!("MPS {}  {u}", l.profile),
                None => format!("MPS {}", l.profile),
            },
            _ => format!("time-sliced, {} (no isolation)", l.profile),
        };
        // A claim's lease reads as the claim's device (the containers on it come and go).
        let owner = match ledger::Owner::of(&l.container_id) {
            claim @ ledger::Owner::Claim(_) => claim.to_string(),
            ledger::Owner::Container(id) => id.to_string(),
        };
        let _ = writeln!(
            out,
            "  {owner}  GPU {}  {what}  {}",
            l.gpu,
            since_text(l.since, now)
        );
    }
    let _ = writeln!(
        out,
        "grants: {} warm ({} of them by gpushare itself, from the offers), {} cold; refused for lack of room: {}",
        s.stats.grants_warm,
        s.stats.grants_by_entry,
        s.stats.grants_cold,
        s.stats.refused_no_room
    );
    out
}

/// One GPU, top down: the GPU, the mode it serves in, its MIG instances (each with the MPS
/// daemon it hosts and that daemon's clients), or its whole-GPU daemon and clients; then what
/// it would need for other requests, and its counters.
fn render_gpu(out: &mut String, g: &GpuStatus, mps_exclusive: bool) {
    use std::fmt::Write;
    let mig = if g.mig_enabled {
        "MIG enabled"
    } else {
        "MIG disabled"
    };
    let mode = g
        .compute_mode
        .as_deref()
        .map_or(String::new(), |m| format!("  compute mode {m}"));
    let _ = writeln!(
        out,
        "\nGPU {}  {}  {}  {mig}{mode}",
        g.index, g.name, g.uuid
    );
    let _ = writeln!(out, "  mode: {}", mode_line(g));
    if let Some(found) = &g.compute_mode_found {
        if g.mps.is_none() {
            let _ = writeln!(
                out,
                "  compute mode changed by gpushare for an MPS daemon that is gone (a crash): the next grant or `gpusharectl gc` puts {found} back"
            );
        }
    }
    if let Some(on) = g.mig_pending {
        let _ = writeln!(
            out,
            "  MIG mode pending {}: the driver applies it only at a GPU reset (`nvidia-smi -i {} -r`); gpushare never resets a GPU",
            if on { "enable" } else { "disable" },
            g.index
        );
    }
    if let Some(found) = g.mig_switch_found {
        let _ = writeln!(
            out,
            "  MIG mode switched by gpushare for a grant that died (a crash): the next grant or `gpusharectl gc` puts MIG {} back",
            crate::mig_mode::on_off(found)
        );
    }
    // What each kind of request would need here (the readiness report).
    for n in &g.needs {
        let _ = writeln!(out, "  {}: {}", n.label(), n.line);
    }
    if g.instances.is_empty() {
        let _ = writeln!(out, "  no MIG instances");
    } else {
        let _ = writeln!(
            out,
            "  {:<12} {:>3} {:>3} {:<9} {:<8} {:<42} CONTAINER",
            "PROFILE", "GI", "CI", "SLOTS", "STATE", "MIG UUID"
        );
        for i in &g.instances {
            let slots = slots(i.placement);
            let holder = match (&i.container_id, &i.mps) {
                (Some(id), _) => id.clone(),
                (None, Some(m)) => format!("{} MPS client(s)", m.clients.len()),
                (None, None) => "-".into(),
            };
            let _ = writeln!(
                out,
                "  {:<12} {:>3} {:>3} {:<9} {:<8} {:<42} {holder}",
                i.profile,
                i.gi,
                i.ci.map_or("-".into(), |c| c.to_string()),
                slots,
                i.state,
                i.mig_uuid.as_deref().unwrap_or("-"),
            );
            if let Some(m) = &i.mps {
                render_mps(out, m, "    ");
                let _ = writeln!(
                    out,
                    "    compute mode: a MIG device takes no Exclusive_Process; a client that points CUDA_MPS_PIPE_DIRECTORY elsewhere leaves its share but not this instance"
                );
                render_clients(out, m, "      ");
            }
        }
    }
    if g.mig_enabled {
        let free: Vec<String> = g.free.iter().map(|(p, n)| format!("{p} x{n}")).collect();
        let _ = writeln!(out, "  free: {}", free.join(", "));
    } else if !g.profiles.is_empty() {
        let names: Vec<&str> = g.profiles.iter().map(|p| p.name.as_str()).collect();
        let _ = writeln!(
            out,
            "  MIG profiles (once MIG is enabled): {}",
            names.join(", ")
        );
    }
    if let Some(m) = &g.mps {
        render_mps(out, m, "  ");
        if m.exclusive {
            let _ = writeln!(
                out,
                "  compute mode Exclusive_Process: the MPS server is the GPU's one context; no client can leave its share"
            );
        } else {
            let _ = writeln!(
                out,
                "  WARNING: compute mode {}: a client that points CUDA_MPS_PIPE_DIRECTORY elsewhere leaves its share (every SM, all memory){}",
                g.compute_mode.as_deref().unwrap_or("unknown"),
                if mps_exclusive {
                    "; gpushare expected Exclusive_Process: see `gpusharectl doctor`"
                } else {
                    " (mps.exclusive = false)"
                }
            );
        }
        render_clients(out, m, "    ");
    }
    if !g.timeslice_containers.is_empty() {
        let _ = writeln!(
            out,
            "  time-sliced (no isolation): {}",
            g.timeslice_containers.join(", ")
        );
    }
    let c = &g.counters;
    let _ = writeln!(
        out,
        "  grants: {} warm, {} cold (warm-pool hit rate {}); refused for lack of room: {}",
        c.grants_warm,
        c.grants_cold,
        c.warm_hit_rate()
            .map_or_else(|| "-".to_string(), |r| format!("{:.0}%", r * 100.0)),
        c.refused_no_room
    );
}

/// The GPU's mode at a glance: what serves it and how much of it is in use.
fn mode_line(g: &GpuStatus) -> String {
    match g.mode {
        "mig" => {
            let count = |state: &str| g.instances.iter().filter(|i| i.state == state).count();
            let clients: usize = g
                .instances
                .iter()
                .filter_map(|i| i.mps.as_ref())
                .map(|m| m.clients.len())
                .sum();
            format!(
                "MIG, {} instance(s): {} busy, {} serving MPS ({clients} client(s)), {} idle, {} foreign",
                g.instances.len(),
                count("busy"),
                count("mps"),
                count("idle"),
                count("foreign")
            )
        }
        "mps" => format!(
            "MPS on the whole GPU, {} client(s)",
            g.mps.as_ref().map_or(0, |m| m.clients.len())
        ),
        "timeslice" => format!(
            "time-sliced whole GPU, {} container(s)",
            g.timeslice_containers.len()
        ),
        _ => "free (MIG disabled, nothing of gpushare's on it)".into(),
    }
}

/// A daemon's line: its process and what it enforces on every client.
fn render_mps(out: &mut String, m: &MpsStatus, indent: &str) {
    use std::fmt::Write;
    let _ = writeln!(
        out,
        "{indent}MPS daemon pid {} {}: enforced on every client: {}% of SMs, {} pinned memory per process",
        m.pid.map_or("-".into(), |p| p.to_string()),
        if m.running { "running" } else { "NOT RUNNING" },
        m.enforced_percent,
        m.enforced_memory_mib
            .map_or("no limit on".into(), |v| format!("{v} MiB"))
    );
}

fn render_clients(out: &mut String, m: &MpsStatus, indent: &str) {
    use std::fmt::Write;
    for (id, pct, mem) in &m.clients {
        let mem = mem.map_or(String::new(), |v| format!(", {v} MiB"));
        let _ = writeln!(
            out,
            "{indent}{id}: asks {pct}%{mem} (its own env: cooperative below the enforced ceiling)"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_as_a_clock_and_an_age() {
        let now = 1_796_527_372;
        let t = since_text(now - 4 * 60 - 3, now);
        let (clock, age) = t
            .strip_prefix("since ")
            .and_then(|r| r.split_once(", "))
            .unwrap();
        // hh:mm:ss, with the date only when it is another day.
        let hms = clock.rsplit(' ').next().unwrap();
        assert_eq!(hms.len(), 8, "{t}");
        assert_eq!(hms.matches(':').count(), 2, "{t}");
        assert_eq!(age, "4m ago");
        assert!(since_text(now - 3 * 86400, now).contains("3d 0h ago"));
        assert!(since_text(now - 3 * 86400, now).contains('-'), "a date");
        assert_eq!(ago(59), "59s ago");
        assert_eq!(ago(3 * 3600 + 120), "3h 2m ago");
        assert!(!t.contains("1796"), "no epoch seconds");
    }

    fn instance(
        gi: u32,
        start: u32,
        state: &'static str,
        mps: Option<MpsStatus>,
    ) -> InstanceStatus {
        InstanceStatus {
            profile: "3g.40gb".into(),
            gi,
            ci: Some(0),
            placement: placement::Slot { start, size: 4 },
            mig_uuid: Some(format!("MIG-{gi}")),
            state,
            container_id: (state == "busy").then(|| "plain".to_string()),
            mps,
        }
    }

    #[test]
    fn a_one_slot_placement_reads_as_its_slot() {
        assert_eq!(slots(placement::Slot { start: 6, size: 1 }), "6");
        assert_eq!(slots(placement::Slot { start: 4, size: 4 }), "4-7");
    }

    #[test]
    fn a_gpu_reads_top_down_mode_instances_then_mps_clients() {
        let daemon = MpsStatus {
            pid: Some(42),
            running: true,
            enforced_percent: 33,
            enforced_memory_mib: None,
            clients: vec![("c1".into(), 33, None), ("c2".into(), 33, None)],
            exclusive: false,
        };
        let s = Status {
            driver_version: None,
            mps_exclusive: true,
            gpus: vec![GpuStatus {
                index: 0,
                uuid: "GPU-a".into(),
                name: "NVIDIA H100 80GB HBM3".into(),
                mig_enabled: true,
                mode: "mig",
                instances: vec![
                    instance(1, 0, "mps", Some(daemon)),
                    instance(2, 4, "busy", None),
                ],
                free: vec![("1g.10gb".into(), 0)],
                counters: Default::default(),
                profiles: Vec::new(),
                mps: None,
                timeslice_containers: Vec::new(),
                compute_mode: None,
                compute_mode_found: None,
                mig_pending: None,
                mig_switch_found: None,
                needs: vec![crate::readiness::Need {
                    kind: "whole",
                    ready: false,
                    line: "after plain, c1 and c2 exit".into(),
                }],
            }],
            leases: Vec::new(),
            stats: Default::default(),
        };
        let text = render(&s);
        let at = |needle: &str| {
            text.find(needle)
                .unwrap_or_else(|| panic!("{needle:?} in:\n{text}"))
        };
        let order = [
            at("GPU 0  NVIDIA H100"),
            at("  mode: MIG, 2 instance(s): 1 busy, 1 serving MPS (2 client(s)), 0 idle"),
            at("  whole GPU: after plain, c1 and c2 exit"),
            at("  3g.40gb        1   0 0-3       mps      MIG-1"),
            at("2 MPS client(s)"),
            at("    MPS daemon pid 42 running: enforced on every client: 33% of SMs"),
            at("a MIG device takes no Exclusive_Process"),
            at("      c1: asks 33%"),
            at("      c2: asks 33%"),
            at("  3g.40gb        2   0 4-7       busy     MIG-2"),
        ];
        assert!(order.windows(2).all(|w| w[0] < w[1]), "{text}");
        assert!(!text.contains("WARNING"), "no whole-GPU daemon: {text}");
        let json = serde_json::to_value(&s).unwrap();
        assert_eq!(json["gpus"][0]["mode"], "mig");
        assert_eq!(
            json["gpus"][0]["instances"][0]["mps"]["clients"][1][0],
            "c2"
        );
    }

    #[test]
    fn mps_and_timeslice_leases_are_leases() {
        let mut st = LedgerState::default();
        let lease = |id: &str, since| ledger::Lease {
            container_id: id.into(),
            since,
            runtime_root: None,
        };
        st.mps.push(ledger::MpsDaemon {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            pid: None,
            pipe_dir: "/p".into(),
            log_dir: "/l".into(),
            percent: 25,
            memory: Some(4 << 30),
            started_at: 1,
            clients: vec![ledger::MpsClient {
                lease: lease("m", 5),
                percent: 25,
                memory: Some(4 << 30),
            }],
            mig: None,
        });
        st.shares.push(ledger::ShareLease {
            gpu_uuid: "GPU-b".into(),
            gpu_index: 1,
            gpu_minor: 1,
            lease: lease("t", 3),
        });
        let l = leases(&st);
        assert_eq!(l.len(), 2);
        assert_eq!((l[0].container_id.as_str(), l[0].mode), ("t", "timeslice"));
        assert_eq!(
            (l[1].mode, l[1].profile.as_str()),
            ("mps", "25% + 4096 MiB")
        );
        assert_eq!(l[1].gpu, 0);
    }
}
