//! Docker 26.1 and Compose 2.26 from Debian trixie (tests/common/trixie.rs), with gpushare as
//! a user installs it: binaries in /usr/bin, packaging/docker/daemon.json as shipped, the node's
//! config at /etc/gpushare/config.toml. Docker 24+ (API 1.43) hands `--annotation` to the
//! runtime, so the request travels as users type it; the env form still works.

mod common;
use common::engines::*;
use common::trixie::Trixie;
use common::*;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// Docker 26's words in front of a runtime's refusal, which users see before gpushare's.
const DOCKER26_PREFIX: &str =
    "failed to create task for container: failed to create shim task: OCI runtime create failed:";

struct Docker {
    // Dropped first: the daemon stops before its namespace goes.
    daemon: Option<Daemon>,
    sock: String,
    image: String,
    tx: Trixie,
}

impl Docker {
    fn start(node: &SimNode, live_restore: bool) -> Docker {
        // The trixie root's runc, which its Docker would run without gpushare.
        node.configure("runtime = \"/usr/sbin/runc\"");
        let tx = Trixie::enter(node);
        let d = tx.dir().to_path_buf();
        // The shipped file as is, plus what a private daemon in a sandbox needs.
        let shipped = std::fs::read_to_string(repo_root().join("packaging/docker/daemon.json"))
            .expect("packaging/docker/daemon.json");
        let mut cfg: serde_json::Value = serde_json::from_str(&shipped).unwrap();
        cfg["bridge"] = "none".into();
        cfg["iptables"] = false.into();
        cfg["storage-driver"] = "vfs".into();
        cfg["live-restore"] = live_restore.into();
        std::fs::write(d.join("daemon.json"), cfg.to_string()).unwrap();
        let mut dk = Docker {
            daemon: None,
            sock: format!("unix://{}", d.join("d.sock").display()),
            image: "gpushare-test/busybox:1".into(),
            tx,
        };
        dk.start_daemon();
        let version = dk.docker(&["version", "--format", "{{.Server.Version}}"]);
        assert!(
            text(&version.stdout).starts_with("26."),
            "trixie's Docker should be 26.x: {}{}",
            text(&version.stdout),
            text(&version.stderr)
        );
        let tar = busybox_tar(&d);
        let out = dk.docker(&["import", tar.to_str().unwrap(), &dk.image.clone()]);
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
        dk
    }

    fn start_daemon(&mut self) {
        let d = self.tx.dir();
        let mut cmd = self.tx.cmd("dockerd");
        cmd.arg("--config-file")
            .arg(d.join("daemon.json"))
            .arg("--data-root")
            .arg(d.join("data"))
            .arg("--exec-root")
            .arg(d.join("exec"))
            .args(["-H", &self.sock])
            .arg("--pidfile")
            .arg(d.join("dockerd.pid"));
        let mut daemon = Daemon::start(
            "dockerd",
            cmd,
            d.join("dockerd.pid"),
            d.join("dockerd.log"),
            false,
        );
        let probe = self.tx.cmd("docker");
        let sock = self.sock.clone();
        let mut probe = probe;
        probe
            .args(["-H", &sock, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        daemon.wait_ready("answering", || probe.status().is_ok_and(|s| s.success()));
        self.daemon = Some(daemon);
    }

    /// dockerd killed with SIGKILL (no shutdown of its own), then started again.
    fn kill_and_restart_daemon(&mut self) {
        let daemon = self.daemon.take().unwrap();
        let pid: i32 = std::fs::read_to_string(&daemon.pid_file)
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // SAFETY: kill has no memory preconditions; pid is dockerd, our child (Daemon checks).
        unsafe { libc::kill(pid, libc::SIGKILL) };
        drop(daemon);
        self.start_daemon();
    }

    fn docker(&self, args: &[&str]) -> Output {
        run(self.tx.cmd("docker").args(["-H", &self.sock]).args(args))
    }

    /// `docker run --rm --network none <opts> IMAGE sh -c SCRIPT`.
    fn run(&self, opts: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", script]);
        self.docker(&args)
    }

    /// `docker run -d --name NAME <opts> IMAGE sh -c SCRIPT`.
    fn detach(&self, name: &str, opts: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", script]);
        self.docker(&args)
    }

    fn log(&self) -> String {
        self.daemon
            .as_ref()
            .map(|d| d.log_text())
            .unwrap_or_default()
    }
}

impl Drop for Docker {
    fn drop(&mut self) {
        // What a failed test left running goes before the daemon does.
        if self.daemon.is_some() {
            let ids = self.docker(&["ps", "-aq"]);
            for id in text(&ids.stdout).lines() {
                let _ = self.docker(&["rm", "-f", id]);
            }
        }
    }
}

/// The leases the node holds now, as (profile, container id).
fn leases(node: &SimNode) -> Vec<(String, String)> {
    node.ledger()
        .instances
        .iter()
        .filter_map(|r| {
            r.lease
                .as_ref()
                .map(|l| (r.profile.clone(), l.container_id.clone()))
        })
        .collect()
}

/// Wait (bounded) until `cond` holds.
fn wait_for(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !cond() {
        assert!(Instant::now() < deadline, "not within 30 s: {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn docker26_annotation_and_env_requests_see_their_slice_and_free_it() {
    let node = SimNode::new("h100-80gb", 1, true);
    let dk = Docker::start(&node, false);
    let out = dk.run(
        &["--runtime", "gpushare", "--annotation", "gpu.profile=1g.10gb"],
        SHOW_GPU,
    );
    let printed = text(&out.stdout);
    assert!(
        out.status.success(),
        "docker run --annotation: {}\n{printed}\n{}",
        text(&out.stderr),
        dk.log()
    );
    let mig = assert_sees_one_slice(&node, &printed);
    // `docker run --rm` returns once the container is removed: its slice is back already.
    assert_all_free(&node, Some(&mig));

    // The env form, for scripts written for Docker < 24, works the same on 26.
    let out = dk.run(
        &["--runtime", "gpushare", "-e", "GPUSHARE_PROFILE=2g.20gb"],
        SHOW_GPU,
    );
    assert!(out.status.success(), "docker run -e: {}", text(&out.stderr));
    let mig2 = assert_sees_one_slice(&node, &text(&out.stdout));
    assert_ne!(mig, mig2, "a 2g.20gb is another instance than the 1g.10gb");
    assert_all_free(&node, Some(&mig2));
}
