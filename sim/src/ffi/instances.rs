//! GPU instances and compute instances: profiles, placements, capacity, create, list, destroy.

use super::device::struct_version;
use super::*;
use crate::error::{ARGUMENT_VERSION_MISMATCH, NOT_FOUND, NOT_SUPPORTED};
use crate::mig::{self, CiProfile};
use crate::models::GiProfile;
use nvml_wrapper_sys::bindings as b;

fn gi_info_v1(p: &GiProfile) -> b::nvmlGpuInstanceProfileInfo_t {
    b::nvmlGpuInstanceProfileInfo_t {
        id: p.id,
        isP2pSupported: p.is_p2p_supported,
        sliceCount: p.slice_count,
        instanceCount: p.instance_count,
        multiprocessorCount: p.multiprocessor_count,
        copyEngineCount: p.copy_engine_count,
        decoderCount: p.decoder_count,
        encoderCount: p.encoder_count,
        jpegCount: p.jpeg_count,
        ofaCount: p.ofa_count,
        memorySizeMB: p.memory_size_mb,
    }
}

/// The GPU-instance profile of a physical GPU handle, by profile index.
fn gi_profile_at(st: &State, device: b::nvmlDevice_t, index: c_uint) -> SimResult<GiProfile> {
    let g = phys(st, device)?;
    Ok(mig::gi_profile_by_index(mig::model_of(g)?, index)?.clone())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfo(
    device: b::nvmlDevice_t,
    profile: c_uint,
    info: *mut b::nvmlGpuInstanceProfileInfo_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        let p = query(|st| gi_profile_at(st, device, profile))?;
        // SAFETY: NVML's contract.
        unsafe { out(info, gi_info_v1(&p)) }
    })
}

/// Takes a v2 struct (`nvmlGpuInstanceProfileInfo_v2`) or a v3 one, by its version word.
#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceProfileInfoV(
    device: b::nvmlDevice_t,
    profile: c_uint,
    info: *mut b::nvmlGpuInstanceProfileInfo_v2_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        // SAFETY: non-null; the caller set the version word, the first field of both versions.
        let version = unsafe { (*info).version };
        let v2 = struct_version::<b::nvmlGpuInstanceProfileInfo_v2_t>(2);
        let v3 = struct_version::<b::nvmlGpuInstanceProfileInfo_v3_t>(3);
        if version != v2 && version != v3 {
            return Err(ARGUMENT_VERSION_MISMATCH.into());
        }
        let p = query(|st| gi_profile_at(st, device, profile))?;
        let i = gi_info_v1(&p);
        if version == v2 {
            let o = b::nvmlGpuInstanceProfileInfo_v2_t {
                version,
                id: i.id,
                isP2pSupported: i.isP2pSupported,
                sliceCount: i.sliceCount,
                instanceCount: i.instanceCount,
                multiprocessorCount: i.multiprocessorCount,
                copyEngineCount: i.copyEngineCount,
                decoderCount: i.decoderCount,
                encoderCount: i.encoderCount,
                jpegCount: i.jpegCount,
                ofaCount: i.ofaCount,
                memorySizeMB: i.memorySizeMB,
                name: c_name(&p.name),
            };
            // SAFETY: NVML's contract.
            unsafe { out(info, o) }
        } else {
            let o = b::nvmlGpuInstanceProfileInfo_v3_t {
                version,
                id: i.id,
                sliceCount: i.sliceCount,
                instanceCount: i.instanceCount,
                multiprocessorCount: i.multiprocessorCount,
                copyEngineCount: i.copyEngineCount,
                decoderCount: i.decoderCount,
                encoderCount: i.encoderCount,
                jpegCount: i.jpegCount,
                ofaCount: i.ofaCount,
                memorySizeMB: i.memorySizeMB,
                name: c_name(&p.name),
                capabilities: if i.isP2pSupported != 0 {
                    b::NVML_GPU_INSTANCE_PROFILE_CAPS_P2P
                } else {
                    0
                },
            };
            // SAFETY: the caller passed a v3 struct (its version word says so).
            unsafe { out(info.cast::<b::nvmlGpuInstanceProfileInfo_v3_t>(), o) }
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstancePossiblePlacements_v2(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    placements: *mut b::nvmlGpuInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        let v: Vec<_> = query(|st| {
            let g = phys(st, device)?;
            let p = mig::gi_profile_by_id(mig::model_of(g)?, profile_id)?;
            Ok(p.placements
                .iter()
                .map(|&(start, size)| b::nvmlGpuInstancePlacement_t { start, size })
                .collect())
        })?;
        // SAFETY: NVML's contract.
        unsafe { out_array(placements, count, &v, true) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceRemainingCapacity(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        let n = query(|st| {
            let g = phys(st, device)?;
            let p = mig::gi_profile_by_id(mig::model_of(g)?, profile_id)?;
            Ok(mig::gi_remaining(g, p))
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(count, n) }
    })
}

unsafe fn create_gi(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    placement: Option<(u32, u32)>,
    gpu_instance: *mut b::nvmlGpuInstance_t,
) -> SimResult<()> {
    non_null(gpu_instance)?;
    let ((gpu, id, serial), lat) = mutate(|st| {
        let gpu = phys(st, device)?.index;
        let (id, serial) = mig::create_gi(st, gpu, profile_id, placement)?;
        Ok((gpu, id, serial))
    })?;
    latency::charge(lat, Op::GiCreate);
    // SAFETY: NVML's contract.
    unsafe { out(gpu_instance, Handle::gpu_instance(gpu, id, serial).as_ptr()) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstance(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    gpu_instance: *mut b::nvmlGpuInstance_t,
) -> Ret {
    // SAFETY: NVML's contract.
    guard(|| unsafe { create_gi(device, profile_id, None, gpu_instance) })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceCreateGpuInstanceWithPlacement(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    placement: *const b::nvmlGpuInstancePlacement_t,
    gpu_instance: *mut b::nvmlGpuInstance_t,
) -> Ret {
    guard(|| {
        non_null(placement)?;
        // SAFETY: non-null and valid by NVML's contract.
        let p = unsafe { *placement };
        // SAFETY: NVML's contract.
        unsafe { create_gi(device, profile_id, Some((p.start, p.size)), gpu_instance) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstances(
    device: b::nvmlDevice_t,
    profile_id: c_uint,
    gpu_instances: *mut b::nvmlGpuInstance_t,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        non_null(gpu_instances)?;
        non_null(count)?;
        let v: Vec<b::nvmlGpuInstance_t> = query(|st| {
            let g = phys(st, device)?;
            mig::gi_profile_by_id(mig::model_of(g)?, profile_id)?;
            if !g.mig_enabled() {
                return Err(NOT_SUPPORTED.into());
            }
            Ok(g.gpu_instances
                .iter()
                .filter(|gi| gi.profile_id == profile_id)
                .map(|gi| Handle::gpu_instance(g.index, gi.id, gi.serial).as_ptr())
                .collect())
        })?;
        // The array holds the profile's instanceCount handles, by NVML's contract; there is
        // no input count.
        // SAFETY: NVML's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), gpu_instances, v.len());
            out(count, v.len() as c_uint)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceById(
    device: b::nvmlDevice_t,
    id: c_uint,
    gpu_instance: *mut b::nvmlGpuInstance_t,
) -> Ret {
    guard(|| {
        non_null(gpu_instance)?;
        let h = query(|st| {
            let g = phys(st, device)?;
            if !g.mig_enabled() {
                return Err(NOT_SUPPORTED.into());
            }
            let gi = g.gi(id).ok_or(SimError::Nvml(NOT_FOUND))?;
            Ok(Handle::gpu_instance(g.index, gi.id, gi.serial))
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(gpu_instance, h.as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetInfo(
    gpu_instance: b::nvmlGpuInstance_t,
    info: *mut b::nvmlGpuInstanceInfo_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        let i = query(|st| {
            let (g, gi) = gi_handle(st, gpu_instance)?;
            Ok(b::nvmlGpuInstanceInfo_t {
                device: Handle::gpu(g.index).as_ptr(),
                id: gi.id,
                profileId: gi.profile_id,
                placement: b::nvmlGpuInstancePlacement_t {
                    start: gi.start,
                    size: gi.size,
                },
            })
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceDestroy(gpu_instance: b::nvmlGpuInstance_t) -> Ret {
    guard(|| {
        let ((), lat) = mutate(|st| {
            let (g, gi) = gi_handle(st, gpu_instance)?;
            let (g, gi) = (g.index, gi.id);
            mig::destroy_gi(st, g, gi)
        })?;
        latency::charge(lat, Op::GiDestroy);
        Ok(())
    })
}

/// A compute-instance profile of a GPU-instance handle, by profile index (= id).
fn ci_profile_of(
    st: &State,
    gpu_instance: b::nvmlGpuInstance_t,
    profile: c_uint,
) -> SimResult<CiProfile> {
    let (g, gi) = gi_handle(st, gpu_instance)?;
    let model = mig::model_of(g)?;
    mig::ci_profile(model, mig::gi_profile_of(model, gi)?, profile)
}

fn check_eng_profile(eng_profile: c_uint) -> SimResult<()> {
    if eng_profile >= b::NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_COUNT {
        return Err(INVALID_ARGUMENT.into());
    }
    Ok(())
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfo(
    gpu_instance: b::nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut b::nvmlComputeInstanceProfileInfo_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        check_eng_profile(eng_profile)?;
        let p = query(|st| ci_profile_of(st, gpu_instance, profile))?;
        let o = b::nvmlComputeInstanceProfileInfo_t {
            id: p.id,
            sliceCount: p.slice_count,
            instanceCount: p.instance_count,
            multiprocessorCount: p.multiprocessor_count,
            sharedCopyEngineCount: p.shared_copy_engine_count,
            sharedDecoderCount: p.shared_decoder_count,
            sharedEncoderCount: p.shared_encoder_count,
            sharedJpegCount: p.shared_jpeg_count,
            sharedOfaCount: p.shared_ofa_count,
        };
        // SAFETY: NVML's contract.
        unsafe { out(info, o) }
    })
}

/// Takes a v2 struct (`nvmlComputeInstanceProfileInfo_v2`) or a v3 one, by its version word.
#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceProfileInfoV(
    gpu_instance: b::nvmlGpuInstance_t,
    profile: c_uint,
    eng_profile: c_uint,
    info: *mut b::nvmlComputeInstanceProfileInfo_v2_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        // SAFETY: non-null; the caller set the version word.
        let version = unsafe { (*info).version };
        let v2 = struct_version::<b::nvmlComputeInstanceProfileInfo_v2_t>(2);
        let v3 = struct_version::<b::nvmlComputeInstanceProfileInfo_v3_t>(3);
        if version != v2 && version != v3 {
            return Err(ARGUMENT_VERSION_MISMATCH.into());
        }
        check_eng_profile(eng_profile)?;
        let p = query(|st| ci_profile_of(st, gpu_instance, profile))?;
        if version == v2 {
            let o = b::nvmlComputeInstanceProfileInfo_v2_t {
                version,
                id: p.id,
                sliceCount: p.slice_count,
                instanceCount: p.instance_count,
                multiprocessorCount: p.multiprocessor_count,
                sharedCopyEngineCount: p.shared_copy_engine_count,
                sharedDecoderCount: p.shared_decoder_count,
                sharedEncoderCount: p.shared_encoder_count,
                sharedJpegCount: p.shared_jpeg_count,
                sharedOfaCount: p.shared_ofa_count,
                name: c_name(&p.name),
            };
            // SAFETY: NVML's contract.
            unsafe { out(info, o) }
        } else {
            let o = b::nvmlComputeInstanceProfileInfo_v3_t {
                version,
                id: p.id,
                sliceCount: p.slice_count,
                instanceCount: p.instance_count,
                multiprocessorCount: p.multiprocessor_count,
                sharedCopyEngineCount: p.shared_copy_engine_count,
                sharedDecoderCount: p.shared_decoder_count,
                sharedEncoderCount: p.shared_encoder_count,
                sharedJpegCount: p.shared_jpeg_count,
                sharedOfaCount: p.shared_ofa_count,
                name: c_name(&p.name),
                capabilities: 0,
            };
            // SAFETY: the caller passed a v3 struct (its version word says so).
            unsafe { out(info.cast::<b::nvmlComputeInstanceProfileInfo_v3_t>(), o) }
        }
    })
}

/// A CI profile by id for capacity/placement/create: an id the GI lacks is an invalid argument.
fn ci_profile_by_id(
    st: &State,
    gpu_instance: b::nvmlGpuInstance_t,
    id: c_uint,
) -> SimResult<CiProfile> {
    ci_profile_of(st, gpu_instance, id).map_err(|e| match e {
        SimError::Nvml(NOT_SUPPORTED) => SimError::Nvml(INVALID_ARGUMENT),
        e => e,
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceRemainingCapacity(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        let n = query(|st| {
            let p = ci_profile_by_id(st, gpu_instance, profile_id)?;
            let (_, gi) = gi_handle(st, gpu_instance)?;
            Ok(mig::ci_remaining(gi, &p))
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstancePossiblePlacements(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    placements: *mut b::nvmlComputeInstancePlacement_t,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        let v: Vec<_> = query(|st| {
            let p = ci_profile_by_id(st, gpu_instance, profile_id)?;
            Ok(p.placements
                .iter()
                .map(|&(start, size)| b::nvmlComputeInstancePlacement_t { start, size })
                .collect())
        })?;
        // SAFETY: NVML's contract.
        unsafe { out_array(placements, count, &v, true) }
    })
}

unsafe fn create_ci(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    placement: Option<(u32, u32)>,
    compute_instance: *mut b::nvmlComputeInstance_t,
) -> SimResult<()> {
    non_null(compute_instance)?;
    let ((gpu, gi, ci, serial), lat) = mutate(|st| {
        let (g, gi) = gi_handle(st, gpu_instance)?;
        let (g, gi) = (g.index, gi.id);
        let (ci, serial) = mig::create_ci(st, g, gi, profile_id, placement)?;
        Ok((g, gi, ci, serial))
    })?;
    latency::charge(lat, Op::CiCreate);
    let h = Handle::compute_instance(gpu, gi, ci, serial);
    // SAFETY: NVML's contract.
    unsafe { out(compute_instance, h.as_ptr()) }
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstance(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    compute_instance: *mut b::nvmlComputeInstance_t,
) -> Ret {
    // SAFETY: NVML's contract.
    guard(|| unsafe { create_ci(gpu_instance, profile_id, None, compute_instance) })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceCreateComputeInstanceWithPlacement(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    placement: *const b::nvmlComputeInstancePlacement_t,
    compute_instance: *mut b::nvmlComputeInstance_t,
) -> Ret {
    guard(|| {
        non_null(placement)?;
        // SAFETY: non-null and valid by NVML's contract.
        let p = unsafe { *placement };
        // SAFETY: NVML's contract.
        unsafe {
            create_ci(
                gpu_instance,
                profile_id,
                Some((p.start, p.size)),
                compute_instance,
            )
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstances(
    gpu_instance: b::nvmlGpuInstance_t,
    profile_id: c_uint,
    compute_instances: *mut b::nvmlComputeInstance_t,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        non_null(compute_instances)?;
        non_null(count)?;
        let v: Vec<b::nvmlComputeInstance_t> = query(|st| {
            ci_profile_by_id(st, gpu_instance, profile_id)?;
            let (g, gi) = gi_handle(st, gpu_instance)?;
            Ok(gi
                .compute_instances
                .iter()
                .filter(|ci| ci.profile_id == profile_id)
                .map(|ci| Handle::compute_instance(g.index, gi.id, ci.id, ci.serial).as_ptr())
                .collect())
        })?;
        // The array holds the profile's instanceCount handles, by NVML's contract.
        // SAFETY: NVML's contract.
        unsafe {
            std::ptr::copy_nonoverlapping(v.as_ptr(), compute_instances, v.len());
            out(count, v.len() as c_uint)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlGpuInstanceGetComputeInstanceById(
    gpu_instance: b::nvmlGpuInstance_t,
    id: c_uint,
    compute_instance: *mut b::nvmlComputeInstance_t,
) -> Ret {
    guard(|| {
        non_null(compute_instance)?;
        let h = query(|st| {
            let (g, gi) = gi_handle(st, gpu_instance)?;
            let ci = gi
                .compute_instances
                .iter()
                .find(|c| c.id == id)
                .ok_or(SimError::Nvml(NOT_FOUND))?;
            Ok(Handle::compute_instance(g.index, gi.id, ci.id, ci.serial))
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(compute_instance, h.as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceGetInfo_v2(
    compute_instance: b::nvmlComputeInstance_t,
    info: *mut b::nvmlComputeInstanceInfo_t,
) -> Ret {
    guard(|| {
        non_null(info)?;
        let i = query(|st| {
            let (g, gi, ci) = ci_handle(st, compute_instance)?;
            Ok(b::nvmlComputeInstanceInfo_t {
                device: Handle::gpu(g.index).as_ptr(),
                gpuInstance: Handle::gpu_instance(g.index, gi.id, gi.serial).as_ptr(),
                id: ci.id,
                profileId: ci.profile_id,
                placement: b::nvmlComputeInstancePlacement_t {
                    start: ci.start,
                    size: ci.size,
                },
            })
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(info, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlComputeInstanceDestroy(
    compute_instance: b::nvmlComputeInstance_t,
) -> Ret {
    guard(|| {
        let ((), lat) = mutate(|st| {
            let (g, gi, ci) = ci_handle(st, compute_instance)?;
            let (g, gi, ci) = (g.index, gi.id, ci.id);
            mig::destroy_ci(st, g, gi, ci)
        })?;
        latency::charge(lat, Op::CiDestroy);
        Ok(())
    })
}
