//! Kubernetes DRA's node half with a real container runtime: Debian trixie's containerd 1.7
//! with CDI enabled in its CRI plugin by the shipped drop-in (`enable_cdi`, `cdi_spec_dirs`
//! with `/var/run/cdi`, where the test's CDI folder is seen), driven over CRI as kubelet drives
//! it, pods on the plain runc handler (under DRA the devices come from CDI, not
//! from gpushare's runtime), each container given the CDI ids of its pod's claims in
//! ContainerConfig's `CDI_devices`, as kubelet passes a DRA driver's CDI ids. The CDI names
//! are the DRA driver's contract (docs/kubernetes.md), spelt out here rather than taken from
//! the plugin crate so that the test checks the contract: kind `gpushare.dev/gpu`, one spec
//! file per claim, `gpushare.dev-claim_<claim uid>.json`, devices `<claim uid>-<n>`.
use crate::common;

use crate::cri;

use common::engines::*;
use common::kubelet::{DraDirs, Kubelet, Plugin, Version, NODE_NAME};
use common::*;
use cri::*;
use gpushare_core::ledger::{InstanceRecord, Owner};
use gpushare_dra::sockets::dra_socket;
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

/// NodePrepareResources of `claim` (namespace, name, uid) as the kubelet calls it; its CDI ids.
fn prepare(kubelet: &Kubelet, dirs: &DraDirs, claim: (&str, &str, &str)) -> Vec<String> {
    let out = kubelet
        .prepare(&dra_socket(&dirs.plugin_dir()), Version::V1, &[claim])
        .unwrap_or_else(|e| panic!("NodePrepareResources {claim:?}: {e}"));
    let r = &out[claim.2];
    assert_eq!(r.error, "", "NodePrepareResources {claim:?}");
    r.devices
        .iter()
        .flat_map(|d| d.cdi_device_ids.iter().cloned())
        .collect()
}

fn unprepare(kubelet: &Kubelet, dirs: &DraDirs, claim: (&str, &str, &str)) {
    let out = kubelet
        .unprepare(&dra_socket(&dirs.plugin_dir()), Version::V1, &[claim])
        .unwrap_or_else(|e| panic!("NodeUnprepareResources {claim:?}: {e}"));
    assert_eq!(out[claim.2], "", "NodeUnprepareResources {claim:?}");
}

/// The ledger's record leased to a claim's `n`th device.
fn claim_record(node: &SimNode, uid: &str, n: usize) -> Option<InstanceRecord> {
    let st = node.ledger();
    let i = st.lease_of(&Owner::claim_lease_id(&format!("{uid}-{n}")))?;
    Some(st.instances[i].clone())
}

/// The node half of DRA with a real runtime: two claims prepared by `gpushare-dra` at the
/// placements the scheduler allocated (a 3g.40gb and a 1g.10gb on one simulated H100), each
/// pod run through CRI with its claim's CDI ids sees exactly its own slice (its MIG UUID, that
/// instance's capability nodes and the GPU's shared nodes, all allowed; none of the other
/// claim's); a second prepare of a claim while its pod runs changes nothing; once its pod is
/// gone, unprepare releases the instance to the warm pool and removes the spec, so the
/// runtime refuses the id; the other claim's pod keeps its slice throughout.
#[test]
fn containerd17_dra_pods_see_exactly_their_claims_slices_and_unprepare_releases_them() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let cri = Cri::start_cdi(&node, &dirs.cdi_dir());
    let big = ("team-a", "trainer", "6a1f0c2e-3b4d-4e5f-8a7b-000000000001");
    let small = ("team-a", "notebook", "6a1f0c2e-3b4d-4e5f-8a7b-000000000002");
    dirs.write_claim(
        big.0,
        big.1,
        big.2,
        NODE_NAME,
        &[("gpu", "gpu0-3g-40gb-at4")],
    );
    dirs.write_claim(
        small.0,
        small.1,
        small.2,
        NODE_NAME,
        &[("gpu", "gpu0-1g-10gb-at0")],
    );
    let plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    kubelet.register(&dirs.registration_socket());

    let big_ids = prepare(&kubelet, &dirs, big);
    assert_eq!(big_ids, [cdi_id(big.2, 0)], "{}", plugin.log());
    let small_ids = prepare(&kubelet, &dirs, small);
    assert_eq!(small_ids, [cdi_id(small.2, 0)]);
    let big_rec = claim_record(&node, big.2, 0).expect("the trainer claim's lease");
    let small_rec = claim_record(&node, small.2, 0).expect("the notebook claim's lease");
    assert_eq!(
        (big_rec.profile.as_str(), big_rec.slot.start),
        ("3g.40gb", 4)
    );
    assert_eq!(
        (small_rec.profile.as_str(), small_rec.slot.start),
        ("1g.10gb", 0)
    );

    // kubelet runs each pod on its ordinary handler, each container with its claims' ids.
    let script = show_and_hold();
    let big_pod = cri.run_pod("trainer", RUNC, &[]).unwrap();
    let ids: Vec<&str> = big_ids.iter().map(String::as_str).collect();
    cri.run_container_cdi(&big_pod, "app", &script, &ids)
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    let small_pod = cri.run_pod("notebook", RUNC, &[]).unwrap();
    let ids: Vec<&str> = small_ids.iter().map(String::as_str).collect();
    cri.run_container_cdi(&small_pod, "app", &script, &ids)
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    let big_mig = assert_sees_one_slice(&node, &cri.wait_log(&big_pod, "app", "READY"));
    let small_mig = assert_sees_one_slice(&node, &cri.wait_log(&small_pod, "app", "READY"));
    assert_eq!(big_mig, big_rec.made.as_ref().unwrap().mig_uuid);
    assert_eq!(small_mig, small_rec.made.as_ref().unwrap().mig_uuid);

    // A second prepare of a claim whose pod runs (a kubelet restart does this): the same ids,
    // nothing granted, made or rewritten.
    let spec_file = spec_path(&dirs.cdi_dir(), big.2);
    let spec_before = std::fs::read(&spec_file).unwrap();
    let (ledger_before, sim_before) = (node.ledger(), node.sim_state());
    assert_eq!(prepare(&kubelet, &dirs, big), big_ids);
    assert_eq!(node.ledger().instances, ledger_before.instances);
    assert_eq!(node.sim_state(), sim_before);
    assert_eq!(std::fs::read(&spec_file).unwrap(), spec_before);

    // The trainer pod goes, then kubelet unprepares its claim: the instance stays made, idle
    // in the warm pool; the spec is gone, so the runtime no longer resolves the id.
    cri.delete_pod(&big_pod.id);
    unprepare(&kubelet, &dirs, big);
    assert!(!spec_file.exists(), "the claim's CDI spec is removed");
    assert!(
        claim_record(&node, big.2, 0).is_none(),
        "the claim's lease is released"
    );
    let st = node.ledger();
    let idle = st
        .instances
        .iter()
        .find(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == big_mig))
        .expect("the instance stays made (warm)");
    assert!(
        idle.lease.is_none() && idle.idle_since.is_some(),
        "{idle:?}"
    );
    let late = cri.run_pod("late", RUNC, &[]).unwrap();
    let err = cri
        .create_container_cdi(&late, "app", &script, &[&big_ids[0]])
        .expect_err("an unprepared claim's id must not resolve");
    assert!(err.message().contains("unresolvable CDI devices"), "{err}");
    cri.delete_pod(&late.id);

    // The notebook pod kept its slice through all of it.
    assert_eq!(
        claim_record(&node, small.2, 0)
            .and_then(|r| r.made)
            .map(|m| m.mig_uuid),
        Some(small_mig.clone())
    );
    cri.delete_pod(&small_pod.id);
    unprepare(&kubelet, &dirs, small);
    assert_all_free(&node, Some(&small_mig));
    assert!(cri.pod_ids().is_empty(), "pods left: {:?}", cri.pod_ids());
}
