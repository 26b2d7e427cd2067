//! Which devices a node publishes to Kubernetes' DRA (docs/kubernetes.md, "What gpushare
//! publishes instead"), decided from the ledger alone: no NVML, no API server. The scheduler's
//! allocator takes the first published device that fits, so what is published, and in which
//! order, is how gpushare's placement policy gets to decide inside a cluster:
//!
//! - per MIG GPU and profile, the one device gpushare's own allocator would grant now: the idle
//!   instance the warm path would reuse (a warm device), else a new instance at the placement
//!   the policy prefers (overlapping idle instances are destroyed at prepare, as on the cold
//!   path);
//! - instances claims lease, so that the memory-slice counters they consume stay consumed (the
//!   allocator counts only devices that are published and allocated). An instance a container
//!   leases (the RuntimeClass path) or MPS serves is no claim's: published, it would be free to
//!   allocate in the scheduler's view, and the prepare that followed would be refused;
//! - per GPU not in MIG mode, the whole GPU for time-slicing and its MPS shares, as devices
//!   several claims may share (consumable capacity, KEP-5075) or, where the cluster lacks it,
//!   as counted shares, tied by a counter of the GPU's ([`SharingCounter`]) so that the
//!   scheduler never allocates the whole GPU beside an MPS share.
//!
//! Order: warm devices of every GPU, then new instances, then leased ones, each GPU by GPU: the
//! order the allocator tries them (warm path first, then the cold path GPU by GPU).
//! `benches/dra.rs` runs this module's MIG decision in its cluster simulation.

use crate::config::Config;
use crate::dra_name::{DeviceName, DraNameError};
use crate::ledger::{GpuRecord, InstanceRecord, LedgerState};
use crate::placement::{Occupied, Profile, Slot};
use crate::policy::node::{cached_table, rule};
use crate::policy::{decide, Decision, PoolKind, Scorer};

/// How a MIG device published for one profile would be prepared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Offer {
    /// Grant the idle instance `idle[i]` of the GPU's view.
    Warm(usize),
    /// Destroy these idle instances (indexes into the view's `idle`), then create the instance.
    Create { destroy: Vec<usize> },
    /// Already granted (`busy[i]` of the view): published, if a claim holds it, so its
    /// counters stay consumed.
    Leased(usize),
    /// Allocated to a claim by the scheduler and not prepared yet, though the node would no
    /// longer offer it: published so its counters stay consumed until prepare grants it.
    Allocated,
}

/// A MIG device: a profile at a placement on one GPU (by its position in the node's list).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigDevice {
    pub gpu: usize,
    pub profile_id: u32,
    /// The memory slices it consumes from its GPU's counter set.
    pub slot: Slot,
    pub offer: Offer,
}

/// One MIG GPU as the decision sees it.
#[derive(Debug, Clone, Copy)]
pub struct MigGpu<'a> {
    pub profiles: &'a [Profile],
    /// What must stay: leased instances (and anyone else's).
    pub busy: &'a [Occupied],
    /// gpushare's idle instances, which may be reused or destroyed.
    pub idle: &'a [Occupied],
}

/// The policy a GPU's devices are decided under: the same inputs as the grant path's.
#[derive(Debug, Clone, Copy)]
pub struct Policy<'a> {
    pub scorer: Scorer<'a>,
    pub pool: PoolKind,
    pub tolerance: f64,
}

/// One GPU's MIG devices, by the part of the publication they go in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct GpuDevices {
    pub warm: Vec<MigDevice>,
    pub new: Vec<MigDevice>,
    pub leased: Vec<MigDevice>,
}

/// The MIG devices of GPU `gpu`: for every profile of `offered` (indexes into its profiles),
/// the device gpushare would grant now, and its leased instances. A profile nothing fits gets
/// no device.
pub fn mig_devices(
    gpu: usize,
    view: &MigGpu<'_>,
    offered: impl IntoIterator<Item = usize>,
    policy: &Policy<'_>,
) -> GpuDevices {
    let mut out = GpuDevices::default();
    for i in offered {
        let p = &view.profiles[i];
        let (slot, offer) = match decide(
            &policy.scorer,
            policy.pool,
            policy.tolerance,
            p,
            view.profiles,
            view.busy,
            view.idle,
        ) {
            Decision::Reuse(j) => (view.idle[j].slot, Offer::Warm(j)),
            Decision::Create { slot, destroy } => (slot, Offer::Create { destroy }),
            Decision::Refuse => continue,
        };
        let d = MigDevice {
            gpu,
            profile_id: p.id,
            slot,
            offer,
        };
        match d.offer {
            Offer::Warm(_) => out.warm.push(d),
            _ => out.new.push(d),
        }
    }
    out.leased
        .extend(view.busy.iter().enumerate().map(|(j, o)| MigDevice {
            gpu,
            profile_id: o.profile_id,
            slot: o.slot,
            offer: Offer::Leased(j),
        }));
    out
}

/// The node's MIG devices in publication order: every GPU's warm devices, then new ones, then
/// leased ones.
pub fn in_order(per_gpu: &[GpuDevices]) -> impl Iterator<Item = &MigDevice> {
    let part = |k: usize| {
        per_gpu.iter().flat_map(move |g| match k {
            0 => &g.warm,
            1 => &g.new,
            _ => &g.leased,
        })
    };
    part(0).chain(part(1)).chain(part(2))
}

/// Memory slices of a GPU: one counter each in its counter set.
pub fn memory_slices(profiles: &[Profile]) -> u32 {
    profiles
        .iter()
        .flat_map(|p| &p.placements)
        .map(|s| s.start + s.size)
        .max()
        .unwrap_or(0)
}

/// How whole-GPU and MPS shares are published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sharing {
    /// Consumable capacity (KEP-5075, `DRAConsumableCapacity`): one device per GPU and way of
    /// sharing, which many claims may be allocated.
    Consumable,
    /// No consumable capacity: the whole GPU goes to one claim at a time, MPS as `shares`
    /// counted devices of `100 / shares` percent of the SMs each.
    Counted { shares: u32 },
}

/// What a published device is.
#[derive(Debug, Clone, PartialEq)]
pub enum Kind {
    Mig {
        profile: Profile,
        slot: Slot,
        offer: Offer,
    },
    /// The whole GPU, time-sliced; `shared` when many claims may be allocated it.
    Whole { shared: bool },
    /// MPS: `percent` of the SMs (per claim when counted, in all when shared).
    Mps { percent: u32, shared: bool },
}

/// What a counted device outside MIG consumes of its GPU's sharing counter: a counter of value
/// `shares` (the GPU's counted MPS shares), of which the whole GPU consumes all and each MPS
/// share one. gpushare refuses an MPS share on a GPU that time-slices and the reverse; on an
/// idle GPU both are published, and this counter is what keeps the scheduler from allocating
/// the whole GPU to one claim and a share to another before the node publishes again.
///
/// Counted devices only: the scheduler charges a device's counters once per allocated device,
/// which for a device one claim holds is once per claim. A device several claims share
/// (consumable capacity) is charged in later scheduling cycles only by schedulers that count
/// shared allocations as allocated (kubernetes/kubernetes#139034, #140433), so consumable
/// devices stay untied (docs/kubernetes.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SharingCounter {
    /// The counter's value: the GPU's counted MPS shares.
    pub shares: u32,
    /// How much of it this device consumes.
    pub consumes: u32,
}

impl SharingCounter {
    fn whole(shares: u32) -> SharingCounter {
        SharingCounter {
            shares,
            consumes: shares,
        }
    }

    fn mps_share(shares: u32) -> SharingCounter {
        SharingCounter {
            shares,
            consumes: 1,
        }
    }
}

/// A device the node publishes, with what the ResourceSlice says of it.
#[derive(Debug, Clone, PartialEq)]
pub struct Published {
    pub name: DeviceName,
    pub gpu: GpuRecord,
    pub kind: Kind,
    /// Counted whole-GPU and MPS devices: what they consume of their GPU's sharing counter.
    pub sharing_counter: Option<SharingCounter>,
}

/// Everything the node publishes, in order: MIG devices as above, then whole-GPU and MPS
/// devices GPU by GPU. A GPU not in MIG mode offers time-slicing unless it serves MPS clients
/// now, and MPS unless it time-slices now: gpushare refuses one beside the other.
///
/// `allocated`: the devices of this pool that claims hold in the API server's view (their
/// `status.allocation`). The scheduler counts an allocated device's counters only while the
/// device is published, so one allocated from an earlier publication and not prepared yet is
/// published again, last, whatever the node would offer now.
pub fn node_devices(
    cfg: &Config,
    st: &LedgerState,
    sharing: Sharing,
    allocated: &[DeviceName],
) -> Result<Vec<Published>, DraNameError> {
    let mut out = offered(cfg, st, sharing)?;
    for name in allocated {
        if out.iter().any(|p| &p.name == name) {
            continue;
        }
        let Some(gpu) = st.gpus.iter().find(|g| g.index == name.gpu()) else {
            continue;
        };
        let counted = counted_shares(sharing);
        let (kind, sharing_counter) = match name {
            DeviceName::Mig { start, .. } if gpu.mig_enabled => {
                let Some(profile) = name.profile(&gpu.profiles) else {
                    continue;
                };
                let Some(slot) = profile.placements.iter().find(|s| s.start == *start) else {
                    continue;
                };
                let kind = Kind::Mig {
                    slot: *slot,
                    profile: profile.clone(),
                    offer: Offer::Allocated,
                };
                (kind, None)
            }
            DeviceName::Whole { .. } if !gpu.mig_enabled => (
                Kind::Whole {
                    shared: counted.is_none(),
                },
                counted.map(SharingCounter::whole),
            ),
            DeviceName::Mps { .. } if !gpu.mig_enabled && counted.is_none() => {
                let kind = Kind::Mps {
                    percent: 100,
                    shared: true,
                };
                (kind, None)
            }
            DeviceName::MpsShare { .. } if !gpu.mig_enabled => match counted {
                Some(n) => {
                    let kind = Kind::Mps {
                        percent: counted_percent(cfg, n),
                        shared: false,
                    };
                    (kind, Some(SharingCounter::mps_share(n)))
                }
                None => continue,
            },
            // A device of another mode than the GPU's now: nothing left to count.
            _ => continue,
        };
        out.push(Published {
            name: name.clone(),
            gpu: gpu.clone(),
            kind,
            sharing_counter,
        });
    }
    Ok(out)
}

/// How many counted MPS shares each GPU outside MIG has; `None` with consumable capacity.
fn counted_shares(sharing: Sharing) -> Option<u32> {
    match sharing {
        Sharing::Consumable => None,
        Sharing::Counted { shares } => Some(shares.max(1)),
    }
}

/// Each counted MPS share's percent of the SMs.
fn counted_percent(cfg: &Config, shares: u32) -> u32 {
    let max = u32::from(cfg.policy.max_mps_percent.clamp(1, 100));
    (100 / shares.max(1)).min(max)
}

/// What the node offers now, from the ledger alone.
fn offered(
    cfg: &Config,
    st: &LedgerState,
    sharing: Sharing,
) -> Result<Vec<Published>, DraNameError> {
    let mig_gpus: Vec<&GpuRecord> = st.gpus.iter().filter(|g| g.mig_enabled).collect();
    let mut per_gpu = Vec::new();
    let mut busy_records = Vec::new();
    for (g, gpu) in mig_gpus.iter().enumerate() {
        let on_gpu = st.instances.iter().filter(|r| r.gpu_uuid == gpu.uuid);
        let (idle, busy_of): (Vec<&InstanceRecord>, Vec<&InstanceRecord>) =
            on_gpu.partition(|r| r.is_idle());
        let occ = |v: &[&InstanceRecord]| {
            v.iter()
                .map(|r| Occupied {
                    profile_id: r.profile_id,
                    slot: r.slot,
                })
                .collect::<Vec<_>>()
        };
        let (busy, idle) = (occ(&busy_of), occ(&idle));
        busy_records.push(busy_of);
        let table = cached_table(cfg, st, &gpu.profiles);
        let policy = Policy {
            scorer: table
                .as_deref()
                .map_or(rule(cfg.placement.policy), Scorer::Table),
            pool: cfg.placement.pool,
            tolerance: cfg.placement.reuse_tolerance,
        };
        let offered = (0..gpu.profiles.len()).filter(|&i| {
            cfg.policy.allowed_profiles.is_empty()
                || cfg.policy.allowed_profiles.contains(&gpu.profiles[i].name)
        });
        let view = MigGpu {
            profiles: &gpu.profiles,
            busy: &busy,
            idle: &idle,
        };
        per_gpu.push(mig_devices(g, &view, offered, &policy));
    }
    let mut out = Vec::new();
    for d in in_order(&per_gpu) {
        if let Offer::Leased(j) = d.offer {
            let record: &InstanceRecord = busy_records[d.gpu][j];
            if !record.lease.as_ref().is_some_and(|l| l.owner().is_claim()) {
                continue;
            }
        }
        let gpu = mig_gpus[d.gpu];
        let profile = gpu
            .profiles
            .iter()
            .find(|p| p.id == d.profile_id)
            .expect("devices are of the GPU's profiles")
            .clone();
        out.push(Published {
            name: DeviceName::mig(gpu.index, &profile.name, d.slot.start)?,
            gpu: gpu.clone(),
            kind: Kind::Mig {
                profile,
                slot: d.slot,
                offer: d.offer.clone(),
            },
            sharing_counter: None,
        });
    }
    for gpu in st.gpus.iter().filter(|g| !g.mig_enabled) {
        let time_sliced = st.shares.iter().any(|s| s.gpu_uuid == gpu.uuid);
        let mps_clients = st
            .mps
            .iter()
            .any(|m| m.gpu_uuid == gpu.uuid && !m.clients.is_empty());
        let counted = counted_shares(sharing);
        // Counted, a time-slice lease takes the one whole device; consumable, the scheduler
        // counts the claims itself.
        let whole_taken = time_sliced && counted.is_some();
        if !mps_clients && !whole_taken {
            out.push(Published {
                name: DeviceName::Whole { gpu: gpu.index },
                gpu: gpu.clone(),
                kind: Kind::Whole {
                    shared: counted.is_none(),
                },
                sharing_counter: counted.map(SharingCounter::whole),
            });
        }
        if time_sliced {
            continue;
        }
        match counted {
            None => out.push(Published {
                name: DeviceName::Mps { gpu: gpu.index },
                gpu: gpu.clone(),
                kind: Kind::Mps {
                    percent: 100,
                    shared: true,
                },
                sharing_counter: None,
            }),
            Some(n) => {
                // MPS clients gpushare granted hold shares the scheduler cannot see as
                // allocated (they may have come through the RuntimeClass path): publish only
                // the shares still free.
                let used: u32 = st
                    .mps
                    .iter()
                    .filter(|m| m.gpu_uuid == gpu.uuid)
                    .flat_map(|m| &m.clients)
                    .map(|c| u32::from(c.percent))
                    .sum();
                let each = counted_percent(cfg, n);
                let free = 100u32.saturating_sub(used) / each.max(1);
                for k in 0..n.min(free) {
                    out.push(Published {
                        name: DeviceName::MpsShare {
                            gpu: gpu.index,
                            share: k,
                        },
                        gpu: gpu.clone(),
                        kind: Kind::Mps {
                            percent: each,
                            shared: false,
                        },
                        sharing_counter: Some(SharingCounter::mps_share(n)),
                    });
                }
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Lease, ShareLease};
    use crate::placement::tests::h100;
    use crate::policy::DEFAULT_REUSE_TOLERANCE;
    use crate::testing::{gpu_record as gpu, instance_record as instance};

    fn cfg() -> Config {
        let mut c = Config::default();
        c.placement.policy = crate::policy::PolicyKind::BestFit;
        c.placement.pool = PoolKind::Aware;
        c.placement.reuse_tolerance = DEFAULT_REUSE_TOLERANCE;
        c
    }

    fn names(v: &[Published]) -> Vec<String> {
        v.iter().map(|p| p.name.to_string()).collect()
    }

    /// The simulated driver's check, applied to a set of devices the counters admit together
    /// (with the leased ones): prepared one after the other, each fits beside what exists.
    fn prepare_all(
        profiles: &[Profile],
        busy: &[Occupied],
        idle: &[Occupied],
        set: &[&MigDevice],
    ) -> Result<(), String> {
        let mut made: Vec<Occupied> = busy.to_vec();
        // Per idle instance: still idle (Some) or gone, and whether a warm grant took it.
        let mut idle: Vec<Option<Occupied>> = idle.iter().copied().map(Some).collect();
        let mut taken = vec![false; idle.len()];
        for d in set {
            let p = profiles.iter().find(|p| p.id == d.profile_id).unwrap();
            match &d.offer {
                Offer::Warm(j) => {
                    let o = idle[*j]
                        .take()
                        .ok_or(format!("warm {j} already destroyed"))?;
                    if o.slot != d.slot || o.profile_id != p.id {
                        return Err(format!("warm {j} is not {d:?}"));
                    }
                    taken[*j] = true;
                    made.push(o);
                }
                Offer::Create { destroy } => {
                    for &j in destroy {
                        // Destroyed for an earlier create is fine; granted warm is not.
                        if taken[j] {
                            return Err(format!("{d:?}: victim {j} was granted warm"));
                        }
                        idle[j] = None;
                    }
                    let now: Vec<Occupied> = made
                        .iter()
                        .copied()
                        .chain(idle.iter().flatten().copied())
                        .collect();
                    if !crate::placement::can_create(p, &now, d.slot) {
                        return Err(format!("{} at {:?} beside {now:?}", p.name, d.slot));
                    }
                    made.push(Occupied {
                        profile_id: p.id,
                        slot: d.slot,
                    });
                }
                Offer::Leased(_) | Offer::Allocated => {
                    unreachable!("allocated devices are not offered")
                }
            }
        }
        Ok(())
    }

    /// Whether the counters admit these devices at once: no memory slice consumed twice,
    /// counting the leased (allocated) devices too.
    fn counters_admit(set: &[&MigDevice], leased: &[MigDevice]) -> bool {
        let mut used = [0u32; 64];
        for slot in set
            .iter()
            .map(|d| d.slot)
            .chain(leased.iter().map(|d| d.slot))
        {
            for s in slot.start..slot.start + slot.size {
                used[s as usize] += 1;
            }
        }
        used.iter().all(|&n| n <= 1)
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]
        /// On every simulated model, after any history of grants and releases through the
        /// published devices: any set of devices the DRA counters let the scheduler allocate at
        /// once can be prepared on the GPU, in either order (no two overlap on a memory slice,
        /// none exceeds its profile's instance count, none reuses an instance another takes).
        #[test]
        fn counters_never_admit_devices_that_do_not_fit_together(
            model in 0usize..8,
            lowest in proptest::bool::ANY,
            ops in proptest::collection::vec((proptest::bool::ANY, 0usize..64), 0..40),
        ) {
            let models = crate::policy::model::all_models();
            let profiles = &models[model].1;
            let policy = Policy {
                scorer: if lowest { Scorer::Lowest } else { Scorer::BestFit },
                pool: PoolKind::Aware,
                tolerance: DEFAULT_REUSE_TOLERANCE,
            };
            let (mut busy, mut idle): (Vec<Occupied>, Vec<Occupied>) = (vec![], vec![]);
            for (grant, pick) in ops {
                let view = MigGpu { profiles, busy: &busy, idle: &idle };
                let devs = mig_devices(0, &view, 0..profiles.len(), &policy);
                proptest::prop_assert_eq!(devs.leased.len(), busy.len());
                let free: Vec<&MigDevice> = devs.warm.iter().chain(&devs.new).collect();
                for mask in 0u32..(1 << free.len()) {
                    let set: Vec<&MigDevice> = (0..free.len())
                        .filter(|i| mask & (1 << i) != 0)
                        .map(|i| free[i])
                        .collect();
                    if !counters_admit(&set, &devs.leased) {
                        continue;
                    }
                    let rev: Vec<&MigDevice> = set.iter().rev().copied().collect();
                    for order in [&set, &rev] {
                        let r = prepare_all(profiles, &busy, &idle, order);
                        proptest::prop_assert!(r.is_ok(), "{}: {:?}", models[model].0, r);
                    }
                }
                if grant && !free.is_empty() {
                    let d = free[pick % free.len()];
                    match &d.offer {
                        Offer::Warm(j) => busy.push(idle.swap_remove(*j)),
                        Offer::Create { destroy } => {
                            for &j in destroy.iter().rev() {
                                idle.remove(j);
                            }
                            busy.push(Occupied { profile_id: d.profile_id, slot: d.slot });
                        }
                        Offer::Leased(_) | Offer::Allocated => unreachable!(),
                    }
                } else if !busy.is_empty() {
                    let o = busy.swap_remove(pick % busy.len());
                    idle.push(o);
                }
            }
        }
    }

    /// Whether the sharing counters admit these devices at once, as the scheduler counts them:
    /// per GPU, what the devices consume together fits the counter's value. Devices without a
    /// sharing counter are tied by nothing.
    fn sharing_counters_admit(set: &[&Published]) -> bool {
        let mut used: std::collections::BTreeMap<u32, (u32, u32)> = Default::default();
        for p in set {
            if let Some(c) = p.sharing_counter {
                let e = used.entry(p.gpu.index).or_insert((c.shares, 0));
                assert_eq!(e.0, c.shares, "one value per GPU's counter");
                e.1 += c.consumes;
            }
        }
        used.values().all(|&(value, consumed)| consumed <= value)
    }

    fn mps_daemon(gpu: &GpuRecord, clients: &[u8]) -> crate::ledger::MpsDaemon {
        crate::ledger::MpsDaemon {
            gpu_uuid: gpu.uuid.clone(),
            gpu_index: gpu.index,
            gpu_minor: gpu.minor,
            pid: Some(1),
            pipe_dir: "/run/mps/pipe".into(),
            log_dir: "/run/mps/log".into(),
            percent: 100,
            memory: None,
            started_at: 0,
            clients: clients
                .iter()
                .enumerate()
                .map(|(i, &percent)| crate::ledger::MpsClient {
                    lease: Lease {
                        container_id: format!("c{i}"),
                        since: 0,
                        runtime_root: None,
                    },
                    percent,
                    memory: None,
                })
                .collect(),
            mig: None,
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// Counted whole-GPU and MPS devices of a GPU outside MIG, whatever the GPU serves and
        /// whatever claims hold from earlier publications: any set of them the sharing counter
        /// lets the scheduler allocate at once, gpushare can grant together (never the whole
        /// GPU beside an MPS share, never more shares than the SMs hold). And the counter takes
        /// nothing from what each mode alone may have: the whole GPU alone, every share at once.
        #[test]
        fn sharing_counters_never_admit_time_slicing_beside_mps(
            shares in 1u32..9,
            max_percent in 1u8..=100,
            time_sliced in proptest::bool::ANY,
            clients in proptest::collection::vec(1u8..=50, 0..3),
            held in proptest::collection::vec(0u32..10, 0..4),
            whole_held in proptest::bool::ANY,
        ) {
            let g0 = gpu(0, false);
            let mut c = cfg();
            c.policy.max_mps_percent = max_percent;
            let mut st = LedgerState { gpus: vec![g0.clone()], ..Default::default() };
            if time_sliced {
                st.shares.push(ShareLease {
                    gpu_uuid: g0.uuid.clone(),
                    gpu_index: 0,
                    gpu_minor: 0,
                    lease: Lease { container_id: "t".into(), since: 0, runtime_root: None },
                });
            } else if !clients.is_empty() {
                st.mps.push(mps_daemon(&g0, &clients));
            }
            let mut allocated: Vec<DeviceName> = held
                .iter()
                .map(|&k| DeviceName::MpsShare { gpu: 0, share: k })
                .collect();
            if whole_held {
                allocated.push(DeviceName::Whole { gpu: 0 });
            }
            let sharing = Sharing::Counted { shares };
            let out = node_devices(&c, &st, sharing, &allocated).unwrap();
            let devs: Vec<&Published> = out.iter().collect();
            proptest::prop_assert!(devs.iter().all(|p| p.sharing_counter.is_some()));
            for mask in 0u32..(1 << devs.len()) {
                let set: Vec<&Published> = (0..devs.len())
                    .filter(|i| mask & (1 << i) != 0)
                    .map(|i| devs[i])
                    .collect();
                if !sharing_counters_admit(&set) {
                    continue;
                }
                let whole = set.iter().any(|p| matches!(p.kind, Kind::Whole { .. }));
                let mps: Vec<u32> = set
                    .iter()
                    .filter_map(|p| match p.kind {
                        Kind::Mps { percent, .. } => Some(percent),
                        _ => None,
                    })
                    .collect();
                proptest::prop_assert!(
                    !whole || mps.is_empty(),
                    "{:?} admitted together",
                    names(&out)
                );
                proptest::prop_assert!(mps.iter().sum::<u32>() <= 100, "{:?}", mps);
            }
            let idle = !time_sliced && clients.is_empty() && held.is_empty() && !whole_held;
            if idle {
                let (whole, mps): (Vec<&Published>, Vec<&Published>) =
                    devs.iter().partition(|p| matches!(p.kind, Kind::Whole { .. }));
                proptest::prop_assert_eq!(whole.len(), 1);
                proptest::prop_assert_eq!(mps.len() as u32, shares.min(100 / counted_percent(&c, shares)));
                proptest::prop_assert!(sharing_counters_admit(&whole));
                proptest::prop_assert!(sharing_counters_admit(&mps));
            }
        }
    }

    #[test]
    fn consumable_devices_and_mig_devices_have_no_sharing_counter() {
        let st = LedgerState {
            gpus: vec![gpu(0, true), gpu(1, false)],
            ..Default::default()
        };
        let held: Vec<DeviceName> = ["gpu1-whole", "gpu1-mps"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &held).unwrap();
        assert!(out.iter().any(|p| p.name.to_string() == "gpu1-mps"));
        assert!(out.iter().all(|p| p.sharing_counter.is_none()));
        let out = node_devices(&cfg(), &st, Sharing::Counted { shares: 3 }, &[]).unwrap();
        for p in &out {
            let want = match p.kind {
                Kind::Mig { .. } => None,
                Kind::Whole { .. } => Some((3, 3)),
                Kind::Mps { .. } => Some((3, 1)),
            };
            assert_eq!(
                p.sharing_counter.map(|c| (c.shares, c.consumes)),
                want,
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn an_empty_mig_gpu_offers_each_profile_once_at_the_policy_placement() {
        let st = LedgerState {
            gpus: vec![gpu(0, true)],
            ..Default::default()
        };
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        assert_eq!(out.len(), h100().len(), "{:?}", names(&out));
        for d in &out {
            let Kind::Mig {
                profile,
                slot,
                offer,
            } = &d.kind
            else {
                panic!("{}", d.name)
            };
            assert_eq!(*offer, Offer::Create { destroy: vec![] });
            let want = crate::policy::choose(&Scorer::BestFit, profile, &h100(), &[]).unwrap();
            assert_eq!(*slot, want, "{}", d.name);
        }
    }

    #[test]
    fn warm_devices_of_every_gpu_come_first_and_leased_ones_stay_published() {
        let (g0, g1) = (gpu(0, true), gpu(1, true));
        let st = LedgerState {
            instances: vec![
                instance(&g0, "1g.10gb", 6, true),
                instance(&g1, "2g.20gb", 4, false),
            ],
            gpus: vec![g0, g1],
            ..Default::default()
        };
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        let n = names(&out);
        assert_eq!(n[0], "gpu1-2g-20gb-at4", "{n:?}");
        assert!(matches!(
            out[0].kind,
            Kind::Mig {
                offer: Offer::Warm(0),
                ..
            }
        ));
        let last = out.last().unwrap();
        assert_eq!(last.name.to_string(), "gpu0-1g-10gb-at6");
        assert!(matches!(
            last.kind,
            Kind::Mig {
                offer: Offer::Leased(0),
                ..
            }
        ));
        // Every name once: one device per (profile, placement) at most.
        let mut sorted = n.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), n.len());
    }

    #[test]
    fn an_instance_serving_mps_is_never_offered_warm() {
        let g0 = gpu(0, true);
        let mut serving = instance(&g0, "3g.40gb", 4, false);
        serving.mps = true;
        serving.idle_since = None;
        let st = LedgerState {
            instances: vec![serving],
            gpus: vec![g0],
            ..Default::default()
        };
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        assert!(
            out.iter().all(|d| !matches!(
                d.kind,
                Kind::Mig {
                    offer: Offer::Warm(_),
                    ..
                }
            )),
            "{:?}",
            names(&out)
        );
        // Nor at all: no claim is allocated it, so the scheduler would take it as free.
        assert!(
            out.iter().all(|d| d.name.to_string() != "gpu0-3g-40gb-at4"),
            "{:?}",
            names(&out)
        );
        assert!(!out.is_empty(), "the rest of the GPU is offered");
    }

    /// The RuntimeClass path beside DRA on one node: an instance a container leases is allocated
    /// to no claim, so a published device for it would be one the scheduler could give a claim,
    /// whose prepare the node then refuses. It is left out; no device published overlaps it.
    #[test]
    fn an_instance_a_container_leases_is_not_published() {
        let g0 = gpu(0, true);
        let mut by_container = instance(&g0, "3g.40gb", 4, true);
        by_container.lease.as_mut().unwrap().container_id = "4f1c0ffee".into();
        let by_claim = instance(&g0, "1g.10gb", 0, true);
        let st = LedgerState {
            instances: vec![by_container.clone(), by_claim],
            gpus: vec![g0],
            ..Default::default()
        };
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        let n = names(&out);
        assert!(!n.contains(&"gpu0-3g-40gb-at4".to_string()), "{n:?}");
        assert_eq!(
            n.last().map(String::as_str),
            Some("gpu0-1g-10gb-at0"),
            "{n:?}"
        );
        for d in &out {
            if let Kind::Mig { slot, .. } = &d.kind {
                let end = slot.start + slot.size;
                let taken =
                    by_container.slot.start..by_container.slot.start + by_container.slot.size;
                assert!(
                    end <= taken.start || slot.start >= taken.end,
                    "{} overlaps",
                    d.name
                );
            }
        }
    }

    #[test]
    fn profiles_the_node_refuses_are_not_published() {
        let mut c = cfg();
        c.policy.allowed_profiles = vec!["3g.40gb".into()];
        let st = LedgerState {
            gpus: vec![gpu(0, true)],
            ..Default::default()
        };
        let out = node_devices(&c, &st, Sharing::Consumable, &[]).unwrap();
        assert_eq!(names(&out), ["gpu0-3g-40gb-at4"]);
    }

    #[test]
    fn devices_claims_hold_stay_published_until_prepared() {
        let g0 = gpu(0, true);
        let st = LedgerState {
            gpus: vec![g0.clone(), gpu(1, false)],
            ..Default::default()
        };
        let now = node_devices(&cfg(), &st, Sharing::Counted { shares: 2 }, &[]).unwrap();
        // Allocated from an earlier publication: a placement the policy does not offer now
        // (best-fit puts 1g.10gb elsewhere on an empty GPU), a whole GPU, a counted share.
        let held: Vec<DeviceName> = ["gpu0-1g-10gb-at3", "gpu1-whole", "gpu1-mps-1", "gpu7-whole"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        assert!(!names(&now).contains(&"gpu0-1g-10gb-at3".to_string()));
        let out = node_devices(&cfg(), &st, Sharing::Counted { shares: 2 }, &held).unwrap();
        let n = names(&out);
        assert_eq!(n.len(), now.len() + 1, "{n:?}");
        let last = out.last().unwrap();
        assert_eq!(last.name.to_string(), "gpu0-1g-10gb-at3");
        assert!(matches!(
            &last.kind,
            Kind::Mig { slot, offer: Offer::Allocated, .. } if slot.start == 3 && slot.size == 1
        ));
        // A device of a GPU the node does not have, or of another mode, is not made up.
        let odd: Vec<DeviceName> = ["gpu1-2g-20gb-at0", "gpu0-mps"]
            .iter()
            .map(|n| n.parse().unwrap())
            .collect();
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &odd).unwrap();
        assert_eq!(
            names(&out),
            names(&node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap())
        );
    }

    #[test]
    fn a_gpu_outside_mig_offers_time_slicing_or_mps_but_not_one_beside_the_other() {
        let (g0, g1) = (gpu(0, false), gpu(1, false));
        let mut st = LedgerState {
            gpus: vec![g0.clone(), g1],
            ..Default::default()
        };
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        assert_eq!(
            names(&out),
            ["gpu0-whole", "gpu0-mps", "gpu1-whole", "gpu1-mps"]
        );
        st.shares.push(ShareLease {
            gpu_uuid: g0.uuid.clone(),
            gpu_index: 0,
            gpu_minor: 0,
            lease: Lease {
                container_id: "c".into(),
                since: 0,
                runtime_root: None,
            },
        });
        let out = node_devices(&cfg(), &st, Sharing::Consumable, &[]).unwrap();
        assert_eq!(names(&out), ["gpu0-whole", "gpu1-whole", "gpu1-mps"]);
        let out = node_devices(&cfg(), &st, Sharing::Counted { shares: 4 }, &[]).unwrap();
        assert_eq!(
            names(&out),
            [
                "gpu1-whole",
                "gpu1-mps-0",
                "gpu1-mps-1",
                "gpu1-mps-2",
                "gpu1-mps-3"
            ]
        );
        assert!(out[1..].iter().all(|d| d.kind
            == Kind::Mps {
                percent: 25,
                shared: false
            }));
    }
}
