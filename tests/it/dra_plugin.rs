//! The DRA kubelet plugin (`gpushare-dra`) on a simulated node, driven as the kubelet drives
//! it: registration, then NodePrepareResources / NodeUnprepareResources over its sockets with
//! claims shaped as the scheduler writes them. What the container runtime then does with the
//! CDI specs is tests/it/dra_cri.rs's.

use crate::common::kubelet::{dra_bin, DraDirs, Kubelet, Plugin, Version, NODE_NAME};
use crate::common::{text, SimNode};
use gpushare_core::ledger::{LedgerState, Owner};
use serde_json::Value;
use std::path::PathBuf;

const NS: &str = "team-a";

/// The plugin's failpoints, each killed at by a test here (crash_safety checks none is missed).
pub const FAILPOINTS: &[&str] = &[
    "dra.prepare.granted",
    "dra.prepare.written",
    "dra.unprepare.removed",
];

fn endpoint(dirs: &DraDirs) -> PathBuf {
    gpushare_dra::sockets::dra_socket(&dirs.plugin_dir())
}

/// The device paths a CDI spec's first device gives the container.
fn node_paths(spec: &Value) -> Vec<String> {
    let mut p: Vec<String> = spec["devices"][0]["containerEdits"]["deviceNodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["path"].as_str().unwrap().to_string())
        .collect();
    p.sort();
    p
}

fn env_of(spec: &Value, key: &str) -> Option<String> {
    spec["devices"][0]["containerEdits"]["env"]
        .as_array()?
        .iter()
        .filter_map(|e| e.as_str()?.strip_prefix(&format!("{key}=")))
        .map(str::to_string)
        .next()
}

/// The MIG record the claim device's lease names.
fn leased(st: &LedgerState, device: &str) -> Option<usize> {
    st.lease_of(&Owner::claim_lease_id(device))
}

#[test]
fn a_mig_claim_is_prepared_at_its_placement_once_and_released_to_the_warm_pool() {
    let node = SimNode::new("h100-80gb", 2, true);
    let dirs = DraDirs::new();
    let uid = "3d1c6a52-0f5e-4a8e-9b7e-111111111111";
    // Placement 3 of GPU 1: not where gpushare's own policy would put a first 1g.10gb.
    dirs.write_claim(NS, "mig", uid, NODE_NAME, &[("gpu", "gpu1-1g-10gb-at3")]);
    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();

    let info = kubelet.register(&dirs.registration_socket());
    assert_eq!(info.r#type, "DRAPlugin");
    assert_eq!(info.name, "gpu.gpushare.dev");
    assert_eq!(PathBuf::from(&info.endpoint), endpoint(&dirs));
    assert_eq!(
        info.supported_versions,
        ["v1.DRAPlugin", "v1beta1.DRAPlugin"]
    );

    // Published at start: an empty node offers a first placement of each profile per GPU.
    let (gen0, devices) = dirs.published();
    assert!(
        gen0 >= 1 && devices.iter().any(|d| d.starts_with("gpu1-1g-10gb-at")),
        "{devices:?}"
    );

    let claims = [(NS, "mig", uid)];
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    let r = &out[uid];
    assert_eq!(r.error, "");
    assert_eq!(r.devices.len(), 1);
    let d = &r.devices[0];
    assert_eq!(
        (
            d.pool_name.as_str(),
            d.device_name.as_str(),
            d.request_names.as_slice()
        ),
        (
            NODE_NAME,
            "gpu1-1g-10gb-at3",
            ["gpu".to_string()].as_slice()
        )
    );
    assert_eq!(d.cdi_device_ids, [format!("gpushare.dev/gpu={uid}-0")]);

    // The ledger leases exactly that placement to the claim; the driver has that one instance.
    let st = node.ledger();
    let i = leased(&st, &format!("{uid}-0")).expect("the claim holds a lease");
    let rec = &st.instances[i];
    assert_eq!(
        (rec.gpu_index, rec.profile.as_str(), rec.slot.start),
        (1, "1g.10gb", 3)
    );
    let made = rec.made.clone().unwrap();
    assert_eq!(st.instances.len(), 1);

    // The CDI spec names exactly the slice: GPU 1's node, its two capability nodes, the
    // shared control nodes, and its MIG UUID.
    let spec = dirs.cdi_spec(uid).expect("the claim's CDI spec");
    assert_eq!(spec["kind"], "gpushare.dev/gpu");
    assert_eq!(spec["devices"][0]["name"], format!("{uid}-0"));
    let mut want = vec![
        "/dev/nvidia-uvm".to_string(),
        "/dev/nvidia-uvm-tools".into(),
        "/dev/nvidia1".into(),
        "/dev/nvidiactl".into(),
        format!("/dev/nvidia-caps/nvidia-cap{}", made.gi_cap_minor),
        format!("/dev/nvidia-caps/nvidia-cap{}", made.ci_cap_minor),
    ];
    want.sort();
    assert_eq!(node_paths(&spec), want);
    assert_eq!(
        env_of(&spec, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(made.mig_uuid.as_str())
    );
    // Published again after the grant: the leased instance stays a device (its counters stay
    // consumed).
    let (gen1, devices) = dirs.published();
    assert!(gen1 > gen0, "republished after the grant");
    assert!(
        devices.contains(&"gpu1-1g-10gb-at3".to_string()),
        "{devices:?}"
    );

    // gc does not take a claim's lease for a container's that is gone.
    let gc = node.ctl(&["gc"]);
    assert!(gc.status.success(), "gpusharectl gc: {}", text(&gc.stderr));
    assert!(
        leased(&node.ledger(), &format!("{uid}-0")).is_some(),
        "gc kept the claim's lease"
    );
    let status = node.ctl(&["status"]);
    assert!(
        text(&status.stdout).contains(&format!("claim device {uid}-0  GPU 1  MIG 1g.10gb")),
        "{}",
        text(&status.stdout)
    );

    // A second prepare of the same claim: the same answer, nothing granted or rewritten.
    let spec_file = gpushare_dra::cdi::spec_path(&dirs.cdi_dir(), uid);
    let written = std::fs::metadata(&spec_file).unwrap().modified().unwrap();
    let before = node.ledger();
    let sim_before = node.sim_state();
    let again = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(again[uid], out[uid]);
    let after = node.ledger();
    assert_eq!(after.instances, before.instances);
    assert_eq!(
        (after.stats.grants_warm, after.stats.grants_cold),
        (before.stats.grants_warm, before.stats.grants_cold)
    );
    assert_eq!(node.sim_state(), sim_before);
    assert_eq!(
        std::fs::metadata(&spec_file).unwrap().modified().unwrap(),
        written
    );

    // Unprepare: the spec goes, the instance stays made and goes idle (the warm pool).
    let un = kubelet
        .unprepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(un[uid], "");
    assert!(dirs.cdi_spec(uid).is_none(), "the spec is removed");
    let st = node.ledger();
    assert_eq!(st.instances.len(), 1);
    assert!(st.instances[0].lease.is_none() && st.instances[0].idle_since.is_some());
    assert_eq!(
        st.instances[0].made.as_ref().unwrap().mig_uuid,
        made.mig_uuid
    );
    let (gen2, devices) = dirs.published();
    assert!(gen2 > gen1, "republished after the release");
    assert!(
        devices.contains(&"gpu1-1g-10gb-at3".to_string()),
        "the warm instance: {devices:?}"
    );
    // Twice is fine.
    let un = kubelet
        .unprepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(un[uid], "");

    // Another claim of that placement is served warm, from the same instance.
    let uid2 = "3d1c6a52-0f5e-4a8e-9b7e-222222222222";
    dirs.write_claim(NS, "mig2", uid2, NODE_NAME, &[("gpu", "gpu1-1g-10gb-at3")]);
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &[(NS, "mig2", uid2)])
        .unwrap();
    assert_eq!(out[uid2].error, "");
    let st = node.ledger();
    let i = leased(&st, &format!("{uid2}-0")).unwrap();
    assert_eq!(
        st.instances[i].made.as_ref().unwrap().mig_uuid,
        made.mig_uuid
    );
    assert_eq!(st.stats.grants_warm, before.stats.grants_warm + 1);
}

#[test]
fn a_prepared_claim_whose_lease_is_gone_is_granted_again_on_the_next_prepare() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let uid = "2b3c4d5e-6f70-4812-9a3b-888888888888";
    dirs.write_claim(NS, "lost", uid, NODE_NAME, &[("gpu", "gpu0-3g-40gb-at4")]);
    let claims = [(NS, "lost", uid)];
    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(out[uid].error, "");
    let mig = {
        let st = node.ledger();
        let i = leased(&st, &format!("{uid}-0")).unwrap();
        st.instances[i].made.clone().unwrap().mig_uuid
    };
    // The lease goes (an operator's release), the spec stays: the slice could be granted to
    // another while the claim's containers still use it.
    let id = Owner::claim_lease_id(&format!("{uid}-0"));
    let r = node.ctl(&["release", &id]);
    assert!(r.status.success(), "{}", text(&r.stderr));
    assert!(leased(&node.ledger(), &format!("{uid}-0")).is_none());

    let again = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(again[uid], out[uid]);
    let st = node.ledger();
    let i = leased(&st, &format!("{uid}-0")).expect("leased to the claim again");
    assert_eq!(st.instances[i].made.as_ref().unwrap().mig_uuid, mig);
    assert_eq!(st.instances.len(), 1);
}

#[test]
fn a_plugin_killed_between_grant_and_cdi_spec_is_repaired_when_it_starts_again() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let uid = "9a0b7f3e-5c1d-4e2f-8a9b-333333333333";
    dirs.write_claim(NS, "crash", uid, NODE_NAME, &[("gpu", "gpu0-2g-20gb-at2")]);
    let claims = [(NS, "crash", uid)];
    let kubelet = Kubelet::new();

    let mut plugin = Plugin::start(
        &node,
        &dirs,
        &[("GPUSHARE_FAILPOINT", "dra.prepare.granted:kill")],
    );
    kubelet.register(&dirs.registration_socket());
    let died = kubelet.prepare(&endpoint(&dirs), Version::V1, &claims);
    assert!(died.is_err(), "the plugin died mid-call: {died:?}");
    let st = plugin.wait_exit();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&st),
        Some(libc::SIGKILL),
        "{}",
        plugin.log()
    );
    // What the crash left: a lease no kubelet was told of, and no spec.
    let st = node.ledger();
    let i = leased(&st, &format!("{uid}-0")).expect("granted before the kill");
    let mig = st.instances[i].made.clone().unwrap().mig_uuid;
    assert!(dirs.cdi_spec(uid).is_none());

    // Started again, the plugin releases it before it serves.
    let plugin = Plugin::start(&node, &dirs, &[]);
    let st = node.ledger();
    assert!(
        leased(&st, &format!("{uid}-0")).is_none(),
        "released at start: {}",
        plugin.log()
    );
    assert!(st.instances[0].lease.is_none());
    assert!(
        plugin.log().contains(&format!("{uid}-0")),
        "{}",
        plugin.log()
    );

    // The kubelet's retry prepares the claim on that same instance, now warm.
    kubelet.register(&dirs.registration_socket());
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(out[uid].error, "");
    let st = node.ledger();
    let i = leased(&st, &format!("{uid}-0")).unwrap();
    assert_eq!(st.instances[i].made.as_ref().unwrap().mig_uuid, mig);
    assert_eq!(st.instances.len(), 1);
    let spec = dirs.cdi_spec(uid).unwrap();
    assert_eq!(
        env_of(&spec, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(mig.as_str())
    );
}

#[test]
fn a_plugin_killed_after_the_spec_keeps_the_claim_prepared() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let uid = "9a0b7f3e-5c1d-4e2f-8a9b-999999999999";
    dirs.write_claim(NS, "crash", uid, NODE_NAME, &[("gpu", "gpu0-1g-10gb-at6")]);
    let claims = [(NS, "crash", uid)];
    let kubelet = Kubelet::new();
    let mut plugin = Plugin::start(
        &node,
        &dirs,
        &[("GPUSHARE_FAILPOINT", "dra.prepare.written:kill")],
    );
    assert!(kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .is_err());
    plugin.wait_exit();
    let spec = dirs.cdi_spec(uid).expect("written before the kill");
    let before = node.ledger();
    assert!(leased(&before, &format!("{uid}-0")).is_some());

    // The claim was whole: a restart keeps it, and the kubelet's retry grants nothing.
    let plugin = Plugin::start(&node, &dirs, &[]);
    assert!(
        leased(&node.ledger(), &format!("{uid}-0")).is_some(),
        "{}",
        plugin.log()
    );
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(out[uid].error, "");
    assert_eq!(node.ledger().instances, before.instances);
    assert_eq!(dirs.cdi_spec(uid), Some(spec));
}

#[test]
fn a_plugin_killed_between_removing_the_spec_and_the_release_is_repaired() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let uid = "9a0b7f3e-5c1d-4e2f-8a9b-444444444444";
    dirs.write_claim(NS, "crash", uid, NODE_NAME, &[("gpu", "gpu0-1g-10gb-at0")]);
    let claims = [(NS, "crash", uid)];
    let kubelet = Kubelet::new();
    let mut plugin = Plugin::start(
        &node,
        &dirs,
        &[("GPUSHARE_FAILPOINT", "dra.unprepare.removed:kill")],
    );
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(out[uid].error, "");
    assert!(kubelet
        .unprepare(&endpoint(&dirs), Version::V1, &claims)
        .is_err());
    plugin.wait_exit();
    assert!(dirs.cdi_spec(uid).is_none(), "the spec went first");
    assert!(leased(&node.ledger(), &format!("{uid}-0")).is_some());

    let _plugin = Plugin::start(&node, &dirs, &[]);
    let st = node.ledger();
    assert!(leased(&st, &format!("{uid}-0")).is_none());
    assert!(
        st.instances[0].idle_since.is_some(),
        "back in the warm pool"
    );
    // The kubelet's retried unprepare finds nothing left to do.
    let un = kubelet
        .unprepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(un[uid], "");
}

#[test]
fn the_v1beta1_service_prepares_a_whole_gpu_claim() {
    let node = SimNode::new("h100-80gb", 2, false);
    let dirs = DraDirs::new();
    let uid = "5e6f7a8b-9c0d-4e1f-a2b3-555555555555";
    // The host's driver files reach the claim's containers as they reach a RuntimeClass pod's.
    crate::common::host_driver_files(&node);
    dirs.write_claim(NS, "whole", uid, NODE_NAME, &[("gpu", "gpu0-whole")]);
    let claims = [(NS, "whole", uid)];
    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    kubelet.register(&dirs.registration_socket());
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1beta1, &claims)
        .unwrap();
    assert_eq!(out[uid].error, "");
    assert_eq!(
        out[uid].devices[0].cdi_device_ids,
        [format!("gpushare.dev/gpu={uid}-0")]
    );
    let st = node.ledger();
    let share = st
        .shares
        .iter()
        .find(|s| s.lease.container_id == Owner::claim_lease_id(&format!("{uid}-0")))
        .expect("a time-slice lease owned by the claim");
    assert_eq!(share.gpu_index, 0);
    let spec = dirs.cdi_spec(uid).unwrap();
    let paths = node_paths(&spec);
    assert!(paths.contains(&"/dev/nvidia0".to_string()), "{paths:?}");
    assert!(!paths.contains(&"/dev/nvidia1".to_string()), "{paths:?}");
    assert_eq!(
        env_of(&spec, "CUDA_VISIBLE_DEVICES").as_deref(),
        Some(share.gpu_uuid.as_str())
    );
    let mounts = spec["devices"][0]["containerEdits"]["mounts"]
        .as_array()
        .unwrap();
    let libcuda = mounts
        .iter()
        .find(|m| m["containerPath"] == "/usr/local/gpushare/lib/libcuda.so.1")
        .unwrap_or_else(|| panic!("the host's libcuda is mounted: {spec}"));
    assert!(libcuda["hostPath"]
        .as_str()
        .unwrap()
        .ends_with("libcuda.so.580.159.04"));
    assert!(libcuda["options"]
        .as_array()
        .unwrap()
        .contains(&"ro".into()));
    assert_eq!(
        env_of(&spec, "LD_LIBRARY_PATH").as_deref(),
        Some("/usr/local/gpushare/lib")
    );

    let un = kubelet
        .unprepare(&endpoint(&dirs), Version::V1beta1, &claims)
        .unwrap();
    assert_eq!(un[uid], "");
    assert!(node.ledger().shares.is_empty());
    assert!(dirs.cdi_spec(uid).is_none());
}

#[test]
fn claims_the_plugin_cannot_prepare_are_answered_with_the_reason_and_hold_nothing() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    // Another node's pool; a placement this GPU does not have; a claim never written.
    dirs.write_claim(
        NS,
        "other",
        "u-other",
        "node-b",
        &[("gpu", "gpu0-1g-10gb-at0")],
    );
    dirs.write_claim(
        NS,
        "bad",
        "u-bad",
        NODE_NAME,
        &[("a", "gpu0-1g-10gb-at0"), ("b", "gpu0-7g-80gb-at1")],
    );
    // Allocated only another driver's device: the kubelet never sends such a claim here, so it
    // was allocated again since; answered as prepared, the pod would run without its GPU.
    dirs.write_claim(NS, "theirs", "u-theirs", NODE_NAME, &[("gpu", "gpu-0")]);
    let theirs = dirs.claims_dir().join(format!("{NS}_theirs.json"));
    let mut claim: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&theirs).unwrap()).unwrap();
    claim["status"]["allocation"]["devices"]["results"][0]["driver"] = "gpu.nvidia.com".into();
    std::fs::write(&theirs, claim.to_string()).unwrap();
    let out = kubelet
        .prepare(
            &endpoint(&dirs),
            Version::V1,
            &[
                (NS, "other", "u-other"),
                (NS, "bad", "u-bad"),
                (NS, "missing", "u-missing"),
                (NS, "theirs", "u-theirs"),
            ],
        )
        .unwrap();
    assert!(
        out["u-theirs"]
            .error
            .contains("no device of driver gpu.gpushare.dev")
            && out["u-theirs"].error.contains("only gpu.nvidia.com"),
        "{}: {:?}",
        out["u-theirs"].error,
        out["u-theirs"].devices
    );
    assert!(
        out["u-other"].error.contains("allocated from pool node-b"),
        "{}",
        out["u-other"].error
    );
    assert!(
        out["u-bad"]
            .error
            .contains("cannot grant device gpu0-7g-80gb-at1"),
        "{}",
        out["u-bad"].error
    );
    assert!(
        out["u-missing"].error.contains("team-a_missing.json"),
        "{}",
        out["u-missing"].error
    );
    // The bad claim's first device was granted, then given back with the refusal.
    let st = node.ledger();
    assert!(
        st.instances.iter().all(|r| r.lease.is_none()),
        "{:?}",
        st.instances
    );
    assert!(gpushare_dra::cdi::claims(&dirs.cdi_dir()).is_empty());
}

#[test]
fn mps_claims_get_their_share_of_the_gpu() {
    let node = SimNode::new("h100-80gb", 2, false);
    node.use_fake_mps_control("");
    let dirs = DraDirs::new();
    let (counted, consumable) = (
        "7c8d9e0f-1a2b-4c3d-8e4f-666666666666",
        "7c8d9e0f-1a2b-4c3d-8e4f-777777777777",
    );
    dirs.write_claim(NS, "counted", counted, NODE_NAME, &[("gpu", "gpu0-mps-1")]);
    dirs.write_claim(
        NS,
        "consumable",
        consumable,
        NODE_NAME,
        &[("gpu", "gpu1-mps")],
    );
    // The scheduler records what a consumable-capacity allocation takes.
    let path = dirs.claims_dir().join(format!("{NS}_consumable.json"));
    let mut claim: Value = serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
    claim["status"]["allocation"]["devices"]["results"][0]["consumedCapacity"] =
        serde_json::json!({"smPercent": "30"});
    claim["status"]["allocation"]["devices"]["results"][0]["shareID"] =
        serde_json::json!("0d8e3a54-8f2c-4b7a-9a53-0123456789ab");
    std::fs::write(&path, serde_json::to_vec(&claim).unwrap()).unwrap();

    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    let claims = [(NS, "counted", counted), (NS, "consumable", consumable)];
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!(
        (out[counted].error.as_str(), out[consumable].error.as_str()),
        ("", "")
    );
    let st = node.ledger();
    // gpushare serves one share size per GPU (its MPS daemon enforces it): the claims are on
    // a GPU each.
    let share = |uid: &str| {
        st.mps
            .iter()
            .flat_map(|d| d.clients.iter().map(move |c| (d.gpu_index, c)))
            .find(|(_, c)| c.lease.container_id == Owner::claim_lease_id(&format!("{uid}-0")))
            .map(|(gpu, c)| (gpu, c.percent))
    };
    // --mps-shares 4 (the default): a counted share is a quarter of the SMs.
    assert_eq!(
        (share(counted), share(consumable)),
        (Some((0, 25)), Some((1, 30)))
    );
    for (uid, pct, dev) in [
        (counted, "25", "/dev/nvidia0"),
        (consumable, "30", "/dev/nvidia1"),
    ] {
        let spec = dirs.cdi_spec(uid).unwrap();
        assert_eq!(
            env_of(&spec, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE").as_deref(),
            Some(pct)
        );
        assert!(env_of(&spec, "CUDA_MPS_PIPE_DIRECTORY").is_some(), "{spec}");
        assert!(node_paths(&spec).contains(&dev.to_string()), "{spec}");
    }

    let un = kubelet
        .unprepare(&endpoint(&dirs), Version::V1, &claims)
        .unwrap();
    assert_eq!((un[counted].as_str(), un[consumable].as_str()), ("", ""));
    let st = node.ledger();
    assert!(
        st.mps.is_empty(),
        "the daemons stop with their last client: {:?}",
        st.mps
    );
}

/// The pool's newest publication: its ResourceSlices (read as resource.k8s.io/v1 objects), as
/// JSON.
fn newest_slices(dirs: &DraDirs) -> Vec<Value> {
    let slices = gpushare_dra::publish::DirSink::new(&dirs.slices_dir())
        .read(NODE_NAME)
        .unwrap();
    let newest = slices.iter().map(|(_, s)| s.spec.pool.generation).max();
    slices
        .iter()
        .filter(|(_, s)| Some(s.spec.pool.generation) == newest)
        .map(|(_, s)| serde_json::to_value(s).unwrap())
        .collect()
}

/// Whether the scheduler's counter rule lets these devices of the pool be allocated at once:
/// what they consume of every counter fits the value the pool's counter sets give it.
fn counters_admit(slices: &[Value], devices: &[&str]) -> bool {
    let value = |q: &Value| -> i64 { q.as_str().unwrap().parse().expect("integer counters") };
    let list = |v: &Value| v.as_array().cloned().unwrap_or_default();
    let mut left = std::collections::BTreeMap::new();
    for set in slices
        .iter()
        .flat_map(|s| list(&s["spec"]["sharedCounters"]))
    {
        for (name, c) in set["counters"].as_object().unwrap() {
            let key = (set["name"].as_str().unwrap().to_string(), name.clone());
            left.insert(key, value(&c["value"]));
        }
    }
    let all: Vec<Value> = slices
        .iter()
        .flat_map(|s| list(&s["spec"]["devices"]))
        .collect();
    for name in devices {
        let d = all
            .iter()
            .find(|d| d["name"] == *name)
            .unwrap_or_else(|| panic!("{name} is not published"));
        for c in list(&d["consumesCounters"]) {
            let set = c["counterSet"].as_str().unwrap();
            for (counter, used) in c["counters"].as_object().unwrap() {
                let n = left
                    .get_mut(&(set.to_string(), counter.clone()))
                    .unwrap_or_else(|| panic!("{name}: no counter {set}/{counter}"));
                *n -= value(&used["value"]);
                if *n < 0 {
                    return false;
                }
            }
        }
    }
    true
}

/// Issue #20's gap on an idle GPU outside MIG: its whole device and its MPS shares are both
/// published, and gpushare refuses an MPS share on a GPU that time-slices. Counted (the
/// plugin's default, no consumable capacity), the GPU's sharing counter lets a scheduler
/// allocate the whole GPU or shares, never one beside the other; so the prepare that would
/// be refused is never asked for. Once a claim time-slices the GPU, only its whole device is
/// published, still consuming the counter.
#[test]
fn an_idle_gpu_outside_mig_ties_its_whole_device_to_its_mps_shares() {
    let node = SimNode::new("h100-80gb", 1, false);
    node.use_fake_mps_control("");
    let dirs = DraDirs::new();
    let _plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();

    let slices = newest_slices(&dirs);
    let shares = ["gpu0-mps-0", "gpu0-mps-1", "gpu0-mps-2", "gpu0-mps-3"];
    let (_, devices) = dirs.published();
    assert_eq!(devices[0], "gpu0-whole", "{devices:?}");
    assert_eq!(devices[1..], shares, "{devices:?}");
    assert!(counters_admit(&slices, &["gpu0-whole"]));
    assert!(counters_admit(&slices, &shares), "every share at once");
    for share in shares {
        assert!(
            !counters_admit(&slices, &["gpu0-whole", share]),
            "gpu0-whole beside {share}"
        );
    }

    // The scheduler takes the whole GPU for one claim.
    let whole = "8a1b2c3d-4e5f-4a6b-8c7d-888888888888";
    dirs.write_claim(NS, "whole", whole, NODE_NAME, &[("gpu", "gpu0-whole")]);
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &[(NS, "whole", whole)])
        .unwrap();
    assert_eq!(out[whole].error, "");
    let (_, devices) = dirs.published();
    assert_eq!(
        devices,
        ["gpu0-whole"],
        "time-slicing: no MPS share offered"
    );
    let slices = newest_slices(&dirs);
    assert!(counters_admit(&slices, &["gpu0-whole"]));

    // What the counter spares the cluster: a share allocated beside the whole GPU (as an
    // untied publication would have let the scheduler do) is refused by the node.
    let mps = "8a1b2c3d-4e5f-4a6b-8c7d-999999999999";
    dirs.write_claim(NS, "mps", mps, NODE_NAME, &[("gpu", "gpu0-mps-0")]);
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &[(NS, "mps", mps)])
        .unwrap();
    assert!(
        out[mps].error.contains("time-sliced whole"),
        "{}",
        out[mps].error
    );
    assert!(node.ledger().mps.is_empty());
}

#[test]
fn sigterm_deregisters_the_plugin_and_keeps_what_it_prepared() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let uid = "1f2e3d4c-5b6a-4978-8695-aaaaaaaaaaaa";
    dirs.write_claim(NS, "kept", uid, NODE_NAME, &[("gpu", "gpu0-1g-10gb-at0")]);
    let mut plugin = Plugin::start(&node, &dirs, &[]);
    let kubelet = Kubelet::new();
    let out = kubelet
        .prepare(&endpoint(&dirs), Version::V1, &[(NS, "kept", uid)])
        .unwrap();
    assert_eq!(out[uid].error, "");
    let st = plugin.stop();
    assert!(st.success(), "{st}: {}", plugin.log());
    // The kubelet's plugin watcher takes the registration socket's removal as deregistration.
    assert!(!dirs.registration_socket().exists());
    assert!(!endpoint(&dirs).exists());
    // Pods keep running on what was prepared: a restart is no unprepare.
    assert!(dirs.cdi_spec(uid).is_some());
    assert!(leased(&node.ledger(), &format!("{uid}-0")).is_some());
}

/// An operator's typo in --claims-dir stops the plugin at start with what to do, instead of a
/// plugin that registers and then fails every publication and every prepare on it.
#[test]
fn a_missing_claims_folder_stops_the_plugin_at_start_with_what_to_do() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dirs = DraDirs::new();
    let missing = dirs.claims_dir().join("no-such-folder");
    // Before the fix it ran on: `timeout` turns that into a failure (124).
    let out = std::process::Command::new("timeout")
        .arg("20")
        .arg(dra_bin())
        .args(dirs.plugin_args(&node, &missing))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let err = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(
        err.contains(&format!("--claims-dir {}", missing.display()))
            && err.contains("No such file or directory")
            && err.contains("leave --claims-dir out"),
        "{err}"
    );
    assert!(!dirs.registration_socket().exists(), "not registered");
}
