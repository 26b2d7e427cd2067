//! Shared helpers of the end-to-end tests: a simulated GPU node, busybox bundles, and real
//! runtimes (runc, crun) driven through the gpushare binaries.
#![allow(dead_code)]

pub mod ctr;
pub mod docker;
pub mod engines;
pub mod kubelet;
pub mod podman;
pub mod trixie;

use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

pub const ENTRY: &str = env!("CARGO_BIN_EXE_gpushare");
/// The full wrapper `gpushare` hands GPU work (and anything it is unsure of) to.
pub const FULL: &str = env!("CARGO_BIN_EXE_gpushare-runtime");
pub const HOOK: &str = env!("CARGO_BIN_EXE_gpushare-hook");
pub const CTL: &str = env!("CARGO_BIN_EXE_gpusharectl");

/// The workspace's target/<profile> directory (test executables live in its deps/).
pub fn target_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    exe.parent()
        .and_then(Path::parent)
        .expect("target/<profile>/deps/<test>")
        .to_path_buf()
}

/// The simulator's CLI and library, built by `cargo build --workspace`.
pub fn sim_bin() -> PathBuf {
    let p = target_dir().join("gpushare-sim");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace` before the tests",
        p.display()
    );
    p
}

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A unique name for this test process.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}-{}-{}",
        std::process::id(),
        SEQ.fetch_add(1, Ordering::SeqCst)
    )
}

/// A scratch directory removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(prefix: &str) -> TempDir {
        let base = std::env::var_os("GPUSHARE_TEST_TMP")
            .map(PathBuf::from)
            .unwrap_or_else(std::env::temp_dir);
        let p = base.join(unique(prefix));
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    out
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A simulated GPU node under a temp dir, laid out by `gpushare-sim init`.
pub struct SimNode {
    pub dir: TempDir,
}

impl SimNode {
    pub fn new(model: &str, gpus: u32, mig: bool) -> SimNode {
        let dir = TempDir::new("node");
        let out = run(Command::new(sim_bin())
            .args(["init", "--root"])
            .arg(dir.path())
            .args([
                "--model",
                model,
                "--gpus",
                &gpus.to_string(),
                "--mig",
                if mig { "on" } else { "off" },
            ]));
        assert!(
            out.status.success(),
            "gpushare-sim init failed: {}",
            text(&out.stderr)
        );
        SimNode { dir }
    }

    pub fn root(&self) -> &Path {
        self.dir.path()
    }

    pub fn config(&self) -> PathBuf {
        self.root().join("config.toml")
    }

    /// Append settings to the node's gpushare config.
    pub fn configure(&self, extra: &str) {
        // Top-level keys must come before any [table] in TOML.
        let old = std::fs::read_to_string(self.config()).unwrap();
        let c = if extra.trim_start().starts_with('[') {
            format!("{old}\n{extra}\n")
        } else {
            format!("{extra}\n{old}")
        };
        std::fs::write(self.config(), c).unwrap();
    }

    /// Makes this node's MPS daemons the stand-in control program, with `extra` lines in
    /// its config's `[mps]` table.
    pub fn use_fake_mps_control(&self, extra: &str) {
        self.configure(&format!(
            "[mps]\ncontrol = {:?}\n{extra}",
            fake_mps_control().display().to_string()
        ));
    }

    pub fn cfg(&self) -> gpushare_core::config::Config {
        gpushare_core::config::Config::from_file(&self.config()).unwrap()
    }

    pub fn sim(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(sim_bin());
        cmd.arg(args[0])
            .arg("--root")
            .arg(self.root())
            .args(&args[1..]);
        run(&mut cmd)
    }

    /// The simulator's state (instances as the "driver" has them).
    pub fn sim_state(&self) -> Value {
        let out = self.sim(&["show"]);
        assert!(
            out.status.success(),
            "gpushare-sim show: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn ctl(&self, args: &[&str]) -> Output {
        run(Command::new(CTL)
            .arg("--config")
            .arg(self.config())
            .args(args))
    }

    pub fn status_json(&self) -> Value {
        let out = self.ctl(&["status", "--json"]);
        assert!(
            out.status.success(),
            "gpusharectl status: {}",
            text(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    pub fn ledger(&self) -> gpushare_core::ledger::LedgerState {
        gpushare_core::ledger::snapshot(&self.cfg().state_dir).unwrap()
    }
}

/// A low-level runtime on this machine.
#[derive(Clone, Copy, Debug)]
pub enum Runtime {
    Runc,
    Crun,
}

impl Runtime {
    pub fn name(self) -> &'static str {
        match self {
            Runtime::Runc => "runc",
            Runtime::Crun => "crun",
        }
    }

    pub fn path(self) -> PathBuf {
        for dir in [
            "/usr/sbin",
            "/usr/bin",
            "/usr/local/sbin",
            "/usr/local/bin",
            "/sbin",
            "/bin",
        ] {
            let p = Path::new(dir).join(self.name());
            if p.exists() {
                return p;
            }
        }
        panic!(
            "{} is not installed: the end-to-end tests need it (scripts/test installs it)",
            self.name()
        );
    }
}

pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "end-to-end container tests run as root (scripts/test)"
    );
}

/// A busybox-static root filesystem.
pub fn busybox_rootfs(dir: &Path) -> PathBuf {
    let rootfs = dir.join("rootfs");
    for d in ["bin", "dev", "proc", "sys", "tmp", "etc"] {
        std::fs::create_dir_all(rootfs.join(d)).unwrap();
    }
    let busybox = ["/bin/busybox", "/usr/bin/busybox"]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .expect("busybox-static is not installed (scripts/test installs it)");
    std::fs::copy(busybox, rootfs.join("bin/busybox")).unwrap();
    for applet in [
        "sh", "ls", "cat", "echo", "env", "sleep", "true", "stat", "grep", "head", "wc", "sort",
        "tr",
    ] {
        let _ = std::os::unix::fs::symlink("busybox", rootfs.join("bin").join(applet));
    }
    rootfs
}

/// A bundle running `script` under `sh -c`, with `annotations` and extra `env`.
pub struct Bundle {
    pub dir: TempDir,
}

impl Bundle {
    pub fn new(script: &str, annotations: &[(&str, &str)], env: &[&str]) -> Bundle {
        let dir = TempDir::new("bundle");
        busybox_rootfs(dir.path());
        let mut env_list = vec!["PATH=/bin".to_string()];
        env_list.extend(env.iter().map(|e| e.to_string()));
        let ann: serde_json::Map<String, Value> = annotations
            .iter()
            .map(|(k, v)| (k.to_string(), json!(v)))
            .collect();
        let mut spec: Value =
            serde_json::from_str(include_str!("../../../fixtures/spec/bundle.json")).unwrap();
        spec["process"]["args"] = json!(["/bin/sh", "-c", script]);
        spec["process"]["env"] = json!(env_list);
        spec["annotations"] = Value::Object(ann);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
        Bundle { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn config_bytes(&self) -> Vec<u8> {
        std::fs::read(self.path().join("config.json")).unwrap()
    }

    pub fn config(&self) -> Value {
        serde_json::from_slice(&self.config_bytes()).unwrap()
    }

    /// Rewrite config.json through `edit`, as an engine that wrote it so would have.
    pub fn edit_config(&self, edit: impl FnOnce(&mut Value)) {
        let mut spec = self.config();
        edit(&mut spec);
        std::fs::write(
            self.path().join("config.json"),
            serde_json::to_vec_pretty(&spec).unwrap(),
        )
        .unwrap();
    }
}

/// gpushare in front of a real runtime, with its own state root.
pub struct Engine<'n> {
    pub node: &'n SimNode,
    pub runtime: Runtime,
    pub root: TempDir,
}

impl<'n> Engine<'n> {
    pub fn new(node: &'n SimNode, runtime: Runtime) -> Engine<'n> {
        node.configure(&format!(
            "runtime = {:?}",
            runtime.path().display().to_string()
        ));
        Engine {
            node,
            runtime,
            root: TempDir::new("rtroot"),
        }
    }

    /// `gpushare --root R <args>` with the node's config in the environment.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(ENTRY);
        c.env("GPUSHARE_CONFIG", self.node.config())
            .arg("--root")
            .arg(self.root.path())
            .args(args);
        c
    }

    /// The same, straight to the runtime (no gpushare).
    pub fn bare(&self, args: &[&str]) -> Command {
        let mut c = Command::new(self.runtime.path());
        c.arg("--root").arg(self.root.path()).args(args);
        c
    }

    /// create, with the container's stdout/stderr going to files in the bundle dir.
    pub fn create(&self, bundle: &Bundle, id: &str) -> Output {
        let status = self.on_bundle(bundle, id, &["create"]).status().unwrap();
        Output {
            status,
            stdout: Vec::new(),
            stderr: std::fs::read(bundle.path().join("stderr")).unwrap(),
        }
    }

    pub fn state(&self, id: &str) -> Option<Value> {
        let out = run(&mut self.cmd(&["state", id]));
        out.status
            .success()
            .then(|| serde_json::from_slice(&out.stdout).unwrap())
    }

    /// start, wait for the process to exit, return what it printed.
    pub fn start_and_wait(&self, bundle: &Bundle, id: &str) -> String {
        let out = run(&mut self.cmd(&["start", id]));
        assert!(out.status.success(), "start {id}: {}", text(&out.stderr));
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let st = self.state(id).expect("state of a started container");
            if st["status"] == "stopped" {
                break;
            }
            assert!(Instant::now() < deadline, "{id} did not stop within 30 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        std::fs::read_to_string(bundle.path().join("stdout")).unwrap()
    }

    pub fn delete(&self, id: &str) -> Output {
        run(&mut self.cmd(&["delete", "--force", id]))
    }

    /// create + start + wait + delete; returns the container's output.
    pub fn run_to_end(&self, bundle: &Bundle, id: &str) -> String {
        let out = self.create(bundle, id);
        assert!(
            out.status.success(),
            "create {id} failed: {}",
            text(&out.stderr)
        );
        let printed = self.start_and_wait(bundle, id);
        let del = self.delete(id);
        assert!(del.status.success(), "delete {id}: {}", text(&del.stderr));
        printed
    }
}

/// The script a GPU container runs to show what it was given.
pub const SHOW_GPU: &str = r#"
echo "CUDA_VISIBLE_DEVICES=$CUDA_VISIBLE_DEVICES"
echo "NVIDIA_VISIBLE_DEVICES=$NVIDIA_VISIBLE_DEVICES"
for f in /dev/nvidia* /dev/nvidia-caps/*; do
  [ -c "$f" ] || continue
  if cat "$f" >/dev/null 2>/tmp/err; then r=ok; else r=$(cat /tmp/err); fi
  echo "node $f $(stat -c '%t:%T' "$f") $r"
done
"#;

/// Parsed output of [`SHOW_GPU`]: (path, "major:minor" in hex, open result).
pub fn nodes_seen(out: &str) -> Vec<(String, String, String)> {
    out.lines()
        .filter_map(|l| l.strip_prefix("node "))
        .map(|l| {
            let mut parts = l.splitn(3, ' ');
            (
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
                parts.next().unwrap_or_default().to_string(),
            )
        })
        .collect()
}

pub fn env_seen(out: &str, name: &str) -> String {
    out.lines()
        .find_map(|l| l.strip_prefix(&format!("{name}=")))
        .unwrap_or_default()
        .to_string()
}

/// The spec's poststop hook, run as runc runs it: its path, argv (argv[0] included) and env
/// only, with `state` on stdin.
pub fn run_hook(spec: &Value, state: &[u8]) -> std::process::Output {
    let hook = &spec["hooks"]["poststop"][0];
    let args: Vec<String> = serde_json::from_value(hook["args"].clone()).unwrap();
    let env: Vec<String> = serde_json::from_value(hook["env"].clone()).unwrap();
    let mut c = Command::new(hook["path"].as_str().unwrap());
    std::os::unix::process::CommandExt::arg0(&mut c, &args[0])
        .args(&args[1..])
        .env_clear()
        .envs(env.iter().map(|e| e.split_once('=').unwrap()));
    with_stdin(&mut c, state)
}

/// Run `c` with `input` on its stdin; its output.
pub fn with_stdin(c: &mut Command, input: &[u8]) -> std::process::Output {
    c.stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    use std::io::Write;
    let mut child = c.spawn().unwrap();
    child.stdin.take().unwrap().write_all(input).unwrap();
    child.wait_with_output().unwrap()
}

/// The state runc gives a poststop hook on stdin for a stopped 1g.10gb container.
pub fn state_of(id: &str, bundle: &Bundle) -> Vec<u8> {
    let mut state: Value =
        serde_json::from_str(include_str!("../../../fixtures/state/runc.json")).unwrap();
    state["id"] = json!(id);
    state["bundle"] = json!(bundle.path());
    state.to_string().into_bytes()
}

impl Engine<'_> {
    /// `run [flags] --bundle B ID` (create and start in one), with the container's stdout and
    /// stderr going to files in the bundle dir as for [`Engine::create`]; returns when gpushare
    /// does (at the container's exit, unless `--detach`).
    pub fn run_container(&self, bundle: &Bundle, id: &str, flags: &[&str]) -> Output {
        let mut args = vec!["run"];
        args.extend_from_slice(flags);
        let status = self.on_bundle(bundle, id, &args).status().unwrap();
        Output {
            status,
            stdout: std::fs::read(bundle.path().join("stdout")).unwrap(),
            stderr: std::fs::read(bundle.path().join("stderr")).unwrap(),
        }
    }

    /// `gpushare --root R --log B/runtime-log.json --log-format json <args> --bundle B ID`,
    /// with the container's stdout and stderr going to files in the bundle dir.
    fn on_bundle(&self, bundle: &Bundle, id: &str, args: &[&str]) -> Command {
        let mut c = self.cmd(&[]);
        c.arg("--log")
            .arg(bundle.path().join("runtime-log.json"))
            .args(["--log-format", "json"])
            .args(args)
            .arg("--bundle")
            .arg(bundle.path())
            .arg(id)
            .stdin(Stdio::null())
            // Files, not pipes: the container's init keeps its stdio open until it exits.
            .stdout(std::fs::File::create(bundle.path().join("stdout")).unwrap())
            .stderr(std::fs::File::create(bundle.path().join("stderr")).unwrap());
        c
    }

    /// create + start a container that keeps running (its script should sleep).
    pub fn start_detached(&self, bundle: &Bundle, id: &str) {
        let out = self.create(bundle, id);
        assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
        let out = run(&mut self.cmd(&["start", id]));
        assert!(out.status.success(), "start {id}: {}", text(&out.stderr));
    }
}

/// Whether the ledger holds anything of `id`'s: a MIG slice, a time-slice share or an MPS
/// share.
pub fn holds(node: &SimNode, id: &str) -> bool {
    let st = node.ledger();
    st.lease_of(id).is_some()
        || st.shares.iter().any(|s| s.lease.container_id == id)
        || st
            .mps
            .iter()
            .any(|d| d.clients.iter().any(|c| c.lease.container_id == id))
}

/// The stand-in MPS control program built with the simulator (records what it was told).
pub fn fake_mps_control() -> PathBuf {
    let p = target_dir().join("fake-mps-control");
    assert!(
        p.exists(),
        "{} missing: run `cargo build --workspace`",
        p.display()
    );
    p
}

/// A simulated node without MIG whose MPS daemons are the stand-in control program.
pub fn mps_node() -> SimNode {
    mps_node_with("")
}

/// [`mps_node`] with `extra` lines in its config's `[mps]` table.
pub fn mps_node_with(extra: &str) -> SimNode {
    let node = SimNode::new("h100-80gb", 1, false);
    node.use_fake_mps_control(extra);
    node
}

/// What the stand-in MPS control programs of every GPU recorded, in one string.
pub fn mps_control_log(node: &SimNode) -> String {
    let dir = node.cfg().state_dir.join(gpushare_state::MPS_DIR);
    let mut out = String::new();
    for gpu in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
        out.push_str(
            &std::fs::read_to_string(gpu.path().join("log/control.log")).unwrap_or_default(),
        );
    }
    out
}

/// Put a host driver library and tool below the node's driver root, so that GPU containers get
/// them injected (and `LD_LIBRARY_PATH`/`PATH` additions with them).
pub fn host_driver_files(node: &SimNode) {
    let lib = node.root().join("usr/lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::write(lib.join("libcuda.so.580.159.04"), b"host libcuda\n").unwrap();
    std::os::unix::fs::symlink("libcuda.so.580.159.04", lib.join("libcuda.so.1")).unwrap();
    std::fs::create_dir_all(node.root().join("usr/bin")).unwrap();
    std::fs::write(
        node.root().join("usr/bin/nvidia-smi"),
        b"#!/bin/sh\necho fake nvidia-smi\n",
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        node.root().join("usr/bin/nvidia-smi"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
}
