//! `gpushare run` (runc's create and start in one command) through real runc and crun: a
//! request is honoured exactly as by `create` (same checks, same refusals, same spec edit), and
//! the slice goes back when the runtime deletes the container at its exit (the poststop hook
//! gpushare writes), or, after `run --keep` or `run --detach`, at the engine's `delete`.
use crate::common;

use common::*;

#[derive(Clone, Copy, Debug)]
enum Ask {
    Mig,
    TimeSlice,
    Mps,
}

impl Ask {
    fn node(self) -> SimNode {
        match self {
            Ask::Mig => SimNode::new("h100-80gb", 1, true),
            Ask::TimeSlice => SimNode::new("h100-80gb", 1, false),
            Ask::Mps => mps_node(),
        }
    }

    fn annotations(self) -> &'static [(&'static str, &'static str)] {
        match self {
            Ask::Mig => &[("gpu.profile", "1g.10gb")],
            Ask::TimeSlice => &[("gpu.share", "timeslice")],
            Ask::Mps => &[("gpu.mps", "25"), ("gpu.mps.memory", "4G")],
        }
    }
}

/// [`SHOW_GPU`], and the MPS share's thread percentage.
fn show() -> String {
    format!(
        "echo \"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE\"\n{SHOW_GPU}"
    )
}

/// `run` in the foreground: the container sees its slice, and when it exits the runtime deletes
/// it and gpushare's poststop hook gives the slice back. `warm`: the slice was made and released
/// before, so the `gpushare` entry binary grants it from the ledger's offers.
fn run_sees_its_slice_and_releases_at_exit(rt: Runtime, ask: Ask, warm: bool) {
    require_root();
    let node = ask.node();
    let engine = Engine::new(&node, rt);
    if warm {
        let first = Bundle::new("true", ask.annotations(), &[]);
        engine.run_to_end(&first, &unique("first"));
    }
    let bundle = Bundle::new(&show(), ask.annotations(), &[]);
    let id = unique("run");
    let out = engine.run_container(&bundle, &id, &[]);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    let printed = text(&out.stdout);
    if warm {
        let journal =
            std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::journal::NAME))
                .unwrap_or_default();
        assert!(
            journal
                .lines()
                .any(|l| l.starts_with('+') && l.contains(&format!(" {id} "))),
            "granted by the entry binary: {journal}"
        );
    }

    let st = node.ledger();
    let visible = env_seen(&printed, "CUDA_VISIBLE_DEVICES");
    let mut want_nodes = vec![
        "/dev/nvidia-uvm".to_string(),
        "/dev/nvidia-uvm-tools".into(),
        "/dev/nvidia0".into(),
        "/dev/nvidiactl".into(),
    ];
    match ask {
        Ask::Mig => {
            // Released, the instance stays idle in the pool with the UUID the container saw.
            let rec = st
                .instances
                .iter()
                .find(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == visible));
            let made = rec
                .and_then(|r| r.made.clone())
                .unwrap_or_else(|| panic!("the container saw a MIG slice: {printed}"));
            want_nodes.push(format!("/dev/nvidia-caps/nvidia-cap{}", made.gi_cap_minor));
            want_nodes.push(format!("/dev/nvidia-caps/nvidia-cap{}", made.ci_cap_minor));
        }
        Ask::TimeSlice | Ask::Mps => assert_eq!(visible, st.gpus[0].uuid, "{printed}"),
    }
    let percent = env_seen(&printed, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE");
    assert_eq!(percent, if matches!(ask, Ask::Mps) { "25" } else { "" });
    let seen = nodes_seen(&printed);
    let mut paths: Vec<String> = seen.iter().map(|(p, _, _)| p.clone()).collect();
    paths.sort();
    want_nodes.sort();
    assert_eq!(paths, want_nodes, "exactly its slice's nodes:\n{printed}");
    for (path, _, result) in &seen {
        assert!(
            result.contains("No such device or address"),
            "{path} opens as allowed (ENXIO): {result}"
        );
    }

    assert!(
        engine.state(&id).is_none(),
        "the runtime deleted it at exit"
    );
    assert!(!holds(&node, &id), "released at exit: {:#?}", node.ledger());
    if matches!(ask, Ask::Mps) {
        assert!(
            node.ledger().mps.is_empty(),
            "the daemon quit with its last client"
        );
    }
}

#[test]
fn runc_run_mig_slice() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Runc, Ask::Mig, false);
}

#[test]
fn crun_run_mig_slice() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Crun, Ask::Mig, false);
}

#[test]
fn runc_run_warm_mig_slice_granted_by_the_entry_binary() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Runc, Ask::Mig, true);
}

#[test]
fn crun_run_warm_mig_slice_granted_by_the_entry_binary() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Crun, Ask::Mig, true);
}

#[test]
fn runc_run_timeslice() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Runc, Ask::TimeSlice, false);
}

#[test]
fn crun_run_timeslice() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Crun, Ask::TimeSlice, false);
}

#[test]
fn runc_run_mps_share() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Runc, Ask::Mps, false);
}

#[test]
fn crun_run_mps_share() {
    run_sees_its_slice_and_releases_at_exit(Runtime::Crun, Ask::Mps, false);
}

/// A bad request and a request that does not fit are refused by `run` with `create`'s
/// messages, in the engine's log too; nothing is allocated, config.json is left as the engine
/// wrote it, and no container is made.
fn run_refuses_as_create_does(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let whole = Bundle::new("sleep 60", &[("gpu.profile", "7g.80gb")], &[]);
    let whole_id = unique("whole");
    let out = engine.run_container(&whole, &whole_id, &["--detach"]);
    assert!(out.status.success(), "run: {}", text(&out.stderr));
    let instances = node.sim_state();

    for (profile, says) in [
        ("0g.1gb", "annotation gpu.profile=\"0g.1gb\" is not valid"),
        ("1g.10gb", "no free 1g.10gb slice on GPU 0"),
    ] {
        let bundle = Bundle::new("true", &[("gpu.profile", profile)], &[]);
        let before = bundle.config_bytes();
        let id = unique("refused");
        let out = engine.run_container(&bundle, &id, &[]);
        assert_eq!(out.status.code(), Some(1), "{profile}");
        let err = text(&out.stderr);
        assert!(err.contains(says), "{profile}: {err}");
        let log = std::fs::read_to_string(bundle.path().join("runtime-log.json")).unwrap();
        let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
        assert!(
            last["msg"].as_str().unwrap().contains(says),
            "{profile}: {log}"
        );
        assert_eq!(
            bundle.config_bytes(),
            before,
            "{profile}: config.json untouched"
        );
        assert!(engine.state(&id).is_none(), "{profile}: no container");
        assert!(!holds(&node, &id), "{profile}: nothing leased");
        assert_eq!(node.sim_state(), instances, "{profile}: nothing made");
    }
    assert!(engine.delete(&whole_id).status.success());
    assert!(!holds(&node, &whole_id));
}

#[test]
fn runc_run_refuses_as_create_does() {
    run_refuses_as_create_does(Runtime::Runc);
}

#[test]
fn crun_run_refuses_as_create_does() {
    run_refuses_as_create_does(Runtime::Crun);
}

/// `run --keep` leaves the stopped container, and with it the slice, until the engine's
/// `delete`. (runc only: crun 1.8 has no `--keep`.)
#[test]
fn runc_run_keep_holds_until_delete() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let kept = Bundle::new(&show(), &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("keep");
    let out = engine.run_container(&kept, &id, &["--keep"]);
    assert!(out.status.success(), "run --keep: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("CUDA_VISIBLE_DEVICES=MIG-"));
    assert_eq!(engine.state(&id).unwrap()["status"], "stopped");
    assert!(holds(&node, &id), "kept with the container");
    let out = engine.delete(&id);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert!(!holds(&node, &id), "released by delete");
}

/// `run --detach --pid-file` returns while the container runs, which keeps its slice until
/// `delete`.
fn run_detach_holds_until_delete(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let detached = Bundle::new("sleep 60", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("detach");
    let pid_file = detached.path().join("pid");
    let out = engine.run_container(
        &detached,
        &id,
        &["--detach", "--pid-file", pid_file.to_str().unwrap()],
    );
    assert!(out.status.success(), "run --detach: {}", text(&out.stderr));
    let state = engine.state(&id).unwrap();
    assert_eq!(state["status"], "running");
    let pid = std::fs::read_to_string(&pid_file).unwrap();
    assert_eq!(
        pid.trim(),
        state["pid"].to_string(),
        "the runtime wrote --pid-file"
    );
    assert!(holds(&node, &id));
    let out = engine.delete(&id);
    assert!(out.status.success(), "delete: {}", text(&out.stderr));
    assert!(!holds(&node, &id), "released by delete");
}

#[test]
fn runc_run_detach_holds_until_delete() {
    run_detach_holds_until_delete(Runtime::Runc);
}

#[test]
fn crun_run_detach_holds_until_delete() {
    run_detach_holds_until_delete(Runtime::Crun);
}

/// A `run` the runtime refuses (here: no rootfs) leaves the lease it was granted, as a refused
/// `create` does: the engine's `delete` of that id frees it, and so does `gpusharectl gc`.
#[test]
fn runc_refused_run_is_freed_by_delete_or_gc() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    for freed_by in ["delete", "gc"] {
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        b.edit_config(|spec| spec["root"]["path"] = serde_json::json!("no-such-rootfs"));
        let id = unique("refused-run");
        let out = engine.run_container(&b, &id, &[]);
        assert!(!out.status.success(), "runc refuses a missing rootfs");
        assert!(holds(&node, &id), "{freed_by}");
        let out = match freed_by {
            "delete" => engine.delete(&id),
            _ => node.ctl(&["gc", "--grace", "0"]),
        };
        assert!(
            freed_by == "delete" || out.status.success(),
            "{}",
            text(&out.stderr)
        );
        assert!(!holds(&node, &id), "freed by {freed_by}");
    }
}

/// A `run` whose spec asks for nothing reaches the runtime with the spec byte for byte as the
/// engine wrote it, and the container runs as under the bare runtime.
fn run_without_a_request_is_untouched(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let script = "echo \"env $(env | sort | tr '\\n' ' ')\"; ls /dev";
    let plain = Bundle::new(script, &[], &["X=1"]);
    let before = plain.config_bytes();
    let out = engine.run_container(&plain, &unique("plain"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(plain.config_bytes(), before, "config.json byte for byte");
    let ours = text(&out.stdout);
    let bare = {
        let id = unique("bare");
        let out = run(engine
            .bare(&["run", "--bundle"])
            .arg(plain.path())
            .arg(&id)
            .stdin(std::process::Stdio::null()));
        assert!(out.status.success(), "{}", text(&out.stderr));
        text(&out.stdout)
    };
    assert_eq!(ours, bare);
    assert!(ours.contains(" X=1 ") && !ours.contains("nvidia"), "{ours}");
    assert!(node.ledger().instances.is_empty());
}

#[test]
fn runc_run_without_a_request_is_untouched() {
    run_without_a_request_is_untouched(Runtime::Runc);
}

#[test]
fn crun_run_without_a_request_is_untouched() {
    run_without_a_request_is_untouched(Runtime::Crun);
}
