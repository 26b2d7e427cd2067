//! containerd 1.6 with gpushare as the runc binary of its `io.containerd.runc.v2` shim,
//! driven by `ctr run --runc-binary`, plus the shipped CRI runtime entry checked by
//! containerd's own config loader. containerd hands its environment down through the shim
//! to the runtime, which is how this node's config (GPUSHARE_CONFIG) reaches gpushare.

mod common;
use common::engines::*;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

struct Containerd {
    // Dropped first: the daemon stops before its directories go.
    daemon: Daemon,
    sock: PathBuf,
    namespace: String,
    rootfs: PathBuf,
    _dir: ShortDir,
}

impl Containerd {
    fn start(node: &SimNode) -> Containerd {
        require_root();
        node.configure(&format!(
            "runtime = {:?}",
            Runtime::Runc.path().display().to_string()
        ));
        let dir = ShortDir::new("gs-ctd");
        let d = dir.path();
        let sock = d.join("c.sock");
        // The CRI plugin is off: ctr does not need it, and it would only slow the start.
        let config = format!(
            "version = 2\nroot = {:?}\nstate = {:?}\ndisabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
             [grpc]\n  address = {:?}\n[ttrpc]\n  address = {:?}\n",
            d.join("root").display().to_string(),
            d.join("state").display().to_string(),
            sock.display().to_string(),
            format!("{}.ttrpc", sock.display()),
        );
        std::fs::write(d.join("config.toml"), config).unwrap();
        let daemon = start_containerd(d, &sock, Some(&node.config()));
        let rootfs = busybox_rootfs(d);
        Containerd {
            daemon,
            sock,
            // The shim keeps runc state under /run/containerd/runc/<namespace>: a namespace of
            // our own keeps it apart from any system containerd's.
            namespace: unique("gpushare-test"),
            rootfs,
            _dir: dir,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        run(Command::new("ctr")
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", &self.namespace])
            .args(args))
    }

    /// `ctr run --rm --rootfs [--runc-binary gpushare] <opts> ROOTFS ID sh -c SCRIPT`.
    fn run(&self, gpushare: bool, opts: &[&str], script: &str) -> Output {
        let id = unique("c");
        let mut args = vec!["run", "--rm", "--rootfs"];
        if gpushare {
            args.extend_from_slice(&["--runc-binary", SHIM]);
        }
        args.extend_from_slice(opts);
        let rootfs = self.rootfs.display().to_string();
        args.extend_from_slice(&[&rootfs, &id, "/bin/sh", "-c", script]);
        self.ctr(&args)
    }
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // Containers a failed test left: their tasks first, then the containers.
        let list = self.ctr(&["containers", "list", "--quiet"]);
        for id in text(&list.stdout).lines() {
            let _ = self.ctr(&["tasks", "kill", "--signal", "SIGKILL", id]);
            let _ = self.ctr(&["tasks", "delete", "--force", id]);
            let _ = self.ctr(&["containers", "delete", id]);
        }
        // The shim's runc root for our namespace (empty once every container is gone).
        let _ = std::fs::remove_dir(Path::new("/run/containerd/runc").join(&self.namespace));
    }
}

#[test]
fn ctr_annotation_request_sees_its_slice_and_frees_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    let out = ctd.run(true, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr run: {}\n{printed}\n{}",
        text(&out.stderr),
        ctd.daemon.log_text()
    );
    let mig = assert_sees_one_slice(&node, &printed);
    assert_all_free(&node, Some(&mig));
    // A second tenant while the first slice is idle gets that same instance back.
    let out = ctd.run(true, &["--annotation", "gpu.profile=1g.10gb"], SHOW_GPU);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(assert_sees_one_slice(&node, &text(&out.stdout)), mig);
    assert_all_free(&node, Some(&mig));
}

#[test]
fn ctr_bad_request_shows_gpushare_message() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    let out = ctd.run(true, &["--annotation", "gpu.profile=0g.1gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("OCI runtime create failed")
            && err.contains("gpu.profile")
            && err.contains("0g.1gb")
            && err.contains("accepted"),
        "ctr must show gpushare's own message: {err}"
    );
    let out = ctd.run(
        true,
        &[
            "--annotation",
            "gpu.profile=1g.10gb",
            "--annotation",
            "gpu.device=3",
        ],
        SHOW_GPU,
    );
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(
        err.contains("gpu.device=3") && err.contains("no such GPU"),
        "{err}"
    );
    assert_nothing_made(&node);
}

/// A Kubernetes pod's annotations reach its sandbox (pause) container too; the sandbox must
/// never take a slice, with either CRI implementation's marking, and even for a bad request.
#[test]
fn ctr_kubernetes_sandbox_never_gets_a_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    for marker in [
        "io.kubernetes.cri.container-type=sandbox",
        "io.kubernetes.cri-o.ContainerType=sandbox",
    ] {
        for profile in ["gpu.profile=1g.10gb", "gpu.profile=0g.1gb"] {
            let out = ctd.run(
                true,
                &["--annotation", marker, "--annotation", profile],
                SHOW_GPU,
            );
            assert!(
                out.status.success(),
                "{marker} {profile}: {}",
                text(&out.stderr)
            );
            assert_sees_no_gpu(&text(&out.stdout));
        }
    }
    assert_nothing_made(&node);
    // The pod's real container, marked as such, does get its slice.
    let out = ctd.run(
        true,
        &[
            "--annotation",
            "io.kubernetes.cri.container-type=container",
            "--annotation",
            "gpu.profile=1g.10gb",
        ],
        SHOW_GPU,
    );
    assert!(out.status.success(), "{}", text(&out.stderr));
    let mig = assert_sees_one_slice(&node, &text(&out.stdout));
    assert_all_free(&node, Some(&mig));
}

#[test]
fn ctr_no_request_is_exactly_plain_runc() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    let opts = ["--env", "X=1", "--annotation", "unrelated=1"];
    let plain = ctd.run(false, &opts, SHOW_ALL);
    let ours = ctd.run(true, &opts, SHOW_ALL);
    assert_eq!(plain.status.code(), Some(3), "{}", text(&plain.stderr));
    assert_eq!(ours.status.code(), Some(3), "{}", text(&ours.stderr));
    assert_eq!(text(&ours.stdout), text(&plain.stdout));
    assert!(!text(&ours.stdout).contains("nvidia"));
    assert_nothing_made(&node);
}

/// The shipped CRI runtime entry for containerd 1.x, as containerd's own loader reads it
/// when the main config imports it.
#[test]
fn containerd_loads_the_shipped_cri_runtime_entry() {
    let dir = ShortDir::new("gs-ctdcfg");
    let d = dir.path();
    // Laid out as packaging/install.sh lays it out: a drop-in imported by a glob.
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::write(
        d.join("conf.d/gpushare.toml"),
        packaging_file("containerd/gpushare-v2.toml"),
    )
    .unwrap();
    let main = format!(
        "version = 2\nroot = {:?}\nstate = {:?}\nimports = [{:?}]\n",
        d.join("root").display().to_string(),
        d.join("state").display().to_string(),
        format!("{}/conf.d/*.toml", d.display()),
    );
    std::fs::write(d.join("config.toml"), main).unwrap();
    let out = run(Command::new("containerd")
        .arg("--config")
        .arg(d.join("config.toml"))
        .args(["config", "dump"]));
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = text(&out.stdout);
    let section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpushare]")
        .nth(1)
        .unwrap_or_else(|| panic!("no gpushare runtime in:\n{dump}"));
    let section: String = section
        .lines()
        .take_while(|l| {
            !l.trim_start()
                .starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "runtime_type = \"io.containerd.runc.v2\"",
        "pod_annotations = [\"gpu.*\"]",
        "container_annotations = [\"gpu.*\"]",
        &format!("BinaryName = \"{SHIM}\""),
    ] {
        assert!(section.contains(want), "{want} missing in:\n{section}");
    }
}

/// `ctr task exec` hands the runtime a process built from containerd's own container spec
/// (never the one gpushare edited) as `exec --process FILE`: the exec'd process still sees the
/// slice.
#[test]
fn ctr_task_exec_sees_the_slice() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    let id = unique("c");
    let rootfs = ctd.rootfs.display().to_string();
    let out = ctd.ctr(&[
        "run",
        "-d",
        "--rootfs",
        "--runc-binary",
        SHIM,
        "--annotation",
        "gpu.profile=1g.10gb",
        &rootfs,
        &id,
        "/bin/sleep",
        "60",
    ]);
    assert!(
        out.status.success(),
        "ctr run -d: {}\n{}",
        text(&out.stderr),
        ctd.daemon.log_text()
    );
    let out = ctd.ctr(&[
        "tasks",
        "exec",
        "--exec-id",
        "show",
        &id,
        "/bin/sh",
        "-c",
        SHOW_GPU,
    ]);
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "ctr tasks exec: {}",
        text(&out.stderr)
    );
    let mig = assert_sees_one_slice(&node, &printed);
    for args in [
        &["tasks", "kill", "--signal", "SIGKILL", &id][..],
        &["tasks", "delete", &id],
        &["containers", "delete", &id],
    ] {
        // The task may still be stopping when delete comes: try it for a moment.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let out = ctd.ctr(args);
            if out.status.success() || std::time::Instant::now() > deadline {
                assert!(out.status.success(), "{args:?}: {}", text(&out.stderr));
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
    }
    assert_all_free(&node, Some(&mig));
}
