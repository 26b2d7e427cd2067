//! containerd 1.6 with gpushare as the runc binary of its `io.containerd.runc.v2` shim,
//! driven by `ctr run --runc-binary`, plus the shipped CRI runtime entry checked by
//! containerd's own config loader. containerd hands its environment down through the shim
//! to the runtime, which is how this node's config (GPUSHARE_CONFIG) reaches gpushare.
use crate::common;

use common::ctr::*;
use common::engines::*;
use common::*;
use std::process::Command;

/// This machine's containerd.
fn start(node: &SimNode) -> Containerd {
    require_root();
    node.configure(&format!(
        "runtime = {:?}",
        Runtime::Runc.path().display().to_string()
    ));
    Containerd::start(node, Host::Here(ShortDir::new("gs-ctd")))
}

#[test]
fn ctr_annotation_request_sees_its_slice_and_frees_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    let mig = assert_annotation_sees_its_slice_and_frees_it(&node, &ctd);
    // A second tenant while the first slice is idle gets that same instance back.
    let out = ctd.run(true, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(assert_sees_one_slice(&node, &text(&out.stdout)), mig);
    assert_all_free(&node, Some(&mig));
}

/// All a container printed reaches the test, up to its last byte, even when it prints a lot
/// and exits at once: the checks above read what their containers printed.
#[test]
fn ctr_run_shows_all_a_container_printed() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    let busybox = std::fs::read(ctd.rootfs.join("bin/busybox")).unwrap();
    // ctr lost a tail in about one run of a hundred on a loaded machine: a few runs.
    for _ in 0..10 {
        let out = ctd.run(false, &[], "cat /bin/busybox");
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(out.stdout.len(), busybox.len(), "bytes lost");
        assert!(out.stdout == busybox);
    }
}

#[test]
fn ctr_bad_request_shows_gpushare_message() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    assert_bad_request_shows_gpushare_message(&ctd, "OCI runtime create failed");
    let out = ctd.run(
        true,
        &[
            "--annotation",
            "gpu.profile=1g.10gb",
            "--annotation",
            "gpu.device=3",
        ],
        SHOW_GPU,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("gpu.device=3") && err.contains("no such GPU"),
        "{err}"
    );
    assert_nothing_made(&node);
}

/// A Kubernetes pod's annotations reach its sandbox (pause) container too; the sandbox must
/// never take a slice, with either CRI implementation's marking, and even for a bad request.
#[test]
fn ctr_kubernetes_sandbox_never_gets_a_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    for marker in [
        "io.kubernetes.cri.container-type=sandbox",
        "io.kubernetes.cri-o.ContainerType=sandbox",
    ] {
        for profile in ["gpu.profile=1g.10gb", "gpu.profile=0g.1gb"] {
            let out = ctd.run(
                true,
                &["--annotation", marker, "--annotation", profile],
                SHOW_GPU,
            );
            assert!(
                out.status.success(),
                "{marker} {profile}: {}",
                text(&out.stderr)
            );
            assert_sees_no_gpu(&text(&out.stdout));
        }
    }
    assert_nothing_made(&node);
    // The pod's real container, marked as such, does get its slice.
    let out = ctd.run(
        true,
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "gpu.profile=1g.10gb",
        ],
        SHOW_GPU,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mig = assert_sees_one_slice(&node, &text(&out.stdout));
    assert_all_free(&node, Some(&mig));
}

#[test]
fn ctr_no_request_is_exactly_plain_runc() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    assert_no_request_is_exactly_plain_runc(&node, &ctd);
}

/// The shipped CRI runtime entry for containerd 1.x, as containerd's own loader reads it
/// when the main config imports it.
#[test]
fn containerd_loads_the_shipped_cri_runtime_entry() {
    let dir = ShortDir::new("gs-ctdcfg");
    let config = config_importing(dir.path(), &packaging_file("containerd/gpushare-v2.toml"));
    let out = run(Command::new("containerd")
        .arg("--config")
        .arg(config)
        .args(["config", "dump"]));
    assert_dump_has_gpushare_runtime(&out, ENTRY);
}

/// `ctr task exec` hands the runtime a process built from containerd's own container spec
/// (never the one gpushare edited) as `exec --process FILE`: the exec'd process still sees the
/// slice.
#[test]
fn ctr_task_exec_sees_the_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = start(&node);
    let id = unique("c");
    let rootfs = ctd.rootfs.display().to_string();
    let out = ctd.ctr(&[
        "run",
        "-d",
        "--rootfs",
        "--runc-binary",
        ENTRY,
        "--annotation",
        "gpu.profile=1g.10gb",
        &rootfs,
        &id,
        "/bin/sleep",
        "60",
    ]);
    assert!(
        out.status.success(),
        "ctr run -d: {}\n{}",
        text(&out.stderr),
        ctd.daemon.log_text()
    );
    let out = ctd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "show",
        &id,
        "/bin/sh",
        "-c",
        SHOW_GPU,
    ]);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr tasks exec: {}",
        text(&out.stderr)
    );
    let mig = assert_sees_one_slice(&node, &printed);
    for args in [
        &["tasks", "kill", "--signal", "SIGKILL", &id][..],
        &["tasks", "delete", &id],
        &["containers", "delete", &id],
    ] {
        // The task may still be stopping when delete comes: try it for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = ctd.ctr(args);
            if out.status.success() || std::time::Instant::now() > deadline {
                assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert_all_free(&node, Some(&mig));
}
