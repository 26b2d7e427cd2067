//! Kubernetes DRA's node half with a real container runtime: Debian trixie's containerd 1.7
//! with CDI enabled in its CRI plugin by the shipped drop-in (`enable_cdi`, `cdi_spec_dirs`
//! with `/var/run/cdi`, where the test's CDI folder is seen), driven over CRI as kubelet drives
//! it, pods on the plain runc handler (under DRA the devices come from CDI, not
//! from gpushare's runtime), each container given the CDI ids of its pod's claims in
//! ContainerConfig's `CDI_devices` (kubelet's way since 1.28). The CDI names follow the DRA
//! driver's contract (docs/kubernetes.md): kind `gpushare.dev/gpu`, one spec file per claim,
//! `gpushare.dev-claim_<claim uid>.json`, devices `<claim uid>-<n>`.
use crate::common;

use crate::cri;

use common::engines::*;
use common::*;
use cri::*;
use serde_json::{json, Value};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

/// The CDI kind gpushare's DRA driver writes.
const KIND: &str = "gpushare.dev/gpu";

/// The spec file of a claim, as the driver names it.
fn spec_path(cdi_dir: &Path, claim_uid: &str) -> PathBuf {
    cdi_dir.join(format!("gpushare.dev-claim_{claim_uid}.json"))
}

/// The fully qualified CDI id of a claim's `n`th allocation result.
fn cdi_id(claim_uid: &str, n: usize) -> String {
    format!("{KIND}={claim_uid}-{n}")
}

/// SHOW_GPU, then a marker, then stay up so that what the container holds stays held.
fn show_and_hold() -> String {
    format!("{SHOW_GPU}\necho READY\nexec sleep 1000")
}

/// A node of the simulated driver as a CDI device node: container path, and the host node's
/// type and numbers (so the runtime needs no host lookup).
fn device_node(node: &SimNode, path: &str) -> (Value, String) {
    let host = node.root().join(path.trim_start_matches('/'));
    let rdev = std::fs::metadata(&host)
        .unwrap_or_else(|e| panic!("{}: {e}", host.display()))
        .rdev();
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    (
        json!({"path": path, "type": "c", "major": major, "minor": minor}),
        format!("{major:x}:{minor:x}"),
    )
}

/// A pod created through CRI with a CDI id in its container's `CDI_devices` gets exactly the
/// spec's device nodes (created, and allowed by the device cgroup: ENXIO, not EPERM, from the
/// simulated driver's numbers) and env; a container of the same pod without the id gets
/// nothing of it; an id no spec defines fails CreateContainer with containerd's CDI error.
#[test]
fn containerd17_cri_cdi_devices_of_a_written_spec_reach_only_their_container() {
    let node = SimNode::new("h100-80gb", 1, true);
    let cdi = ShortDir::new("gs-cdi");
    let cri = Cri::start_cdi(&node, cdi.path());

    let claim = "5f0c8e2a-7d1b-4c3e-9a6f-0b1d2e3f4a5b";
    let paths = [
        "/dev/nvidia0",
        "/dev/nvidiactl",
        "/dev/nvidia-uvm",
        "/dev/nvidia-uvm-tools",
        "/dev/nvidia-caps/nvidia-cap1",
        "/dev/nvidia-caps/nvidia-cap2",
    ];
    let (nodes, numbers): (Vec<Value>, Vec<String>) =
        paths.iter().map(|p| device_node(&node, p)).unzip();
    let mig = "MIG-1c2d3e4f-0000-5000-8000-00000000cd1f";
    let spec = json!({
        "cdiVersion": "0.5.0",
        "kind": KIND,
        "devices": [{
            "name": format!("{claim}-0"),
            "containerEdits": {
                "env": [
                    format!("CUDA_VISIBLE_DEVICES={mig}"),
                    format!("NVIDIA_VISIBLE_DEVICES={mig}"),
                ],
                "deviceNodes": nodes,
            },
        }],
    });
    std::fs::write(
        spec_path(cdi.path(), claim),
        serde_json::to_vec_pretty(&spec).unwrap(),
    )
    .unwrap();

    let pod = cri
        .run_pod("cdi-demo", RUNC, &[])
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cri.daemon_log()));
    let id = cdi_id(claim, 0);
    let app = cri
        .run_container_cdi(&pod, "app", &show_and_hold(), &[&id])
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    let log = cri.wait_log(&pod, "app", "READY");
    assert_eq!(
        env_seen(&log, "CUDA_VISIBLE_DEVICES"),
        mig,
        "the spec's env (nothing at all: CDI is off in containerd's CRI config):\n{log}"
    );
    assert_eq!(env_seen(&log, "NVIDIA_VISIBLE_DEVICES"), mig, "{log}");
    let mut seen: Vec<(String, String)> = nodes_seen(&log)
        .into_iter()
        .map(|(path, numbers, result)| {
            assert!(
                result.contains("No such device or address"),
                "{path} must be allowed by the device cgroup (ENXIO), got {result:?}\n{log}"
            );
            (path, numbers)
        })
        .collect();
    seen.sort();
    let mut want: Vec<(String, String)> = paths
        .iter()
        .map(|p| p.to_string())
        .zip(numbers.iter().cloned())
        .collect();
    want.sort();
    assert_eq!(seen, want, "exactly the spec's nodes:\n{log}");
    // containerd put them in the OCI spec runc got: devices and their cgroup rules.
    let task = cri.task_spec(&app);
    let devices = task.pointer("/linux/devices").cloned().unwrap_or_default();
    for p in paths {
        assert!(devices.to_string().contains(p), "{p}: {devices:#}");
    }

    let plain = cri
        .run_container(&pod, "plain", &show_and_hold())
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    assert_sees_no_gpu(&cri.wait_log(&pod, "plain", "READY"));
    let plain_devices = cri.task_spec(&plain).pointer("/linux/devices").cloned();
    assert!(
        !plain_devices
            .unwrap_or_default()
            .to_string()
            .contains("nvidia"),
        "the container without the id gets no node of the spec"
    );

    let unknown = cdi_id("9e8d7c6b-0000-4000-8000-000000000000", 0);
    let err = cri
        .create_container_cdi(&pod, "unknown", &show_and_hold(), &[&unknown])
        .expect_err("a CDI id no spec defines must fail CreateContainer");
    eprintln!("CreateContainer with an unknown CDI id: {}", err.message());
    assert!(
        err.message().contains("CDI") && err.message().contains(&unknown),
        "containerd's CDI error names the id: {err}"
    );

    cri.delete_pod(&pod.id);
    assert!(cri.pod_ids().is_empty(), "pods left: {:?}", cri.pod_ids());
}
