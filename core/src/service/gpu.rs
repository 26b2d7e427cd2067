//! What the services (allocator, gc, MPS, time-slicing) ask of the node's GPUs, as one trait:
//! NVML in production ([`crate::nvml`]), an in-memory double in unit tests
//! (`crate::testing::FakeGpu`).
//!
//! The services take `&dyn Gpu` rather than a type parameter: every call behind it is an NVML
//! call (an ioctl into the driver, milliseconds on a cold path), so an indirect call costs
//! nothing measurable, and each service is compiled once instead of once per implementation.

use crate::placement::{GpuInstance, Profile, Slot};
use nvml_wrapper::enum_wrappers::device::ComputeMode;
use nvml_wrapper::error::NvmlError;

#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    #[error("cannot load NVML from {lib}: {source} (set nvml_library in the gpushare config)")]
    Open { lib: String, source: NvmlError },
    #[error("NVML {call} failed on GPU {gpu}: {source}")]
    Call {
        call: &'static str,
        gpu: u32,
        source: NvmlError,
    },
}

/// What gpushare needs to know of one physical GPU.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GpuInfo {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub minor: u32,
    pub memory_total: u64,
    /// (current, pending) MIG mode; None where the GPU has no MIG at all.
    pub mig_mode: Option<(bool, bool)>,
}

/// A MIG slice just made: GI + one compute instance spanning it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Created {
    pub gi: u32,
    pub ci: u32,
    pub mig_uuid: String,
}

/// The node's GPUs, addressed by NVML index. Errors name the NVML call that failed: the
/// allocator tells "nothing was made" from "something may be left" by it.
pub trait Gpu {
    /// Every GPU, in index order.
    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError>;
    /// The GPU's MIG profile table (empty for a GPU without MIG).
    fn profiles(&self, gpu: u32) -> Result<Vec<Profile>, BackendError>;
    /// Every GPU instance on the GPU of one of `profiles`, whoever made it.
    fn gpu_instances(
        &self,
        gpu: u32,
        profiles: &[Profile],
    ) -> Result<Vec<GpuInstance>, BackendError>;
    /// Create a GPU instance of `profile` at `slot` and one compute instance spanning it. On
    /// failure nothing is left behind, or only what `gc` reclaims.
    fn create(&self, gpu: u32, profile: &Profile, slot: Slot) -> Result<Created, BackendError>;
    /// The `MIG-…` UUID of compute instance `ci` of GPU instance `gi`.
    fn mig_uuid(&self, gpu: u32, gi: u32, ci: u32) -> Result<String, BackendError>;
    /// Destroy the compute instances `cis` of GPU instance `gi`, then `gi` (NVML's order).
    fn destroy(&self, gpu: u32, gi: u32, cis: &[u32]) -> Result<(), BackendError>;
    /// The GPU's compute mode; None where it has none (NVML: not supported).
    fn compute_mode(&self, gpu: u32) -> Result<Option<ComputeMode>, BackendError>;
    fn set_compute_mode(&self, gpu: u32, mode: ComputeMode) -> Result<(), BackendError>;
    /// Pids of the processes holding a compute context on the GPU (or on its MIG devices).
    fn compute_pids(&self, gpu: u32) -> Result<Vec<u32>, BackendError>;
    /// Ask for MIG mode `on` (`nvmlDeviceSetMigMode`). Ok(true): the mode is current now;
    /// Ok(false): the driver took the change but holds it pending until a GPU reset (Ampere,
    /// or a GPU some client holds).
    fn set_mig_mode(&self, gpu: u32, on: bool) -> Result<bool, BackendError>;
}

/// Occupancy of a GPU as the placement rule needs it.
pub fn occupancy(instances: &[GpuInstance]) -> Vec<crate::placement::Occupied> {
    instances
        .iter()
        .map(|g| crate::placement::Occupied {
            profile_id: g.profile_id,
            slot: g.slot,
        })
        .collect()
}
