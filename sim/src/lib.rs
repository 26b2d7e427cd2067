//! gpushare-sim: a simulated NVIDIA driver for gpushare's tests.
//!
//! Built as a C-ABI shared library (`libgpushare_sim.so`) that production code loads exactly as
//! it loads the real `libnvidia-ml.so.1` (nvml-wrapper's `lib_path`), plus the driver's files
//! under a root directory (`gpushare-sim init`). The library keeps its state in
//! `gpushare-sim-state.json` beside itself, under an flock on `gpushare-sim-state.lock`, so all
//! processes that load it see one node.

pub mod compute_mode;
pub mod driver_files;
pub mod error;
pub mod ffi;
pub mod handles;
pub mod latency;
pub mod mig;
pub mod models;
pub mod node;
pub mod state;
