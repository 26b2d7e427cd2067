//! Many containers at once through gpushare + real runc on a simulated node of two H100s, with
//! mixed profiles, then rounds of churn. After every round: no slice is held by two containers,
//! the ledger matches the driver, nothing leaked, every container that was created holds exactly
//! one slice and every refused one holds none.

mod common;
mod invariants;
use common::*;
use std::collections::{BTreeMap, BTreeSet};

const PROFILES: &[&str] = &[
    "1g.10gb", "1g.10gb", "1g.10gb", "2g.20gb", "3g.40gb", "1g.20gb",
];

/// A small deterministic generator (xorshift), so a failing round can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// Create `n` containers at once; returns (id, bundle, profile, created?).
fn create_many<'a>(
    engine: &Engine<'a>,
    rng: &mut Rng,
    n: usize,
) -> Vec<(String, Bundle, String, bool)> {
    let wanted: Vec<(String, Bundle, String)> = (0..n)
        .map(|_| {
            let p = PROFILES[rng.below(PROFILES.len())].to_string();
            (
                unique("s"),
                Bundle::new("sleep 600", &[("gpu.profile", &p)], &[]),
                p,
            )
        })
        .collect();
    let results: Vec<bool> = std::thread::scope(|s| {
        let hs: Vec<_> = wanted
            .iter()
            .map(|(id, b, _)| s.spawn(move || engine.create(b, id)))
            .collect();
        hs.into_iter()
            .zip(&wanted)
            .map(|(h, (id, _, _))| {
                let out = h.join().unwrap();
                if !out.status.success() {
                    let err = text(&out.stderr);
                    assert!(
                        err.contains("no free") && err.contains("slice"),
                        "create {id} failed for another reason than room: {err}"
                    );
                }
                out.status.success()
            })
            .collect()
    });
    wanted
        .into_iter()
        .zip(results)
        .map(|((id, b, p), ok)| (id, b, p, ok))
        .collect()
}

fn check_round(
    node: &SimNode,
    engine: &Engine,
    live: &BTreeMap<String, (Bundle, String)>,
    refused: &[String],
    round: &str,
) {
    invariants::check(node, Some(engine.root.path())).unwrap_or_else(|e| panic!("{round}:\n{e}"));
    let st = node.ledger();
    let mut uuids = BTreeSet::new();
    for (id, (bundle, profile)) in live {
        let i = st
            .lease_of(id)
            .unwrap_or_else(|| panic!("{round}: {id} runs without a slice"));
        assert_eq!(&st.instances[i].profile, profile, "{round}: {id}");
        let mig = st.instances[i].made.as_ref().unwrap().mig_uuid.clone();
        // The spec runc got names the same slice, and no other container's does.
        let env = bundle.config()["process"]["env"].clone();
        assert!(
            env.as_array()
                .unwrap()
                .iter()
                .any(|e| e.as_str() == Some(&format!("CUDA_VISIBLE_DEVICES={mig}"))),
            "{round}: {id}'s spec does not name {mig}"
        );
        assert!(
            uuids.insert(mig.clone()),
            "{round}: {mig} given to two containers"
        );
    }
    for id in refused {
        assert!(
            st.lease_of(id).is_none(),
            "{round}: refused {id} holds a slice"
        );
        assert!(
            !engine.root.path().join(id).exists(),
            "{round}: refused {id} exists in runc"
        );
    }
    let leases = st.instances.iter().filter(|r| r.lease.is_some()).count();
    assert_eq!(
        leases,
        live.len(),
        "{round}: leases of containers that are not running"
    );
}

#[test]
fn sixty_four_at_once_then_churn() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let mut rng = Rng(0x9e3779b97f4a7c15);
    let mut live: BTreeMap<String, (Bundle, String)> = BTreeMap::new();

    let first = create_many(&engine, &mut rng, 64);
    let mut refused = Vec::new();
    for (id, b, p, ok) in first {
        if ok {
            live.insert(id, (b, p));
        } else {
            refused.push(id);
        }
    }
    assert!(
        live.len() >= 4,
        "two H100s hold at least 4 slices of any mix; got {}",
        live.len()
    );
    assert!(
        !refused.is_empty(),
        "64 requests cannot all fit on two H100s"
    );
    check_round(&node, &engine, &live, &refused, "64 at once");

    let rounds: usize = std::env::var("GPUSHARE_STRESS_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(4);
    for round in 0..rounds {
        // Delete about half of what runs, all at once, then create 16 more at once.
        let ids: Vec<String> = live.keys().cloned().collect();
        let doomed: Vec<String> = ids.into_iter().filter(|_| rng.below(2) == 0).collect();
        std::thread::scope(|s| {
            for id in &doomed {
                let engine = &engine;
                s.spawn(move || {
                    let out = engine.delete(id);
                    assert!(out.status.success(), "delete {id}: {}", text(&out.stderr));
                });
            }
        });
        for id in &doomed {
            live.remove(id);
        }
        let mut refused = Vec::new();
        for (id, b, p, ok) in create_many(&engine, &mut rng, 16) {
            if ok {
                live.insert(id, (b, p));
            } else {
                refused.push(id);
            }
        }
        check_round(
            &node,
            &engine,
            &live,
            &refused,
            &format!("churn round {round}"),
        );
    }

    std::thread::scope(|s| {
        for id in live.keys() {
            let engine = &engine;
            s.spawn(move || assert!(engine.delete(id).status.success()));
        }
    });
    live.clear();
    check_round(&node, &engine, &live, &[], "all deleted");
    let st = node.ledger();
    assert!(st
        .instances
        .iter()
        .all(|r| r.lease.is_none() && r.made.is_some()));
}
