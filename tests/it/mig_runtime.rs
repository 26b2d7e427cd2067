//! MIG slices end to end through gpushare in front of real runc and crun, on a simulated H100.
use crate::common;

use common::*;

/// Hex "major:minor" as busybox `stat -c %t:%T` prints it.
fn hex(major: u32, minor: u32) -> String {
    format!("{major:x}:{minor:x}")
}

/// `warm`: an earlier container made the instance and released it, so this one is granted by
/// the `gpushare` entry binary from the ledger's offers (a journal line), not the full wrapper.
fn one_slice_sees_exactly_its_nodes(rt: Runtime, warm: bool) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    if warm {
        let first = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        engine.run_to_end(&first, &unique("first"));
    }
    let bundle = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("mig1g");
    let out = engine.create(&bundle, &id);
    assert!(out.status.success(), "create: {}", text(&out.stderr));
    let journal = std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::journal::NAME))
        .unwrap_or_default();
    assert_eq!(
        journal
            .lines()
            .any(|l| l.starts_with('+') && l.contains(&format!(" {id} "))),
        warm,
        "granted by the entry binary when warm: {journal}"
    );

    // While the container exists, the ledger and the simulated driver agree on its slice.
    let ledger = node.ledger();
    let rec = ledger
        .instances
        .iter()
        .find(|r| r.lease.as_ref().is_some_and(|l| l.container_id == id));
    let rec = rec.expect("a lease for the container");
    let made = rec.made.clone().expect("instance made");
    let be = gpushare_core::nvml::Backend::open(&node.cfg()).unwrap();
    assert_eq!(
        be.mig_uuid(0, made.gi, made.ci).unwrap(),
        made.mig_uuid,
        "the driver's UUID of GI {} CI {}",
        made.gi,
        made.ci
    );
    drop(be);
    let printed = engine.start_and_wait(&bundle, &id);

    assert_eq!(
        env_seen(&printed, "CUDA_VISIBLE_DEVICES"),
        made.mig_uuid,
        "{printed}"
    );
    assert!(made.mig_uuid.starts_with("MIG-"), "{}", made.mig_uuid);
    let seen = nodes_seen(&printed);
    let paths: Vec<&str> = seen.iter().map(|(p, _, _)| p.as_str()).collect();
    let gi_node = format!("/dev/nvidia-caps/nvidia-cap{}", made.gi_cap_minor);
    let ci_node = format!("/dev/nvidia-caps/nvidia-cap{}", made.ci_cap_minor);
    let mut expected = vec![
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia0",
        "/dev/nvidiactl",
        &gi_node,
        &ci_node,
    ];
    expected.sort();
    let mut got = paths.clone();
    got.sort();
    assert_eq!(got, expected, "exactly the slice's nodes:\n{printed}");
    for (path, dev, result) in &seen {
        assert!(
            result.contains("No such device or address"),
            "{path} must open as allowed (ENXIO), got {result:?}"
        );
        assert!(
            !result.contains("Operation not permitted"),
            "{path}: {result}"
        );
        let want = match path.as_str() {
            "/dev/nvidiactl" => hex(195, 255),
            "/dev/nvidia0" => hex(195, 0),
            "/dev/nvidia-uvm" => hex(238, 0),
            "/dev/nvidia-uvm-tools" => hex(238, 1),
            p if p == gi_node => hex(241, made.gi_cap_minor),
            p if p == ci_node => hex(241, made.ci_cap_minor),
            p => panic!("unexpected node {p}"),
        };
        assert_eq!(dev, &want, "{path}");
    }
    // mig-minors says which minors belong to this instance.
    let minors =
        std::fs::read_to_string(node.root().join("proc/driver/nvidia-caps/mig-minors")).unwrap();
    assert!(minors
        .lines()
        .any(|l| l == format!("gpu0/gi{}/access {}", made.gi, made.gi_cap_minor)));
    assert!(minors.lines().any(|l| l
        == format!(
            "gpu0/gi{}/ci{}/access {}",
            made.gi, made.ci, made.ci_cap_minor
        )));

    let del = engine.delete(&id);
    assert!(del.status.success(), "delete: {}", text(&del.stderr));
    assert!(
        node.ledger().lease_of(&id).is_none(),
        "released after delete"
    );
    let status = node.status_json();
    assert_eq!(status["leases"].as_array().unwrap().len(), 0, "{status:#}");
}

#[test]
fn runc_warm_slice_granted_by_the_entry_binary_sees_exactly_its_nodes() {
    one_slice_sees_exactly_its_nodes(Runtime::Runc, true);
}

#[test]
fn crun_warm_slice_granted_by_the_entry_binary_sees_exactly_its_nodes() {
    one_slice_sees_exactly_its_nodes(Runtime::Crun, true);
}

#[test]
fn runc_one_slice_sees_exactly_its_nodes() {
    one_slice_sees_exactly_its_nodes(Runtime::Runc, false);
}

#[test]
fn crun_one_slice_sees_exactly_its_nodes() {
    one_slice_sees_exactly_its_nodes(Runtime::Crun, false);
}

/// A node the device cgroup does not allow opens with EPERM: the check above can fail.
#[test]
fn runc_unallowed_node_is_denied() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new(SHOW_GPU, &[], &[]);
    let mut spec = bundle.config();
    spec["linux"]["devices"] = serde_json::json!([{"path": "/dev/nvidia-caps/nvidia-cap99", "type": "c", "major": 241, "minor": 99, "fileMode": 438}]);
    std::fs::write(
        bundle.path().join("config.json"),
        serde_json::to_vec(&spec).unwrap(),
    )
    .unwrap();
    let id = unique("denied");
    let printed = engine.run_to_end(&bundle, &id);
    let seen = nodes_seen(&printed);
    assert_eq!(seen.len(), 1, "{printed}");
    assert!(seen[0].2.contains("Operation not permitted"), "{printed}");
}

fn three_slices_then_refusal(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    let ids: Vec<String> = (0..3).map(|_| unique("mig2g")).collect();
    let bundles: Vec<Bundle> = (0..3)
        .map(|_| Bundle::new(SHOW_GPU, &[("gpu.profile", "2g.20gb")], &[]))
        .collect();
    // Three creates at once.
    std::thread::scope(|s| {
        let handles: Vec<_> = ids
            .iter()
            .zip(&bundles)
            .map(|(id, b)| s.spawn(|| engine.create(b, id)))
            .collect();
        for h in handles {
            let out = h.join().unwrap();
            assert!(out.status.success(), "create: {}", text(&out.stderr));
        }
    });
    let mut uuids: Vec<String> = ids
        .iter()
        .zip(&bundles)
        .map(|(id, b)| env_seen(&engine.start_and_wait(b, id), "CUDA_VISIBLE_DEVICES"))
        .collect();
    uuids.sort();
    uuids.dedup();
    assert_eq!(uuids.len(), 3, "three different instances: {uuids:?}");

    // What an operator sees while the three hold their slices.
    let status = node.status_json();
    let gpu = &status["gpus"][0];
    assert_eq!(gpu["mig_enabled"], true, "{status:#}");
    let busy: Vec<&serde_json::Value> = gpu["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "busy")
        .collect();
    assert_eq!(busy.len(), 3, "{status:#}");
    let mut starts: Vec<u64> = Vec::new();
    for i in &busy {
        assert_eq!(i["profile"], "2g.20gb", "{status:#}");
        let owner = i["container_id"].as_str().unwrap();
        assert!(ids.iter().any(|id| id == owner), "{owner} is one of ours");
        assert!(uuids.contains(&i["mig_uuid"].as_str().unwrap().to_string()));
        assert_eq!(i["placement"]["size"], 2, "{status:#}");
        starts.push(i["placement"]["start"].as_u64().unwrap());
    }
    starts.sort();
    starts.dedup();
    assert_eq!(starts.len(), 3, "three placements: {status:#}");
    let free = |name: &str| {
        gpu["free"]
            .as_array()
            .unwrap()
            .iter()
            .find(|f| f[0] == name)
            .map(|f| f[1].as_u64().unwrap())
    };
    assert_eq!(free("2g.20gb"), Some(0), "{status:#}");
    assert_eq!(free("1g.10gb"), Some(1), "{status:#}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let leases = status["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 3, "{status:#}");
    for l in leases {
        let since = l["since"].as_u64().unwrap();
        assert!(
            since <= now && now - since < 120,
            "lease since {since}, now {now}"
        );
        assert_eq!(l["profile"], "2g.20gb");
    }
    let text_status = text(&node.ctl(&["status"]).stdout);
    for id in &ids {
        assert!(text_status.contains(id.as_str()), "{text_status}");
    }

    let fourth = Bundle::new(SHOW_GPU, &[("gpu.profile", "2g.20gb")], &[]);
    let before = fourth.config_bytes();
    let id4 = unique("mig2g-4th");
    let out = engine.create(&fourth, &id4);
    assert!(!out.status.success(), "a fourth 2g.20gb cannot fit");
    let err = text(&out.stderr);
    assert!(err.contains("no free 2g.20gb slice on GPU 0"), "{err}");
    let log = std::fs::read_to_string(fourth.path().join("runtime-log.json")).unwrap();
    let last: serde_json::Value = serde_json::from_str(log.lines().last().unwrap()).unwrap();
    assert!(
        last["msg"]
            .as_str()
            .unwrap()
            .starts_with("gpushare: no free 2g.20gb slice"),
        "{log}"
    );
    assert_eq!(
        fourth.config_bytes(),
        before,
        "config.json untouched on refusal"
    );
    assert!(engine.state(&id4).is_none(), "no container was created");

    for id in &ids {
        assert!(engine.delete(id).status.success());
    }
    let status = node.status_json();
    assert_eq!(status["leases"].as_array().unwrap().len(), 0, "{status:#}");
    let idle = status["gpus"][0]["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "idle")
        .count();
    assert_eq!(idle, 3, "released slices stay warm in the pool: {status:#}");
}

#[test]
fn runc_three_slices_then_refusal() {
    three_slices_then_refusal(Runtime::Runc);
}

#[test]
fn crun_three_slices_then_refusal() {
    three_slices_then_refusal(Runtime::Crun);
}

/// A released slice is granted again from the pool, without making a new instance.
#[test]
fn runc_warm_pool_reuses_the_released_instance() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let first = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let a = env_seen(
        &engine.run_to_end(&first, &unique("warm-a")),
        "CUDA_VISIBLE_DEVICES",
    );
    let second = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &[]);
    let b = env_seen(
        &engine.run_to_end(&second, &unique("warm-b")),
        "CUDA_VISIBLE_DEVICES",
    );
    assert_eq!(a, b, "the idle instance is reused");
    let stats = node.ledger().stats;
    assert_eq!((stats.grants_cold, stats.grants_warm), (1, 1));
}

fn no_request_is_byte_identical(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, rt);
    // Nothing of gpushare's in the spec (settled by the entry binary's byte scan), and a spec
    // that mentions `gpu.` and `GPUSHARE_` without asking for anything (parsed by the full
    // wrapper, which finds no request): both reach the runtime byte for byte.
    let plain = Bundle::new("echo hello", &[("org.example/other", "x")], &[]);
    let lookalike = Bundle::new(
        "echo hello",
        &[("org.example/gpu.vendor", "nvidia")],
        &["NOT_GPUSHARE_PROFILE=1g.10gb"],
    );
    for bundle in [&plain, &lookalike] {
        let before = bundle.config_bytes();
        let id = unique("plain");
        let out = engine.create(bundle, &id);
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(bundle.config_bytes(), before, "config.json byte-identical");
        assert_eq!(engine.start_and_wait(bundle, &id).trim(), "hello");
        assert!(engine.delete(&id).status.success());
    }
    assert!(node.ledger().instances.is_empty(), "nothing allocated");
}

#[test]
fn runc_no_request_is_byte_identical() {
    no_request_is_byte_identical(Runtime::Runc);
}

#[test]
fn crun_no_request_is_byte_identical() {
    no_request_is_byte_identical(Runtime::Crun);
}

/// Old Docker engines cannot pass annotations: the env fallback asks instead.
#[test]
fn runc_env_fallback_requests_a_slice() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new(SHOW_GPU, &[], &["GPUSHARE_PROFILE=1g.10gb"]);
    let printed = engine.run_to_end(&bundle, &unique("envreq"));
    assert!(
        env_seen(&printed, "CUDA_VISIBLE_DEVICES").starts_with("MIG-"),
        "{printed}"
    );
}

/// The poststop hook alone releases the slice (e.g. when the engine's delete never reaches us).
#[test]
fn runc_poststop_hook_releases() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("hook");
    assert!(engine.create(&bundle, &id).status.success());
    engine.start_and_wait(&bundle, &id);
    assert!(node.ledger().lease_of(&id).is_some());
    // Bare runc's delete runs the poststop hook; gpushare's delete is not involved.
    let out = run(&mut engine.bare(&["delete", &id]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        node.ledger().lease_of(&id).is_none(),
        "the hook released the slice"
    );
}

/// The poststop hook gives up in bounded time while another process holds the ledger, saying
/// so; `delete` (or `gc`) releases the slice afterwards. Both programs: the full
/// `gpushare-hook`, and the entry binary run under that name, as the hook gpushare writes into
/// specs runs it (it waits briefly, then hands over to the full hook).
#[test]
fn poststop_hook_is_bounded_while_the_ledger_is_busy() {
    for program in [HOOK, ENTRY] {
        let node = SimNode::new("h100-80gb", 1, true);
        node.configure("[pool]\nhook_lock_timeout_ms = 300\n");
        let cfg = node.cfg();
        let who = gpushare_core::ledger::Claimant {
            container_id: "busy-1",
            runtime_root: None,
        };
        gpushare_core::allocator::allocate(&cfg, "1g.10gb", None, &who).unwrap();
        let held = gpushare_core::ledger::Ledger::new(&cfg.state_dir)
            .lock(std::time::Duration::from_secs(1))
            .unwrap();
        let start = std::time::Instant::now();
        let mut hook = std::process::Command::new(program);
        std::os::unix::process::CommandExt::arg0(&mut hook, "gpushare-hook")
            .args(["poststop", "--config"])
            .arg(node.config());
        let out = with_stdin(
            &mut hook,
            br#"{"ociVersion":"1.0.2","id":"busy-1","status":"stopped","bundle":"/x"}"#,
        );
        let waited = start.elapsed();
        assert!(
            !out.status.success(),
            "{program}: the hook reports that it could not release"
        );
        assert!(
            text(&out.stderr).contains("is busy"),
            "{program}: {}",
            text(&out.stderr)
        );
        assert!(
            waited < std::time::Duration::from_secs(5),
            "{program}: bounded: {waited:?}"
        );
        drop(held);
        assert!(
            node.ledger().lease_of("busy-1").is_some(),
            "{program}: nothing half-done"
        );
        let released =
            gpushare_core::allocator::release(&cfg, "busy-1", std::time::Duration::from_secs(5))
                .unwrap();
        assert!(released, "{program}: a later release finds the lease");
    }
}

/// `[log]` sends gpushare's own log to a file, at the configured level.
#[test]
fn runc_log_file_records_grants() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let log = node.root().join("gpushare.log");
    node.configure(&format!(
        "[log]\nlevel = \"info\"\nfile = {:?}\n",
        log.display().to_string()
    ));
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("logged");
    engine.run_to_end(&bundle, &id);
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("granted") && text.contains(&id), "{text}");
    assert!(text.contains("INFO"), "{text}");
}

/// A second `create` with the id of a running container fails in the runtime, and the running
/// container keeps its slice (it is not released into the pool for someone else).
#[test]
fn runc_repeated_create_keeps_the_running_containers_slice() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("twice");
    assert!(engine.create(&bundle, &id).status.success());
    let again = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&again, &id);
    assert!(!out.status.success(), "the runtime refuses a duplicate id");
    assert!(
        node.ledger().lease_of(&id).is_some(),
        "the first container keeps its slice"
    );
    assert!(engine.delete(&id).status.success());
    assert!(node.ledger().lease_of(&id).is_none());
}

/// The runtime is exec'd after the grant, so a create it refuses leaves the lease behind; the
/// engine's `delete` of that id (the runtime no longer knows it) frees the slice, and so does
/// `gpusharectl gc` when no delete comes.
#[test]
fn runc_refused_create_is_freed_by_delete_or_gc() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    for freed_by in ["delete", "gc"] {
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        b.edit_config(|spec| spec["root"]["path"] = serde_json::json!("no-such-rootfs"));
        let id = unique("refused");
        let out = engine.create(&b, &id);
        assert!(!out.status.success(), "runc refuses a missing rootfs");
        assert!(node.ledger().lease_of(&id).is_some(), "{freed_by}");
        if freed_by == "delete" {
            let ours = engine.delete(&id);
            let theirs = run(&mut engine.bare(&["delete", "--force", &id]));
            assert_eq!(
                ours.status.code(),
                theirs.status.code(),
                "runc's own exit code"
            );
        } else {
            let out = node.ctl(&["gc", "--grace", "0"]);
            assert!(out.status.success(), "{}", text(&out.stderr));
        }
        assert!(node.ledger().lease_of(&id).is_none(), "freed by {freed_by}");
    }
    let st = node.ledger();
    assert!(st.instances.iter().all(|r| r.lease.is_none()));
}

/// A broken gpushare config stops GPU requests only: engines still manage other containers.
#[test]
fn runc_broken_config_refuses_only_gpu_requests() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    node.configure("no_such_key = 1");
    let plain = Bundle::new("echo plain", &[], &[]);
    assert_eq!(
        engine.run_to_end(&plain, &unique("broken-plain")).trim(),
        "plain"
    );
    let ours = run(&mut engine.cmd(&["state", "nope"]));
    let theirs = run(&mut engine.bare(&["state", "nope"]));
    assert_eq!(ours.status.code(), theirs.status.code());
    let gpu = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&gpu, &unique("broken-gpu"));
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("no_such_key"),
        "{}",
        text(&out.stderr)
    );
}

/// A config.json gpushare will not read (a symlink) is handed to the runtime untouched.
#[test]
fn runc_symlinked_spec_without_request_still_runs() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let bundle = Bundle::new("echo linked", &[], &[]);
    let real = bundle.path().join("real.json");
    std::fs::rename(bundle.path().join("config.json"), &real).unwrap();
    std::os::unix::fs::symlink("real.json", bundle.path().join("config.json")).unwrap();
    assert_eq!(
        engine.run_to_end(&bundle, &unique("linked")).trim(),
        "linked"
    );
}
