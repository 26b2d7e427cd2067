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
    let log = std::fs::read_to_string(bundle.path().join("runtime-log.json")).unwrap();
    assert!(
        log.contains("gpushare: "),
        "error in the engine's log: {log}"
    );
    text(&out.stderr)
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
            vec!["annotation gpu.profile", "control characters"],
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
