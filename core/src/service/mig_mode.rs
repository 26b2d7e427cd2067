//! MIG mode switched just-in-time (`mig.manage_mode`): a MIG request for a GPU with MIG off, or
//! a whole-GPU or MPS request for a GPU in MIG mode, switches an idle GPU the operator lets
//! gpushare manage instead of refusing. Grants prefer GPUs already in the mode they need; a GPU
//! is switched only when none of those can serve (docs/operations.md, "MIG mode on demand").
//!
//! A GPU is switched only when nothing would notice: no process holds a context on it (NVML's
//! process list, its MIG devices' included), nothing of gpushare's is on it (a lease, a
//! time-sliced share, an MPS daemon, a compute mode gpushare set), and, turning MIG off, every
//! GPU instance there is an idle one of gpushare's, destroyed first. A GPU with a process
//! gpushare does not know of is never switched.
//!
//! Crash safety, as for instances and compute modes: the mode found is written to the ledger
//! ([`MigModeRecord`]) before anything changes, and dropped in the save that records the grant
//! the switch was for ([`settled`]). The writer holds the ledger lock from the record to that
//! save, so a record another process sees is what a crash left: [`repair`] repairs the dead
//! grant's instance intents, then puts the mode found back. It runs in `gc` and in every grant
//! that opens NVML, and costs nothing while there is no record.
//!
//! Where the driver takes the change but holds it until a GPU reset (Ampere: NVML's activation
//! status RESET_REQUIRED), the change stays pending, the record is dropped (nothing changed
//! that gpushare could put back) and the request is refused naming the reset: gpushare never
//! resets a GPU.

use crate::config::Config;
use crate::fsutil::now_unix;
use crate::gpu::{Gpu, GpuInfo};
use crate::gpus::GpuError;
use crate::ledger::{LedgerState, Locked, MigModeRecord};
use crate::node::Node;
use crate::placement::GpuInstance;

/// Why gpushare does not switch a GPU's MIG mode now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Hold {
    /// `mig.manage_mode` does not name the GPU: the operator's `nvidia-smi -mig` decides.
    NotManaged,
    /// The GPU has no MIG at all.
    NoMig,
    /// A change to `on` is pending until the GPU is reset.
    Pending { gpu: u32, on: bool },
    /// What of gpushare's is on the GPU: containers by id, or the daemon or record named.
    Holders(Vec<String>),
    /// Processes gpushare did not start hold a context on the GPU.
    Processes(Vec<u32>),
    /// GPU instances gpushare did not make (or has not finished making) are there.
    Foreign(usize),
}

impl std::fmt::Display for Hold {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Hold::NotManaged => write!(
                f,
                "mig.manage_mode is off for it (the operator's choice: `mig.manage_mode = true`, or a list naming the GPU, lets gpushare switch an idle GPU)"
            ),
            Hold::NoMig => write!(f, "the GPU has no MIG mode"),
            Hold::Pending { gpu, on } => write!(
                f,
                "MIG mode is pending {}: the driver applies it only when the GPU is reset (`nvidia-smi -i {gpu} -r`, with nothing running on it), and gpushare never resets a GPU",
                if *on { "enable" } else { "disable" }
            ),
            Hold::Holders(who) => write!(f, "{} hold(s) it", who.join(", ")),
            Hold::Processes(pids) => {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                write!(
                    f,
                    "process(es) {} that gpushare did not start hold a context there",
                    pids.join(", ")
                )
            }
            Hold::Foreign(n) => write!(
                f,
                "{n} GPU instance(s) there are not idle ones of gpushare's"
            ),
        }
    }
}

/// What of gpushare's is on GPU `uuid` that a switch would pull from under its holder.
pub fn holders(st: &LedgerState, uuid: &str) -> Vec<String> {
    let mut who: Vec<String> = Vec::new();
    let mut add = |w: String| {
        if !who.contains(&w) {
            who.push(w);
        }
    };
    for r in st.instances.iter().filter(|r| r.gpu_uuid == uuid) {
        match (&r.lease, &r.made) {
            (Some(l), _) => add(l.container_id.clone()),
            (None, None) => {
                add("an unfinished MIG allocation (`gpusharectl gc` repairs it)".into())
            }
            (None, Some(_)) => {}
        }
    }
    for s in st.shares.iter().filter(|s| s.gpu_uuid == uuid) {
        add(s.lease.container_id.clone());
    }
    for d in st.mps.iter().filter(|d| d.gpu_uuid == uuid) {
        if d.clients.is_empty() {
            add("gpushare's MPS daemon".into());
        }
        for c in &d.clients {
            add(c.lease.container_id.clone());
        }
    }
    if st.compute_modes.iter().any(|r| r.gpu_uuid == uuid) {
        add("the compute mode gpushare set for an MPS daemon".into());
    }
    who
}

/// Why `gpu` cannot be switched to MIG mode `on` by what the config and the ledger say (no
/// NVML); None: only the driver's processes and instances remain to be checked. A GPU already
/// in mode `on` needs no switch and is never held.
pub fn hold(cfg: &Config, st: &LedgerState, gpu: &GpuInfo, on: bool) -> Option<Hold> {
    let Some((current, pending)) = gpu.mig_mode else {
        return Some(Hold::NoMig);
    };
    if current == on {
        return None;
    }
    if pending == on {
        return Some(Hold::Pending { gpu: gpu.index, on });
    }
    if !cfg.mig.manage_mode.covers(gpu.index, &gpu.uuid) {
        return Some(Hold::NotManaged);
    }
    let who = holders(st, &gpu.uuid);
    (!who.is_empty()).then_some(Hold::Holders(who))
}

/// The GPU instances on `gpu` (MIG on) that are idle ones of gpushare's, and how many others
/// are there.
fn idle_instances(
    be: &dyn Gpu,
    st: &LedgerState,
    gpu: &GpuInfo,
) -> Result<(Vec<GpuInstance>, usize), GpuError> {
    let profiles = match st
        .gpus
        .iter()
        .find(|g| g.uuid == gpu.uuid && !g.profiles.is_empty())
    {
        Some(g) => g.profiles.clone(),
        None => be.profiles(gpu.index)?,
    };
    let mut ours = Vec::new();
    let mut others = 0;
    for gi in be.gpu_instances(gpu.index, &profiles)? {
        let idle = st.instances.iter().any(|r| {
            r.gpu_uuid == gpu.uuid
                && r.is_idle()
                && r.slot == gi.slot
                && r.made.as_ref().is_some_and(|m| m.gi == gi.id)
        });
        if idle {
            ours.push(gi);
        } else {
            others += 1;
        }
    }
    Ok((ours, others))
}

/// Why `gpu` cannot be switched to MIG mode `on` now, the driver asked too (processes, and
/// instances when turning MIG off); None: it can be.
pub fn check(
    cfg: &Config,
    be: &dyn Gpu,
    st: &LedgerState,
    gpu: &GpuInfo,
    on: bool,
) -> Result<Option<Hold>, GpuError> {
    if let Some(h) = hold(cfg, st, gpu, on) {
        return Ok(Some(h));
    }
    if gpu.mig_mode.is_some_and(|(current, _)| current == on) {
        return Ok(None);
    }
    let pids = be.compute_pids(gpu.index)?;
    if !pids.is_empty() {
        return Ok(Some(Hold::Processes(pids)));
    }
    if !on {
        let (_, others) = idle_instances(be, st, gpu)?;
        if others > 0 {
            return Ok(Some(Hold::Foreign(others)));
        }
    }
    Ok(None)
}

/// Switch `gpu` to MIG mode `on` for a grant, under the ledger's lock: recorded (and saved)
/// first; turning MIG off destroys gpushare's idle instances there first. Ok(None): the mode is
/// `on` now, and the grant must call [`settled`] before its save; Ok(Some(why)): nothing was
/// switched (a pending change leaves no record behind).
pub fn switch(
    cfg: &Config,
    be: &dyn Gpu,
    locked: &Locked,
    st: &mut LedgerState,
    gpu: &GpuInfo,
    on: bool,
) -> Result<Option<Hold>, GpuError> {
    if let Some(h) = check(cfg, be, st, gpu, on)? {
        return Ok(Some(h));
    }
    let Some((found, _)) = gpu.mig_mode else {
        return Ok(Some(Hold::NoMig));
    };
    if found == on {
        return Ok(None);
    }
    if !st.mig_modes.iter().any(|r| r.gpu_uuid == gpu.uuid) {
        st.mig_modes.push(MigModeRecord {
            gpu_uuid: gpu.uuid.clone(),
            gpu_index: gpu.index,
            found,
            since: now_unix(),
        });
    }
    locked.save(st)?;
    crate::failpoint!("mig_mode.recorded");
    if !on {
        let (idle, _) = idle_instances(be, st, gpu)?;
        for GpuInstance {
            id: gi,
            compute_instances: cis,
            slot,
            ..
        } in idle
        {
            be.destroy(gpu.index, gi, &cis)?;
            crate::instance_log::note(
                &cfg.state_dir,
                &[crate::instance_log::gone(&gpu.uuid, slot)],
            );
            st.instances.retain(|r| {
                !(r.gpu_uuid == gpu.uuid && r.made.as_ref().is_some_and(|m| m.gi == gi))
            });
            tracing::info!(
                gpu = gpu.index,
                gi,
                "destroyed an idle instance to turn MIG off"
            );
        }
        locked.save(st)?;
        crate::failpoint!("mig_mode.instances_destroyed");
    }
    let current = match be.set_mig_mode(gpu.index, on) {
        Ok(current) => current,
        Err(e) => {
            settled(st, &gpu.uuid);
            locked.save(st)?;
            return Err(e.into());
        }
    };
    crate::failpoint!("mig_mode.set");
    if !current {
        // The driver holds the change until a reset: nothing changed that could be put back.
        settled(st, &gpu.uuid);
        locked.save(st)?;
        tracing::warn!(
            gpu = gpu.index,
            on,
            "MIG mode change pending until a GPU reset; gpushare never resets a GPU"
        );
        return Ok(Some(Hold::Pending { gpu: gpu.index, on }));
    }
    if let Some(r) = st.gpus.iter_mut().find(|g| g.uuid == gpu.uuid) {
        r.mig_enabled = on;
    }
    tracing::info!(
        gpu = gpu.index,
        on,
        "switched MIG mode for a request (mig.manage_mode)"
    );
    Ok(None)
}

/// For a whole-GPU or MPS grant that no GPU out of MIG mode (as the ledger's cache says)
/// serves: the first of `candidates` (GPU UUIDs, in the order to try) that the driver says is
/// out of MIG mode, or else that can be switched off. Ok(Ok(uuid)): that GPU is out of MIG mode
/// now (the grant calls [`settled`]); Ok(Err(why)): none, why for each GPU in MIG mode among
/// them. Refreshes the ledger's cache of MIG modes.
pub fn switch_off_one(
    cfg: &Config,
    be: &dyn Gpu,
    locked: &Locked,
    st: &mut LedgerState,
    candidates: &[String],
) -> Result<Result<String, Vec<(u32, Hold)>>, GpuError> {
    let live = be.gpus()?;
    for g in &live {
        if let Some(r) = st.gpus.iter_mut().find(|r| r.uuid == g.uuid) {
            r.mig_enabled = g.mig_mode.is_some_and(|(current, _)| current);
        }
    }
    let mig_on = |g: &&GpuInfo| g.mig_mode.is_some_and(|(current, _)| current);
    let ordered: Vec<&GpuInfo> = candidates
        .iter()
        .filter_map(|u| live.iter().find(|g| g.uuid == *u))
        .collect();
    // Out of MIG mode already (the ledger's cache was behind the driver): no switch needed.
    if let Some(g) = ordered.iter().find(|g| !mig_on(g)) {
        return Ok(Ok(g.uuid.clone()));
    }
    let mut why = Vec::new();
    for g in ordered {
        match switch(cfg, be, locked, st, g, false)? {
            None => return Ok(Ok(g.uuid.clone())),
            Some(h) => why.push((g.index, h)),
        }
    }
    Ok(Err(why))
}

/// `why`, one GPU's or several's, as a refusal says it.
pub fn explain(why: &[(u32, Hold)]) -> String {
    let mut out: Vec<String> = Vec::new();
    for (gpu, h) in why {
        let line = if why.len() > 1 {
            format!("GPU {gpu}: {h}")
        } else {
            h.to_string()
        };
        if !out.contains(&line) {
            out.push(line);
        }
    }
    out.join("; ")
}

/// The grant a switch was for is recorded: the switch is done.
pub fn settled(st: &mut LedgerState, gpu_uuid: &str) {
    st.mig_modes.retain(|r| r.gpu_uuid != gpu_uuid);
}

/// Put back the MIG mode of every GPU whose switch a crash left unsettled (see the module
/// docs). Callers repair instance intents first (`gc::repair_intents`): the dead grant's
/// instance would keep MIG on. Asks NVML only when there is a record. Returns what was
/// repaired; a failure keeps its record (for the next call or `gc`) and is returned as text.
pub fn repair(
    be: &dyn Gpu,
    node: &dyn Node,
    st: &mut LedgerState,
) -> (Vec<MigModeRecord>, Vec<String>) {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    if st.mig_modes.is_empty() {
        return (done, failed);
    }
    let gpus = match be.gpus() {
        Ok(g) => g,
        Err(e) => {
            failed.push(format!("put MIG mode back: {e}"));
            return (done, failed);
        }
    };
    for r in st.mig_modes.clone() {
        let Some(g) = gpus.iter().find(|g| g.uuid == r.gpu_uuid) else {
            // The GPU is gone: nothing to put back.
            settled(st, &r.gpu_uuid);
            continue;
        };
        let current = g.mig_mode.is_some_and(|(current, _)| current);
        if current != r.found {
            crate::failpoint!("mig_mode.before_restore");
            match be.set_mig_mode(g.index, r.found) {
                Ok(true) => {}
                Ok(false) => {
                    failed.push(format!(
                        "put MIG mode {} back on GPU {}: pending until a GPU reset",
                        on_off(r.found),
                        g.index
                    ));
                    settled(st, &r.gpu_uuid);
                    continue;
                }
                Err(e) => {
                    failed.push(format!(
                        "put MIG mode {} back on GPU {}: {e}",
                        on_off(r.found),
                        g.index
                    ));
                    continue;
                }
            }
            tracing::warn!(
                gpu = g.index,
                mig = on_off(r.found),
                "a crash left a MIG mode switch unsettled; put the mode found back"
            );
        }
        if let Some(rec) = st.gpus.iter_mut().find(|x| x.uuid == r.gpu_uuid) {
            rec.mig_enabled = r.found;
        }
        settled(st, &r.gpu_uuid);
        done.push(r);
    }
    // Instances the switch destroyed before the crash, whose records were not yet saved gone
    // (the driver's files say which).
    st.instances.retain(|r| {
        !done.iter().any(|d| d.gpu_uuid == r.gpu_uuid)
            || r.made
                .as_ref()
                .is_none_or(|m| node.has_instance(r.gpu_minor, m.gi, None))
    });
    (done, failed)
}

/// [`repair`], saving at once (the grant may still fail).
pub(crate) fn repair_and_save(
    be: &dyn Gpu,
    node: &dyn Node,
    locked: &Locked,
    st: &mut LedgerState,
) -> Result<(), crate::ledger::LedgerError> {
    if st.mig_modes.is_empty() {
        return Ok(());
    }
    let (_, failed) = repair(be, node, st);
    for f in &failed {
        tracing::warn!("{f}");
    }
    locked.save(st)
}

pub fn on_off(on: bool) -> &'static str {
    if on {
        "on"
    } else {
        "off"
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Lease, Ledger, ShareLease};
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};
    use std::time::Duration;

    fn managed(s: &mut Scratch) {
        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
    }

    fn lock(s: &Scratch) -> Locked {
        Ledger::new(&s.cfg.state_dir)
            .lock(Duration::from_secs(5))
            .unwrap()
    }

    #[test]
    fn an_idle_gpu_is_switched_on_and_the_record_waits_for_the_grant() {
        let mut s = Scratch::new("migmode-on");
        managed(&mut s);
        let gpu = FakeGpu::h100(1);
        gpu.set_mig(0, false);
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &gpu.info(0), true).unwrap(),
            None
        );
        assert_eq!(gpu.info(0).mig_mode, Some((true, true)));
        assert_eq!(st.mig_modes.len(), 1);
        assert!(!st.mig_modes[0].found, "what a repair puts back");
        drop(locked);
        assert_eq!(
            s.ledger().mig_modes,
            st.mig_modes,
            "saved before the switch"
        );
        settled(&mut st, &gpu.info(0).uuid);
        assert!(st.mig_modes.is_empty());
    }

    #[test]
    fn nothing_is_switched_under_a_process_a_lease_or_without_the_operators_word() {
        let mut s = Scratch::new("migmode-held");
        let gpu = FakeGpu::h100(1);
        gpu.set_mig(0, false);
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        let info = gpu.info(0);
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, true).unwrap(),
            Some(Hold::NotManaged)
        );
        s.cfg.mig.manage_mode = crate::config::ManageMode::Listed(vec!["1".into()]);
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, true).unwrap(),
            Some(Hold::NotManaged),
            "GPU 0 is not listed"
        );
        managed(&mut s);
        gpu.set_contexts(0, &[4242]);
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, true).unwrap(),
            Some(Hold::Processes(vec![4242]))
        );
        gpu.set_contexts(0, &[]);
        st.shares.push(ShareLease {
            gpu_uuid: info.uuid.clone(),
            gpu_index: 0,
            gpu_minor: 0,
            lease: Lease {
                container_id: "llm-2".into(),
                since: 1,
                runtime_root: None,
            },
        });
        let h = switch(&s.cfg, &gpu, &locked, &mut st, &info, true).unwrap();
        assert_eq!(h, Some(Hold::Holders(vec!["llm-2".into()])));
        assert_eq!(h.unwrap().to_string(), "llm-2 hold(s) it");
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "nothing switched");
        assert!(st.mig_modes.is_empty());
    }

    #[test]
    fn turning_mig_off_destroys_idle_instances_and_never_a_foreign_one() {
        let mut s = Scratch::new("migmode-off");
        managed(&mut s);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let who = crate::ledger::Claimant {
            container_id: "a",
            runtime_root: None,
        };
        crate::allocator::allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who).unwrap();
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        let info = gpu.info(0);
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, false).unwrap(),
            Some(Hold::Holders(vec!["a".into()])),
            "busy"
        );
        st.release("a");
        let other = gpu.make(0, "1g.10gb", crate::placement::Slot { start: 6, size: 1 });
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, false).unwrap(),
            Some(Hold::Foreign(1))
        );
        gpu.vanish(0, other.gi);
        gpu.clear_calls();
        assert_eq!(
            switch(&s.cfg, &gpu, &locked, &mut st, &info, false).unwrap(),
            None
        );
        let changes = gpu.changes();
        assert!(matches!(changes[0], Call::Destroy { .. }), "{changes:?}");
        assert_eq!(changes[1], Call::SetMigMode { gpu: 0, on: false });
        assert!(st.instances.is_empty());
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)));
    }

    #[test]
    fn a_change_pending_a_reset_is_left_pending_with_no_record() {
        let mut s = Scratch::new("migmode-pending");
        managed(&mut s);
        let gpu = FakeGpu::h100(1);
        gpu.set_mig(0, false);
        gpu.mig_needs_reset(0);
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        let h = switch(&s.cfg, &gpu, &locked, &mut st, &gpu.info(0), true).unwrap();
        assert_eq!(h, Some(Hold::Pending { gpu: 0, on: true }));
        assert!(h.unwrap().to_string().contains("`nvidia-smi -i 0 -r`"));
        assert_eq!(gpu.info(0).mig_mode, Some((false, true)), "left pending");
        assert!(st.mig_modes.is_empty());
        drop(locked);
        assert!(s.ledger().mig_modes.is_empty(), "nothing half-done");
        // Asked again: refused at once, the driver not asked to switch again.
        gpu.clear_calls();
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        let h = switch(&s.cfg, &gpu, &locked, &mut st, &gpu.info(0), true).unwrap();
        assert_eq!(h, Some(Hold::Pending { gpu: 0, on: true }));
        assert_eq!(gpu.changes(), Vec::<Call>::new());
    }

    #[test]
    fn gc_puts_an_unsettled_switch_back_and_a_dry_run_only_says_so() {
        let mut s = Scratch::new("migmode-gc");
        managed(&mut s);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        gpu.set_mig(0, false);
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        switch(&s.cfg, &gpu, &locked, &mut st, &gpu.info(0), true).unwrap();
        drop(locked);
        gpu.clear_calls();
        let mut opts = crate::gc::GcOptions::from_config(&s.cfg);
        opts.dry_run = true;
        let report = crate::gc::run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        assert!(report
            .render()
            .contains("would put MIG mode off back on GPU 0"));
        assert_eq!(gpu.changes(), Vec::<Call>::new());
        assert_eq!(s.ledger().mig_modes.len(), 1);
        opts.dry_run = false;
        let report = crate::gc::run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        assert_eq!(
            report.actions,
            vec![crate::gc::Action::RestoreMigMode { gpu: 0, mig: "off" }]
        );
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)));
        assert!(s.ledger().mig_modes.is_empty());
    }

    #[test]
    fn an_unsettled_switch_is_put_back_with_the_dead_grants_instance() {
        let mut s = Scratch::new("migmode-repair");
        managed(&mut s);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        gpu.set_mig(0, false);
        let locked = lock(&s);
        let mut st = locked.load().unwrap();
        switch(&s.cfg, &gpu, &locked, &mut st, &gpu.info(0), true).unwrap();
        // The grant's instance intent, and the instance, then a crash.
        let slot = crate::placement::Slot { start: 0, size: 2 };
        gpu.make(0, "2g.20gb", slot);
        st.instances.push(crate::testing::unmade_instance_record(
            &gpu.info(0).uuid,
            "2g.20gb",
            slot,
            None,
        ));
        locked.save(&st).unwrap();
        drop(locked);

        let mut st = s.ledger();
        crate::gc::repair_intents(&s.cfg, &gpu, &mut st).unwrap();
        let (done, failed) = repair(&gpu, &node, &mut st);
        assert!(failed.is_empty(), "{failed:?}");
        assert_eq!(done.len(), 1);
        assert!(gpu.instances(0).is_empty(), "the dead grant's instance");
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)), "MIG off again");
        assert!(st.mig_modes.is_empty() && st.instances.is_empty());
        gpu.clear_calls();
        assert_eq!(repair(&gpu, &node, &mut st), (vec![], vec![]));
        assert_eq!(gpu.calls(), Vec::<Call>::new(), "no NVML without a record");
    }
}
