//! `gpusharectl repair`: rebuild the ledger's MIG records when the ledger is lost or corrupt,
//! from what survives it: the driver's instances (NVML), gpushare's instance log
//! ([`crate::instance_log`]) and the low-level runtimes' containers, whose specs name the MIG
//! UUID they were granted. An instance a container's spec names is leased to that container,
//! one gpushare made that no container names goes back to the idle pool, a half-made one is
//! destroyed, and one neither gpushare's log nor a gpushare request names stays foreign. So
//! nothing is stranded and nothing a container runs on can be granted again.

use crate::config::Config;
use crate::fsutil::now_unix;
use crate::gc::Foreign;
use crate::gpu::{BackendError, Gpu};
use crate::ledger::{InstanceRecord, Lease, Ledger, LedgerError, LedgerState, Made};
use crate::node::Node;
use crate::running::{roots, scan, Container};
use serde::Serialize;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
    #[error("cannot move the corrupt ledger {path} aside to {to}: {source}")]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Report only: nothing moved, destroyed or written.
    pub dry_run: bool,
    /// Runtime state roots to scan besides the defaults.
    pub roots: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Where the corrupt ledger was moved.
    pub moved_aside: Option<PathBuf>,
    /// What was read back from the corrupt ledger's text (empty for a readable ledger).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub salvaged: String,
    /// The runtime roots scanned.
    pub roots: Vec<String>,
    /// Instances recorded: "<profile> GI <gi> on GPU <n>: leased to <id>" or "idle".
    pub recorded: Vec<String>,
    /// Half-made instances of gpushare's, destroyed.
    pub destroyed: Vec<String>,
    pub foreign: Vec<Foreign>,
    /// Instances more than one container's spec names: leased to the first, reported for a
    /// person to resolve (one of those containers must go).
    pub conflicts: Vec<String>,
    pub failed: Vec<String>,
    /// MIG mode switches a dead grant left unsettled, settled: "the MIG mode of GPU <n> back
    /// to <on|off>" (the mode found before the switch).
    pub mig_modes: Vec<String>,
}

impl RepairReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verb = if self.dry_run { "would " } else { "" };
        if let Some(p) = &self.moved_aside {
            let _ = writeln!(
                out,
                "{verb}move the corrupt ledger aside to {}",
                p.display()
            );
        }
        if !self.salvaged.is_empty() {
            let _ = writeln!(
                out,
                "{verb}keep from the corrupt ledger's text: {}",
                self.salvaged
            );
        }
        let _ = writeln!(out, "runtime roots scanned: {}", self.roots.join(", "));
        for r in &self.recorded {
            let _ = writeln!(out, "{verb}record {r}");
        }
        for d in &self.destroyed {
            let _ = writeln!(out, "{verb}destroy {d}");
        }
        for x in &self.foreign {
            let _ = writeln!(out, "{x}");
        }
        for c in &self.conflicts {
            let _ = writeln!(out, "CONFLICT: {c}");
        }
        for m in &self.mig_modes {
            let _ = writeln!(out, "{verb}put {m}");
        }
        for e in &self.failed {
            let _ = writeln!(out, "failed: {e}");
        }
        out
    }
}

/// Rebuild the ledger's MIG records; see the module docs. Holds the ledger's lock throughout.
pub fn run(cfg: &Config, opts: &RepairOptions) -> Result<RepairReport, RepairError> {
    run_on(
        cfg,
        &crate::nvml::OnDemand::new(cfg),
        &crate::node::Host::new(cfg),
        opts,
    )
}

/// [`run`] against `be`'s GPUs and `node`'s driver files.
pub fn run_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    opts: &RepairOptions,
) -> Result<RepairReport, RepairError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut report = RepairReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let (old, salvage) = match locked.load() {
        Ok(st) => (st, None),
        Err(LedgerError::Corrupt { path, .. }) | Err(LedgerError::Format { path, .. }) => {
            let raw = std::fs::read(&path).unwrap_or_default();
            let mut aside = path.clone().into_os_string();
            aside.push(format!(
                "{}{}",
                gpushare_state::ledger::CORRUPT_SUFFIX,
                now_unix()
            ));
            report.moved_aside = Some(aside.into());
            (LedgerState::default(), Some(raw))
        }
        // A journal this version cannot read goes below, as every journal does.
        Err(LedgerError::Journal { .. }) => (locked.load_without_journal()?, None),
        Err(e) => return Err(e.into()),
    };
    report.roots = roots(cfg, &old, salvage.as_deref(), &opts.roots);
    let containers = scan(&report.roots);
    let owned = crate::instance_log::owned(&cfg.state_dir);
    let gpus = be.gpus()?;
    // Everything but the MIG records is kept from a readable ledger. From a corrupt one, what
    // its text still holds whole of what nothing else can tell: MPS daemons (their processes
    // run on, their compute modes to put back), time-sliced leases, and MIG mode switches a
    // dead grant left (a GPU must not stay in a mode gpushare changed with no record of it).
    let mut st = LedgerState {
        instances: Vec::new(),
        ..old.clone()
    };
    if let Some(raw) = &salvage {
        st.shares = salvaged(raw, "shares");
        st.mps = salvaged(raw, "mps");
        st.compute_modes = salvaged(raw, "compute_modes");
        st.mig_modes = salvaged(raw, "mig_modes");
        report.salvaged = format!(
            "{} MPS daemon(s), {} time-sliced lease(s), {} compute mode record(s), {} MIG mode switch record(s)",
            st.mps.len(),
            st.shares.len(),
            st.compute_modes.len(),
            st.mig_modes.len()
        );
    }
    crate::gpus::refresh_gpus(be, &mut st, &gpus)?;
    let mut gone = Vec::new();
    let mut held: std::collections::BTreeSet<String> = Default::default();

    for g in &gpus {
        if !g.mig_mode.is_some_and(|(current, _)| current) {
            continue;
        }
        let profiles = st
            .gpus
            .iter()
            .find(|r| r.uuid == g.uuid)
            .map(|r| r.profiles.clone())
            .unwrap_or_default();
        for gi in be.gpu_instances(g.index, &profiles)? {
            let profile = profiles.iter().find(|p| p.id == gi.profile_id);
            let name =
                profile.map_or_else(|| format!("profile {}", gi.profile_id), |p| p.name.clone());
            let label = format!(
                "{name} GI {} at slot {} on GPU {}",
                gi.id, gi.slot.start, g.index
            );
            // gpushare made one compute instance spanning each GPU instance.
            let ci = gi.compute_instances.first().copied();
            let mig = ci.and_then(|ci| be.mig_uuid(g.index, gi.id, ci).ok());
            let by_ledger = old.instances.iter().any(|r| {
                r.gpu_uuid == g.uuid
                    && r.slot == gi.slot
                    && r.profile_id == gi.profile_id
                    && r.made.as_ref().is_none_or(|m| m.gi == gi.id)
            });
            let by_log = owned
                .iter()
                .any(|o| o.gpu == g.uuid && o.matches(gi.id, gi.profile_id, gi.slot));
            // A slice whose MPS daemon the kept ledger records serves its clients, whose specs
            // all name it: it is no container's lease.
            let serving = st.mps.iter().any(|d| {
                d.mig
                    .as_ref()
                    .is_some_and(|h| Some(&h.mig_uuid) == mig.as_ref())
            });
            let named: Vec<&Container> = match &mig {
                Some(m) if !serving => containers.iter().filter(|c| c.migs.contains(m)).collect(),
                _ => Vec::new(),
            };
            let by_request = named.iter().any(|c| c.requested);
            if !(by_ledger || by_log || by_request) {
                report.foreign.push(Foreign {
                    gpu: g.index,
                    gi: gi.id,
                    profile: name,
                    slot: gi.slot,
                });
                continue;
            }
            // On a GPU a dead grant turned MIG on for, gpushare's instances are that grant's
            // (the switch is settled in the save that records the grant, under one lock): no
            // container got one, and the mode cannot be put back while they are there. (A slice
            // a kept daemon serves is not one of them, whatever a record says.)
            let dead_grants = named.is_empty()
                && !serving
                && st
                    .mig_modes
                    .iter()
                    .any(|r| r.gpu_uuid == g.uuid && !r.found);
            let (Some(ci), Some(mig), Some(profile), false) = (ci, mig, profile, dead_grants)
            else {
                // Half made (or half destroyed), or a dead switch's: no container can use it.
                if !opts.dry_run {
                    if let Err(e) = be.destroy(g.index, gi.id, &gi.compute_instances) {
                        report.failed.push(format!("destroy {label}: {e}"));
                        continue;
                    }
                    gone.push(crate::instance_log::gone(&g.uuid, gi.slot));
                }
                report.destroyed.push(label);
                continue;
            };
            let (gi_cap_minor, ci_cap_minor) = node.cap_minors(g.minor, gi.id, ci)?;
            let holder = named.first().copied();
            if named.len() > 1 {
                report.conflicts.push(format!(
                    "{label} ({mig}) is named by the specs of {}: leased to {}; the others run on a slice that is not theirs",
                    named.iter().map(|c| format!("{} ({})", c.id, c.root)).collect::<Vec<_>>().join(", "),
                    named[0].id
                ));
            }
            if let Some(c) = holder {
                if !held.insert(c.id.clone()) {
                    report.conflicts.push(format!(
                        "container {} names more than one MIG instance; {label} is leased to it too",
                        c.id
                    ));
                }
            }
            let now = now_unix();
            // A lease the old ledger still holds for a container the runtime does not have yet
            // may be a `create` still running (granted, its state not yet written): kept while
            // younger than the grace period, as `gc` keeps it. A claim's lease is kept whatever
            // its age: it ends when the kubelet unprepares the claim, not with a container.
            let young = old
                .instances
                .iter()
                .filter(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == mig))
                .filter_map(|r| r.lease.clone())
                .find(|l| {
                    l.owner().is_claim() || now.saturating_sub(l.since) < cfg.pool.gc_grace_s
                });
            let lease = match (holder, young) {
                (Some(c), _) => Some(Lease {
                    container_id: c.id.clone(),
                    since: now,
                    runtime_root: Some(c.root.clone()),
                }),
                (None, young) => young,
            };
            report.recorded.push(match (&lease, holder) {
                (Some(l), Some(c)) => format!("{label}: leased to container {} ({})", l.container_id, c.root),
                (Some(l), None) if l.owner().is_claim() => {
                    format!("{label}: leased to {}, kept until the kubelet unprepares it", l.owner())
                }
                (Some(l), None) => format!(
                    "{label}: leased to container {}, kept: the runtime has no such container yet and the lease is younger than {} s",
                    l.container_id, cfg.pool.gc_grace_s
                ),
                (None, _) if serving => format!("{label}: serves MPS shares (its daemon's record is kept)"),
                (None, _) => format!("{label}: idle"),
            });
            st.instances.push(InstanceRecord {
                gpu_uuid: g.uuid.clone(),
                gpu_index: g.index,
                gpu_minor: g.minor,
                profile: profile.name.clone(),
                profile_id: profile.id,
                slot: gi.slot,
                made: Some(Made {
                    gi: gi.id,
                    ci,
                    mig_uuid: mig.clone(),
                    gi_cap_minor,
                    ci_cap_minor,
                }),
                created_at: now,
                idle_since: (lease.is_none() && !serving).then_some(now),
                mps: serving,
                lease,
            });
            if !by_log && !opts.dry_run {
                gone.push(crate::instance_log::Event::Made {
                    gpu: g.uuid.clone(),
                    slot: gi.slot,
                    profile: profile.name.clone(),
                    profile_id: profile.id,
                    gi: gi.id,
                    ci,
                    mig,
                    t: now,
                    root: holder.map(|c| c.root.clone()),
                });
            }
        }
    }
    if opts.dry_run {
        report.mig_modes = st
            .mig_modes
            .iter()
            .map(|r| mig_mode_label(r.found, r.gpu_index))
            .collect();
        return Ok(report);
    }
    let (done, failed) = crate::mig_mode::repair(be, node, &mut st);
    report.mig_modes = done
        .iter()
        .map(|r| mig_mode_label(r.found, r.gpu_index))
        .collect();
    report.failed.extend(failed);
    if let Some(to) = &report.moved_aside {
        let path = ledger.path();
        std::fs::rename(&path, to).map_err(|source| RepairError::MoveAside {
            path,
            to: to.clone(),
            source,
        })?;
    }
    // The journal's lines and the offers were made against a ledger that is no more; a new
    // ledger's generations could meet theirs, so both go before it is written.
    for stale in [
        ledger.journal_path(),
        cfg.state_dir.join(gpushare_state::offers::NAME),
    ] {
        if let Err(e) = std::fs::remove_file(&stale) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report
                    .failed
                    .push(format!("cannot remove {}: {e}", stale.display()));
            }
        }
    }
    locked.save(&st)?;
    // Markers of leases the rebuilt ledger no longer holds (the dropped journal's grants, a
    // crash's leftovers) go, still under the lock.
    let ids = st.lease_ids();
    crate::lease_marker::sweep(&cfg.state_dir, |id| ids.contains(id));
    crate::instance_log::note(&cfg.state_dir, &gone);
    let generation = locked.generation();
    drop(locked);
    crate::offers::write(cfg, &mut st, generation);
    Ok(report)
}

fn mig_mode_label(found: bool, gpu: u32) -> String {
    format!(
        "the MIG mode of GPU {gpu} back to {}",
        crate::mig_mode::on_off(found)
    )
}

/// The records of the ledger's top-level array `key` that a ledger too damaged to parse still
/// holds whole: the first array after a `"key":` that reads as such, whatever follows it.
fn salvaged<T: serde::de::DeserializeOwned>(raw: &[u8], key: &str) -> Vec<T> {
    let key = format!("\"{key}\":");
    let key = key.as_bytes();
    raw.windows(key.len())
        .enumerate()
        .filter(|(_, w)| *w == key)
        .find_map(|(at, _)| {
            serde_json::Deserializer::from_slice(&raw[at + key.len()..])
                .into_iter::<Vec<T>>()
                .next()
                .and_then(Result::ok)
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{allocate_on, release};
    use crate::ledger::Claimant;
    use crate::placement::Slot;
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};

    #[test]
    fn a_claims_lease_survives_a_rebuild_whatever_its_age() {
        let s = Scratch::new("repair-claim");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let claim = crate::ledger::Owner::claim_lease_id("c0ffee00-0000-4000-8000-000000000001-0");
        let who = Claimant {
            container_id: &claim,
            runtime_root: None,
        };
        let g = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who).unwrap();
        // Older than gc's grace: a container's lease this old, with no container, would go.
        let ledger = Ledger::new(&s.cfg.state_dir);
        let locked = ledger.lock(Duration::from_secs(5)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances[0].lease.as_mut().unwrap().since -= s.cfg.pool.gc_grace_s + 60;
        locked.save(&st).unwrap();
        drop(locked);

        let report = run_on(&s.cfg, &gpu, &node, &RepairOptions::default()).unwrap();
        let st = s.ledger();
        let r = &st.instances[0];
        assert_eq!(r.made.as_ref().unwrap().mig_uuid, g.mig_uuid);
        assert_eq!(
            r.lease.as_ref().map(|l| l.container_id.as_str()),
            Some(claim.as_str())
        );
        assert!(
            report.recorded[0].ends_with("kept until the kubelet unprepares it"),
            "{:?}",
            report.recorded
        );
    }

    #[test]
    fn a_lost_ledger_is_rebuilt_from_the_driver_and_the_instance_log() {
        let s = Scratch::new("repair-lost");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let who = Claimant {
            container_id: "a",
            runtime_root: None,
        };
        let g = allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who).unwrap();
        release(&s.cfg, "a", Duration::from_secs(5)).unwrap();
        let theirs = gpu.make(0, "1g.10gb", Slot { start: 6, size: 1 });
        std::fs::remove_file(Ledger::new(&s.cfg.state_dir).path()).unwrap();
        gpu.clear_calls();

        let opts = RepairOptions {
            dry_run: false,
            roots: Vec::new(),
        };
        let report = run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        assert_eq!(
            gpu.changes(),
            Vec::<Call>::new(),
            "nothing made or destroyed"
        );
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "gpushare's instance, not theirs");
        let r = &st.instances[0];
        let m = r.made.as_ref().unwrap();
        assert_eq!(r.profile, "2g.20gb");
        assert_eq!(
            (m.gi, m.ci, m.mig_uuid.as_str()),
            (g.gi, g.ci, g.mig_uuid.as_str())
        );
        assert_eq!(
            (m.gi_cap_minor, m.ci_cap_minor),
            (g.gi_cap_minor, g.ci_cap_minor)
        );
        assert!(r.lease.is_none(), "no container names it: idle");
        assert_eq!(
            report.foreign.iter().map(|f| f.gi).collect::<Vec<_>>(),
            vec![theirs.gi]
        );
    }

    #[test]
    fn a_slice_serving_mps_stays_so_when_its_daemon_is_kept() {
        let mut s = Scratch::new("repair-mps-slice");
        s.cfg.mps.control = std::path::PathBuf::from("/bin/sh");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let who = Claimant {
            container_id: "a",
            runtime_root: None,
        };
        let g =
            crate::mps_mig::grant_on(&s.cfg, &gpu, &node, "3g.40gb", 50, None, None, &who).unwrap();
        let opts = RepairOptions {
            dry_run: false,
            roots: Vec::new(),
        };
        let report = run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        let st = s.ledger();
        assert_eq!(st.mps.len(), 1);
        let r = &st.instances[0];
        assert_eq!(r.made.as_ref().unwrap().mig_uuid, g.gpu_uuid);
        assert!(r.mps && r.lease.is_none() && !r.is_idle(), "{r:?}");
        assert!(
            report
                .recorded
                .iter()
                .any(|l| l.contains("serves MPS shares")),
            "{:?}",
            report.recorded
        );
    }

    /// A corrupt ledger's MPS daemons (in a slice and on a whole GPU, with the compute mode
    /// to put back) and time-sliced leases are read back from its text: the daemons' processes
    /// run on, and without their records nothing would stop them or put the mode back.
    #[test]
    fn a_corrupt_ledgers_mps_daemons_and_shares_are_kept_from_its_text() {
        use crate::request::DeviceSelector;
        let mut s = Scratch::new("repair-salvage");
        s.cfg.mps.control = std::path::PathBuf::from("/bin/sh");
        let gpu = FakeGpu::h100(3);
        gpu.set_mig(1, false);
        gpu.set_mig(2, false);
        let node = FakeNode::new(&gpu);
        let who = |id| Claimant {
            container_id: id,
            runtime_root: None,
        };
        let g = crate::mps_mig::grant_on(&s.cfg, &gpu, &node, "3g.40gb", 50, None, None, &who("a"))
            .unwrap();
        crate::mps::grant_on(
            &s.cfg,
            &gpu,
            &node,
            25,
            None,
            Some(&DeviceSelector::Index(1)),
            &who("b"),
        )
        .unwrap();
        crate::share::grant_on(
            &s.cfg,
            &gpu,
            &node,
            Some(&DeviceSelector::Index(2)),
            &who("c"),
        )
        .unwrap();
        let before = s.ledger();
        assert_eq!(
            (
                before.mps.len(),
                before.compute_modes.len(),
                before.shares.len()
            ),
            (2, 1, 1)
        );
        damage_ledger(&s);

        let report = run_on(&s.cfg, &gpu, &node, &RepairOptions::default()).unwrap();
        assert!(report.moved_aside.is_some());
        assert!(
            report.render().contains(
                "keep from the corrupt ledger's text: 2 MPS daemon(s), 1 time-sliced lease(s), 1 compute mode record(s), 0 MIG mode switch record(s)"
            ),
            "{}",
            report.render()
        );
        let st = s.ledger();
        assert_eq!(st.mps, before.mps);
        assert_eq!(st.compute_modes, before.compute_modes);
        assert_eq!(st.shares, before.shares);
        let r = &st.instances[0];
        assert_eq!(r.made.as_ref().unwrap().mig_uuid, g.gpu_uuid);
        assert!(r.mps && r.lease.is_none() && !r.is_idle(), "{r:?}");
    }

    /// A grant that turned MIG on and died after making its instance (alloc.cold.made): the
    /// ledger holds the switch record and the instance's intent, the instance log its make.
    /// Breaks the ledger's JSON at its `"instances":` key: it no longer parses, and the rest of
    /// its text stays whole for repair to salvage.
    fn damage_ledger(s: &Scratch) {
        let path = Ledger::new(&s.cfg.state_dir).path();
        let mut raw = std::fs::read(&path).unwrap();
        let at = raw
            .windows(12)
            .position(|w| w == b"\"instances\":")
            .unwrap();
        raw[at + 11] = b'#';
        std::fs::write(&path, raw).unwrap();
    }

    fn crashed_mig_switch(s: &Scratch, gpu: &FakeGpu) -> crate::gpu::Created {
        let locked = Ledger::new(&s.cfg.state_dir)
            .lock(Duration::from_secs(5))
            .unwrap();
        let mut st = locked.load().unwrap();
        crate::mig_mode::switch(&s.cfg, gpu, &locked, &mut st, &gpu.info(0), true).unwrap();
        let slot = Slot { start: 0, size: 2 };
        let uuid = gpu.info(0).uuid;
        crate::instance_log::note(
            &s.cfg.state_dir,
            &[crate::instance_log::Event::Intent {
                gpu: uuid.clone(),
                slot,
                profile: "2g.20gb".into(),
                profile_id: 14,
                t: 1,
            }],
        );
        st.instances.push(crate::testing::unmade_instance_record(
            &uuid,
            "2g.20gb",
            slot,
            Some("dead"),
        ));
        locked.save(&st).unwrap();
        let made = gpu.make(0, "2g.20gb", slot);
        crate::instance_log::note(
            &s.cfg.state_dir,
            &[crate::instance_log::Event::Made {
                gpu: uuid,
                slot,
                profile: "2g.20gb".into(),
                profile_id: 14,
                gi: made.gi,
                ci: made.ci,
                mig: made.mig_uuid.clone(),
                t: 1,
                root: None,
            }],
        );
        made
    }

    /// `repair` destroys the dead grant's instance and puts the mode found back, saying so;
    /// `gc` has nothing left to do.
    fn assert_repair_undoes_the_switch(s: &Scratch, gpu: &FakeGpu, node: &FakeNode) {
        let dry = RepairOptions {
            dry_run: true,
            ..Default::default()
        };
        let report = run_on(&s.cfg, gpu, node, &dry).unwrap();
        assert!(
            report
                .render()
                .contains("would put the MIG mode of GPU 0 back to off"),
            "{}",
            report.render()
        );
        assert_eq!(gpu.info(0).mig_mode, Some((true, true)), "a dry run");
        let report = run_on(&s.cfg, gpu, node, &RepairOptions::default()).unwrap();
        assert!(report.failed.is_empty(), "{}", report.render());
        assert_eq!(
            report.mig_modes,
            vec!["the MIG mode of GPU 0 back to off".to_string()]
        );
        assert_eq!(report.destroyed.len(), 1, "{}", report.render());
        assert!(gpu.instances(0).is_empty(), "the dead grant's instance");
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)), "MIG off again");
        let st = s.ledger();
        assert!(st.mig_modes.is_empty() && st.instances.is_empty(), "{st:?}");
        let gc = crate::gc::run_on(
            &s.cfg,
            gpu,
            node,
            &crate::gc::GcOptions::from_config(&s.cfg),
        )
        .unwrap();
        assert!(
            gc.actions.is_empty() && gc.failed.is_empty(),
            "{}",
            gc.render()
        );
    }

    #[test]
    fn repair_puts_back_the_mig_mode_a_dead_grant_switched() {
        let mut s = Scratch::new("repair-migmode");
        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        gpu.set_mig(0, false);
        crashed_mig_switch(&s, &gpu);
        assert_repair_undoes_the_switch(&s, &gpu, &node);
    }

    #[test]
    fn repair_of_a_corrupt_ledger_keeps_its_mig_switch_record() {
        let mut s = Scratch::new("repair-migmode-corrupt");
        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        gpu.set_mig(0, false);
        crashed_mig_switch(&s, &gpu);
        // Damaged before the switch record: the ledger no longer parses, the record's text
        // is whole.
        damage_ledger(&s);
        assert!(Ledger::new(&s.cfg.state_dir)
            .lock(Duration::from_secs(5))
            .unwrap()
            .load()
            .is_err());
        assert_repair_undoes_the_switch(&s, &gpu, &node);
    }
}
