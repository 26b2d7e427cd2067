//! Operations: the warm path needs no NVML, `gpusharectl gc`, `doctor`, `metrics` and the status
//! counters, and the trust policy (privileged containers, bundle files, capabilities).
use crate::common;
use crate::invariants;

use common::*;
use std::process::{Command, Stdio};

fn set_nvml(node: &SimNode, lib: &str) {
    let text = std::fs::read_to_string(node.config()).unwrap();
    let text: Vec<String> = text
        .lines()
        .map(|l| {
            if l.starts_with("nvml_library") {
                format!("nvml_library = {lib:?}")
            } else {
                l.to_string()
            }
        })
        .collect();
    std::fs::write(node.config(), text.join("\n") + "\n").unwrap();
}

fn gpu_bundle(profile: &str) -> Bundle {
    Bundle::new("true", &[("gpu.profile", profile)], &[])
}

#[test]
fn warm_grants_open_no_nvml() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("first"));
    let real = node.cfg().nvml_library;
    // NVML cannot be loaded from here on: a grant that needed it would fail.
    set_nvml(&node, "/nonexistent/libnvidia-ml.so.1");
    for _ in 0..3 {
        engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("warm"));
    }
    let st = node.ledger();
    assert_eq!((st.stats.grants_cold, st.stats.grants_warm), (1, 3));
    // A request the pool cannot serve needs NVML, and says where it looked.
    let b = gpu_bundle("2g.20gb");
    let out = engine.create(&b, &unique("cold"));
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("cannot load NVML from /nonexistent"), "{err}");
    set_nvml(&node, real.to_str().unwrap());
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

/// A container that vanished without its hook running (as when the hook timed out on a busy
/// ledger): its poststop hook cannot read gpushare's config while runc deletes it.
fn vanish(node: &SimNode, engine: &Engine, id: &str) {
    let aside = node.root().join("config.toml.aside");
    std::fs::rename(node.config(), &aside).unwrap();
    let out = run(&mut engine.bare(&["delete", "--force", id]));
    std::fs::rename(&aside, node.config()).unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
}

#[test]
fn gc_releases_vanished_containers_after_the_grace_and_dry_run_changes_nothing() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = gpu_bundle("1g.10gb");
    let id = unique("gone");
    assert!(engine.create(&b, &id).status.success());
    vanish(&node, &engine, &id);
    let before = std::fs::read(node.cfg().state_dir.join(gpushare_state::ledger::NAME)).unwrap();

    let dry = node.ctl(&["gc", "--dry-run", "--grace", "0"]);
    let out = text(&dry.stdout);
    assert!(
        dry.status.success()
            && out.contains(&format!("would release 1g.10gb slice of container {id}")),
        "{out}"
    );
    assert_eq!(
        std::fs::read(node.cfg().state_dir.join(gpushare_state::ledger::NAME)).unwrap(),
        before,
        "dry run wrote the ledger"
    );

    let young = node.ctl(&["gc"]);
    let out = text(&young.stdout);
    assert!(
        out.contains("kept lease of") && out.contains("grace 60 s"),
        "{out}"
    );
    assert!(node.ledger().lease_of(&id).is_some());

    let json = node.ctl(&["gc", "--grace", "0", "--json"]);
    let report: serde_json::Value = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(
        report["actions"][0]["action"], "release_lease",
        "{report:#}"
    );
    assert_eq!(report["actions"][0]["container_id"], id.as_str());
    assert!(node.ledger().lease_of(&id).is_none());
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn gc_reports_foreign_instances_and_never_touches_them() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let out = node.sim(&["create-instance", "--gpu", "0", "--profile", "2g.20gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for _ in 0..2 {
        let gc = node.ctl(&["gc", "--grace", "0"]);
        let out = text(&gc.stdout);
        assert!(
            gc.status.success() && out.contains("foreign: 2g.20gb") && out.contains("left alone"),
            "{out}"
        );
    }
    let sim = node.sim_state();
    assert_eq!(
        sim["gpus"][0]["gpu_instances"].as_array().unwrap().len(),
        1,
        "foreign instance kept"
    );
    let doctor = node.ctl(&["doctor"]);
    assert!(
        text(&doctor.stdout).contains("made by someone else"),
        "{}",
        text(&doctor.stdout)
    );
}

#[test]
fn gc_destroys_instances_idle_past_the_timeout() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    // Idle times are whole seconds: a timeout of 3 leaves the first gc, right after the
    // release, two seconds of slack on a busy machine.
    node.configure("[pool]\nidle_timeout_s = 3");
    let engine = Engine::new(&node, Runtime::Runc);
    engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("idle"));
    let fresh = node.ctl(&["gc"]);
    assert!(
        text(&fresh.stdout).contains("nothing to repair"),
        "{}",
        text(&fresh.stdout)
    );
    std::thread::sleep(std::time::Duration::from_millis(4100));
    let gc = node.ctl(&["gc"]);
    assert!(
        text(&gc.stdout).contains("destroy idle 1g.10gb"),
        "{}",
        text(&gc.stdout)
    );
    assert!(node.ledger().instances.is_empty());
    assert!(node.sim_state()["gpus"][0]["gpu_instances"]
        .as_array()
        .unwrap()
        .is_empty());
}

#[test]
fn metrics_and_status_show_hit_rate_refusals_and_latency() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("cold"));
    engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("warm"));
    let big = gpu_bundle("7g.80gb");
    let holder = unique("big");
    assert!(engine.create(&big, &holder).status.success());
    let refused = engine.create(&gpu_bundle("1g.10gb"), &unique("refused"));
    assert!(!refused.status.success());

    let m = node.ctl(&["metrics"]);
    assert!(m.status.success(), "{}", text(&m.stderr));
    let m = text(&m.stdout);
    for want in [
        "gpushare_nvml_up 1",
        "gpushare_grants_total{gpu=\"0\",",
        "path=\"warm\"} 1",
        "path=\"cold\"} 2",
        "gpushare_refused_no_room_total{gpu=\"0\"",
        "gpushare_allocation_seconds_count 4",
        "gpushare_errors_total{kind=\"no_room\"} 1",
        "profile=\"7g.80gb\",state=\"busy\"} 1",
        "gpushare_leases{gpu=\"0\"",
    ] {
        assert!(m.contains(want), "metrics lack {want}:\n{m}");
    }
    for line in m.lines().filter(|l| !l.is_empty() && !l.starts_with('#')) {
        let (name, value) = line.rsplit_once(' ').unwrap();
        assert!(name.starts_with("gpushare_"), "{line}");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("not a number: {line}"));
    }
    let status = node.ctl(&["status"]);
    let s = text(&status.stdout);
    assert!(
        s.contains("grants: 1 warm, 2 cold (warm-pool hit rate 33%); refused for lack of room: 1"),
        "{s}"
    );
    let json = node.status_json();
    assert_eq!(json["gpus"][0]["counters"]["refused_no_room"], 1);
    assert!(engine.delete(&holder).status.success());
}

#[test]
fn doctor_says_what_is_wrong() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, false);
    let _engine = Engine::new(&node, Runtime::Runc);
    let out = node.ctl(&["doctor", "--json"]);
    let checks: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let level = |name: &str| {
        checks
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("no {name} check: {checks:#}"))["level"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(level("nvml"), "ok", "{checks:#}");
    assert_eq!(level("GPU 0"), "warn", "MIG off is a warning: {checks:#}");
    assert_eq!(level("runtime"), "ok");
    assert_eq!(level("hook"), "ok");
    assert_eq!(level("wrapper"), "ok", "{checks:#}");
    assert_eq!(level("fast path"), "ok", "{checks:#}");
    assert_eq!(level("driver"), "ok");
    assert!(["ok", "warn"].contains(&level("engines").as_str()));
    assert!(out.status.success(), "{checks:#}");
    let text_out = text(&node.ctl(&["doctor"]).stdout);
    assert!(text_out.contains("nvidia-smi -i 0 -mig 1"), "{text_out}");

    node.configure("pool.lock_timeout_ms = 1000");
    let out = node.ctl(&["doctor"]);
    assert!(
        text(&out.stdout).contains("WARN  fast path"),
        "a top the entry binary cannot read: {}",
        text(&out.stdout)
    );
    set_nvml(&node, "/nonexistent/libnvidia-ml.so.1");
    let out = node.ctl(&["doctor"]);
    assert!(!out.status.success(), "a missing NVML fails doctor");
    assert!(
        text(&out.stdout).contains("FAIL  nvml"),
        "{}",
        text(&out.stdout)
    );
}

#[test]
fn privileged_containers_are_refused_when_the_policy_says_so() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    node.configure("[policy]\nrefuse_privileged = true");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = gpu_bundle("1g.10gb");
    let mut spec = b.config();
    spec["linux"]["resources"]["devices"] = serde_json::json!([{"allow": true, "access": "rwm"}]);
    std::fs::write(
        b.path().join("config.json"),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();
    let before = b.config_bytes();
    let out = engine.create(&b, &unique("priv"));
    let err = text(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("policy.refuse_privileged")
            && err.contains("every device"),
        "{err}"
    );
    assert_eq!(b.config_bytes(), before, "spec untouched");
    assert!(node.ledger().instances.is_empty(), "nothing allocated");
    engine.run_to_end(&gpu_bundle("1g.10gb"), &unique("plain"));
}

#[test]
fn a_spec_that_is_not_a_regular_file_is_refused() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = gpu_bundle("1g.10gb");
    let real = b.path().join("real.json");
    std::fs::rename(b.path().join("config.json"), &real).unwrap();
    std::os::unix::fs::symlink(&real, b.path().join("config.json")).unwrap();
    let out = engine.create(&b, &unique("link"));
    let err = text(&out.stderr);
    assert!(
        !out.status.success() && err.contains("is a symlink"),
        "{err}"
    );
    assert!(node.ledger().instances.is_empty());
}

#[test]
fn the_hook_releases_with_no_capabilities() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = gpu_bundle("1g.10gb");
    let id = unique("caps");
    assert!(engine.create(&b, &id).status.success());
    // Hold the hook inside its release (a failpoint pause) to read its capability sets.
    let mut hook = Command::new(HOOK)
        .args(["poststop", "--config"])
        .arg(node.config())
        .env("GPUSHARE_FAILPOINT", "release.locked:sleep=1500")
        .stdin(Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    let state = serde_json::json!({"id": id, "status": "stopped"});
    hook.stdin
        .take()
        .unwrap()
        .write_all(state.to_string().as_bytes())
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(700));
    let status = std::fs::read_to_string(format!("/proc/{}/status", hook.id())).unwrap();
    for set in ["CapInh", "CapPrm", "CapEff", "CapAmb"] {
        let line = status.lines().find(|l| l.starts_with(set)).unwrap();
        assert!(line.ends_with("0000000000000000"), "{line}");
    }
    assert!(hook.wait().unwrap().success());
    assert!(
        node.ledger().lease_of(&id).is_none(),
        "released without capabilities"
    );
    assert!(engine.delete(&id).status.success());
}

/// An operator frees a lease no runtime state names (e.g. a Podman precreate claim whose
/// container never came to be).
#[test]
fn ctl_release_frees_a_named_lease() {
    let node = SimNode::new("h100-80gb", 1, true);
    let cfg = node.cfg();
    let who = gpushare_core::ledger::Claimant {
        container_id: "precreate-abc",
        runtime_root: None,
    };
    gpushare_core::allocator::allocate(&cfg, "1g.10gb", None, &who).unwrap();
    let out = node.ctl(&["release", "precreate-abc"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(node.ledger().lease_of("precreate-abc").is_none());
    let out = node.ctl(&["release", "precreate-abc"]);
    assert!(!out.status.success() && text(&out.stderr).contains("holds nothing"));
}
