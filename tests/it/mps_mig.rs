//! MPS shares inside a MIG slice (`gpu.profile=3g.40gb` with `gpu.mps`) on a simulated H100 in
//! MIG mode, through real runc, with the stand-in MPS control program (one daemon per MIG
//! device, bound to it by `CUDA_VISIBLE_DEVICES`). Crash repair is in tests/it/crash_safety.rs.
use crate::common;
use crate::invariants;

use common::*;

/// What a client sees: its device, the MPS variables, the pipe folder, the driver's nodes.
const SHOW: &str = r#"
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
echo "NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"
echo "CUDA_MPS_PIPE_DIRECTORY=$CUDA_MPS_PIPE_DIRECTORY"
echo "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
[ -S "$CUDA_MPS_PIPE_DIRECTORY/control" ] && echo "control socket visible"
for f in /dev/nvidia* /dev/nvidia-caps/*; do
  [ -c "$f" ] && echo "node $f $(stat -c '%t:%T' "$f") x"
done
"#;

const SHARE_33: [(&str, &str); 2] = [("gpu.profile", "3g.40gb"), ("gpu.mps", "33")];
const SHARE_50: [(&str, &str); 2] = [("gpu.profile", "3g.40gb"), ("gpu.mps", "50")];
const PLAIN: [(&str, &str); 1] = [("gpu.profile", "3g.40gb")];

/// One simulated H100 with MIG on, gpushare's MPS control the stand-in.
pub fn mps_mig_node(extra: &str) -> SimNode {
    let node = SimNode::new("h100-80gb", 1, true);
    node.use_fake_mps_control(extra);
    node
}

/// The MIG UUID the daemon serving `id` is bound to.
fn host_of(node: &SimNode, id: &str) -> String {
    node.ledger()
        .mps
        .iter()
        .find(|d| d.clients.iter().any(|c| c.lease.container_id == id))
        .and_then(|d| d.mig.as_ref())
        .map(|h| h.mig_uuid.clone())
        .unwrap_or_else(|| panic!("{id} is no client of a daemon in a MIG slice"))
}

fn gone(pid: u32) -> bool {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while std::path::Path::new(&format!("/proc/{pid}")).exists() {
        if std::time::Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    true
}

#[test]
fn three_shares_fill_one_3g_instance_a_fourth_size_gets_a_second_and_plain_mig_never_gets_them() {
    require_root();
    let node = mps_mig_node("");
    let engine = Engine::new(&node, Runtime::Runc);
    let small: Vec<(Bundle, String)> = (0..3)
        .map(|i| {
            (
                Bundle::new(SHOW, &SHARE_33, &[]),
                unique(&format!("s33-{i}")),
            )
        })
        .collect();
    for (b, id) in &small {
        let out = engine.create(b, id);
        assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
    }
    let mig = host_of(&node, &small[0].1);
    let st = node.ledger();
    assert_eq!(st.mps.len(), 1, "one daemon for the three: {:?}", st.mps);
    assert_eq!(st.mps[0].clients.len(), 3);
    let log = mps_control_log(&node);
    assert_eq!(log.matches("start pid=").count(), 1, "{log}");
    assert!(
        log.contains(&format!("visible={mig}\n")),
        "bound to its MIG device: {log}"
    );
    assert!(
        log.contains("cmd set_default_active_thread_percentage 33"),
        "{log}"
    );
    let slice = st
        .instances
        .iter()
        .find(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == mig))
        .unwrap();
    assert!(slice.mps && slice.lease.is_none(), "{slice:?}");
    // The entry binary's warm offers never name it (they list idle instances only).
    let offers = std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::offers::NAME))
        .unwrap_or_default();
    assert!(!offers.contains(&mig), "{offers}");
    let (gi_cap, ci_cap) = {
        let m = slice.made.as_ref().unwrap();
        (m.gi_cap_minor, m.ci_cap_minor)
    };

    for (b, id) in &small {
        assert_eq!(host_of(&node, id), mig, "the same instance");
        let out = engine.start_and_wait(b, id);
        assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), mig, "{out}");
        assert_eq!(env_seen(&out, "NVIDIA_VISIBLE_DEVICES"), mig, "{out}");
        assert_eq!(env_seen(&out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), "33");
        assert!(
            out.contains("control socket visible"),
            "pipe folder mounted: {out}"
        );
        let caps: Vec<String> = nodes_seen(&out)
            .into_iter()
            .map(|(p, _, _)| p)
            .filter(|p| p.starts_with("/dev/nvidia-caps/"))
            .collect();
        assert_eq!(
            caps,
            [
                format!("/dev/nvidia-caps/nvidia-cap{gi_cap}"),
                format!("/dev/nvidia-caps/nvidia-cap{ci_cap}")
            ],
            "only its MIG device's nodes: {out}"
        );
    }

    // A fourth share of another size: a daemon of its own, in the second 3g.40gb (99% is
    // taken here; the strict rule itself, where room would allow a join, is tested below).
    let (big, big_id) = (Bundle::new(SHOW, &SHARE_50, &[]), unique("s50"));
    let out = engine.create(&big, &big_id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let second = host_of(&node, &big_id);
    assert_ne!(second, mig);
    assert_eq!(mps_control_log(&node).matches("start pid=").count(), 2);

    // Both 3g.40gb placements serve MPS now: a plain request is refused, not given one.
    let (plain, plain_id) = (Bundle::new(SHOW, &PLAIN, &[]), unique("plain"));
    let before = plain.config_bytes();
    let out = engine.create(&plain, &plain_id);
    assert!(
        !out.status.success(),
        "a plain 3g.40gb got a slice serving MPS"
    );
    let err = text(&out.stderr);
    assert!(err.contains("no free 3g.40gb slice"), "{err}");
    assert_eq!(plain.config_bytes(), before);
    invariants::check(&node, Some(engine.root.path())).unwrap();

    // `status`: the GPU, its mode, its instances, each daemon's clients.
    let json = node.status_json();
    let gpu = &json["gpus"][0];
    assert_eq!(gpu["mode"], "mig");
    let hosting: Vec<&serde_json::Value> = gpu["instances"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["state"] == "mps")
        .collect();
    assert_eq!(hosting.len(), 2, "{gpu:#}");
    let first = hosting
        .iter()
        .find(|i| i["mig_uuid"] == mig.as_str())
        .unwrap();
    assert_eq!(first["mps"]["clients"].as_array().unwrap().len(), 3);
    assert_eq!(first["mps"]["enforced_percent"], 33);
    let leases = json["leases"].as_array().unwrap();
    assert!(
        leases
            .iter()
            .any(|l| l["profile"] == "50% of 3g.40gb" && l["mig_uuid"] == second.as_str()),
        "{leases:?}"
    );
    let shown = text(&node.ctl(&["status"]).stdout);
    assert!(
        shown.contains("mode: MIG, 2 instance(s): 0 busy, 2 serving MPS (4 client(s)), 0 idle"),
        "{shown}"
    );
    assert!(
        shown.contains(&format!("      {}: asks 33%", small[2].1)),
        "{shown}"
    );
    // mps.exclusive is on, and cannot hold inside a slice: doctor says so, and fails nothing.
    let doctor = node.ctl(&["doctor"]);
    let said = text(&doctor.stdout);
    assert!(
        said.contains("GPU 0 MPS  serves MPS shares inside 2 MIG instance(s)"),
        "{said}"
    );
    assert!(!said.contains("FAIL  GPU 0 MPS"), "{said}");

    let pids: Vec<u32> = node.ledger().mps.iter().filter_map(|d| d.pid).collect();
    assert_eq!(pids.len(), 2);
    engine.start_and_wait(&big, &big_id);
    for (_, id) in small
        .iter()
        .map(|(b, id)| (b, id.as_str()))
        .chain([(&big, big_id.as_str())])
    {
        let del = engine.delete(id);
        assert!(del.status.success(), "delete {id}: {}", text(&del.stderr));
    }
    let st = node.ledger();
    assert!(st.mps.is_empty(), "{:?}", st.mps);
    assert_eq!(st.instances.len(), 2);
    assert!(
        st.instances.iter().all(|r| r.is_idle()),
        "{:?}",
        st.instances
    );
    for pid in pids {
        assert!(gone(pid), "daemon {pid} still runs");
    }
    assert_eq!(mps_control_log(&node).matches("exit pid=").count(), 2);
    invariants::check(&node, Some(engine.root.path())).unwrap();

    // Idle again, the instances serve plain MIG requests from the pool.
    let out = engine.run_to_end(&plain, &plain_id);
    let got = env_seen(&out, "CUDA_VISIBLE_DEVICES");
    assert!(got == mig || got == second, "{out}");
}

#[test]
fn mps_exclusive_does_not_refuse_a_share_in_a_slice() {
    require_root();
    // mps.exclusive is on by default; a MIG device takes no EXCLUSIVE_PROCESS.
    let node = mps_mig_node("exclusive = true");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new(SHOW, &SHARE_50, &[]);
    let out = engine.run_to_end(&b, &unique("excl"));
    assert!(
        env_seen(&out, "CUDA_VISIBLE_DEVICES").starts_with("MIG-"),
        "{out}"
    );
    let st = node.ledger();
    assert!(st.compute_modes.is_empty() && st.mps.is_empty(), "{st:?}");
}

/// A process exec'd into a share inside a slice gets the slice (its MIG UUID), not the GPU,
/// and cannot raise the share.
#[test]
fn exec_into_a_share_in_a_slice_sees_the_slice_and_its_ceiling() {
    require_root();
    let node = mps_mig_node("");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("sleep 60", &SHARE_50, &[]);
    let id = unique("exec-in-slice");
    engine.start_detached(&b, &id);
    let mig = host_of(&node, &id);
    let show = "echo CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES; echo CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";
    let out = run(&mut engine.cmd(&[
        "exec",
        "-e",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
        &id,
        "/bin/sh",
        "-c",
        show,
    ]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let seen = text(&out.stdout);
    assert_eq!(env_seen(&seen, "CUDA_VISIBLE_DEVICES"), mig, "{seen}");
    assert_eq!(env_seen(&seen, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), "50");
    assert!(engine.delete(&id).status.success());
    let st = node.ledger();
    assert!(
        st.mps.is_empty() && st.instances.iter().all(|r| r.is_idle()),
        "{st:?}"
    );
}

/// The strict policy's rule itself, where room alone would not decide: a 50% share beside one
/// 33% client (83% in all) gets an instance and a daemon of its own; under the cooperative
/// policy it joins the first daemon.
#[test]
fn under_the_strict_policy_another_size_never_joins_a_daemon_with_room() {
    require_root();
    for (extra, joins) in [("", false), ("policy = \"cooperative\"", true)] {
        let node = mps_mig_node(extra);
        let engine = Engine::new(&node, Runtime::Runc);
        let (a, b) = (unique("s33"), unique("s50"));
        for (ann, id) in [(&SHARE_33, &a), (&SHARE_50, &b)] {
            let out = engine.create(&Bundle::new("true", ann, &[]), id);
            assert!(out.status.success(), "{extra}: {}", text(&out.stderr));
        }
        let (first, second) = (host_of(&node, &a), host_of(&node, &b));
        assert_eq!(first == second, joins, "{extra:?}: {first} {second}");
        let daemons = if joins { 1 } else { 2 };
        assert_eq!(node.ledger().mps.len(), daemons, "{extra:?}");
        assert_eq!(
            mps_control_log(&node).matches("start pid=").count(),
            daemons,
            "{extra:?}"
        );
        for id in [&a, &b] {
            assert!(engine.delete(id).status.success());
        }
        invariants::check(&node, Some(engine.root.path())).unwrap();
    }
}
