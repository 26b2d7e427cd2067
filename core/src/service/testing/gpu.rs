//! [`FakeGpu`]: GPUs in memory, answering as NVML does on an H100 (profile table, placements,
//! GPU-instance ids, errors), and a record of every call made of them, like youki's recording
//! syscall double.

use crate::gpu::{BackendError, Created, Gpu, GpuInfo};
use crate::placement::GpuInstance;
use crate::placement::{Profile, Slot};
use nvml_wrapper::enum_wrappers::device::ComputeMode;
use nvml_wrapper::error::NvmlError;
use std::cell::{Cell, RefCell};

/// One call made of a [`FakeGpu`], with what it was asked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Call {
    Gpus,
    Profiles {
        gpu: u32,
    },
    GpuInstances {
        gpu: u32,
    },
    Create {
        gpu: u32,
        profile: String,
        slot: Slot,
    },
    MigUuid {
        gpu: u32,
        gi: u32,
        ci: u32,
    },
    Destroy {
        gpu: u32,
        gi: u32,
        cis: Vec<u32>,
    },
    ComputeMode {
        gpu: u32,
    },
    SetComputeMode {
        gpu: u32,
        mode: ComputeMode,
    },
    ComputePids {
        gpu: u32,
    },
    SetMigMode {
        gpu: u32,
        on: bool,
    },
}

struct Instance {
    gi: GpuInstance,
    /// (compute instance, its MIG UUID).
    migs: Vec<(u32, String)>,
}

struct Device {
    info: GpuInfo,
    profiles: Vec<Profile>,
    instances: Vec<Instance>,
    mode: ComputeMode,
    /// Processes holding a compute context.
    pids: Vec<u32>,
    /// A MIG mode change waits for a GPU reset (an A100's driver).
    mig_needs_reset: bool,
}

/// GPUs in memory; see the module docs. Not `Sync`: one test, one thread.
pub struct FakeGpu {
    devices: RefCell<Vec<Device>>,
    calls: RefCell<Vec<Call>>,
    /// Never reused, as the driver's MIG UUIDs are not.
    serial: Cell<u32>,
    /// Refuse the next create as NVML does when another manager took the placement first.
    refuse_create: Cell<bool>,
}

/// The H100 80GB's profile table as NVML reported it (the simulator's model file, which a
/// unit test holds equal to the recorded fixture).
pub fn h100_profiles() -> Vec<Profile> {
    crate::policy::model::profiles_from_json(include_str!("../../../../sim/models/h100-80gb.json"))
        .expect("the H100 model file parses")
}

/// The driver's GPU-instance id for a placement: a slot tree, ids 0..14, reused after a
/// destroy.
fn gi_id_for(slot: Slot) -> u32 {
    match (slot.size, slot.start) {
        (8, _) => 0,
        (4, 4) => 1,
        (4, _) => 2,
        (2, 4) => 3,
        (2, 6) => 4,
        (2, 0) => 5,
        (2, _) => 6,
        (_, start) => 7 + start,
    }
}

/// NVML_ERROR_INSUFFICIENT_RESOURCES, which nvml-wrapper has no variant for.
fn insufficient_resources() -> NvmlError {
    NvmlError::UnexpectedVariant(
        nvml_wrapper_sys::bindings::nvmlReturn_enum_NVML_ERROR_INSUFFICIENT_RESOURCES,
    )
}

fn err(call: &'static str, gpu: u32, source: NvmlError) -> BackendError {
    BackendError::Call { call, gpu, source }
}

impl FakeGpu {
    /// `n` H100 80GB HBM3 GPUs, MIG mode on, no instances, compute mode Default.
    pub fn h100(n: u32) -> FakeGpu {
        let devices = (0..n)
            .map(|index| Device {
                info: GpuInfo {
                    index,
                    uuid: format!("GPU-f00d0000-0000-4000-8000-{index:012x}"),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    minor: index,
                    memory_total: 85_520_809_984,
                    mig_mode: Some((true, true)),
                },
                profiles: h100_profiles(),
                instances: Vec::new(),
                mode: ComputeMode::Default,
                pids: Vec::new(),
                mig_needs_reset: false,
            })
            .collect();
        FakeGpu {
            devices: RefCell::new(devices),
            calls: RefCell::new(Vec::new()),
            serial: Cell::new(0),
            refuse_create: Cell::new(false),
        }
    }

    /// Turn MIG mode on or off (current and pending), as an operator's `nvidia-smi -mig`.
    pub fn set_mig(&self, gpu: u32, on: bool) {
        self.devices.borrow_mut()[gpu as usize].info.mig_mode = Some((on, on));
    }

    /// MIG mode changes on the GPU wait for a GPU reset from now on, as an A100's driver
    /// answers (NVML_ERROR_RESET_REQUIRED as the activation status).
    pub fn mig_needs_reset(&self, gpu: u32) {
        self.devices.borrow_mut()[gpu as usize].mig_needs_reset = true;
    }

    /// Processes that hold a compute context on the GPU, as NVML lists them.
    pub fn set_contexts(&self, gpu: u32, pids: &[u32]) {
        self.devices.borrow_mut()[gpu as usize].pids = pids.to_vec();
    }

    /// The compute mode the GPU is in, set behind gpushare's back (not recorded).
    pub fn put_mode(&self, gpu: u32, mode: ComputeMode) {
        self.devices.borrow_mut()[gpu as usize].mode = mode;
    }

    pub fn mode(&self, gpu: u32) -> ComputeMode {
        self.devices.borrow()[gpu as usize].mode
    }

    pub fn info(&self, gpu: u32) -> GpuInfo {
        self.devices.borrow()[gpu as usize].info.clone()
    }

    /// Make an instance of `profile` at `slot` behind gpushare's back (another manager, or
    /// gpushare before a crash): not recorded.
    pub fn make(&self, gpu: u32, profile: &str, slot: Slot) -> Created {
        self.made(gpu, profile, slot)
            .unwrap_or_else(|e| panic!("cannot make {profile} at {slot:?}: {e}"))
    }

    /// The driver loses GPU instance `gi` (an operator destroyed it): not recorded.
    pub fn vanish(&self, gpu: u32, gi: u32) {
        self.devices.borrow_mut()[gpu as usize]
            .instances
            .retain(|i| i.gi.id != gi);
    }

    /// What the driver has on the GPU now.
    pub fn instances(&self, gpu: u32) -> Vec<GpuInstance> {
        self.devices.borrow()[gpu as usize]
            .instances
            .iter()
            .map(|i| i.gi.clone())
            .collect()
    }

    /// Whether the driver has compute instance `ci` of GPU instance `gi` (`ci` None: the GPU
    /// instance) on the GPU whose minor is `minor`: what its capability file says.
    pub fn has(&self, minor: u32, gi: u32, ci: Option<u32>) -> bool {
        self.devices.borrow().iter().any(|d| {
            d.info.minor == minor
                && d.instances.iter().any(|i| {
                    i.gi.id == gi && ci.is_none_or(|ci| i.gi.compute_instances.contains(&ci))
                })
        })
    }

    /// Refuse the next create (NVML: insufficient resources), as when another manager took
    /// the placement between gpushare's look and its create.
    pub fn refuse_next_create(&self) {
        self.refuse_create.set(true);
    }

    /// Every call made so far, in order.
    pub fn calls(&self) -> Vec<Call> {
        self.calls.borrow().clone()
    }

    /// The calls that change the GPU (create, destroy, set compute mode).
    pub fn changes(&self) -> Vec<Call> {
        self.calls
            .borrow()
            .iter()
            .filter(|c| {
                matches!(
                    c,
                    Call::Create { .. }
                        | Call::Destroy { .. }
                        | Call::SetComputeMode { .. }
                        | Call::SetMigMode { .. }
                )
            })
            .cloned()
            .collect()
    }

    pub fn clear_calls(&self) {
        self.calls.borrow_mut().clear();
    }

    fn record(&self, call: Call) {
        self.calls.borrow_mut().push(call);
    }

    fn with<T>(
        &self,
        gpu: u32,
        f: impl FnOnce(&mut Device) -> Result<T, BackendError>,
    ) -> Result<T, BackendError> {
        let mut devices = self.devices.borrow_mut();
        let d = devices
            .get_mut(gpu as usize)
            .ok_or_else(|| err("device_by_index", gpu, NvmlError::InvalidArg))?;
        f(d)
    }

    fn made(&self, gpu: u32, profile: &str, slot: Slot) -> Result<Created, BackendError> {
        let serial = self.serial.get() + 1;
        self.serial.set(serial);
        let create = "nvmlDeviceCreateGpuInstanceWithPlacement";
        self.with(gpu, |d| {
            let p = d
                .profiles
                .iter()
                .find(|p| p.name == profile)
                .ok_or_else(|| err(create, gpu, NvmlError::InvalidArg))?;
            if d.info.mig_mode != Some((true, true)) {
                return Err(err(create, gpu, NvmlError::NotSupported));
            }
            if !p.placements.contains(&slot) {
                return Err(err(create, gpu, NvmlError::InvalidArg));
            }
            let count = d
                .instances
                .iter()
                .filter(|i| i.gi.profile_id == p.id)
                .count() as u32;
            if count >= p.instance_count || d.instances.iter().any(|i| i.gi.slot.overlaps(&slot)) {
                return Err(err(create, gpu, insufficient_resources()));
            }
            let gi = gi_id_for(slot);
            let mig_uuid = format!("MIG-f00d{gpu:04x}-0000-4000-8000-{serial:012x}");
            d.instances.push(Instance {
                gi: GpuInstance {
                    id: gi,
                    profile_id: p.id,
                    slot,
                    compute_instances: vec![0],
                },
                migs: vec![(0, mig_uuid.clone())],
            });
            d.instances.sort_by_key(|i| i.gi.id);
            Ok(Created {
                gi,
                ci: 0,
                mig_uuid,
            })
        })
    }
}

impl Gpu for FakeGpu {
    fn gpus(&self) -> Result<Vec<GpuInfo>, BackendError> {
        self.record(Call::Gpus);
        Ok(self
            .devices
            .borrow()
            .iter()
            .map(|d| d.info.clone())
            .collect())
    }

    fn profiles(&self, gpu: u32) -> Result<Vec<Profile>, BackendError> {
        self.record(Call::Profiles { gpu });
        self.with(gpu, |d| Ok(d.profiles.clone()))
    }

    fn gpu_instances(
        &self,
        gpu: u32,
        profiles: &[Profile],
    ) -> Result<Vec<GpuInstance>, BackendError> {
        self.record(Call::GpuInstances { gpu });
        self.with(gpu, |d| {
            if d.info.mig_mode.is_none_or(|(current, _)| !current) {
                return Err(err(
                    "nvmlDeviceGetGpuInstances",
                    gpu,
                    NvmlError::NotSupported,
                ));
            }
            Ok(d.instances
                .iter()
                .filter(|i| profiles.iter().any(|p| p.id == i.gi.profile_id))
                .map(|i| i.gi.clone())
                .collect())
        })
    }

    fn create(&self, gpu: u32, profile: &Profile, slot: Slot) -> Result<Created, BackendError> {
        self.record(Call::Create {
            gpu,
            profile: profile.name.clone(),
            slot,
        });
        if self.refuse_create.replace(false) {
            return Err(err(
                "nvmlDeviceCreateGpuInstanceWithPlacement",
                gpu,
                insufficient_resources(),
            ));
        }
        self.made(gpu, &profile.name, slot)
    }

    fn mig_uuid(&self, gpu: u32, gi: u32, ci: u32) -> Result<String, BackendError> {
        self.record(Call::MigUuid { gpu, gi, ci });
        self.with(gpu, |d| {
            d.instances
                .iter()
                .filter(|i| i.gi.id == gi)
                .flat_map(|i| &i.migs)
                .find(|(c, _)| *c == ci)
                .map(|(_, u)| u.clone())
                .ok_or_else(|| {
                    err(
                        "nvmlDeviceGetMigDeviceHandleByIndex",
                        gpu,
                        NvmlError::NotFound,
                    )
                })
        })
    }

    fn destroy(&self, gpu: u32, gi: u32, cis: &[u32]) -> Result<(), BackendError> {
        self.record(Call::Destroy {
            gpu,
            gi,
            cis: cis.to_vec(),
        });
        self.with(gpu, |d| {
            let at = d
                .instances
                .iter()
                .position(|i| i.gi.id == gi)
                .ok_or_else(|| err("nvmlDeviceGetGpuInstanceById", gpu, NvmlError::NotFound))?;
            let i = &mut d.instances[at];
            i.gi.compute_instances.retain(|c| !cis.contains(c));
            i.migs.retain(|(c, _)| !cis.contains(c));
            // NVML refuses to destroy a GPU instance that still has compute instances.
            if !i.gi.compute_instances.is_empty() {
                return Err(err("nvmlGpuInstanceDestroy", gpu, NvmlError::InUse));
            }
            d.instances.remove(at);
            Ok(())
        })
    }

    fn compute_mode(&self, gpu: u32) -> Result<Option<ComputeMode>, BackendError> {
        self.record(Call::ComputeMode { gpu });
        // A MIG-enabled GPU's own handle has no compute mode (NVML: not supported).
        self.with(gpu, |d| {
            Ok((d.info.mig_mode.is_none_or(|(current, _)| !current)).then_some(d.mode))
        })
    }

    fn set_compute_mode(&self, gpu: u32, mode: ComputeMode) -> Result<(), BackendError> {
        self.record(Call::SetComputeMode { gpu, mode });
        self.with(gpu, |d| {
            if d.info.mig_mode.is_some_and(|(current, _)| current) {
                return Err(err(
                    "nvmlDeviceSetComputeMode",
                    gpu,
                    NvmlError::NotSupported,
                ));
            }
            d.mode = mode;
            Ok(())
        })
    }

    fn compute_pids(&self, gpu: u32) -> Result<Vec<u32>, BackendError> {
        self.record(Call::ComputePids { gpu });
        self.with(gpu, |d| Ok(d.pids.clone()))
    }

    /// As the simulator's driver: refused (IN_USE) while GPU instances exist, or while a
    /// process holds the GPU on a GPU that switches at once; pending on one that needs a reset.
    fn set_mig_mode(&self, gpu: u32, on: bool) -> Result<bool, BackendError> {
        self.record(Call::SetMigMode { gpu, on });
        let call = "nvmlDeviceSetMigMode";
        self.with(gpu, |d| {
            let Some((current, _)) = d.info.mig_mode else {
                return Err(err(call, gpu, NvmlError::NotSupported));
            };
            if !d.instances.is_empty() || (!d.mig_needs_reset && !d.pids.is_empty()) {
                return Err(err(call, gpu, NvmlError::InUse));
            }
            if d.mig_needs_reset {
                d.info.mig_mode = Some((current, on));
                return Ok(current == on);
            }
            d.info.mig_mode = Some((on, on));
            Ok(true)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::Node;
    use crate::testing::FakeNode;

    fn slot(start: u32, size: u32) -> Slot {
        Slot { start, size }
    }

    #[test]
    fn the_double_answers_as_the_recorded_h100() {
        let gpu = FakeGpu::h100(1);
        let profiles = gpu.profiles(0).unwrap();
        let shape = |ps: &[Profile]| -> Vec<(String, u32, u32, u32, u32, Vec<Slot>)> {
            ps.iter()
                .map(|p| {
                    let (n, i, x, s, c) = (
                        p.name.clone(),
                        p.id,
                        p.index,
                        p.slice_count,
                        p.instance_count,
                    );
                    (n, i, x, s, c, p.placements.clone())
                })
                .collect()
        };
        assert_eq!(shape(&profiles), shape(&crate::placement::tests::h100()));
        let one = profiles.iter().find(|p| p.name == "1g.10gb").unwrap();
        assert_eq!((one.memory_mb, one.multiprocessors), (9984, 16));

        // The driver's slot-tree ids: 1g slices are GPU instances 7..13.
        let ids: Vec<u32> = (0..7)
            .map(|s| gpu.create(0, one, slot(s, 1)).unwrap().gi)
            .collect();
        assert_eq!(ids, (7..14).collect::<Vec<_>>());
        let full = |e: BackendError| {
            matches!(e, BackendError::Call { call: "nvmlDeviceCreateGpuInstanceWithPlacement", source, .. }
                if source.to_string() == insufficient_resources().to_string())
        };
        let seven = profiles.iter().find(|p| p.name == "7g.80gb").unwrap();
        assert!(full(gpu.create(0, seven, slot(0, 8)).unwrap_err()));
        // NVML refuses a GPU instance's destroy while it has compute instances.
        assert!(matches!(
            gpu.destroy(0, 7, &[]),
            Err(BackendError::Call {
                call: "nvmlGpuInstanceDestroy",
                source: NvmlError::InUse,
                ..
            })
        ));
        gpu.destroy(0, 7, &[0]).unwrap();
        assert_eq!(
            gpu.create(0, one, slot(0, 1)).unwrap().gi,
            7,
            "ids come back"
        );
        let uuids: std::collections::BTreeSet<String> =
            (7..14).map(|gi| gpu.mig_uuid(0, gi, 0).unwrap()).collect();
        assert_eq!(uuids.len(), 7, "MIG UUIDs never come back");

        // The recorded mig-minors: gpu0/gi1/access 12, gpu0/gi1/ci0/access 13, and the last
        // line gpu31/gi14/ci7/access 4322.
        let node = FakeNode::new(&gpu);
        assert_eq!(node.cap_minors(0, 1, 0).unwrap(), (12, 13));
        assert_eq!(node.cap_minors(31, 14, 7).unwrap().1, 4322);
        assert!(node.has_instance(0, 8, Some(0)) && !node.has_instance(0, 8, Some(1)));
        assert!(!node.has_instance(0, 0, None));
        // A MIG-enabled GPU has no compute mode of its own.
        assert_eq!(gpu.compute_mode(0).unwrap(), None);
    }
}
