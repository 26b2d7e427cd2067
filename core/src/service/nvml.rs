//! The NVML backend: opened only on cold paths (creating or destroying an instance, `status`,
//! `gc`). The MIG calls nvml-wrapper does not wrap safely are made through its symbol table
//! with `nvml_sym`/`nvml_try`, so a driver lacking a symbol fails that call, not the process.
//!
//! [`Backend`] is the production [`Gpu`]; [`OnDemand`] is the one the services get, which
//! opens NVML at its first call, so a path that asks the GPU nothing never loads NVML.

use crate::config::Config;
use crate::gpu::Gpu;
pub use crate::gpu::{occupancy, BackendError, Created, GpuInfo};
use crate::placement::{GpuInstance, Profile, Slot};
use nvml_wrapper::enum_wrappers::device::ComputeMode;
use nvml_wrapper::error::{nvml_sym, nvml_try, NvmlError};
use nvml_wrapper::Nvml;
use nvml_wrapper_sys::bindings as sys;
use std::ffi::CStr;
use std::mem::{size_of, MaybeUninit};

pub struct Backend {
    nvml: Nvml,
}

fn version<T>(v: u32) -> u32 {
    size_of::<T>() as u32 | (v << 24)
}

impl Backend {
    pub fn open(cfg: &Config) -> Result<Backend, BackendError> {
        let lib = cfg.nvml_library.as_os_str();
        let nvml = Nvml::builder()
            .lib_path(lib)
            .init()
            .map_err(|source| BackendError::Open {
                lib: lib.to_string_lossy().into(),
                source,
            })?;
        Ok(Backend { nvml })
    }

    pub fn driver_version(&self) -> Option<String> {
        self.nvml.sys_driver_version().ok()
    }

    fn call(call: &'static str, gpu: u32) -> impl Fn(NvmlError) -> BackendError {
        move |source| BackendError::Call { call, gpu, source }
    }

    fn handle(&self, gpu: u32) -> Result<sys::nvmlDevice_t, BackendError> {
        let dev = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        // SAFETY: the handle stays valid while NVML is initialised, i.e. while `self` lives.
        Ok(unsafe { dev.handle() })
    }

    pub fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        let count = self
            .nvml
            .device_count()
            .map_err(Self::call("device_count", 0))?;
        (0..count)
            .map(|i| {
                let d = self
                    .nvml
                    .device_by_index(i)
                    .map_err(Self::call("device_by_index", i))?;
                let mig_mode = match d.mig_mode() {
                    Ok(m) => Some((m.current == 1, m.pending == 1)),
                    Err(NvmlError::NotSupported) => None,
                    Err(e) => return Err(Self::call("mig_mode", i)(e)),
                };
                Ok(GpuInfo {
                    index: i,
                    uuid: d.uuid().map_err(Self::call("uuid", i))?,
                    name: d.name().map_err(Self::call("name", i))?,
                    minor: d.minor_number().map_err(Self::call("minor_number", i))?,
                    memory_total: d.memory_info().map(|m| m.total).unwrap_or(0),
                    mig_mode,
                })
            })
            .collect()
    }

    /// The GPU's MIG profile table (empty for a GPU without MIG).
    pub fn profiles(&self, gpu: u32) -> Result<Vec<Profile>, BackendError> {
        let h = self.handle(gpu)?;
        let lib = self.nvml.lib();
        let info_v = nvml_sym(lib.nvmlDeviceGetGpuInstanceProfileInfoV.as_ref())
            .map_err(Self::call("nvmlDeviceGetGpuInstanceProfileInfoV", gpu))?;
        let placements_v2 =
            nvml_sym(lib.nvmlDeviceGetGpuInstancePossiblePlacements_v2.as_ref()).map_err(
                Self::call("nvmlDeviceGetGpuInstancePossiblePlacements_v2", gpu),
            )?;
        let mut out = Vec::new();
        for index in 0..sys::NVML_GPU_INSTANCE_PROFILE_COUNT {
            // SAFETY: all-zero is a valid value of this plain C struct.
            let mut info: sys::nvmlGpuInstanceProfileInfo_v2_t =
                unsafe { MaybeUninit::zeroed().assume_init() };
            info.version = version::<sys::nvmlGpuInstanceProfileInfo_v2_t>(2);
            // SAFETY: valid handle and out-pointer to a correctly versioned struct.
            match nvml_try(unsafe { info_v(h, index, &mut info) }) {
                Ok(()) => {}
                Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(Self::call("nvmlDeviceGetGpuInstanceProfileInfoV", gpu)(e)),
            }
            let mut buf = vec![sys::nvmlGpuInstancePlacement_t { start: 0, size: 0 }; 16];
            let mut count = buf.len() as u32;
            // SAFETY: buf holds `count` placements.
            nvml_try(unsafe { placements_v2(h, info.id, buf.as_mut_ptr(), &mut count) }).map_err(
                Self::call("nvmlDeviceGetGpuInstancePossiblePlacements_v2", gpu),
            )?;
            buf.truncate(count as usize);
            // SAFETY: NVML writes a NUL-terminated name into the fixed array.
            let name = unsafe { CStr::from_ptr(info.name.as_ptr()) }.to_string_lossy();
            out.push(Profile {
                name: name.strip_prefix("MIG ").unwrap_or(&name).to_string(),
                id: info.id,
                index,
                slice_count: info.sliceCount,
                instance_count: info.instanceCount,
                memory_mb: info.memorySizeMB,
                multiprocessors: info.multiprocessorCount,
                placements: buf
                    .iter()
                    .map(|p| Slot {
                        start: p.start,
                        size: p.size,
                    })
                    .collect(),
            });
        }
        Ok(out)
    }

    /// Every GPU instance on the GPU, of every profile, whoever made it.
    pub fn gpu_instances(
        &self,
        gpu: u32,
        profiles: &[Profile],
    ) -> Result<Vec<GpuInstance>, BackendError> {
        let h = self.handle(gpu)?;
        let lib = self.nvml.lib();
        let list = nvml_sym(lib.nvmlDeviceGetGpuInstances.as_ref())
            .map_err(Self::call("nvmlDeviceGetGpuInstances", gpu))?;
        let gi_info = nvml_sym(lib.nvmlGpuInstanceGetInfo.as_ref())
            .map_err(Self::call("nvmlGpuInstanceGetInfo", gpu))?;
        let mut out = Vec::new();
        for p in profiles {
            let mut handles: Vec<sys::nvmlGpuInstance_t> = vec![std::ptr::null_mut(); 8];
            let mut count = 0u32;
            // SAFETY: handles has room for 8 instances, the most any profile allows.
            nvml_try(unsafe { list(h, p.id, handles.as_mut_ptr(), &mut count) })
                .map_err(Self::call("nvmlDeviceGetGpuInstances", gpu))?;
            for &gi in &handles[..count as usize] {
                // SAFETY: zeroed plain C struct; gi is a handle NVML just gave us.
                let mut info: sys::nvmlGpuInstanceInfo_t =
                    unsafe { MaybeUninit::zeroed().assume_init() };
                nvml_try(unsafe { gi_info(gi, &mut info) })
                    .map_err(Self::call("nvmlGpuInstanceGetInfo", gpu))?;
                out.push(GpuInstance {
                    id: info.id,
                    profile_id: info.profileId,
                    slot: Slot {
                        start: info.placement.start,
                        size: info.placement.size,
                    },
                    compute_instances: self.compute_instances(gpu, gi)?,
                });
            }
        }
        Ok(out)
    }

    fn compute_instances(
        &self,
        gpu: u32,
        gi: sys::nvmlGpuInstance_t,
    ) -> Result<Vec<u32>, BackendError> {
        let lib = self.nvml.lib();
        let list = nvml_sym(lib.nvmlGpuInstanceGetComputeInstances.as_ref())
            .map_err(Self::call("nvmlGpuInstanceGetComputeInstances", gpu))?;
        let ci_info = nvml_sym(lib.nvmlComputeInstanceGetInfo_v2.as_ref())
            .map_err(Self::call("nvmlComputeInstanceGetInfo_v2", gpu))?;
        let mut ids = Vec::new();
        for profile in 0..sys::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
            let mut handles: Vec<sys::nvmlComputeInstance_t> = vec![std::ptr::null_mut(); 8];
            let mut count = 0u32;
            // SAFETY: room for 8 compute instances, the most a GPU instance holds.
            match nvml_try(unsafe { list(gi, profile, handles.as_mut_ptr(), &mut count) }) {
                Ok(()) => {}
                Err(NvmlError::NotSupported) | Err(NvmlError::InvalidArg) => continue,
                Err(e) => return Err(Self::call("nvmlGpuInstanceGetComputeInstances", gpu)(e)),
            }
            for &ci in &handles[..count as usize] {
                // SAFETY: zeroed plain C struct; ci is a handle NVML just gave us.
                let mut info: sys::nvmlComputeInstanceInfo_t =
                    unsafe { MaybeUninit::zeroed().assume_init() };
                nvml_try(unsafe { ci_info(ci, &mut info) })
                    .map_err(Self::call("nvmlComputeInstanceGetInfo_v2", gpu))?;
                ids.push(info.id);
            }
        }
        ids.sort_unstable();
        Ok(ids)
    }

    fn gpu_instance(&self, gpu: u32, gi: u32) -> Result<sys::nvmlGpuInstance_t, BackendError> {
        let h = self.handle(gpu)?;
        let by_id = nvml_sym(self.nvml.lib().nvmlDeviceGetGpuInstanceById.as_ref())
            .map_err(Self::call("nvmlDeviceGetGpuInstanceById", gpu))?;
        let mut out: sys::nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: valid device handle and out-pointer.
        nvml_try(unsafe { by_id(h, gi, &mut out) })
            .map_err(Self::call("nvmlDeviceGetGpuInstanceById", gpu))?;
        Ok(out)
    }

    /// Create a GPU instance of `profile` at `slot` and one compute instance spanning it.
    /// On failure nothing is left behind.
    pub fn create(&self, gpu: u32, profile: &Profile, slot: Slot) -> Result<Created, BackendError> {
        let h = self.handle(gpu)?;
        let lib = self.nvml.lib();
        let create_gi = nvml_sym(lib.nvmlDeviceCreateGpuInstanceWithPlacement.as_ref())
            .map_err(Self::call("nvmlDeviceCreateGpuInstanceWithPlacement", gpu))?;
        let gi_info = nvml_sym(lib.nvmlGpuInstanceGetInfo.as_ref())
            .map_err(Self::call("nvmlGpuInstanceGetInfo", gpu))?;
        let placement = sys::nvmlGpuInstancePlacement_t {
            start: slot.start,
            size: slot.size,
        };
        let mut gi: sys::nvmlGpuInstance_t = std::ptr::null_mut();
        // SAFETY: valid device handle, placement and out-pointer.
        nvml_try(unsafe { create_gi(h, profile.id, &placement, &mut gi) })
            .map_err(Self::call("nvmlDeviceCreateGpuInstanceWithPlacement", gpu))?;
        crate::failpoint!("nvml.create.gi_made");
        // SAFETY: zeroed plain C struct; gi was just created.
        let mut info: sys::nvmlGpuInstanceInfo_t = unsafe { MaybeUninit::zeroed().assume_init() };
        let gi_id = nvml_try(unsafe { gi_info(gi, &mut info) }).map(|_| info.id);
        let result = gi_id
            .map_err(Self::call("nvmlGpuInstanceGetInfo", gpu))
            .and_then(|gi_id| self.create_ci(gpu, gi, profile).map(|ci| (gi_id, ci)))
            .and_then(|(gi_id, ci)| {
                Ok(Created {
                    gi: gi_id,
                    ci,
                    mig_uuid: self.mig_uuid(gpu, gi_id, ci)?,
                })
            });
        if result.is_err() {
            if let Ok(destroy) = nvml_sym(lib.nvmlGpuInstanceDestroy.as_ref()) {
                // SAFETY: gi is valid; a CI made before the failure blocks this with IN_USE,
                // which only leaves what `gc` reclaims.
                let _ = unsafe { destroy(gi) };
            }
        }
        result
    }

    fn create_ci(
        &self,
        gpu: u32,
        gi: sys::nvmlGpuInstance_t,
        profile: &Profile,
    ) -> Result<u32, BackendError> {
        let lib = self.nvml.lib();
        let create = nvml_sym(lib.nvmlGpuInstanceCreateComputeInstance.as_ref())
            .map_err(Self::call("nvmlGpuInstanceCreateComputeInstance", gpu))?;
        let ci_info = nvml_sym(lib.nvmlComputeInstanceGetInfo_v2.as_ref())
            .map_err(Self::call("nvmlComputeInstanceGetInfo_v2", gpu))?;
        let ci_profile = full_compute_profile(profile.slice_count);
        let mut ci: sys::nvmlComputeInstance_t = std::ptr::null_mut();
        // SAFETY: valid GI handle and out-pointer.
        nvml_try(unsafe { create(gi, ci_profile, &mut ci) })
            .map_err(Self::call("nvmlGpuInstanceCreateComputeInstance", gpu))?;
        // SAFETY: zeroed plain C struct; ci was just created.
        let mut info: sys::nvmlComputeInstanceInfo_t =
            unsafe { MaybeUninit::zeroed().assume_init() };
        nvml_try(unsafe { ci_info(ci, &mut info) })
            .map_err(Self::call("nvmlComputeInstanceGetInfo_v2", gpu))?;
        Ok(info.id)
    }

    /// The `MIG-…` UUID of compute instance `ci` of GPU instance `gi`.
    pub fn mig_uuid(&self, gpu: u32, gi: u32, ci: u32) -> Result<String, BackendError> {
        let parent = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        let max = parent
            .mig_device_count()
            .map_err(Self::call("nvmlDeviceGetMaxMigDeviceCount", gpu))?;
        for i in 0..max {
            let Ok(mig) = parent.mig_device_by_index(i) else {
                continue;
            };
            let lib = self.nvml.lib();
            let (Ok(gi_id), Ok(ci_id)) = (
                nvml_sym(lib.nvmlDeviceGetGpuInstanceId.as_ref()),
                nvml_sym(lib.nvmlDeviceGetComputeInstanceId.as_ref()),
            ) else {
                continue;
            };
            let (mut g, mut c) = (0u32, 0u32);
            // SAFETY: valid MIG device handle and out-pointers.
            let ids = unsafe {
                (
                    nvml_try(gi_id(mig.handle(), &mut g)),
                    nvml_try(ci_id(mig.handle(), &mut c)),
                )
            };
            if let (Ok(()), Ok(())) = ids {
                if g == gi && c == ci {
                    return mig.uuid().map_err(Self::call("uuid", gpu));
                }
            }
        }
        Err(BackendError::Call {
            call: "nvmlDeviceGetMigDeviceHandleByIndex",
            gpu,
            source: NvmlError::NotFound,
        })
    }

    /// Destroy the compute instances `cis` of GPU instance `gi`, then `gi` (NVML's order).
    pub fn destroy(&self, gpu: u32, gi: u32, cis: &[u32]) -> Result<(), BackendError> {
        let lib = self.nvml.lib();
        let gi_h = self.gpu_instance(gpu, gi)?;
        let ci_by_id = nvml_sym(lib.nvmlGpuInstanceGetComputeInstanceById.as_ref())
            .map_err(Self::call("nvmlGpuInstanceGetComputeInstanceById", gpu))?;
        let destroy_ci = nvml_sym(lib.nvmlComputeInstanceDestroy.as_ref())
            .map_err(Self::call("nvmlComputeInstanceDestroy", gpu))?;
        let destroy_gi = nvml_sym(lib.nvmlGpuInstanceDestroy.as_ref())
            .map_err(Self::call("nvmlGpuInstanceDestroy", gpu))?;
        for &ci in cis {
            let mut ci_h: sys::nvmlComputeInstance_t = std::ptr::null_mut();
            // SAFETY: valid GI handle and out-pointer.
            match nvml_try(unsafe { ci_by_id(gi_h, ci, &mut ci_h) }) {
                // SAFETY: ci_h was just looked up.
                Ok(()) => nvml_try(unsafe { destroy_ci(ci_h) })
                    .map_err(Self::call("nvmlComputeInstanceDestroy", gpu))?,
                Err(NvmlError::NotFound) | Err(NvmlError::InvalidArg) => {}
                Err(e) => return Err(Self::call("nvmlGpuInstanceGetComputeInstanceById", gpu)(e)),
            }
        }
        crate::failpoint!("nvml.destroy.cis_gone");
        // SAFETY: gi_h is valid and its compute instances are gone.
        nvml_try(unsafe { destroy_gi(gi_h) }).map_err(Self::call("nvmlGpuInstanceDestroy", gpu))
    }
}

impl Backend {
    /// The GPU's compute mode; None where NVML answers NOT_SUPPORTED (a MIG-enabled GPU's own
    /// handle, a GPU without compute modes).
    pub fn compute_mode(&self, gpu: u32) -> Result<Option<ComputeMode>, BackendError> {
        let d = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        match d.compute_mode() {
            Ok(m) => Ok(Some(m)),
            Err(NvmlError::NotSupported) => Ok(None),
            Err(e) => Err(Self::call("nvmlDeviceGetComputeMode", gpu)(e)),
        }
    }

    pub fn set_compute_mode(&self, gpu: u32, mode: ComputeMode) -> Result<(), BackendError> {
        let mut d = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        d.set_compute_mode(mode)
            .map_err(Self::call("nvmlDeviceSetComputeMode", gpu))
    }

    /// Pids of the processes holding a compute context on the GPU (or on its MIG devices).
    pub fn compute_pids(&self, gpu: u32) -> Result<Vec<u32>, BackendError> {
        let d = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        let procs = d
            .running_compute_processes()
            .map_err(Self::call("nvmlDeviceGetComputeRunningProcesses_v3", gpu))?;
        Ok(procs.into_iter().map(|p| p.pid).collect())
    }

    /// `nvmlDeviceSetMigMode`; true when the activation status is SUCCESS (the mode is current).
    pub fn set_mig_mode(&self, gpu: u32, on: bool) -> Result<bool, BackendError> {
        let d = self
            .nvml
            .device_by_index(gpu)
            .map_err(Self::call("device_by_index", gpu))?;
        let status = d
            .set_mig_mode(on)
            .map_err(Self::call("nvmlDeviceSetMigMode", gpu))?;
        Ok(status == sys::nvmlReturn_enum_NVML_SUCCESS)
    }
}

/// The compute-instance profile index that spans a GPU instance of `slices` compute slices.
pub fn full_compute_profile(slices: u32) -> u32 {
    match slices {
        1 => sys::NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
        2 => sys::NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
        3 => sys::NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
        4 => sys::NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
        6 => sys::NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE,
        8 => sys::NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE,
        _ => sys::NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE,
    }
}

impl Gpu for Backend {
    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        Backend::gpus(self)
    }
    fn profiles(&self, gpu: u32) -> Result<Vec<Profile>, BackendError> {
        Backend::profiles(self, gpu)
    }
    fn gpu_instances(
        &self,
        gpu: u32,
        profiles: &[Profile],
    ) -> Result<Vec<GpuInstance>, BackendError> {
        Backend::gpu_instances(self, gpu, profiles)
    }
    fn create(&self, gpu: u32, profile: &Profile, slot: Slot) -> Result<Created, BackendError> {
        Backend::create(self, gpu, profile, slot)
    }
    fn mig_uuid(&self, gpu: u32, gi: u32, ci: u32) -> Result<String, BackendError> {
        Backend::mig_uuid(self, gpu, gi, ci)
    }
    fn destroy(&self, gpu: u32, gi: u32, cis: &[u32]) -> Result<(), BackendError> {
        Backend::destroy(self, gpu, gi, cis)
    }
    fn compute_mode(&self, gpu: u32) -> Result<Option<ComputeMode>, BackendError> {
        Backend::compute_mode(self, gpu)
    }
    fn set_compute_mode(&self, gpu: u32, mode: ComputeMode) -> Result<(), BackendError> {
        Backend::set_compute_mode(self, gpu, mode)
    }
    fn compute_pids(&self, gpu: u32) -> Result<Vec<u32>, BackendError> {
        Backend::compute_pids(self, gpu)
    }
    fn set_mig_mode(&self, gpu: u32, on: bool) -> Result<bool, BackendError> {
        Backend::set_mig_mode(self, gpu, on)
    }
}

/// NVML opened at the first call and kept for the rest (loading it costs about 20 ms, measured
/// on an H200). A failure to open is that call's error, and the next call tries again.
pub struct OnDemand<'c> {
    cfg: &'c Config,
    be: std::cell::OnceCell<Backend>,
}

impl<'c> OnDemand<'c> {
    pub fn new(cfg: &'c Config) -> Self {
        OnDemand {
            cfg,
            be: std::cell::OnceCell::new(),
        }
    }

    fn be(&self) -> Result<&Backend, BackendError> {
        if let Some(be) = self.be.get() {
            return Ok(be);
        }
        let be = Backend::open(self.cfg)?;
        Ok(self.be.get_or_init(|| be))
    }
}

impl Gpu for OnDemand<'_> {
    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        self.be()?.gpus()
    }
    fn profiles(&self, gpu: u32) -> Result<Vec<Profile>, BackendError> {
        self.be()?.profiles(gpu)
    }
    fn gpu_instances(
        &self,
        gpu: u32,
        profiles: &[Profile],
    ) -> Result<Vec<GpuInstance>, BackendError> {
        self.be()?.gpu_instances(gpu, profiles)
    }
    fn create(&self, gpu: u32, profile: &Profile, slot: Slot) -> Result<Created, BackendError> {
        self.be()?.create(gpu, profile, slot)
    }
    fn mig_uuid(&self, gpu: u32, gi: u32, ci: u32) -> Result<String, BackendError> {
        self.be()?.mig_uuid(gpu, gi, ci)
    }
    fn destroy(&self, gpu: u32, gi: u32, cis: &[u32]) -> Result<(), BackendError> {
        self.be()?.destroy(gpu, gi, cis)
    }
    fn compute_mode(&self, gpu: u32) -> Result<Option<ComputeMode>, BackendError> {
        self.be()?.compute_mode(gpu)
    }
    fn set_compute_mode(&self, gpu: u32, mode: ComputeMode) -> Result<(), BackendError> {
        self.be()?.set_compute_mode(gpu, mode)
    }
    fn compute_pids(&self, gpu: u32) -> Result<Vec<u32>, BackendError> {
        self.be()?.compute_pids(gpu)
    }
    fn set_mig_mode(&self, gpu: u32, on: bool) -> Result<bool, BackendError> {
        self.be()?.set_mig_mode(gpu, on)
    }
}
