//! What the services ask of the node itself besides its GPUs, as one trait: the NVIDIA
//! driver's files (device majors, capability minors, the capability files that exist while a
//! MIG instance does), the low-level runtimes' container state, and procfs. [`Host`] reads the
//! real files; unit tests use an in-memory double (`crate::testing::FakeNode`).
//!
//! Taken as `&dyn Node` for the reason [`crate::gpu`] gives: each call is a file system call,
//! which an indirect call adds nothing to, and the services are compiled once.

use crate::config::Config;
use crate::driver::{Driver, DriverError, Majors};
use crate::running::RunningGpu;
use std::path::Path;

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
}
