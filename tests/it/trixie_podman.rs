//! Podman 5.4 (rootful) from Debian trixie (tests/it/common/trixie.rs), with gpushare installed
//! as users install it: binaries in /usr/bin, the node's config at /etc/gpushare/config.toml,
//! and either packaging/podman/containers.conf (`--runtime gpushare`) or the shipped hooks.d
//! files with Podman's default runtime (crun). Every call runs on private storage, run and
//! tmp roots; there is no daemon.
use crate::common;

use common::engines::*;
use common::podman::*;
use common::trixie::Trixie;
use common::*;
use std::time::{Duration, Instant};

/// trixie's Podman with the shipped containers.conf and hooks.d files as they are: gpushare
/// reads the installed config.
fn podman(node: &SimNode) -> Podman {
    node.configure("runtime = \"/usr/sbin/runc\"");
    let shipped = |rel: &str| {
        std::fs::read_to_string(repo_root().join("packaging/podman").join(rel))
            .unwrap_or_else(|e| panic!("packaging/podman/{rel}: {e}"))
    };
    let pm = Podman::on(
        Host::Trixie(Trixie::enter(node)),
        shipped("containers.conf"),
        None,
    );
    for name in ["gpushare-precreate.json", "gpushare-poststop.json"] {
        std::fs::write(
            pm.dir().join("hooks").join(name),
            shipped(&format!("hooks.d/{name}")),
        )
        .unwrap();
    }
    let out = pm.podman(false, &["version", "--format", "{{.Client.Version}}"]);
    assert!(
        text(&out.stdout).starts_with("5.4"),
        "trixie's Podman should be 5.4: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    pm.import_busybox();
    pm
}

fn sees_slice_and_frees_it(via: Via) {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let mig = assert_annotation_sees_its_slice_and_frees_it(&node, &pm, via);
    // The env form, from scripts written for engines that cannot pass annotations: the
    // wrapper reads it; hooks.d files match annotations only, so without the wrapper the
    // container runs without a GPU (docs/engines.md says so).
    let out = pm.run(via, &["-e", "GPUSHARE_PROFILE=2g.20gb"], SHOW_GPU);
    assert!(out.status.success(), "podman run -e: {}", text(&out.stderr));
    if via == Via::Hooks {
        assert_sees_no_gpu(&text(&out.stdout));
        assert_all_free(&node, Some(&mig));
    } else {
        let mig2 = assert_sees_one_slice(&node, &text(&out.stdout));
        assert_ne!(mig, mig2);
        assert_all_free(&node, Some(&mig2));
    }
}

#[test]
fn podman5_runtime_annotation_and_env_see_their_slice_and_free_it() {
    sees_slice_and_frees_it(Via::Runtime);
}

#[test]
fn podman5_hooks_only_annotation_and_env_see_their_slice_and_free_it() {
    sees_slice_and_frees_it(Via::Hooks);
}

/// Podman 5.4 still throws a precreate hook's stderr away: in hooks-only mode the user sees
/// only that the hook failed; with `--runtime gpushare`, gpushare's message itself.
fn bad_request_shows(via: Via) {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let out = pm.run(via, &["--annotation", "gpu.profile=0g.1gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    if via == Via::Hooks {
        assert!(
            err.contains("precreate") && err.contains("exit status 1"),
            "{err}"
        );
    } else {
        for w in ["gpu.profile", "0g.1gb", "accepted"] {
            assert!(
                err.contains(w),
                "podman run must show gpushare's message ({w}): {err}"
            );
        }
    }
    assert_nothing_made(&node);
}

#[test]
fn podman5_runtime_bad_request_shows_gpushare_message() {
    bad_request_shows(Via::Runtime);
}

#[test]
fn podman5_hooks_only_bad_request_is_refused() {
    bad_request_shows(Via::Hooks);
}

/// `podman restart` gives the container its slice again: one lease while it runs, none
/// after `rm`.
fn restart_keeps_one_lease(via: Via) {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    let name = unique("rs");
    let out = pm.detach(via, &name, &["--annotation", "gpu.profile=2g.20gb"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(leases(&node).len(), 1, "{:?}", node.ledger());
    let out = pm.podman(via == Via::Hooks, &["restart", "--time", "1", &name]);
    assert!(
        out.status.success(),
        "podman restart: {}",
        text(&out.stderr)
    );
    assert_eq!(leases(&node).len(), 1, "{:?}", node.ledger());
    let out = pm.podman(via == Via::Hooks, &["rm", "--force", "--time", "0", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let deadline = Instant::now() + Duration::from_secs(20);
    while !leases(&node).is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_all_free(&node, None);
}

#[test]
fn podman5_runtime_restart_keeps_one_lease() {
    restart_keeps_one_lease(Via::Runtime);
}

#[test]
fn podman5_hooks_only_restart_keeps_one_lease() {
    restart_keeps_one_lease(Via::Hooks);
}

/// While a hooks-only container runs, the precreate grant is leased to the claim its spec
/// carries (`gpushare.lease`, which `podman inspect` shows).
#[test]
fn podman5_hooks_only_lease_is_held_by_the_claim_while_running() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_hooks_only_lease_is_held_while_running(&node, &pm);
}

/// Hooks and `--runtime gpushare` together: precreate grants, the wrapper sees a spec that is
/// already granted and takes nothing more.
#[test]
fn podman5_hooks_and_runtime_together_grant_once() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_hooks_and_runtime_together_grant_once(&node, &pm);
}

/// What gpushare gave the container's process, and what `podman exec` gets: the same slice
/// and the same injected paths (the wrapper's job; hooks-only mode has no part in exec).
#[test]
fn podman5_runtime_exec_sees_the_slice_and_injected_tools() {
    let node = SimNode::new("h100-80gb", 1, true);
    plant_nvidia_smi(&node);
    let pm = podman(&node);
    let name = unique("ex");
    let out = pm.detach(
        Via::Runtime,
        &name,
        &["--annotation", "gpu.profile=1g.10gb"],
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_exec_sees_what_init_sees("podman", |args| {
        let mut all = vec!["exec", &name];
        all.extend_from_slice(args);
        pm.podman(false, &all)
    });
    let out = pm.podman(false, &["rm", "--force", "--time", "0", &name]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_all_free(&node, None);
}

#[test]
fn podman5_no_request_is_exactly_plain_runtime() {
    let node = SimNode::new("h100-80gb", 1, true);
    let pm = podman(&node);
    assert_no_request_is_exactly_plain_runtime(&node, &pm);
}
