//! Docker 26.1 and Compose 2.26 from Debian trixie (tests/it/common/trixie.rs), with gpushare as
//! a user installs it: binaries in /usr/bin, packaging/docker/daemon.json as shipped, the node's
//! config at /etc/gpushare/config.toml. Docker 24+ (API 1.43) hands `--annotation` to the
//! runtime, so the request travels as users type it; the env form still works.
use crate::common;

use common::docker::*;
use common::engines::*;
use common::trixie::Trixie;
use common::*;
use std::process::Output;
use std::time::{Duration, Instant};

/// Docker 26's words in front of a runtime's refusal, which users see before gpushare's.
const DOCKER26_PREFIX: &str =
    "failed to create task for container: failed to create shim task: OCI runtime create failed:";

/// trixie's dockerd with the shipped daemon.json as is, plus what a private daemon in a
/// sandbox needs.
fn start(node: &SimNode, live_restore: bool) -> Docker {
    // The trixie root's runc, which its Docker would run without gpushare.
    node.configure("runtime = \"/usr/sbin/runc\"");
    let tx = Trixie::enter(node);
    let shipped = std::fs::read_to_string(repo_root().join("packaging/docker/daemon.json"))
        .expect("packaging/docker/daemon.json");
    let mut cfg: serde_json::Value = serde_json::from_str(&shipped).unwrap();
    cfg["bridge"] = "none".into();
    cfg["iptables"] = false.into();
    cfg["storage-driver"] = "vfs".into();
    cfg["live-restore"] = live_restore.into();
    let dk = Docker::start(Host::Trixie(tx), &cfg, "gpushare-test/busybox:1".into());
    let version = dk.docker(&["version", "--format", "{{.Server.Version}}"]);
    assert!(
        text(&version.stdout).starts_with("26."),
        "trixie's Docker should be 26.x: {}{}",
        text(&version.stdout),
        text(&version.stderr)
    );
    dk
}

/// Wait (bounded) until `probe` gives a value; on a time-out, fail with what it saw last.
fn wait_for<T>(what: &str, mut probe: impl FnMut() -> Result<T, String>) -> T {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match probe() {
            Ok(v) => return v,
            Err(seen) if Instant::now() > deadline => {
                panic!("not within 30 s: {what}; last seen:\n{seen}")
            }
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}

/// The slice a detached container printed first (`CUDA_VISIBLE_DEVICES=...` in its logs).
fn printed_slice(what: &str, mut logs: impl FnMut() -> Output) -> String {
    wait_for(&format!("{what} prints its slice"), || {
        let out = logs();
        let seen = format!("{}{}", text(&out.stdout), text(&out.stderr));
        let mig = env_seen(&seen, "CUDA_VISIBLE_DEVICES");
        if mig.is_empty() {
            Err(seen)
        } else {
            Ok(mig)
        }
    })
}

/// Wait until the node holds no lease, failing with what it holds.
fn wait_no_lease(node: &SimNode, what: &str) {
    wait_for(what, || {
        let held = leases(node);
        if held.is_empty() {
            Ok(())
        } else {
            Err(format!("{held:?}"))
        }
    })
}

#[test]
fn docker26_annotation_and_env_requests_see_their_slice_and_free_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    let out = dk.run(
        &[
            "--runtime",
            "gpushare",
            "--annotation",
            "gpu.profile=1g.10gb",
        ],
        SHOW_GPU,
    );
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "docker run --annotation: {}\n{printed}\n{}",
        text(&out.stderr),
        dk.log()
    );
    let mig = assert_sees_one_slice(&node, &printed);
    // `docker run --rm` returns once the container is removed: its slice is back already.
    assert_all_free(&node, Some(&mig));

    // The env form, for scripts written for Docker < 24, works the same on 26.
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=2g.20gb"],
        SHOW_GPU,
    );
    assert!(out.status.success(), "docker run -e: {}", text(&out.stderr));
    let mig2 = assert_sees_one_slice(&node, &text(&out.stdout));
    assert_ne!(mig, mig2, "a 2g.20gb is another instance than the 1g.10gb");
    assert_all_free(&node, Some(&mig2));
}

#[test]
fn docker26_bad_request_message_is_in_docker_runs_error() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    for (opts, words) in [
        (
            ["--annotation", "gpu.profile=0g.1gb"],
            &["gpu.profile", "0g.1gb", "accepted"][..],
        ),
        (
            ["-e", "GPUSHARE_PROFILE=0g.1gb"],
            &["GPUSHARE_PROFILE", "0g.1gb", "accepted"][..],
        ),
        (
            ["--annotation", "gpu.profile=1g.18gb"],
            &["1g.18gb", "no such MIG profile"][..],
        ),
    ] {
        let mut all = vec!["--runtime", "gpushare"];
        all.extend_from_slice(&opts);
        let out = dk.run(&all, SHOW_GPU);
        assert!(!out.status.success(), "{opts:?}: {}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.contains(DOCKER26_PREFIX),
            "{opts:?}: Docker 26's prefix: {err}"
        );
        for w in words {
            assert!(
                err.contains(w),
                "{opts:?}: docker run must show gpushare's own message ({w}): {err}"
            );
        }
    }
    assert_all_free(&node, None);
    assert!(
        node.ledger().instances.is_empty(),
        "nothing made for refused requests"
    );
}

/// An H100 has seven 1g.10gb slices: seven detached containers get one each, the eighth is
/// refused with what is free, and `rm -f` gives all back.
#[test]
fn docker26_eight_detached_seven_slices_then_no_free() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    let hold = "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; exec sleep 600";
    let req = [
        "--runtime",
        "gpushare",
        "--annotation",
        "gpu.profile=1g.10gb",
    ];
    let mut migs = Vec::new();
    for i in 0..7 {
        let name = format!("seven-{i}");
        let out = dk.detach(&name, &req, hold);
        assert!(out.status.success(), "{name}: {}", text(&out.stderr));
        let mig = printed_slice(&name, || dk.docker(&["logs", &name]));
        assert!(mig.starts_with("MIG-"), "{name}: {mig}");
        migs.push(mig);
    }
    let mut distinct = migs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 7, "seven distinct slices: {migs:?}");
    assert_eq!(leases(&node).len(), 7, "{:?}", node.ledger());

    let out = dk.detach("eighth", &req, hold);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(DOCKER26_PREFIX) && err.contains("no free 1g.10gb slice"),
        "the eighth is refused with gpushare's message: {err}"
    );
    assert_eq!(leases(&node).len(), 7, "the refusal holds nothing");

    let mut names: Vec<String> = (0..7).map(|i| format!("seven-{i}")).collect();
    names.push("eighth".into());
    let mut args = vec!["rm", "-f"];
    args.extend(names.iter().map(String::as_str));
    let out = dk.docker(&args);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_all_free(&node);
    assert_all_free(&node, None);
    assert_eq!(text(&dk.docker(&["ps", "-aq"]).stdout).trim(), "");
}

/// The container's full id, as gpushare's lease records it.
fn full_id(dk: &Docker, name: &str) -> String {
    let out = dk.docker(&["inspect", "--format", "{{.Id}}", name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    text(&out.stdout).trim().to_string()
}

fn assert_one_lease_for(node: &SimNode, id: &str) {
    let held = leases(node);
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].1, id, "{held:?}");
}

#[test]
fn docker26_stop_kill_restart_keep_one_lease_and_rm_frees_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    let req = [
        "--runtime",
        "gpushare",
        "--annotation",
        "gpu.profile=2g.20gb",
    ];
    let out = dk.detach("gpu-c", &req, "exec sleep 600");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = full_id(&dk, "gpu-c");
    assert_one_lease_for(&node, &id);

    let out = dk.docker(&["stop", "-t", "1", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_no_lease(&node, "stop releases");

    let out = dk.docker(&["start", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_one_lease_for(&node, &id);

    let out = dk.docker(&["restart", "-t", "1", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_one_lease_for(&node, &id);

    let out = dk.docker(&["kill", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_no_lease(&node, "kill releases");

    let out = dk.docker(&["start", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_one_lease_for(&node, &id);
    let out = dk.docker(&["rm", "-f", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_all_free(&node);
    assert_all_free(&node, None);
}

/// What gpushare gave the container's process, and what `docker exec` gets: the same slice,
/// the same injected paths, and the injected nvidia-smi on its PATH.
#[test]
fn docker26_exec_sees_the_slice_and_injected_tools() {
    let node = SimNode::new("h100-80gb", 1, true);
    plant_nvidia_smi(&node);
    let dk = start(&node, false);
    let req = [
        "--runtime",
        "gpushare",
        "--annotation",
        "gpu.profile=1g.10gb",
    ];
    let out = dk.detach("gpu-c", &req, "exec sleep 600");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_exec_sees_what_init_sees("docker", |args| {
        let mut all = vec!["exec", "gpu-c"];
        all.extend_from_slice(args);
        dk.docker(&all)
    });
    let out = dk.docker(&["rm", "-f", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_all_free(&node);
    assert_all_free(&node, None);
}

/// dockerd dies with SIGKILL (no shutdown of its own) and comes back: a `--restart always`
/// container holds one slice again, under its own id; nothing stays after `rm -f`.
fn dockerd_sigkill_slice_comes_back(live_restore: bool) {
    let node = SimNode::new("h100-80gb", 1, true);
    let mut dk = start(&node, live_restore);
    let req = [
        "--runtime",
        "gpushare",
        "--annotation",
        "gpu.profile=3g.40gb",
        "--restart",
        "always",
    ];
    let out = dk.detach(
        "gpu-c",
        &req,
        "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; exec sleep 600",
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let id = full_id(&dk, "gpu-c");
    assert_one_lease_for(&node, &id);
    let pid_before = text(
        &dk.docker(&["inspect", "--format", "{{.State.Pid}}", "gpu-c"])
            .stdout,
    );

    dk.kill_and_restart_daemon();

    let state = wait_for("the container runs again after dockerd's restart", || {
        let out = dk.docker(&[
            "inspect",
            "--format",
            "{{.State.Status}} {{.State.Pid}}",
            "gpu-c",
        ]);
        let state = text(&out.stdout);
        if state.starts_with("running ") {
            Ok(state)
        } else {
            Err(format!("{state}{}", text(&out.stderr)))
        }
    });
    assert_one_lease_for(&node, &id);
    let pid_after = state.trim().trim_start_matches("running ").to_string();
    let logs = text(&dk.docker(&["logs", "gpu-c"]).stdout);
    let seen: Vec<&str> = logs
        .lines()
        .filter_map(|l| l.strip_prefix("CUDA_VISIBLE_DEVICES="))
        .collect();
    if live_restore {
        // The container never stopped: same process, same slice.
        assert_eq!(pid_after, pid_before.trim(), "{logs}\n{}", dk.log());
        assert_eq!(seen.len(), 1, "{logs}");
    } else {
        // dockerd stopped it on its way up and started it again (its restart policy): a new
        // process with a slice again, and one lease.
        assert_ne!(pid_after, pid_before.trim(), "{logs}\n{}", dk.log());
        assert_eq!(seen.len(), 2, "{logs}");
    }
    assert!(seen.iter().all(|m| m.starts_with("MIG-")), "{logs}");
    let out = dk.docker(&["rm", "-f", "gpu-c"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    wait_all_free(&node);
    assert_all_free(&node, None);
}

#[test]
fn docker26_dockerd_sigkill_and_restart_live_restore_off() {
    dockerd_sigkill_slice_comes_back(false);
}

#[test]
fn docker26_dockerd_sigkill_and_restart_live_restore_on() {
    dockerd_sigkill_slice_comes_back(true);
}

#[test]
fn docker26_no_request_is_exactly_plain_runc() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    assert_no_request_is_exactly_plain_runc(&node, &dk);
}

/// packaging/compose.yaml as shipped (`runtime: gpushare`, `annotations:` per service), with
/// the test's image and a command that holds the slice layered over it by a second file.
#[test]
fn compose2_three_services_three_slices_down_releases() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node, false);
    let d = dk.host.dir().to_path_buf();
    let version = dk.docker(&["compose", "version", "--short"]);
    assert!(
        text(&version.stdout).starts_with("2."),
        "trixie's Compose should be 2.x: {}{}",
        text(&version.stdout),
        text(&version.stderr)
    );
    std::fs::copy(
        repo_root().join("packaging/compose.yaml"),
        d.join("compose.yaml"),
    )
    .unwrap();
    let hold = "echo CUDA_VISIBLE_DEVICES=$$CUDA_VISIBLE_DEVICES; exec sleep 600";
    let mut over = String::from("services:\n");
    for svc in ["chat", "code", "assist"] {
        over += &format!(
            "  {svc}:\n    image: {}\n    command: [\"/bin/sh\", \"-c\", {hold:?}]\n    \
             network_mode: none\n    ports: !reset []\n",
            dk.image
        );
    }
    std::fs::write(d.join("test.yaml"), over).unwrap();
    let compose = |args: &[&str]| {
        let f1 = d.join("compose.yaml");
        let f2 = d.join("test.yaml");
        let mut all = vec![
            "compose",
            "--ansi",
            "never",
            "-p",
            "llm",
            "-f",
            f1.to_str().unwrap(),
            "-f",
            f2.to_str().unwrap(),
        ];
        all.extend_from_slice(args);
        dk.docker(&all)
    };
    let out = compose(&["up", "-d"]);
    assert!(
        out.status.success(),
        "compose up: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    let mut migs = Vec::new();
    for svc in ["chat", "code", "assist"] {
        // Compose names the container <project>-<service>-<n>.
        let name = format!("llm-{svc}-1");
        let mig = printed_slice(svc, || dk.docker(&["logs", &name]));
        assert!(mig.starts_with("MIG-"), "{svc}: {mig}");
        migs.push(mig);
    }
    let mut distinct = migs.clone();
    distinct.sort();
    distinct.dedup();
    assert_eq!(distinct.len(), 3, "three distinct slices: {migs:?}");
    let held = leases(&node);
    assert_eq!(held.len(), 3, "{held:?}");
    assert!(held.iter().all(|(p, _)| p == "2g.20gb"), "{held:?}");

    // An H100 has three 2g.20gb slices: a fourth replica is refused, and Compose shows why.
    let out = compose(&["up", "-d", "--scale", "chat=2"]);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains(DOCKER26_PREFIX) && err.contains("no free 2g.20gb slice"),
        "compose up must show gpushare's message: {err}"
    );
    assert_eq!(leases(&node).len(), 3, "the refusal holds nothing");

    let out = compose(&["down", "-t", "1"]);
    assert!(out.status.success(), "compose down: {}", text(&out.stderr));
    wait_all_free(&node);
    assert_all_free(&node, None);
}
