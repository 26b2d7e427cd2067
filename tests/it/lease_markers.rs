//! Lease markers (`<state_dir>/leases/<id>`, docs/state.md): every lease has its marker from
//! before it is visible until after it is gone, whoever grants and releases it; a missing
//! marker lets the entry binary answer "holds nothing" with no lock and no ledger read; a
//! stale one only costs the look it would have saved, and gc removes it.
use crate::common;
use crate::invariants;

use common::*;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

fn marker(node: &SimNode, id: &str) -> PathBuf {
    gpushare_core::lease_marker::dir(&node.cfg().state_dir).join(id)
}

fn journal(node: &SimNode) -> String {
    let raw =
        std::fs::read(node.cfg().state_dir.join(gpushare_state::journal::NAME)).unwrap_or_default();
    String::from_utf8(raw).unwrap()
}

fn created(engine: &Engine, id: &str) -> Bundle {
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&b, id);
    assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
    b
}

/// The full wrapper (a cold grant), the entry binary (a warm grant from the offers), the
/// entry hook (a journaled release) and the full delete each keep the markers.
#[test]
fn every_grant_makes_a_marker_and_every_release_removes_it() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let cold = unique("cold");
    let b = created(&engine, &cold);
    assert!(marker(&node, &cold).exists(), "the full wrapper's grant");
    let out = run_hook(&b.config(), &state_of(&cold, &b));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        journal(&node).contains(&format!("\n{cold} ")),
        "{}",
        journal(&node)
    );
    assert!(!marker(&node, &cold).exists(), "the entry hook's release");
    let out = run(&mut engine.bare(&["delete", "--force", &cold]));
    assert!(out.status.success(), "{}", text(&out.stderr));

    let warm = unique("warm");
    created(&engine, &warm);
    assert!(
        journal(&node).contains(&format!(" {warm} ")),
        "granted by the entry binary: {}",
        journal(&node)
    );
    assert!(marker(&node, &warm).exists(), "the entry binary's grant");
    invariants::check(&node, Some(engine.root.path())).unwrap();
    let out = engine.delete(&warm);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!marker(&node, &warm).exists(), "released by delete");
    invariants::markers_match_leases(&node).unwrap();
}

/// The hook of a container that holds nothing returns at once, without the ledger's lock: a
/// missing marker says so (it used to wait for the lock, then hand over to the full hook).
#[test]
fn a_hook_without_a_marker_needs_no_lock() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let leased = unique("leased");
    let b = created(&engine, &leased);
    let lock = std::fs::File::open(node.cfg().state_dir.join(gpushare_state::lock::NAME)).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let before = journal(&node);
    let t = Instant::now();
    let out = run_hook(&b.config(), &state_of("never-granted", &b));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        t.elapsed() < Duration::from_millis(150),
        "the hook waited for the lock: {:?}",
        t.elapsed()
    );
    assert_eq!(journal(&node), before, "nothing journaled");
    drop(lock);
    assert!(node.ledger().lease_of(&leased).is_some());
    let out = engine.delete(&leased);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// A marker whose id holds nothing, as a crash between the entry binary's marker and its
/// journal line leaves: a create of that id is handed to the full wrapper (which grants it
/// once), a delete of another such id changes nothing, and gc removes what stays stale.
#[test]
fn a_stale_marker_costs_a_look_and_gc_removes_it() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    // An idle instance and its offer, for the entry binary to grant warm.
    let first = unique("first");
    created(&engine, &first);
    assert!(engine.delete(&first).status.success());
    let (again, orphan) = (unique("again"), unique("orphan"));
    gpushare_core::lease_marker::make(&node.cfg().state_dir, [again.as_str(), orphan.as_str()])
        .unwrap();
    let b = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&b, &again);
    assert!(
        out.status.success(),
        "create {again}: {}",
        text(&out.stderr)
    );
    assert!(
        !journal(&node).contains(&format!(" {again} ")),
        "a marked id is the full wrapper's to grant: {}",
        journal(&node)
    );
    let st = node.ledger();
    assert_eq!(st.lease_ids(), [again.clone()].into(), "granted once");
    assert_eq!(st.instances.len(), 1, "the idle instance was reused");
    let printed = engine.start_and_wait(&b, &again);
    let mig = st.instances[0].made.as_ref().unwrap().mig_uuid.clone();
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), mig);
    assert!(engine.delete(&again).status.success());
    assert!(!marker(&node, &again).exists());

    let out = run(&mut engine.cmd(&["delete", "--force", &orphan]));
    let bare = run(&mut engine.bare(&["delete", "--force", &orphan]));
    assert_eq!(out.status.code(), bare.status.code(), "runc's answer");
    assert!(marker(&node, &orphan).exists());
    let gc = node.ctl(&["gc", "--grace", "0"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert!(!marker(&node, &orphan).exists(), "swept");
    invariants::markers_match_leases(&node).unwrap();
    invariants::check(&node, Some(engine.root.path())).unwrap();
}
