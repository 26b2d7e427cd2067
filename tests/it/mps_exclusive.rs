//! MPS compute mode (`mps.exclusive`) on a simulated node, through real runc: the GPU is
//! EXCLUSIVE_PROCESS while gpushare's MPS daemon serves it and back to the mode found after the
//! last share is released; `mps.exclusive = false` leaves it alone; a GPU where another process
//! holds a context is refused. Crash repair is in tests/it/crash_safety.rs.
use crate::common;

use common::*;

/// The simulated GPU's compute mode, as its driver holds it (nvmlComputeMode_t).
fn mode(node: &SimNode) -> u64 {
    node.sim_state()["gpus"][0]["compute_mode"]
        .as_u64()
        .expect("compute_mode in the simulator's state")
}

/// The simulated GPU 0's UUID.
fn gpu0_uuid(node: &SimNode) -> String {
    node.sim_state()["gpus"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

const DEFAULT: u64 = 0;
const EXCLUSIVE_PROCESS: u64 = 3;

const MPS: [(&str, &str); 2] = [("gpu.mps", "25"), ("gpu.mps.memory", "4G")];

#[test]
fn gpu_is_exclusive_while_the_daemon_runs_and_found_mode_comes_back() {
    require_root();
    for runtime in [Runtime::Runc, Runtime::Crun] {
        exclusive_while_served(runtime);
    }
}

fn exclusive_while_served(runtime: Runtime) {
    let node = mps_node();
    let engine = Engine::new(&node, runtime);
    assert_eq!(mode(&node), DEFAULT);
    let (a, b) = (
        Bundle::new("true", &MPS, &[]),
        Bundle::new("true", &MPS, &[]),
    );
    let (ida, idb) = (unique("ex-a"), unique("ex-b"));
    let out = engine.create(&a, &ida);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        mode(&node),
        EXCLUSIVE_PROCESS,
        "set before the daemon serves"
    );
    let st = node.ledger();
    assert_eq!(st.compute_modes.len(), 1, "the mode found is recorded");
    assert_eq!(
        st.compute_modes[0].found,
        gpushare_core::ledger::Mode::Default
    );
    assert!(engine.create(&b, &idb).status.success());
    engine.start_and_wait(&a, &ida);
    assert!(engine.delete(&ida).status.success());
    assert_eq!(mode(&node), EXCLUSIVE_PROCESS, "the daemon still serves b");
    engine.start_and_wait(&b, &idb);
    assert!(engine.delete(&idb).status.success());
    assert!(mps_control_log(&node).contains("cmd quit"));
    assert_eq!(mode(&node), DEFAULT, "put back after the last share");
    let st = node.ledger();
    assert!(st.mps.is_empty() && st.compute_modes.is_empty(), "{st:?}");
}

/// A GPU an operator already set to EXCLUSIVE_PROCESS stays so: gpushare puts back what it
/// found, not Default.
#[test]
fn a_gpu_found_exclusive_is_left_exclusive() {
    require_root();
    let node = mps_node();
    let out = node.sim(&["compute-mode", "--gpu", "0", "exclusive-process"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &MPS, &[]);
    engine.run_to_end(&b, &unique("found-ex"));
    assert_eq!(mode(&node), EXCLUSIVE_PROCESS);
    assert!(node.ledger().compute_modes.is_empty());
}

#[test]
fn exclusive_false_leaves_the_mode_alone() {
    require_root();
    let node = mps_node_with("exclusive = false");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &MPS, &[]);
    let id = unique("leavable");
    assert!(engine.create(&b, &id).status.success());
    assert_eq!(mode(&node), DEFAULT, "never set");
    assert!(node.ledger().compute_modes.is_empty());
    engine.start_and_wait(&b, &id);
    assert!(engine.delete(&id).status.success());
    assert_eq!(mode(&node), DEFAULT);
}

#[test]
fn refused_while_another_process_holds_a_context() {
    require_root();
    let node = mps_node();
    let uuid = gpu0_uuid(&node);
    let add = node.sim(&["process", "add", "--uuid", &uuid, "--pid", "4242"]);
    assert!(add.status.success(), "{}", text(&add.stderr));
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &MPS, &[]);
    let before = b.config_bytes();
    let id = unique("busy");
    let out = engine.create(&b, &id);
    assert!(!out.status.success(), "granted beside process 4242");
    let err = text(&out.stderr);
    assert!(
        err.contains("GPU 0")
            && err.contains("4242")
            && err.contains("EXCLUSIVE_PROCESS")
            && err.contains("mps.exclusive = false"),
        "{err}"
    );
    assert_eq!(b.config_bytes(), before, "config.json untouched");
    assert_eq!(mode(&node), DEFAULT, "nothing changed");
    let st = node.ledger();
    assert!(st.mps.is_empty() && st.compute_modes.is_empty(), "{st:?}");
    assert!(
        !mps_control_log(&node).contains("start pid="),
        "no daemon started"
    );

    // Once the process is gone the same request is served.
    let rm = node.sim(&["process", "remove", "--uuid", &uuid, "--pid", "4242"]);
    assert!(rm.status.success());
    engine.run_to_end(&b, &unique("after"));
    assert_eq!(mode(&node), DEFAULT);
}

/// While the daemon serves the GPU, the driver admits no second context: a tenant that left
/// the daemon (its own pipe folder) is refused one.
#[test]
fn the_simulated_driver_refuses_a_second_context_in_exclusive_process() {
    require_root();
    let node = mps_node();
    let uuid = gpu0_uuid(&node);
    let cfg = node.cfg();
    let who = gpushare_core::ledger::Claimant {
        container_id: "tenant",
        runtime_root: None,
    };
    gpushare_core::mps::grant(&cfg, 25, None, None, &who).unwrap();
    // The MPS server's context, then a tenant's own.
    assert!(node
        .sim(&["process", "add", "--uuid", &uuid, "--pid", "100"])
        .status
        .success());
    let escape = node.sim(&["process", "add", "--uuid", &uuid, "--pid", "101"]);
    assert!(!escape.status.success());
    assert!(
        text(&escape.stderr).contains("busy or unavailable"),
        "{}",
        text(&escape.stderr)
    );
    assert!(node
        .sim(&["process", "remove", "--uuid", &uuid, "--pid", "100"])
        .status
        .success());
    gpushare_core::allocator::release(&cfg, "tenant", std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(mode(&node), DEFAULT);
}

/// `status` lists MPS shares and time-sliced GPUs as leases beside MIG ones, with times a
/// person reads; `--json` keeps the epoch seconds; each GPU shows its compute mode.
#[test]
fn status_shows_every_lease_with_readable_times_and_compute_modes() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, false);
    node.use_fake_mps_control("");
    let engine = Engine::new(&node, Runtime::Runc);
    let (m, t) = (
        Bundle::new("true", &MPS, &[]),
        Bundle::new("true", &[("gpu.share", "timeslice")], &[]),
    );
    let (idm, idt) = (unique("st-mps"), unique("st-whole"));
    assert!(engine.create(&m, &idm).status.success());
    let out = engine.create(&t, &idt);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let s = text(&node.ctl(&["status"]).stdout);
    assert!(s.contains("leases: 2"), "{s}");
    let line = |id: &str| {
        s.lines()
            .skip_while(|l| !l.starts_with("leases:"))
            .find(|l| l.trim_start().starts_with(id))
            .unwrap_or_else(|| panic!("no lease line for {id}: {s}"))
            .to_string()
    };
    let (lm, lt) = (line(&idm), line(&idt));
    assert!(
        lm.contains("GPU 0") && lm.contains("MPS 25% + 4096 MiB"),
        "{lm}"
    );
    assert!(lt.contains("GPU 1") && lt.contains("time-sliced"), "{lt}");
    for l in [&lm, &lt] {
        let since = l.split("since ").nth(1).unwrap_or_else(|| panic!("{l}"));
        let (clock, age) = since.split_once(", ").unwrap();
        assert_eq!(clock.len(), 8, "hh:mm:ss: {l}");
        assert!(age.ends_with("s ago"), "{l}");
        assert!(
            !l.contains("17965") && !l.contains("17966"),
            "no epoch: {l}"
        );
    }
    assert!(
        s.contains("compute mode Exclusive_Process") && s.contains("compute mode Default"),
        "{s}"
    );
    assert!(s.contains("no client can leave its share"), "{s}");

    let json = node.status_json();
    let leases = json["leases"].as_array().unwrap();
    assert_eq!(leases.len(), 2, "{json:#}");
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs();
    for l in leases {
        let since = l["since"].as_u64().expect("epoch seconds in --json");
        assert!(since <= now && now - since < 120, "{l}");
        assert!(l["container_id"].is_string() && l["gpu"].is_u64(), "{l}");
    }
    let mode_of = |id: &str| {
        leases.iter().find(|l| l["container_id"] == id).unwrap()["mode"]
            .as_str()
            .unwrap()
            .to_string()
    };
    assert_eq!(mode_of(&idm), "mps");
    assert_eq!(mode_of(&idt), "timeslice");
    assert_eq!(json["gpus"][0]["compute_mode"], "Exclusive_Process");
    assert_eq!(json["gpus"][1]["compute_mode"], "Default");
    assert_eq!(json["gpus"][0]["mps"]["exclusive"], true);
    assert_eq!(json["mps_exclusive"], true);

    let doctor: serde_json::Value =
        serde_json::from_slice(&node.ctl(&["doctor", "--json"]).stdout).unwrap();
    let gpu0 = doctor
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "GPU 0 MPS")
        .unwrap_or_else(|| panic!("{doctor:#}"));
    assert_eq!(gpu0["level"], "ok", "{doctor:#}");

    // Someone puts the GPU back to Default under the running daemon: doctor fails it.
    assert!(node
        .sim(&["compute-mode", "--gpu", "0", "default"])
        .status
        .success());
    let out = node.ctl(&["doctor"]);
    assert!(!out.status.success(), "doctor exits 1");
    let d = text(&out.stdout);
    let line = d.lines().find(|l| l.contains("GPU 0 MPS")).unwrap();
    assert!(
        line.starts_with("FAIL")
            && line.contains("compute mode Default")
            && line.contains("EXCLUSIVE_PROCESS"),
        "{d}"
    );
    let s = text(&node.ctl(&["status"]).stdout);
    assert!(s.contains("WARNING: compute mode Default"), "{s}");

    for id in [&idm, &idt] {
        assert!(engine.delete(id).status.success());
    }
    assert_eq!(node.status_json()["leases"].as_array().unwrap().len(), 0);
}

/// With `mps.exclusive = false`, status and doctor say the shares can be left.
#[test]
fn exclusive_false_is_flagged_by_status_and_doctor() {
    require_root();
    let node = mps_node_with("exclusive = false");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &MPS, &[]);
    let id = unique("flagged");
    assert!(engine.create(&b, &id).status.success());
    let s = text(&node.ctl(&["status"]).stdout);
    assert!(
        s.contains("WARNING: compute mode Default") && s.contains("mps.exclusive = false"),
        "{s}"
    );
    let d = text(&node.ctl(&["doctor"]).stdout);
    let warn = |name: &str| {
        d.lines()
            .find(|l| l.contains(name))
            .unwrap_or_else(|| panic!("no {name}: {d}"))
            .starts_with("WARN")
    };
    assert!(warn("GPU 0 MPS") && warn("mps.exclusive = false"), "{d}");
    assert!(engine.delete(&id).status.success());
}

/// The real-GPU script must never change the lent GPU's settings: its gpushare config turns
/// `mps.exclusive` off (as gpushare itself reads that config), and it runs no setter itself.
#[test]
fn gpu_check_script_never_changes_the_compute_mode() {
    let script = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("scripts/gpu/check.sh"),
    )
    .unwrap();
    let body = script
        .split_once("cat > \"$work/config.toml\" <<TOML\n")
        .and_then(|(_, rest)| rest.split_once("\nTOML\n"))
        .expect("the script writes its config with a TOML heredoc")
        .0;
    // The heredoc's shell variables, as the script sets them, with placeholder values.
    let dir = TempDir::new("gpu-check-config");
    let toml = body
        .replace("$RUNC", "/usr/sbin/runc")
        .replace("$work", &dir.path().display().to_string())
        .replace("$DRV", "/usr/local/nvidia")
        .replace("$GPUSHARE_BIN", "/usr/local/bin");
    assert!(!toml.contains('$'), "an unreplaced variable: {toml}");
    let path = dir.path().join("config.toml");
    std::fs::write(&path, &toml).unwrap();
    let cfg = gpushare_core::config::Config::from_file(&path).unwrap();
    assert!(
        !cfg.mps.exclusive,
        "check.sh must set mps.exclusive = false"
    );
    assert!(
        !cfg.mig.manage_mode.any(),
        "check.sh must keep mig.manage_mode off"
    );
    // Off by its own line, not by the default: a later default must not reach the lent GPU.
    let raw: toml::Value = toml::from_str(&toml).unwrap();
    assert_eq!(
        raw.get("mig").and_then(|m| m.get("manage_mode")),
        Some(&toml::Value::Boolean(false)),
        "check.sh must set mig.manage_mode = false itself"
    );
    for setter in [
        "-c ",
        "--compute-mode",
        "-mig",
        "--multi-instance-gpu",
        "-pm ",
    ] {
        assert!(
            !script
                .lines()
                .filter(|l| l.contains("nvidia-smi"))
                .any(|l| l.contains(setter)),
            "check.sh runs nvidia-smi {setter}"
        );
    }
}

/// A daemon that fails to start gives the mode back at once.
#[test]
fn a_daemon_that_cannot_start_leaves_the_mode_as_found() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, false);
    node.configure("[mps]\ncontrol = \"/bin/false\"");
    let cfg = node.cfg();
    let who = gpushare_core::ledger::Claimant {
        container_id: "nostart",
        runtime_root: None,
    };
    let err = gpushare_core::mps::grant(&cfg, 25, None, None, &who)
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot start the MPS control daemon"), "{err}");
    assert_eq!(mode(&node), DEFAULT);
    let st = node.ledger();
    assert!(st.mps.is_empty() && st.compute_modes.is_empty(), "{st:?}");
}

/// A GPU another process holds is passed over for the next one, left as it was.
#[test]
fn a_busy_gpu_is_passed_over_for_a_free_one() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, false);
    node.use_fake_mps_control("");
    let uuid0 = gpu0_uuid(&node);
    assert!(node
        .sim(&["process", "add", "--uuid", &uuid0, "--pid", "4242"])
        .status
        .success());
    let cfg = node.cfg();
    let who = |id| gpushare_core::ledger::Claimant {
        container_id: id,
        runtime_root: None,
    };
    let g = gpushare_core::mps::grant(&cfg, 25, None, None, &who("p1")).unwrap();
    let modes = |n: &SimNode| -> Vec<u64> {
        n.sim_state()["gpus"]
            .as_array()
            .unwrap()
            .iter()
            .map(|g| g["compute_mode"].as_u64().unwrap())
            .collect()
    };
    assert_ne!(g.gpu_uuid, uuid0);
    assert_eq!(modes(&node), [DEFAULT, EXCLUSIVE_PROCESS]);
    // Asked for by name, the busy GPU is refused with the reason.
    let err = gpushare_core::mps::grant(
        &cfg,
        25,
        None,
        Some(&gpushare_core::request::DeviceSelector::Index(0)),
        &who("p2"),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("4242") && err.contains("GPU 0"), "{err}");
    gpushare_core::allocator::release(&cfg, "p1", std::time::Duration::from_secs(5)).unwrap();
    assert_eq!(modes(&node), [DEFAULT, DEFAULT]);
}
