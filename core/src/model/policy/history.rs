//! The requests a node has seen, bounded, and what they say about its demand.
//!
//! Profile, arrival time, whether it was granted and, once released, how long the lease lasted.
//! Times are in ticks of whatever unit the caller uses (seconds in the ledger); only ratios
//! matter. On a node the history is an append-only log beside the ledger (`history.log`): every
//! grant and release appends one line instead of rewriting a thousand entries under the lock,
//! and only the cold path, which learns from it, reads it back ([`History::replay`]).

use super::mdp::Demand;
use super::PlacementConfig;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, VecDeque};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    #[serde(default)]
    pub entries: VecDeque<Entry>,
    /// Arrivals and departures not yet appended to the node's log.
    #[serde(skip)]
    pub pending: Vec<Event>,
    /// How many of `pending` the log already has (saving twice appends nothing twice).
    #[serde(skip)]
    pub written: std::cell::Cell<usize>,
}

/// One line of the history log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "e")]
pub enum Event {
    #[serde(rename = "a")]
    Arrive { p: String, t: u64, a: bool },
    #[serde(rename = "d")]
    Depart { p: String, t: u64, n: u64 },
}

/// Short field names: the ledger is rewritten on every grant.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    #[serde(rename = "p")]
    pub profile: String,
    #[serde(rename = "t")]
    pub at: u64,
    #[serde(rename = "a")]
    pub accepted: bool,
    #[serde(rename = "h", default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<u64>,
}

impl History {
    /// Remember a request, forgetting the oldest beyond `cap`.
    pub fn arrive(&mut self, profile: &str, at: u64, accepted: bool, cap: usize) {
        self.pending.push(Event::Arrive {
            p: profile.to_string(),
            t: at,
            a: accepted,
        });
        self.apply_arrive(profile, at, accepted, cap);
    }

    fn apply_arrive(&mut self, profile: &str, at: u64, accepted: bool, cap: usize) {
        self.entries.push_back(Entry {
            profile: profile.to_string(),
            at,
            accepted,
            hold: None,
        });
        while self.entries.len() > cap.max(1) {
            self.entries.pop_front();
        }
    }

    /// A lease of `profile` that began at `arrived` ended at `now`; false if the history no
    /// longer has its request.
    pub fn depart(&mut self, profile: &str, arrived: u64, now: u64) -> bool {
        self.pending.push(Event::Depart {
            p: profile.to_string(),
            t: arrived,
            n: now,
        });
        self.apply_depart(profile, arrived, now)
    }

    fn apply_depart(&mut self, profile: &str, arrived: u64, now: u64) -> bool {
        let e =
            self.entries.iter_mut().rev().find(|e| {
                e.accepted && e.hold.is_none() && e.at == arrived && e.profile == profile
            });
        match e {
            Some(e) => {
                e.hold = Some(now.saturating_sub(arrived));
                true
            }
            None => false,
        }
    }

    /// Rebuild a history from log lines, keeping the last `cap` requests; unreadable lines
    /// (a torn last write) are skipped.
    pub fn replay(log: &str, cap: usize) -> History {
        let mut h = History::default();
        for line in log.lines() {
            match serde_json::from_str::<Event>(line) {
                Ok(Event::Arrive { p, t, a }) => h.apply_arrive(&p, t, a, cap),
                Ok(Event::Depart { p, t, n }) => {
                    h.apply_depart(&p, t, n);
                }
                Err(_) => {}
            }
        }
        h
    }

    /// The log lines that recreate this history exactly (for compacting the log).
    pub fn to_log(&self) -> String {
        let mut out = String::new();
        for e in &self.entries {
            let mut push = |ev: Event| {
                out.push_str(&serde_json::to_string(&ev).expect("event serializes"));
                out.push('\n');
            };
            push(Event::Arrive {
                p: e.profile.clone(),
                t: e.at,
                a: e.accepted,
            });
            if let Some(h) = e.hold {
                push(Event::Depart {
                    p: e.profile.clone(),
                    t: e.at,
                    n: e.at + h,
                });
            }
        }
        out
    }

    /// Log lines for the events not yet written; marks them written.
    pub fn take_unwritten(&self) -> String {
        let mut out = String::new();
        for ev in &self.pending[self.written.get().min(self.pending.len())..] {
            out.push_str(&serde_json::to_string(ev).expect("event serializes"));
            out.push('\n');
        }
        self.written.set(self.pending.len());
        out
    }

    /// Requests for any of `names`.
    pub fn seen(&self, names: &[&str]) -> usize {
        self.entries
            .iter()
            .filter(|e| names.contains(&e.profile.as_str()))
            .count()
    }

    /// The demand per GPU on `gpus` GPUs that offer `names`: shares by count; arrival rate over
    /// the window up to `now`; mean hold by the exponential estimate with censoring (completed
    /// leases over the total time leases were held, running ones included), so long leases
    /// still running do not bias it short.
    pub fn demand(&self, names: &[&str], now: u64, gpus: usize) -> Option<Demand> {
        let mine: Vec<&Entry> = self
            .entries
            .iter()
            .filter(|e| names.contains(&e.profile.as_str()))
            .collect();
        let first = mine.first()?.at;
        let span = now.saturating_sub(first).max(1) as f64;
        let rate = mine.len() as f64 / span;
        let (mut done, mut exposure) = (0u64, 0u64);
        for e in mine.iter().filter(|e| e.accepted) {
            match e.hold {
                Some(h) => {
                    done += 1;
                    exposure += h;
                }
                None => exposure += now.saturating_sub(e.at),
            }
        }
        if done == 0 {
            return None;
        }
        let hold = exposure as f64 / done as f64;
        let mut shares: BTreeMap<String, f64> = BTreeMap::new();
        for e in &mine {
            *shares.entry(e.profile.clone()).or_default() += 1.0 / mine.len() as f64;
        }
        Some(Demand {
            shares,
            load: rate * hold / gpus.max(1) as f64,
        })
    }
}

/// The demand a fresh node was told to expect, restricted to the GPU's profiles.
pub fn expected(cfg: &PlacementConfig, names: &[&str]) -> Option<Demand> {
    let shares: BTreeMap<String, f64> = cfg
        .expected_mix
        .iter()
        .filter(|(k, v)| names.contains(&k.as_str()) && **v > 0.0)
        .map(|(k, v)| (k.clone(), *v))
        .collect();
    (!shares.is_empty()).then_some(Demand {
        shares,
        load: cfg.expected_load,
    })
}

/// The demand `adaptive` should place for now: the observed one once the history is long
/// enough, else the expected one, else None (best-fit). While the current table's demand is
/// within the drift limits it is kept, so small wobbles of the estimate never re-solve.
pub fn target(
    cfg: &PlacementConfig,
    history: &History,
    names: &[&str],
    now: u64,
    gpus: usize,
    current: Option<&Demand>,
) -> Option<Demand> {
    let observed = if history.seen(names) >= cfg.min_history {
        history.demand(names, now, gpus)
    } else {
        None
    };
    let want = observed.or_else(|| expected(cfg, names))?;
    if let Some(c) = current {
        let (mix, load) = want.drift(c);
        if mix <= cfg.mix_drift && load <= cfg.load_drift {
            return Some(c.clone());
        }
    }
    Some(want.quantized())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimates_the_mix_and_load_of_a_known_stream() {
        use crate::policy::replay::{generate, Holds};
        let mut h = History::default();
        let names = ["1g.10gb", "2g.20gb", "3g.40gb"];
        // Arrivals at 4 a mean hold of 1: a load of 4 slices' worth, on 2 GPUs.
        let (rate, hold) = (4.0, 1.0);
        let events = generate(
            &[(0, 0.6), (1, 0.3), (2, 0.1)],
            rate,
            Holds::Exponential,
            20_000,
            3,
        );
        let tick = |x: f64| (x * 1e6) as u64;
        // Departures after the last arrival are still to come when the estimate is made.
        let t = events
            .iter()
            .filter(|e| e.arrive)
            .map(|e| e.time)
            .fold(0.0, f64::max);
        let mut arrived = std::collections::HashMap::new();
        for e in events {
            let p = names[e.profile];
            if e.arrive {
                h.arrive(p, tick(e.time), true, 4096);
                arrived.insert(e.id, tick(e.time));
            } else if e.time <= t {
                h.depart(p, arrived[&e.id], tick(e.time));
            }
        }
        let d = h.demand(&names, tick(t), 2).unwrap();
        assert_eq!(h.entries.len(), 4096);
        assert!((d.shares["1g.10gb"] - 0.6).abs() < 0.04, "{d:?}");
        assert!((d.load - rate * hold / 2.0).abs() < 0.2, "{d:?}");
    }

    #[test]
    fn target_prefers_observation_then_expectation_and_holds_steady() {
        let mut cfg = PlacementConfig::default();
        let names = ["1g.10gb", "2g.20gb"];
        let h = History::default();
        assert_eq!(target(&cfg, &h, &names, 0, 1, None), None);
        cfg.expected_mix.insert("1g.10gb".into(), 1.0);
        cfg.expected_mix.insert("4g.40gb".into(), 1.0);
        let d = target(&cfg, &h, &names, 0, 1, None).unwrap();
        assert_eq!(d.shares.keys().collect::<Vec<_>>(), ["1g.10gb"]);
        let near = Demand {
            shares: d.shares.clone(),
            load: d.load * 1.05,
        };
        assert_eq!(
            target(&cfg, &h, &names, 0, 1, Some(&near)),
            Some(near.clone())
        );
        let far = Demand {
            shares: d.shares.clone(),
            load: d.load * 2.0,
        };
        assert_eq!(target(&cfg, &h, &names, 0, 1, Some(&far)), Some(d));
    }

    #[test]
    fn old_ledgers_without_history_load() {
        let h: History = serde_json::from_str("{}").unwrap();
        assert!(h.entries.is_empty());
        let mut h = History::default();
        h.arrive("1g.10gb", 5, true, 10);
        let text = serde_json::to_string(&h).unwrap();
        assert_eq!(text, r#"{"entries":[{"p":"1g.10gb","t":5,"a":true}]}"#);
    }
}
