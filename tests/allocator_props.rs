//! Property and concurrency tests of the allocator against the simulated driver (the real
//! C-ABI library, loaded through NVML's ordinary path): random allocate/release sequences on
//! every GPU model never grant an instance twice, never break NVML's rules, and leave the
//! ledger matching what the driver has.

mod common;
use common::*;
use gpushare_core::allocator::{self, AllocError, Claimant};
use gpushare_core::config::Config;
use gpushare_core::nvml::Backend;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// xorshift64*: small, seedable, and enough to explore sequences.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}

/// (gpu index, gi, ci, MIG uuid) of every compute instance the driver has.
fn driver_view(cfg: &Config) -> BTreeSet<(u32, u32, u32, String)> {
    let be = Backend::open(cfg).unwrap();
    let mut out = BTreeSet::new();
    for g in be.gpus().unwrap() {
        let profiles = be.profiles(g.index).unwrap();
        for gi in be.gpu_instances(g.index, &profiles).unwrap() {
            for ci in gi.compute_instances {
                out.insert((g.index, gi.id, ci, be.mig_uuid(g.index, gi.id, ci).unwrap()));
            }
        }
    }
    out
}

fn check_invariants(node: &SimNode, cfg: &Config, held: &HashMap<String, String>) {
    let ledger = node.ledger();
    let mut leased = BTreeSet::new();
    for r in &ledger.instances {
        let m = r
            .made
            .as_ref()
            .expect("no half-made record after a finished call");
        if let Some(l) = &r.lease {
            assert!(
                leased.insert(m.mig_uuid.clone()),
                "instance {} granted twice",
                m.mig_uuid
            );
            assert_eq!(
                held.get(&l.container_id),
                Some(&m.mig_uuid),
                "lease matches the grant"
            );
        }
    }
    assert_eq!(
        leased.len(),
        held.len(),
        "every holder has exactly one lease"
    );
    let ours: BTreeSet<_> = ledger
        .instances
        .iter()
        .map(|r| {
            let m = r.made.as_ref().unwrap();
            (r.gpu_index, m.gi, m.ci, m.mig_uuid.clone())
        })
        .collect();
    assert_eq!(ours, driver_view(cfg), "ledger == driver");
}

fn random_sequences(model: &str, gpus: u32, seeds: u64, steps: usize) {
    for seed in 1..=seeds {
        let node = SimNode::new(model, gpus, true);
        let cfg = node.cfg();
        let be = Backend::open(&cfg).unwrap();
        let profiles: Vec<String> = be
            .profiles(0)
            .unwrap()
            .into_iter()
            .map(|p| p.name)
            .collect();
        drop(be);
        assert!(!profiles.is_empty(), "{model} has MIG profiles");
        let mut rng = Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1);
        let mut held: HashMap<String, String> = HashMap::new();
        for step in 0..steps {
            if !held.is_empty() && rng.below(3) == 0 {
                let ids: Vec<String> = held.keys().cloned().collect();
                let id = &ids[rng.below(ids.len())];
                assert!(allocator::release(&cfg, id, Duration::from_secs(5)).unwrap());
                assert!(
                    !allocator::release(&cfg, id, Duration::from_secs(5)).unwrap(),
                    "idempotent"
                );
                held.remove(id);
            } else {
                let profile = &profiles[rng.below(profiles.len())];
                let id = format!("c{seed}-{step}");
                let who = Claimant {
                    container_id: &id,
                    runtime_root: None,
                };
                match allocator::allocate(&cfg, profile, None, &who) {
                    Ok(g) => {
                        assert_eq!(&g.profile, profile);
                        held.insert(id, g.mig_uuid);
                    }
                    Err(AllocError::NoRoom { .. }) => {}
                    Err(e) => panic!("{model} seed {seed} step {step}: {profile}: unexpected {e}"),
                }
            }
            check_invariants(&node, &cfg, &held);
        }
        for id in held.keys() {
            allocator::release(&cfg, id, Duration::from_secs(5)).unwrap();
        }
        check_invariants(&node, &cfg, &HashMap::new());
    }
}

#[test]
fn random_sequences_h100() {
    random_sequences("h100-80gb", 1, 4, 50);
}

#[test]
fn random_sequences_h200_two_gpus() {
    random_sequences("h200-141gb", 2, 3, 50);
}

#[test]
fn random_sequences_a100_40gb() {
    random_sequences("a100-40gb", 1, 3, 50);
}

#[test]
fn random_sequences_a100_80gb() {
    random_sequences("a100-80gb", 1, 3, 50);
}

const CHILD_ENV: &str = "GPUSHARE_TEST_ALLOC_CHILD";

/// Run as a child process by `sixteen_processes_race_for_seven_slices`.
#[test]
fn child_allocates_once() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let (config, id) = spec.split_once('|').unwrap();
    let cfg = Config::from_file(std::path::Path::new(config)).unwrap();
    let who = Claimant {
        container_id: id,
        runtime_root: None,
    };
    match allocator::allocate(&cfg, "1g.10gb", None, &who) {
        Ok(g) => println!("RESULT OK {}", g.mig_uuid),
        Err(e) => println!("RESULT ERR {e}"),
    }
}

#[test]
fn sixteen_processes_race_for_seven_slices() {
    let node = SimNode::new("h100-80gb", 1, true);
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..16)
        .map(|i| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "child_allocates_once",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(CHILD_ENV, format!("{}|race-{i}", node.config().display()))
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut ok = Vec::new();
    let mut refused = Vec::new();
    for c in children {
        let out = c.wait_with_output().unwrap();
        let line = text(&out.stdout)
            .lines()
            .find_map(|l| l.split_once("RESULT ").map(|(_, r)| r.to_string()));
        match line.expect("child reported") {
            l if l.starts_with("OK ") => ok.push(l[3..].to_string()),
            l => refused.push(l),
        }
    }
    assert_eq!(ok.len(), 7, "exactly 7 granted; refused: {refused:?}");
    assert_eq!(refused.len(), 9);
    for r in &refused {
        assert!(r.contains("no free 1g.10gb slice on GPU 0"), "{r}");
    }
    let distinct: BTreeSet<_> = ok.iter().collect();
    assert_eq!(distinct.len(), 7, "no instance granted twice");
    let cfg = node.cfg();
    let held: HashMap<String, String> = node
        .ledger()
        .instances
        .iter()
        .filter_map(|r| {
            Some((
                r.lease.as_ref()?.container_id.clone(),
                r.made.as_ref()?.mig_uuid.clone(),
            ))
        })
        .collect();
    check_invariants(&node, &cfg, &held);
    for id in held.keys() {
        allocator::release(&cfg, id, Duration::from_secs(5)).unwrap();
    }
    let ledger = node.ledger();
    assert_eq!(ledger.instances.len(), 7);
    assert!(
        ledger.instances.iter().all(|r| r.lease.is_none()),
        "all idle after release"
    );
    check_invariants(&node, &cfg, &HashMap::new());
}
