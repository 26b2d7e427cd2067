//! gpushare's library: everything the thin binaries (`gpushare`, `gpushare-hook`,
//! `gpusharectl`) decide lives here.
//!
//! The path of one container: [`runc_args`] reads the engine's command line, [`request`]
//! finds what the container asks for in its `config.json`, [`allocator`] grants a MIG slice
//! (from the [`ledger`]'s idle pool, or through [`nvml`] on the cold path), [`spec`] writes the
//! grant into the spec, and [`runc_log`] reports failures the way engines read them.

pub mod allocator;
pub mod claim;
pub mod compute_mode;
pub mod config;
pub mod doctor;
pub mod driver;
pub mod exec_env;
pub mod failpoint;
pub mod fsutil;
pub mod gc;
pub mod gpu;
pub mod gpus;
pub mod grant;
pub mod hook;
pub mod inject;
pub mod instance_log;
pub mod kube;
#[cfg(test)]
mod layers;
pub mod ledger;
pub mod logging;
pub mod metrics;
pub mod mps;
pub mod node;
pub mod nvml;
pub mod offers;
pub mod placement;
pub mod policy;
pub mod repair;
pub mod request;
pub mod runc_args;
pub mod runc_log;
pub mod running;
pub mod share;
pub mod shim;
pub mod slice;
pub mod spec;
pub mod statedir;
pub mod stats;
pub mod status;
pub mod strict_json;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod trust;
