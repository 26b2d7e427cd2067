//! Podman 4.3 (rootful) with gpushare, two ways: as a runtime (`--runtime gpushare`, from
//! packaging/podman/containers.conf) and through the oci-hooks files alone
//! (packaging/podman/hooks.d: precreate grants, poststop releases) with the default runtime.
//! Every Podman call runs on private storage, run and tmp roots; there is no daemon.
use crate::common;

use common::engines::*;
use common::podman::*;
use common::*;
use std::path::Path;
use std::process::Command;

/// oci-hooks stage files as shipped, pointed at this build and this node's config.
fn write_hooks(dir: &Path, node_config: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    for name in ["gpushare-precreate.json", "gpushare-poststop.json"] {
        let mut hook: serde_json::Value =
            serde_json::from_str(&packaging_file(&format!("podman/hooks.d/{name}"))).unwrap();
        let args = hook["hook"]["args"].as_array_mut().unwrap();
        args.push("--config".into());
        args.push(node_config.display().to_string().into());
        std::fs::write(dir.join(name), hook.to_string()).unwrap();
    }
}

/// This machine's Podman with packaging/podman/containers.conf; Podman passes
/// `--runtime-flag`s to the runtime, which is how this node's config reaches gpushare.
fn podman(node: &SimNode) -> Podman {
    require_root();
    node.configure(&format!(
        "runtime = {:?}",
        Runtime::Runc.path().display().to_string()
    ));
    let pm = Podman::on(
        Host::Here(ShortDir::new("gs-pm")),
        packaging_file("podman/containers.conf"),
        Some(format!("gpushare-config={}", node.config().display())),
    );
    write_hooks(&pm.dir().join("hooks"), &node.config());
    pm.import_busybox();
    pm
}

fn sees_slice_and_frees_it(via: Via) {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let mig = assert_annotation_sees_its_slice_and_frees_it(&node, &pm, via);
    // Twice: the idle instance comes back from the pool, so the release really happened.
    let out = pm.run(via, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(assert_sees_one_slice(&node, &text(&out.stdout)), mig);
    assert_all_free(&node, Some(&mig));
}

#[test]
fn podman_runtime_annotation_sees_its_slice_and_frees_it() {
    sees_slice_and_frees_it(Via::Runtime);
}

#[test]
fn podman_hooks_only_precreate_grants_and_poststop_releases() {
    sees_slice_and_frees_it(Via::Hooks);
}

/// While the container runs, the precreate grant is leased to the container's id: the
/// createRuntime hook precreate added moved it there from the claim the spec carries.
#[test]
fn podman_hooks_only_lease_is_held_while_running() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_hooks_only_lease_is_held_while_running(&node, &pm);
}

/// Podman 4.3 throws a precreate hook's stderr away: in hooks-only mode the user sees only
/// that the hook refused (`setting up OCI Hooks: executing [gpushare-hook precreate ...]`);
/// with `--runtime gpushare` the message itself.
fn assert_refusal_shown(via: Via, err: &str, words: &[&str]) {
    if via == Via::Hooks {
        assert!(
            err.contains("OCI Hooks") && err.contains("gpushare-hook precreate"),
            "{err}"
        );
    } else {
        for w in words {
            assert!(
                err.contains(w),
                "podman run must show gpushare's own message ({w}): {err}"
            );
        }
    }
}

/// Hooks and runtime both installed: precreate grants, the wrapper sees the spec it granted
/// and takes nothing more.
#[test]
fn podman_hooks_and_runtime_together_grant_once() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_hooks_and_runtime_together_grant_once(&node, &pm);
    let out = pm.run(
        Via::Both,
        &["--annotation", "gpu.profile=1g.10gb"],
        SHOW_GPU,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_sees_one_slice(&node, &text(&out.stdout));
    assert_all_free(&node, None);
}

fn bad_request_shows_gpushare_message(via: Via) {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let out = pm.run(via, &["--annotation", "gpu.profile=0g.1gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_refusal_shown(
        via,
        &text(&out.stderr),
        &["gpu.profile", "0g.1gb", "accepted"],
    );
    assert_nothing_made(&node);
    // Room runs out: a running 7g.80gb takes the whole GPU; the next request is refused with
    // what is free, and nothing of the refused container stays held.
    let name = unique("big");
    let hold = pm.detach(via, &name, &["--annotation", "gpu.profile=7g.80gb"]);
    assert!(hold.status.success(), "{}", text(&hold.stderr));
    let out = pm.run(via, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    assert_refusal_shown(via, &text(&out.stderr), &["no free 1g.10gb slice"]);
    assert_eq!(node.status_json()["leases"].as_array().unwrap().len(), 1);
    let out = pm.podman(true, &["rm", "--force", "--time", "0", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_free(&node, None);
}

#[test]
fn podman_runtime_bad_request_shows_gpushare_message() {
    bad_request_shows_gpushare_message(Via::Runtime);
}

#[test]
fn podman_hooks_only_bad_request_shows_gpushare_message() {
    bad_request_shows_gpushare_message(Via::Hooks);
}

#[test]
fn podman_precreate_hook_refusal_names_the_request() {
    // What the hook itself says (on stderr and to syslog) when Podman does not show it.
    let node = SimNode::new("h100-80gb", 1, true);
    let spec = serde_json::json!({"ociVersion": "1.0.2", "annotations": {"gpu.profile": "0g.1gb"}});
    let mut child = Command::new(HOOK)
        .args(["precreate", "--config"])
        .arg(node.config())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    use std::io::Write;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(spec.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(out.stdout.is_empty(), "no spec for a refused request");
    let err = text(&out.stderr);
    assert!(
        err.contains("gpu.profile") && err.contains("0g.1gb") && err.contains("accepted"),
        "{err}"
    );
    assert_nothing_made(&node);
}

#[test]
fn podman_no_request_is_exactly_plain_runtime() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_no_request_is_exactly_plain_runtime(&node, &pm);
}

/// `podman exec` hands the runtime a process built from Podman's own container config (which
/// never had gpushare's edit): through `--runtime gpushare` the exec'd process still sees the
/// container's slice. (In hooks-only mode no gpushare code runs for an exec: no OCI hook stage
/// can change an exec's env; docs/engines.md says so.)
#[test]
fn podman_runtime_exec_sees_the_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let name = unique("pm-exec");
    let out = pm.detach(
        Via::Runtime,
        &name,
        &["--annotation", "gpu.profile=1g.10gb"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let flag = format!("gpushare-config={}", node.config().display());
    let out = pm.podman(
        false,
        &[
            "--runtime",
            "gpushare",
            "--runtime-flag",
            &flag,
            "exec",
            &name,
            "/bin/sh",
            "-c",
            SHOW_GPU,
        ],
    );
    let printed = text(&out.stdout);
    assert!(out.status.success(), "podman exec: {}", text(&out.stderr));
    let mig = assert_sees_one_slice(&node, &printed);
    let out = pm.podman(true, &["rm", "--force", "--time", "0", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_free(&node, Some(&mig));
}
