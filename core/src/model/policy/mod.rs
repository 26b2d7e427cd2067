//! Where new MIG instances go and when an idle one is reused.
//!
//! Busy instances never move, so every placement decides what fits later. Four rules rank the
//! free placements of a request: `bestfit` (keep the most instances of every profile possible),
//! `lowest`, `driver-order` (what NVIDIA's driver does unasked), and `adaptive`, which learns the
//! node's request mix from the ledger's history and places by the optimal policy of a Markov
//! decision process over the GPU's occupancy states ([`mdp`]). Solving that MDP is kept off the
//! warm path: a cold request may solve it, and the result is cached in the state directory
//! ([`cache`]), keyed by GPU model and mix; a warm grant only reads the cached table.
//!
//! The idle pool is judged by the same ranking ([`decide`]): idle instances count as free space,
//! and one is reused only where it sits at a best placement for the GPU's busy occupancy, so
//! keeping instances warm costs no acceptance.

pub mod cache;
pub mod history;
pub mod mdp;
pub mod model;
pub mod node;
pub mod replay;
pub mod rng;

use crate::placement::{self, Occupied, Profile, Slot};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("GPU model data: {0}")]
    ModelJson(#[source] serde_json::Error),
    #[error("GPU model data: no GPU in the file")]
    ModelNoGpu,
    #[error("GPU model data: profile index {index} lacks {field}")]
    ModelField { index: u32, field: &'static str },
    #[error("GPU model data: no supported profile")]
    ModelNoProfile,
    #[error("the MDP for this GPU has {0} placements; at most 64 fit its state word")]
    TooManyItems(usize),
    #[error("the MDP for this GPU has more than {0} occupancy states")]
    TooManyStates(usize),
    #[error("policy table {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("trace line {line}: {problem}")]
    Trace {
        line: usize,
        #[source]
        problem: replay::TraceError,
    },
    #[error("policy {policy} chose {slot:?} for {profile}, which cannot be created there")]
    Invalid {
        policy: String,
        profile: String,
        slot: Slot,
    },
}

/// The placement rule. `adaptive` falls back to `bestfit` until it knows the mix.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum PolicyKind {
    #[serde(rename = "bestfit")]
    BestFit,
    #[serde(rename = "adaptive")]
    Adaptive,
    #[serde(rename = "lowest")]
    Lowest,
    #[serde(rename = "driver-order")]
    DriverOrder,
}

impl PolicyKind {
    pub fn parse(s: &str) -> Option<PolicyKind> {
        Some(match s {
            "bestfit" => PolicyKind::BestFit,
            "adaptive" => PolicyKind::Adaptive,
            "lowest" => PolicyKind::Lowest,
            "driver-order" => PolicyKind::DriverOrder,
            _ => return None,
        })
    }
}

/// How idle instances are used. `none` never reuses one (every grant makes an instance);
/// `naive` reuses any idle instance of the profile wherever it sits; `aware` reuses one only
/// where it sits at a best placement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PoolKind {
    None,
    Naive,
    Aware,
}

impl PoolKind {
    pub fn parse(s: &str) -> Option<PoolKind> {
        Some(match s {
            "none" => PoolKind::None,
            "naive" => PoolKind::Naive,
            "aware" => PoolKind::Aware,
            _ => return None,
        })
    }
}

/// `[placement]` in the config.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementConfig {
    pub policy: PolicyKind,
    pub pool: PoolKind,
    /// How much worse than the best placement an idle instance may sit and still be reused,
    /// in the policy's own score: expected future accepted requests for `adaptive`, instances
    /// still creatable for `bestfit`. 0 reuses only at a best placement.
    pub reuse_tolerance: f64,
    /// Requests the ledger remembers (profile, arrival, hold) to learn the mix from.
    pub history: usize,
    /// Requests seen before `adaptive` trusts its estimate over `expected_mix` or `bestfit`.
    pub min_history: usize,
    /// Re-solve when the observed mix moves this far (sum of absolute share changes) ...
    pub mix_drift: f64,
    /// ... or the offered load changes by this fraction.
    pub load_drift: f64,
    /// Share of each profile a fresh node expects, e.g. `{ "1g.10gb" = 0.6, "2g.20gb" = 0.4 }`.
    pub expected_mix: BTreeMap<String, f64>,
    /// Offered load per GPU a fresh node expects, in busy instances (arrival rate x mean hold).
    pub expected_load: f64,
}

impl Default for PlacementConfig {
    fn default() -> Self {
        PlacementConfig {
            policy: PolicyKind::Adaptive,
            pool: PoolKind::Aware,
            reuse_tolerance: DEFAULT_REUSE_TOLERANCE,
            history: 1024,
            min_history: 200,
            mix_drift: 0.08,
            load_drift: 0.15,
            expected_mix: BTreeMap::new(),
            expected_load: 3.0,
        }
    }
}

/// Chosen from `benches/placement` (docs/placement.md): at 0.02 the aware pool stayed within
/// 0.06 points of no pool in every cell (exponential and heavy-tailed holds) and served 1-2
/// points more grants warm than at 0; at 0.05 one heavy-tailed cell lost 0.25 points.
pub const DEFAULT_REUSE_TOLERANCE: f64 = 0.02;

/// Scores closer than this are ties (value iteration leaves rounding noise in symmetric states).
const TIE: f64 = 1e-9;

/// A ranking of placements: higher is better.
#[derive(Debug, Clone, Copy)]
pub enum Scorer<'a> {
    BestFit,
    Lowest,
    DriverOrder,
    /// An MDP policy table; where it does not know the occupancy (a profile outside its mix
    /// is present or asked for), best-fit ranks instead.
    Table(&'a mdp::Table),
}

impl Scorer<'_> {
    pub fn name(&self) -> &'static str {
        match self {
            Scorer::BestFit => "bestfit",
            Scorer::Lowest => "lowest",
            Scorer::DriverOrder => "driver-order",
            Scorer::Table(_) => "mdp",
        }
    }

    /// Every free placement of `target` with its score.
    pub fn scores(
        &self,
        target: &Profile,
        profiles: &[Profile],
        occupied: &[Occupied],
    ) -> Vec<(Slot, f64)> {
        let free = placement::free_placements(target, occupied);
        match self {
            Scorer::Lowest => free.into_iter().map(|s| (s, -f64::from(s.start))).collect(),
            Scorer::DriverOrder => free
                .into_iter()
                .map(|s| (s, -f64::from(placement::driver_rank(s.start))))
                .collect(),
            Scorer::BestFit => bestfit_scores(free, target, profiles, occupied),
            Scorer::Table(t) => match t.scores(target, occupied, &free) {
                Some(v) => v,
                None => bestfit_scores(free, target, profiles, occupied),
            },
        }
    }
}

fn bestfit_scores(
    free: Vec<Slot>,
    target: &Profile,
    profiles: &[Profile],
    occupied: &[Occupied],
) -> Vec<(Slot, f64)> {
    let mut after = occupied.to_vec();
    free.into_iter()
        .map(|slot| {
            after.push(Occupied {
                profile_id: target.id,
                slot,
            });
            let r = placement::room(profiles, &after);
            after.pop();
            (slot, f64::from(r))
        })
        .collect()
}

/// The best of scored placements: highest score, ties to the lowest start.
pub fn best_of(scored: &[(Slot, f64)]) -> Option<(Slot, f64)> {
    let max = scored
        .iter()
        .map(|&(_, v)| v)
        .fold(f64::NEG_INFINITY, f64::max);
    scored
        .iter()
        .copied()
        .filter(|&(_, v)| v >= max - TIE)
        .min_by_key(|(s, _)| s.start)
}

/// The placement `scorer` picks for `target`, or None when none is free.
pub fn choose(
    scorer: &Scorer<'_>,
    target: &Profile,
    profiles: &[Profile],
    occupied: &[Occupied],
) -> Option<Slot> {
    best_of(&scorer.scores(target, profiles, occupied)).map(|(s, _)| s)
}

/// What to do with one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// Grant the idle instance `idle[i]`.
    Reuse(usize),
    /// Destroy these idle instances (indexes into `idle`), then create at `slot`.
    Create { slot: Slot, destroy: Vec<usize> },
    /// Nothing fits, even with every idle instance destroyed.
    Refuse,
}

/// Decide one request on one GPU. `busy` is everything that must stay (leased instances and
/// anyone else's), `idle` gpushare's idle instances, which may be reused or destroyed.
pub fn decide(
    scorer: &Scorer<'_>,
    pool: PoolKind,
    tolerance: f64,
    target: &Profile,
    profiles: &[Profile],
    busy: &[Occupied],
    idle: &[Occupied],
) -> Decision {
    if pool == PoolKind::Naive {
        return decide_naive(scorer, target, profiles, busy, idle);
    }
    let scored = scorer.scores(target, profiles, busy);
    let Some((best, max)) = best_of(&scored) else {
        return Decision::Refuse;
    };
    if pool == PoolKind::Aware {
        let reuse = idle
            .iter()
            .enumerate()
            .filter(|(_, o)| o.profile_id == target.id)
            .filter_map(|(i, o)| {
                scored
                    .iter()
                    .find(|(s, _)| *s == o.slot)
                    .map(|&(_, v)| (i, o.slot, v))
            })
            .filter(|&(_, _, v)| v >= max - tolerance.max(0.0) - TIE)
            .max_by(|a, b| a.2.total_cmp(&b.2).then(b.1.start.cmp(&a.1.start)));
        if let Some((i, _, _)) = reuse {
            return Decision::Reuse(i);
        }
    }
    Decision::Create {
        slot: best,
        destroy: victims(target, best, busy, idle),
    }
}

/// Idle instances that must go before `target` can be made at `slot`: those overlapping it, and
/// one of its own profile when the instance count would otherwise be exceeded.
fn victims(target: &Profile, slot: Slot, busy: &[Occupied], idle: &[Occupied]) -> Vec<usize> {
    let mut out: Vec<usize> = (0..idle.len())
        .filter(|&i| idle[i].slot.overlaps(&slot))
        .collect();
    let kept = idle
        .iter()
        .enumerate()
        .filter(|(i, _)| !out.contains(i))
        .map(|(_, o)| *o);
    let mut count = placement::count_of(target, busy)
        + kept.filter(|o| o.profile_id == target.id).count() as u32;
    while count >= target.instance_count {
        let next = (0..idle.len())
            .filter(|i| !out.contains(i) && idle[*i].profile_id == target.id)
            .min_by_key(|&i| idle[i].slot.start);
        match next {
            Some(i) => {
                out.push(i);
                count -= 1;
            }
            None => break,
        }
    }
    out.sort_unstable();
    out
}

/// The pool as it was before placement learnt of it: any idle instance of the profile is
/// reused; otherwise place around everything, and destroy the fewest idle instances when
/// nothing is free.
fn decide_naive(
    scorer: &Scorer<'_>,
    target: &Profile,
    profiles: &[Profile],
    busy: &[Occupied],
    idle: &[Occupied],
) -> Decision {
    if let Some(i) = (0..idle.len())
        .filter(|&i| idle[i].profile_id == target.id)
        .min_by_key(|&i| idle[i].slot.start)
    {
        return Decision::Reuse(i);
    }
    let all: Vec<Occupied> = busy.iter().chain(idle).copied().collect();
    if let Some(slot) = choose(scorer, target, profiles, &all) {
        return Decision::Create {
            slot,
            destroy: Vec::new(),
        };
    }
    let slot = placement::free_placements(target, busy)
        .into_iter()
        .min_by_key(|s| (idle.iter().filter(|o| o.slot.overlaps(s)).count(), s.start));
    match slot {
        Some(slot) => Decision::Create {
            slot,
            destroy: victims(target, slot, busy, idle),
        },
        None => Decision::Refuse,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::h100;

    fn occ(p: &Profile, start: u32) -> Occupied {
        Occupied {
            profile_id: p.id,
            slot: *p.placements.iter().find(|s| s.start == start).unwrap(),
        }
    }

    #[test]
    fn bestfit_scorer_agrees_with_best_fit() {
        let ps = h100();
        let busy = [occ(&ps[0], 6), occ(&ps[1], 0)];
        for p in &ps {
            assert_eq!(
                choose(&Scorer::BestFit, p, &ps, &busy),
                placement::best_fit(p, &ps, &busy),
                "{}",
                p.name
            );
        }
    }

    #[test]
    fn aware_pool_reuses_only_at_a_best_placement() {
        let ps = h100();
        let one_g = &ps[0];
        // A busy 1g at slot 6: best-fit puts the next 1g at 4 (keeps 0-3 whole for a 3g).
        let busy = [occ(one_g, 6)];
        assert_eq!(
            placement::best_fit(one_g, &ps, &busy),
            Some(Slot { start: 4, size: 1 })
        );
        let at_best = [occ(one_g, 4)];
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Aware,
            0.0,
            one_g,
            &ps,
            &busy,
            &at_best,
        );
        assert_eq!(d, Decision::Reuse(0));
        let elsewhere = [occ(one_g, 1)];
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Aware,
            0.0,
            one_g,
            &ps,
            &busy,
            &elsewhere,
        );
        assert_eq!(
            d,
            Decision::Create {
                slot: Slot { start: 4, size: 1 },
                destroy: vec![]
            }
        );
        // The naive pool takes it wherever it is.
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Naive,
            0.0,
            one_g,
            &ps,
            &busy,
            &elsewhere,
        );
        assert_eq!(d, Decision::Reuse(0));
    }

    #[test]
    fn idle_space_is_free_space() {
        let ps = h100();
        let seven = &ps[4];
        let idle = [occ(&ps[0], 3), occ(&ps[1], 4)];
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Aware,
            0.0,
            seven,
            &ps,
            &[],
            &idle,
        );
        assert_eq!(
            d,
            Decision::Create {
                slot: Slot { start: 0, size: 8 },
                destroy: vec![0, 1]
            }
        );
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Naive,
            0.0,
            seven,
            &ps,
            &[],
            &idle,
        );
        assert_eq!(
            d,
            Decision::Create {
                slot: Slot { start: 0, size: 8 },
                destroy: vec![0, 1]
            }
        );
        let d = decide(
            &Scorer::BestFit,
            PoolKind::Aware,
            0.0,
            seven,
            &ps,
            &[occ(&ps[0], 0)],
            &idle,
        );
        assert_eq!(d, Decision::Refuse);
    }

    #[test]
    fn instance_count_makes_room_by_destroying_an_idle_twin() {
        let ps = h100();
        let me = &ps[5]; // 1g.10gb+me: one per GPU
        let idle = [occ(me, 0)];
        let busy = [occ(&ps[0], 6)];
        // Tolerance below any difference: the idle twin is not at the best placement.
        let d = decide(
            &Scorer::DriverOrder,
            PoolKind::Aware,
            0.0,
            me,
            &ps,
            &busy,
            &idle,
        );
        assert_eq!(
            d,
            Decision::Create {
                slot: Slot { start: 4, size: 1 },
                destroy: vec![0]
            }
        );
    }

    #[test]
    fn policy_names_parse() {
        for s in ["bestfit", "adaptive", "lowest", "driver-order"] {
            assert!(PolicyKind::parse(s).is_some());
        }
        for s in ["none", "naive", "aware"] {
            assert!(PoolKind::parse(s).is_some());
        }
        let c: PlacementConfig =
            toml::from_str("policy = \"driver-order\"\npool = \"naive\"").unwrap();
        assert_eq!(
            (c.policy, c.pool),
            (PolicyKind::DriverOrder, PoolKind::Naive)
        );
    }
}
