//! Issue #16, findings 3 and 4: no MIG instance of gpushare's is ever stranded (left with no
//! ledger record, which `gc` would call foreign forever), and a lost or corrupt ledger is
//! rebuilt by `gpusharectl repair` without stranding anything or granting anything twice.
use crate::common;
use crate::invariants;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::Stdio;

fn create_env(
    engine: &Engine,
    bundle: &Bundle,
    id: &str,
    env: &[(&str, &str)],
) -> std::process::ExitStatus {
    let mut c = engine.cmd(&["create", "--bundle"]);
    c.arg(bundle.path())
        .arg(id)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(bundle.path().join("stderr")).unwrap());
    c.status().unwrap()
}

fn gc_json(node: &SimNode) -> serde_json::Value {
    let out = node.ctl(&["gc", "--grace", "0", "--json"]);
    assert!(out.status.success(), "gc: {}", text(&out.stderr));
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The node's ledger, instance log and driver agree (tests/it/invariants).
fn check(node: &SimNode, engine: &Engine) {
    invariants::check(node, Some(engine.root.path())).unwrap();
}

/// Deleted, and the node agrees with itself after.
fn delete_and_check(node: &SimNode, engine: &Engine, id: &str) {
    assert!(engine.delete(id).status.success());
    check(node, engine);
}

/// A 1g.10gb create that must destroy an idle instance to make room, killed inside the GPU
/// instance's destroy (the simulator's `GPUSHARE_SIM_KILL_AT`).
fn create_killed_in_the_destroy(engine: &Engine, b: &Bundle) {
    let st = create_env(
        engine,
        b,
        &unique("killed"),
        &[("GPUSHARE_SIM_KILL_AT", "2")],
    );
    assert_eq!(
        st.signal(),
        Some(libc::SIGKILL),
        "killed in the destroy: {st:?}"
    );
}

/// An idle 2g.20gb in the pool and a running 1g.10gb container (its bundle and id).
fn idle_and_busy(engine: &Engine) -> (Bundle, String) {
    let idle = Bundle::new("true", &[("gpu.profile", "2g.20gb")], &[]);
    engine.run_to_end(&idle, &unique("was"));
    let busy = Bundle::new("sleep 600", &[("gpu.profile", "1g.10gb")], &[]);
    let busy_id = unique("busy");
    assert!(engine.create(&busy, &busy_id).status.success());
    (busy, busy_id)
}

/// The GPU instances the driver lists: (GI id, compute instance count).
fn driver_instances(node: &SimNode) -> Vec<(u64, usize)> {
    node.sim_state()["gpus"][0]["gpu_instances"]
        .as_array()
        .unwrap()
        .iter()
        .map(|gi| {
            (
                gi["id"].as_u64().unwrap(),
                gi["compute_instances"].as_array().unwrap().len(),
            )
        })
        .collect()
}

/// The interleaving behind finding 3, written down. An idle 7g.80gb fills the GPU; a 1g.10gb
/// request must destroy it (compute instance, then GPU instance). The process is killed inside
/// the GPU instance's destroy, after the driver's capability files went and before the
/// destroy took effect (the simulator's `GPUSHARE_SIM_KILL_AT`; a driver killed mid-call
/// can leave the same). The ledger still holds the idle record, whose compute instance is gone;
/// it survives grants that do not look at it, until the next allocation's check of the
/// driver's files finds both files gone and drops it, while NVML still lists the GPU
/// instance. Before the instance log, nothing said that GPU instance was gpushare's: the GPU
/// was full for every request and `gc` called the instance foreign forever.
#[test]
fn an_instance_whose_destroy_was_killed_half_way_is_never_stranded() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let big = Bundle::new("true", &[("gpu.profile", "7g.80gb")], &[]);
    engine.run_to_end(&big, &unique("big"));
    assert_eq!(
        driver_instances(&node),
        [(0, 1)],
        "an idle 7g.80gb fills the GPU"
    );

    let b = Bundle::new("sleep 600", &[("gpu.profile", "1g.10gb")], &[]);
    create_killed_in_the_destroy(&engine, &b);
    assert_eq!(
        driver_instances(&node),
        [(0, 0)],
        "the GPU instance is still there, without its compute instance"
    );
    assert!(
        node.ledger().instances.iter().any(|r| r.made.is_some()),
        "the ledger still holds the idle record"
    );

    // The next request finds the record's files gone and drops it; it must still get its slice.
    let id = unique("next");
    let st = create_env(&engine, &b, &id, &[]);
    assert!(
        st.success(),
        "create after the killed destroy: {}",
        text(&std::fs::read(b.path().join("stderr")).unwrap())
    );
    let report = gc_json(&node);
    assert_eq!(report["foreign"], serde_json::json!([]), "{report}");
    check(&node, &engine);
    delete_and_check(&node, &engine, &id);
}

/// The same crash where the record is dropped by a request for another GPU (whose cold path
/// checks every record's files but only its own GPU's instances), so that `gc` is the first to
/// meet the GPU instance: the instance log, not the lost record, must say it is gpushare's.
#[test]
fn gc_destroys_what_the_instance_log_says_gpushare_made_and_the_ledger_lost() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let on0 = |p: &str, script: &str| {
        Bundle::new(script, &[("gpu.profile", p), ("gpu.device", "0")], &[])
    };
    engine.run_to_end(&on0("7g.80gb", "true"), &unique("big"));
    let b = on0("1g.10gb", "true");
    create_killed_in_the_destroy(&engine, &b);
    let elsewhere = Bundle::new(
        "true",
        &[("gpu.profile", "1g.10gb"), ("gpu.device", "1")],
        &[],
    );
    let id = unique("gpu1");
    assert!(create_env(&engine, &elsewhere, &id, &[]).success());
    assert!(
        node.ledger().instances.iter().all(|r| r.gpu_index == 1),
        "the lost record is dropped: {:?}",
        node.ledger().instances
    );
    assert_eq!(
        driver_instances(&node),
        [(0, 0)],
        "while NVML still lists it"
    );

    let report = gc_json(&node);
    assert_eq!(report["foreign"], serde_json::json!([]), "{report}");
    assert_eq!(driver_instances(&node), [], "{report}");
    delete_and_check(&node, &engine, &id);

    // A truly foreign instance (another manager's, which gpushare's log never named) is
    // reported and left alone.
    let out = node.sim(&["create-instance", "--gpu", "0", "--profile", "2g.20gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report = gc_json(&node);
    assert_eq!(report["foreign"].as_array().unwrap().len(), 1, "{report}");
    assert_eq!(driver_instances(&node).len(), 1, "left alone");
}

/// Finding 4: the ledger lost (corrupt) while a container runs on one slice and another slice
/// is idle. The old advice (move it aside, `gc`) left both foreign; `gpusharectl repair`
/// rebuilds both records: the busy one leased to its container (never granted again), the
/// idle one back in the pool.
#[test]
fn repair_rebuilds_a_corrupt_ledger_from_the_driver_the_log_and_the_runtime() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let (_busy, busy_id) = idle_and_busy(&engine);
    let before = node.ledger();
    let held = before.instances[before.lease_of(&busy_id).unwrap()]
        .made
        .clone()
        .unwrap()
        .mig_uuid;

    let ledger = node.cfg().state_dir.join(gpushare_state::ledger::NAME);
    std::fs::write(&ledger, b"{\"format\":1,\"generation\":7,\"instan").unwrap();
    let refused = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let mut c = engine.cmd(&["create", "--bundle"]);
    c.arg(refused.path()).arg(unique("refused"));
    let out = run(&mut c);
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("gpusharectl repair"),
        "{err}"
    );

    let root = engine.root.path().display().to_string();
    let out = node.ctl(&["repair", "--runtime-root", &root]);
    assert!(
        out.status.success(),
        "repair: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let said = text(&out.stdout);
    assert!(
        said.contains(&format!("leased to container {busy_id}")),
        "{said}"
    );
    assert!(said.contains("2g.20gb") && said.contains("idle"), "{said}");
    let aside: Vec<_> = std::fs::read_dir(ledger.parent().unwrap())
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("ledger.json.corrupt-")
        })
        .collect();
    assert_eq!(aside.len(), 1, "the corrupt ledger is kept aside");

    let st = node.ledger();
    let i = st
        .lease_of(&busy_id)
        .expect("the running container holds its slice again");
    assert_eq!(st.instances[i].made.as_ref().unwrap().mig_uuid, held);
    let was_idle = before
        .instances
        .iter()
        .find(|r| r.lease.is_none())
        .and_then(|r| r.made.clone())
        .unwrap();
    assert!(
        st.instances
            .iter()
            .any(|r| r.lease.is_none() && r.made.as_ref() == Some(&was_idle)),
        "the idle 2g.20gb is back in the pool as it was: {:?}",
        st.instances
    );
    assert_eq!(gc_json(&node)["foreign"], serde_json::json!([]));
    check(&node, &engine);

    // The idle 2g.20gb is reused; the busy slice is never granted again.
    let other = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let other_id = unique("other");
    assert!(engine.create(&other, &other_id).status.success());
    let env = other.config()["process"]["env"].to_string();
    assert!(!env.contains(&held), "{held} granted twice: {env}");
    let again = Bundle::new("true", &[("gpu.profile", "2g.20gb")], &[]);
    let again_id = unique("again");
    assert!(engine.create(&again, &again_id).status.success());
    for id in [&busy_id, &other_id, &again_id] {
        assert!(engine.delete(id).status.success());
    }
    check(&node, &engine);
    assert!(node.ledger().instances.iter().all(|r| r.lease.is_none()));
}

/// A record the ledger lost while its instance is whole: `gc` adopts it from the instance log,
/// leased to the container whose spec names its MIG UUID (so it is never granted again), and
/// an idle one back into the pool.
#[test]
fn gc_adopts_whole_instances_the_ledger_lost() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let (_busy, busy_id) = idle_and_busy(&engine);
    let before = node.ledger();

    // Lose both records, as a hand edit or a restore from an old backup would.
    let path = node.cfg().state_dir.join(gpushare_state::ledger::NAME);
    let mut raw: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    raw["instances"] = serde_json::json!([]);
    std::fs::write(&path, raw.to_string()).unwrap();

    let out = node.ctl(&["gc", "--grace", "0", "--dry-run", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["foreign"], serde_json::json!([]), "{report}");
    assert!(
        node.ledger().instances.is_empty(),
        "a dry run changes nothing"
    );

    let report = gc_json(&node);
    let adopted: Vec<_> = report["actions"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["action"] == "adopt")
        .collect();
    assert_eq!(adopted.len(), 2, "{report}");
    let st = node.ledger();
    let i = st
        .lease_of(&busy_id)
        .expect("the running container's lease is back");
    let j = before.lease_of(&busy_id).unwrap();
    assert_eq!(st.instances[i].made, before.instances[j].made);
    assert_eq!(
        st.instances.iter().filter(|r| r.lease.is_none()).count(),
        1,
        "the other is idle: {:?}",
        st.instances
    );
    check(&node, &engine);
    delete_and_check(&node, &engine, &busy_id);
}

/// A ledger deleted outright: `repair` finds the runtime root in the instance log (no
/// `--runtime-root`), leases the running container's slice back to it, and a dry run first
/// changes nothing.
#[test]
fn repair_rebuilds_a_deleted_ledger_from_the_roots_the_log_names() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Crun);
    let busy = Bundle::new("sleep 600", &[("gpu.profile", "3g.40gb")], &[]);
    let busy_id = unique("busy");
    assert!(engine.create(&busy, &busy_id).status.success());
    let held = node.ledger().instances[0].made.clone().unwrap().mig_uuid;
    std::fs::remove_file(node.cfg().state_dir.join(gpushare_state::ledger::NAME)).unwrap();

    let out = node.ctl(&["repair", "--dry-run", "--json"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["recorded"].as_array().unwrap().len(), 1, "{report}");
    assert!(
        !node
            .cfg()
            .state_dir
            .join(gpushare_state::ledger::NAME)
            .exists(),
        "a dry run writes nothing"
    );

    let out = node.ctl(&["repair"]);
    assert!(
        out.status.success(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let st = node.ledger();
    let i = st.lease_of(&busy_id).expect("leased again");
    assert_eq!(st.instances[i].made.as_ref().unwrap().mig_uuid, held);
    assert_eq!(gc_json(&node)["foreign"], serde_json::json!([]));
    delete_and_check(&node, &engine, &busy_id);
}
