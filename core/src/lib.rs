//! gpushare's library: everything the thin binaries (`gpushare`, `gpushare-hook`,
//! `gpusharectl`) decide lives here.
//!
//! The path of one container: [`runc_args`] reads the engine's command line, [`request`]
//! finds what the container asks for in its `config.json`, [`allocator`] grants a MIG slice
//! (from the [`ledger`]'s idle pool, or through [`nvml`] on the cold path), [`spec`] writes the
//! grant into the spec, and [`runc_log`] reports failures the way engines read them.
//!
//! Four layers, one folder each, lowest first: `util`, `model`, `service`, `report`. A module
//! imports only from its own layer or a lower one, and no modules import each other in a circle
//! (the `layers` unit test reads the source and fails on either). The crate root re-exports
//! every module, so a path names no layer (`gpushare_core::allocator`).
mod model;
mod report;
mod service;
mod util;

// Files, strict JSON, state-folder checks, test hooks: nothing of GPUs or containers.
pub use util::{failpoint, fsutil, runc_log, statedir, strict_json};

// What things are: config, requests, the ledger's data, placement policy, spec edits.
pub use model::{config, kube, ledger, placement, policy, request, runc_args, spec, stats};

// What gpushare does to the GPU (NVML) and the node (driver files, procfs, runtimes' state).
#[cfg(any(test, feature = "testing"))]
pub use service::testing;
pub use service::{
    allocator, claim, compute_mode, driver, exec_env, gc, gpu, gpus, grant, inject, instance_log,
    logging, mps, node, nvml, offers, repair, running, share, slice, trust,
};

// What an operator reads.
pub use report::{doctor, metrics, status};

// Process logic on its way into the binaries (issue 18).
pub mod hook;
pub mod shim;

#[cfg(test)]
mod layers;
