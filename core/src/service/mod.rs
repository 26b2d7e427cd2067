//! What gpushare does to the GPU (through [`gpu::Gpu`]: NVML) and to the node (through
//! [`node::Node`]: driver files, runtime state, procfs): grants and releases of every kind, the
//! offers the entry binary grants from, gc and repair, the spec edits that give a container its
//! GPU, and the in-memory doubles of both traits that unit tests use.

pub mod allocator;
pub mod claim;
pub mod compute_mode;
pub mod driver;
pub mod exec_env;
pub mod gc;
pub mod gpu;
pub mod gpus;
pub mod grant;
pub mod inject;
pub mod instance_log;
pub mod logging;
pub mod mig_mode;
pub mod mps;
pub mod mps_mig;
pub mod node;
pub mod nvml;
pub mod offers;
pub mod precreate;
pub mod repair;
pub mod running;
pub mod share;
pub mod slice;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trust;
