//! gpushare as a Kubernetes DRA driver (issue 20; docs/kubernetes.md): the kubelet plugin that
//! prepares claims through the core allocator, the CDI specs it hands the container runtime, and
//! the ResourceSlices that tell the scheduler what this node can still grant.
//!
//! The kubelet plugin, lowest first: [`proto`] (the kubelet's gRPC services, generated from
//! proto/), [`sockets`] (where the kubelet finds the plugin), [`claims`] (a claim's allocation:
//! the API server, or JSON files in tests), [`devices`] (what a published device name is granted
//! as), [`cdi`] (the one writer of CDI specs), [`node`] (prepare, unprepare and the repair at
//! start) and [`server`] (the gRPC services over unix sockets). What the node publishes:
//! [`slices`] (its ResourceSlices and the DeviceClasses) and [`publish`] (where they go).

pub mod cdi;
pub mod claims;
pub mod devices;
pub mod node;
pub mod proto;
pub mod publish;
pub mod republish;
pub mod server;
pub mod slices;
pub mod sockets;

/// The DRA driver name: the kubelet's plugin name, every allocation result's `driver`, the
/// DeviceClasses' selector.
pub const DRIVER: &str = "gpu.gpushare.dev";
