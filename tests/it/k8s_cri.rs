//! Kubernetes for real, without a cluster: gpushare behind containerd's CRI plugin (this
//! machine's 1.6, and Debian trixie's 1.7 in the trixie root: every test runs on both), driven
//! over the CRI gRPC API the way kubelet drives it (RunPodSandbox with gpushare's runtime
//! handler and host networking, CreateContainer/StartContainer, ContainerStatus and the
//! container's log file, StopPodSandbox/RemovePodSandbox), on a simulated H100. containerd runs
//! privately with the containerd config packaging/ ships; the sandbox image is a static pause
//! program built here.
use crate::common;

use crate::cri;

use common::engines::*;
use common::trixie::Trixie;
use common::*;
use cri::*;
use k8s_cri::v1::ContainerState;
use serde_json::Value;
use std::process::Command;

const PROFILE: (&str, &str) = ("gpu.profile", "1g.10gb");
const RUNNING: i32 = ContainerState::ContainerRunning as i32;

/// SHOW_GPU, then a marker, then stay up so the slice is held while the test looks.
fn show_and_hold() -> String {
    format!("{SHOW_GPU}\necho READY\nexec sleep 1000")
}

fn annotations(spec: &Value) -> serde_json::Map<String, Value> {
    spec["annotations"].as_object().cloned().unwrap_or_default()
}

/// No GPU anything in a spec: no nvidia device node, no GPU env, no gpushare hook.
fn assert_spec_has_no_gpu(spec: &Value, what: &str) {
    let devices = spec.pointer("/linux/devices").cloned().unwrap_or_default();
    assert!(
        !devices.to_string().contains("nvidia"),
        "{what} must get no GPU device: {devices:#}"
    );
    let env = spec.pointer("/process/env").cloned().unwrap_or_default();
    assert!(
        !env.to_string().contains("VISIBLE_DEVICES"),
        "{what}: {env:#}"
    );
    let hooks = spec.get("hooks").cloned().unwrap_or_default();
    assert!(
        !hooks.to_string().contains("gpushare-hook"),
        "{what}: {hooks:#}"
    );
}

/// Leases as `gpusharectl status --json` shows them: container ids.
fn lease_ids(node: &SimNode) -> Vec<String> {
    let st = node.status_json();
    let mut ids: Vec<String> = st["leases"]
        .as_array()
        .unwrap_or_else(|| panic!("no leases array: {st:#}"))
        .iter()
        .map(|l| l["container_id"].as_str().unwrap_or_default().to_string())
        .collect();
    ids.sort();
    ids
}

/// The runc state dir the shim keeps for a CRI container exists.
fn in_runc_root(cri: &Cri, id: &str) -> bool {
    cri.runc_root().join(id).exists()
}

/// Nothing left: no pod, container, runc state or lease; every instance the simulated driver
/// has is one the ledger knows (idle in the pool).
fn assert_nothing_leaked(node: &SimNode, cri: &Cri, ids: &[String]) {
    wait_all_free(node);
    assert_all_free(node, None);
    assert!(cri.pod_ids().is_empty(), "pods left: {:?}", cri.pod_ids());
    assert!(
        cri.container_ids(None).is_empty(),
        "containers left: {:?}",
        cri.container_ids(None)
    );
    for id in ids {
        assert!(
            !in_runc_root(cri, id),
            "runc state of {id} left in {RUNC_ROOT}"
        );
    }
    let sim = node.sim_state();
    let in_driver = sim["gpus"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["gpu_instances"].as_array().map_or(0, Vec::len))
        .sum::<usize>();
    let ledger = node.ledger();
    assert_eq!(
        in_driver,
        ledger.instances.len(),
        "driver and ledger disagree: {sim:#}\n{ledger:?}"
    );
}

fn cri_pod_with_profile_gets_one_slice_and_frees_it_on_pod_removal(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let pod = cri
        .run_pod("mig-demo", HANDLER, &[PROFILE])
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cri.daemon_log()));
    // The pod annotation reached the sandbox (pause) container, which took nothing.
    let sandbox = cri.task_spec(&pod.id);
    let ann = annotations(&sandbox);
    assert_eq!(
        ann.get("io.kubernetes.cri.container-type"),
        Some(&"sandbox".into())
    );
    assert_eq!(ann.get("gpu.profile"), Some(&"1g.10gb".into()), "{ann:?}");
    assert_spec_has_no_gpu(&sandbox, "the sandbox");
    assert_nothing_made(&node);

    let cid = cri
        .run_container(&pod, "app", &show_and_hold())
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    let log = cri.wait_log(&pod, "app", "READY");
    let mig = assert_sees_one_slice(&node, &log);
    let st = cri.container_status(&cid);
    assert_eq!(st.state, RUNNING, "running: {st:?}");
    let spec = cri.task_spec(&cid);
    let ann = annotations(&spec);
    assert_eq!(
        ann.get("io.kubernetes.cri.container-name"),
        Some(&"app".into())
    );
    assert!(
        spec.to_string().contains(&mig),
        "the spec carries the slice"
    );
    assert_eq!(
        lease_ids(&node),
        vec![cid.clone()],
        "one lease, the pod's container"
    );
    let status = node.ctl(&["status"]);
    assert!(
        text(&status.stdout).contains(&cid),
        "gpusharectl status names the container:\n{}",
        text(&status.stdout)
    );

    cri.delete_pod(&pod.id);
    assert_nothing_leaked(&node, &cri, &[cid, pod.id.clone()]);
    assert_all_free(&node, Some(&mig));
}

/// `kubectl exec` into a pod's GPU container (CRI ExecSync): containerd builds the exec's
/// process from its own container spec, never the one gpushare edited, and the exec'd process
/// still sees the container's slice.
fn cri_exec_into_a_gpu_container_sees_its_slice(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let pod = cri
        .run_pod("exec-demo", HANDLER, &[PROFILE])
        .unwrap_or_else(|e| panic!("RunPodSandbox: {e}\n{}", cri.daemon_log()));
    let cid = cri
        .run_container(&pod, "app", &show_and_hold())
        .unwrap_or_else(|e| panic!("Create/StartContainer: {e}\n{}", cri.daemon_log()));
    let mig = assert_sees_one_slice(&node, &cri.wait_log(&pod, "app", "READY"));
    let out = cri
        .exec_sync(&cid, &["/bin/sh", "-c", SHOW_GPU])
        .unwrap_or_else(|e| panic!("ExecSync: {e}\n{}", cri.daemon_log()));
    assert_eq!(out.exit_code, 0, "{}", text(&out.stderr));
    assert_eq!(assert_sees_one_slice(&node, &text(&out.stdout)), mig);
    cri.delete_pod(&pod.id);
    assert_nothing_leaked(&node, &cri, &[cid, pod.id.clone()]);
}

fn cri_gpu_containers_restricts_the_pod_request_and_each_container_gets_its_own(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let script = show_and_hold();
    // gpu.containers names one of two containers: only that one gets a slice.
    let pod = cri
        .run_pod(
            "trainer-pod",
            HANDLER,
            &[PROFILE, ("gpu.containers", "trainer")],
        )
        .unwrap();
    let trainer = cri.run_container(&pod, "trainer", &script).unwrap();
    let sidecar = cri
        .run_container(&pod, "sidecar", &script)
        .unwrap_or_else(|e| panic!("the sidecar must start without a GPU: {e}"));
    let mig = assert_sees_one_slice(&node, &cri.wait_log(&pod, "trainer", "READY"));
    assert_sees_no_gpu(&cri.wait_log(&pod, "sidecar", "READY"));
    assert_spec_has_no_gpu(&cri.task_spec(&sidecar), "the sidecar");
    assert_eq!(lease_ids(&node), vec![trainer.clone()]);

    // Without gpu.containers, every app container of the pod gets a slice of its own.
    let pod2 = cri.run_pod("pair", HANDLER, &[PROFILE]).unwrap();
    let a = cri.run_container(&pod2, "a", &script).unwrap();
    let b = cri.run_container(&pod2, "b", &script).unwrap();
    let mig_a = assert_sees_one_slice(&node, &cri.wait_log(&pod2, "a", "READY"));
    let mig_b = assert_sees_one_slice(&node, &cri.wait_log(&pod2, "b", "READY"));
    assert!(mig_a != mig_b && mig_a != mig && mig_b != mig);
    let mut want = vec![trainer.clone(), a.clone(), b.clone()];
    want.sort();
    assert_eq!(lease_ids(&node), want);

    // A malformed list is refused with gpushare's message, through the CRI error.
    let pod3 = cri
        .run_pod(
            "bad-list",
            HANDLER,
            &[PROFILE, ("gpu.containers", "Trainer")],
        )
        .unwrap();
    let err = cri
        .run_container(&pod3, "trainer", &script)
        .expect_err("a malformed gpu.containers must fail the container");
    assert!(
        err.message()
            .contains("annotation gpu.containers=\"Trainer\" is not valid")
            && err.message().contains("accepted:"),
        "{err}"
    );

    // Removing one container frees its slice at once; the pod's other container keeps its.
    cri.stop_container(&a).unwrap();
    cri.remove_container(&a).unwrap();
    wait_until(|| !lease_ids(&node).contains(&a), "a's lease released");
    assert!(lease_ids(&node).contains(&b));

    let ids = vec![trainer, sidecar, a, b, pod.id.clone(), pod2.id.clone()];
    for p in [&pod, &pod2, &pod3] {
        cri.delete_pod(&p.id);
    }
    assert_nothing_leaked(&node, &cri, &ids);
}

fn wait_until(mut cond: impl FnMut() -> bool, what: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while !cond() {
        assert!(
            std::time::Instant::now() < deadline,
            "not {what} within 30 s"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn cri_eight_pods_at_once_seven_run_and_the_eighth_is_refused(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let script = show_and_hold();
    let results: Vec<(Pod, Result<String, tonic::Status>)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let (cri, script) = (&cri, &script);
                s.spawn(move || {
                    let pod = cri
                        .run_pod(&format!("tenant-{i}"), HANDLER, &[PROFILE])
                        .unwrap_or_else(|e| panic!("RunPodSandbox {i}: {e}"));
                    let res = cri.run_container(&pod, "app", script);
                    (pod, res)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let refused: Vec<&tonic::Status> = results
        .iter()
        .filter_map(|(_, r)| r.as_ref().err())
        .collect();
    assert_eq!(refused.len(), 1, "exactly one refused: {refused:?}");
    let msg = refused[0].message();
    eprintln!("the eighth container's StartContainer error: {msg}");
    assert!(
        msg.contains("gpushare: no free 1g.10gb slice on GPU 0"),
        "the CRI error carries gpushare's message: {msg}"
    );
    let mut migs = Vec::new();
    let mut ids = Vec::new();
    for (pod, res) in &results {
        ids.push(pod.id.clone());
        if let Ok(cid) = res {
            migs.push(assert_sees_one_slice(
                &node,
                &cri.wait_log(pod, "app", "READY"),
            ));
            ids.push(cid.clone());
        }
    }
    migs.sort();
    migs.dedup();
    assert_eq!(migs.len(), 7, "seven distinct slices: {migs:?}");
    assert_eq!(lease_ids(&node).len(), 7);
    // The refused container exists in CRI but never ran; kubelet would retry it.
    let failed_pod = &results.iter().find(|(_, r)| r.is_err()).unwrap().0;
    for cid in cri.container_ids(Some(&failed_pod.id)) {
        let st = cri.container_status(&cid);
        assert_ne!(
            st.state, RUNNING,
            "the refused container is not running: {st:?}"
        );
        ids.push(cid);
    }
    for (pod, _) in &results {
        cri.delete_pod(&pod.id);
    }
    assert_nothing_leaked(&node, &cri, &ids);
    assert_eq!(node.ledger().instances.len(), 7);
}

fn cri_pod_annotations_the_config_does_not_pass_reach_nothing(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let script = show_and_hold();
    // A tenant holding a slice.
    let owner = cri.run_pod("owner", HANDLER, &[PROFILE]).unwrap();
    let owner_c = cri.run_container(&owner, "app", &script).unwrap();
    let mig = assert_sees_one_slice(&node, &cri.wait_log(&owner, "app", "READY"));

    // Keys outside `gpu.*`: one naming the owner's lease (the hooks' claim annotation), look-
    // alikes of a request. None passes, so none reaches gpushare.
    let not_passed = [
        ("gpushare.lease", owner_c.as_str()),
        ("example.com/gpu.profile", "1g.10gb"),
        ("Gpu.profile", "1g.10gb"),
        ("gpu-profile", "1g.10gb"),
    ];
    let other = cri.run_pod("other", HANDLER, &not_passed).unwrap();
    let other_c = cri.run_container(&other, "app", &script).unwrap();
    assert_sees_no_gpu(&cri.wait_log(&other, "app", "READY"));
    for id in [&other.id, &other_c] {
        let spec = cri.task_spec(id);
        let ann = annotations(&spec);
        for (k, _) in not_passed {
            assert!(!ann.contains_key(k), "{k} must not reach the spec: {ann:?}");
        }
        assert_spec_has_no_gpu(&spec, "a container without a passed request");
    }
    // The plain runc handler passes no pod annotation at all.
    let plain = cri.run_pod("plain", RUNC, &[PROFILE]).unwrap();
    let plain_c = cri.run_container(&plain, "app", &script).unwrap();
    assert_sees_no_gpu(&cri.wait_log(&plain, "app", "READY"));
    assert!(!annotations(&cri.task_spec(&plain_c)).contains_key("gpu.profile"));

    // Removing those pods leaves the owner's lease alone.
    cri.delete_pod(&other.id);
    cri.delete_pod(&plain.id);
    assert_eq!(lease_ids(&node), vec![owner_c.clone()]);
    assert_eq!(node.ledger().instances.len(), 1);
    cri.delete_pod(&owner.id);
    assert_nothing_leaked(&node, &cri, &[owner_c, other_c, plain_c]);
    assert_all_free(&node, Some(&mig));
}

fn cri_containerd_sigkilled_and_restarted_every_slice_released_once(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let mut cri = Cri::start_on(&node, on);
    let script = show_and_hold();
    let pa = cri.run_pod("crash-a", HANDLER, &[PROFILE]).unwrap();
    let a = cri.run_container(&pa, "app", &script).unwrap();
    let pb = cri.run_pod("crash-b", HANDLER, &[PROFILE]).unwrap();
    let b = cri.run_container(&pb, "app", &script).unwrap();
    let mig_a = assert_sees_one_slice(&node, &cri.wait_log(&pa, "app", "READY"));
    let mig_b = assert_sees_one_slice(&node, &cri.wait_log(&pb, "app", "READY"));
    assert_ne!(mig_a, mig_b);

    cri.kill_containerd();
    // The shims and containers outlive containerd; their slices stay held.
    assert!(in_runc_root(&cri, &a) && in_runc_root(&cri, &b));
    let mut both = vec![a.clone(), b.clone()];
    both.sort();
    assert_eq!(lease_ids(&node), both);

    cri.restart_containerd();
    assert_eq!(cri.container_status(&a).state, RUNNING, "a still runs");
    assert_eq!(cri.container_status(&b).state, RUNNING, "b still runs");

    // Pod a removed through CRI after the restart: its slice comes back, b's stays held.
    cri.delete_pod(&pa.id);
    wait_until(|| !lease_ids(&node).contains(&a), "a's lease released");
    assert_eq!(lease_ids(&node), vec![b.clone()]);
    // A new tenant (it may well get a's idle slice); removing b must not release it: no slice
    // is released twice, or on behalf of another container.
    let pc = cri.run_pod("after-crash", HANDLER, &[PROFILE]).unwrap();
    let c = cri.run_container(&pc, "app", &script).unwrap();
    let mig_c = assert_sees_one_slice(&node, &cri.wait_log(&pc, "app", "READY"));
    assert_ne!(mig_c, mig_b, "b still holds its slice");
    cri.delete_pod(&pb.id);
    wait_until(|| !lease_ids(&node).contains(&b), "b's lease released");
    assert_eq!(lease_ids(&node), vec![c.clone()]);
    // gc finds nothing of a or b to release, and leaves the live tenant alone.
    let gc = node.ctl(&["gc"]);
    assert!(gc.status.success(), "gc: {}", text(&gc.stderr));
    assert_eq!(lease_ids(&node), vec![c.clone()]);
    assert_eq!(cri.container_status(&c).state, RUNNING);

    cri.delete_pod(&pc.id);
    assert_nothing_leaked(&node, &cri, &[a, b, c]);
}

fn cri_pod_without_request_runs_exactly_as_with_plain_runc(on: Containerd) {
    let node = SimNode::new("h100-80gb", 1, true);
    let cri = Cri::start_on(&node, on);
    let mut seen = Vec::new();
    for handler in [RUNC, HANDLER] {
        let pod = cri
            .run_pod("plain", handler, &[("unrelated", "1")])
            .unwrap_or_else(|e| panic!("{handler}: {e}"));
        let cid = cri
            .run_container(&pod, "app", SHOW_ALL)
            .unwrap_or_else(|e| panic!("{handler}: {e}"));
        let st = cri.wait_exited(&cid);
        assert_eq!(st.exit_code, 3, "{handler}: {st:?}");
        seen.push(cri.log(&pod, "app"));
        cri.delete_pod(&pod.id);
    }
    assert!(seen[0].contains("CapEff"), "{}", seen[0]);
    assert_eq!(seen[1], seen[0], "gpushare's handler vs runc's");
    assert!(!seen[1].contains("nvidia"));
    assert_nothing_made(&node);
}

/// The shipped 1.x drop-in, installed as install.sh installs it (imported from a config.toml
/// that has nothing else), keeps containerd's CRI plugin loadable: on 1.x an import replaces
/// the whole CRI section, so the file must carry the default runc runtime itself.
fn cri_plugin_loads_with_the_shipped_drop_in_imported(on: Containerd) {
    require_root();
    let dir = ShortDir::new("gs-crimp");
    let d = dir.path();
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::create_dir_all(d.join("cni")).unwrap();
    // Verbatim in the trixie root, where gpushare sits at its installed path.
    let shipped = match on {
        Containerd::Host => packaging_file("containerd/gpushare-v2.toml"),
        Containerd::Trixie => {
            std::fs::read_to_string(repo_root().join("packaging/containerd/gpushare-v2.toml"))
                .unwrap()
        }
    };
    std::fs::write(d.join("conf.d/gpushare.toml"), shipped).unwrap();
    let sock = d.join("c.sock");
    let main = format!(
        "version = 2\nroot = {:?}\nstate = {:?}\nimports = [{:?}]\n[grpc]\n  address = {:?}\n\
         [ttrpc]\n  address = {:?}\n",
        d.join("root").display().to_string(),
        d.join("state").display().to_string(),
        format!("{}/conf.d/*.toml", d.display()),
        sock.display().to_string(),
        format!("{}.ttrpc", sock.display()),
    );
    std::fs::write(d.join("config.toml"), main).unwrap();
    // A node only for the trixie root's namespace; this containerd runs no container.
    let node = SimNode::new("h100-80gb", 1, true);
    let tx = (on == Containerd::Trixie).then(|| Trixie::enter_sharing(&node, &[d]));
    let daemon = spawn_containerd(tx.as_ref(), d, &sock, &node.config());
    let mut ctr = match &tx {
        Some(tx) => tx.cmd("ctr"),
        None => Command::new("ctr"),
    };
    let out = run(ctr.arg("-a").arg(&sock).args(["plugins", "ls"]));
    let plugins = text(&out.stdout);
    let cri_line = plugins
        .lines()
        .find(|l| l.contains("io.containerd.grpc.v1") && l.contains(" cri "))
        .unwrap_or_else(|| panic!("no CRI plugin listed:\n{plugins}"));
    assert!(
        cri_line.trim_end().ends_with("ok"),
        "the CRI plugin must load with the shipped drop-in: {cri_line}\n{}",
        daemon.log_text()
    );
    drop(daemon);
}

/// Every CRI test above, against this machine's containerd (bookworm: 1.6) and Debian
/// trixie's 1.7 (tests/it/common/trixie.rs).
macro_rules! on_both {
    ($($name:ident),* $(,)?) => {
        mod containerd16 {
            $(#[test]
            fn $name() {
                super::$name(super::Containerd::Host)
            })*
        }
        mod containerd17 {
            $(#[test]
            fn $name() {
                super::$name(super::Containerd::Trixie)
            })*
        }
    };
}

on_both!(
    cri_pod_with_profile_gets_one_slice_and_frees_it_on_pod_removal,
    cri_exec_into_a_gpu_container_sees_its_slice,
    cri_gpu_containers_restricts_the_pod_request_and_each_container_gets_its_own,
    cri_eight_pods_at_once_seven_run_and_the_eighth_is_refused,
    cri_pod_annotations_the_config_does_not_pass_reach_nothing,
    cri_containerd_sigkilled_and_restarted_every_slice_released_once,
    cri_pod_without_request_runs_exactly_as_with_plain_runc,
    cri_plugin_loads_with_the_shipped_drop_in_imported,
);
