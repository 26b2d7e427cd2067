//! gpushare as a Kubernetes DRA driver (issue 20; docs/kubernetes.md): the kubelet plugin that
//! prepares claims through the core allocator, the CDI specs it hands the container runtime, and
//! the ResourceSlices that tell the scheduler what this node can still grant.

pub mod publish;
pub mod slices;
