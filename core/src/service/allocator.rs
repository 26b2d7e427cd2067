//! Granting and releasing MIG slices.
//!
//! A grant is one locked read-modify-write of the ledger. The warm path (an idle instance of
//! the profile is in the pool) opens no NVML: the ledger holds everything a grant needs and the
//! driver's capability file proves the instance still exists. Only the cold path (make an
//! instance, or reclaim idle ones to make room) opens NVML.

use crate::config::Config;
use crate::fsutil::now_unix;
use crate::gpu::{self, BackendError, Gpu, GpuInfo};
use crate::gpus::{refresh_gpus, GpuError};
use crate::ledger::{Claimant, InstanceRecord, Lease, Ledger, LedgerError, LedgerState, Made};
use crate::node::Node;
use crate::placement::{self, GpuInstance, Occupied, Profile, Slot};
use crate::policy::node::Victims;
use crate::request::DeviceSelector;
use crate::slice::{pick_idle, Grant};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum AllocError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error(transparent)]
    InstanceLog(#[from] crate::instance_log::InstanceLogError),
    #[error("gpu.profile={profile} is not allowed by this node's policy; allowed: {allowed}")]
    NotAllowed { profile: String, allowed: String },
    #[error("gpu.profile={profile}: MIG mode is disabled on {gpus}, and gpushare does not turn it on: {why}; an operator enables it with `nvidia-smi -i <index> -mig 1` (the GPU must be idle; some GPUs also need a reset), or ask for the whole GPU instead")]
    MigDisabled {
        profile: String,
        gpus: String,
        why: String,
    },
    #[error("gpu.profile={profile}: MIG mode on {gpu} is pending enable: the driver applies it only when the GPU is reset (`nvidia-smi -i {index} -r`, with nothing running on it), and gpushare never resets a GPU; nothing was granted")]
    MigPending {
        profile: String,
        gpu: String,
        index: u32,
    },
    #[error("gpu.profile={profile}: {gpu} has no such MIG profile; accepted: {accepted}")]
    UnknownProfile {
        profile: String,
        gpu: String,
        accepted: String,
    },
    #[error("no free {profile} slice on {gpus} (free: {free})")]
    NoRoom {
        profile: String,
        gpus: String,
        free: String,
    },
}

crate::gpus::from_gpu_errors!(AllocError);

impl AllocError {
    /// A stable label, for `errors_total{kind=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            AllocError::Gpu(e) => e.kind(),
            AllocError::InstanceLog(_) => "other",
            AllocError::NotAllowed { .. } => "not_allowed",
            AllocError::MigDisabled { .. } => "mig_disabled",
            AllocError::MigPending { .. } => "mig_pending",
            AllocError::UnknownProfile { .. } => "unknown_profile",
            AllocError::NoRoom { .. } => "no_room",
        }
    }
}

pub fn allocate(
    cfg: &Config,
    profile: &str,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<Grant, AllocError> {
    // NVML is opened by the first call made of it: never on the warm path.
    let be = crate::nvml::OnDemand::new(cfg);
    allocate_on(cfg, &be, &crate::node::Host::new(cfg), profile, device, who)
}

/// [`allocate`] on `be`'s GPUs and `node`'s driver files.
pub fn allocate_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    profile: &str,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<Grant, AllocError> {
    allocate_where(cfg, be, node, profile, device, None, who)
}

/// A slice of `profile` at exactly the placement starting at memory slot `start` of GPU
/// `gpu`: the DRA path, where the scheduler has already chosen among the placements this
/// node published. The idle instance there is granted warm; else one is made there, after
/// destroying gpushare's idle instances in the way. Never another placement: a refusal says
/// what holds it.
pub fn allocate_at(
    cfg: &Config,
    profile: &str,
    gpu: u32,
    start: u32,
    who: &Claimant<'_>,
) -> Result<Grant, AllocError> {
    let be = crate::nvml::OnDemand::new(cfg);
    allocate_at_on(
        cfg,
        &be,
        &crate::node::Host::new(cfg),
        profile,
        gpu,
        start,
        who,
    )
}

/// [`allocate_at`] on `be`'s GPUs and `node`'s driver files.
pub fn allocate_at_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    profile: &str,
    gpu: u32,
    start: u32,
    who: &Claimant<'_>,
) -> Result<Grant, AllocError> {
    let device = DeviceSelector::Index(gpu);
    allocate_where(cfg, be, node, profile, Some(&device), Some(start), who)
}

fn allocate_where(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    profile: &str,
    device: Option<&DeviceSelector>,
    at: Option<u32>,
    who: &Claimant<'_>,
) -> Result<Grant, AllocError> {
    if !cfg.profile_allowed(profile) {
        return Err(AllocError::NotAllowed {
            profile: profile.into(),
            allowed: cfg.policy.allowed_profiles.join(", "),
        });
    }
    let started = std::time::Instant::now();
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut st = locked.load()?;
    crate::failpoint!("alloc.locked");
    let before = st.clone();

    if let Some(i) = st.lease_of(who.container_id) {
        // The same container asking again (an engine retrying create) keeps its slice.
        if let Some(m) = st.instances[i].made.clone() {
            let grant = Grant::from_record(&st.instances[i], &m, true, false);
            save_if_changed(&locked, &before, &st)?;
            return Ok(grant);
        }
    }
    let lease = Lease {
        container_id: who.container_id.to_string(),
        since: now_unix(),
        runtime_root: who.runtime_root.map(str::to_string),
    };

    let since = lease.since;
    // Only the instance about to be handed out is checked against the driver's files here (a
    // warm grant stays one short read-modify-write); the cold path prunes every record.
    let picked = loop {
        let idle = match at {
            Some(start) => st.instances.iter().position(|r| {
                r.lease.is_none()
                    && r.made.is_some()
                    && r.profile == profile
                    && r.slot.start == start
                    && crate::gpus::selects(device, r.gpu_index, &r.gpu_uuid)
            }),
            None => pick_idle(cfg, &st, profile, device),
        };
        let Some(i) = idle else {
            break None;
        };
        if crate::gc::check_vanished(node, &mut st.instances[i]) {
            if st.instances[i].made.is_some() {
                break Some(i);
            }
        } else {
            st.instances.remove(i);
        }
    };
    if let Some(i) = picked {
        let rec = &mut st.instances[i];
        rec.lease = Some(lease);
        rec.idle_since = None;
        let grant = Grant::from_record(
            rec,
            rec.made.as_ref().expect("idle records are made"),
            true,
            true,
        );
        st.stats.grant(&grant.gpu_uuid, true);
        st.history
            .arrive(profile, since, true, cfg.placement.history);
        st.stats.alloc_latency.observe(started.elapsed());
        crate::failpoint!("alloc.warm.before_save");
        locked.save(&st)?;
        crate::failpoint!("alloc.warm.saved");
        offer_after(cfg, locked, st);
        return Ok(grant);
    }

    crate::gc::prune_vanished(&mut st, node);
    reap_gone(&mut st, node, cfg.pool.gc_grace_s);
    let result = cold(cfg, be, node, &locked, &mut st, profile, device, at, lease);
    if matches!(result, Err(AllocError::NoRoom { .. })) {
        st.stats.refused_no_room += 1;
    }
    if matches!(result, Ok(_) | Err(AllocError::NoRoom { .. })) {
        st.history
            .arrive(profile, since, result.is_ok(), cfg.placement.history);
    }
    if let Err(e) = &result {
        st.stats.error(e.kind());
    }
    st.stats.alloc_latency.observe(started.elapsed());
    let saved = save_if_changed(&locked, &before, &st)?;
    crate::failpoint!("alloc.cold.saved");
    if saved {
        offer_after(cfg, locked, st);
    }
    result
}

/// Record the node's GPUs in the ledger's cache through NVML, under the lock, if NVML says
/// anything the cache does not. What a DRA node publishes is decided from the ledger alone, and
/// a node that has granted nothing yet has no GPU in it: the kubelet plugin learns them at start.
pub fn learn_gpus(cfg: &Config) -> Result<(), AllocError> {
    learn_gpus_on(cfg, &crate::nvml::OnDemand::new(cfg))
}

/// [`learn_gpus`] on `be`'s GPUs.
pub fn learn_gpus_on(cfg: &Config, be: &dyn Gpu) -> Result<(), AllocError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut st = locked.load()?;
    let before = st.gpus.clone();
    let gpus = be.gpus()?;
    refresh_gpus(be, &mut st, &gpus)?;
    if st.gpus == before && !locked.folded() {
        return Ok(());
    }
    locked.save(&st)?;
    offer_after(cfg, locked, st);
    Ok(())
}

/// Write the offers for the ledger this call left, once its lock is released (offers name
/// their generation, so one written late by a slower process is merely unused).
pub(crate) fn offer_after(cfg: &Config, locked: crate::ledger::Locked, mut st: LedgerState) {
    let generation = locked.generation();
    drop(locked);
    crate::offers::write(cfg, &mut st, generation);
}

/// Release `container_id`'s slice into the idle pool; true if it held one. Idempotent.
pub fn release(cfg: &Config, container_id: &str, timeout: Duration) -> Result<bool, AllocError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(timeout)?;
    let mut st = locked.load()?;
    crate::failpoint!("release.locked");
    let released =
        st.release(container_id) | crate::mps::release_client(cfg, &mut st, container_id);
    let changed = released || locked.folded();
    if changed {
        locked.save(&st)?;
    }
    crate::failpoint!("release.saved");
    if changed {
        offer_after(cfg, locked, st);
    }
    Ok(released)
}

/// Save when this call changed the ledger (or folded its journal); whether it saved.
fn save_if_changed(
    locked: &crate::ledger::Locked,
    before: &LedgerState,
    st: &LedgerState,
) -> Result<bool, LedgerError> {
    let changed = before != st || locked.folded();
    if changed {
        locked.save(st)?;
    }
    Ok(changed)
}

/// Release leases whose container the runtime no longer has. Leases younger than `grace_s` are
/// kept: the runtime may not have written its state for a container whose `create` still runs.
fn reap_gone(st: &mut LedgerState, node: &dyn Node, grace_s: u64) {
    let now = now_unix();
    let gone: Vec<String> = st
        .instances
        .iter()
        .filter_map(|r| r.lease.as_ref())
        .filter(|l| now.saturating_sub(l.since) > grace_s)
        .filter(|l| {
            l.runtime_root
                .as_ref()
                .is_some_and(|root| !node.has_container(root, &l.container_id))
        })
        .map(|l| l.container_id.clone())
        .collect();
    for id in gone {
        tracing::warn!(container = %id, "releasing the slice of a container the runtime no longer has");
        st.release(&id);
    }
}

fn gpu_label(g: &GpuInfo) -> String {
    format!("GPU {} ({})", g.index, g.name)
}

/// Why a GPU could not serve the request, kept to explain a refusal.
enum Miss {
    MigDisabled(String, crate::mig_mode::Hold),
    Unknown { gpu: String, accepted: String },
    NoRoom { gpu: String, free: String },
}

#[allow(clippy::too_many_arguments)]
fn cold(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    locked: &crate::ledger::Locked,
    st: &mut LedgerState,
    profile: &str,
    device: Option<&DeviceSelector>,
    at: Option<u32>,
    lease: Lease,
) -> Result<Grant, AllocError> {
    // Only the cold path places instances, so only it reads the request history it learns from.
    locked.load_history(st, cfg.placement.history);
    crate::gc::repair_intents(cfg, be, st)?;
    for f in crate::compute_mode::repair(be, st).1 {
        tracing::warn!("{f}");
    }
    for f in crate::mig_mode::repair(be, node, st).1 {
        tracing::warn!("{f}");
    }
    let gpus = be.gpus()?;
    let mut targets = crate::gpus::select_live(&gpus, device)?;
    // GPUs in MIG mode first: one is switched (mig.manage_mode) only when none of them serves.
    targets.sort_by_key(|g| !g.mig_mode.is_some_and(|(current, _)| current));
    refresh_gpus(be, st, &gpus)?;
    let mut misses = Vec::new();
    let mut owned = None;
    for gpu in targets {
        let profiles = st
            .gpus
            .iter()
            .find(|r| r.uuid == gpu.uuid)
            .map(|r| r.profiles.clone())
            .unwrap_or_default();
        let mig_off = gpu.mig_mode.is_none_or(|(current, _)| !current);
        if mig_off && gpu.mig_mode.is_none() {
            misses.push(Miss::MigDisabled(
                gpu_label(gpu),
                crate::mig_mode::Hold::NoMig,
            ));
            continue;
        }
        let Some(p) = profiles.iter().find(|p| p.name == profile) else {
            let accepted = profiles
                .iter()
                .map(|p| p.name.as_str())
                .collect::<Vec<_>>()
                .join(", ");
            misses.push(Miss::Unknown {
                gpu: gpu_label(gpu),
                accepted,
            });
            continue;
        };
        if mig_off {
            if let Some(why) = crate::mig_mode::switch(cfg, be, locked, st, gpu, true)? {
                misses.push(Miss::MigDisabled(gpu_label(gpu), why));
                continue;
            }
        }
        let mut existing = be.gpu_instances(gpu.index, &profiles)?;
        destroy_logged_leftovers(cfg, be, st, gpu, &mut owned, &mut existing)?;
        let occupied = gpu::occupancy(&existing);
        let choice = match at {
            // The scheduler chose the placement: the policy has nothing left to decide.
            Some(start) => reclaim(st, gpu, p, &existing, |s| s.start == start),
            None => crate::policy::node::cold_place(cfg, st, &gpu.uuid, p, &profiles, &existing)
                .or_else(|| reclaim(st, gpu, p, &existing, |_| true)),
        };
        let slot = match choice {
            Some((slot, victims)) => {
                destroy_idle(cfg, be, st, gpu, victims)?;
                crate::failpoint!("alloc.cold.victims_destroyed");
                Some(slot)
            }
            None => None,
        };
        let Some(slot) = slot else {
            st.stats.refused(&gpu.uuid);
            misses.push(Miss::NoRoom {
                gpu: gpu_label(gpu),
                free: free_summary(&profiles, &occupied, st, gpu),
            });
            continue;
        };
        // Recorded before the instance exists: a crash from here on leaves a record that
        // marks whatever NVML then shows at this placement as gpushare's.
        st.instances.push(InstanceRecord {
            gpu_uuid: gpu.uuid.clone(),
            gpu_index: gpu.index,
            gpu_minor: gpu.minor,
            profile: p.name.clone(),
            profile_id: p.id,
            slot,
            made: None,
            created_at: now_unix(),
            lease: Some(lease),
            idle_since: None,
            mps: false,
        });
        let at = st.instances.len() - 1;
        // The instance log names the placement before NVML is asked, so that whatever a crash
        // leaves there is known to be gpushare's even if the ledger loses the intent.
        if let Err(e) = crate::instance_log::append(
            &cfg.state_dir,
            &[crate::instance_log::intent(&gpu.uuid, slot, &p.name, p.id)],
        ) {
            st.instances.pop();
            return Err(e.into());
        }
        locked.save(st)?;
        crate::failpoint!("alloc.cold.intent_saved");
        let made = be
            .create(gpu.index, p, slot)
            .map_err(AllocError::from)
            .and_then(|c| {
                let (gi_cap_minor, ci_cap_minor) = node.cap_minors(gpu.minor, c.gi, c.ci)?;
                Ok(Made {
                    gi: c.gi,
                    ci: c.ci,
                    mig_uuid: c.mig_uuid,
                    gi_cap_minor,
                    ci_cap_minor,
                })
            });
        crate::failpoint!("alloc.cold.made");
        return match made {
            Ok(m) => {
                crate::instance_log::note(
                    &cfg.state_dir,
                    &[crate::instance_log::Event::Made {
                        gpu: gpu.uuid.clone(),
                        slot,
                        profile: p.name.clone(),
                        profile_id: p.id,
                        gi: m.gi,
                        ci: m.ci,
                        mig: m.mig_uuid.clone(),
                        t: now_unix(),
                        root: st.instances[at]
                            .lease
                            .as_ref()
                            .and_then(|l| l.runtime_root.clone()),
                    }],
                );
                crate::failpoint!("alloc.cold.logged");
                st.instances[at].made = Some(m.clone());
                crate::mig_mode::settled(st, &gpu.uuid);
                st.stats.grant(&gpu.uuid, false);
                Ok(Grant::from_record(&st.instances[at], &m, false, true))
            }
            Err(e) if nothing_made(&e) => {
                // NVML refused the GPU instance itself (say another manager just took that
                // placement): nothing of ours is there, and what is there is not ours to reclaim.
                st.instances.remove(at);
                crate::instance_log::note(
                    &cfg.state_dir,
                    &[crate::instance_log::gone(&gpu.uuid, slot)],
                );
                Err(e)
            }
            Err(e) => {
                // NVML may have left part of the instance behind (a compute instance blocks its
                // GPU instance's destroy): the record stays as an intent, without a lease, so
                // the next cold path or `gc` destroys whatever is at that placement.
                st.instances[at].lease = None;
                Err(e)
            }
        };
    }
    Err(refusal(profile, misses))
}

/// True when an error came before or from the GPU-instance create call, so no instance exists.
fn nothing_made(e: &AllocError) -> bool {
    matches!(
        e,
        AllocError::Gpu(GpuError::Backend(BackendError::Call { call, .. }))
            if *call == "device_by_index" || *call == "nvmlDeviceCreateGpuInstanceWithPlacement"
    )
}

fn refusal(profile: &str, misses: Vec<Miss>) -> AllocError {
    let profile = profile.to_string();
    let room: Vec<(String, String)> = misses
        .iter()
        .filter_map(|m| match m {
            Miss::NoRoom { gpu, free } => Some((gpu.clone(), free.clone())),
            _ => None,
        })
        .collect();
    if !room.is_empty() {
        let gpus = room
            .iter()
            .map(|(g, _)| g.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let free = room
            .iter()
            .map(|(_, f)| f.as_str())
            .collect::<Vec<_>>()
            .join("; ");
        return AllocError::NoRoom {
            profile,
            gpus,
            free,
        };
    }
    for m in &misses {
        if let Miss::Unknown { gpu, accepted } = m {
            return AllocError::UnknownProfile {
                profile,
                gpu: gpu.clone(),
                accepted: accepted.clone(),
            };
        }
    }
    let off: Vec<(&String, &crate::mig_mode::Hold)> = misses
        .iter()
        .filter_map(|m| match m {
            Miss::MigDisabled(g, why) => Some((g, why)),
            _ => None,
        })
        .collect();
    if let Some((gpu, crate::mig_mode::Hold::Pending { gpu: index, .. })) = off
        .iter()
        .find(|(_, why)| matches!(why, crate::mig_mode::Hold::Pending { .. }))
    {
        return AllocError::MigPending {
            profile,
            gpu: gpu.to_string(),
            index: *index,
        };
    }
    let gpus = off
        .iter()
        .map(|(g, _)| g.as_str())
        .collect::<Vec<_>>()
        .join(", ");
    let mut whys: Vec<String> = Vec::new();
    for (g, why) in &off {
        let why = if off.len() > 1 {
            format!("{g}: {why}")
        } else {
            why.to_string()
        };
        if !whys.contains(&why) {
            whys.push(why);
        }
    }
    AllocError::MigDisabled {
        profile,
        gpus,
        why: whys.join("; "),
    }
}

/// Make room by destroying idle instances gpushare made: the placement (of those `wanted`)
/// needing the fewest destroyed (ties: lowest start). Foreign and busy instances are never
/// touched.
fn reclaim(
    st: &LedgerState,
    gpu: &GpuInfo,
    p: &Profile,
    existing: &[GpuInstance],
    wanted: impl Fn(&Slot) -> bool,
) -> Option<(Slot, Victims)> {
    let idle_ours = |gi: &GpuInstance| {
        st.instances.iter().any(|r| {
            r.gpu_uuid == gpu.uuid
                && r.is_idle()
                && r.made.as_ref().is_some_and(|m| m.gi == gi.id)
                && r.slot == gi.slot
        })
    };
    let mut best: Option<(usize, Slot, Victims)> = None;
    for &slot in p.placements.iter().filter(|s| wanted(s)) {
        let overlapping: Vec<&GpuInstance> =
            existing.iter().filter(|g| g.slot.overlaps(&slot)).collect();
        if !overlapping.iter().all(|g| idle_ours(g)) {
            continue;
        }
        let remaining: Vec<Occupied> = existing
            .iter()
            .filter(|g| !g.slot.overlaps(&slot))
            .map(|g| Occupied {
                profile_id: g.profile_id,
                slot: g.slot,
            })
            .collect();
        if !placement::free_placements(p, &remaining).contains(&slot) {
            continue;
        }
        let n = overlapping.len();
        if best.as_ref().is_none_or(|(bn, _, _)| n < *bn) {
            let victims = overlapping
                .iter()
                .map(|g| (g.id, g.compute_instances.clone()))
                .collect();
            best = Some((n, slot, victims));
        }
    }
    best.map(|(_, slot, victims)| (slot, victims))
}

/// Destroy what no ledger record claims but the instance log says gpushare made, where it has
/// no compute instance: a create or destroy that died half-way, whose record the ledger lost.
/// No container can run on it. Whole ones are left to `gc`, which looks for a container
/// holding them before it adopts them.
fn destroy_logged_leftovers(
    cfg: &Config,
    be: &dyn Gpu,
    st: &LedgerState,
    gpu: &GpuInfo,
    owned: &mut Option<Vec<crate::instance_log::Owned>>,
    existing: &mut Vec<GpuInstance>,
) -> Result<(), AllocError> {
    let claimed = |gi: &GpuInstance| {
        st.instances.iter().any(|r| {
            r.gpu_uuid == gpu.uuid
                && r.slot == gi.slot
                && r.made.as_ref().is_none_or(|m| m.gi == gi.id)
        })
    };
    let mut i = 0;
    while i < existing.len() {
        let gi = &existing[i];
        // The log is read only when the driver shows a GPU instance with no compute instance.
        let half = gi.compute_instances.is_empty()
            && !claimed(gi)
            && owned
                .get_or_insert_with(|| crate::instance_log::owned(&cfg.state_dir))
                .iter()
                .any(|o| o.gpu == gpu.uuid && o.claims(gi));
        if !half {
            i += 1;
            continue;
        }
        be.destroy(gpu.index, gi.id, &gi.compute_instances)?;
        tracing::warn!(
            gpu = gpu.index,
            gi = gi.id,
            "destroyed a half-made instance of gpushare's that the ledger had lost"
        );
        crate::instance_log::note(
            &cfg.state_dir,
            &[crate::instance_log::gone(&gpu.uuid, gi.slot)],
        );
        existing.remove(i);
    }
    Ok(())
}

/// Destroy idle instances of gpushare's (compute instances first) and forget them.
fn destroy_idle(
    cfg: &Config,
    be: &dyn Gpu,
    st: &mut LedgerState,
    gpu: &GpuInfo,
    victims: Victims,
) -> Result<(), AllocError> {
    for (gi, cis) in victims {
        be.destroy(gpu.index, gi, &cis)?;
        let ours = |r: &InstanceRecord| {
            r.gpu_uuid == gpu.uuid && r.made.as_ref().is_some_and(|m| m.gi == gi)
        };
        let gone: Vec<_> = st
            .instances
            .iter()
            .filter(|r| ours(r))
            .map(|r| crate::instance_log::gone(&gpu.uuid, r.slot))
            .collect();
        crate::instance_log::note(&cfg.state_dir, &gone);
        st.instances.retain(|r| !ours(r));
        tracing::info!(
            gpu = gpu.index,
            gi,
            "destroyed an idle instance to make room"
        );
    }
    Ok(())
}

fn free_summary(
    profiles: &[Profile],
    occupied: &[Occupied],
    st: &LedgerState,
    gpu: &GpuInfo,
) -> String {
    let mut parts: Vec<String> = profiles
        .iter()
        .filter_map(|p| {
            let n = placement::capacity(p, occupied);
            (n > 0).then(|| format!("{} x{n}", p.name))
        })
        .collect();
    let idle = st
        .instances
        .iter()
        .filter(|r| r.gpu_uuid == gpu.uuid && r.is_idle())
        .count();
    if idle > 0 {
        parts.push(format!("{idle} idle instance(s) of other profiles"));
    }
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::PolicyKind;
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};

    fn who(id: &str) -> Claimant<'_> {
        Claimant {
            container_id: id,
            runtime_root: None,
        }
    }

    fn slot(start: u32, size: u32) -> Slot {
        Slot { start, size }
    }

    fn profile(gpu: &FakeGpu, name: &str) -> Profile {
        gpu.profiles(0)
            .unwrap()
            .into_iter()
            .find(|p| p.name == name)
            .unwrap()
    }

    fn creates(gpu: &FakeGpu) -> Vec<Call> {
        gpu.calls()
            .into_iter()
            .filter(|c| matches!(c, Call::Create { .. }))
            .collect()
    }

    #[test]
    fn learning_the_gpus_fills_the_ledgers_cache_once() {
        let s = Scratch::new("alloc-learn");
        let gpu = FakeGpu::h100(2);
        learn_gpus_on(&s.cfg, &gpu).unwrap();
        let st = s.ledger();
        assert_eq!(st.gpus.len(), 2);
        assert!(!st.gpus[1].profiles.is_empty());
        let generation = st.generation;
        learn_gpus_on(&s.cfg, &gpu).unwrap();
        assert_eq!(s.ledger().generation, generation, "nothing new: not saved");
    }

    #[test]
    fn a_grant_at_a_placement_takes_exactly_that_one() {
        let s = Scratch::new("alloc-at");
        let gpu = FakeGpu::h100(2);
        let node = FakeNode::new(&gpu);
        // Not where the policy would put a first 1g.10gb on an empty GPU.
        let g = allocate_at_on(&s.cfg, &gpu, &node, "1g.10gb", 1, 5, &who("a")).unwrap();
        assert_eq!((g.gpu_index, g.fresh, g.warm), (1, true, false));
        assert_eq!(
            creates(&gpu),
            [Call::Create {
                gpu: 1,
                profile: "1g.10gb".into(),
                slot: slot(5, 1)
            }]
        );
        // Asked again for the same holder: the same slice, nothing made.
        let again = allocate_at_on(&s.cfg, &gpu, &node, "1g.10gb", 1, 5, &who("a")).unwrap();
        assert_eq!(
            (again.mig_uuid.as_str(), again.fresh),
            (g.mig_uuid.as_str(), false)
        );
        // Released, then asked for by another: warm, at that placement.
        assert!(release(&s.cfg, "a", Duration::from_secs(5)).unwrap());
        gpu.clear_calls();
        let warm = allocate_at_on(&s.cfg, &gpu, &node, "1g.10gb", 1, 5, &who("b")).unwrap();
        assert_eq!(
            (warm.mig_uuid.as_str(), warm.warm),
            (g.mig_uuid.as_str(), true)
        );
        assert_eq!(creates(&gpu), []);
        // A busy placement is refused, never swapped for another one.
        let err = allocate_at_on(&s.cfg, &gpu, &node, "2g.20gb", 1, 4, &who("c")).unwrap_err();
        assert!(matches!(err, AllocError::NoRoom { .. }), "{err:?}");
        assert_eq!(creates(&gpu), []);
    }

    #[test]
    fn a_grant_at_a_placement_destroys_the_idle_instances_in_its_way() {
        let s = Scratch::new("alloc-at-reclaim");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let small = allocate_at_on(&s.cfg, &gpu, &node, "1g.10gb", 0, 4, &who("a")).unwrap();
        assert!(release(&s.cfg, "a", Duration::from_secs(5)).unwrap());
        gpu.clear_calls();
        let big = allocate_at_on(&s.cfg, &gpu, &node, "2g.20gb", 0, 4, &who("b")).unwrap();
        assert!(gpu
            .calls()
            .iter()
            .any(|c| matches!(c, Call::Destroy { gpu: 0, gi, .. } if *gi == small.gi)));
        assert_eq!(big.profile, "2g.20gb");
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "{:?}", st.instances);
        assert_eq!(st.instances[0].slot, slot(4, 2));
    }

    #[test]
    fn a_warm_grant_reuses_an_idle_instance_and_asks_the_gpu_nothing() {
        let s = Scratch::new("alloc-warm");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let first = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("a")).unwrap();
        assert!(!first.warm && first.fresh);
        assert!(release(&s.cfg, "a", Duration::from_secs(5)).unwrap());
        gpu.clear_calls();

        let again = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("b")).unwrap();
        assert!(again.warm && again.fresh);
        assert_eq!(again.mig_uuid, first.mig_uuid, "the idle instance itself");
        assert_eq!(gpu.calls(), Vec::<Call>::new(), "no NVML call at all");
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1);
        let lease = st.instances[0].lease.as_ref().unwrap();
        assert_eq!(lease.container_id, "b");
        assert_eq!(st.instances[0].idle_since, None);
    }

    #[test]
    fn a_cold_grant_creates_where_the_configured_policy_places() {
        let mut picked = Vec::new();
        for (policy, rule) in [
            (
                PolicyKind::BestFit,
                placement::best_fit as fn(&Profile, &[Profile], &[Occupied]) -> Option<Slot>,
            ),
            (PolicyKind::Lowest, |t, _, o| placement::lowest(t, o)),
            (PolicyKind::DriverOrder, |t, _, o| {
                placement::driver_order(t, o)
            }),
        ] {
            let mut s = Scratch::new(&format!("alloc-cold-{policy:?}"));
            s.cfg.placement.policy = policy;
            let gpu = FakeGpu::h100(1);
            let node = FakeNode::new(&gpu);
            // Someone else's 2g.20gb in the middle: the policies disagree around it.
            gpu.make(0, "2g.20gb", slot(2, 2));
            let target = profile(&gpu, "1g.10gb");
            let want = rule(
                &target,
                &gpu.profiles(0).unwrap(),
                &gpu::occupancy(&gpu.instances(0)),
            )
            .unwrap();
            gpu.clear_calls();

            let g = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("a")).unwrap();
            assert!(!g.warm && g.fresh);
            assert_eq!(
                creates(&gpu),
                vec![Call::Create {
                    gpu: 0,
                    profile: "1g.10gb".into(),
                    slot: want
                }],
                "{policy:?}"
            );
            // The grant names what the driver made there, with its capability minors.
            let made = gpu
                .instances(0)
                .into_iter()
                .find(|i| i.slot == want)
                .unwrap();
            assert_eq!((g.gi, g.ci), (made.id, 0));
            assert_eq!(
                (g.gi_cap_minor, g.ci_cap_minor),
                node.cap_minors(0, made.id, 0).unwrap()
            );
            let st = s.ledger();
            assert_eq!(st.instances.len(), 1);
            assert_eq!(st.instances[0].slot, want);
            assert_eq!(st.instances[0].made.as_ref().unwrap().mig_uuid, g.mig_uuid);
            picked.push(want);
        }
        picked.dedup();
        assert!(picked.len() > 1, "the policies must disagree: {picked:?}");
    }

    #[test]
    fn idle_instances_are_destroyed_to_make_room() {
        let s = Scratch::new("alloc-reclaim");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let ids: Vec<String> = (0..7).map(|i| format!("c{i}")).collect();
        for id in &ids {
            allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who(id)).unwrap();
        }
        for id in &ids {
            release(&s.cfg, id, Duration::from_secs(5)).unwrap();
        }
        let idle: Vec<u32> = gpu.instances(0).iter().map(|g| g.id).collect();
        assert_eq!(idle.len(), 7);
        gpu.clear_calls();

        let g = allocate_on(&s.cfg, &gpu, &node, "7g.80gb", None, &who("big")).unwrap();
        assert!(!g.warm);
        let mut destroyed: Vec<u32> = Vec::new();
        for c in gpu.changes() {
            match c {
                Call::Destroy { gpu: 0, gi, cis } => {
                    assert_eq!(cis, vec![0], "its compute instance first");
                    destroyed.push(gi);
                }
                Call::Create { .. } => {
                    assert_eq!(
                        destroyed.len(),
                        7,
                        "every idle 1g.10gb goes before the create"
                    );
                    assert_eq!(
                        c,
                        Call::Create {
                            gpu: 0,
                            profile: "7g.80gb".into(),
                            slot: slot(0, 8)
                        }
                    );
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        destroyed.sort_unstable();
        assert_eq!(destroyed, idle);
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "the destroyed are forgotten");
        assert_eq!(st.instances[0].profile, "7g.80gb");
        assert_eq!(st.instances[0].lease.as_ref().unwrap().container_id, "big");
    }

    #[test]
    fn a_busy_instance_is_never_reclaimed_and_the_refusal_names_what_is_free() {
        let s = Scratch::new("alloc-refuse");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        allocate_on(&s.cfg, &gpu, &node, "4g.40gb", None, &who("busy")).unwrap();
        gpu.clear_calls();

        let err = allocate_on(&s.cfg, &gpu, &node, "7g.80gb", None, &who("big")).unwrap_err();
        assert!(matches!(err, AllocError::NoRoom { .. }), "{err:?}");
        let text = err.to_string();
        assert!(
            text.starts_with("no free 7g.80gb slice on GPU 0 (NVIDIA H100 80GB HBM3) (free: "),
            "{text}"
        );
        // What the other half of the GPU still takes, as NVML's placements allow.
        for free in ["1g.10gb x3", "2g.20gb x1", "3g.40gb x1", "1g.20gb x2"] {
            assert!(text.contains(free), "{free} in: {text}");
        }
        assert!(!text.contains("4g.40gb x"), "{text}");
        assert_eq!(
            gpu.changes(),
            Vec::<Call>::new(),
            "nothing destroyed or made"
        );
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1);
        assert_eq!(st.stats.refused_no_room, 1);
    }

    #[test]
    fn a_record_the_driver_lost_is_dropped_and_not_granted() {
        let s = Scratch::new("alloc-stale");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let first = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("a")).unwrap();
        release(&s.cfg, "a", Duration::from_secs(5)).unwrap();
        gpu.vanish(0, first.gi);
        gpu.clear_calls();

        let g = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("b")).unwrap();
        assert!(!g.warm, "the lost instance is not handed out");
        assert_ne!(g.mig_uuid, first.mig_uuid);
        assert_eq!(creates(&gpu).len(), 1);
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "the stale record is gone");
        assert_eq!(st.instances[0].made.as_ref().unwrap().mig_uuid, g.mig_uuid);
    }

    #[test]
    fn a_gpu_is_switched_to_mig_only_when_none_in_mig_mode_serves() {
        let mut s = Scratch::new("alloc-switch");
        let gpu = FakeGpu::h100(2);
        let node = FakeNode::new(&gpu);
        gpu.set_mig(0, false);
        // mig.manage_mode off: nothing switched, and the refusal names the operator's choice.
        allocate_on(&s.cfg, &gpu, &node, "7g.80gb", None, &who("big")).unwrap();
        let err = allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who("a")).unwrap_err();
        let text = err.to_string();
        assert!(matches!(err, AllocError::NoRoom { .. }), "{text}");
        let err = allocate_on(
            &s.cfg,
            &gpu,
            &node,
            "2g.20gb",
            Some(&DeviceSelector::Index(0)),
            &who("a"),
        )
        .unwrap_err();
        let text = err.to_string();
        assert!(text.contains("MIG mode is disabled on GPU 0"), "{text}");
        assert!(text.contains("mig.manage_mode is off"), "{text}");
        assert!(text.contains("nvidia-smi -i <index> -mig 1"), "{text}");
        assert!(!gpu
            .changes()
            .iter()
            .any(|c| matches!(c, Call::SetMigMode { .. })));

        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        release(&s.cfg, "big", Duration::from_secs(5)).unwrap();
        gpu.clear_calls();
        // GPU 1 is in MIG mode with room: it serves, GPU 0 stays as it is.
        let g = allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who("a")).unwrap();
        assert_eq!(g.gpu_index, 1);
        assert!(!gpu
            .changes()
            .iter()
            .any(|c| matches!(c, Call::SetMigMode { .. })));
        // GPU 1 full of busy slices: GPU 0 is switched on for the next.
        allocate_on(&s.cfg, &gpu, &node, "4g.40gb", None, &who("b")).unwrap();
        allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("c")).unwrap();
        let g = allocate_on(&s.cfg, &gpu, &node, "4g.40gb", None, &who("d")).unwrap();
        assert_eq!(g.gpu_index, 0);
        assert!(gpu
            .changes()
            .contains(&Call::SetMigMode { gpu: 0, on: true }));
        let st = s.ledger();
        assert!(st.mig_modes.is_empty(), "settled with the grant");
        assert!(st.gpus[0].mig_enabled);
    }

    #[test]
    fn a_create_nvml_refuses_leaves_no_record() {
        let s = Scratch::new("alloc-refused-create");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        gpu.refuse_next_create();
        let err = allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("a")).unwrap_err();
        assert!(
            err.to_string()
                .contains("nvmlDeviceCreateGpuInstanceWithPlacement"),
            "{err}"
        );
        assert!(s.ledger().instances.is_empty());
        allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("a")).unwrap();
    }
}
