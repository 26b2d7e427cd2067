//! In-memory doubles of the two traits the services run on ([`crate::gpu::Gpu`],
//! [`crate::node::Node`]), so the allocator, gc and MPS decisions are unit-tested without a
//! driver, a simulator or root: [`FakeGpu`] holds GPUs with the H100's recorded profile table
//! and placements and records every call made of it; [`FakeNode`] answers the driver's files
//! from the same instances, as the real driver does. End-to-end tests keep the simulated
//! driver through NVML.

mod gpu;
mod node;
mod records;

pub use gpu::{h100_profiles, Call, FakeGpu};
pub use node::FakeNode;
pub use records::{gpu_record, instance_record, unmade_instance_record};

use crate::config::Config;
use crate::ledger::{Ledger, LedgerState};
use std::path::{Path, PathBuf};
use std::time::Duration;

/// A config whose state directory (and driver root) is a fresh folder of its own, removed on
/// drop: the ledger, the instance log and the offers stay real files.
pub struct Scratch {
    pub cfg: Config,
    dir: PathBuf,
}

impl Scratch {
    /// `name` keeps parallel tests apart.
    pub fn new(name: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("gpushare-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let state = dir.join("state");
        std::fs::create_dir_all(&state).expect("a scratch folder");
        // The ledger's folder must not be writable by others (statedir's rule).
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&state, std::fs::Permissions::from_mode(0o700))
            .expect("scratch folder mode");
        let cfg = Config {
            state_dir: state,
            driver_root: dir.join("driver"),
            ..Config::default()
        };
        Scratch { cfg, dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The ledger as the next locked reader sees it.
    pub fn ledger(&self) -> LedgerState {
        let locked = Ledger::new(&self.cfg.state_dir)
            .lock(Duration::from_secs(5))
            .expect("the ledger lock");
        locked.load().expect("a readable ledger")
    }

    /// Write `st` as the ledger.
    pub fn save(&self, st: &LedgerState) {
        let locked = Ledger::new(&self.cfg.state_dir)
            .lock(Duration::from_secs(5))
            .expect("the ledger lock");
        locked.save(st).expect("a written ledger");
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
