//! Malformed or impossible requests fail `create` with a message that names the annotation, the
//! value and what is accepted; nothing is allocated and config.json is unchanged.
use crate::common;

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
    let out = run(std::process::Command::new(ENTRY)
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

/// `create` of `bundle` (whose config.json the test wrote) is refused with `wants` in the
/// message: config.json unchanged, no container, the message in runc's JSON log, and the
/// ledger's instances and leases as they were (a warm pool's idle instance stays idle).
fn refused_spec(engine: &Engine<'_>, bundle: &Bundle, wants: &[&str]) {
    let before = bundle.config_bytes();
    let leases = |l: gpushare_core::ledger::LedgerState| -> Vec<Option<String>> {
        l.instances
            .iter()
            .map(|i| i.lease.as_ref().map(|l| l.container_id.clone()))
            .collect()
    };
    let held = leases(engine.node.ledger());
    let id = unique("ambiguous");
    let out = engine.create(bundle, &id);
    let err = text(&out.stderr);
    let shown = String::from_utf8_lossy(&before);
    assert!(!out.status.success(), "create must fail for {shown}");
    for w in wants {
        assert!(err.contains(w), "{w:?} missing in: {err}");
    }
    assert_eq!(bundle.config_bytes(), before, "config.json unchanged");
    assert!(engine.state(&id).is_none(), "no container for {shown}");
    assert_logged(bundle, &err);
    assert_eq!(
        leases(engine.node.ledger()),
        held,
        "no instance made or granted for {shown}"
    );
}

/// A bundle asking for `gpu.profile=1g.10gb` whose config.json text is then changed by `edit`.
fn raw_bundle(env: &[&str], edit: impl FnOnce(String) -> Vec<u8>) -> Bundle {
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], env);
    let text = String::from_utf8(b.config_bytes()).unwrap();
    let edited = edit(text.clone());
    assert_ne!(edited, text.as_bytes(), "the edit changed the spec");
    std::fs::write(b.path().join("config.json"), edited).unwrap();
    b
}

/// A node whose pool holds an idle 1g.10gb with its offer written, so that the `gpushare`
/// entry binary could grant a plain request by itself: each refusal below must come from the
/// full wrapper, which the entry binary hands such specs to.
fn warm_engine(node: &SimNode) -> Engine<'_> {
    let engine = Engine::new(node, Runtime::Runc);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&b, &unique("warm"));
    assert!(node
        .cfg()
        .state_dir
        .join(gpushare_state::offers::NAME)
        .exists());
    engine
}

/// Issue 16, finding 6: a spec that mentions a request but does not parse, and a request value
/// that is not a string, were run without a GPU (create exited 0).
#[test]
fn unreadable_specs_and_null_values_are_refused() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = warm_engine(&node);
    // runc's decoder takes invalid UTF-8 (as U+FFFD); serde_json does not.
    let b = raw_bundle(&[], |t| {
        t.replace("\"gpushare-test\"", "\"gpushare-\u{1}\"")
            .replace('\u{1}', "\u{7f}")
            .into_bytes()
            .into_iter()
            .map(|c| if c == 0x7f { 0xff } else { c })
            .collect()
    });
    refused_spec(
        &engine,
        &b,
        &[
            "config.json mentions a GPU request (gpu.* or GPUSHARE_*) but cannot be read as one",
            "invalid unicode",
        ],
    );
    let b = Bundle::new("true", &[], &[]);
    b.edit_config(|s| s["annotations"]["gpu.profile"] = serde_json::Value::Null);
    refused_spec(
        &engine,
        &b,
        &["annotation gpu.profile is null, not a string; accepted: a string"],
    );
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    b.edit_config(|s| s["annotations"]["gpu.device"] = serde_json::json!(0));
    refused_spec(&engine, &b, &["annotation gpu.device is a number"]);
}

/// Issue 16, finding 8: ambiguous requests were granted (the last of two values, a key that
/// belongs to no mode, a typo'd key ignored); each is refused, naming what was found.
#[test]
fn ambiguous_requests_are_refused_naming_what_was_found() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = warm_engine(&node);
    let cases: Vec<(Bundle, Vec<&str>)> = vec![
        (
            Bundle::new(
                "true",
                &[],
                &["GPUSHARE_PROFILE=1g.10gb", "GPUSHARE_PROFILE=2g.20gb"],
            ),
            vec![r#"env GPUSHARE_PROFILE is given 2 times ("1g.10gb", "2g.20gb")"#],
        ),
        (
            Bundle::new(
                "true",
                &[("gpu.profile", "1g.10gb"), ("gpu.mps.memory", "4G")],
                &[],
            ),
            vec!["annotation gpu.mps.memory belongs to an MPS share (gpu.mps), not to annotation gpu.profile"],
        ),
        (
            Bundle::new("true", &[("gpu.prfile", "1g.10gb")], &[]),
            vec![r#"annotation "gpu.prfile" is not one of gpushare's"#, "accepted: gpu.profile"],
        ),
        (
            Bundle::new(
                "true",
                &[("gpu.profile", "1g.10gb"), ("gpu.prfile", "2g.20gb")],
                &[],
            ),
            vec![r#"annotation "gpu.prfile" is not one of gpushare's"#],
        ),
        // Duplicate keys: serde_json keeps the last, runc's decoder merges objects.
        (
            raw_bundle(&[], |t| {
                t.replacen(
                    "\"annotations\": {",
                    "\"annotations\": {\n    \"gpu.profile\": \"7g.80gb\",",
                    1,
                )
                .into_bytes()
            }),
            vec![r#"key "gpu.profile" is given twice in "annotations""#, "line "],
        ),
        (
            raw_bundle(&[], |t| {
                t.replacen("\"linux\": {", "\"linux\": {\"devices\": [],", 1)
                    .replacen("\"namespaces\"", "\"devices\": [], \"namespaces\"", 1)
                    .into_bytes()
            }),
            vec![r#"key "devices" is given twice in "linux""#],
        ),
        (
            raw_bundle(&[], |t| {
                t.replacen("\"cwd\": \"/\"", "\"cwd\": \"/\", \"cwd\": \"/tmp\"", 1)
                    .into_bytes()
            }),
            vec![r#"key "cwd" is given twice in "process""#],
        ),
        // A field runc reads under another spelling (Go folds case), serde_json does not.
        (
            raw_bundle(&[], |t| {
                t.replacen("\"hostname\"", "\"Linux\": {}, \"hostname\"", 1)
                    .into_bytes()
            }),
            vec![r#"key "Linux" in the top level is read by runc as "linux""#],
        ),
    ];
    for (bundle, wants) in &cases {
        refused_spec(&engine, bundle, wants);
    }
    // A plain request still takes the warm path, and a container's own env is no request
    // beside an annotation even when it repeats a variable.
    let b = Bundle::new(
        "true",
        &[("gpu.profile", "1g.10gb")],
        &["GPUSHARE_PROFILE=x", "GPUSHARE_PROFILE=y"],
    );
    engine.run_to_end(&b, &unique("plain"));
}

/// Docker's and Podman's default device cgroup rules (moby's and containers/common's), which
/// every container of theirs carries: none reaches the driver's nodes.
fn engine_default_rules() -> serde_json::Value {
    serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "access": "m"},
        {"allow": true, "type": "b", "access": "m"},
        {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 7, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 8, "access": "rwm"},
        {"allow": true, "type": "c", "major": 1, "minor": 9, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 0, "access": "rwm"},
        {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
        {"allow": true, "type": "c", "major": 136, "access": "rwm"},
        {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"}
    ])
}

fn with_rules(rules: serde_json::Value) -> Bundle {
    let b = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    b.edit_config(|s| s["linux"]["resources"]["devices"] = rules);
    b
}

/// Issue 16, finding 2: runc reads `"minor": -1` (and a null or missing minor or major, and a
/// missing type) as a wildcard; `refuse_privileged` missed -1 and a missing type, and counted
/// the engines' mknod-only `c *:* m` as privileged.
#[test]
fn refuse_privileged_counts_every_wildcard_runc_reads() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    node.configure("[policy]\nrefuse_privileged = true");
    let engine = Engine::new(&node, Runtime::Runc);
    for (rule, want) in [
        (
            serde_json::json!({"allow": true, "type": "c", "major": 241, "minor": -1, "access": "rwm"}),
            "allows every minor of major 241 (nvidia-caps",
        ),
        (
            serde_json::json!({"allow": true, "major": 241, "minor": null, "access": "rw"}),
            "linux.resources.devices[1] allows a 241:*",
        ),
        (
            serde_json::json!({"allow": true, "type": "c", "major": -1, "minor": 120, "access": "r"}),
            "allows a minor of every major",
        ),
    ] {
        let b = with_rules(serde_json::json!([{"allow": false, "access": "rwm"}, rule]));
        refused_spec(&engine, &b, &["policy.refuse_privileged", want]);
    }
    let mut rules = engine_default_rules();
    rules.as_array_mut().unwrap().push(
        serde_json::json!({"allow": true, "type": "c", "major": 195, "minor": 255, "access": "rwm"}),
    );
    let printed = engine.run_to_end(&with_rules(rules), &unique("docker"));
    assert!(printed.contains("CUDA_VISIBLE_DEVICES=MIG-"), "{printed}");
}

/// Issue 16, finding 2: a GPU request from a spec that brings the driver's nodes or rules
/// itself (another tenant's capability node at /opt/evil) kept them, policy on or off; it is
/// refused unless `policy.allow_foreign_devices` is set.
#[test]
fn foreign_driver_nodes_are_refused_unless_the_policy_allows_them() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = warm_engine(&node);
    // Another tenant holds a slice; its capability nodes are what a hostile spec names.
    let victim = Bundle::new("sleep 30", &[("gpu.profile", "2g.20gb")], &[]);
    let victim_id = unique("victim");
    assert!(engine.create(&victim, &victim_id).status.success());
    let caps: Vec<serde_json::Value> = victim.config()["linux"]["devices"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["path"].as_str().unwrap().contains("nvidia-cap"))
        .cloned()
        .collect();
    assert_eq!(caps.len(), 2);
    let (major, minor) = (caps[1]["major"].clone(), caps[1]["minor"].clone());
    let evil_node = serde_json::json!({"path": "/opt/evil", "type": "c", "major": major, "minor": minor, "fileMode": 438});
    let evil_rule = serde_json::json!({"allow": true, "type": "c", "major": major, "minor": minor, "access": "rwm"});

    let hostile = || {
        let b = with_rules(engine_default_rules());
        b.edit_config(|s| {
            s["linux"]["devices"] = serde_json::json!([evil_node.clone()]);
            s["linux"]["resources"]["devices"]
                .as_array_mut()
                .unwrap()
                .push(evil_rule.clone());
        });
        b
    };
    refused_spec(
        &engine,
        &hostile(),
        &[
            &format!("linux.devices[0] (\"/opt/evil\", c {major}:{minor}, nvidia-caps"),
            "policy.allow_foreign_devices",
        ],
    );
    let rule_only = with_rules(engine_default_rules());
    rule_only.edit_config(|s| {
        s["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(evil_rule.clone())
    });
    refused_spec(
        &engine,
        &rule_only,
        &[&format!(
            "linux.resources.devices[12] allows c {major}:{minor} (nvidia-caps"
        )],
    );
    let wildcard = with_rules(serde_json::json!([
        {"allow": false, "access": "rwm"},
        {"allow": true, "type": "c", "major": major, "minor": -1, "access": "rwm"}]));
    refused_spec(&engine, &wildcard, &["allows every minor of major"]);

    // What engines put in every spec does not stand in the way, and the entry binary grants
    // it by itself (its grant is a journal line).
    let docker = with_rules(engine_default_rules());
    let id = unique("docker");
    let out = engine.create(&docker, &id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let journal = std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::journal::NAME))
        .unwrap_or_default();
    assert!(
        journal
            .lines()
            .any(|l| l.starts_with('+') && l.split(' ').nth(1) == Some(id.as_str())),
        "a warm grant by the entry binary: {journal}"
    );
    let printed = engine.start_and_wait(&docker, &id);
    assert!(printed.contains("CUDA_VISIBLE_DEVICES=MIG-"), "{printed}");
    assert!(engine.delete(&id).status.success());

    // An operator who trusts such specs allows them.
    node.configure("[policy]\nallow_foreign_devices = true");
    let printed = engine.run_to_end(&hostile(), &unique("allowed"));
    assert!(printed.contains("CUDA_VISIBLE_DEVICES=MIG-"), "{printed}");
    let _ = engine.delete(&victim_id);
}

/// Podman's hooks-only mode reads the spec in the precreate hook: it refuses what the wrapper
/// refuses (a spec read one way by runc and another by serde_json granted before the fix).
#[test]
fn the_precreate_hook_refuses_what_the_wrapper_refuses() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let mut not_utf8 = br#"{"ociVersion":"1.0.2","hostname":"x"#.to_vec();
    not_utf8.extend_from_slice(b"\xff\",\"annotations\":{\"gpu.profile\":\"1g.10gb\"}}");
    for (spec, want) in [
        (
            br#"{"ociVersion":"1.0.2","annotations":{"gpu.profile":"7g.80gb","gpu.profile":"1g.10gb"}}"#.to_vec(),
            r#"key "gpu.profile" is given twice in "annotations""#,
        ),
        (
            not_utf8,
            "the spec on stdin mentions a GPU request (gpu.* or GPUSHARE_*) but cannot be read as one",
        ),
        (
            br#"{"ociVersion":"1.0.2","annotations":{"gpu.profile":"1g.10gb"},"linux":{"devices":[{"path":"/opt/evil","type":"c","major":241,"minor":30}]}}"#.to_vec(),
            r#"linux.devices[0] ("/opt/evil", c 241:30"#,
        ),
    ] {
        let mut c = std::process::Command::new(HOOK);
        c.args(["precreate", "--config"]).arg(node.config());
        let out = with_stdin(&mut c, &spec);
        let err = text(&out.stderr);
        assert!(!out.status.success(), "{}: {err}", String::from_utf8_lossy(&spec));
        assert!(out.stdout.is_empty(), "no spec for a refused request");
        assert!(err.contains(want), "{want:?} missing in: {err}");
    }
    assert!(node.ledger().instances.is_empty(), "nothing allocated");
}

/// A spec gpushare edited for a lease since released names that slice's capability nodes,
/// which may be another tenant's by now: created again (an engine reusing its bundle), the
/// new grant was added beside them and the container could open both slices.
#[test]
fn a_spec_edited_for_a_released_lease_is_refused() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let engine_spec = b.config_bytes();
    let first = unique("first");
    assert!(engine.create(&b, &first).status.success());
    assert!(engine.delete(&first).status.success());
    // Another tenant now holds that very slice.
    let other = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let other_id = unique("other");
    assert!(engine.create(&other, &other_id).status.success());
    let stale = serde_json::to_string(&b.config()["linux"]["devices"]).unwrap();
    let theirs = other.config()["linux"]["devices"].clone();
    let caps: Vec<&str> = theirs
        .as_array()
        .unwrap()
        .iter()
        .filter(|d| d["major"] == 241)
        .map(|d| d["path"].as_str().unwrap())
        .collect();
    assert_eq!(caps.len(), 2);
    assert!(
        caps.iter().all(|p| stale.contains(p)),
        "the edited spec names the other tenant's nodes: {stale}"
    );
    refused_spec(
        &engine,
        &b,
        &["linux.devices[", "policy.allow_foreign_devices"],
    );
    // The engine's own spec is granted as ever.
    std::fs::write(b.path().join("config.json"), &engine_spec).unwrap();
    let printed = engine.run_to_end(&b, &unique("again"));
    assert!(printed.contains("CUDA_VISIBLE_DEVICES=MIG-"), "{printed}");
    let _ = engine.delete(&other_id);
}
