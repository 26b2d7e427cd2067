//! Device queries: count, handles, UUID, name, memory, MIG mode, compute mode, MIG device
//! handles, processes.

use super::*;
use crate::compute_mode;
use crate::error::{ARGUMENT_VERSION_MISMATCH, NOT_FOUND, NOT_SUPPORTED, NO_PERMISSION};
use crate::mig::{self, MAX_MIG_DEVICES};
use nvml_wrapper_sys::bindings as b;

/// Value NVML reports for the GI/CI id of a process that is not on a MIG device.
const NO_ID: c_uint = 0xFFFF_FFFF;

fn mib(mb: u64) -> u64 {
    mb << 20
}

/// `(total, used)` bytes of a device.
fn memory(st: &State, d: &Dev) -> SimResult<(u64, u64)> {
    Ok(match d {
        Dev::Gpu(g) => {
            let total = mig::model_of(g)?.memory_total;
            let mut uuids = vec![g.uuid.as_str()];
            uuids.extend(g.mig_devices().iter().map(|(_, ci)| ci.uuid.as_str()));
            let used = st
                .processes
                .iter()
                .filter(|p| uuids.contains(&p.uuid.as_str()))
                .map(|p| p.used_memory)
                .sum();
            (total, used)
        }
        Dev::Mig(g, gi, _) => {
            let model = mig::model_of(g)?;
            let total = mib(mig::gi_profile_of(model, gi)?.memory_size_mb);
            // The compute instances of one GPU instance share its memory.
            let used = gi
                .compute_instances
                .iter()
                .flat_map(|ci| st.processes_on(&ci.uuid))
                .map(|p| p.used_memory)
                .sum();
            (total, used)
        }
    })
}

fn name(d: &Dev) -> SimResult<String> {
    Ok(match d {
        Dev::Gpu(g) => mig::model_of(g)?.name.clone(),
        Dev::Mig(g, gi, ci) => {
            let model = mig::model_of(g)?;
            let gip = mig::gi_profile_of(model, gi)?;
            let cip = mig::ci_profile(model, gip, ci.profile_id)?;
            format!("{} {}", model.name, cip.name)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetCount_v2(device_count: *mut c_uint) -> Ret {
    guard(|| {
        let n = query(|st| Ok(st.gpus.len() as c_uint))?;
        // SAFETY: NVML's contract.
        unsafe { out(device_count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByIndex_v2(
    index: c_uint,
    device: *mut b::nvmlDevice_t,
) -> Ret {
    guard(|| {
        non_null(device)?;
        let lat = query(|st| {
            st.gpu(index).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
            Ok(st.latency)
        })?;
        first_handle(lat);
        // SAFETY: NVML's contract.
        unsafe { out(device, Handle::gpu(index).as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetHandleByUUID(
    uuid: *const c_char,
    device: *mut b::nvmlDevice_t,
) -> Ret {
    guard(|| {
        non_null(uuid)?;
        non_null(device)?;
        // SAFETY: a NUL-terminated string by NVML's contract.
        let want = unsafe { CStr::from_ptr(uuid) }
            .to_string_lossy()
            .into_owned();
        let (h, lat) = query(|st| {
            if let Some(g) = st.gpus.iter().find(|g| g.uuid == want) {
                return Ok((Handle::gpu(g.index), st.latency));
            }
            let (gpu, gi, ci) = st.find_mig(&want).ok_or(SimError::Nvml(NOT_FOUND))?;
            let serial = st.gpus[gpu as usize]
                .gi(gi)
                .and_then(|g| g.compute_instances.iter().find(|c| c.id == ci))
                .map(|c| c.serial)
                .ok_or(SimError::Nvml(NOT_FOUND))?;
            Ok((Handle::mig(gpu, gi, ci, serial), st.latency))
        })?;
        first_handle(lat);
        // SAFETY: NVML's contract.
        unsafe { out(device, h.as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetUUID(
    device: b::nvmlDevice_t,
    uuid: *mut c_char,
    length: c_uint,
) -> Ret {
    guard(|| {
        let s = query(|st| {
            Ok(match dev(st, device)? {
                Dev::Gpu(g) => g.uuid.clone(),
                Dev::Mig(_, _, ci) => ci.uuid.clone(),
            })
        })?;
        // SAFETY: NVML's contract.
        unsafe { out_str(uuid, length, &s) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetName(
    device: b::nvmlDevice_t,
    name_out: *mut c_char,
    length: c_uint,
) -> Ret {
    guard(|| {
        let s = query(|st| name(&dev(st, device)?))?;
        // SAFETY: NVML's contract.
        unsafe { out_str(name_out, length, &s) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetIndex(device: b::nvmlDevice_t, index: *mut c_uint) -> Ret {
    guard(|| {
        let i = query(|st| match dev(st, device)? {
            Dev::Gpu(g) => Ok(g.index),
            Dev::Mig(..) => Err(NOT_SUPPORTED.into()),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(index, i) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMinorNumber(
    device: b::nvmlDevice_t,
    minor_number: *mut c_uint,
) -> Ret {
    guard(|| {
        let m = query(|st| match dev(st, device)? {
            Dev::Gpu(g) => Ok(g.minor),
            Dev::Mig(..) => Err(NOT_SUPPORTED.into()),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(minor_number, m) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo(
    device: b::nvmlDevice_t,
    memory: *mut b::nvmlMemory_t,
) -> Ret {
    guard(|| {
        non_null(memory)?;
        let (total, used) = query(|st| memory_of(st, device))?;
        let m = b::nvmlMemory_t {
            total,
            used,
            free: total.saturating_sub(used),
        };
        // SAFETY: NVML's contract.
        unsafe { out(memory, m) }
    })
}

fn memory_of(st: &State, device: b::nvmlDevice_t) -> SimResult<(u64, u64)> {
    memory(st, &dev(st, device)?)
}

/// `NVML_STRUCT_VERSION(T, v)`
pub(super) fn struct_version<T>(v: u32) -> c_uint {
    (std::mem::size_of::<T>() as c_uint) | (v << 24)
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMemoryInfo_v2(
    device: b::nvmlDevice_t,
    memory: *mut b::nvmlMemory_v2_t,
) -> Ret {
    guard(|| {
        non_null(memory)?;
        // SAFETY: non-null; the caller set the version word.
        let version = unsafe { (*memory).version };
        if version != struct_version::<b::nvmlMemory_v2_t>(2) {
            return Err(ARGUMENT_VERSION_MISMATCH.into());
        }
        let (total, used) = query(|st| memory_of(st, device))?;
        let m = b::nvmlMemory_v2_t {
            version,
            total,
            reserved: 0,
            free: total.saturating_sub(used),
            used,
        };
        // SAFETY: NVML's contract.
        unsafe { out(memory, m) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigMode(
    device: b::nvmlDevice_t,
    current_mode: *mut c_uint,
    pending_mode: *mut c_uint,
) -> Ret {
    guard(|| {
        non_null(current_mode)?;
        non_null(pending_mode)?;
        let (c, p, lat) = query(|st| {
            let g = match dev(st, device)? {
                Dev::Gpu(g) => g,
                Dev::Mig(..) => return Err(NOT_SUPPORTED.into()),
            };
            Ok((g.mig_current, g.mig_pending, st.latency))
        })?;
        latency::charge(lat, Op::MigMode);
        // SAFETY: NVML's contract.
        unsafe {
            out(current_mode, c)?;
            out(pending_mode, p)
        }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetMigMode(
    device: b::nvmlDevice_t,
    mode: c_uint,
    activation_status: *mut Ret,
) -> Ret {
    guard(|| {
        non_null(activation_status)?;
        if mode > b::NVML_DEVICE_MIG_ENABLE {
            return Err(INVALID_ARGUMENT.into());
        }
        let (status, _) = mutate(|st| {
            let g = match dev(st, device)? {
                Dev::Gpu(g) => g.index,
                Dev::Mig(..) => return Err(NOT_SUPPORTED.into()),
            };
            mig::set_mig_mode(st, g, mode == b::NVML_DEVICE_MIG_ENABLE)
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(activation_status, status) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeMode(
    device: b::nvmlDevice_t,
    mode: *mut b::nvmlComputeMode_t,
) -> Ret {
    guard(|| {
        non_null(mode)?;
        let m = query(|st| match dev(st, device)? {
            Dev::Gpu(g) => compute_mode::get(g),
            Dev::Mig(..) => Ok(compute_mode::MIG_DEVICE),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(mode, m) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceSetComputeMode(
    device: b::nvmlDevice_t,
    mode: b::nvmlComputeMode_t,
) -> Ret {
    guard(|| {
        // The driver lets only a caller with CAP_SYS_ADMIN in its effective set change a
        // GPU's settings (NV_IS_SUSER() is capable(CAP_SYS_ADMIN)): uid 0 alone is not enough.
        if !compute_mode::caller_is_admin() {
            return Err(NO_PERMISSION.into());
        }
        mutate(|st| match dev(st, device)? {
            Dev::Gpu(g) => {
                let g = g.index;
                compute_mode::set(st, g, mode)
            }
            Dev::Mig(..) => compute_mode::set_mig_device(mode),
        })?;
        Ok(())
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMaxMigDeviceCount(
    device: b::nvmlDevice_t,
    count: *mut c_uint,
) -> Ret {
    guard(|| {
        let n = query(|st| {
            let g = phys(st, device)?;
            Ok(if g.mig_enabled() { MAX_MIG_DEVICES } else { 0 })
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(count, n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetMigDeviceHandleByIndex(
    device: b::nvmlDevice_t,
    index: c_uint,
    mig_device: *mut b::nvmlDevice_t,
) -> Ret {
    guard(|| {
        non_null(mig_device)?;
        let h = query(|st| {
            let g = phys(st, device)?;
            let (gi, ci) = mig::mig_device_by_index(g, index)?;
            let serial = g
                .gi(gi)
                .and_then(|x| x.compute_instances.iter().find(|c| c.id == ci))
                .map(|c| c.serial)
                .ok_or(SimError::Nvml(NOT_FOUND))?;
            Ok(Handle::mig(g.index, gi, ci, serial))
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(mig_device, h.as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetDeviceHandleFromMigDeviceHandle(
    mig_device: b::nvmlDevice_t,
    device: *mut b::nvmlDevice_t,
) -> Ret {
    guard(|| {
        let h = query(|st| match dev(st, mig_device)? {
            Dev::Mig(g, ..) => Ok(Handle::gpu(g.index)),
            Dev::Gpu(_) => Err(INVALID_ARGUMENT.into()),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(device, h.as_ptr()) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceIsMigDeviceHandle(
    device: b::nvmlDevice_t,
    is_mig_device: *mut c_uint,
) -> Ret {
    guard(|| {
        let v = query(|st| Ok(matches!(dev(st, device)?, Dev::Mig(..))))?;
        // SAFETY: NVML's contract.
        unsafe { out(is_mig_device, c_uint::from(v)) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetGpuInstanceId(
    device: b::nvmlDevice_t,
    id: *mut c_uint,
) -> Ret {
    guard(|| {
        let v = query(|st| match dev(st, device)? {
            Dev::Mig(_, gi, _) => Ok(gi.id),
            Dev::Gpu(_) => Err(NOT_SUPPORTED.into()),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(id, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeInstanceId(
    device: b::nvmlDevice_t,
    id: *mut c_uint,
) -> Ret {
    guard(|| {
        let v = query(|st| match dev(st, device)? {
            Dev::Mig(_, _, ci) => Ok(ci.id),
            Dev::Gpu(_) => Err(NOT_SUPPORTED.into()),
        })?;
        // SAFETY: NVML's contract.
        unsafe { out(id, v) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlDeviceGetComputeRunningProcesses_v3(
    device: b::nvmlDevice_t,
    info_count: *mut c_uint,
    infos: *mut b::nvmlProcessInfo_t,
) -> Ret {
    guard(|| {
        let procs = query(|st| {
            let info = |pid, used, gi, ci| b::nvmlProcessInfo_t {
                pid,
                usedGpuMemory: used,
                gpuInstanceId: gi,
                computeInstanceId: ci,
            };
            let mut v = vec![];
            match dev(st, device)? {
                Dev::Gpu(g) => {
                    mig::may_list_processes(g, compute_mode::caller_is_admin)?;
                    for p in st.processes_on(&g.uuid) {
                        v.push(info(p.pid, p.used_memory, NO_ID, NO_ID));
                    }
                    for (gi, ci) in g.mig_devices() {
                        for p in st.processes_on(&ci.uuid) {
                            v.push(info(p.pid, p.used_memory, gi.id, ci.id));
                        }
                    }
                }
                Dev::Mig(_, gi, ci) => {
                    for p in st.processes_on(&ci.uuid) {
                        v.push(info(p.pid, p.used_memory, gi.id, ci.id));
                    }
                }
            }
            Ok(v)
        })?;
        // SAFETY: NVML's contract.
        unsafe { out_array(infos, info_count, &procs, false) }
    })
}
