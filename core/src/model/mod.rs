//! What things are: the config, a container's request, the ledger's data and its counters,
//! MIG placement and the placement policy, OCI spec edits. No NVML, no driver files, no other
//! process: what the services read and write, and the rules that hold of it.

pub mod config;
pub mod dra_devices;
pub mod dra_name;
pub mod hook;
pub mod kube;
pub mod lease_marker;
pub mod ledger;
pub mod placement;
pub mod policy;
pub mod request;
pub mod spec;
pub mod stats;
