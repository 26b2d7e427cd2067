//! Property and concurrency tests of the allocator against the simulated driver (the real
//! C-ABI library, loaded through NVML's ordinary path): random allocate/release sequences on
//! every GPU model never grant an instance twice, never break NVML's rules, and leave the
//! ledger matching what the driver has.
use crate::common;

use common::*;
use gpushare_core::allocator::{self, AllocError};
use gpushare_core::config::Config;
use gpushare_core::ledger::Claimant;
use gpushare_core::nvml::Backend;
use gpushare_core::placement::{self, Occupied};
use gpushare_core::request::DeviceSelector;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestRunner;
use std::cell::Cell;
use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

/// (gpu index, gi, ci, profile id, placement start, MIG uuid) of every compute instance the
/// driver has.
type DriverView = BTreeSet<(u32, u32, u32, u32, u32, String)>;

fn driver_view(cfg: &Config) -> DriverView {
    let be = Backend::open(cfg).unwrap();
    let mut out = BTreeSet::new();
    for g in be.gpus().unwrap() {
        let profiles = be.profiles(g.index).unwrap();
        for gi in be.gpu_instances(g.index, &profiles).unwrap() {
            for &ci in &gi.compute_instances {
                let uuid = be.mig_uuid(g.index, gi.id, ci).unwrap();
                out.insert((g.index, gi.id, ci, gi.profile_id, gi.slot.start, uuid));
            }
        }
    }
    out
}

/// A refusal must be true: on every GPU the request could go to, no placement of the profile
/// is free even with all of gpushare's idle instances destroyed (only leased ones stay).
fn assert_nothing_fits(node: &SimNode, cfg: &Config, profile: &str, gpu: Option<u32>) {
    let ledger = node.ledger();
    let be = Backend::open(cfg).unwrap();
    for g in be.gpus().unwrap() {
        if gpu.is_some_and(|want| want != g.index) {
            continue;
        }
        let profiles = be.profiles(g.index).unwrap();
        let Some(target) = profiles.iter().find(|p| p.name == profile) else {
            continue;
        };
        let busy: Vec<Occupied> = ledger
            .instances
            .iter()
            .filter(|r| r.gpu_index == g.index && r.lease.is_some())
            .map(|r| Occupied {
                profile_id: r.profile_id,
                slot: r.slot,
            })
            .collect();
        let free = placement::free_placements(target, &busy);
        assert!(
            free.is_empty(),
            "{profile} refused, but GPU {} could place it at {free:?} around the leased {busy:?}",
            g.index
        );
    }
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
    let ours: DriverView = ledger
        .instances
        .iter()
        .map(|r| {
            let m = r.made.as_ref().unwrap();
            (
                r.gpu_index,
                m.gi,
                m.ci,
                r.profile_id,
                r.slot.start,
                m.mig_uuid.clone(),
            )
        })
        .collect();
    assert_eq!(ours, driver_view(cfg), "ledger == driver");
}

/// One step of a sequence: release one of the held slices (when any is held), or ask for a
/// profile, on a GPU named by `gpu.device` or on any.
#[derive(Debug, Clone)]
struct Step {
    release: bool,
    pick: Index,
    gpu: Option<Index>,
}

/// Sequences of up to `len` steps (a failure shrinks to a short one): a third release (when
/// something is held); on several GPUs, a third of the requests name one (gpu.device).
fn steps(len: usize) -> impl Strategy<Value = Vec<Step>> {
    let step = (
        prop::bool::weighted(1.0 / 3.0),
        any::<Index>(),
        prop::option::weighted(1.0 / 3.0, any::<Index>()),
    )
        .prop_map(|(release, pick, gpu)| Step { release, pick, gpu });
    prop::collection::vec(step, 1..=len)
}

/// Each case gets a fresh node, so a failing case replays alone (proptest keeps it in
/// tests/proptest-regressions/ and runs it first next time) and shrinks to a short sequence.
/// Returns how many of its steps were grants.
fn random_sequence(model: &str, gpus: u32, steps: &[Step]) -> usize {
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
    let mut held: HashMap<String, String> = HashMap::new();
    let mut granted = 0;
    for (step, s) in steps.iter().enumerate() {
        if !held.is_empty() && s.release {
            let mut ids: Vec<String> = held.keys().cloned().collect();
            ids.sort();
            let id = s.pick.get(&ids);
            assert!(allocator::release(&cfg, id, Duration::from_secs(5)).unwrap());
            assert!(
                !allocator::release(&cfg, id, Duration::from_secs(5)).unwrap(),
                "idempotent"
            );
            held.remove(id);
        } else {
            let profile = s.pick.get(&profiles);
            let id = format!("c{step}");
            let who = Claimant {
                container_id: &id,
                runtime_root: None,
            };
            let gpu = s
                .gpu
                .filter(|_| gpus > 1)
                .map(|g| g.index(gpus as usize) as u32);
            let device = gpu.map(DeviceSelector::Index);
            match allocator::allocate(&cfg, profile, device.as_ref(), &who) {
                Ok(g) => {
                    assert_eq!(&g.profile, profile);
                    if let Some(want) = gpu {
                        assert_eq!(g.gpu_index, want, "gpu.device={want} honoured");
                    }
                    held.insert(id, g.mig_uuid);
                    granted += 1;
                }
                Err(AllocError::NoRoom { .. }) => assert_nothing_fits(&node, &cfg, profile, gpu),
                Err(e) => panic!("{model} step {step}: {profile}: unexpected {e}"),
            }
        }
        check_invariants(&node, &cfg, &held);
    }
    for id in held.keys() {
        allocator::release(&cfg, id, Duration::from_secs(5)).unwrap();
    }
    check_invariants(&node, &cfg, &HashMap::new());
    granted
}

/// `n` random sequences of up to 60 steps on a fresh node of `gpus` `model`s each. A case costs
/// a node and up to 60 NVML calls: `n` is twice the seeds of 60 steps there were before
/// proptest, at half the steps on average; PROPTEST_CASES sets more for a long run.
fn random_sequences(model: &str, gpus: u32, n: u32) {
    let mut runner = TestRunner::new(ProptestConfig {
        cases: std::env::var("PROPTEST_CASES")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(n),
        max_shrink_iters: 256,
        // A case takes seconds: stop shrinking after two minutes, with what it has by then.
        max_shrink_time: 120_000,
        source_file: Some(file!()),
        ..ProptestConfig::default()
    });
    let (granted, total) = (Cell::new(0), Cell::new(0));
    let result = runner.run(&steps(60), |steps| {
        granted.set(granted.get() + random_sequence(model, gpus, &steps));
        total.set(total.get() + steps.len());
        Ok(())
    });
    result.unwrap_or_else(|e| panic!("{model}: {e}"));
    // The sequences explore grants, not only refusals: over the run, as each seed did before
    // (one unlucky sequence may not, and is no failure of the allocator's).
    let (granted, total) = (granted.get(), total.get());
    assert!(
        granted * 4 >= total,
        "{model}: only {granted} grants in {total} steps"
    );
}

#[test]
fn random_sequences_h100() {
    random_sequences("h100-80gb", 1, 12);
}

#[test]
fn random_sequences_h200_two_gpus() {
    random_sequences("h200-141gb", 2, 8);
}

#[test]
fn random_sequences_a100_40gb() {
    random_sequences("a100-40gb", 1, 8);
}

#[test]
fn random_sequences_a100_80gb() {
    random_sequences("a100-80gb", 1, 8);
}

const CHILD_ENV: &str = "GPUSHARE_TEST_ALLOC_CHILD";

/// Run as a child process by `sixteen_processes_race_for_seven_slices`.
#[test]
fn child_allocates_once() {
    let Ok(spec) = std::env::var(CHILD_ENV) else {
        return;
    };
    let mut parts = spec.splitn(3, '|');
    let (config, id, go) = (
        parts.next().unwrap(),
        parts.next().unwrap(),
        parts.next().unwrap(),
    );
    let cfg = Config::from_file(std::path::Path::new(config)).unwrap();
    // All sixteen start together: each waits for the parent's signal, given once all exist.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while !std::path::Path::new(go).exists() {
        assert!(std::time::Instant::now() < deadline, "no start signal");
        std::thread::sleep(Duration::from_micros(200));
    }
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
    let go = node.root().join("go");
    let children: Vec<_> = (0..16)
        .map(|i| {
            std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "allocator_props::child_allocates_once",
                    "--nocapture",
                    "--test-threads=1",
                ])
                .env(
                    CHILD_ENV,
                    format!("{}|race-{i}|{}", node.config().display(), go.display()),
                )
                .stdout(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    // Let every child reach its wait, then start them all at once.
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&go, b"go").unwrap();
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
