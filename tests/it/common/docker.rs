//! A privately started dockerd with gpushare as a runtime, for the host's Docker
//! (tests/it/engine_docker.rs) and trixie's (tests/it/trixie_docker.rs): the same daemon command
//! line either way, only where it runs and its daemon.json differ.

use super::engines::*;
use super::*;

pub struct Docker {
    // Dropped first: the daemon stops before its directories (and namespace) go.
    pub daemon: Option<Daemon>,
    sock: String,
    pub image: String,
    pub host: Host,
}

impl Docker {
    /// dockerd on `host` with `daemon_json` (packaging/docker/daemon.json and what a private
    /// daemon in a sandbox needs), and the busybox image imported as `image`.
    pub fn start(host: Host, daemon_json: &serde_json::Value, image: String) -> Docker {
        let d = host.dir().to_path_buf();
        std::fs::write(d.join("daemon.json"), daemon_json.to_string()).unwrap();
        let mut dk = Docker {
            daemon: None,
            sock: format!("unix://{}", d.join("d.sock").display()),
            image,
            host,
        };
        dk.start_daemon();
        let tar = busybox_tar(&d);
        let out = dk.docker(&["import", tar.to_str().unwrap(), &dk.image]);
        assert!(out.status.success(), "docker import: {}", text(&out.stderr));
        dk
    }

    pub fn start_daemon(&mut self) {
        let d = self.host.dir();
        let mut cmd = self.host.cmd("dockerd");
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
        let mut probe = self.host.cmd("docker");
        probe
            .args(["-H", &self.sock, "version"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        daemon.wait_ready("answering", || probe.status().is_ok_and(|s| s.success()));
        self.daemon = Some(daemon);
    }

    /// dockerd killed with SIGKILL (no shutdown of its own), then started again.
    pub fn kill_and_restart_daemon(&mut self) {
        self.daemon.take().unwrap().kill();
        self.start_daemon();
    }

    pub fn docker(&self, args: &[&str]) -> Output {
        run(self.host.cmd("docker").args(["-H", &self.sock]).args(args))
    }

    /// `docker run --rm --network none <opts> IMAGE sh -c SCRIPT`.
    pub fn run(&self, opts: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "--rm", "--network", "none"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", script]);
        self.docker(&args)
    }

    /// `docker run -d --name NAME <opts> IMAGE sh -c SCRIPT`.
    pub fn detach(&self, name: &str, opts: &[&str], script: &str) -> Output {
        let mut args = vec!["run", "-d", "--name", name, "--network", "none"];
        args.extend_from_slice(opts);
        args.extend_from_slice(&[&self.image, "/bin/sh", "-c", script]);
        self.docker(&args)
    }

    /// The daemon's log so far.
    pub fn log(&self) -> String {
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

/// A request-less container through gpushare prints exactly what one through runc alone
/// prints, and nothing is made.
pub fn assert_no_request_is_exactly_plain_runc(node: &SimNode, dk: &Docker) {
    let base = ["--hostname", "same", "-e", "X=1"];
    let mut with = vec!["--runtime", "gpushare"];
    with.extend_from_slice(&base);
    let mut plain = vec!["--runtime", "runc"];
    plain.extend_from_slice(&base);
    let a = dk.run(&with, SHOW_ALL);
    let b = dk.run(&plain, SHOW_ALL);
    assert_eq!(a.status.code(), Some(3), "{}", text(&a.stderr));
    assert_eq!(b.status.code(), Some(3), "{}", text(&b.stderr));
    assert_eq!(text(&a.stdout), text(&b.stdout));
    assert!(!text(&a.stdout).contains("nvidia"));
    assert_nothing_made(node);
}
