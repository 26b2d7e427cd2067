//! `gpushare exec` through real runc and crun: a process exec'd into a container that holds a
//! grant gets the env the container got from gpushare (visible devices, MPS variables, the
//! injected driver folders on PATH and LD_LIBRARY_PATH), whether the engine passes it as
//! `exec --process FILE` (Docker, containerd, Podman) or as argv; what the exec sets itself
//! wins, except that an MPS share can only go lower.
use crate::common;

use common::*;
use serde_json::json;
use std::process::Output;

const SHOW_ENV: &str = r#"for v in CUDA_VISIBLE_DEVICES NVIDIA_VISIBLE_DEVICES PATH LD_LIBRARY_PATH FOO CUDA_MPS_PIPE_DIRECTORY CUDA_MPS_ACTIVE_THREAD_PERCENTAGE CUDA_MPS_PINNED_DEVICE_MEM_LIMIT; do eval "echo $v=\$$v"; done; command -v nvidia-smi >/dev/null && nvidia-smi; true"#;

fn exec(engine: &Engine, args: &[&str]) -> Output {
    let mut all = vec!["exec"];
    all.extend_from_slice(args);
    run(&mut engine.cmd(&all))
}

/// `exec FLAGS ID sh -c SHOW_ENV`: the argv form, as `runc exec` users type it.
fn exec_argv(engine: &Engine, flags: &[&str], id: &str) -> Output {
    let mut args = flags.to_vec();
    args.extend_from_slice(&[id, "/bin/sh", "-c", SHOW_ENV]);
    exec(engine, &args)
}

/// `exec --process FILE ID`: the process file form, as Docker, containerd and Podman exec.
fn exec_file(engine: &Engine, file: &std::path::Path, id: &str) -> Output {
    exec(engine, &["--process", file.to_str().unwrap(), id])
}

/// Deleted, and its grant released.
fn delete_and_released(node: &SimNode, engine: &Engine, id: &str) {
    assert!(engine.delete(id).status.success());
    assert!(!holds(node, id));
}

/// Write an engine's process file (as containerd writes one for `docker exec`) in `dir`.
fn process_file(dir: &std::path::Path, env: &[&str]) -> std::path::PathBuf {
    let p = dir.join("process.json");
    let process = json!({
        "terminal": false,
        "user": {"uid": 0, "gid": 0},
        "args": ["/bin/sh", "-c", SHOW_ENV],
        "env": env,
        "cwd": "/",
        "x-engine-field": {"kept": true}
    });
    std::fs::write(&p, serde_json::to_vec(&process).unwrap()).unwrap();
    p
}

fn seen(out: &Output) -> String {
    assert!(
        out.status.success(),
        "exec: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    text(&out.stdout)
}

/// A MIG container's exec, in both forms: the grant's variables and folders, the tool found on
/// PATH, and the engine's own `CUDA_VISIBLE_DEVICES` winning. The engine's process file is
/// left as it wrote it, and nothing is left beside it.
fn exec_sees_the_grant(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    host_driver_files(&node);
    let engine = Engine::new(&node, rt);
    let bundle = Bundle::new("sleep 60", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("exec-mig");
    engine.start_detached(&bundle, &id);
    let st = node.ledger();
    let uuid = st.instances[st.lease_of(&id).unwrap()]
        .made
        .as_ref()
        .unwrap()
        .mig_uuid
        .clone();

    // The process file form, as Docker, containerd and Podman exec.
    let dir = TempDir::new("engine-exec");
    let file = process_file(dir.path(), &["PATH=/bin", "FOO=engine"]);
    let engine_bytes = std::fs::read(&file).unwrap();
    let out = seen(&exec_file(&engine, &file, &id));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(env_seen(&out, "NVIDIA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(
        env_seen(&out, "PATH"),
        "/bin:/usr/local/gpushare/bin",
        "{out}"
    );
    assert_eq!(env_seen(&out, "LD_LIBRARY_PATH"), "/usr/local/gpushare/lib");
    assert_eq!(env_seen(&out, "FOO"), "engine");
    assert!(
        out.contains("fake nvidia-smi"),
        "the tool is on PATH: {out}"
    );
    assert_eq!(std::fs::read(&file).unwrap(), engine_bytes, "engine's file");
    let beside: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert_eq!(beside.len(), 1, "no copy left beside it");

    // The exec'd process holds no more descriptors than it would without gpushare (the edited
    // copy stays with the runtime).
    let fds = dir.path().join("fds.json");
    let list_fds = json!({"args": ["/bin/ls", "/proc/self/fd"], "env": ["PATH=/bin"], "cwd": "/",
                          "user": {"uid": 0, "gid": 0}});
    std::fs::write(&fds, list_fds.to_string()).unwrap();
    let ours = seen(&exec_file(&engine, &fds, &id));
    let bare = run(&mut engine.bare(&["exec", "--process", fds.to_str().unwrap(), &id]));
    assert_eq!(ours, seen(&bare), "descriptors of the exec'd process");
    std::fs::remove_file(&fds).unwrap();

    // A process file that is a symlink is not followed: the exec is refused, and says why.
    let link = dir.path().join("link.json");
    std::os::unix::fs::symlink(&file, &link).unwrap();
    let out = exec_file(&engine, &link, &id);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("is a symlink") && out.stdout.is_empty(),
        "{}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    std::fs::remove_file(&link).unwrap();

    // The engine's own value wins.
    let file = process_file(dir.path(), &["PATH=/bin", "CUDA_VISIBLE_DEVICES=x"]);
    let out = seen(&exec(&engine, &["-p", file.to_str().unwrap(), &id]));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), "x", "{out}");
    assert_eq!(env_seen(&out, "NVIDIA_VISIBLE_DEVICES"), uuid, "{out}");

    // The argv form, with and without env flags of its own.
    let out = seen(&exec_argv(&engine, &[], &id));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(
        env_seen(&out, "PATH"),
        "/bin:/usr/local/gpushare/bin",
        "{out}"
    );
    assert!(out.contains("fake nvidia-smi"), "{out}");
    let out = seen(&exec_argv(
        &engine,
        &["--env", "FOO=argv", "--env=PATH=/bin"],
        &id,
    ));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(env_seen(&out, "FOO"), "argv", "{out}");
    assert_eq!(
        env_seen(&out, "PATH"),
        "/bin:/usr/local/gpushare/bin",
        "{out}"
    );
    let out = seen(&exec_argv(
        &engine,
        &["--env", "CUDA_VISIBLE_DEVICES=x"],
        &id,
    ));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), "x", "{out}");

    delete_and_released(&node, &engine, &id);
}

#[test]
fn runc_exec_sees_the_grant() {
    exec_sees_the_grant(Runtime::Runc);
}

#[test]
fn crun_exec_sees_the_grant() {
    exec_sees_the_grant(Runtime::Crun);
}

/// An exec into an MPS container gets the share's variables, and cannot raise the share: a
/// larger thread percentage or memory limit, or another pipe folder, becomes the grant's; a
/// smaller share is kept.
fn exec_cannot_raise_an_mps_share(rt: Runtime) {
    require_root();
    let node = mps_node();
    let engine = Engine::new(&node, rt);
    let bundle = Bundle::new(
        "sleep 60",
        &[("gpu.mps", "25"), ("gpu.mps.memory", "4G")],
        &[],
    );
    let id = unique("exec-mps");
    engine.start_detached(&bundle, &id);
    let uuid = node.ledger().gpus[0].uuid.clone();
    let dir = TempDir::new("engine-exec");

    let file = process_file(dir.path(), &["PATH=/bin"]);
    let out = seen(&exec_file(&engine, &file, &id));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(env_seen(&out, "CUDA_MPS_PIPE_DIRECTORY"), "/tmp/nvidia-mps");
    assert_eq!(env_seen(&out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"), "25");
    assert_eq!(
        env_seen(&out, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"),
        "0=4096M"
    );

    let raised = [
        "PATH=/bin",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=80G",
        "CUDA_MPS_PIPE_DIRECTORY=/tmp/elsewhere",
    ];
    let file = process_file(dir.path(), &raised);
    let out = seen(&exec_file(&engine, &file, &id));
    let mut flags = vec![];
    for e in &raised[1..] {
        flags.extend(["-e", e]);
    }
    let out_argv = seen(&exec_argv(&engine, &flags, &id));
    for out in [&out, &out_argv] {
        assert_eq!(
            env_seen(out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
            "25",
            "{out}"
        );
        assert_eq!(env_seen(out, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"), "0=4096M");
        assert_eq!(env_seen(out, "CUDA_MPS_PIPE_DIRECTORY"), "/tmp/nvidia-mps");
    }

    let out = seen(&exec_argv(
        &engine,
        &[
            "-e",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=10",
            "-e",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1G",
        ],
        &id,
    ));
    assert_eq!(
        env_seen(&out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
        "10",
        "{out}"
    );
    assert_eq!(env_seen(&out, "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"), "0=1G");

    delete_and_released(&node, &engine, &id);
}

#[test]
fn runc_exec_cannot_raise_an_mps_share() {
    exec_cannot_raise_an_mps_share(Runtime::Runc);
}

#[test]
fn crun_exec_cannot_raise_an_mps_share() {
    exec_cannot_raise_an_mps_share(Runtime::Crun);
}

/// A container with no grant: its exec's env is the engine's alone, in both forms, while
/// another container on the node holds a slice.
fn exec_of_a_container_without_a_grant_gets_nothing(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    host_driver_files(&node);
    let engine = Engine::new(&node, rt);
    let gpu = Bundle::new("sleep 60", &[("gpu.profile", "1g.10gb")], &[]);
    let plain = Bundle::new("sleep 60", &[], &[]);
    let (gpu_id, plain_id) = (unique("gpu"), unique("plain"));
    engine.start_detached(&gpu, &gpu_id);
    engine.start_detached(&plain, &plain_id);
    let dir = TempDir::new("engine-exec");
    let file = process_file(dir.path(), &["PATH=/bin"]);
    let out = exec_file(&engine, &file, &plain_id);
    let printed = text(&out.stdout);
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), "", "{printed}");
    assert_eq!(env_seen(&printed, "PATH"), "/bin", "{printed}");
    let out = exec_argv(&engine, &["-e", "FOO=1"], &plain_id);
    let printed = text(&out.stdout);
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), "", "{printed}");
    for id in [&gpu_id, &plain_id] {
        assert!(engine.delete(id).status.success());
    }
}

#[test]
fn runc_exec_of_a_container_without_a_grant_gets_nothing() {
    exec_of_a_container_without_a_grant_gets_nothing(Runtime::Runc);
}

#[test]
fn crun_exec_of_a_container_without_a_grant_gets_nothing() {
    exec_of_a_container_without_a_grant_gets_nothing(Runtime::Crun);
}

/// A time-sliced container's exec sees its whole GPU.
fn exec_into_a_timeslice_container(rt: Runtime) {
    require_root();
    let node = SimNode::new("h100-80gb", 1, false);
    let engine = Engine::new(&node, rt);
    let bundle = Bundle::new("sleep 60", &[("gpu.share", "timeslice")], &[]);
    let id = unique("exec-ts");
    engine.start_detached(&bundle, &id);
    let uuid = node.ledger().gpus[0].uuid.clone();
    let dir = TempDir::new("engine-exec");
    let file = process_file(dir.path(), &["PATH=/bin"]);
    let out = seen(&exec_file(&engine, &file, &id));
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(env_seen(&out, "NVIDIA_VISIBLE_DEVICES"), uuid, "{out}");
    assert_eq!(
        env_seen(&out, "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"),
        "",
        "{out}"
    );
    delete_and_released(&node, &engine, &id);
}

#[test]
fn runc_exec_into_a_timeslice_container() {
    exec_into_a_timeslice_container(Runtime::Runc);
}

#[test]
fn crun_exec_into_a_timeslice_container() {
    exec_into_a_timeslice_container(Runtime::Crun);
}
