//! What must hold between gpushare's ledger, the simulated driver and the runtime's state after
//! any sequence of creates, deletes, crashes and repairs.
#![allow(dead_code)]

use crate::common::SimNode;
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;

/// Every instance the driver has is one the ledger records as made (these tests make no
/// foreign ones), every record is of an instance the driver has, no record is a leftover
/// intent, no slice is recorded twice, no container holds two slices, (with `runtime_root`)
/// every lease belongs to a container the runtime has, and every lease's container has its
/// lease marker (the entry binary skips the release of an id without one).
pub fn check(node: &SimNode, runtime_root: Option<&Path>) -> Result<(), String> {
    let st = node.ledger();
    let sim = node.sim_state();
    let mut errs = markers_cover_leases(node, &st);
    let mut driver: BTreeMap<(String, u64), String> = BTreeMap::new();
    for g in sim["gpus"].as_array().unwrap() {
        let uuid = g["uuid"].as_str().unwrap().to_string();
        for gi in g["gpu_instances"].as_array().unwrap() {
            let cis = gi["compute_instances"].as_array().unwrap();
            let mig = cis
                .first()
                .and_then(|c| c["uuid"].as_str())
                .unwrap_or("(no compute instance)")
                .to_string();
            driver.insert((uuid.clone(), gi["id"].as_u64().unwrap()), mig);
        }
    }
    let mut seen_slices = BTreeSet::new();
    let mut seen_leases = BTreeSet::new();
    for r in &st.instances {
        let Some(m) = &r.made else {
            errs.push(format!(
                "leftover intent: {} at slot {} on {}",
                r.profile, r.slot.start, r.gpu_uuid
            ));
            continue;
        };
        let key = (r.gpu_uuid.clone(), m.gi as u64);
        match driver.get(&key) {
            None => errs.push(format!(
                "ledger records GI {} on {} that the driver lacks",
                m.gi, r.gpu_uuid
            )),
            Some(u) if *u != m.mig_uuid => errs.push(format!(
                "GI {}: ledger says {}, driver {u}",
                m.gi, m.mig_uuid
            )),
            Some(_) => {}
        }
        if !seen_slices.insert(key) {
            errs.push(format!("GI {} on {} recorded twice", m.gi, r.gpu_uuid));
        }
        if let Some(l) = &r.lease {
            if !seen_leases.insert(l.container_id.clone()) {
                errs.push(format!("container {} holds two slices", l.container_id));
            }
            if let Some(root) = runtime_root {
                if !root.join(&l.container_id).exists() {
                    errs.push(format!(
                        "container {} is gone but holds a slice",
                        l.container_id
                    ));
                }
            }
        }
    }
    // MPS inside MIG slices: a slice marked as serving MPS and a daemon bound to it go together.
    for r in &st.instances {
        let Some(m) = &r.made else { continue };
        let daemons = st
            .mps
            .iter()
            .filter(|d| d.mig.as_ref().is_some_and(|h| h.mig_uuid == m.mig_uuid))
            .count();
        match (r.mps, daemons) {
            (true, 1) | (false, 0) => {}
            (true, n) => errs.push(format!("{} serves MPS with {n} daemons", m.mig_uuid)),
            (false, _) => errs.push(format!(
                "a daemon is bound to {}, which the ledger does not mark as serving MPS",
                m.mig_uuid
            )),
        }
        if r.mps && r.lease.is_some() {
            errs.push(format!("{} serves MPS and is leased too", m.mig_uuid));
        }
    }
    for d in &st.mps {
        if let Some(h) = &d.mig {
            let known = st
                .instances
                .iter()
                .any(|r| r.mps && r.made.as_ref().is_some_and(|m| m.mig_uuid == h.mig_uuid));
            if !known {
                errs.push(format!(
                    "an MPS daemon is bound to {}, which the ledger does not record",
                    h.mig_uuid
                ));
            }
        }
        if let Some(root) = runtime_root {
            for c in &d.clients {
                if !root.join(&c.lease.container_id).exists() {
                    errs.push(format!(
                        "container {} is gone but holds an MPS share",
                        c.lease.container_id
                    ));
                }
            }
        }
    }
    for key in driver.keys() {
        if !seen_slices.contains(key) {
            errs.push(format!(
                "driver has GI {} on {} that the ledger does not know (leaked)",
                key.1, key.0
            ));
        }
    }
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

/// The state directory's lease markers, by id.
pub fn markers(node: &SimNode) -> BTreeSet<String> {
    gpushare_core::lease_marker::list(&node.cfg().state_dir)
}

/// A marker for every lease of `st` (the ledger with its journal applied), whenever the
/// ledger's header says its writer keeps them.
fn markers_cover_leases(node: &SimNode, st: &gpushare_core::ledger::LedgerState) -> Vec<String> {
    let raw =
        std::fs::read(node.cfg().state_dir.join(gpushare_state::ledger::NAME)).unwrap_or_default();
    if !gpushare_state::ledger::header(&raw).is_some_and(|h| h.marked()) {
        return Vec::new();
    }
    let have = markers(node);
    st.lease_ids()
        .into_iter()
        .filter(|id| !have.contains(id))
        .map(|id| format!("container {id} holds a lease and has no lease marker"))
        .collect()
}

/// [`check`]'s marker part alone: what must hold at every moment, right after a crash too.
pub fn markers_cover(node: &SimNode) -> Result<(), String> {
    let errs = markers_cover_leases(node, &node.ledger());
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs.join("\n"))
    }
}

/// Once gc has run with nothing in flight: a marker for every lease and for nothing else.
pub fn markers_match_leases(node: &SimNode) -> Result<(), String> {
    let (have, want) = (markers(node), node.ledger().lease_ids());
    if have == want {
        return Ok(());
    }
    Err(format!(
        "stale lease markers {:?}, leases without a marker {:?}",
        have.difference(&want).collect::<Vec<_>>(),
        want.difference(&have).collect::<Vec<_>>()
    ))
}
