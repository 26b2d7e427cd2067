//! MPS shares and time-slicing on a simulated node (MIG off), with a stand-in MPS control
//! program that records what gpushare told it; and driver injection of the host's libraries.
use crate::common;

use common::*;

/// A claimant with no runtime state, for grants made straight through the library.
fn who(id: &str) -> gpushare_core::ledger::Claimant<'_> {
    gpushare_core::ledger::Claimant {
        container_id: id,
        runtime_root: None,
    }
}

fn release(cfg: &gpushare_core::config::Config, id: &str) {
    gpushare_core::allocator::release(cfg, id, std::time::Duration::from_secs(5)).unwrap();
}

const SHOW_MPS: &str = r#"
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
echo "CUDA_MPS_PIPE_DIRECTORY=$CUDA_MPS_PIPE_DIRECTORY"
echo "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=$CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
echo "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=$CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
[ -S "$CUDA_MPS_PIPE_DIRECTORY/control" ] && echo "control socket visible"
for f in /dev/nvidia*; do [ -c "$f" ] && echo "node $f $(stat -c '%t:%T' "$f") x"; done
sleep 2
"#;

#[test]
fn mps_daemon_lifecycle_through_runc() {
    require_root();
    let node = mps_node();
    let engine = Engine::new(&node, Runtime::Runc);
    let ann = [("gpu.mps", "25"), ("gpu.mps.memory", "4G")];
    let (a, b) = (
        Bundle::new(SHOW_MPS, &ann, &[]),
        Bundle::new(SHOW_MPS, &ann, &[]),
    );
    let (ida, idb) = (unique("mps-a"), unique("mps-b"));
    assert!(
        engine.create(&a, &ida).status.success(),
        "{}",
        text(&engine.create(&a, "x").stderr)
    );
    assert!(engine.create(&b, &idb).status.success());
    let log = mps_control_log(&node);
    assert_eq!(
        log.matches("start pid=").count(),
        1,
        "one daemon for both: {log}"
    );
    assert!(log.contains("args=-d -M"), "multi-user daemon: {log}");
    assert!(
        log.contains("cmd set_default_active_thread_percentage 25"),
        "{log}"
    );
    assert!(
        log.contains("cmd set_default_device_pinned_mem_limit 0 4096M"),
        "{log}"
    );

    let out_a = engine.start_and_wait(&a, &ida);
    let gpu_uuid = node.ledger().gpus[0].uuid.clone();
    assert_eq!(
        env_seen(&out_a, "CUDA_VISIBLE_DEVICES"),
        gpu_uuid,
        "{out_a}"
    );
    assert_eq!(
        env_seen(&out_a, "CUDA_MPS_PIPE_DIRECTORY"),
        "/tmp/nvidia-mps"
    );
    assert_eq!(env_seen(&out_a, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), "25");
    assert_eq!(
        env_seen(&out_a, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
        "0=4096M"
    );
    assert!(out_a.contains("control socket visible"), "{out_a}");
    let nodes: Vec<String> = nodes_seen(&out_a).into_iter().map(|(p, _, _)| p).collect();
    assert_eq!(
        nodes,
        [
            "/dev/nvidia-uvm",
            "/dev/nvidia-uvm-tools",
            "/dev/nvidia0",
            "/dev/nvidiactl"
        ]
    );

    assert!(engine.delete(&ida).status.success());
    assert!(
        !mps_control_log(&node).contains("cmd quit"),
        "daemon stays while b runs"
    );
    engine.start_and_wait(&b, &idb);
    assert!(engine.delete(&idb).status.success());
    let log = mps_control_log(&node);
    assert!(
        log.contains("cmd quit") && log.contains("exit pid="),
        "quit after the last: {log}"
    );
    assert!(node.ledger().mps.is_empty());
}

#[test]
fn mps_daemon_is_restarted_after_it_died() {
    require_root();
    let node = mps_node();
    let cfg = node.cfg();
    gpushare_core::mps::grant(&cfg, 50, None, None, &who("r1")).unwrap();
    let pid = node.ledger().mps[0].pid.expect("daemon pid");
    // SAFETY: killing the fake daemon this test started.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    std::thread::sleep(std::time::Duration::from_millis(100));
    let g = gpushare_core::mps::grant(&cfg, 50, None, None, &who("r2")).unwrap();
    assert!(!g.warm, "a new daemon was started");
    let st = node.ledger();
    assert_ne!(st.mps[0].pid, Some(pid));
    assert_eq!(
        st.mps[0].clients.len(),
        2,
        "the first client's lease is kept"
    );
    assert_eq!(mps_control_log(&node).matches("start pid=").count(), 2);
    for id in ["r1", "r2"] {
        release(&cfg, id);
    }
    assert!(node.ledger().mps.is_empty());
}

#[test]
fn mps_refusals_are_clear() {
    require_root();
    let node = mps_node();
    let cfg = node.cfg();
    gpushare_core::mps::grant(&cfg, 25, Some(60 << 30), None, &who("m1")).unwrap();
    // Strict policy: one share size per GPU.
    let err = gpushare_core::mps::grant(&cfg, 50, Some(4 << 30), None, &who("m2"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("serves shares of 25% with 61440 MiB") && err.contains("strict policy"),
        "{err}"
    );
    // Over-commit: 60G + 60G > 80 GB.
    let err = gpushare_core::mps::grant(&cfg, 25, Some(60 << 30), None, &who("m3"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("promised to MPS clients") && err.contains("mps.allow_overcommit"),
        "{err}"
    );
    release(&cfg, "m1");
    assert!(node.ledger().mps.is_empty());

    // The node's policy caps what a tenant may ask for.
    let mut strict = cfg.clone();
    strict.policy.max_mps_percent = 50;
    strict.policy.max_mps_memory = Some("8G".into());
    let err = gpushare_core::mps::grant(&strict, 75, Some(1 << 30), None, &who("p1"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("gpu.mps=75") && err.contains("policy.max_mps_percent = 50"),
        "{err}"
    );
    let err = gpushare_core::mps::grant(&strict, 25, None, None, &who("p2"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("without gpu.mps.memory") && err.contains("max_mps_memory"),
        "{err}"
    );
    assert!(
        node.ledger().mps.is_empty(),
        "nothing started for refused requests"
    );

    // MIG-enabled GPUs take no MPS or time-sliced containers.
    let mig = SimNode::new("h100-80gb", 1, true);
    let mut cfg = mig.cfg();
    cfg.mps.control = fake_mps_control();
    let err = gpushare_core::mps::grant(&cfg, 25, None, None, &who("m4"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("MIG enabled"), "{err}");
    let err = gpushare_core::share::grant(&cfg, None, &who("m5"))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("MIG enabled") && err.contains("gpu.profile"),
        "{err}"
    );
}

#[test]
fn timeslice_gives_the_whole_gpu_and_spreads_over_gpus() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, false);
    let engine = Engine::new(&node, Runtime::Runc);
    let ids: Vec<String> = (0..2).map(|_| unique("ts")).collect();
    let bundles: Vec<Bundle> = (0..2)
        .map(|_| Bundle::new(SHOW_GPU, &[("gpu.share", "timeslice")], &[]))
        .collect();
    for (b, id) in bundles.iter().zip(&ids) {
        assert!(engine.create(b, id).status.success());
    }
    let outs: Vec<String> = bundles
        .iter()
        .zip(&ids)
        .map(|(b, id)| engine.start_and_wait(b, id))
        .collect();
    let gpus = node.ledger().gpus;
    for (i, out) in outs.iter().enumerate() {
        assert_eq!(
            env_seen(out, "CUDA_VISIBLE_DEVICES"),
            gpus[i].uuid,
            "one container per GPU: {out}"
        );
        let nodes: Vec<String> = nodes_seen(out).into_iter().map(|(p, _, _)| p).collect();
        let own = format!("/dev/nvidia{i}");
        assert!(nodes.contains(&own) && nodes.len() == 4, "{nodes:?}");
    }
    for id in &ids {
        assert!(engine.delete(id).status.success());
    }
    assert!(node.ledger().shares.is_empty());
}

#[test]
fn host_driver_libraries_are_injected_read_only() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    host_driver_files(&node);
    let engine = Engine::new(&node, Runtime::Runc);
    let script = r#"echo "LD=$LD_LIBRARY_PATH"; echo "PATH=$PATH"; cat /usr/local/gpushare/lib/libcuda.so.1;
        echo x > /usr/local/gpushare/lib/libcuda.so.1 2>/dev/null && echo WRITABLE || echo read-only"#;
    let bundle = Bundle::new(
        script,
        &[("gpu.profile", "1g.10gb")],
        &["LD_LIBRARY_PATH=/opt/app"],
    );
    let out = engine.run_to_end(&bundle, &unique("inject"));
    assert_eq!(
        env_seen(&out, "LD"),
        "/usr/local/gpushare/lib:/opt/app",
        "{out}"
    );
    assert_eq!(
        env_seen(&out, "PATH"),
        "/bin:/usr/local/gpushare/bin",
        "{out}"
    );
    assert!(out.contains("host libcuda"), "{out}");
    assert!(
        out.contains("read-only") && !out.contains("WRITABLE"),
        "{out}"
    );
}

/// inject.mode = "nvidia-container-runtime": GPU containers go to NVIDIA's runtime (here a
/// stand-in that records its call and runs runc), which injects from NVIDIA_VISIBLE_DEVICES;
/// gpushare mounts nothing of its own. Containers with no request still go to runc.
#[test]
fn nvidia_container_runtime_mode_hands_gpu_containers_over() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let lib = node.root().join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libcuda.so.580.159.04"), b"host libcuda\n").unwrap();
    node.configure("[inject]\nmode = \"nvidia-container-runtime\"\n");
    let engine = Engine::new(&node, Runtime::Runc);
    let bin = TempDir::new("ncr");
    let calls = bin.path().join("calls");
    let fake = bin.path().join("nvidia-container-runtime");
    std::fs::write(
        &fake,
        format!(
            "#!/bin/sh\necho \"$*\" >> {}\nexec {} \"$@\"\n",
            calls.display(),
            Runtime::Runc.path().display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );

    let run = |bundle: &Bundle, id: &str| {
        let out = std::fs::File::create(bundle.path().join("stdout")).unwrap();
        let st = std::process::Command::new(ENTRY)
            .env("GPUSHARE_CONFIG", node.config())
            .env("PATH", &path)
            .arg("--root")
            .arg(engine.root.path())
            .args(["create", "--bundle"])
            .arg(bundle.path())
            .arg(id)
            .stdout(out)
            .status()
            .unwrap();
        assert!(st.success(), "create {id}");
        let printed = engine.start_and_wait(bundle, id);
        assert!(engine.delete(id).status.success());
        printed
    };
    let gpu = Bundle::new(
        "echo \"NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES\"; ls /usr/local/gpushare 2>&1 || true",
        &[("gpu.profile", "1g.10gb")],
        &[],
    );
    let id = unique("ncr");
    let out = run(&gpu, &id);
    assert!(
        env_seen(&out, "NVIDIA_VISIBLE_DEVICES").starts_with("MIG-"),
        "{out}"
    );
    assert!(
        !out.contains("libcuda"),
        "gpushare injected nothing itself: {out}"
    );
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        log.lines().any(|l| l.contains("create") && l.contains(&id)),
        "{log}"
    );

    let plain = Bundle::new("true", &[], &[]);
    let pid = unique("ncr-plain");
    run(&plain, &pid);
    let log = std::fs::read_to_string(&calls).unwrap();
    assert!(
        !log.contains(&pid),
        "a container with no request goes to runc: {log}"
    );
}

/// MPS shares and whole-GPU time-slicing never land on the same GPU.
#[test]
fn mps_and_timeslice_keep_to_their_own_gpus() {
    require_root();
    let node = mps_node();
    let cfg = node.cfg();
    gpushare_core::mps::grant(&cfg, 25, None, None, &who("x1")).unwrap();
    let err = gpushare_core::share::grant(&cfg, None, &who("x2"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("serves MPS shares"), "{err}");
    release(&cfg, "x1");
    gpushare_core::share::grant(&cfg, None, &who("x3")).unwrap();
    let err = gpushare_core::mps::grant(&cfg, 25, None, None, &who("x4"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("time-sliced whole"), "{err}");
    release(&cfg, "x3");
}
