//! MIG rules, as real NVML applies them: profiles, placements, instance counts, remaining
//! capacity, GPU-instance ids, compute instances, destroy order and IN_USE.

use crate::error::{
    Ret, SimError, SimResult, INSUFFICIENT_RESOURCES, INVALID_ARGUMENT, IN_USE, NOT_FOUND,
    NOT_SUPPORTED, NO_PERMISSION, RESET_REQUIRED, SUCCESS,
};
use crate::models::{self, GiProfile, MigModeChange, Model, ProfileSlot, MEMORY_SLOTS};
use crate::state::{random_uuid, ComputeInstance, Gpu, GpuInstance, State};
use nvml_wrapper_sys::bindings as b;

/// Most MIG devices (compute instances) one GPU can hold: one per compute slice.
pub const MAX_MIG_DEVICES: u32 = 7;

pub fn model_of(gpu: &Gpu) -> SimResult<&'static Model> {
    models::model(&gpu.model)
        .ok_or_else(|| SimError::Io(format!("unknown GPU model {:?} in state", gpu.model)))
}

/// `nvmlDeviceGetGpuInstanceProfileInfo(V)`: by profile *index*.
pub fn gi_profile_by_index(model: &Model, index: u32) -> Result<&GiProfile, SimError> {
    if index >= b::NVML_GPU_INSTANCE_PROFILE_COUNT {
        return Err(INVALID_ARGUMENT.into());
    }
    match model.profiles.get(index as usize) {
        Some(ProfileSlot::Supported(p)) => Ok(p),
        Some(ProfileSlot::InvalidArgument) => Err(INVALID_ARGUMENT.into()),
        _ => Err(NOT_SUPPORTED.into()),
    }
}

/// Placements, remaining capacity and create: by profile *id*.
pub fn gi_profile_by_id(model: &Model, id: u32) -> Result<&GiProfile, SimError> {
    model.gi_profile_by_id(id).ok_or(INVALID_ARGUMENT.into())
}

/// GPU-instance id of a placement: a slot tree, as the driver numbers them (ids 0..14). Ids come
/// back after a destroy, as on real hardware.
pub fn gi_id_for(start: u32, size: u32) -> u32 {
    match size {
        8 => 0,
        4 => {
            if start == 4 {
                1
            } else {
                2
            }
        }
        2 => match start {
            4 => 3,
            6 => 4,
            0 => 5,
            _ => 6,
        },
        _ => 7 + start,
    }
}

fn overlaps(a: (u32, u32), b: (u32, u32)) -> bool {
    a.0 < b.0 + b.1 && b.0 < a.0 + a.1
}

/// Placements of `profile` that overlap no existing GPU instance.
pub fn free_gi_placements(gpu: &Gpu, profile: &GiProfile) -> Vec<(u32, u32)> {
    profile
        .placements
        .iter()
        .copied()
        .filter(|&p| {
            !gpu.gpu_instances
                .iter()
                .any(|gi| overlaps(p, (gi.start, gi.size)))
        })
        .collect()
}

/// How many more instances of `profile` could be created now: mutually non-overlapping free
/// placements (a profile's placements are aligned to their size, so they never overlap one
/// another), capped by the profile's instance count minus those that exist.
pub fn gi_remaining(gpu: &Gpu, profile: &GiProfile) -> u32 {
    let existing = gpu
        .gpu_instances
        .iter()
        .filter(|gi| gi.profile_id == profile.id)
        .count() as u32;
    let free = free_gi_placements(gpu, profile).len() as u32;
    free.min(profile.instance_count.saturating_sub(existing))
}

fn gpu_mut(state: &mut State, gpu: u32) -> SimResult<&mut Gpu> {
    state.gpu_mut(gpu).ok_or(INVALID_ARGUMENT.into())
}

/// `nvmlDeviceCreateGpuInstance(WithPlacement)`. Returns the new instance's id and serial.
pub fn create_gi(
    state: &mut State,
    gpu: u32,
    profile_id: u32,
    placement: Option<(u32, u32)>,
) -> SimResult<(u32, u64)> {
    let serial = state.next_serial;
    let g = gpu_mut(state, gpu)?;
    let model = model_of(g)?;
    let profile = gi_profile_by_id(model, profile_id)?;
    if !g.mig_enabled() {
        return Err(NOT_SUPPORTED.into());
    }
    if let Some(p) = placement {
        if !profile.placements.contains(&p) {
            return Err(INVALID_ARGUMENT.into());
        }
    }
    let existing = g
        .gpu_instances
        .iter()
        .filter(|gi| gi.profile_id == profile_id)
        .count() as u32;
    if existing >= profile.instance_count {
        return Err(INSUFFICIENT_RESOURCES.into());
    }
    let free = free_gi_placements(g, profile);
    let chosen = match placement {
        Some(p) if free.contains(&p) => p,
        Some(_) => return Err(INSUFFICIENT_RESOURCES.into()),
        // Deterministic: the first free placement in NVML's order.
        None => *free.first().ok_or(SimError::Nvml(INSUFFICIENT_RESOURCES))?,
    };
    debug_assert!(chosen.0 + chosen.1 <= MEMORY_SLOTS);
    let id = gi_id_for(chosen.0, chosen.1);
    g.gpu_instances.push(GpuInstance {
        id,
        profile_id,
        start: chosen.0,
        size: chosen.1,
        serial,
        compute_instances: Vec::new(),
    });
    g.gpu_instances.sort_by_key(|gi| gi.id);
    state.next_serial += 1;
    Ok((id, serial))
}

/// `nvmlGpuInstanceDestroy`: IN_USE while it has compute instances (or processes on them).
pub fn destroy_gi(state: &mut State, gpu: u32, gi_id: u32) -> SimResult<()> {
    let g = gpu_mut(state, gpu)?;
    let gi = g.gi(gi_id).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    if !gi.compute_instances.is_empty() {
        return Err(IN_USE.into());
    }
    g.gpu_instances.retain(|x| x.id != gi_id);
    Ok(())
}

/// A compute-instance profile of one GPU instance (`nvmlComputeInstanceProfileInfo_v2_t`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CiProfile {
    /// Profile index, which NVML also uses as the profile id.
    pub id: u32,
    pub slice_count: u32,
    pub instance_count: u32,
    pub multiprocessor_count: u32,
    pub shared_copy_engine_count: u32,
    pub shared_decoder_count: u32,
    pub shared_encoder_count: u32,
    pub shared_jpeg_count: u32,
    pub shared_ofa_count: u32,
    pub name: String,
    /// `(start, size)` in the GPU instance's compute slices.
    pub placements: Vec<(u32, u32)>,
}

/// Compute slices of each NVML_COMPUTE_INSTANCE_PROFILE_* index.
const CI_SLICES: [u32; b::NVML_COMPUTE_INSTANCE_PROFILE_COUNT as usize] = [1, 2, 3, 4, 7, 8, 6, 1];

/// The compute-instance profile index whose slice count is `slices` (the "full" one of a GPU
/// instance with that many slices).
pub fn ci_profile_index_for_slices(slices: u32) -> Option<u32> {
    CI_SLICES
        .iter()
        .position(|&s| s == slices)
        .map(|i| i as u32)
}

/// `nvmlGpuInstanceGetComputeInstanceProfileInfo(V)` for a GPU instance of `gip`.
///
/// A GPU instance with N compute slices offers the 1-, 2-, 3-, 4- and 7-slice profiles with
/// s <= N. Placements are aligned to the next power of two of s (a 3-slice CI of a 7-slice GI
/// sits at 0 or 4), which gives floor(N/s) instances for every N a model has (1, 2, 3, 4, 7).
/// SMs: the GPU instance's own count for the full profile, s x the model's 1-slice SM count
/// otherwise (exactly proportional on A100; on H100 a 1c.3g.40gb gets 16 of the 3g's 60, as
/// the real one does). Engines are shared with the whole GPU instance.
pub fn ci_profile(model: &Model, gip: &GiProfile, index: u32) -> Result<CiProfile, SimError> {
    if index >= b::NVML_COMPUTE_INSTANCE_PROFILE_COUNT {
        return Err(INVALID_ARGUMENT.into());
    }
    let s = CI_SLICES[index as usize];
    let n = gip.slice_count;
    if index > b::NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE || s > n {
        return Err(NOT_SUPPORTED.into());
    }
    let align = s.next_power_of_two();
    let placements: Vec<(u32, u32)> = (0..n)
        .step_by(align as usize)
        .filter(|start| start + s <= n)
        .map(|start| (start, s))
        .collect();
    let gi_name = gip.short_name();
    let (name, sms) = if s == n {
        (gip.name.clone(), gip.multiprocessor_count)
    } else {
        (format!("MIG {s}c.{gi_name}"), s * model.sms_per_slice())
    };
    Ok(CiProfile {
        id: index,
        slice_count: s,
        instance_count: placements.len() as u32,
        multiprocessor_count: sms,
        shared_copy_engine_count: gip.copy_engine_count,
        shared_decoder_count: gip.decoder_count,
        shared_encoder_count: gip.encoder_count,
        shared_jpeg_count: gip.jpeg_count,
        shared_ofa_count: gip.ofa_count,
        name,
        placements,
    })
}

/// The GPU-instance profile of an existing GPU instance.
pub fn gi_profile_of<'m>(model: &'m Model, gi: &GpuInstance) -> SimResult<&'m GiProfile> {
    gi_profile_by_id(model, gi.profile_id)
}

fn free_ci_placements(gi: &GpuInstance, p: &CiProfile) -> Vec<(u32, u32)> {
    p.placements
        .iter()
        .copied()
        .filter(|&pl| {
            !gi.compute_instances
                .iter()
                .any(|ci| overlaps(pl, (ci.start, ci.size)))
        })
        .collect()
}

/// `nvmlGpuInstanceGetComputeInstanceRemainingCapacity`.
pub fn ci_remaining(gi: &GpuInstance, p: &CiProfile) -> u32 {
    let existing = gi
        .compute_instances
        .iter()
        .filter(|ci| ci.profile_id == p.id)
        .count() as u32;
    (free_ci_placements(gi, p).len() as u32).min(p.instance_count.saturating_sub(existing))
}

/// `nvmlGpuInstanceCreateComputeInstance(WithPlacement)`. Returns the new id and serial.
pub fn create_ci(
    state: &mut State,
    gpu: u32,
    gi_id: u32,
    profile_id: u32,
    placement: Option<(u32, u32)>,
) -> SimResult<(u32, u64)> {
    let serial = state.next_serial;
    let uuid = format!("MIG-{}", random_uuid()?);
    let g = gpu_mut(state, gpu)?;
    let model = model_of(g)?;
    let gi = g.gi(gi_id).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    let p = ci_profile(model, gi_profile_of(model, gi)?, profile_id).map_err(|e| match e {
        // An unknown CI profile id is an invalid argument here, as for GPU instances.
        SimError::Nvml(NOT_SUPPORTED) => SimError::Nvml(INVALID_ARGUMENT),
        e => e,
    })?;
    if let Some(pl) = placement {
        if !p.placements.contains(&pl) {
            return Err(INVALID_ARGUMENT.into());
        }
    }
    if ci_remaining(gi, &p) == 0 {
        return Err(INSUFFICIENT_RESOURCES.into());
    }
    let free = free_ci_placements(gi, &p);
    let chosen = match placement {
        Some(pl) if free.contains(&pl) => pl,
        Some(_) => return Err(INSUFFICIENT_RESOURCES.into()),
        None => *free.first().ok_or(SimError::Nvml(INSUFFICIENT_RESOURCES))?,
    };
    let id = (0..)
        .find(|i| !gi.compute_instances.iter().any(|c| c.id == *i))
        .unwrap_or(0);
    let gi = g.gi_mut(gi_id).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    gi.compute_instances.push(ComputeInstance {
        id,
        profile_id,
        start: chosen.0,
        size: chosen.1,
        uuid,
        serial,
    });
    gi.compute_instances.sort_by_key(|c| c.id);
    state.next_serial += 1;
    Ok((id, serial))
}

/// `nvmlComputeInstanceDestroy`: IN_USE while a process holds it.
pub fn destroy_ci(state: &mut State, gpu: u32, gi_id: u32, ci_id: u32) -> SimResult<()> {
    let g = state.gpu(gpu).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    let gi = g.gi(gi_id).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    let ci = gi
        .compute_instances
        .iter()
        .find(|c| c.id == ci_id)
        .ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    if state.processes_on(&ci.uuid).next().is_some() {
        return Err(IN_USE.into());
    }
    let gi = gpu_mut(state, gpu)?
        .gi_mut(gi_id)
        .ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    gi.compute_instances.retain(|c| c.id != ci_id);
    Ok(())
}

/// Processes holding a context on the GPU itself or on any of its MIG devices.
pub fn processes_on_gpu(state: &State, gpu: &Gpu) -> usize {
    let mut uuids = vec![gpu.uuid.as_str()];
    uuids.extend(gpu.mig_devices().iter().map(|(_, ci)| ci.uuid.as_str()));
    state
        .processes
        .iter()
        .filter(|p| uuids.contains(&p.uuid.as_str()))
        .count()
}

/// Whether `nvmlDeviceGetComputeRunningProcesses` may list a physical GPU's processes: "In MIG
/// mode, if device handle is provided, the API returns aggregate information, only if the
/// caller has appropriate privileges" (NVML reference); taken as CAP_SYS_ADMIN, what the driver
/// asks of privileged callers, and NO_PERMISSION otherwise.
pub fn may_list_processes(gpu: &Gpu, admin: impl FnOnce() -> bool) -> SimResult<()> {
    if gpu.mig_enabled() && !admin() {
        return Err(NO_PERMISSION.into());
    }
    Ok(())
}

/// `nvmlDeviceSetMigMode`: returns the activation status NVML writes to `activationStatus`.
///
/// - GPU instances left: IN_USE, nothing changed (they must be destroyed first).
/// - A model that switches at once (Hopper and later): IN_USE while any process holds a context
///   on the GPU, nothing changed; otherwise the mode is current, SUCCESS.
/// - A model that needs a reset (Ampere): the call succeeds and the mode becomes *pending*;
///   the status says why it is not current: IN_USE while processes hold the GPU (the guide's
///   "pending enable state ... In use by another client"), RESET_REQUIRED otherwise (NVML's
///   answer where the driver does not reset the GPU itself). Asking for the current mode
///   cancels a pending change.
pub fn set_mig_mode(state: &mut State, gpu: u32, on: bool) -> SimResult<Ret> {
    let g = state.gpu(gpu).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    let change = model_of(g)?.mig_mode_change;
    let busy = processes_on_gpu(state, g) > 0;
    let mode = u32::from(on);
    if g.mig_current == mode && g.mig_pending == mode {
        return Ok(SUCCESS);
    }
    if !g.gpu_instances.is_empty() {
        return Err(IN_USE.into());
    }
    let g = gpu_mut(state, gpu)?;
    match change {
        MigModeChange::Immediate if busy => Err(IN_USE.into()),
        MigModeChange::Immediate => {
            g.mig_current = mode;
            g.mig_pending = mode;
            Ok(SUCCESS)
        }
        MigModeChange::Reset => {
            g.mig_pending = mode;
            Ok(if g.mig_current == mode {
                SUCCESS
            } else if busy {
                IN_USE
            } else {
                RESET_REQUIRED
            })
        }
    }
}

/// A GPU reset (`nvidia-smi -r`; NVML has no call for it): refused (IN_USE) while a process
/// holds the GPU; otherwise every GPU and compute instance is gone ("the created MIG devices are
/// not persistent ... if the GPU or system is reset", MIG User Guide) and a pending MIG mode
/// becomes current.
pub fn reset_gpu(state: &mut State, gpu: u32) -> SimResult<()> {
    let g = state.gpu(gpu).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    if processes_on_gpu(state, g) > 0 {
        return Err(IN_USE.into());
    }
    let g = gpu_mut(state, gpu)?;
    g.gpu_instances.clear();
    g.mig_current = g.mig_pending;
    Ok(())
}

/// Finds the MIG device `(gpu, gi, ci)` by its index among a GPU's MIG devices.
pub fn mig_device_by_index(gpu: &Gpu, index: u32) -> Result<(u32, u32), SimError> {
    if index >= MAX_MIG_DEVICES {
        return Err(INVALID_ARGUMENT.into());
    }
    gpu.mig_devices()
        .get(index as usize)
        .map(|(gi, ci)| (gi.id, ci.id))
        .ok_or(NOT_FOUND.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Process;

    fn code<T: std::fmt::Debug>(r: SimResult<T>) -> u32 {
        r.unwrap_err().code()
    }

    #[test]
    fn remaining_on_empty_gpu_equals_fixture() {
        for key in models::model_keys() {
            let st = State::one_gpu(key, false);
            let m = models::model(key).unwrap();
            for p in m.gi_profiles() {
                assert_eq!(
                    gi_remaining(&st.gpus[0], p),
                    p.remaining_empty,
                    "{key} {}",
                    p.name
                );
            }
        }
    }

    #[test]
    fn profile_index_errors() {
        let m = models::model("h100-80gb").unwrap();
        assert_eq!(gi_profile_by_index(m, 0).unwrap().id, 19);
        for i in [5, 6, 8, 10, 16] {
            assert_eq!(gi_profile_by_index(m, i).unwrap_err().code(), NOT_SUPPORTED);
        }
        assert_eq!(
            gi_profile_by_index(m, 17).unwrap_err().code(),
            INVALID_ARGUMENT
        );
        assert_eq!(gi_profile_by_id(m, 1).unwrap_err().code(), INVALID_ARGUMENT);
    }

    #[test]
    fn create_needs_mig_mode() {
        let mut st = State::one_gpu("h100-80gb", false);
        assert_eq!(code(create_gi(&mut st, 0, 19, None)), NOT_SUPPORTED);
    }

    #[test]
    fn ids_follow_the_slot_tree() {
        let mut st = State::one_gpu("h100-80gb", true);
        for s in 0..7 {
            assert_eq!(create_gi(&mut st, 0, 19, Some((s, 1))).unwrap().0, 7 + s);
        }
        assert_eq!(
            code(create_gi(&mut st, 0, 19, None)),
            INSUFFICIENT_RESOURCES
        );
        let mut st = State::one_gpu("h100-80gb", true);
        assert_eq!(create_gi(&mut st, 0, 9, Some((4, 4))).unwrap().0, 1);
        assert_eq!(create_gi(&mut st, 0, 9, None).unwrap().0, 2);
        let mut st = State::one_gpu("h100-80gb", true);
        let ids: Vec<u32> = [4, 6, 0, 2]
            .iter()
            .map(|&s| create_gi(&mut st, 0, 15, Some((s, 2))).unwrap().0)
            .collect();
        assert_eq!(ids, [3, 4, 5, 6]);
        let mut st = State::one_gpu("h100-80gb", true);
        assert_eq!(create_gi(&mut st, 0, 0, None).unwrap().0, 0);
    }

    #[test]
    fn placement_rules() {
        let mut st = State::one_gpu("h100-80gb", true);
        // Not a placement of 2g.20gb.
        assert_eq!(
            code(create_gi(&mut st, 0, 14, Some((6, 2)))),
            INVALID_ARGUMENT
        );
        assert_eq!(
            code(create_gi(&mut st, 0, 14, Some((1, 2)))),
            INVALID_ARGUMENT
        );
        create_gi(&mut st, 0, 14, Some((0, 2))).unwrap();
        // The very same instance again, and an overlapping one.
        assert_eq!(
            code(create_gi(&mut st, 0, 14, Some((0, 2)))),
            INSUFFICIENT_RESOURCES
        );
        assert_eq!(
            code(create_gi(&mut st, 0, 19, Some((1, 1)))),
            INSUFFICIENT_RESOURCES
        );
        assert_eq!(code(create_gi(&mut st, 0, 0, None)), INSUFFICIENT_RESOURCES);
        let m = models::model("h100-80gb").unwrap();
        let g = &st.gpus[0];
        assert_eq!(gi_remaining(g, m.gi_profile_by_id(19).unwrap()), 5);
        assert_eq!(gi_remaining(g, m.gi_profile_by_id(9).unwrap()), 1);
        assert_eq!(gi_remaining(g, m.gi_profile_by_id(5).unwrap()), 0);
        assert_eq!(gi_remaining(g, m.gi_profile_by_id(0).unwrap()), 0);
        // The +me profile: only one.
        create_gi(&mut st, 0, 20, None).unwrap();
        assert_eq!(
            gi_remaining(&st.gpus[0], m.gi_profile_by_id(20).unwrap()),
            0
        );
        assert_eq!(
            code(create_gi(&mut st, 0, 20, None)),
            INSUFFICIENT_RESOURCES
        );
    }

    #[test]
    fn ids_are_reused_serials_are_not() {
        let mut st = State::one_gpu("h100-80gb", true);
        let (id, s1) = create_gi(&mut st, 0, 19, Some((3, 1))).unwrap();
        destroy_gi(&mut st, 0, id).unwrap();
        let (id2, s2) = create_gi(&mut st, 0, 19, Some((3, 1))).unwrap();
        assert_eq!(id, id2);
        assert_ne!(s1, s2);
    }

    #[test]
    fn ci_profiles_of_a_3g() {
        let m = models::model("h100-80gb").unwrap();
        let gip = m.gi_profile_by_id(9).unwrap();
        let p0 = ci_profile(m, gip, 0).unwrap();
        assert_eq!((p0.instance_count, p0.multiprocessor_count), (3, 16));
        assert_eq!(p0.name, "MIG 1c.3g.40gb");
        assert_eq!(ci_profile(m, gip, 1).unwrap().instance_count, 1);
        let full = ci_profile(m, gip, 2).unwrap();
        assert_eq!(
            (full.name.as_str(), full.multiprocessor_count),
            ("MIG 3g.40gb", 60)
        );
        assert_eq!(ci_profile(m, gip, 3).unwrap_err().code(), NOT_SUPPORTED);
        assert_eq!(ci_profile(m, gip, 4).unwrap_err().code(), NOT_SUPPORTED);
        assert_eq!(ci_profile(m, gip, 8).unwrap_err().code(), INVALID_ARGUMENT);
        // A 7g: floor(7/s) of each.
        let g7 = m.gi_profile_by_id(0).unwrap();
        let counts: Vec<u32> = (0..5)
            .map(|i| ci_profile(m, g7, i).unwrap().instance_count)
            .collect();
        assert_eq!(counts, [7, 3, 2, 1, 1]);
    }

    #[test]
    fn compute_instances_and_destroy_order() {
        let mut st = State::one_gpu("h100-80gb", true);
        let (gi, _) = create_gi(&mut st, 0, 9, None).unwrap();
        let (c0, _) = create_ci(&mut st, 0, gi, 0, None).unwrap();
        let (c1, _) = create_ci(&mut st, 0, gi, 0, None).unwrap();
        assert_eq!((c0, c1), (0, 1));
        // 2 slices left but not aligned for a 2-slice CI? 1c at 0 and 1: the 2c placement (0,2)
        // is taken.
        assert_eq!(
            code(create_ci(&mut st, 0, gi, 1, None)),
            INSUFFICIENT_RESOURCES
        );
        assert_eq!(
            code(create_ci(&mut st, 0, gi, 2, None)),
            INSUFFICIENT_RESOURCES
        );
        assert_eq!(code(destroy_gi(&mut st, 0, gi)), IN_USE);
        let uuid = st.gpus[0].gi(gi).unwrap().compute_instances[0].uuid.clone();
        assert!(uuid.starts_with("MIG-"));
        st.processes.push(Process {
            pid: 42,
            uuid: uuid.clone(),
            used_memory: 1 << 20,
        });
        assert_eq!(code(destroy_ci(&mut st, 0, gi, c0)), IN_USE);
        st.processes.clear();
        destroy_ci(&mut st, 0, gi, c0).unwrap();
        destroy_ci(&mut st, 0, gi, c1).unwrap();
        let (c, _) = create_ci(&mut st, 0, gi, 2, None).unwrap();
        assert_eq!(c, 0);
        let uuid2 = st.gpus[0].gi(gi).unwrap().compute_instances[0].uuid.clone();
        assert_ne!(uuid, uuid2, "MIG UUIDs are never reused");
        assert_eq!(
            code(create_ci(&mut st, 0, gi, 0, None)),
            INSUFFICIENT_RESOURCES
        );
        destroy_ci(&mut st, 0, gi, 0).unwrap();
        destroy_gi(&mut st, 0, gi).unwrap();
        assert!(st.gpus[0].gpu_instances.is_empty());
    }

    #[test]
    fn mig_mode_refused_while_in_use() {
        let mut st = State::one_gpu("h200-141gb", true);
        create_gi(&mut st, 0, 19, None).unwrap();
        assert_eq!(code(set_mig_mode(&mut st, 0, false)), IN_USE);
        destroy_gi(&mut st, 0, 7).unwrap();
        set_mig_mode(&mut st, 0, false).unwrap();
        assert!(!st.gpus[0].mig_enabled());
    }

    fn on_gpu(st: &mut State, pid: u32) {
        st.processes.push(Process {
            pid,
            uuid: "GPU-test".into(),
            used_memory: 0,
        });
    }

    fn modes(st: &State) -> (u32, u32) {
        (st.gpus[0].mig_current, st.gpus[0].mig_pending)
    }

    #[test]
    fn hopper_switches_at_once_and_never_under_a_process() {
        for key in ["h100-80gb", "h200-141gb", "b200-180gb", "gh200-96gb"] {
            let mut st = State::one_gpu(key, false);
            on_gpu(&mut st, 7);
            assert_eq!(code(set_mig_mode(&mut st, 0, true)), IN_USE, "{key}");
            assert_eq!(modes(&st), (0, 0), "{key}: a refusal changes nothing");
            st.processes.clear();
            assert_eq!(set_mig_mode(&mut st, 0, true).unwrap(), SUCCESS);
            assert_eq!(modes(&st), (1, 1), "{key}");
            assert_eq!(set_mig_mode(&mut st, 0, true).unwrap(), SUCCESS, "no-op");
            create_gi(&mut st, 0, 19, None).unwrap();
            assert_eq!(code(set_mig_mode(&mut st, 0, false)), IN_USE, "{key}");
            destroy_gi(&mut st, 0, 7).unwrap();
            assert_eq!(set_mig_mode(&mut st, 0, false).unwrap(), SUCCESS);
            assert_eq!(modes(&st), (0, 0), "{key}");
        }
    }

    #[test]
    fn ampere_change_is_pending_until_a_reset() {
        let mut st = State::one_gpu("a100-40gb", false);
        assert_eq!(set_mig_mode(&mut st, 0, true).unwrap(), RESET_REQUIRED);
        assert_eq!(modes(&st), (0, 1), "pending, not current");
        assert_eq!(code(create_gi(&mut st, 0, 19, None)), NOT_SUPPORTED);
        // Asking for the current mode cancels the pending change.
        assert_eq!(set_mig_mode(&mut st, 0, false).unwrap(), SUCCESS);
        assert_eq!(modes(&st), (0, 0));
        // Under a process: pending too, and the reset that would apply it is refused.
        on_gpu(&mut st, 9);
        assert_eq!(set_mig_mode(&mut st, 0, true).unwrap(), IN_USE);
        assert_eq!(modes(&st), (0, 1));
        assert_eq!(code(reset_gpu(&mut st, 0)), IN_USE);
        assert_eq!(modes(&st), (0, 1));
        st.processes.clear();
        reset_gpu(&mut st, 0).unwrap();
        assert_eq!(modes(&st), (1, 1), "the reset applied it");
        create_gi(&mut st, 0, 19, None).unwrap();
        // Turning it off: instances first, then pending again.
        assert_eq!(code(set_mig_mode(&mut st, 0, false)), IN_USE);
        destroy_gi(&mut st, 0, 7).unwrap();
        assert_eq!(set_mig_mode(&mut st, 0, false).unwrap(), RESET_REQUIRED);
        assert_eq!(modes(&st), (1, 0));
        reset_gpu(&mut st, 0).unwrap();
        assert_eq!(modes(&st), (0, 0));
    }

    #[test]
    fn a_mig_gpus_aggregate_process_list_needs_privilege() {
        let st = State::one_gpu("h100-80gb", true);
        assert_eq!(
            code(may_list_processes(&st.gpus[0], || false)),
            NO_PERMISSION
        );
        may_list_processes(&st.gpus[0], || true).unwrap();
        let st = State::one_gpu("h100-80gb", false);
        may_list_processes(&st.gpus[0], || false).unwrap();
    }

    #[test]
    fn a_reset_leaves_no_instance() {
        let mut st = State::one_gpu("h100-80gb", true);
        let (gi, _) = create_gi(&mut st, 0, 9, None).unwrap();
        let (_, _) = create_ci(&mut st, 0, gi, 2, None).unwrap();
        let uuid = st.gpus[0].mig_devices()[0].1.uuid.clone();
        st.processes.push(Process {
            pid: 5,
            uuid,
            used_memory: 0,
        });
        assert_eq!(
            code(reset_gpu(&mut st, 0)),
            IN_USE,
            "a MIG device's process"
        );
        st.processes.clear();
        reset_gpu(&mut st, 0).unwrap();
        assert!(st.gpus[0].gpu_instances.is_empty());
        assert_eq!(
            modes(&st),
            (1, 1),
            "MIG mode itself survives a reset on Hopper"
        );
    }

    #[test]
    fn mig_device_enumeration() {
        let mut st = State::one_gpu("h100-80gb", true);
        let (a, _) = create_gi(&mut st, 0, 19, Some((5, 1))).unwrap();
        let (b, _) = create_gi(&mut st, 0, 14, Some((0, 2))).unwrap();
        create_ci(&mut st, 0, a, 0, None).unwrap();
        create_ci(&mut st, 0, b, 1, None).unwrap();
        let g = &st.gpus[0];
        assert_eq!(mig_device_by_index(g, 0).unwrap(), (5, 0));
        assert_eq!(mig_device_by_index(g, 1).unwrap(), (12, 0));
        assert_eq!(mig_device_by_index(g, 2).unwrap_err().code(), NOT_FOUND);
        assert_eq!(
            mig_device_by_index(g, 7).unwrap_err().code(),
            INVALID_ARGUMENT
        );
    }
}
