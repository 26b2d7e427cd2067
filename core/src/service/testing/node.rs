//! [`FakeNode`]: the driver's files as they are while [`FakeGpu`]'s instances exist, and the
//! runtimes' containers and processes a test declares.

use super::FakeGpu;
use crate::driver::{DriverError, Majors};
use crate::node::{MpsDaemonDirs, Node};
use crate::running::RunningGpu;
use std::cell::RefCell;
use std::path::PathBuf;

/// The node around a [`FakeGpu`]; see the module docs.
pub struct FakeNode<'g> {
    gpu: &'g FakeGpu,
    /// (runtime root, container id) of the containers the runtimes have.
    containers: RefCell<Vec<(String, String)>>,
    running: RefCell<Vec<RunningGpu>>,
    processes: RefCell<Vec<u32>>,
    /// What the MPS control program was asked, in order: `start <gpu uuid> -d [-M]`, then
    /// each command line.
    mps: RefCell<Vec<String>>,
    /// The pid the next daemon gets.
    next_pid: std::cell::Cell<u32>,
}

impl<'g> FakeNode<'g> {
    pub fn new(gpu: &'g FakeGpu) -> Self {
        FakeNode {
            gpu,
            containers: RefCell::default(),
            running: RefCell::default(),
            processes: RefCell::default(),
            mps: RefCell::default(),
            next_pid: std::cell::Cell::new(50_000),
        }
    }

    /// What the MPS control program was asked so far.
    pub fn mps_log(&self) -> Vec<String> {
        self.mps.borrow().clone()
    }

    /// Process `pid` dies (a daemon killed behind gpushare's back).
    pub fn kill_process(&self, pid: u32) {
        self.processes.borrow_mut().retain(|p| *p != pid);
    }

    /// The runtime whose state root is `root` has container `id` (its state folder exists).
    pub fn add_container(&self, root: &str, id: &str) {
        self.containers
            .borrow_mut()
            .push((root.to_string(), id.to_string()));
    }

    /// A live container whose spec (edited by gpushare) names `mig_uuids`.
    pub fn add_running(&self, root: &str, id: &str, mig_uuids: &[&str]) {
        self.add_container(root, id);
        self.running.borrow_mut().push(RunningGpu {
            container_id: id.to_string(),
            runtime_root: root.to_string(),
            mig_uuids: mig_uuids.iter().map(|u| u.to_string()).collect(),
            claim: None,
        });
    }

    /// Process `pid` runs.
    pub fn add_process(&self, pid: u32) {
        self.processes.borrow_mut().push(pid);
    }
}

/// The recorded node's /proc/devices majors.
pub const MAJORS: Majors = Majors {
    nvidia: 195,
    uvm: 238,
    caps: 241,
};

impl Node for FakeNode<'_> {
    fn majors(&self) -> Result<Majors, DriverError> {
        Ok(MAJORS)
    }

    /// The driver's mig-minors numbering: 15 GPU instances of 8 compute instances per GPU, 9
    /// minors each, from 3 on (`gpu0/gi0/access 3` ... `gpu31/gi14/ci7/access 4322`).
    fn cap_minors(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<(u32, u32), DriverError> {
        if gpu_minor >= 32 || gi >= 15 || ci >= 8 {
            return Err(DriverError::NoMinor {
                path: PathBuf::from("/proc/driver/nvidia-caps/mig-minors"),
                key: format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access"),
            });
        }
        let gi_minor = 3 + gpu_minor * 135 + gi * 9;
        Ok((gi_minor, gi_minor + 1 + ci))
    }

    fn has_instance(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> bool {
        self.gpu.has(gpu_minor, gi, ci)
    }

    fn has_container(&self, root: &str, id: &str) -> bool {
        self.containers
            .borrow()
            .iter()
            .any(|(r, i)| r == root && i == id)
    }

    fn gpu_containers(&self, roots: &[String]) -> Vec<RunningGpu> {
        self.running
            .borrow()
            .iter()
            .filter(|c| roots.contains(&c.runtime_root))
            .cloned()
            .collect()
    }

    fn process_running(&self, pid: u32) -> bool {
        self.processes.borrow().contains(&pid)
    }

    /// A daemon comes up as the real one does: its control socket and pid file appear in the
    /// pipe folder and its process runs.
    fn mps_start(
        &self,
        daemon: &MpsDaemonDirs<'_>,
        gpu_uuid: &str,
        multi_user: bool,
    ) -> Result<(), String> {
        self.mps.borrow_mut().push(format!(
            "start {gpu_uuid} -d{}",
            if multi_user { " -M" } else { "" }
        ));
        let pid = self.next_pid.get();
        self.next_pid.set(pid + 1);
        let write = |name: &str, text: String| {
            std::fs::write(daemon.pipe_dir.join(name), text).map_err(|e| e.to_string())
        };
        write("control", String::new())?;
        write("nvidia-cuda-mps-control.pid", format!("{pid}\n"))?;
        self.processes.borrow_mut().push(pid);
        Ok(())
    }

    fn mps_command(&self, daemon: &MpsDaemonDirs<'_>, line: &str) -> Result<String, String> {
        self.mps.borrow_mut().push(line.to_string());
        if line == "quit" {
            let pid_file = daemon.pipe_dir.join("nvidia-cuda-mps-control.pid");
            let pid = std::fs::read_to_string(pid_file)
                .ok()
                .and_then(|s| s.trim().parse::<u32>().ok());
            if let Some(pid) = pid {
                self.kill_process(pid);
            }
            let _ = std::fs::remove_file(daemon.pipe_dir.join("control"));
        }
        Ok(String::new())
    }

    fn kill(&self, pid: u32) {
        self.mps.borrow_mut().push(format!("kill {pid}"));
        self.kill_process(pid);
    }
}
