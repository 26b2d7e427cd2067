//! What the services ask of the node itself besides its GPUs, as one trait: the NVIDIA
//! driver's files (device majors, capability minors, the capability files that exist while a
//! MIG instance does), the low-level runtimes' container state, procfs, and the MPS control
//! program (daemon start, commands, kill). [`Host`] reads the
//! real files; unit tests use an in-memory double (`crate::testing::FakeNode`).
//!
//! Taken as `&dyn Node` for the reason [`crate::gpu`] gives: each call is a file system call,
//! which an indirect call adds nothing to, and the services are compiled once.

use crate::config::Config;
use crate::driver::{Driver, DriverError, Majors};
use crate::running::RunningGpu;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

pub trait Node {
    /// Character-device majors of the driver's nodes.
    fn majors(&self) -> Result<Majors, DriverError>;
    /// Minors of a MIG instance's two capability nodes (GPU instance, compute instance).
    fn cap_minors(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<(u32, u32), DriverError>;
    /// Whether the driver has GPU instance `gi` (`ci` None) or its compute instance `ci`: its
    /// capability file exists exactly while it does.
    fn has_instance(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> bool;
    /// Whether the runtime whose state root is `root` still has container `id`.
    fn has_container(&self, root: &str, id: &str) -> bool;
    /// Every live container under `roots` whose spec gpushare edited to name MIG devices.
    fn gpu_containers(&self, roots: &[String]) -> Vec<RunningGpu>;
    /// Whether process `pid` runs: it exists and is no zombie.
    fn process_running(&self, pid: u32) -> bool;
    /// Start an MPS control daemon for the GPU `gpu_uuid` (its one visible device): run
    /// `control -d` (`-M`: multi-user), which forks the daemon and exits. Why it failed,
    /// as text.
    fn mps_start(
        &self,
        daemon: &MpsDaemonDirs<'_>,
        gpu_uuid: &str,
        multi_user: bool,
    ) -> Result<(), String>;
    /// One command line to a running control daemon through the control program's stdin;
    /// its output, or why it failed, as text.
    fn mps_command(&self, daemon: &MpsDaemonDirs<'_>, line: &str) -> Result<String, String>;
    /// Kill process `pid` outright (a daemon that ignored `quit`).
    fn kill(&self, pid: u32);
}

/// The MPS control program and the folders a daemon of it uses.
#[derive(Debug, Clone, Copy)]
pub struct MpsDaemonDirs<'a> {
    pub control: &'a Path,
    pub pipe_dir: &'a Path,
    pub log_dir: &'a Path,
}

/// The daemon runs with a fixed, minimal environment: never the environment of whichever
/// engine or container caused it to start.
fn daemon_env<'c>(cmd: &'c mut Command, d: &MpsDaemonDirs<'_>) -> &'c mut Command {
    cmd.env_clear()
        .env(
            "PATH",
            "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        )
        .env("CUDA_MPS_PIPE_DIRECTORY", d.pipe_dir)
        .env("CUDA_MPS_LOG_DIRECTORY", d.log_dir)
}

/// The node gpushare runs on: driver files below `driver_root`, runtime state and procfs as
/// they are.
pub struct Host<'c> {
    driver: Driver<'c>,
}

impl<'c> Host<'c> {
    pub fn new(cfg: &'c Config) -> Self {
        Host {
            driver: Driver::new(cfg),
        }
    }
}

impl Node for Host<'_> {
    fn majors(&self) -> Result<Majors, DriverError> {
        self.driver.majors()
    }
    fn cap_minors(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<(u32, u32), DriverError> {
        self.driver.cap_minors(gpu_minor, gi, ci)
    }
    fn has_instance(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> bool {
        self.driver.cap_file(gpu_minor, gi, ci).exists()
    }
    fn has_container(&self, root: &str, id: &str) -> bool {
        Path::new(root).join(id).exists()
    }
    fn gpu_containers(&self, roots: &[String]) -> Vec<RunningGpu> {
        crate::running::find(roots)
    }
    fn process_running(&self, pid: u32) -> bool {
        i32::try_from(pid).is_ok_and(crate::running::alive)
    }

    fn mps_start(
        &self,
        daemon: &MpsDaemonDirs<'_>,
        gpu_uuid: &str,
        multi_user: bool,
    ) -> Result<(), String> {
        let mut cmd = Command::new(daemon.control);
        cmd.arg("-d");
        if multi_user {
            cmd.arg("-M");
        }
        let status = daemon_env(&mut cmd, daemon)
            .env("CUDA_VISIBLE_DEVICES", gpu_uuid)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map_err(|e| e.to_string())?;
        if !status.success() {
            return Err(format!(
                "exited with {status}; see {}",
                daemon.log_dir.display()
            ));
        }
        Ok(())
    }

    fn mps_command(&self, daemon: &MpsDaemonDirs<'_>, line: &str) -> Result<String, String> {
        let mut child = daemon_env(&mut Command::new(daemon.control), daemon)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut stdin = child.stdin.take().expect("piped");
        let _ = writeln!(stdin, "{line}");
        drop(stdin);
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match child.try_wait().map_err(|e| e.to_string())? {
                Some(_) => break,
                None if Instant::now() > deadline => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err("no answer within 10 s".into());
                }
                None => std::thread::sleep(Duration::from_millis(5)),
            }
        }
        let out = child.wait_with_output().map_err(|e| e.to_string())?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).trim().to_string());
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn kill(&self, pid: u32) {
        // SAFETY: sending a signal to the daemon's pid, read from its own pid file.
        unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    }
}
