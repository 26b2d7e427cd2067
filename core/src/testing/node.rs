//! [`FakeNode`]: the driver's files as they are while [`FakeGpu`]'s instances exist, and the
//! runtimes' containers and processes a test declares.

use super::FakeGpu;
use crate::driver::{DriverError, Majors};
use crate::node::Node;
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
}

impl<'g> FakeNode<'g> {
    pub fn new(gpu: &'g FakeGpu) -> Self {
        FakeNode {
            gpu,
            containers: RefCell::default(),
            running: RefCell::default(),
            processes: RefCell::default(),
        }
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
}
