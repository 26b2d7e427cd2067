//! The end-to-end tests, one binary (built and linked once): real runc, crun, Docker, Podman
//! and containerd on a simulated GPU node. `cargo test --test it <module>::` runs one file.

mod common;
#[path = "common/cri.rs"]
mod cri;
mod invariants;

mod allocator_props;
mod bad_requests;
mod claims;
mod crash_safety;
mod docs;
mod dra_cri;
mod dra_plugin;
mod engine_containerd;
mod engine_crio;
mod engine_docker;
mod engine_podman;
mod exec_env;
mod k8s_cri;
mod lease_markers;
mod mig_mode;
mod mig_runtime;
mod mps_exclusive;
mod mps_mig;
mod mps_timeslice;
mod ops;
mod packaging;
mod passthrough;
mod release_hook;
mod run_command;
mod sim_nvml;
mod state_dir;
mod stranded;
mod stress;
mod trixie_containerd;
mod trixie_docker;
mod trixie_podman;
mod warm_offers;
