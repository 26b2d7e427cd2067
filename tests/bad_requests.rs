//! Malformed or impossible requests fail `create` with a message that names the annotation, the
//! value and what is accepted; nothing is allocated and config.json is unchanged.

mod common;
use common::*;

fn refused(engine: &Engine<'_>, annotations: &[(&str, &str)], env: &[&str]) -> String {
    let bundle = Bundle::new("true", annotations, env);
    let before = bundle.config_bytes();
    let id = unique("bad");
    let out = engine.create(&bundle, &id);
    assert!(
        !out.status.success(),
        "create must fail for {annotations:?} {env:?}"
    );
    assert_eq!(
        bundle.config_bytes(),
        before,
        "config.json unchanged for {annotations:?}"
    );
    assert!(
        engine.state(&id).is_none(),
        "no container for {annotations:?}"
    );
    assert_logged(&bundle, &text(&out.stderr));
    let st = engine.node.status_json();
    assert!(
        st["leases"].as_array().unwrap().is_empty()
            && st["gpus"][0]["instances"].as_array().unwrap().is_empty(),
        "nothing allocated for {annotations:?} {env:?}: {st:#}"
    );
    text(&out.stderr)
}

/// The engine's `--log` ends with gpushare's error as a runc JSON line (what containerd and
/// Docker show), the same message as on stderr.
fn assert_logged(bundle: &Bundle, stderr: &str) {
    let log = std::fs::read_to_string(bundle.path().join("runtime-log.json")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap_or("")).unwrap();
    assert_eq!(last["level"], "error", "{log}");
    let msg = last["msg"].as_str().unwrap();
    assert!(msg.starts_with("gpushare: "), "{log}");
    assert!(
        stderr.contains(msg),
        "stderr {stderr:?} has the logged {msg:?}"
    );
}

/// (annotations, env, substrings the error must contain)
type Case<'a> = (Vec<(&'a str, &'a str)>, Vec<&'a str>, Vec<&'a str>);

#[test]
fn malformed_and_impossible_requests_are_refused_cleanly() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let long = "1".repeat(10 * 1024);
    let cases: Vec<Case<'_>> = vec![
        (
            vec![("gpu.profile", "5g.50gb")],
            vec![],
            vec!["gpu.profile=5g.50gb", "accepted: 1g.10gb, 2g.20gb"],
        ),
        (
            vec![("gpu.profile", "0g.1gb")],
            vec![],
            vec!["annotation gpu.profile", "\"0g.1gb\"", "accepted:"],
        ),
        (
            vec![("gpu.profile", "")],
            vec![],
            vec!["annotation gpu.profile", "empty", "accepted:"],
        ),
        (
            vec![("gpu.profile", long.as_str())],
            vec![],
            vec!["annotation gpu.profile", "10240 bytes", "accepted:"],
        ),
        (
            vec![("gpu.profile", "1g.10gb\u{1b}[2J")],
            vec![],
            vec!["annotation gpu.profile", "control characters", "accepted:"],
        ),
        // A real profile of another GPU model (H200), absent on the H100.
        (
            vec![("gpu.profile", "1g.18gb")],
            vec![],
            vec![
                "gpu.profile=1g.18gb",
                "no such MIG profile",
                "accepted: 1g.10gb",
            ],
        ),
        (
            vec![("gpu.profile", "1g.10gb"), ("gpu.device", "3")],
            vec![],
            vec!["gpu.device=3", "1 GPU(s)"],
        ),
        (
            vec![("gpu.profile", "1g.10gb"), ("gpu.device", "GPU-nope")],
            vec![],
            vec!["annotation gpu.device", "accepted:"],
        ),
        (
            vec![],
            vec!["GPUSHARE_PROFILE=lots"],
            vec!["env GPUSHARE_PROFILE", "accepted:"],
        ),
        // Valid, but not on this GPU: the refusal names the env variable that asked.
        (
            vec![],
            vec!["GPUSHARE_PROFILE=1g.18gb"],
            vec![
                "no such MIG profile",
                "accepted: 1g.10gb",
                "asked with env GPUSHARE_PROFILE",
            ],
        ),
    ];
    for (ann, env, wants) in &cases {
        let err = refused(&engine, ann, env);
        for w in wants {
            assert!(
                err.contains(w),
                "for {ann:?} {env:?}: {w:?} missing in: {err}"
            );
        }
    }
    assert!(node.ledger().instances.is_empty(), "nothing allocated");
    let state = node.sim_state();
    let gis = state["gpus"][0]["gpu_instances"]
        .as_array()
        .map_or(0, Vec::len);
    assert_eq!(gis, 0, "no instance in the simulated driver: {state:#}");
}

#[test]
fn mig_disabled_names_mig_mode_and_the_fix() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, false);
    let engine = Engine::new(&node, Runtime::Runc);
    let err = refused(&engine, &[("gpu.profile", "1g.10gb")], &[]);
    assert!(err.contains("MIG mode is disabled on GPU 0"), "{err}");
    assert!(err.contains("nvidia-smi -i <index> -mig 1"), "{err}");
}

#[test]
fn policy_can_refuse_env_requests_and_profiles() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    node.configure("[policy]\nallow_env = false\nallowed_profiles = [\"1g.10gb\"]\n");
    let engine = Engine::new(&node, Runtime::Runc);
    let err = refused(&engine, &[("gpu.profile", "2g.20gb")], &[]);
    assert!(
        err.contains("not allowed by this node's policy; allowed: 1g.10gb"),
        "{err}"
    );
    // With env requests off, an image's GPUSHARE_PROFILE is not a request at all.
    let bundle = Bundle::new(
        "echo \"[$CUDA_VISIBLE_DEVICES]\"",
        &[],
        &["GPUSHARE_PROFILE=1g.10gb"],
    );
    assert_eq!(engine.run_to_end(&bundle, &unique("noenv")).trim(), "[]");
    assert!(node.ledger().instances.is_empty());
}

/// A request that is granted, but whose spec gpushare cannot edit (`linux.devices` is not a
/// list): create fails with the reason, the slice taken for it goes back to the pool, and
/// config.json is as the engine wrote it.
#[test]
fn a_spec_gpushare_cannot_edit_gives_the_slice_back() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    bundle.edit_config(|spec| spec["linux"]["devices"] = serde_json::json!("not a list"));
    let before = bundle.config_bytes();
    let id = unique("unshaped");
    let out = engine.create(&bundle, &id);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("linux.devices"), "{err}");
    assert_logged(&bundle, &err);
    assert_eq!(bundle.config_bytes(), before, "config.json unchanged");
    assert!(engine.state(&id).is_none());
    let st = node.status_json();
    assert!(st["leases"].as_array().unwrap().is_empty(), "{st:#}");
    let instances = st["gpus"][0]["instances"].as_array().unwrap();
    assert!(
        instances.iter().all(|i| i["state"] == "idle"),
        "what was taken is idle again: {st:#}"
    );
}

/// A runtime that is there but cannot be run (not executable): create fails as exec does, the
/// slice this create took goes back, and config.json is the engine's again.
#[test]
fn a_runtime_that_cannot_run_gives_the_slice_back() {
    use std::os::unix::fs::PermissionsExt;
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let dir = TempDir::new("noexec");
    let runtime = dir.path().join("runc");
    std::fs::write(&runtime, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&runtime, std::fs::Permissions::from_mode(0o644)).unwrap();
    node.configure(&format!("runtime = {:?}", runtime.display().to_string()));
    let bundle = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let before = bundle.config_bytes();
    let out = run(std::process::Command::new(SHIM)
        .env("GPUSHARE_CONFIG", node.config())
        .args(["create", "--bundle"])
        .arg(bundle.path())
        .arg(unique("noexec")));
    assert_eq!(out.status.code(), Some(127), "{}", text(&out.stderr));
    assert!(
        text(&out.stderr).contains("cannot run"),
        "{}",
        text(&out.stderr)
    );
    assert_eq!(
        bundle.config_bytes(),
        before,
        "config.json is the engine's again"
    );
    let st = node.status_json();
    assert!(st["leases"].as_array().unwrap().is_empty(), "{st:#}");
    assert_eq!(st["gpus"][0]["instances"][0]["state"], "idle", "{st:#}");
}
