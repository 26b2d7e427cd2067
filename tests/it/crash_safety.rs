//! Kill -9 at every failpoint of allocate, spec write and release (test builds carry them:
//! core/src/util/failpoint.rs), then prove that the next call, or `gpusharectl gc`, leaves no leaked
//! instance, no leftover intent, no lease of a container that is gone and no double grant.
use crate::common;
use crate::invariants;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Setup {
    /// An empty GPU: the request makes an instance (cold path).
    Cold,
    /// An idle 1g.10gb in the pool: the request reuses it (warm path).
    Warm,
    /// An idle 7g.80gb fills the GPU: the request destroys it to make room.
    Victim,
    /// The container ran; the crash is in the release that follows.
    Release,
    /// A crash left a half-made instance; the crash is in gc repairing it.
    Gc,
    /// A crash left a lease of a container that never came to be; the crash is in gc
    /// releasing it.
    GcRelease,
    /// A destroy killed inside the GPU instance's destroy (after the driver's files went) left
    /// a GPU instance that the ledger no longer records and the instance log names; the crash
    /// is in gc destroying it.
    GcLogged,
}

const SCENARIOS: &[(&str, Setup)] = &[
    ("alloc.locked", Setup::Cold),
    ("ledger.save.before_write", Setup::Cold),
    ("alloc.cold.intent_saved", Setup::Cold),
    ("nvml.create.gi_made", Setup::Cold),
    ("alloc.cold.made", Setup::Cold),
    ("alloc.cold.saved", Setup::Cold),
    ("runtime.granted", Setup::Cold),
    ("runtime.spec_written", Setup::Cold),
    ("alloc.warm.before_save", Setup::Warm),
    ("alloc.warm.saved", Setup::Warm),
    // The warm setup's container was released by its hook's journal line, which this grant
    // folds into the ledger: killed after the ledger's write, before the journal is emptied.
    ("ledger.save.before_journal_emptied", Setup::Warm),
    ("runtime.spec_written", Setup::Warm),
    ("alloc.cold.victims_destroyed", Setup::Victim),
    ("nvml.destroy.cis_gone", Setup::Victim),
    ("release.locked", Setup::Release),
    ("release.saved", Setup::Release),
    ("runtime.deleted", Setup::Release),
    ("gc.leftover.before_destroy", Setup::Gc),
    ("gc.before_release", Setup::GcRelease),
    ("alloc.cold.logged", Setup::Cold),
    // A lease's marker is made before the save that adds the lease, and removed after the
    // save that drops it: killed between the two steps, a stale marker, never a lease without.
    ("ledger.save.markers_made", Setup::Cold),
    ("ledger.save.before_markers_removed", Setup::Release),
    ("gc.logged.before_destroy", Setup::GcLogged),
];

/// Where an MPS crash happens (`mps.exclusive`: the compute mode changed for the daemon).
#[derive(Clone, Copy, Debug, PartialEq)]
enum MpsSetup {
    /// The first MPS share on the GPU: the crash is in its create.
    Create,
    /// The last MPS share's container ran; the crash is in the release that follows.
    Release,
}

const MPS_SCENARIOS: &[(&str, MpsSetup)] = &[
    ("mps.exclusive.recorded", MpsSetup::Create),
    ("mps.exclusive.set", MpsSetup::Create),
    ("mps.exclusive.before_restore", MpsSetup::Release),
];

/// Where a crash of an MPS share inside a MIG slice happens.
#[derive(Clone, Copy, Debug, PartialEq)]
enum MpsMigSetup {
    /// The first share of its size: the create takes a slice and starts its daemon.
    First,
    /// Another container holds a share of that size: the create joins its daemon.
    Join,
}

const MPS_MIG_SCENARIOS: &[(&str, MpsMigSetup)] = &[
    ("mps_mig.slice_granted", MpsMigSetup::First),
    ("mps_mig.intent_saved", MpsMigSetup::First),
    ("mps_mig.started", MpsMigSetup::First),
    ("mps_mig.joined", MpsMigSetup::Join),
];

fn killed(status: std::process::ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

fn create_with(
    engine: &Engine,
    bundle: &Bundle,
    id: &str,
    failpoint: Option<&str>,
) -> std::process::ExitStatus {
    let mut c = engine.cmd(&["create", "--bundle"]);
    c.arg(bundle.path())
        .arg(id)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(bundle.path().join("stderr")).unwrap());
    if let Some(fp) = failpoint {
        c.env("GPUSHARE_FAILPOINT", format!("{fp}:kill"));
    }
    c.status().unwrap()
}

fn gc(node: &SimNode, failpoint: Option<&str>) -> std::process::Output {
    let mut c = Command::new(CTL);
    c.arg("--config")
        .arg(node.config())
        .args(["gc", "--grace", "0"]);
    if let Some(fp) = failpoint {
        c.env("GPUSHARE_FAILPOINT", format!("{fp}:kill"));
    }
    run(&mut c)
}

/// `gpusharectl gc` after the crash, which must succeed.
fn gc_ok(node: &SimNode, label: &str) -> std::process::Output {
    let out = gc(node, None);
    assert!(
        out.status.success(),
        "{label}: gc: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    out
}

/// Once repaired, a second gc has nothing left to do.
fn assert_nothing_left_to_repair(node: &SimNode, label: &str) {
    let again = gc(node, None);
    assert!(
        text(&again.stdout).contains("nothing to repair"),
        "{label}: {}",
        text(&again.stdout)
    );
}

fn label(point: &str, setup: impl std::fmt::Debug, gc_first: bool) -> String {
    format!(
        "{point} ({setup:?}, {})",
        if gc_first {
            "gc, then next call"
        } else {
            "next call, then gc"
        }
    )
}

/// The poststop hook as runc runs it, killed at `point` half-way through its release.
fn poststop_killed_at(node: &SimNode, id: &str, b: &Bundle, point: &str) {
    let mut hook = Command::new(HOOK)
        .args(["poststop", "--config"])
        .arg(node.config())
        .env("GPUSHARE_FAILPOINT", format!("{point}:kill"))
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let state = serde_json::json!({"ociVersion": "1.0.2", "id": id, "status": "stopped", "pid": 0, "bundle": b.path()});
    hook.stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes())
        .unwrap();
    assert!(killed(hook.wait().unwrap()), "{point}: hook was not killed");
}

/// runc runs the hooks its own state recorded: take them out of it.
fn drop_hooks_from_runc_state(engine: &Engine, id: &str) {
    let state_path = engine.root.path().join(id).join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["config"]["Hooks"] = serde_json::Value::Null;
    state["config"]["hooks"] = serde_json::Value::Null;
    std::fs::write(&state_path, serde_json::to_vec(&state).unwrap()).unwrap();
}

fn run_profile(engine: &Engine, profile: &str) {
    let b = Bundle::new("true", &[("gpu.profile", profile)], &[]);
    engine.run_to_end(&b, &unique("setup"));
}

/// Brings the node to the state the scenario starts from.
fn set_up(engine: &Engine, setup: Setup) {
    match setup {
        Setup::Cold | Setup::Release => {}
        Setup::Warm => run_profile(engine, "1g.10gb"),
        Setup::Victim => run_profile(engine, "7g.80gb"),
        Setup::Gc => {
            let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
            let st = create_with(engine, &b, &unique("half"), Some("alloc.cold.made"));
            assert!(killed(st), "setting up a half-made instance");
        }
        Setup::GcRelease => {
            let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
            let st = create_with(engine, &b, &unique("orphan"), Some("runtime.spec_written"));
            assert!(killed(st), "setting up an orphaned lease");
        }
        Setup::GcLogged => {
            run_profile(engine, "7g.80gb");
            let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
            let st = engine
                .cmd(&["create", "--bundle"])
                .arg(b.path())
                .arg(unique("half"))
                .env("GPUSHARE_SIM_KILL_AT", "2")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .unwrap();
            assert!(killed(st), "setting up a half-destroyed instance");
            // The ledger drops the record, as the next grant's check of the driver files does.
            let path = engine
                .node
                .cfg()
                .state_dir
                .join(gpushare_state::ledger::NAME);
            let mut raw: serde_json::Value =
                serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
            raw["instances"] = serde_json::json!([]);
            std::fs::write(&path, raw.to_string()).unwrap();
        }
    }
}

/// Runs the crash; returns the id of the container that was being created or released.
fn crash(node: &SimNode, engine: &Engine, point: &str, setup: Setup) -> String {
    let id = unique("victim");
    match setup {
        Setup::Cold | Setup::Warm | Setup::Victim => {
            let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
            let st = create_with(engine, &b, &id, Some(point));
            assert!(
                killed(st),
                "{point}: create was not killed ({st:?}): {}",
                text(&std::fs::read(b.path().join("stderr")).unwrap())
            );
        }
        Setup::Release => {
            let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
            let out = engine.create(&b, &id);
            assert!(out.status.success(), "create: {}", text(&out.stderr));
            engine.start_and_wait(&b, &id);
            if point == "runtime.deleted" {
                // The wrapper releases after the runtime's delete only when the poststop hook
                // did not: make the runtime skip it (as runc does when its state is gone).
                drop_hooks_from_runc_state(engine, &id);
                let st = engine
                    .cmd(&["delete", "--force", &id])
                    .env("GPUSHARE_FAILPOINT", format!("{point}:kill"))
                    .status()
                    .unwrap();
                assert!(killed(st), "{point}: delete was not killed");
            } else {
                // The poststop hook as runc runs it, killed half-way through its release; then
                // the runtime forgets the container without gpushare (as when the hook timed out).
                poststop_killed_at(node, &id, &b, point);
                let mut spec = b.config();
                spec["hooks"] = serde_json::json!({});
                std::fs::write(
                    b.path().join("config.json"),
                    serde_json::to_vec(&spec).unwrap(),
                )
                .unwrap();
                let out = run(&mut engine.bare(&["delete", "--force", &id]));
                assert!(out.status.success(), "runc delete: {}", text(&out.stderr));
            }
        }
        Setup::Gc | Setup::GcRelease | Setup::GcLogged => {
            let out = gc(node, Some(point));
            assert!(
                killed(out.status),
                "{point}: gc was not killed: {}",
                text(&out.stdout)
            );
        }
    }
    id
}

/// A request after the crash, run to its end: it must get a slice no one else holds.
fn next_call(node: &SimNode, engine: &Engine, label: &str) {
    let b = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("next");
    let out = engine.create(&b, &id);
    assert!(
        out.status.success(),
        "{label}: the next create failed: {}",
        text(&out.stderr)
    );
    let st = node.ledger();
    let mine = st.instances[st.lease_of(&id).expect("a lease")]
        .made
        .clone()
        .expect("made");
    let holders = st
        .instances
        .iter()
        .filter(|r| {
            r.made.as_ref().is_some_and(|m| m.mig_uuid == mine.mig_uuid) && r.lease.is_some()
        })
        .count();
    assert_eq!(holders, 1, "{label}: slice granted twice");
    let printed = engine.start_and_wait(&b, &id);
    assert_eq!(
        env_seen(&printed, "CUDA_VISIBLE_DEVICES"),
        mine.mig_uuid,
        "{label}"
    );
    let del = engine.delete(&id);
    assert!(del.status.success(), "{label}: {}", text(&del.stderr));
}

fn scenario(point: &str, setup: Setup, gc_first: bool) {
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    set_up(&engine, setup);
    let victim = crash(&node, &engine, point, setup);
    let label = label(point, setup, gc_first);
    invariants::markers_cover(&node)
        .unwrap_or_else(|e| panic!("{label}: right after the crash:\n{e}"));
    if gc_first {
        gc_ok(&node, &label);
        invariants::check(&node, Some(engine.root.path()))
            .unwrap_or_else(|e| panic!("{label}: after gc:\n{e}"));
        next_call(&node, &engine, &label);
    } else {
        next_call(&node, &engine, &label);
        gc_ok(&node, &label);
    }
    invariants::check(&node, Some(engine.root.path())).unwrap_or_else(|e| panic!("{label}:\n{e}"));
    invariants::markers_match_leases(&node).unwrap_or_else(|e| panic!("{label}: after gc:\n{e}"));
    assert!(
        node.ledger().lease_of(&victim).is_none(),
        "{label}: the killed container keeps a slice"
    );
    assert_nothing_left_to_repair(&node, &label);
}

#[test]
fn every_failpoint_in_the_code_is_exercised() {
    let mut names = std::collections::BTreeSet::new();
    // The library's, the binaries' own (the wrapper's create and delete) and the DRA plugin's.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut dirs = vec![
        root.join("core/src"),
        root.join("bin"),
        root.join("dra/src"),
    ];
    while let Some(d) = dirs.pop() {
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let p = e.path();
            if p.is_dir() {
                dirs.push(p);
            } else if p.extension().is_some_and(|x| x == "rs") {
                let text = std::fs::read_to_string(&p).unwrap();
                for part in text.split("failpoint!(\"").skip(1) {
                    names.insert(part.split('"').next().unwrap().to_string());
                }
            }
        }
    }
    let covered: std::collections::BTreeSet<String> = SCENARIOS
        .iter()
        .map(|(n, _)| n.to_string())
        .chain(MPS_SCENARIOS.iter().map(|(n, _)| n.to_string()))
        .chain(crate::mig_mode::FAILPOINTS.iter().map(|n| n.to_string()))
        .chain(MPS_MIG_SCENARIOS.iter().map(|(n, _)| n.to_string()))
        .chain(crate::dra_plugin::FAILPOINTS.iter().map(|n| n.to_string()))
        .collect();
    let missing: Vec<&String> = names.difference(&covered).collect();
    assert!(
        missing.is_empty(),
        "failpoints no scenario kills at: {missing:?}"
    );
}

#[test]
fn kill_at_each_failpoint_then_gc_repairs() {
    require_root();
    for &(point, setup) in SCENARIOS {
        scenario(point, setup, true);
    }
}

#[test]
fn kill_at_each_failpoint_then_next_call_repairs() {
    require_root();
    for &(point, setup) in SCENARIOS {
        scenario(point, setup, false);
    }
}

/// The simulated GPU's compute mode (nvmlComputeMode_t).
fn compute_mode(node: &SimNode) -> u64 {
    node.sim_state()["gpus"][0]["compute_mode"]
        .as_u64()
        .unwrap()
}

const MPS_SHARE: [(&str, &str); 1] = [("gpu.mps", "25")];

/// An MPS share after the crash, run to its end: the GPU is EXCLUSIVE_PROCESS while it is held.
fn mps_next_call(node: &SimNode, engine: &Engine, label: &str) {
    let b = Bundle::new("true", &MPS_SHARE, &[]);
    let id = unique("next");
    let out = engine.create(&b, &id);
    assert!(
        out.status.success(),
        "{label}: the next create failed: {}",
        text(&out.stderr)
    );
    assert_eq!(compute_mode(node), 3, "{label}: held, not exclusive");
    engine.start_and_wait(&b, &id);
    let del = engine.delete(&id);
    assert!(del.status.success(), "{label}: {}", text(&del.stderr));
}

fn mps_scenario(point: &str, setup: MpsSetup, gc_first: bool) {
    let node = mps_node();
    let engine = Engine::new(&node, Runtime::Runc);
    let id = unique("victim");
    let b = Bundle::new("true", &MPS_SHARE, &[]);
    match setup {
        MpsSetup::Create => {
            let st = create_with(&engine, &b, &id, Some(point));
            assert!(killed(st), "{point}: create was not killed ({st:?})");
        }
        MpsSetup::Release => {
            let out = engine.create(&b, &id);
            assert!(out.status.success(), "create: {}", text(&out.stderr));
            engine.start_and_wait(&b, &id);
            // The poststop hook killed half-way through its release, then the runtime forgets
            // the container without gpushare.
            poststop_killed_at(&node, &id, &b, point);
            drop_hooks_from_runc_state(&engine, &id);
            let out = run(&mut engine.bare(&["delete", "--force", &id]));
            assert!(out.status.success(), "runc delete: {}", text(&out.stderr));
        }
    }
    if point != "mps.exclusive.recorded" {
        assert_eq!(
            compute_mode(&node),
            3,
            "{point}: the crash left the mode set"
        );
    }
    assert_eq!(node.ledger().compute_modes.len(), 1, "{point}: recorded");
    let label = label(point, setup, gc_first);
    if gc_first {
        let out = gc_ok(&node, &label);
        assert_eq!(
            compute_mode(&node),
            0,
            "{label}: gc put Default back: {}",
            text(&out.stdout)
        );
        assert!(node.ledger().compute_modes.is_empty(), "{label}");
        mps_next_call(&node, &engine, &label);
    } else {
        if setup == MpsSetup::Create {
            // A time-sliced container after the crash: the GPU must admit more than one
            // context again, so the grant puts the mode found back first.
            let b = Bundle::new("true", &[("gpu.share", "timeslice")], &[]);
            let id = unique("whole");
            let out = engine.create(&b, &id);
            assert!(out.status.success(), "{label}: {}", text(&out.stderr));
            assert_eq!(
                compute_mode(&node),
                0,
                "{label}: time-sliced on an exclusive GPU"
            );
            engine.start_and_wait(&b, &id);
            assert!(engine.delete(&id).status.success());
        }
        mps_next_call(&node, &engine, &label);
        gc_ok(&node, &label);
    }
    assert_eq!(
        compute_mode(&node),
        0,
        "{label}: Default once no share is held"
    );
    let st = node.ledger();
    assert!(
        st.mps.is_empty() && st.compute_modes.is_empty(),
        "{label}: {st:?}"
    );
    assert_nothing_left_to_repair(&node, &label);
}

#[test]
fn mps_kill_at_each_failpoint_then_gc_repairs() {
    require_root();
    for &(point, setup) in MPS_SCENARIOS {
        mps_scenario(point, setup, true);
    }
}

#[test]
fn mps_kill_at_each_failpoint_then_next_call_repairs() {
    require_root();
    for &(point, setup) in MPS_SCENARIOS {
        mps_scenario(point, setup, false);
    }
}

const MPS_MIG_SHARE: [(&str, &str); 2] = [("gpu.profile", "3g.40gb"), ("gpu.mps", "50")];

/// Every daemon the stand-in control program started has exited.
fn no_daemon_left(node: &SimNode, label: &str) {
    let log = mps_control_log(node);
    let pids = |what: &str| {
        let mut p: Vec<String> = log
            .lines()
            .filter_map(|l| l.strip_prefix(what))
            .map(|r| r.split_whitespace().next().unwrap_or_default().to_string())
            .collect();
        p.sort();
        p
    };
    assert_eq!(pids("start pid="), pids("exit pid="), "{label}: {log}");
}

fn mps_mig_scenario(point: &str, setup: MpsMigSetup, gc_first: bool) {
    let node = crate::mps_mig::mps_mig_node("");
    let engine = Engine::new(&node, Runtime::Runc);
    let label = label(point, setup, gc_first);
    let first = (Bundle::new("true", &MPS_MIG_SHARE, &[]), unique("first"));
    if setup == MpsMigSetup::Join {
        let out = engine.create(&first.0, &first.1);
        assert!(out.status.success(), "{label}: {}", text(&out.stderr));
    }
    let (b, id) = (Bundle::new("true", &MPS_MIG_SHARE, &[]), unique("victim"));
    let st = create_with(&engine, &b, &id, Some(point));
    assert!(killed(st), "{label}: create was not killed ({st:?})");
    let next = |n: &str| {
        let (b, id) = (Bundle::new("true", &MPS_MIG_SHARE, &[]), unique(n));
        engine.run_to_end(&b, &id);
    };
    if gc_first {
        gc_ok(&node, &label);
        invariants::check(&node, Some(engine.root.path()))
            .unwrap_or_else(|e| panic!("{label}: after gc:\n{e}"));
        next("next");
    } else {
        next("next");
        gc_ok(&node, &label);
    }
    if setup == MpsMigSetup::Join {
        engine.start_and_wait(&first.0, &first.1);
        let del = engine.delete(&first.1);
        assert!(del.status.success(), "{label}: {}", text(&del.stderr));
    }
    invariants::check(&node, Some(engine.root.path())).unwrap_or_else(|e| panic!("{label}:\n{e}"));
    let st = node.ledger();
    assert!(st.mps.is_empty(), "{label}: {:?}", st.mps);
    assert!(
        st.instances.iter().all(|r| r.is_idle()),
        "{label}: {:?}",
        st.instances
    );
    no_daemon_left(&node, &label);
    assert_nothing_left_to_repair(&node, &label);
}

#[test]
fn mps_mig_kill_at_each_failpoint_then_gc_repairs() {
    require_root();
    for &(point, setup) in MPS_MIG_SCENARIOS {
        mps_mig_scenario(point, setup, true);
    }
}

#[test]
fn mps_mig_kill_at_each_failpoint_then_next_call_repairs() {
    require_root();
    for &(point, setup) in MPS_MIG_SCENARIOS {
        mps_mig_scenario(point, setup, false);
    }
}
