//! containerd 1.7 from Debian trixie (tests/common/trixie.rs) with gpushare as installed
//! (/usr/bin/gpushare, the node's config at /etc/gpushare/config.toml): `ctr run
//! --runc-binary`, and the shipped v2 drop-in as containerd 1.7's own loader reads it.

mod common;
use common::engines::*;
use common::trixie::Trixie;
use common::*;
use std::path::PathBuf;
use std::process::{Output, Stdio};

struct Containerd {
    // Dropped first: the daemon stops before its namespace goes.
    daemon: Daemon,
    sock: PathBuf,
    rootfs: PathBuf,
    tx: Trixie,
}

impl Containerd {
    fn start(node: &SimNode) -> Containerd {
        node.configure("runtime = \"/usr/sbin/runc\"");
        let tx = Trixie::enter(node);
        let d = tx.dir().to_path_buf();
        let version = tx.run("containerd", &["--version"]);
        assert!(
            text(&version.stdout).contains(" 1.7."),
            "trixie's containerd should be 1.7: {}{}",
            text(&version.stdout),
            text(&version.stderr)
        );
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
        let mut cmd = tx.cmd("containerd");
        cmd.arg("--config").arg(d.join("config.toml"));
        // containerd writes no pid file of its own: the test writes the one it is stopped by.
        let mut daemon = Daemon::start(
            "containerd",
            cmd,
            d.join("containerd.pid"),
            d.join("containerd.log"),
            true,
        );
        let mut probe = tx.cmd("ctr");
        probe
            .arg("-a")
            .arg(&sock)
            .arg("version")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        daemon.wait_ready("answering", || probe.status().is_ok_and(|s| s.success()));
        let rootfs = busybox_rootfs(&d);
        Containerd {
            daemon,
            sock,
            rootfs,
            tx,
        }
    }

    fn ctr(&self, args: &[&str]) -> Output {
        // The shim keeps runc state under /run/containerd/runc/<namespace>; /run is the
        // namespace's own, so the default namespace is private to this test.
        run(self.tx.cmd("ctr").arg("-a").arg(&self.sock).args(args))
    }

    /// `ctr run --rm --rootfs [--runc-binary /usr/bin/gpushare] <opts> ROOTFS ID sh -c SCRIPT`.
    fn run(&self, gpushare: bool, opts: &[&str], script: &str) -> Output {
        let id = unique("c");
        let mut args = vec!["run", "--rm", "--rootfs"];
        if gpushare {
            args.extend_from_slice(&["--runc-binary", "/usr/bin/gpushare"]);
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
    }
}

#[test]
fn containerd17_ctr_annotation_request_sees_its_slice_and_frees_it() {
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
}

#[test]
fn containerd17_ctr_bad_request_shows_gpushare_message() {
    let node = SimNode::new("h100-80gb", 1, true);
    let ctd = Containerd::start(&node);
    let out = ctd.run(true, &["--annotation", "gpu.profile=0g.1gb"], SHOW_GPU);
    assert!(!out.status.success(), "{}", text(&out.stdout));
    let err = text(&out.stderr);
    assert!(
        err.contains("failed to create shim task: OCI runtime create failed")
            && err.contains("gpu.profile")
            && err.contains("0g.1gb")
            && err.contains("accepted"),
        "ctr must show gpushare's own message: {err}"
    );
    assert_nothing_made(&node);
}

#[test]
fn containerd17_ctr_no_request_is_exactly_plain_runc() {
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

/// packaging/containerd/gpushare-v2.toml verbatim, imported by a glob as packaging/install.sh
/// sets it up, read by containerd 1.7's own loader (`containerd config dump`).
#[test]
fn containerd17_loads_the_shipped_v2_drop_in() {
    let node = SimNode::new("h100-80gb", 1, true);
    let tx = Trixie::enter(&node);
    let d = tx.dir();
    std::fs::create_dir_all(d.join("conf.d")).unwrap();
    std::fs::copy(
        repo_root().join("packaging/containerd/gpushare-v2.toml"),
        d.join("conf.d/gpushare.toml"),
    )
    .unwrap();
    let main = format!(
        "version = 2\nroot = {:?}\nstate = {:?}\nimports = [{:?}]\n",
        d.join("root").display().to_string(),
        d.join("state").display().to_string(),
        format!("{}/conf.d/*.toml", d.display()),
    );
    std::fs::write(d.join("config.toml"), main).unwrap();
    let config = d.join("config.toml").display().to_string();
    let out = tx.run("containerd", &["--config", &config, "config", "dump"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let dump = text(&out.stdout);
    let section = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.gpushare]")
        .nth(1)
        .unwrap_or_else(|| panic!("no gpushare runtime in:\n{dump}"));
    // Up to the next runtime table that is not gpushare's own (its .options follows it).
    let section: String = section
        .lines()
        .take_while(|l| {
            let l = l.trim_start();
            !l.starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc")
                && !l.starts_with("[plugins.\"io.containerd.grpc.v1.cri\".containerd.untrusted")
        })
        .collect::<Vec<_>>()
        .join("\n");
    for want in [
        "runtime_type = \"io.containerd.runc.v2\"",
        "pod_annotations = [\"gpu.*\"]",
        "container_annotations = [\"gpu.*\"]",
        "BinaryName = \"/usr/bin/gpushare\"",
    ] {
        assert!(section.contains(want), "{want} missing in:\n{section}");
    }
}
