//! The best online placement policy for one GPU: the optimal policy of a Markov decision process
//! over the GPU's occupancy states.
//!
//! Requests of each profile arrive as Poisson streams, every instance is released after an
//! exponential hold, and a request is accepted whenever some placement is free (gpushare never
//! refuses a request it can fit). The only choice is where each accepted instance goes; the
//! reward is one per accepted request. Relative value iteration on the uniformized chain gives
//! the bias `h(s)` of every occupancy state; the policy places at the free placement whose
//! resulting state has the largest `h`. Only `h` is kept ([`Table`]): a placement decision is
//! then a few hash lookups.

use super::PolicyError;
use crate::placement::{Occupied, Profile, Slot};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};

/// Beyond this the state space is not worth solving: best-fit places instead.
pub const MAX_STATES: usize = 250_000;
/// Bump when the table's meaning changes: cached tables of other versions are stale.
pub const TABLE_VERSION: u32 = 1;
const EPS: f64 = 1e-10;
const MAX_ITER: usize = 200_000;

/// What the node is asked for, per GPU: each profile's share of requests, and the offered load
/// in instances (arrival rate x mean hold). Holds are taken as exponential with one mean for all
/// profiles, so the policy depends on nothing else.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Demand {
    pub shares: BTreeMap<String, f64>,
    pub load: f64,
}

impl Demand {
    /// Rounded so that nearby estimates share one table: shares to 0.02, load to steps of 5%.
    pub fn quantized(&self) -> Demand {
        let total: f64 = self.shares.values().sum();
        let shares: BTreeMap<String, f64> = self
            .shares
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    (v / total.max(f64::MIN_POSITIVE) * 50.0).round() / 50.0,
                )
            })
            .filter(|(_, v)| *v > 0.0)
            .collect();
        let load = (self.load.max(0.01).ln() / 1.05f64.ln()).round();
        Demand {
            shares,
            load: 1.05f64.powf(load),
        }
    }

    /// The cache key of a (quantized) demand.
    pub fn key(&self) -> String {
        let mut s: String = self
            .shares
            .iter()
            .map(|(k, v)| format!("{k}={v:.2},"))
            .collect();
        s.push_str(&format!("load={:.3}", self.load));
        s
    }

    /// Sum of absolute share differences, and the relative load change.
    pub fn drift(&self, other: &Demand) -> (f64, f64) {
        let names: std::collections::BTreeSet<&String> =
            self.shares.keys().chain(other.shares.keys()).collect();
        let mix = names
            .into_iter()
            .map(|n| {
                (self.shares.get(n).unwrap_or(&0.0) - other.shares.get(n).unwrap_or(&0.0)).abs()
            })
            .sum();
        (
            mix,
            (self.load / other.load.max(f64::MIN_POSITIVE) - 1.0).abs(),
        )
    }
}

/// The occupancy states of a GPU restricted to some profiles: every set of mutually disjoint
/// placements within the instance counts, as a bit set over `items`.
#[derive(Debug, Clone)]
pub struct Space {
    /// (profile, placement), by profile then placement.
    pub items: Vec<(usize, Slot)>,
    pub states: Vec<u64>,
    pub index: HashMap<u64, u32>,
}

impl Space {
    pub fn new(profiles: &[&Profile]) -> Result<Space, PolicyError> {
        let items: Vec<(usize, Slot)> = profiles
            .iter()
            .enumerate()
            .flat_map(|(k, p)| p.placements.iter().map(move |s| (k, *s)))
            .collect();
        if items.len() > 64 {
            return Err(PolicyError::TooManyItems(items.len()));
        }
        let conflicts: Vec<u64> = items
            .iter()
            .map(|(_, a)| {
                items
                    .iter()
                    .enumerate()
                    .filter(|(_, (_, b))| a.overlaps(b))
                    .fold(0, |m, (j, _)| m | 1 << j)
            })
            .collect();
        let limits: Vec<u32> = profiles.iter().map(|p| p.instance_count).collect();
        let mut states = Vec::new();
        let mut counts = vec![0u32; profiles.len()];
        enumerate(0, 0, &items, &conflicts, &limits, &mut counts, &mut states)?;
        states.sort_unstable();
        let index = states
            .iter()
            .enumerate()
            .map(|(i, &m)| (m, i as u32))
            .collect();
        Ok(Space {
            items,
            states,
            index,
        })
    }
}

fn enumerate(
    i: usize,
    mask: u64,
    items: &[(usize, Slot)],
    conflicts: &[u64],
    limits: &[u32],
    counts: &mut [u32],
    out: &mut Vec<u64>,
) -> Result<(), PolicyError> {
    if i == items.len() {
        if out.len() >= MAX_STATES {
            return Err(PolicyError::TooManyStates(MAX_STATES));
        }
        out.push(mask);
        return Ok(());
    }
    enumerate(i + 1, mask, items, conflicts, limits, counts, out)?;
    let k = items[i].0;
    if mask & conflicts[i] == 0 && counts[k] < limits[k] {
        counts[k] += 1;
        enumerate(i + 1, mask | 1 << i, items, conflicts, limits, counts, out)?;
        counts[k] -= 1;
    }
    Ok(())
}

/// The chain's transitions, flattened for fast sweeps.
pub struct Chain {
    pub classes: usize,
    /// Arrival rate of each profile.
    pub rates: Vec<f64>,
    /// Next states of an arrival of class k in state s: `arr[arr_off[s*K+k]..arr_off[s*K+k+1]]`,
    /// with the item placed.
    pub arr_off: Vec<u32>,
    pub arr: Vec<(u32, u32)>,
    /// Next states of each departure in state s, each at rate 1 (one mean hold is the unit).
    pub dep_off: Vec<u32>,
    pub dep: Vec<u32>,
    /// The uniformization rate.
    pub uniform: f64,
}

impl Chain {
    pub fn new(space: &Space, profiles: &[&Profile], rates: &[f64]) -> Chain {
        let k_n = profiles.len();
        let (mut arr_off, mut arr, mut dep_off, mut dep) =
            (vec![0u32], Vec::new(), vec![0u32], Vec::new());
        let mut most = 0usize;
        for &s in &space.states {
            let count = |k: usize| {
                space
                    .items
                    .iter()
                    .enumerate()
                    .filter(|(j, (c, _))| *c == k && s >> j & 1 == 1)
                    .count() as u32
            };
            for (k, p) in profiles.iter().enumerate() {
                if count(k) < p.instance_count {
                    for (j, (c, slot)) in space.items.iter().enumerate() {
                        let free = !space
                            .items
                            .iter()
                            .enumerate()
                            .any(|(i, (_, o))| s >> i & 1 == 1 && o.overlaps(slot));
                        if *c == k && free {
                            arr.push((space.index[&(s | 1 << j)], j as u32));
                        }
                    }
                }
                arr_off.push(arr.len() as u32);
            }
            for j in 0..space.items.len() {
                if s >> j & 1 == 1 {
                    dep.push(space.index[&(s & !(1 << j))]);
                }
            }
            most = most.max(s.count_ones() as usize);
            dep_off.push(dep.len() as u32);
        }
        let uniform = rates.iter().sum::<f64>() + most as f64;
        Chain {
            classes: k_n,
            rates: rates.to_vec(),
            arr_off,
            arr,
            dep_off,
            dep,
            uniform,
        }
    }

    /// One Bellman sweep: `w = T h`.
    fn sweep(&self, h: &[f64], w: &mut [f64]) {
        let lam: f64 = self.rates.iter().sum();
        for s in 0..h.len() {
            let mut v = 0.0;
            for k in 0..self.classes {
                let (a, b) = (
                    self.arr_off[s * self.classes + k] as usize,
                    self.arr_off[s * self.classes + k + 1] as usize,
                );
                v += self.rates[k]
                    * if a == b {
                        h[s]
                    } else {
                        1.0 + self.arr[a..b]
                            .iter()
                            .map(|&(n, _)| h[n as usize])
                            .fold(f64::NEG_INFINITY, f64::max)
                    };
            }
            let (a, b) = (self.dep_off[s] as usize, self.dep_off[s + 1] as usize);
            v += self.dep[a..b].iter().map(|&n| h[n as usize]).sum::<f64>();
            v += (self.uniform - lam - (b - a) as f64) * h[s];
            w[s] = v / self.uniform;
        }
    }
}

/// The result of value iteration.
#[derive(Debug, Clone)]
pub struct Solution {
    /// Bias of each state of the space (state 0, the empty GPU, is 0).
    pub h: Vec<f64>,
    /// Accepted requests per mean hold under the optimal policy.
    pub gain: f64,
    /// Share of requests accepted.
    pub acceptance: f64,
    pub iterations: usize,
    pub converged: bool,
}

/// Relative value iteration until the span of successive differences is below `EPS` per step.
pub fn solve(chain: &Chain) -> Solution {
    let n = chain.dep_off.len() - 1;
    let (mut h, mut w) = (vec![0.0; n], vec![0.0; n]);
    let (mut lo, mut hi) = (0.0, 0.0);
    let mut iterations = 0;
    let mut converged = false;
    while iterations < MAX_ITER {
        iterations += 1;
        chain.sweep(&h, &mut w);
        (lo, hi) = (f64::INFINITY, f64::NEG_INFINITY);
        for s in 0..n {
            let d = w[s] - h[s];
            lo = f64::min(lo, d);
            hi = f64::max(hi, d);
        }
        let base = w[0];
        for s in 0..n {
            h[s] = w[s] - base;
        }
        if hi - lo < EPS {
            converged = true;
            break;
        }
    }
    let gain = (lo + hi) / 2.0 * chain.uniform;
    let lam: f64 = chain.rates.iter().sum();
    Solution {
        h,
        gain,
        acceptance: if lam > 0.0 { gain / lam } else { 1.0 },
        iterations,
        converged,
    }
}

/// One placement the table knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    pub profile_id: u32,
    pub slot: Slot,
}

/// A solved policy, as cached: the bias of every occupancy state.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Table {
    pub version: u32,
    /// [`super::model::fingerprint`] of the GPU's profile table.
    pub model: String,
    pub demand: Demand,
    pub items: Vec<Item>,
    /// (state bit set over `items`, bias).
    pub values: Vec<(u64, f64)>,
    /// What the optimal policy accepts under `demand`.
    pub acceptance: f64,
    pub converged: bool,
    #[serde(skip)]
    index: HashMap<u64, f64>,
}

impl Table {
    /// Solve the MDP of `profiles` (a GPU's whole table) for `demand`; profiles the demand
    /// does not ask for are left out of the state space.
    pub fn solve(profiles: &[Profile], demand: &Demand) -> Result<Table, PolicyError> {
        let used: Vec<&Profile> = profiles
            .iter()
            .filter(|p| demand.shares.get(&p.name).is_some_and(|s| *s > 0.0))
            .collect();
        let total: f64 = used.iter().map(|p| demand.shares[&p.name]).sum();
        let rates: Vec<f64> = used
            .iter()
            .map(|p| demand.load * demand.shares[&p.name] / total.max(f64::MIN_POSITIVE))
            .collect();
        let space = Space::new(&used)?;
        let chain = Chain::new(&space, &used, &rates);
        let sol = solve(&chain);
        let mut t = Table {
            version: TABLE_VERSION,
            model: super::model::fingerprint(profiles),
            demand: demand.clone(),
            items: space
                .items
                .iter()
                .map(|&(k, slot)| Item {
                    profile_id: used[k].id,
                    slot,
                })
                .collect(),
            values: space
                .states
                .iter()
                .zip(&sol.h)
                .map(|(&m, &v)| (m, v))
                .collect(),
            acceptance: sol.acceptance,
            converged: sol.converged,
            index: HashMap::new(),
        };
        t.reindex();
        Ok(t)
    }

    /// Rebuild the lookup index (after deserializing).
    pub fn reindex(&mut self) {
        self.index = self.values.iter().copied().collect();
    }

    fn item(&self, profile_id: u32, slot: Slot) -> Option<usize> {
        self.items
            .iter()
            .position(|i| i.profile_id == profile_id && i.slot == slot)
    }

    fn mask(&self, occupied: &[Occupied]) -> Option<u64> {
        occupied.iter().try_fold(0u64, |m, o| {
            self.item(o.profile_id, o.slot).map(|j| m | 1 << j)
        })
    }

    /// The bias of an occupancy, if the table knows it.
    pub fn value(&self, occupied: &[Occupied]) -> Option<f64> {
        self.index.get(&self.mask(occupied)?).copied()
    }

    /// The bias after placing `target` at each of `free`; None when the table does not know
    /// the occupancy or the profile.
    pub fn scores(
        &self,
        target: &Profile,
        occupied: &[Occupied],
        free: &[Slot],
    ) -> Option<Vec<(Slot, f64)>> {
        let base = self.mask(occupied)?;
        free.iter()
            .map(|&slot| {
                let j = self.item(target.id, slot)?;
                self.index.get(&(base | 1 << j)).map(|&v| (slot, v))
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::placement::tests::h100;

    fn demand(shares: &[(&str, f64)], load: f64) -> Demand {
        Demand {
            shares: shares.iter().map(|&(k, v)| (k.to_string(), v)).collect(),
            load,
        }
    }

    #[test]
    fn value_iteration_converges_on_the_h100() {
        let ps = h100();
        // Mix (b) at 120% of the 7 slices: mean 1.95 slices per request.
        let d = demand(
            &[
                ("2g.20gb", 0.5),
                ("1g.10gb", 0.3),
                ("3g.40gb", 0.15),
                ("7g.80gb", 0.05),
            ],
            1.2 * 7.0 / 1.95,
        );
        let t = Table::solve(&ps, &d).unwrap();
        assert!(t.converged);
        assert!(
            t.values.len() > 100 && t.values.len() < 5000,
            "{}",
            t.values.len()
        );
        assert!(t.acceptance > 0.5 && t.acceptance < 1.0, "{}", t.acceptance);
        // The bias is a fixed point: one more sweep changes every state by the same gain.
        let used: Vec<&Profile> = ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]
            .iter()
            .map(|n| ps.iter().find(|p| p.name == *n).unwrap())
            .collect();
        let space = Space::new(&used).unwrap();
        assert_eq!(space.states.len(), t.values.len());
        let rates: Vec<f64> = used.iter().map(|p| d.load * d.shares[&p.name]).collect();
        let chain = Chain::new(&space, &used, &rates);
        let sol = solve(&chain);
        let mut w = vec![0.0; sol.h.len()];
        chain.sweep(&sol.h, &mut w);
        let diffs: Vec<f64> = w.iter().zip(&sol.h).map(|(a, b)| a - b).collect();
        let span = diffs.iter().cloned().fold(f64::NEG_INFINITY, f64::max)
            - diffs.iter().cloned().fold(f64::INFINITY, f64::min);
        assert!(span < 1e-9, "{span}");
    }

    /// A 4-slot GPU: 1-slot (x2 at most), 2-slot and 4-slot profiles.
    fn small() -> Vec<Profile> {
        let p = |name: &str, id, size: u32, count, starts: &[u32]| Profile {
            name: name.into(),
            id,
            index: id,
            slice_count: size,
            instance_count: count,
            memory_mb: 0,
            multiprocessors: 0,
            placements: starts.iter().map(|&start| Slot { start, size }).collect(),
        };
        vec![
            p("a", 1, 1, 2, &[0, 1, 2, 3]),
            p("b", 2, 2, 2, &[0, 2]),
            p("c", 3, 4, 1, &[0]),
        ]
    }

    /// Exact long-run acceptance rate of a stationary deterministic policy: solve the
    /// stationary distribution of its chain.
    fn evaluate(chain: &Chain, choice: &[usize]) -> f64 {
        let n = chain.dep_off.len() - 1;
        let k_n = chain.classes;
        // Generator, transposed into equations: sum_s pi(s) Q(s, t) = 0, sum pi = 1.
        let mut q = vec![vec![0.0f64; n + 1]; n];
        let mut reward = vec![0.0; n];
        for s in 0..n {
            for k in 0..k_n {
                let (a, b) = (
                    chain.arr_off[s * k_n + k] as usize,
                    chain.arr_off[s * k_n + k + 1] as usize,
                );
                if a < b {
                    let t = chain.arr[a + choice[s * k_n + k]].0 as usize;
                    q[t][s] += chain.rates[k];
                    q[s][s] -= chain.rates[k];
                    reward[s] += chain.rates[k];
                }
            }
            for &t in &chain.dep[chain.dep_off[s] as usize..chain.dep_off[s + 1] as usize] {
                q[t as usize][s] += 1.0;
                q[s][s] -= 1.0;
            }
        }
        q[n - 1] = vec![1.0; n + 1];
        // Gauss-Jordan with partial pivoting; the right-hand side is the last column.
        for c in 0..n {
            let p = (c..n)
                .max_by(|&i, &j| q[i][c].abs().total_cmp(&q[j][c].abs()))
                .unwrap();
            q.swap(c, p);
            let pivot = q[c].clone();
            for (r, row) in q.iter_mut().enumerate() {
                if r != c && row[c] != 0.0 {
                    let f = row[c] / pivot[c];
                    for (x, y) in row[c..].iter_mut().zip(&pivot[c..]) {
                        *x -= f * y;
                    }
                }
            }
        }
        (0..n).map(|s| q[s][n] / q[s][s] * reward[s]).sum()
    }

    #[test]
    fn value_iteration_policy_equals_brute_force_optimum() {
        let ps = small();
        let used: Vec<&Profile> = ps.iter().collect();
        let space = Space::new(&used).unwrap();
        let chain = Chain::new(&space, &used, &[1.5, 0.6, 0.3]);
        let k_n = chain.classes;
        let n = space.states.len();
        let options: Vec<usize> = (0..n * k_n)
            .map(|i| (chain.arr_off[i + 1] - chain.arr_off[i]) as usize)
            .collect();
        let policies: usize = options.iter().map(|&o| o.max(1)).product();
        assert!(policies > 100 && policies < 20_000, "{policies}");
        let mut choice = vec![0usize; n * k_n];
        let (mut best, mut all) = (f64::NEG_INFINITY, Vec::new());
        for _ in 0..policies {
            let g = evaluate(&chain, &choice);
            best = best.max(g);
            all.push(g);
            // Next policy: an odometer over every decision point.
            for (c, &o) in choice.iter_mut().zip(&options) {
                *c += 1;
                if *c < o.max(1) {
                    break;
                }
                *c = 0;
            }
        }
        let sol = solve(&chain);
        assert!(sol.converged);
        assert!(
            (sol.gain - best).abs() < 1e-7,
            "value iteration {} vs brute force {best}",
            sol.gain
        );
        // The greedy policy of the bias is itself optimal.
        let greedy: Vec<usize> = (0..n * k_n)
            .map(|i| {
                let (a, b) = (chain.arr_off[i] as usize, chain.arr_off[i + 1] as usize);
                (a..b)
                    .max_by(|&x, &y| {
                        sol.h[chain.arr[x].0 as usize]
                            .total_cmp(&sol.h[chain.arr[y].0 as usize])
                            .then(y.cmp(&x))
                    })
                    .map_or(0, |x| x - a)
            })
            .collect();
        assert!((evaluate(&chain, &greedy) - best).abs() < 1e-9);
        // And the choice matters: some policy is clearly worse.
        assert!(all.iter().cloned().fold(f64::INFINITY, f64::min) < best - 1e-3);
    }

    #[test]
    fn table_round_trips_and_answers_scores() {
        let ps = h100();
        let d = demand(&[("1g.10gb", 0.5), ("3g.40gb", 0.5)], 3.0);
        let t = Table::solve(&ps, &d).unwrap();
        let mut back: Table = serde_json::from_str(&serde_json::to_string(&t).unwrap()).unwrap();
        back.reindex();
        let one_g = &ps[0];
        let free = crate::placement::free_placements(one_g, &[]);
        let (a, b) = (
            back.scores(one_g, &[], &free).unwrap(),
            t.scores(one_g, &[], &free).unwrap(),
        );
        assert!(a
            .iter()
            .zip(&b)
            .all(|(x, y)| x.0 == y.0 && (x.1 - y.1).abs() < 1e-12));
        // Ties (the four slots of one half are alike) go to the lowest start.
        let s = t.scores(one_g, &[], &free).unwrap();
        let (best, _) = super::super::best_of(&s).unwrap();
        assert!(best.start == 0 || best.start == 4, "{s:?}");
        // A 2g is not in the mix: the table does not know it.
        assert!(t
            .scores(&ps[1], &[], &crate::placement::free_placements(&ps[1], &[]))
            .is_none());
    }

    #[test]
    fn quantized_demand_keys_are_stable() {
        let a = demand(&[("1g.10gb", 0.601), ("2g.20gb", 0.399)], 3.01).quantized();
        let b = demand(&[("1g.10gb", 0.6), ("2g.20gb", 0.4)], 3.0).quantized();
        assert_eq!(a.key(), b.key());
        let (mix, load) = a.drift(&demand(&[("1g.10gb", 0.5), ("2g.20gb", 0.5)], 3.3));
        assert!(
            (mix - 0.2).abs() < 1e-9 && (load - 0.1).abs() < 0.05,
            "{mix} {load}"
        );
    }
}
