//! A `delete` that arrives while the container's `create` is still running (issue 16, finding
//! 1), and what `gc` does about a live container whose lease is gone. Real runc and crun behind
//! a slow stand-in, on a simulated H100.
use crate::common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// A runtime that takes 2 s before its `create` (an engine's slow image hooks, a loaded node):
/// a script named like the real runtime, so gpushare reads its state as it would the real one's.
fn slow_runtime(dir: &Path, rt: Runtime) -> PathBuf {
    let bin = dir.join("slow");
    std::fs::create_dir_all(&bin).unwrap();
    let path = bin.join(rt.name());
    std::fs::write(
        &path,
        format!(
            "#!/bin/sh\nfor a in \"$@\"; do case \"$a\" in create|run) sleep 2;; esac; done\nexec {} \"$@\"\n",
            rt.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    path
}

/// Point the node's config at `runtime` (Engine::new wrote the real one).
fn use_runtime(node: &SimNode, runtime: &Path) {
    let old = std::fs::read_to_string(node.config()).unwrap();
    let new: String = old
        .lines()
        .map(|l| match l.starts_with("runtime = ") {
            true => format!("runtime = {:?}", runtime.display().to_string()),
            false => l.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(node.config(), new + "\n").unwrap();
}

/// The MIG device a container's spec hands it.
fn mig_of(bundle: &Bundle) -> String {
    let spec = bundle.config();
    let env = spec["process"]["env"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    env.iter()
        .filter_map(|e| e.as_str()?.strip_prefix("CUDA_VISIBLE_DEVICES="))
        .find(|v| v.starts_with("MIG-"))
        .unwrap_or_default()
        .to_string()
}

fn lease_uuid(node: &SimNode, id: &str) -> Option<String> {
    let st = node.ledger();
    st.lease_of(id)
        .and_then(|i| st.instances[i].made.as_ref())
        .map(|m| m.mig_uuid.clone())
}

/// Every container of `ids` the runtime has is on its own MIG device, and the ledger leases
/// that very device to it.
fn one_container_per_slice(node: &SimNode, engine: &Engine, ids: &[(&str, &Bundle)]) {
    let mut seen: Vec<(String, String)> = Vec::new();
    for (id, bundle) in ids {
        let Some(state) = engine.state(id) else {
            continue;
        };
        let uuid = mig_of(bundle);
        assert!(
            uuid.starts_with("MIG-"),
            "{id} ({}) has no MIG device in its spec",
            state["status"]
        );
        assert_eq!(
            lease_uuid(node, id).as_deref(),
            Some(uuid.as_str()),
            "{id} ({}) runs on {uuid}, which the ledger must lease to it: {:#?}",
            state["status"],
            node.ledger().instances
        );
        if let Some((other, _)) = seen.iter().find(|(_, u)| *u == uuid) {
            panic!("{id} and {other} are both on {uuid}");
        }
        seen.push((id.to_string(), uuid));
    }
}

/// How the victim is made: `create`, `run --detach`, or a foreground `run` (whose runtime
/// process lives as long as the container).
#[derive(Clone, Copy, PartialEq)]
enum Make {
    Create,
    RunDetached,
    RunForeground,
}

/// `gpushare <how> --bundle B id`, with the container's stdio in files in the bundle.
fn make(engine: &Engine, bundle: &Bundle, id: &str, how: Make) -> std::process::Output {
    if how == Make::Create {
        return engine.create(bundle, id);
    }
    let mut args = vec!["run"];
    if how == Make::RunDetached {
        args.push("--detach");
    }
    let p = bundle.path().display().to_string();
    args.extend(["--bundle", &p, id]);
    let mut c = engine.cmd(&args);
    c.stdin(std::process::Stdio::null())
        .stdout(std::fs::File::create(bundle.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(bundle.path().join("stderr")).unwrap());
    let status = c.status().unwrap();
    std::process::Output {
        status,
        stdout: Vec::new(),
        stderr: std::fs::read(bundle.path().join("stderr")).unwrap(),
    }
}

fn delete_while_create_runs(rt: Runtime, warm: bool) {
    delete_while_made(rt, warm, Make::Create);
}

fn delete_while_made(rt: Runtime, warm: bool, how: Make) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let scratch = TempDir::new("slowrt");
    use_runtime(&node, &slow_runtime(scratch.path(), rt));
    if warm {
        // An idle instance and its offer: the victim is granted by the entry binary.
        let first = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        engine.run_to_end(&first, &unique("first"));
    }

    let victim = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let victim_id = unique("victim");
    let (created, delete_took) = std::thread::scope(|s| {
        let create = s.spawn(|| make(&engine, &victim, &victim_id, how));
        std::thread::sleep(Duration::from_secs(1));
        if warm {
            let journal =
                std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::journal::NAME))
                    .unwrap_or_default();
            assert!(
                journal
                    .lines()
                    .any(|l| l.starts_with('+') && l.contains(&format!(" {victim_id} "))),
                "the victim is granted by the entry binary: {journal}"
            );
        }
        let t = Instant::now();
        let del = engine.delete(&victim_id);
        let took = t.elapsed();
        let created = create.join().unwrap();
        // crun's foreground run deletes its container itself once it ends, and a delete
        // racing that teardown may find the folder gone (the victim is checked gone below).
        assert!(
            del.status.success() || how == Make::RunForeground,
            "delete -f: {}",
            text(&del.stderr)
        );
        (created, took)
    });
    // A foreground run ends with its container, which the delete killed.
    assert!(
        created.status.success() || how == Make::RunForeground,
        "create victim: {}",
        text(&created.stderr)
    );
    // Whatever the victim's fate, it is never left running without its slice.
    let _ = run(&mut engine.cmd(&["start", &victim_id]));

    let other = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let other_id = unique("other");
    let out = engine.create(&other, &other_id);
    assert!(out.status.success(), "create other: {}", text(&out.stderr));
    let out = run(&mut engine.cmd(&["start", &other_id]));
    assert!(out.status.success(), "start other: {}", text(&out.stderr));

    one_container_per_slice(
        &node,
        &engine,
        &[(&victim_id, &victim), (&other_id, &other)],
    );
    // The delete waited for the create, then did what the operator asked.
    assert!(
        delete_took >= Duration::from_millis(500),
        "delete returned after {delete_took:?}, while the create still ran"
    );
    assert!(
        engine.state(&victim_id).is_none(),
        "the victim was deleted once its create finished"
    );
    let gc = node.ctl(&["gc", "--grace", "0"]);
    assert!(gc.status.success(), "gc: {}", text(&gc.stdout));
    assert!(!text(&gc.stdout).contains("ALERT"), "{}", text(&gc.stdout));

    for id in [&victim_id, &other_id] {
        engine.delete(id);
    }
    let st = node.ledger();
    assert!(
        st.instances.iter().all(|r| r.lease.is_none()),
        "all released after both deletes: {:#?}",
        st.instances
    );
}

#[test]
fn runc_delete_while_run_detached_runs_never_frees_the_slice() {
    delete_while_made(Runtime::Runc, false, Make::RunDetached);
}

#[test]
fn runc_delete_while_warm_run_detached_runs_never_frees_the_slice() {
    delete_while_made(Runtime::Runc, true, Make::RunDetached);
}

#[test]
fn runc_delete_while_foreground_run_runs_never_frees_the_slice() {
    delete_while_made(Runtime::Runc, false, Make::RunForeground);
}

#[test]
fn crun_delete_while_run_detached_runs_never_frees_the_slice() {
    delete_while_made(Runtime::Crun, false, Make::RunDetached);
}

#[test]
fn crun_delete_while_foreground_run_runs_never_frees_the_slice() {
    delete_while_made(Runtime::Crun, true, Make::RunForeground);
}

#[test]
fn runc_delete_while_create_runs_never_frees_the_slice() {
    delete_while_create_runs(Runtime::Runc, false);
}

#[test]
fn runc_delete_while_warm_create_runs_never_frees_the_slice() {
    delete_while_create_runs(Runtime::Runc, true);
}

#[test]
fn crun_delete_while_create_runs_never_frees_the_slice() {
    delete_while_create_runs(Runtime::Crun, false);
}

#[test]
fn crun_delete_while_warm_create_runs_never_frees_the_slice() {
    delete_while_create_runs(Runtime::Crun, true);
}

/// A live container whose lease is gone (released behind its back): `gc` gives the lease back
/// while the instance is idle, and raises an ALERT (exit 1) once another container was granted
/// the same instance.
#[test]
fn gc_finds_live_containers_whose_lease_is_gone() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let a = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let a_id = unique("a");
    assert!(engine.create(&a, &a_id).status.success());
    assert!(run(&mut engine.cmd(&["start", &a_id])).status.success());
    let uuid = lease_uuid(&node, &a_id).unwrap();

    let rel = node.ctl(&["release", &a_id]);
    assert!(rel.status.success(), "{}", text(&rel.stderr));
    assert!(lease_uuid(&node, &a_id).is_none());
    let root = engine.root.path().display().to_string();
    let gc = node.ctl(&["gc", "--runtime-root", &root]);
    let said = text(&gc.stdout);
    assert!(gc.status.success(), "{said}{}", text(&gc.stderr));
    assert!(
        said.contains(&format!("lease {uuid}")) && said.contains(&a_id),
        "{said}"
    );
    assert_eq!(lease_uuid(&node, &a_id).as_deref(), Some(uuid.as_str()));

    // Released again, and this time granted to another container before gc looks.
    assert!(node.ctl(&["release", &a_id]).status.success());
    let b = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let b_id = unique("b");
    assert!(engine.create(&b, &b_id).status.success());
    assert_eq!(mig_of(&b), uuid, "the idle instance went to b");
    let gc = node.ctl(&["gc", "--runtime-root", &root]);
    let said = text(&gc.stdout);
    assert!(!gc.status.success(), "an ALERT fails gc: {said}");
    assert!(
        said.contains("ALERT") && said.contains(&a_id) && said.contains(&b_id),
        "{said}"
    );

    // The ledger lost the instance's record altogether (e.g. edited by hand): still an ALERT.
    assert!(engine.delete(&b_id).status.success());
    {
        let ledger = gpushare_core::ledger::Ledger::new(&node.cfg().state_dir);
        let locked = ledger.lock(Duration::from_secs(5)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances
            .retain(|r| r.made.as_ref().map(|m| m.mig_uuid.as_str()) != Some(uuid.as_str()));
        locked.save(&st).unwrap();
    }
    let gc = node.ctl(&["gc", "--runtime-root", &root]);
    let said = text(&gc.stdout);
    assert!(!gc.status.success(), "an ALERT fails gc: {said}");
    assert!(
        said.contains("ALERT") && said.contains(&a_id) && said.contains("does not know"),
        "{said}"
    );
    engine.delete(&a_id);
}

/// A delete that gives up waiting (here after 300 ms) while the create still runs leaves the
/// slice leased and says so: the container comes up, keeps its slice while it runs, and no
/// other container is granted it; deleting it later releases it.
fn delete_that_gives_up_keeps_the_slice(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let scratch = TempDir::new("slowrt");
    use_runtime(&node, &slow_runtime(scratch.path(), rt));
    node.configure("[pool]\nlock_timeout_ms = 300");

    let victim = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let victim_id = unique("victim");
    let (created, del) = std::thread::scope(|s| {
        let create = s.spawn(|| engine.create(&victim, &victim_id));
        std::thread::sleep(Duration::from_secs(1));
        let del = engine.delete(&victim_id);
        (create.join().unwrap(), del)
    });
    assert!(created.status.success(), "{}", text(&created.stderr));
    let said = text(&del.stderr);
    assert!(
        said.contains("still running") && said.contains("stays leased"),
        "{said}"
    );
    let out = run(&mut engine.cmd(&["start", &victim_id]));
    assert!(out.status.success(), "start victim: {}", text(&out.stderr));
    assert_eq!(engine.state(&victim_id).unwrap()["status"], "running");

    let other = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let other_id = unique("other");
    let out = engine.create(&other, &other_id);
    assert!(out.status.success(), "create other: {}", text(&out.stderr));
    one_container_per_slice(
        &node,
        &engine,
        &[(&victim_id, &victim), (&other_id, &other)],
    );
    for id in [&victim_id, &other_id] {
        let out = engine.delete(id);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let st = node.ledger();
    assert!(
        st.instances.iter().all(|r| r.lease.is_none()),
        "all released after both deletes: {:#?}",
        st.instances
    );
}

#[test]
fn runc_delete_that_gives_up_keeps_the_slice() {
    delete_that_gives_up_keeps_the_slice(Runtime::Runc);
}

#[test]
fn crun_delete_that_gives_up_keeps_the_slice() {
    delete_that_gives_up_keeps_the_slice(Runtime::Crun);
}

/// A container's claim file goes with it: the release hook removes it (nobody holds it then),
/// whether the full wrapper or the entry binary granted.
#[test]
fn a_deleted_container_leaves_no_claim_behind() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let claims = node.cfg().state_dir.join(gpushare_state::claim::DIR);
    for round in ["cold", "warm"] {
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        let id = unique(round);
        let out = engine.create(&b, &id);
        assert!(out.status.success(), "{round}: {}", text(&out.stderr));
        assert!(
            claims.join(&id).exists(),
            "{round}: the create took its claim"
        );
        engine.start_and_wait(&b, &id);
        let del = engine.delete(&id);
        assert!(del.status.success(), "{round}: {}", text(&del.stderr));
        assert!(!claims.join(&id).exists(), "{round}: claim removed");
        assert!(node.ledger().lease_of(&id).is_none(), "{round}: released");
    }
    assert_eq!(
        node.ledger().stats.grants_by_entry,
        1,
        "the warm one was the entry binary's"
    );
}

/// 20 loops share 6 container ids on one H100, each creating, starting and force-deleting
/// ids at random for 15 s (deletes land while creates of the same id run, creates of an id
/// meet its earlier container): no two live containers ever run on one MIG device, and once
/// every id is deleted nothing is leased.
#[test]
fn twenty_loops_sharing_six_ids_never_put_two_containers_on_one_slice() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let ids: Vec<String> = (0..6).map(|i| unique(&format!("shared{i}"))).collect();
    let root = engine.root.path().display().to_string();
    let stop = std::sync::atomic::AtomicBool::new(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    let checks = std::thread::scope(|s| {
        for seed in 0..20u64 {
            let (engine, ids, stop) = (&engine, &ids, &stop);
            s.spawn(move || {
                let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (seed + 1);
                let mut next = move || {
                    x ^= x << 13;
                    x ^= x >> 7;
                    x ^= x << 17;
                    x
                };
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let id = &ids[(next() % ids.len() as u64) as usize];
                    let b = Bundle::new("sleep 600", &[("gpu.profile", "1g.10gb")], &[]);
                    if engine.create(&b, id).status.success() {
                        let _ = run(&mut engine.cmd(&["start", id]));
                    }
                    std::thread::sleep(Duration::from_millis(next() % 200));
                    let _ = engine.delete(id);
                }
            });
        }
        let mut checks = 0;
        while Instant::now() < deadline {
            let live = gpushare_core::running::find(std::slice::from_ref(&root));
            let mut seen: Vec<(&str, &str)> = Vec::new();
            for c in &live {
                for u in &c.mig_uuids {
                    if let Some((other, _)) = seen.iter().find(|(_, v)| v == u) {
                        stop.store(true, std::sync::atomic::Ordering::Relaxed);
                        let st = node.ledger();
                        let leases: Vec<_> = st
                            .instances
                            .iter()
                            .map(|r| (r.made.as_ref().map(|m| m.mig_uuid.clone()), r.lease.clone()))
                            .collect();
                        panic!(
                            "{} and {other} both run on {u}; ledger: {leases:#?}; journal: {}",
                            c.container_id,
                            std::fs::read_to_string(
                                node.cfg().state_dir.join(gpushare_state::journal::NAME)
                            )
                            .unwrap_or_default()
                        );
                    }
                    seen.push((&c.container_id, u));
                }
            }
            checks += 1;
            std::thread::sleep(Duration::from_millis(50));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        checks
    });
    assert!(checks > 20, "the checker ran ({checks} looks)");
    for id in &ids {
        let out = engine.delete(id);
        assert!(out.status.success(), "{}", text(&out.stderr));
    }
    let st = node.ledger();
    assert!(
        st.instances.iter().all(|r| r.lease.is_none()) && st.shares.is_empty(),
        "nothing leased once every id is deleted: {:#?}",
        st.instances
    );
    // Every grant's marker went with its release, whoever granted and released it.
    crate::invariants::markers_match_leases(&node).unwrap();
}
