//! gpushare's library: what the binaries (`gpushare-runtime`, `gpushare-hook`, `gpusharectl`)
//! decide and do, as calls with typed results. The processes are the binaries' own: their
//! command lines, the runtime they exec or spawn, their exit codes and the log lines engines
//! read live in bin/, never here.
//!
//! The path of one container: [`request`] finds what the container asks for in its
//! `config.json`, [`grant`] checks it against the node's policy, [`allocator`] grants a MIG
//! slice (from the [`ledger`]'s idle pool, or through [`nvml`] on the cold path), and [`spec`]
//! writes the grant into the spec; the [`hook`]s gpushare adds release it.
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
pub use util::{failpoint, fsutil, statedir, strict_json};

// What things are: config, requests, the ledger's data, placement policy, spec edits.
pub use model::{
    config, dra_devices, dra_name, hook, kube, lease_marker, ledger, placement, policy, request,
    spec, stats,
};

// What gpushare does to the GPU (NVML) and the node (driver files, procfs, runtimes' state).
#[cfg(any(test, feature = "testing"))]
pub use service::testing;
pub use service::{
    allocator, claim, compute_mode, driver, exec_env, gc, gpu, gpus, grant, inject, instance_log,
    logging, mig_mode, mps, mps_mig, node, nvml, offers, precreate, repair, running, share, slice,
    trust,
};

// What an operator reads.
pub use report::{doctor, metrics, readiness, status};

#[cfg(test)]
mod layers;
