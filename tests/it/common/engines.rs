//! Helpers shared by the real-engine tests (Docker, Podman, containerd): image tarballs,
//! privately started daemons stopped by their pid file, and the checks every engine's
//! container must pass.

use super::trixie::Trixie;
use super::*;
use std::process::Child;

/// The repository root (packaging files live below it).
pub fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A file from `packaging/`, with the installed binaries' paths replaced by this build's.
pub fn packaging_file(rel: &str) -> String {
    let text = std::fs::read_to_string(repo_root().join("packaging").join(rel))
        .unwrap_or_else(|e| panic!("packaging/{rel}: {e}"));
    text.replace("/usr/bin/gpushare-hook", HOOK)
        .replace("/usr/bin/gpushare", ENTRY)
}

/// A scratch directory directly under /tmp, removed on drop: daemons put unix sockets below
/// it, and a socket path must stay under 108 bytes.
pub struct ShortDir(pub PathBuf);

impl ShortDir {
    pub fn new(prefix: &str) -> ShortDir {
        let p = PathBuf::from("/tmp").join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        ShortDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for ShortDir {
    fn drop(&mut self) {
        // Engines leave mounts (overlay, shm, netns) behind when a test fails half-way;
        // unmount what is left under this directory, deepest first, before removing it.
        if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
            let mut ours: Vec<&str> = mounts
                .lines()
                .filter_map(|l| l.split(' ').nth(1))
                .filter(|m| Path::new(m).starts_with(&self.0))
                .collect();
            ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for m in ours {
                let _ = Command::new("umount").arg("-l").arg(m).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A busybox root filesystem as a tarball, what `docker import` / `podman import` take.
pub fn busybox_tar(dir: &Path) -> PathBuf {
    let rootfs = busybox_rootfs(dir);
    let tar = dir.join("busybox.tar");
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(&rootfs)
        .arg("-cf")
        .arg(&tar)
        .arg("."));
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    tar
}

/// A daemon this test started; stopped through its pid file when dropped, even when the
/// test fails. The child handle is kept only to reap it.
pub struct Daemon {
    pub name: &'static str,
    pub pid_file: PathBuf,
    pub log: PathBuf,
    child: Child,
}

impl Daemon {
    /// Start `cmd` with its output in `log`. `pid_file` is where the daemon writes its pid;
    /// for a daemon that writes none, `write_pid_file` makes the test write it.
    pub fn start(
        name: &'static str,
        mut cmd: Command,
        pid_file: PathBuf,
        log: PathBuf,
        write_pid_file: bool,
    ) -> Daemon {
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name}: {e} (is it installed?)"));
        if write_pid_file {
            std::fs::write(&pid_file, child.id().to_string()).unwrap();
        }
        Daemon {
            name,
            pid_file,
            log,
            child,
        }
    }

    /// Wait until `ready` holds; on a time-out, fail with the daemon's log.
    pub fn wait_ready(&mut self, what: &str, mut ready: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !ready() {
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!(
                    "{} exited ({st}) before {what}:\n{}",
                    self.name,
                    self.log_text()
                );
            }
            assert!(
                Instant::now() < deadline,
                "{} not {what} within 60 s:\n{}",
                self.name,
                self.log_text()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn log_text(&self) -> String {
        let t = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut start = t.len().saturating_sub(8000);
        while !t.is_char_boundary(start) {
            start -= 1;
        }
        t[start..].to_string()
    }

    /// SIGKILL: no shutdown of its own, as in a crash (what it started keeps running).
    /// Dropping it then reaps it.
    pub fn kill(mut self) {
        match self.pid().filter(|p| *p as u32 == self.child.id()) {
            // SAFETY: kill has no memory preconditions; pid is our own child.
            Some(pid) => unsafe {
                libc::kill(pid, libc::SIGKILL);
            },
            None => {
                let _ = self.child.kill();
            }
        }
    }

    fn pid(&self) -> Option<i32> {
        std::fs::read_to_string(&self.pid_file)
            .ok()
            .and_then(|p| p.trim().parse().ok())
            .filter(|p| *p > 1)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // The pid file names the daemon; it must be our child, never some other process.
        let pid = self.pid().filter(|p| *p as u32 == self.child.id());
        if let Some(pid) = pid {
            // SAFETY: kill has no memory preconditions; pid is our own child.
            unsafe { libc::kill(pid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if matches!(self.child.try_wait(), Ok(Some(_))) {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        } else {
            eprintln!(
                "{}: pid file {} missing or not our child; stopping the child itself",
                self.name,
                self.pid_file.display()
            );
            let _ = self.child.kill();
        }
        let _ = self.child.wait();
    }
}

/// What a container with a slice must have seen: its slice's MIG UUID in both variables and
/// exactly that slice's device nodes, all allowed (ENXIO, not EPERM). Returns the MIG UUID.
pub fn assert_sees_one_slice(node: &SimNode, printed: &str) -> String {
    let mig = env_seen(printed, "CUDA_VISIBLE_DEVICES");
    assert!(mig.starts_with("MIG-"), "no MIG slice seen:\n{printed}");
    assert_eq!(
        env_seen(printed, "NVIDIA_VISIBLE_DEVICES"),
        mig,
        "{printed}"
    );
    let ledger = node.ledger();
    let made = ledger
        .instances
        .iter()
        .filter_map(|r| r.made.as_ref())
        .find(|m| m.mig_uuid == mig)
        .unwrap_or_else(|| panic!("{mig} is not an instance gpushare made: {ledger:?}"))
        .clone();
    let seen = nodes_seen(printed);
    let mut paths: Vec<String> = seen.iter().map(|(p, _, _)| p.clone()).collect();
    paths.sort();
    let mut want = vec![
        "/dev/nvidia-caps/nvidia-cap".to_string() + &made.gi_cap_minor.to_string(),
        "/dev/nvidia-caps/nvidia-cap".to_string() + &made.ci_cap_minor.to_string(),
        "/dev/nvidia-uvm".into(),
        "/dev/nvidia-uvm-tools".into(),
        "/dev/nvidia0".into(),
        "/dev/nvidiactl".into(),
    ];
    want.sort();
    assert_eq!(paths, want, "exactly the slice's nodes:\n{printed}");
    let caps = paths
        .iter()
        .filter(|p| p.starts_with("/dev/nvidia-caps/"))
        .count();
    assert_eq!(caps, 2, "{printed}");
    for (path, _, result) in &seen {
        assert!(
            result.contains("No such device or address"),
            "{path} must be allowed by the device cgroup (ENXIO), got {result:?}"
        );
    }
    mig
}

/// What a container without a slice must have seen: no GPU at all.
pub fn assert_sees_no_gpu(printed: &str) {
    assert_eq!(env_seen(printed, "CUDA_VISIBLE_DEVICES"), "", "{printed}");
    assert!(nodes_seen(printed).is_empty(), "{printed}");
}

/// No lease is held and `mig` (if given) is back in the idle pool.
pub fn assert_all_free(node: &SimNode, mig: Option<&str>) {
    let status = node.status_json();
    assert_eq!(
        status["leases"].as_array().map(Vec::len),
        Some(0),
        "leases left: {status:#}"
    );
    let ledger = node.ledger();
    assert!(
        ledger.instances.iter().all(|r| r.lease.is_none()),
        "{ledger:?}"
    );
    if let Some(mig) = mig {
        assert!(
            ledger
                .instances
                .iter()
                .any(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == mig)),
            "{mig} should be idle in the pool: {ledger:?}"
        );
    }
}

/// Nothing was ever granted on the node.
pub fn assert_nothing_made(node: &SimNode) {
    let ledger = node.ledger();
    assert!(ledger.instances.is_empty(), "{ledger:?}");
}

/// Wait (bounded) for an engine's asynchronous cleanup to release every lease.
pub fn wait_all_free(node: &SimNode) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while node.ledger().instances.iter().any(|r| r.lease.is_some()) {
        if Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The script a no-request container runs, for comparing gpushare with the plain runtime:
/// everything the runtime decides (devices, env, capabilities, mounts, cgroup) and an exit
/// code that must come back unchanged.
pub const SHOW_ALL: &str = r#"
ls -1 /dev | sort
env | sort
grep -E '^(Cap|NoNewPrivs|Seccomp)' /proc/self/status
cat /proc/self/mounts | while read -r src dst t rest; do echo "$dst $t"; done | sort
exit 3
"#;

/// containerd with the config in `dir/config.toml`, answering on `sock`; `gpushare_config`
/// reaches gpushare through containerd's environment (containerd hands it to the runtime).
pub fn start_containerd(dir: &Path, sock: &Path, gpushare_config: Option<&Path>) -> Daemon {
    let mut cmd = Command::new("containerd");
    cmd.arg("--config").arg(dir.join("config.toml"));
    if let Some(c) = gpushare_config {
        cmd.env("GPUSHARE_CONFIG", c);
    }
    // containerd writes no pid file of its own: the test writes the one it is stopped by.
    let mut daemon = Daemon::start(
        "containerd",
        cmd,
        dir.join("containerd.pid"),
        dir.join("containerd.log"),
        true,
    );
    let probe = sock.to_path_buf();
    daemon.wait_ready("answering", || {
        probe.exists()
            && Command::new("ctr")
                .arg("-a")
                .arg(&probe)
                .arg("version")
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
    });
    daemon
}

/// A stand-in `nvidia-smi` in the node's driver root, which gpushare injects into GPU
/// containers (at /usr/local/gpushare/bin, added to PATH): it prints the slice it was given.
pub fn plant_nvidia_smi(node: &SimNode) {
    use std::os::unix::fs::PermissionsExt;
    let bin = node.root().join("usr/bin");
    std::fs::create_dir_all(&bin).unwrap();
    let tool = bin.join("nvidia-smi");
    std::fs::write(
        &tool,
        "#!/bin/sh\necho \"nvidia-smi sees CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES\"\n",
    )
    .unwrap();
    std::fs::set_permissions(&tool, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// containerd on the config in `d`: on this machine with `node_config` in its environment,
/// or in the trixie root, where gpushare reads /etc/gpushare/config.toml.
pub fn spawn_containerd(
    trixie: Option<&Trixie>,
    d: &Path,
    sock: &Path,
    node_config: &Path,
) -> Daemon {
    let Some(tx) = trixie else {
        return start_containerd(d, sock, Some(node_config));
    };
    let version = run(tx.cmd("containerd").arg("--version"));
    assert!(
        text(&version.stdout).contains(" 1.7."),
        "trixie's containerd should be 1.7: {}{}",
        text(&version.stdout),
        text(&version.stderr)
    );
    let mut cmd = tx.cmd("containerd");
    cmd.arg("--config").arg(d.join("config.toml"));
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
        .arg(sock)
        .arg("version")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    daemon.wait_ready("answering", || {
        sock.exists() && probe.status().is_ok_and(|s| s.success())
    });
    daemon
}

/// Where an engine runs: this machine's, its state in a scratch directory; or trixie's
/// (tests/it/common/trixie.rs), its state in the namespace's scratch directory.
pub enum Host {
    Here(ShortDir),
    Trixie(Trixie),
}

impl Host {
    /// The scratch directory, at the same path inside trixie's namespace and outside.
    pub fn dir(&self) -> &Path {
        match self {
            Host::Here(dir) => dir.path(),
            Host::Trixie(tx) => tx.dir(),
        }
    }

    /// `program` as this host runs it.
    pub fn cmd(&self, program: &str) -> Command {
        match self {
            Host::Here(_) => Command::new(program),
            Host::Trixie(tx) => tx.cmd(program),
        }
    }

    pub fn trixie(&self) -> Option<&Trixie> {
        match self {
            Host::Here(_) => None,
            Host::Trixie(tx) => Some(tx),
        }
    }
}

/// What gpushare gave a container's first process, and what `<engine> exec` gets: the same
/// slice, the same injected paths, and the injected nvidia-smi ([`plant_nvidia_smi`]) on the
/// exec's PATH. `exec` runs `<engine> exec CONTAINER ARGS...`.
pub fn assert_exec_sees_what_init_sees(engine: &str, exec: impl Fn(&[&str]) -> Output) {
    let out = exec(&[
        "/bin/sh",
        "-c",
        "tr '\\0' '\\n' < /proc/1/environ; echo ---; env",
    ]);
    assert!(out.status.success(), "{engine} exec: {}", text(&out.stderr));
    let printed = text(&out.stdout);
    let (init, exec_env) = printed.split_once("---\n").unwrap();
    assert!(
        env_seen(init, "CUDA_VISIBLE_DEVICES").starts_with("MIG-"),
        "{init}"
    );
    for var in [
        "CUDA_VISIBLE_DEVICES",
        "NVIDIA_VISIBLE_DEVICES",
        "PATH",
        "LD_LIBRARY_PATH",
    ] {
        assert_eq!(
            env_seen(exec_env, var),
            env_seen(init, var),
            "{engine} exec must see the container's {var}:\n{printed}"
        );
    }
    // The injected tool is found on the exec's PATH and sees the slice.
    assert!(
        env_seen(init, "PATH").contains("/usr/local/gpushare/bin"),
        "{init}"
    );
    let out = exec(&["nvidia-smi"]);
    assert!(
        out.status.success(),
        "{engine} exec nvidia-smi: {}",
        text(&out.stderr)
    );
    assert_eq!(
        text(&out.stdout).trim(),
        format!(
            "nvidia-smi sees CUDA_VISIBLE_DEVICES={}",
            env_seen(init, "CUDA_VISIBLE_DEVICES")
        )
    );
}

/// The leases the node holds now, as (profile, container id).
pub fn leases(node: &SimNode) -> Vec<(String, String)> {
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
