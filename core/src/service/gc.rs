//! Reconciling the ledger with the runtime's state and with the driver: what `gpusharectl gc`
//! does, and the cheap parts every allocation does.
//!
//! Ownership is the ledger's word: an instance is gpushare's only if a record says so. A record
//! without `made` is an intent written before the instance was created; it is only ever seen by
//! another process after the writer died (the writer holds the ledger lock from the intent until
//! it records the result), so whatever NVML shows at that placement is gpushare's leftover and
//! is destroyed. Instances no record claims are reported and never touched.

use crate::config::Config;
use crate::fsutil::now_unix;
use crate::gpu::{BackendError, Gpu};
use crate::ledger::{InstanceRecord, Ledger, LedgerError, LedgerState};
use crate::node::Node;
use crate::placement::{GpuInstance, Profile, Slot};
use serde::Serialize;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum GcError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
}

/// An action NVML refused (a destroy of an instance a process still holds, say): reported
/// under `failed:`, its record kept for the next run.
#[derive(Debug, thiserror::Error)]
#[error("{action}: {source}")]
pub struct ActionFailed {
    pub action: Action,
    #[source]
    pub source: BackendError,
}

#[derive(Debug, Clone)]
pub struct GcOptions {
    /// Report only: no instance destroyed, no ledger change.
    pub dry_run: bool,
    /// Leases younger than this are kept even when the runtime has no such container.
    pub grace_s: u64,
    /// Runtime state roots to look for live GPU containers in, besides those the leases name
    /// and runc's and crun's defaults.
    pub runtime_roots: Vec<String>,
}

impl GcOptions {
    pub fn from_config(cfg: &Config) -> GcOptions {
        GcOptions {
            dry_run: false,
            grace_s: cfg.pool.gc_grace_s,
            runtime_roots: Vec::new(),
        }
    }
}

/// One thing gc did (or, in a dry run, would do).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    /// A container the runtime no longer has held a slice: it goes back to the idle pool.
    ReleaseLease {
        container_id: String,
        gpu: u32,
        what: String,
        runtime_root: String,
    },
    /// The ledger knew an instance the driver no longer has: the record is dropped.
    DropRecord {
        gpu: u32,
        profile: String,
        slot: Slot,
        reason: &'static str,
    },
    /// An instance gpushare started to make or to destroy and did not finish (a crash).
    DestroyLeftover {
        gpu: u32,
        profile: String,
        gi: u32,
        slot: Slot,
        reason: &'static str,
    },
    /// A crash left a GPU in the compute mode gpushare set for an MPS daemon that is gone.
    RestoreComputeMode { gpu: u32, mode: &'static str },
    /// A crash left a MIG mode switch unsettled (`mig.manage_mode`): the mode found is back.
    RestoreMigMode { gpu: u32, mig: &'static str },
    /// An instance the ledger lost that gpushare's instance log says it made, whole (its
    /// compute instance and MIG UUID as logged): recorded again, idle or held by the container
    /// whose spec names it.
    Adopt {
        gpu: u32,
        profile: String,
        gi: u32,
        slot: Slot,
        container_id: Option<String>,
    },
    /// A live container runs on an idle instance the ledger no longer leases to it (its lease
    /// was released while it came up): the lease is given back to it, so the instance is never
    /// granted to another container.
    AdoptLease {
        container_id: String,
        gpu: u32,
        mig_uuid: String,
        runtime_root: String,
    },
    /// An MPS daemon bound to a MIG instance the ledger no longer records (the driver lost it):
    /// stopped, and its clients' shares with it.
    StopMpsDaemon {
        gpu: u32,
        mig_uuid: String,
        clients: Vec<String>,
    },
    /// A MIG instance marked as serving MPS that no daemon serves: back to the idle pool.
    ReturnMpsSlice {
        gpu: u32,
        profile: String,
        mig_uuid: String,
    },
    /// An idle instance older than `pool.idle_timeout_s`.
    DestroyIdle {
        gpu: u32,
        profile: String,
        gi: u32,
        idle_s: u64,
    },
}

/// An instance NVML shows that no ledger record claims: someone else's; never touched.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Foreign {
    pub gpu: u32,
    pub gi: u32,
    pub profile: String,
    pub slot: Slot,
}

impl std::fmt::Display for Foreign {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "foreign: {} GI {} at slot {} on GPU {} is not gpushare's; left alone",
            self.profile, self.gi, self.slot.start, self.gpu
        )
    }
}

#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub dry_run: bool,
    pub actions: Vec<Action>,
    pub foreign: Vec<Foreign>,
    /// Leases of containers the runtime does not have, kept because they are younger than the
    /// grace period (their create may still be running).
    pub young: Vec<String>,
    /// Actions that failed, with NVML's reason; the records stay for the next run.
    pub failed: Vec<String>,
    /// Live containers running on a slice the ledger does not lease to them and that gc could
    /// not give back (another container holds it, or the ledger does not know the instance):
    /// an isolation breach for an operator to act on at once.
    pub unleased: Vec<String>,
}

impl std::fmt::Display for Action {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Action::ReleaseLease {
                container_id,
                gpu,
                what,
                runtime_root,
            } => write!(
                f,
                "release {what} of container {container_id} (GPU {gpu}): {runtime_root}/{container_id} does not exist"
            ),
            Action::DropRecord {
                gpu,
                profile,
                slot,
                reason,
            } => write!(
                f,
                "forget {profile} at slot {} on GPU {gpu}: {reason}",
                slot.start
            ),
            Action::DestroyLeftover {
                gpu,
                profile,
                gi,
                slot,
                reason,
            } => write!(
                f,
                "destroy {profile} GI {gi} at slot {} on GPU {gpu}: {reason}",
                slot.start
            ),
            Action::RestoreComputeMode { gpu, mode } => write!(
                f,
                "put compute mode {mode} back on GPU {gpu}: its MPS daemon is gone (a crash)"
            ),
            Action::RestoreMigMode { gpu, mig } => write!(
                f,
                "put MIG mode {mig} back on GPU {gpu}: the grant it was switched for died (a crash)"
            ),
            Action::Adopt {
                gpu,
                profile,
                gi,
                slot,
                container_id,
            } => write!(
                f,
                "adopt {profile} GI {gi} at slot {} on GPU {gpu}: the ledger lost it, gpushare's instance log names it; {}",
                slot.start,
                match container_id {
                    Some(id) => format!("held by container {id}, whose spec names it"),
                    None => "idle".into(),
                }
            ),
            Action::AdoptLease {
                container_id,
                gpu,
                mig_uuid,
                runtime_root,
            } => write!(
                f,
                "lease {mig_uuid} (GPU {gpu}) to container {container_id} again: it runs on it ({runtime_root}/{container_id}) but its lease was gone"
            ),
            Action::StopMpsDaemon {
                gpu,
                mig_uuid,
                clients,
            } => write!(
                f,
                "stop the MPS daemon of {mig_uuid} (GPU {gpu}) and drop the shares of {}: the instance is gone",
                if clients.is_empty() {
                    "no container".to_string()
                } else {
                    clients.join(", ")
                }
            ),
            Action::ReturnMpsSlice {
                gpu,
                profile,
                mig_uuid,
            } => write!(
                f,
                "return {profile} {mig_uuid} (GPU {gpu}) to the idle pool: marked as serving MPS, but no daemon serves it"
            ),
            Action::DestroyIdle {
                gpu,
                profile,
                gi,
                idle_s,
            } => write!(
                f,
                "destroy idle {profile} GI {gi} on GPU {gpu}: idle for {idle_s} s"
            ),
        }
    }
}

impl Report {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verb = if self.dry_run { "would " } else { "" };
        for u in &self.unleased {
            let _ = writeln!(out, "ALERT: {u}");
        }
        if self.actions.is_empty() {
            let _ = writeln!(out, "nothing to repair");
        }
        for a in &self.actions {
            let _ = writeln!(out, "{verb}{a}");
        }
        for y in &self.young {
            let _ = writeln!(out, "kept {y}");
        }
        for x in &self.foreign {
            let _ = writeln!(out, "{x}");
        }
        for e in &self.failed {
            let _ = writeln!(out, "failed: {e}");
        }
        out
    }
}

/// A daemon whose instance record is gone (dropped above: the driver lost it) is stopped; an
/// instance marked as serving MPS that no daemon serves goes back to the idle pool.
fn mps_slices(
    cfg: &Config,
    node: &dyn Node,
    st: &mut LedgerState,
    dry_run: bool,
    report: &mut Report,
) {
    let hosted = |st: &LedgerState, uuid: &str| {
        st.instances
            .iter()
            .any(|r| r.mps && r.made.as_ref().is_some_and(|m| m.mig_uuid == uuid))
    };
    let mut i = 0;
    while i < st.mps.len() {
        let d = &st.mps[i];
        let Some(h) = d.mig.as_ref().filter(|h| !hosted(st, &h.mig_uuid)) else {
            i += 1;
            continue;
        };
        report.actions.push(Action::StopMpsDaemon {
            gpu: d.gpu_index,
            mig_uuid: h.mig_uuid.clone(),
            clients: d
                .clients
                .iter()
                .map(|c| c.lease.container_id.clone())
                .collect(),
        });
        if dry_run {
            i += 1;
            continue;
        }
        let d = st.mps.remove(i);
        if let Err(e) = crate::mps::stop(cfg, node, &d) {
            report.failed.push(format!(
                "stopping the MPS daemon of {}: {e}",
                d.device_uuid()
            ));
        }
    }
    let served: Vec<String> = st
        .mps
        .iter()
        .filter_map(|d| d.mig.as_ref().map(|h| h.mig_uuid.clone()))
        .collect();
    let now = now_unix();
    for r in st.instances.iter_mut().filter(|r| r.mps) {
        let Some(m) = &r.made else { continue };
        if served.contains(&m.mig_uuid) {
            continue;
        }
        report.actions.push(Action::ReturnMpsSlice {
            gpu: r.gpu_index,
            profile: r.profile.clone(),
            mig_uuid: m.mig_uuid.clone(),
        });
        if !dry_run {
            r.mps = false;
            r.idle_since = Some(now);
        }
    }
}

/// The cheap check every allocation makes (driver files only, no NVML): records whose compute
/// instance is gone are dropped, except where the GPU instance is still there (a destroy that
/// died half-way): that record becomes an intent again, so the next cold path or gc destroys
/// the rest instead of leaving it to look foreign.
pub fn prune_vanished(st: &mut LedgerState, node: &dyn Node) {
    st.instances.retain_mut(|r| check_vanished(node, r));
}

/// [`prune_vanished`] for one record: false when the instance is gone entirely (drop the
/// record); a record whose compute instance alone is gone loses its `made`.
pub fn check_vanished(node: &dyn Node, r: &mut InstanceRecord) -> bool {
    let Some(m) = &r.made else { return true };
    if node.has_instance(r.gpu_minor, m.gi, Some(m.ci)) {
        return true;
    }
    if node.has_instance(r.gpu_minor, m.gi, None) {
        r.made = None;
        return true;
    }
    false
}

fn profiles_of(
    be: &dyn Gpu,
    st: &LedgerState,
    uuid: &str,
    index: u32,
) -> Result<Vec<Profile>, BackendError> {
    match st
        .gpus
        .iter()
        .find(|g| g.uuid == uuid && !g.profiles.is_empty())
    {
        Some(g) => Ok(g.profiles.clone()),
        None => be.profiles(index),
    }
}

fn at_slot(existing: &[GpuInstance], slot: Slot, profile_id: u32) -> Option<&GpuInstance> {
    existing
        .iter()
        .find(|g| g.slot == slot && g.profile_id == profile_id)
}

/// Destroy what intents left behind (called with the ledger locked, NVML open: the cold path
/// does it before placing anything). Returns what was destroyed; a destroy that fails keeps
/// its record for the next try and is only logged.
pub fn repair_intents(
    cfg: &Config,
    be: &dyn Gpu,
    st: &mut LedgerState,
) -> Result<Vec<Action>, BackendError> {
    let mut done = Vec::new();
    let mut i = 0;
    while i < st.instances.len() {
        if st.instances[i].made.is_some() {
            i += 1;
            continue;
        }
        let r = st.instances[i].clone();
        let profiles = profiles_of(be, st, &r.gpu_uuid, r.gpu_index)?;
        let existing = be.gpu_instances(r.gpu_index, &profiles)?;
        if let Some(gi) = at_slot(&existing, r.slot, r.profile_id) {
            crate::failpoint!("gc.leftover.before_destroy");
            if let Err(e) = be.destroy(r.gpu_index, gi.id, &gi.compute_instances) {
                tracing::warn!(
                    gpu = r.gpu_index,
                    gi = gi.id,
                    "cannot destroy a leftover instance: {e}"
                );
                i += 1;
                continue;
            }
            done.push(Action::DestroyLeftover {
                gpu: r.gpu_index,
                profile: r.profile.clone(),
                gi: gi.id,
                slot: r.slot,
                reason: "an allocation died before recording it",
            });
        }
        crate::instance_log::note(
            &cfg.state_dir,
            &[crate::instance_log::gone(&r.gpu_uuid, r.slot)],
        );
        st.instances.remove(i);
    }
    Ok(done)
}

/// How old a temp file in the state folder must be before gc takes it for a killed writer's:
/// a live write takes milliseconds.
const TEMP_MIN_AGE: Duration = Duration::from_secs(60);

fn container_gone(node: &dyn Node, root: &str, id: &str) -> bool {
    // A container id never has a slash (runc refuses one), so this stays below the root.
    !id.contains('/') && !node.has_container(root, id)
}

/// Reconcile; see the module docs. Holds the ledger lock throughout, so it never races an
/// allocation.
pub fn run(cfg: &Config, opts: &GcOptions) -> Result<Report, GcError> {
    run_on(
        cfg,
        &crate::nvml::OnDemand::new(cfg),
        &crate::node::Host::new(cfg),
        opts,
    )
}

/// [`run`] against `be`'s GPUs and `node`'s driver files and containers.
pub fn run_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    opts: &GcOptions,
) -> Result<Report, GcError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut st = locked.load()?;
    let before = st.clone();
    let mut report = Report {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let now = now_unix();
    let gpus = be.gpus()?;

    // What the driver has, per GPU.
    let mut live: Vec<(u32, String, Vec<Profile>, Vec<GpuInstance>)> = Vec::new();
    for g in &gpus {
        let profiles = profiles_of(be, &st, &g.uuid, g.index)?;
        let existing = if g.mig_mode.is_some_and(|(current, _)| current) {
            be.gpu_instances(g.index, &profiles)?
        } else {
            Vec::new()
        };
        live.push((g.index, g.uuid.clone(), profiles, existing));
    }
    let mut claimed: Vec<(u32, u32)> = Vec::new();
    // What to tell the instance log once the ledger is saved.
    let mut gone = Vec::new();

    // 1. Records against the driver.
    let mut keep = Vec::with_capacity(st.instances.len());
    for r in std::mem::take(&mut st.instances) {
        let Some((index, _, _, existing)) = live.iter().find(|l| l.1 == r.gpu_uuid) else {
            report.actions.push(Action::DropRecord {
                gpu: r.gpu_index,
                profile: r.profile.clone(),
                slot: r.slot,
                reason: "NVML no longer shows this GPU",
            });
            continue;
        };
        let index = *index;
        let here = at_slot(existing, r.slot, r.profile_id);
        let leftover = |reason| Action::DestroyLeftover {
            gpu: index,
            profile: r.profile.clone(),
            gi: here.map_or(0, |g| g.id),
            slot: r.slot,
            reason,
        };
        let verdict = match (&r.made, here) {
            (None, Some(_)) => Some(leftover("an allocation died before recording it")),
            (Some(m), Some(gi)) if gi.id == m.gi && !gi.compute_instances.contains(&m.ci) => Some(
                leftover("its compute instance is gone (a destroy died half-way)"),
            ),
            (Some(m), Some(gi)) if gi.id == m.gi => {
                // Ids are reused after a destroy: the MIG UUID says whether it is still ours.
                match be.mig_uuid(index, m.gi, m.ci) {
                    Ok(u) if u == m.mig_uuid => {
                        claimed.push((index, gi.id));
                        keep.push(r);
                        continue;
                    }
                    _ => Some(Action::DropRecord {
                        gpu: index,
                        profile: r.profile.clone(),
                        slot: r.slot,
                        reason: "the instance there now has another MIG UUID",
                    }),
                }
            }
            (None, None) => Some(Action::DropRecord {
                gpu: index,
                profile: r.profile.clone(),
                slot: r.slot,
                reason: "an allocation died before making it",
            }),
            (Some(_), _) => Some(Action::DropRecord {
                gpu: index,
                profile: r.profile.clone(),
                slot: r.slot,
                reason: "the driver no longer has it",
            }),
        };
        let Some(action) = verdict else { continue };
        if let (Action::DestroyLeftover { gi, .. }, Some(inst)) = (&action, here) {
            claimed.push((index, *gi));
            if !opts.dry_run {
                crate::failpoint!("gc.leftover.before_destroy");
                if let Err(e) = be.destroy(index, inst.id, &inst.compute_instances) {
                    report.failed.push(format!("{action}: {e}"));
                    keep.push(r);
                    continue;
                }
            }
        }
        // Nothing of this record's is at its placement any more (destroyed, or never made);
        // an instance there with another MIG UUID is judged below, on its own.
        let emptied =
            matches!(action, Action::DestroyLeftover { .. }) || here.is_none() || r.made.is_none();
        if !opts.dry_run && emptied {
            gone.push(crate::instance_log::gone(&r.gpu_uuid, r.slot));
        }
        report.actions.push(action);
    }
    st.instances = keep;

    // 2. Leases of containers the runtime no longer has.
    let mut leases: Vec<(String, u32, String, u64, Option<String>)> = Vec::new();
    for r in &st.instances {
        if let Some(l) = &r.lease {
            let what = format!("{} slice", r.profile);
            leases.push((
                l.container_id.clone(),
                r.gpu_index,
                what,
                l.since,
                l.runtime_root.clone(),
            ));
        }
    }
    for s in &st.shares {
        let l = &s.lease;
        leases.push((
            l.container_id.clone(),
            s.gpu_index,
            "time-slice share".into(),
            l.since,
            l.runtime_root.clone(),
        ));
    }
    for d in &st.mps {
        for c in &d.clients {
            let l = &c.lease;
            leases.push((
                l.container_id.clone(),
                d.gpu_index,
                "MPS share".into(),
                l.since,
                l.runtime_root.clone(),
            ));
        }
    }
    let mut roots: Vec<String> = opts.runtime_roots.clone();
    for (id, gpu, what, since, root) in leases {
        // A claim's lease outlives its containers: only the kubelet's unprepare ends it.
        if crate::ledger::Owner::of(&id).is_claim() {
            continue;
        }
        let Some(root) = root else { continue };
        if !roots.contains(&root) {
            roots.push(root.clone());
        }
        if !container_gone(node, &root, &id) {
            continue;
        }
        // Its create has granted and is still running: the container is yet to appear.
        if crate::claim::in_flight(&cfg.state_dir, &id) {
            report.young.push(format!(
                "lease of {id}: the runtime has no such container yet, and its create is still running"
            ));
            continue;
        }
        let age = now.saturating_sub(since);
        if age < opts.grace_s {
            report.young.push(format!(
                "lease of {id}: the runtime has no such container yet, but the lease is {age} s old (grace {} s)",
                opts.grace_s
            ));
            continue;
        }
        crate::failpoint!("gc.before_release");
        if st.release(&id) || crate::mps::release_client_on(cfg, be, node, &mut st, &id) {
            report.actions.push(Action::ReleaseLease {
                container_id: id,
                gpu,
                what,
                runtime_root: root,
            });
        }
    }

    // 2b. A MIG instance and the MPS daemon bound to it go together.
    mps_slices(cfg, node, &mut st, opts.dry_run, &mut report);

    // 2b'. Compute modes set for MPS daemons that are gone.
    if opts.dry_run {
        for r in crate::compute_mode::stranded(&st) {
            report.actions.push(Action::RestoreComputeMode {
                gpu: r.gpu_index,
                mode: r.found.name(),
            });
        }
    } else {
        let (done, failed) = crate::compute_mode::repair(be, &mut st);
        for r in done {
            report.actions.push(Action::RestoreComputeMode {
                gpu: r.gpu_index,
                mode: r.found.name(),
            });
        }
        report.failed.extend(failed);
    }

    // 2b'. MIG mode switches whose grant died (their instances went in step 1).
    if opts.dry_run {
        for r in &st.mig_modes {
            report.actions.push(Action::RestoreMigMode {
                gpu: r.gpu_index,
                mig: crate::mig_mode::on_off(r.found),
            });
        }
    } else {
        let (done, failed) = crate::mig_mode::repair(be, node, &mut st);
        for r in done {
            report.actions.push(Action::RestoreMigMode {
                gpu: r.gpu_index,
                mig: crate::mig_mode::on_off(r.found),
            });
        }
        report.failed.extend(failed);
    }

    // 2c. Live containers on slices the ledger does not lease to them.
    for default in ["/run/runc", "/run/crun"] {
        if !roots.iter().any(|r| r == default) {
            roots.push(default.to_string());
        }
    }
    let mut driver_uuids: Option<Vec<String>> = None;
    let mut on_this_node = |uuid: &str| {
        driver_uuids
            .get_or_insert_with(|| {
                let mut all = Vec::new();
                for (index, _, _, existing) in &live {
                    for gi in existing {
                        for &ci in &gi.compute_instances {
                            if let Ok(u) = be.mig_uuid(*index, gi.id, ci) {
                                all.push(format!("MIG-{}", u.trim_start_matches("MIG-")));
                            }
                        }
                    }
                }
                all
            })
            .iter()
            .any(|u| u == uuid)
    };
    for c in node.gpu_containers(&roots) {
        for uuid in &c.mig_uuids {
            let same = |m: &str| format!("MIG-{}", m.trim_start_matches("MIG-")) == *uuid;
            // A slice serving MPS shares is its clients' (no lease names them).
            let mps_client = |id: &str| {
                st.mps.iter().any(|d| {
                    d.mig.as_ref().is_some_and(|h| same(&h.mig_uuid))
                        && d.clients.iter().any(|cl| cl.lease.container_id == id)
                })
            };
            if mps_client(&c.container_id) || c.claim.as_deref().is_some_and(mps_client) {
                continue;
            }
            let holder = st
                .instances
                .iter_mut()
                .find(|r| r.made.as_ref().is_some_and(|m| same(&m.mig_uuid)));
            match holder {
                Some(r) if r.mps => report.unleased.push(format!(
                    "container {} ({}/{}) runs on {uuid}, which serves MPS shares to other containers: it is not one of its clients; stop it",
                    c.container_id, c.runtime_root, c.container_id
                )),
                Some(r) => match &r.lease {
                    Some(l)
                        if l.container_id == c.container_id
                            || c.claim.as_deref() == Some(l.container_id.as_str()) => {}
                    Some(l) => report.unleased.push(format!(
                        "container {} ({}/{}) runs on {uuid}, which the ledger leases to {}: two containers share one slice; stop one of them",
                        c.container_id, c.runtime_root, c.container_id, l.container_id
                    )),
                    None => {
                        report.actions.push(Action::AdoptLease {
                            container_id: c.container_id.clone(),
                            gpu: r.gpu_index,
                            mig_uuid: uuid.clone(),
                            runtime_root: c.runtime_root.clone(),
                        });
                        r.lease = Some(crate::ledger::Lease {
                            container_id: c.container_id.clone(),
                            since: now,
                            runtime_root: Some(c.runtime_root.clone()),
                        });
                        r.idle_since = None;
                    }
                },
                // Only a device of this node's driver: another node's (a simulated one beside
                // this, in tests) or one gone since is nothing of this ledger's.
                None if on_this_node(uuid) => report.unleased.push(format!(
                    "container {} ({}/{}) runs on {uuid}, which the ledger does not know: it may be granted to another container; stop it",
                    c.container_id, c.runtime_root, c.container_id
                )),
                None => {}
            }
        }
    }

    // 3. Idle instances past their time-out.
    if cfg.pool.idle_timeout_s > 0 {
        let mut keep = Vec::with_capacity(st.instances.len());
        for r in std::mem::take(&mut st.instances) {
            let idle_s = r.idle_since.map(|t| now.saturating_sub(t));
            let (Some(m), None, Some(idle_s), false) = (&r.made, &r.lease, idle_s, r.mps) else {
                keep.push(r);
                continue;
            };
            if idle_s < cfg.pool.idle_timeout_s {
                keep.push(r);
                continue;
            }
            let action = Action::DestroyIdle {
                gpu: r.gpu_index,
                profile: r.profile.clone(),
                gi: m.gi,
                idle_s,
            };
            if !opts.dry_run {
                if let Err(e) = be.destroy(r.gpu_index, m.gi, &[m.ci]) {
                    report.failed.push(format!("{action}: {e}"));
                    keep.push(r);
                    continue;
                }
                gone.push(crate::instance_log::gone(&r.gpu_uuid, r.slot));
            }
            report.actions.push(action);
        }
        st.instances = keep;
    }

    // 4. What the ledger lost but gpushare's instance log names is gpushare's: adopted when
    // whole, else destroyed. Whatever else the driver shows is someone else's.
    let owned = crate::instance_log::owned(&cfg.state_dir);
    let mut holders: Option<Vec<crate::running::Container>> = None;
    for (index, uuid, profiles, existing) in &live {
        for gi in existing {
            if claimed.contains(&(*index, gi.id)) {
                continue;
            }
            if let Some(o) = owned.iter().find(|o| o.gpu == *uuid && o.claims(gi)) {
                let holders = holders.get_or_insert_with(|| {
                    crate::running::scan(&crate::running::roots(cfg, &st, None, &[]))
                });
                match reclaim_logged(be, node, &gpus, *index, gi, o, holders, opts.dry_run) {
                    Ok(Some((action, record))) => {
                        if let Some(r) = record {
                            st.instances.push(r);
                        } else if !opts.dry_run {
                            gone.push(crate::instance_log::gone(uuid, gi.slot));
                        }
                        report.actions.push(action);
                        continue;
                    }
                    Err(e) => {
                        report.failed.push(e.to_string());
                        continue;
                    }
                    // Another compute instance than the one logged: someone else's instance.
                    Ok(None) => {}
                }
            }
            report.foreign.push(Foreign {
                gpu: *index,
                gi: gi.id,
                profile: profiles
                    .iter()
                    .find(|p| p.id == gi.profile_id)
                    .map_or_else(|| format!("profile {}", gi.profile_id), |p| p.name.clone()),
                slot: gi.slot,
            });
        }
    }

    // Log entries of placements where the driver shows nothing of theirs (a crash between the
    // log's intent and the ledger's) go, so the log names only what may still be there.
    for o in &owned {
        let Some((_, _, _, existing)) = live.iter().find(|l| l.1 == o.gpu) else {
            continue;
        };
        if !opts.dry_run
            && !existing
                .iter()
                .any(|gi| o.matches(gi.id, gi.profile_id, gi.slot))
        {
            gone.push(crate::instance_log::gone(&o.gpu, o.slot));
        }
    }
    if !opts.dry_run && (st != before || locked.folded()) {
        locked.save(&st)?;
    }
    if !gone.is_empty() {
        crate::instance_log::note(&cfg.state_dir, &gone);
    }
    if !opts.dry_run {
        // What killed writers left: temp files (never one a live writer holds) and claims.
        for f in crate::fsutil::sweep_temp(&cfg.state_dir, TEMP_MIN_AGE) {
            tracing::info!("removed {}, left by a killed writer", f.display());
        }
        let leased = |id: &str| {
            st.lease_of(id).is_some()
                || st.shares.iter().any(|s| s.lease.container_id == id)
                || st
                    .mps
                    .iter()
                    .any(|d| d.clients.iter().any(|c| c.lease.container_id == id))
        };
        crate::claim::sweep(&cfg.state_dir, leased);
        // Markers of ids that hold nothing (a crash between a marker and its lease, or between
        // a release and its marker's removal): the ledger was loaded under the lock still held,
        // and no lease becomes visible without it.
        for id in crate::lease_marker::sweep(&cfg.state_dir, leased) {
            tracing::info!("removed the lease marker of {id}, which holds nothing");
        }
        locked.compact_history(cfg.placement.history);
    }
    Ok(report)
}

/// An instance the ledger lost and the instance log names (`o`): adopt it (a record, idle or
/// leased to the container whose spec names its MIG UUID) when its compute instance is the
/// one logged; destroy it when it has none, or when the log holds only the intent (the create
/// died before its result was recorded anywhere, so no container was given it). None when it
/// has compute instances but not the logged one: not the instance the log speaks of.
#[allow(clippy::too_many_arguments)]
pub(crate) fn reclaim_logged(
    be: &dyn Gpu,
    node: &dyn Node,
    gpus: &[crate::nvml::GpuInfo],
    index: u32,
    gi: &GpuInstance,
    o: &crate::instance_log::Owned,
    holders: &[crate::running::Container],
    dry_run: bool,
) -> Result<Option<(Action, Option<InstanceRecord>)>, Box<ActionFailed>> {
    let whole = o.made.as_ref().filter(|(_, ci, mig)| {
        gi.compute_instances.contains(ci) && be.mig_uuid(index, gi.id, *ci).is_ok_and(|u| u == *mig)
    });
    if o.made.is_some() && whole.is_none() && !gi.compute_instances.is_empty() {
        return Ok(None);
    }
    let gpu = gpus.iter().find(|g| g.index == index);
    if let (Some((_, ci, mig)), Some(gpu)) = (whole, gpu) {
        if let Ok((gi_cap_minor, ci_cap_minor)) = node.cap_minors(gpu.minor, gi.id, *ci) {
            let holder = holders.iter().find(|c| c.migs.iter().any(|m| m == mig));
            let now = now_unix();
            let record = InstanceRecord {
                gpu_uuid: gpu.uuid.clone(),
                gpu_index: index,
                gpu_minor: gpu.minor,
                profile: o.profile.clone(),
                profile_id: o.profile_id,
                slot: gi.slot,
                made: Some(crate::ledger::Made {
                    gi: gi.id,
                    ci: *ci,
                    mig_uuid: mig.clone(),
                    gi_cap_minor,
                    ci_cap_minor,
                }),
                created_at: o.since,
                lease: holder.map(|c| crate::ledger::Lease {
                    container_id: c.id.clone(),
                    since: now,
                    runtime_root: Some(c.root.clone()),
                }),
                idle_since: holder.is_none().then_some(now),
                mps: false,
            };
            let action = Action::Adopt {
                gpu: index,
                profile: o.profile.clone(),
                gi: gi.id,
                slot: gi.slot,
                container_id: holder.map(|c| c.id.clone()),
            };
            return Ok(Some((action, (!dry_run).then_some(record))));
        }
    }
    let action = Action::DestroyLeftover {
        gpu: index,
        profile: o.profile.clone(),
        gi: gi.id,
        slot: gi.slot,
        reason: "the ledger lost it; gpushare's instance log says gpushare made it",
    };
    if !dry_run {
        crate::failpoint!("gc.logged.before_destroy");
        if let Err(source) = be.destroy(index, gi.id, &gi.compute_instances) {
            return Err(Box::new(ActionFailed { action, source }));
        }
    }
    Ok(Some((action, None)))
}

/// Whether the ledger on disk could hold anything of `container_id`'s, with no lock and no
/// parse (writes are atomic renames), as the entry binary answers it (`fastpath::lease`): the
/// id's lease marker, the journal and the ledger's header, and a scan of the ledger's body
/// only when its header has no flags. Deleting a container that never asked for a GPU, or whose hook
/// released it, costs no ledger lock. A false "maybe" only costs the locked release it saves.
pub fn may_hold(cfg: &Config, container_id: &str) -> bool {
    // A state folder or file that must not be used "may hold" anything: the locked release
    // that follows refuses it and says why.
    use crate::statedir::{check_dir, read, StateDirError};
    use gpushare_fastpath::lease::{self, Head};
    let unusable = |e: &StateDirError| matches!(e, StateDirError::Unsafe { .. });
    match check_dir(&cfg.state_dir) {
        Ok(()) => {}
        Err(e) if unusable(&e) => return true,
        Err(_) => return false,
    }
    let id = container_id.as_bytes();
    let marker = crate::lease_marker::dir(&cfg.state_dir).join(container_id);
    let marked = gpushare_state::lease::is_nameable(id) && marker.symlink_metadata().is_ok();
    // The journal before the ledger: see `snapshot`.
    let journal = match read(&Ledger::new(&cfg.state_dir).journal_path()) {
        Ok(j) => j.unwrap_or_default(),
        Err(e) if unusable(&e) => return true,
        Err(_) => Vec::new(),
    };
    let raw = match read(&Ledger::new(&cfg.state_dir).path()) {
        Ok(Some(raw)) => raw,
        Err(e) if unusable(&e) => return true,
        _ => return false,
    };
    let head = Head::Read(gpushare_state::ledger::header(&raw));
    lease::may_hold(id, marked, head, &journal)
        .unwrap_or_else(|| gpushare_state::journal::may_hold(&raw, &journal, id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{allocate_on, release};
    use crate::ledger::Claimant;
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};

    const ROOT: &str = "/run/gpushare-test-runtime";

    fn grant(s: &Scratch, gpu: &FakeGpu, node: &FakeNode, profile: &str, id: &str) -> u32 {
        let who = Claimant {
            container_id: id,
            runtime_root: Some(ROOT),
        };
        allocate_on(&s.cfg, gpu, node, profile, None, &who)
            .unwrap()
            .gi
    }

    fn gc(s: &Scratch, gpu: &FakeGpu, node: &FakeNode) -> Report {
        run_on(&s.cfg, gpu, node, &GcOptions::from_config(&s.cfg)).unwrap()
    }

    #[test]
    fn a_record_of_an_instance_the_driver_no_longer_has_is_dropped() {
        let s = Scratch::new("gc-stale");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        node.add_container(ROOT, "a");
        node.add_container(ROOT, "b");
        let lost = grant(&s, &gpu, &node, "1g.10gb", "a");
        grant(&s, &gpu, &node, "1g.10gb", "b");
        release(&s.cfg, "a", Duration::from_secs(5)).unwrap();
        let slot = gpu.instances(0).iter().find(|g| g.id == lost).unwrap().slot;
        gpu.vanish(0, lost);
        gpu.clear_calls();

        let report = gc(&s, &gpu, &node);
        assert_eq!(
            report.actions,
            vec![Action::DropRecord {
                gpu: 0,
                profile: "1g.10gb".into(),
                slot,
                reason: "the driver no longer has it",
            }]
        );
        assert_eq!(gpu.changes(), Vec::<Call>::new(), "nothing to destroy");
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "only the lost record goes");
        assert_eq!(st.instances[0].lease.as_ref().unwrap().container_id, "b");
    }

    #[test]
    fn idle_instances_past_their_time_out_are_destroyed() {
        let mut s = Scratch::new("gc-idle");
        s.cfg.pool.idle_timeout_s = 600;
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let old = grant(&s, &gpu, &node, "1g.10gb", "old");
        let young = grant(&s, &gpu, &node, "1g.10gb", "young");
        release(&s.cfg, "old", Duration::from_secs(5)).unwrap();
        release(&s.cfg, "young", Duration::from_secs(5)).unwrap();
        let mut st = s.ledger();
        let now = now_unix();
        for r in &mut st.instances {
            if r.made.as_ref().unwrap().gi == old {
                r.idle_since = Some(now - 3600);
            }
        }
        s.save(&st);
        gpu.clear_calls();

        let report = gc(&s, &gpu, &node);
        assert!(
            matches!(
                report.actions.as_slice(),
                [Action::DestroyIdle { gpu: 0, gi, idle_s, .. }] if *gi == old && *idle_s >= 3600
            ),
            "{:?}",
            report.actions
        );
        assert_eq!(
            gpu.changes(),
            vec![Call::Destroy {
                gpu: 0,
                gi: old,
                cis: vec![0]
            }]
        );
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1);
        assert_eq!(st.instances[0].made.as_ref().unwrap().gi, young);
        assert_eq!(gpu.instances(0).len(), 1);
    }

    #[test]
    fn the_lease_of_a_container_the_runtime_no_longer_has_goes_back_to_the_pool() {
        let s = Scratch::new("gc-lease");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        node.add_container(ROOT, "here");
        grant(&s, &gpu, &node, "1g.10gb", "here");
        grant(&s, &gpu, &node, "1g.10gb", "gone");
        let mut st = s.ledger();
        for r in &mut st.instances {
            r.lease.as_mut().unwrap().since -= 3600;
        }
        s.save(&st);
        gpu.clear_calls();

        let report = gc(&s, &gpu, &node);
        assert_eq!(
            report.actions,
            vec![Action::ReleaseLease {
                container_id: "gone".into(),
                gpu: 0,
                what: "1g.10gb slice".into(),
                runtime_root: ROOT.into(),
            }]
        );
        assert_eq!(
            gpu.changes(),
            Vec::<Call>::new(),
            "the instance stays, idle"
        );
        let st = s.ledger();
        let leased: Vec<&str> = st
            .instances
            .iter()
            .filter_map(|r| r.lease.as_ref().map(|l| l.container_id.as_str()))
            .collect();
        assert_eq!(leased, vec!["here"]);
        assert_eq!(st.instances.len(), 2);
    }

    /// The full wrapper's lock-free look is the entry binary's: a lease's marker says "maybe",
    /// a missing one "nothing" (the ledger's body is not scanned), a stale one "maybe".
    #[test]
    fn may_hold_answers_from_the_markers() {
        let s = Scratch::new("gc-may-hold");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        node.add_container(ROOT, "a");
        grant(&s, &gpu, &node, "1g.10gb", "a");
        assert!(may_hold(&s.cfg, "a") && !may_hold(&s.cfg, "b"));
        crate::lease_marker::make(&s.cfg.state_dir, ["stale"]).unwrap();
        assert!(
            may_hold(&s.cfg, "stale"),
            "a stale marker costs a locked look"
        );
        crate::lease_marker::remove(&s.cfg.state_dir, ["a"]);
        assert!(
            !may_hold(&s.cfg, "a"),
            "the marker, not the ledger's body, answers"
        );
    }

    /// A marker whose id holds nothing (a crash between making it and saving the lease, or
    /// between a release and its removal) is swept; a lease's marker never is.
    #[test]
    fn lease_markers_of_ids_that_hold_nothing_are_swept() {
        use crate::lease_marker::{list, make};
        let s = Scratch::new("gc-markers");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        node.add_container(ROOT, "here");
        grant(&s, &gpu, &node, "1g.10gb", "here");
        assert_eq!(list(&s.cfg.state_dir), ["here".to_string()].into());
        make(&s.cfg.state_dir, ["stale"]).unwrap();
        let dry = GcOptions {
            dry_run: true,
            ..GcOptions::from_config(&s.cfg)
        };
        run_on(&s.cfg, &gpu, &node, &dry).unwrap();
        assert_eq!(list(&s.cfg.state_dir).len(), 2, "a dry run removes nothing");
        gc(&s, &gpu, &node);
        assert_eq!(list(&s.cfg.state_dir), ["here".to_string()].into());
    }

    #[test]
    fn what_no_record_claims_is_reported_and_never_touched() {
        let s = Scratch::new("gc-foreign");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let theirs = gpu.make(0, "3g.40gb", Slot { start: 4, size: 4 });
        gpu.clear_calls();

        let report = gc(&s, &gpu, &node);
        assert!(report.actions.is_empty(), "{:?}", report.actions);
        assert_eq!(
            report.foreign,
            vec![Foreign {
                gpu: 0,
                gi: theirs.gi,
                profile: "3g.40gb".into(),
                slot: Slot { start: 4, size: 4 },
            }]
        );
        assert_eq!(gpu.changes(), Vec::<Call>::new());
        assert_eq!(gpu.instances(0).len(), 1);
    }

    #[test]
    fn what_a_dead_allocation_left_at_its_intent_is_destroyed() {
        let s = Scratch::new("gc-intent");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        // The allocation recorded its intent, NVML made the instance, the process died.
        let slot = Slot { start: 6, size: 1 };
        let left = gpu.make(0, "1g.10gb", slot);
        let info = gpu.info(0);
        let mut st = LedgerState::default();
        st.instances.push(InstanceRecord {
            gpu_uuid: info.uuid,
            gpu_index: 0,
            gpu_minor: 0,
            profile: "1g.10gb".into(),
            profile_id: 19,
            slot,
            made: None,
            created_at: now_unix(),
            lease: None,
            idle_since: None,
            mps: false,
        });
        s.save(&st);
        gpu.clear_calls();

        let report = gc(&s, &gpu, &node);
        assert_eq!(
            report.actions,
            vec![Action::DestroyLeftover {
                gpu: 0,
                profile: "1g.10gb".into(),
                gi: left.gi,
                slot,
                reason: "an allocation died before recording it",
            }]
        );
        assert_eq!(
            gpu.changes(),
            vec![Call::Destroy {
                gpu: 0,
                gi: left.gi,
                cis: vec![0]
            }]
        );
        assert!(s.ledger().instances.is_empty());
        assert!(report.foreign.is_empty(), "it was gpushare's");
    }

    #[test]
    fn a_compute_mode_a_crash_left_changed_is_put_back() {
        use crate::ledger::{ComputeModeRecord, Mode};
        use nvml_wrapper::enum_wrappers::device::ComputeMode;
        let s = Scratch::new("gc-mode");
        let gpu = FakeGpu::h100(1);
        gpu.set_mig(0, false);
        let node = FakeNode::new(&gpu);
        // Recorded before the daemon's start, which never came (the process died).
        let mut st = LedgerState::default();
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: gpu.info(0).uuid,
            gpu_index: 0,
            found: Mode::Default,
            since: now_unix(),
        });
        s.save(&st);
        gpu.put_mode(0, ComputeMode::ExclusiveProcess);

        let report = gc(&s, &gpu, &node);
        assert_eq!(
            report.actions,
            vec![Action::RestoreComputeMode {
                gpu: 0,
                mode: "Default"
            }]
        );
        assert_eq!(
            gpu.changes(),
            vec![Call::SetComputeMode {
                gpu: 0,
                mode: ComputeMode::Default
            }]
        );
        assert!(s.ledger().compute_modes.is_empty());
    }

    #[test]
    fn a_live_container_on_an_idle_instance_gets_its_lease_back() {
        let s = Scratch::new("gc-adopt-lease");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        grant(&s, &gpu, &node, "1g.10gb", "c");
        release(&s.cfg, "c", Duration::from_secs(5)).unwrap();
        let mig = s.ledger().instances[0].made.clone().unwrap().mig_uuid;
        // Its lease was released while it came up; it runs on the slice all the same.
        node.add_running(ROOT, "c", &[&mig]);

        // No lease names its runtime's root any more: the operator's option does.
        let opts = GcOptions {
            runtime_roots: vec![ROOT.into()],
            ..GcOptions::from_config(&s.cfg)
        };
        let report = run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        assert_eq!(
            report.actions,
            vec![Action::AdoptLease {
                container_id: "c".into(),
                gpu: 0,
                mig_uuid: mig.clone(),
                runtime_root: ROOT.into(),
            }]
        );
        let st = s.ledger();
        assert_eq!(st.instances[0].lease.as_ref().unwrap().container_id, "c");
        assert!(report.unleased.is_empty());
    }

    #[test]
    fn a_slice_and_its_mps_daemon_go_together() {
        let mut s = Scratch::new("gc-mps-slices");
        s.cfg.mps.control = std::path::PathBuf::from("/bin/sh");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let share = |id: &str, pct: u8| {
            let who = Claimant {
                container_id: id,
                runtime_root: Some(ROOT),
            };
            crate::mps_mig::grant_on(&s.cfg, &gpu, &node, "3g.40gb", pct, None, None, &who)
                .unwrap()
                .gpu_uuid
        };
        let (lost, kept) = (share("a", 50), share("b", 25));
        for id in ["a", "b"] {
            node.add_container(ROOT, id);
        }
        // The driver loses a's instance (an operator's destroy); b's daemon record is lost.
        let lost_gi = s
            .ledger()
            .instances
            .iter()
            .find(|r| r.made.as_ref().unwrap().mig_uuid == lost)
            .unwrap()
            .made
            .as_ref()
            .unwrap()
            .gi;
        gpu.vanish(0, lost_gi);
        let mut st = s.ledger();
        let lost_pid = st
            .mps
            .iter()
            .find(|d| d.device_uuid() == lost)
            .unwrap()
            .pid
            .unwrap();
        st.mps.retain(|d| d.device_uuid() != kept);
        s.save(&st);

        let report = gc(&s, &gpu, &node);
        let text = report.render();
        assert!(
            report.actions.iter().any(|a| matches!(a, Action::StopMpsDaemon { mig_uuid, clients, .. } if *mig_uuid == lost && clients == &["a"])),
            "{text}"
        );
        assert!(
            report
                .actions
                .iter()
                .any(|a| matches!(a, Action::ReturnMpsSlice { mig_uuid, .. } if *mig_uuid == kept)),
            "{text}"
        );
        assert!(!node.process_running(lost_pid), "told to quit");
        let st = s.ledger();
        assert!(st.mps.is_empty(), "{:?}", st.mps);
        assert_eq!(st.instances.len(), 1);
        assert!(st.instances[0].is_idle());
        assert!(gc(&s, &gpu, &node).actions.is_empty());
    }
}
