//! The allocator's side of placement: what a grant asks of the policy on the warm path (read
//! the ledger and, at most, a cached table) and on the cold path (learn the demand, solve or
//! load its table, place, pick idle instances to destroy).

use super::cache::TableCache;
use super::mdp::Table;
use super::model::fingerprint;
use super::{decide, history, Decision, PolicyKind, PoolKind, Scorer};
use crate::config::Config;
use crate::fsutil::now_unix;
use crate::ledger::{InstanceRecord, LedgerState};
use crate::placement::{GpuInstance, Occupied, Profile, Slot};
use std::sync::Arc;

/// Idle instances to destroy first: (GI id, its CI ids).
pub type Victims = Vec<(u32, Vec<u32>)>;

fn occupied(r: &InstanceRecord) -> Occupied {
    Occupied {
        profile_id: r.profile_id,
        slot: r.slot,
    }
}

fn is_idle(r: &InstanceRecord) -> bool {
    r.is_idle()
}

/// The table the cold path last chose for this GPU model, if it is still on disk. Never solves:
/// the warm path and the DRA publication (dra_devices) read it.
pub fn cached_table(cfg: &Config, st: &LedgerState, profiles: &[Profile]) -> Option<Arc<Table>> {
    if cfg.placement.policy != PolicyKind::Adaptive {
        return None;
    }
    let key = st.placement.get(&fingerprint(profiles))?;
    TableCache::in_dir(&cfg.state_dir).load(profiles, key)
}

pub fn rule(kind: PolicyKind) -> Scorer<'static> {
    match kind {
        PolicyKind::Lowest => Scorer::Lowest,
        PolicyKind::DriverOrder => Scorer::DriverOrder,
        PolicyKind::BestFit | PolicyKind::Adaptive => Scorer::BestFit,
    }
}

/// The warm path: the idle instance (index into `st.instances`) to grant for `profile`, or None
/// to go cold. Everything comes from the ledger (the GPU's profile table and the recorded
/// occupancy) and the cached policy table; no NVML, no solving.
pub fn warm_pick(
    cfg: &Config,
    st: &LedgerState,
    profile: &str,
    selected: impl Fn(&InstanceRecord) -> bool,
) -> Option<usize> {
    let mut candidates: Vec<usize> = (0..st.instances.len())
        .filter(|&i| {
            is_idle(&st.instances[i])
                && st.instances[i].profile == profile
                && selected(&st.instances[i])
        })
        .collect();
    candidates.sort_by_key(|&i| (st.instances[i].gpu_index, st.instances[i].slot.start));
    match cfg.placement.pool {
        PoolKind::None => return None,
        PoolKind::Naive => return candidates.first().copied(),
        PoolKind::Aware => {}
    }
    let mut gpus: Vec<&str> = candidates
        .iter()
        .map(|&i| st.instances[i].gpu_uuid.as_str())
        .collect();
    gpus.dedup();
    for uuid in gpus {
        let Some(profiles) = st.gpus.iter().find(|g| g.uuid == uuid).map(|g| &g.profiles) else {
            // A GPU the ledger never described: the rule before placement learnt of pools.
            return candidates
                .into_iter()
                .find(|&i| st.instances[i].gpu_uuid == uuid);
        };
        let Some(target) = profiles.iter().find(|p| p.name == profile) else {
            continue;
        };
        let on_gpu: Vec<usize> = (0..st.instances.len())
            .filter(|&i| st.instances[i].gpu_uuid == uuid)
            .collect();
        let busy: Vec<Occupied> = on_gpu
            .iter()
            .filter(|&&i| !is_idle(&st.instances[i]))
            .map(|&i| occupied(&st.instances[i]))
            .collect();
        let idle_at: Vec<usize> = on_gpu
            .iter()
            .copied()
            .filter(|&i| is_idle(&st.instances[i]))
            .collect();
        let idle: Vec<Occupied> = idle_at
            .iter()
            .map(|&i| occupied(&st.instances[i]))
            .collect();
        let table = cached_table(cfg, st, profiles);
        let scorer = table
            .as_deref()
            .map_or(rule(cfg.placement.policy), Scorer::Table);
        if let Decision::Reuse(j) = decide(
            &scorer,
            PoolKind::Aware,
            cfg.placement.reuse_tolerance,
            target,
            profiles,
            &busy,
            &idle,
        ) {
            if selected(&st.instances[idle_at[j]]) {
                return Some(idle_at[j]);
            }
        }
    }
    None
}

/// The cold path on one GPU: where to make the instance, and which of gpushare's idle
/// instances (GI id, its CI ids) to destroy first; None when nothing fits. `existing` is what
/// NVML shows, anyone's. May solve (and cache) the adaptive policy's table.
pub fn cold_place(
    cfg: &Config,
    st: &mut LedgerState,
    gpu_uuid: &str,
    target: &Profile,
    profiles: &[Profile],
    existing: &[GpuInstance],
) -> Option<(Slot, Victims)> {
    let idle_ours = |g: &GpuInstance| {
        st.instances.iter().any(|r| {
            r.gpu_uuid == gpu_uuid
                && is_idle(r)
                && r.made.as_ref().is_some_and(|m| m.gi == g.id)
                && r.slot == g.slot
        })
    };
    let (idle, busy): (Vec<&GpuInstance>, Vec<&GpuInstance>) =
        existing.iter().partition(|g| idle_ours(g));
    let occ = |v: &[&GpuInstance]| {
        v.iter()
            .map(|g| Occupied {
                profile_id: g.profile_id,
                slot: g.slot,
            })
            .collect::<Vec<_>>()
    };
    let table = match cfg.placement.policy {
        PolicyKind::Adaptive => adaptive_table(cfg, st, profiles),
        _ => None,
    };
    let scorer = table
        .as_deref()
        .map_or(rule(cfg.placement.policy), Scorer::Table);
    // The warm path already declined every idle instance of this profile: here idle space is
    // free space (aware) or the old rule applies (naive).
    let pool = if cfg.placement.pool == PoolKind::Naive {
        PoolKind::Naive
    } else {
        PoolKind::None
    };
    match decide(
        &scorer,
        pool,
        cfg.placement.reuse_tolerance,
        target,
        profiles,
        &occ(&busy),
        &occ(&idle),
    ) {
        Decision::Create { slot, destroy } => Some((
            slot,
            destroy
                .into_iter()
                .map(|i| (idle[i].id, idle[i].compute_instances.clone()))
                .collect(),
        )),
        Decision::Reuse(_) | Decision::Refuse => None,
    }
}

/// Learn the demand from the ledger's history and get its table (cached, else solved now),
/// remembering in the ledger which table is current for the warm path.
fn adaptive_table(cfg: &Config, st: &mut LedgerState, profiles: &[Profile]) -> Option<Arc<Table>> {
    let model = fingerprint(profiles);
    let names: Vec<&str> = profiles.iter().map(|p| p.name.as_str()).collect();
    let gpus = st
        .gpus
        .iter()
        .filter(|g| fingerprint(&g.profiles) == model)
        .count()
        .max(1);
    let mut cache = TableCache::in_dir(&cfg.state_dir);
    let current = st
        .placement
        .get(&model)
        .and_then(|k| cache.load(profiles, k));
    let want = history::target(
        &cfg.placement,
        &st.history,
        &names,
        now_unix(),
        gpus,
        current.as_ref().map(|t| &t.demand),
    )?;
    if let Some(t) = current.filter(|t| t.demand.key() == want.key()) {
        return Some(t);
    }
    match cache.get(profiles, &want) {
        Ok(t) => {
            st.placement.insert(model, want.key());
            Some(t)
        }
        Err(e) => {
            tracing::warn!(error = %e, "placing by best-fit: no policy table for this GPU");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{GpuRecord, Lease, Made};
    use crate::placement::tests::h100;

    fn record(profile: &Profile, start: u32, gi: u32, busy: bool) -> InstanceRecord {
        InstanceRecord {
            gpu_uuid: "GPU-0".into(),
            gpu_index: 0,
            gpu_minor: 0,
            profile: profile.name.clone(),
            profile_id: profile.id,
            slot: *profile
                .placements
                .iter()
                .find(|s| s.start == start)
                .unwrap(),
            made: Some(Made {
                gi,
                ci: 0,
                mig_uuid: format!("MIG-{gi}"),
                gi_cap_minor: 0,
                ci_cap_minor: 0,
            }),
            created_at: 0,
            lease: busy.then(|| Lease {
                container_id: format!("c{gi}"),
                since: 0,
                runtime_root: None,
            }),
            idle_since: (!busy).then_some(0),
            mps: false,
        }
    }

    fn state(dir: &std::path::Path) -> (Config, LedgerState) {
        let _ = std::fs::remove_dir_all(dir);
        std::fs::create_dir_all(dir).unwrap();
        let cfg = Config {
            state_dir: dir.to_path_buf(),
            ..Config::default()
        };
        let ps = h100();
        let st = LedgerState {
            gpus: vec![GpuRecord {
                index: 0,
                uuid: "GPU-0".into(),
                name: "H100".into(),
                minor: 0,
                profiles: ps.clone(),
                memory_total: 80 << 30,
                mig_enabled: true,
            }],
            instances: vec![
                record(&ps[0], 6, 1, true),
                record(&ps[0], 1, 2, false),
                record(&ps[0], 4, 3, false),
            ],
            ..LedgerState::default()
        };
        (cfg, st)
    }

    #[test]
    fn warm_pick_takes_the_idle_instance_at_the_best_placement_and_never_solves() {
        let dir = std::env::temp_dir().join(format!("gpushare-policy-node-{}", std::process::id()));
        let (mut cfg, mut st) = state(&dir);
        // Best-fit (no table yet) puts a 1g next to the busy one at 6, i.e. at 4: record 2.
        assert_eq!(warm_pick(&cfg, &st, "1g.10gb", |_| true), Some(2));
        assert_eq!(warm_pick(&cfg, &st, "1g.10gb", |r| r.slot.start != 4), None);
        // Only at 1: not a best placement, so the request goes cold.
        st.instances.remove(2);
        assert_eq!(warm_pick(&cfg, &st, "1g.10gb", |_| true), None);
        cfg.placement.pool = PoolKind::Naive;
        assert_eq!(warm_pick(&cfg, &st, "1g.10gb", |_| true), Some(1));
        // Even with a history that asks for a table, the warm path wrote none.
        for t in 0..500 {
            st.history.arrive("1g.10gb", t, true, 1000);
        }
        cfg.placement.pool = PoolKind::Aware;
        warm_pick(&cfg, &st, "1g.10gb", |_| true);
        let tables = std::fs::read_dir(&dir).unwrap().count();
        assert_eq!(tables, 0);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn cold_place_solves_once_and_the_warm_path_then_reads_the_table() {
        let dir = std::env::temp_dir().join(format!("gpushare-policy-cold-{}", std::process::id()));
        let (mut cfg, mut st) = state(&dir);
        cfg.placement.min_history = 10;
        let ps = h100();
        for t in 0..100u64 {
            let p = ["1g.10gb", "3g.40gb"][(t % 2) as usize];
            st.history.arrive(p, t * 10, true, 1000);
            st.history.depart(p, t * 10, t * 10 + 15);
        }
        let existing: Vec<GpuInstance> = st
            .instances
            .iter()
            .map(|r| GpuInstance {
                id: r.made.as_ref().unwrap().gi,
                profile_id: r.profile_id,
                slot: r.slot,
                compute_instances: vec![0],
            })
            .collect();
        // A 3g needs a free half: the idle 1g at 1 (GI 2) must go, the busy one at 6 stays.
        let (slot, victims) = cold_place(&cfg, &mut st, "GPU-0", &ps[2], &ps, &existing).unwrap();
        assert_eq!(slot, Slot { start: 0, size: 4 });
        assert_eq!(victims, vec![(2, vec![0])]);
        let key = st
            .placement
            .values()
            .next()
            .cloned()
            .expect("the chosen table is remembered");
        assert!(std::fs::read_dir(&dir).unwrap().count() == 1);
        assert!(TableCache::in_dir(&dir).load(&ps, &key).is_some());
        // Nothing fits a 7g around the busy 1g.
        assert!(cold_place(&cfg, &mut st, "GPU-0", &ps[4], &ps, &existing).is_none());
        // The warm path uses the cached table without solving.
        let mut cache = TableCache::in_dir(&dir);
        assert!(cached_table(&cfg, &st, &ps).is_some());
        assert!(cache.load(&ps, &key).is_some() && cache.solves == 0);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
