//! MPS shares inside a MIG slice (`gpu.profile=3g.40gb` with `gpu.mps=33`).
//!
//! One MPS daemon per MIG instance, started with that MIG device as its only device and its
//! folders named for its MIG UUID, shared by the containers whose requests name the same
//! profile and (strict policy) the same share, as long as their shares add up to at most the
//! whole instance. The instance comes from the allocator exactly as for a plain MIG request
//! (the idle pool or a new instance, with that path's crash safety), then serves the daemon:
//! marked [`InstanceRecord::mps`], so plain MIG requests never get it, until the last client
//! leaves ([`crate::mps::release_client_on`]) and it goes back to the idle pool.
//!
//! Compute mode: NVML takes no EXCLUSIVE_PROCESS on a MIG device (docs/mps.md), so
//! `mps.exclusive` does not apply to these daemons; the slice bounds what a client reaches.

use crate::allocator::{self, AllocError};
use crate::config::{Config, MpsPolicy};
use crate::fsutil::now_unix;
use crate::gpu::Gpu;
use crate::gpus::{selects, GpuError};
use crate::ledger::{
    Claimant, GpuRecord, InstanceRecord, Lease, Ledger, LedgerState, MigHost, MpsClient, MpsDaemon,
};
use crate::mps::{self, MpsError, MpsGrant};
use crate::node::Node;
use crate::request::DeviceSelector;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum MpsMigError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Mps(#[from] MpsError),
    #[error("gpu.profile={profile} with gpu.mps: the {profile} instance granted for this container was released before its MPS daemon started (a `gc` or a delete of the same id); nothing is held, try again")]
    Lost { profile: String },
}

crate::gpus::from_gpu_errors!(MpsMigError);

/// The request's share: what its daemon enforces on every client, and what the instance's
/// room is counted in.
#[derive(Debug, Clone, Copy)]
struct Share {
    percent: u8,
    memory: Option<u64>,
}

pub fn grant(
    cfg: &Config,
    profile: &str,
    percent: u8,
    memory: Option<u64>,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<MpsGrant, MpsMigError> {
    let be = crate::nvml::OnDemand::new(cfg);
    let node = crate::node::Host::new(cfg);
    grant_on(cfg, &be, &node, profile, percent, memory, device, who)
}

/// [`grant`] on `be`'s GPUs and `node`'s driver files and processes.
#[allow(clippy::too_many_arguments)]
pub fn grant_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    profile: &str,
    percent: u8,
    memory: Option<u64>,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<MpsGrant, MpsMigError> {
    mps::check_policy(cfg, percent, memory)?;
    let share = Share { percent, memory };
    let majors = node.majors()?;
    let timeout = Duration::from_millis(cfg.pool.lock_timeout_ms);
    let lease = || Lease {
        container_id: who.container_id.to_string(),
        since: now_unix(),
        runtime_root: who.runtime_root.map(str::to_string),
    };
    let client = |lease| MpsClient {
        lease,
        percent,
        memory,
    };

    // 1. A daemon already serving this profile and share, with room left: no NVML.
    let locked = Ledger::new(&cfg.state_dir).lock(timeout)?;
    let mut st = locked.load()?;
    if let Some(held) = mps::held_share(cfg, &majors, &st, who) {
        return Ok(held);
    }
    if let Some(at) = joinable(cfg, node, &st, profile, share, device) {
        let mut warm = true;
        if st.mps[at].pid.is_none_or(|pid| !node.process_running(pid))
            || !st.mps[at].pipe_dir.join("control").exists()
        {
            // Its daemon died, or a grant killed while starting it left no pid: whatever runs
            // there is told to quit and a new daemon serves the same instance and clients.
            tracing::warn!(
                gpu = st.mps[at].gpu_index,
                "the MPS daemon of {} is not running; starting it again",
                st.mps[at].device_uuid()
            );
            restart(cfg, node, &mut st, at)?;
            warm = false;
        }
        st.mps[at].clients.push(client(lease()));
        locked.save(&st)?;
        crate::failpoint!("mps_mig.joined");
        let edit = mps::client_edit(cfg, &majors, &st.mps[at], percent, memory);
        let uuid = st.mps[at].device_uuid().to_string();
        allocator::offer_after(cfg, locked, st);
        return Ok(MpsGrant {
            gpu_uuid: uuid,
            edit,
            warm,
            fresh: true,
        });
    }
    drop(locked);

    // 2. A slice of its own, granted as a plain MIG request would be, then given to a daemon.
    let g = allocator::allocate_on(cfg, be, node, profile, device, who)?;
    crate::failpoint!("mps_mig.slice_granted");
    let locked = Ledger::new(&cfg.state_dir).lock(timeout)?;
    let mut st = locked.load()?;
    let Some(i) = st.lease_of(who.container_id).filter(|&i| {
        st.instances[i]
            .made
            .as_ref()
            .is_some_and(|m| m.mig_uuid == g.mig_uuid)
    }) else {
        return Err(MpsMigError::Lost {
            profile: profile.into(),
        });
    };
    let host = MigHost {
        mig_uuid: g.mig_uuid.clone(),
        profile: g.profile.clone(),
        gi_cap_minor: g.gi_cap_minor,
        ci_cap_minor: g.ci_cap_minor,
    };
    let gpu = gpu_record(&st, &st.instances[i]);
    let r = &mut st.instances[i];
    let first = r.lease.take().expect("leased");
    r.mps = true;
    r.idle_since = None;
    let (p, m) = daemon_limits(cfg, share);
    let (pipe_dir, log_dir) = mps::daemon_dirs(cfg, &host.mig_uuid);
    // Recorded before the daemon starts: a crash from here on leaves a record whose client's
    // release (the next call, or `gc` once the container is gone) stops whatever started.
    st.mps.push(MpsDaemon {
        gpu_uuid: gpu.uuid.clone(),
        gpu_index: gpu.index,
        gpu_minor: gpu.minor,
        pid: None,
        pipe_dir,
        log_dir,
        percent: p,
        memory: m,
        started_at: now_unix(),
        clients: vec![client(first)],
        mig: Some(host.clone()),
    });
    locked.save(&st)?;
    crate::failpoint!("mps_mig.intent_saved");
    let at = st.mps.len() - 1;
    match mps::start(cfg, node, &gpu, Some(&host), p, m) {
        Ok(d) => {
            let clients = std::mem::take(&mut st.mps[at].clients);
            st.mps[at] = MpsDaemon { clients, ..d };
        }
        Err(e) => {
            // Nothing is granted: whatever started is stopped and the slice goes back to the
            // idle pool (the container's request failed, so it holds nothing).
            let d = st.mps.remove(at);
            let _ = mps::stop(cfg, node, &d);
            mps::return_instance(&mut st, &host);
            locked.save(&st)?;
            return Err(e.into());
        }
    }
    crate::failpoint!("mps_mig.started");
    locked.save(&st)?;
    let edit = mps::client_edit(cfg, &majors, &st.mps[at], percent, memory);
    allocator::offer_after(cfg, locked, st);
    Ok(MpsGrant {
        gpu_uuid: host.mig_uuid,
        edit,
        warm: false,
        fresh: true,
    })
}

/// What the daemon enforces: the share itself under the strict policy; under the cooperative
/// one the whole instance, each client's env carrying its own share.
fn daemon_limits(cfg: &Config, share: Share) -> (u8, Option<u64>) {
    match cfg.mps.policy {
        MpsPolicy::Strict => (share.percent, share.memory),
        MpsPolicy::Cooperative => (100, None),
    }
}

/// The daemon (index into `st.mps`) a new share of `profile` joins: one serving a live
/// instance of that profile on a selected GPU, enforcing this share (strict policy), whose
/// clients' shares leave room for it. The fullest first, so that shares pack and whole
/// instances stay free for other requests. An instance the driver no longer has (its
/// capability file is gone) is passed over: `gc` stops its daemon.
fn joinable(
    cfg: &Config,
    node: &dyn Node,
    st: &LedgerState,
    profile: &str,
    share: Share,
    device: Option<&DeviceSelector>,
) -> Option<usize> {
    let mut best: Option<(u32, usize)> = None;
    for (i, d) in st.mps.iter().enumerate() {
        let Some(h) = &d.mig else { continue };
        if h.profile != profile || !selects(device, d.gpu_index, &d.gpu_uuid) {
            continue;
        }
        if cfg.mps.policy == MpsPolicy::Strict
            && (d.percent, d.memory) != (share.percent, share.memory)
        {
            continue;
        }
        let Some(r) = instance_of(st, h) else {
            continue;
        };
        if !r
            .made
            .as_ref()
            .is_some_and(|m| node.has_instance(r.gpu_minor, m.gi, Some(m.ci)))
        {
            continue;
        }
        let used: u32 = d.clients.iter().map(|c| u32::from(c.percent)).sum();
        if used + u32::from(share.percent) > 100 {
            continue;
        }
        if let (Some(m), false) = (share.memory, cfg.mps.allow_overcommit) {
            let pinned: u64 = d.clients.iter().filter_map(|c| c.memory).sum();
            if instance_memory(st, r).is_some_and(|total| pinned + m > total) {
                continue;
            }
        }
        if best.is_none_or(|(u, _)| used > u) {
            best = Some((used, i));
        }
    }
    best.map(|(_, i)| i)
}

/// The instance record a daemon serves.
fn instance_of<'a>(st: &'a LedgerState, h: &MigHost) -> Option<&'a InstanceRecord> {
    st.instances
        .iter()
        .find(|r| r.mps && r.made.as_ref().is_some_and(|m| m.mig_uuid == h.mig_uuid))
}

/// The instance's memory in bytes, from its GPU's profile table.
fn instance_memory(st: &LedgerState, r: &InstanceRecord) -> Option<u64> {
    st.gpus
        .iter()
        .find(|g| g.uuid == r.gpu_uuid)?
        .profiles
        .iter()
        .find(|p| p.name == r.profile)
        .map(|p| p.memory_mb << 20)
}

/// The GPU an instance sits on, as the ledger's cache knows it.
fn gpu_record(st: &LedgerState, r: &InstanceRecord) -> GpuRecord {
    st.gpus
        .iter()
        .find(|g| g.uuid == r.gpu_uuid)
        .cloned()
        .unwrap_or_else(|| GpuRecord {
            index: r.gpu_index,
            uuid: r.gpu_uuid.clone(),
            name: String::new(),
            minor: r.gpu_minor,
            profiles: Vec::new(),
            memory_total: 0,
            mig_enabled: true,
        })
}

/// Start daemon `at` again for its instance and clients, after stopping whatever runs in its
/// pipe folder.
fn restart(cfg: &Config, node: &dyn Node, st: &mut LedgerState, at: usize) -> Result<(), MpsError> {
    let old = st.mps[at].clone();
    mps::stop(cfg, node, &old)?;
    let gpu = GpuRecord {
        index: old.gpu_index,
        uuid: old.gpu_uuid.clone(),
        name: String::new(),
        minor: old.gpu_minor,
        profiles: Vec::new(),
        memory_total: 0,
        mig_enabled: true,
    };
    let fresh = mps::start(cfg, node, &gpu, old.mig.as_ref(), old.percent, old.memory)?;
    st.mps[at] = MpsDaemon {
        clients: old.clients,
        ..fresh
    };
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{allocate_on, release};
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};
    use std::path::PathBuf;

    fn who(id: &str) -> Claimant<'_> {
        Claimant {
            container_id: id,
            runtime_root: None,
        }
    }

    /// A config whose control program exists (the double never runs it); `mps.exclusive` is
    /// on, as by default.
    fn scratch(name: &str) -> Scratch {
        let mut s = Scratch::new(name);
        s.cfg.mps.control = PathBuf::from("/bin/sh");
        assert!(s.cfg.mps.exclusive);
        s
    }

    fn share(s: &Scratch, gpu: &FakeGpu, node: &FakeNode, pct: u8, id: &str) -> MpsGrant {
        try_share(s, gpu, node, pct, None, id).unwrap()
    }

    /// A 3g.40gb share of `pct` percent, with `memory` pinned if given.
    fn try_share(
        s: &Scratch,
        gpu: &FakeGpu,
        node: &FakeNode,
        pct: u8,
        memory: Option<u64>,
        id: &str,
    ) -> Result<MpsGrant, MpsMigError> {
        grant_on(&s.cfg, gpu, node, "3g.40gb", pct, memory, None, &who(id))
    }

    fn clients(d: &MpsDaemon) -> Vec<&str> {
        d.clients
            .iter()
            .map(|c| c.lease.container_id.as_str())
            .collect()
    }

    #[test]
    fn shares_of_one_size_fill_one_instance_and_another_size_gets_its_own() {
        let s = scratch("mpsmig-fill");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);

        let a = share(&s, &gpu, &node, 33, "a");
        assert!(a.fresh && !a.warm);
        assert!(a.gpu_uuid.starts_with("MIG-"), "{}", a.gpu_uuid);
        gpu.clear_calls();
        let b = share(&s, &gpu, &node, 33, "b");
        let c = share(&s, &gpu, &node, 33, "c");
        assert!(b.warm && c.warm, "joined the running daemon");
        assert_eq!(gpu.calls(), Vec::<Call>::new(), "no NVML to join");
        assert_eq!(
            (b.gpu_uuid.as_str(), c.gpu_uuid.as_str()),
            (a.gpu_uuid.as_str(), a.gpu_uuid.as_str())
        );
        let st = s.ledger();
        assert_eq!(st.mps.len(), 1);
        assert_eq!(clients(&st.mps[0]), ["a", "b", "c"]);
        assert_eq!(st.mps[0].device_uuid(), a.gpu_uuid);
        assert_eq!(
            node.mps_log(),
            [
                format!("start {} -d -M", a.gpu_uuid),
                "set_default_active_thread_percentage 33".into()
            ],
            "one daemon, bound to the MIG device"
        );
        let (pipe, _) = mps::daemon_dirs(&s.cfg, &a.gpu_uuid);
        assert_eq!(st.mps[0].pipe_dir, pipe, "its folders are the MIG device's");

        // 33 more would make 132% of the instance; 50% is another share size.
        let d = share(&s, &gpu, &node, 50, "d");
        assert_ne!(d.gpu_uuid, a.gpu_uuid);
        let e = try_share(&s, &gpu, &node, 33, None, "e").unwrap_err();
        assert!(
            err_is_no_room(&e),
            "an H100 has two 3g.40gb, both serve MPS: {e}"
        );
        let st = s.ledger();
        assert_eq!(st.mps.len(), 2);
        assert_eq!(clients(&st.mps[1]), ["d"]);
        assert!(st.instances.iter().all(|r| r.mps && r.lease.is_none()));
        assert!(
            st.compute_modes.is_empty(),
            "mps.exclusive sets no mode on a MIG device"
        );
        assert!(
            !gpu.changes()
                .iter()
                .any(|c| matches!(c, Call::SetComputeMode { .. })),
            "{:?}",
            gpu.changes()
        );
    }

    fn err_is_no_room(e: &MpsMigError) -> bool {
        matches!(e, MpsMigError::Alloc(AllocError::NoRoom { .. }))
    }

    #[test]
    fn a_client_gets_the_mig_device_alone_with_the_daemons_pipe_folder() {
        let s = scratch("mpsmig-edit");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let g = try_share(&s, &gpu, &node, 25, Some(8 << 30), "a").unwrap();
        let st = s.ledger();
        let h = st.mps[0].mig.clone().unwrap();
        let env = |k: &str| {
            g.edit
                .env
                .iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| v.clone())
        };
        assert_eq!(
            env("CUDA_VISIBLE_DEVICES").as_deref(),
            Some(h.mig_uuid.as_str())
        );
        assert_eq!(
            env("NVIDIA_VISIBLE_DEVICES").as_deref(),
            Some(h.mig_uuid.as_str())
        );
        assert_eq!(
            env("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").as_deref(),
            Some("25")
        );
        assert_eq!(
            env("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT").as_deref(),
            Some("0=8192M")
        );
        let caps: Vec<u32> = g
            .edit
            .devices
            .iter()
            .filter(|d| d.path.contains("nvidia-caps"))
            .map(|d| d.minor)
            .collect();
        assert_eq!(
            caps,
            [h.gi_cap_minor, h.ci_cap_minor],
            "only its own MIG device"
        );
        assert_eq!(g.edit.mounts.len(), 1);
        assert_eq!(
            g.edit.mounts[0].source,
            st.mps[0].pipe_dir.display().to_string()
        );
        // Asked again (an engine retrying create): the same share, nothing more.
        let again = try_share(&s, &gpu, &node, 25, Some(8 << 30), "a").unwrap();
        assert!(!again.fresh);
        assert_eq!(again.edit, g.edit);
        assert_eq!(s.ledger().mps[0].clients.len(), 1);
    }

    #[test]
    fn under_the_cooperative_policy_sizes_mix_within_the_whole_instance() {
        let mut s = scratch("mpsmig-coop");
        s.cfg.mps.policy = MpsPolicy::Cooperative;
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let a = share(&s, &gpu, &node, 33, "a");
        let b = share(&s, &gpu, &node, 50, "b");
        assert_eq!(a.gpu_uuid, b.gpu_uuid, "one daemon, no ceiling of its own");
        let c = share(&s, &gpu, &node, 25, "c");
        assert_ne!(c.gpu_uuid, a.gpu_uuid, "108% of one instance");
        let st = s.ledger();
        assert_eq!(st.mps[0].percent, 100);
        assert!(!node
            .mps_log()
            .iter()
            .any(|l| l.starts_with("set_default_active_thread_percentage")));
        assert!(b
            .edit
            .env
            .contains(&("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), "50".into())));
    }

    #[test]
    fn a_share_never_joins_a_daemon_whose_instance_the_driver_lost() {
        let s = scratch("mpsmig-lost");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let a = share(&s, &gpu, &node, 50, "a");
        let gi = s.ledger().instances[0].made.as_ref().unwrap().gi;
        gpu.vanish(0, gi);
        let b = share(&s, &gpu, &node, 50, "b");
        assert_ne!(b.gpu_uuid, a.gpu_uuid);
    }

    #[test]
    fn pinned_memory_beyond_the_instance_goes_elsewhere() {
        let s = scratch("mpsmig-memory");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let big = Some(30 << 30);
        let a = try_share(&s, &gpu, &node, 10, big, "a").unwrap();
        let b = try_share(&s, &gpu, &node, 10, big, "b").unwrap();
        assert_ne!(a.gpu_uuid, b.gpu_uuid, "60 GiB pinned in a 40 GB instance");
    }

    #[test]
    fn a_plain_mig_request_never_gets_an_instance_serving_mps() {
        let s = scratch("mpsmig-plain");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let m = share(&s, &gpu, &node, 50, "m");
        let p = allocate_on(&s.cfg, &gpu, &node, "3g.40gb", None, &who("p")).unwrap();
        assert_ne!(p.mig_uuid, m.gpu_uuid);
        // The GPU has room for no third 3g.40gb, and the MPS one is never reclaimed.
        release(&s.cfg, "p", Duration::from_secs(5)).unwrap();
        let err = allocate_on(&s.cfg, &gpu, &node, "7g.80gb", None, &who("big")).unwrap_err();
        assert!(matches!(err, AllocError::NoRoom { .. }), "{err}");
        assert!(
            !gpu.changes()
                .iter()
                .any(|c| matches!(c, Call::Destroy { .. })),
            "{:?}",
            gpu.changes()
        );
        let q = allocate_on(&s.cfg, &gpu, &node, "3g.40gb", None, &who("q")).unwrap();
        assert_eq!(q.mig_uuid, p.mig_uuid, "the idle one, warm");
        assert!(q.warm);
    }

    #[test]
    fn the_last_client_stops_the_daemon_and_the_instance_goes_back_to_the_pool() {
        let s = scratch("mpsmig-release");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let a = share(&s, &gpu, &node, 33, "a");
        share(&s, &gpu, &node, 33, "b");
        let mut st = s.ledger();
        assert!(crate::mps::release_client_on(
            &s.cfg, &gpu, &node, &mut st, "a"
        ));
        assert_eq!(st.mps.len(), 1, "b still uses it");
        assert!(crate::mps::release_client_on(
            &s.cfg, &gpu, &node, &mut st, "b"
        ));
        assert!(st.mps.is_empty());
        assert_eq!(node.mps_log().last().map(String::as_str), Some("quit"));
        assert_eq!(st.instances.len(), 1);
        assert!(st.instances[0].is_idle() && st.instances[0].idle_since.is_some());
        s.save(&st);
        gpu.clear_calls();
        // The idle instance serves the next share size at once, with a new daemon.
        let c = share(&s, &gpu, &node, 50, "c");
        assert_eq!(c.gpu_uuid, a.gpu_uuid);
        assert!(!gpu.calls().iter().any(|c| matches!(c, Call::Create { .. })));
    }

    #[test]
    fn a_daemon_that_cannot_start_leaves_the_instance_idle_and_nothing_held() {
        let mut s = scratch("mpsmig-nostart");
        s.cfg.mps.control = PathBuf::from("/nonexistent/nvidia-cuda-mps-control");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let err = try_share(&s, &gpu, &node, 50, None, "a").unwrap_err();
        assert!(
            err.to_string()
                .contains("cannot start the MPS control daemon"),
            "{err}"
        );
        let st = s.ledger();
        assert!(st.mps.is_empty());
        assert_eq!(st.instances.len(), 1);
        assert!(st.instances[0].is_idle(), "{:?}", st.instances[0]);
    }

    #[test]
    fn a_record_a_crash_left_without_a_pid_gets_a_new_daemon_on_the_next_share() {
        let s = scratch("mpsmig-intent");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let a = share(&s, &gpu, &node, 50, "a");
        let mut st = s.ledger();
        // As if killed between the intent's save and the pid's: the daemon runs unrecorded.
        let old_pid = st.mps[0].pid.take().unwrap();
        s.save(&st);
        let b = share(&s, &gpu, &node, 50, "b");
        assert_eq!(b.gpu_uuid, a.gpu_uuid);
        assert!(!b.warm);
        assert!(
            !node.process_running(old_pid),
            "the unrecorded daemon was told to quit"
        );
        let st = s.ledger();
        assert_eq!(clients(&st.mps[0]), ["a", "b"]);
        assert!(st.mps[0].pid.is_some_and(|p| p != old_pid));
    }
}
