//! Docker (Debian's dockerd 20.10, API 1.41) with gpushare as a runtime, started privately
//! from packaging/docker/daemon.json. Engines before API 1.43 (Docker 24) cannot pass
//! annotations, so requests travel as GPUSHARE_* env; `--annotation` is used where the
//! daemon takes it.
use crate::common;

use common::docker::*;
use common::engines::*;
use common::*;

/// This machine's dockerd with the shipped runtime entry, plus what a private test daemon
/// needs: dockerd passes runtimeArgs to the runtime, which is how this node's config reaches
/// gpushare.
fn start(node: &SimNode) -> Docker {
    require_root();
    node.configure(&format!(
        "runtime = {:?}",
        Runtime::Runc.path().display().to_string()
    ));
    let mut cfg: serde_json::Value =
        serde_json::from_str(&packaging_file("docker/daemon.json")).unwrap();
    cfg["runtimes"]["gpushare"]["runtimeArgs"] =
        serde_json::json!([format!("--gpushare-config={}", node.config().display())]);
    cfg["bridge"] = "none".into();
    cfg["iptables"] = false.into();
    cfg["ip6tables"] = false.into();
    cfg["storage-driver"] = "vfs".into();
    Docker::start(
        Host::Here(ShortDir::new("gs-dk")),
        &cfg,
        format!("gpushare-test/busybox:{}", std::process::id()),
    )
}

/// The daemon's API version as (major, minor).
fn api(dk: &Docker) -> (u32, u32) {
    let out = dk.docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let v = text(&out.stdout);
    let (a, b) = v.trim().split_once('.').expect("API version like 1.41");
    (a.parse().unwrap(), b.parse().unwrap())
}

#[test]
fn docker_env_request_sees_its_slice_and_frees_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node);
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=1g.10gb"],
        SHOW_GPU,
    );
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "docker run: {}\n{printed}\n{}",
        text(&out.stderr),
        dk.log()
    );
    let mig = assert_sees_one_slice(&node, &printed);
    // `docker run --rm` returns once the container is removed: its slice is back already.
    assert_all_free(&node, Some(&mig));

    // The next container is served the same, now idle, instance from the pool.
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=1g.10gb"],
        SHOW_GPU,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(assert_sees_one_slice(&node, &text(&out.stdout)), mig);
    assert_all_free(&node, Some(&mig));
    let status = node.status_json();
    assert_eq!(status["stats"]["grants_warm"], 1, "{status:#}");
}

#[test]
fn docker_annotation_request_where_the_daemon_takes_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node);
    let out = dk.run(
        &[
            "--runtime",
            "gpushare",
            "--annotation",
            "gpu.profile=2g.20gb",
        ],
        SHOW_GPU,
    );
    if api(&dk) >= (1, 43) {
        assert!(out.status.success(), "{}", text(&out.stderr));
        let mig = assert_sees_one_slice(&node, &text(&out.stdout));
        assert_all_free(&node, Some(&mig));
    } else {
        // Docker 20.10-23 (API < 1.43): the CLI refuses the flag (or does not know it), so
        // these users ask with GPUSHARE_PROFILE, as docs/engines.md says.
        assert!(!out.status.success(), "{}", text(&out.stdout));
        let err = text(&out.stderr);
        assert!(
            err.contains("annotation") || err.contains("1.43"),
            "unexpected refusal: {err}"
        );
        assert_nothing_made(&node);
    }
}

#[test]
fn docker_bad_request_shows_gpushare_message() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node);
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=0g.1gb"],
        SHOW_GPU,
    );
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("OCI runtime create failed")
            && err.contains("GPUSHARE_PROFILE")
            && err.contains("0g.1gb")
            && err.contains("accepted"),
        "docker run must show gpushare's own message: {err}"
    );
    assert_nothing_made(&node);

    // A well-formed profile the GPU does not have: the allocator's message, same path.
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=1g.18gb"],
        SHOW_GPU,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("1g.18gb") && err.contains("no such MIG profile"),
        "{err}"
    );
    assert_all_free(&node, None);
}

#[test]
fn docker_no_request_is_exactly_plain_runc() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node);
    assert_no_request_is_exactly_plain_runc(&node, &dk);
}

/// `docker exec` builds the exec's process from Docker's own container config (which never had
/// gpushare's edit) and hands it to the runtime as `exec --process FILE`: the exec'd process
/// still sees the container's slice, the engine's `-e` wins, and the slice is freed as before.
#[test]
fn docker_exec_sees_the_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = start(&node);
    let name = unique("dk-exec");
    let out = dk.docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--network",
        "none",
        "--runtime",
        "gpushare",
        "-e",
        "GPUSHARE_PROFILE=1g.10gb",
        &dk.image,
        "/bin/sleep",
        "60",
    ]);
    assert!(
        out.status.success(),
        "docker run -d: {}\n{}",
        text(&out.stderr),
        dk.log()
    );
    let out = dk.docker(&["exec", &name, "/bin/sh", "-c", SHOW_GPU]);
    let printed = text(&out.stdout);
    assert!(out.status.success(), "docker exec: {}", text(&out.stderr));
    let mig = assert_sees_one_slice(&node, &printed);
    let out = dk.docker(&[
        "exec",
        "-e",
        "CUDA_VISIBLE_DEVICES=x",
        &name,
        "/bin/sh",
        "-c",
        SHOW_GPU,
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let printed = text(&out.stdout);
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), "x", "{printed}");
    assert_eq!(
        env_seen(&printed, "NVIDIA_VISIBLE_DEVICES"),
        mig,
        "{printed}"
    );
    let out = dk.docker(&["rm", "--force", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_free(&node, Some(&mig));
}
