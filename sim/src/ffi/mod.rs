//! The exported NVML C functions. Same names, signatures, structs (from nvml-wrapper-sys) and
//! return codes as libnvidia-ml.so.1.
//!
//! Every call: catch panics (answering NVML_ERROR_UNKNOWN), check init, take the state lock,
//! read the state, act, and write it back if it changed (`state::Store::transact`).
//!
//! Safety contract of every `unsafe extern "C"` function here is NVML's own: pointer arguments
//! are null or valid for the documented reads/writes, and buffers hold at least the stated
//! length. Null out-pointers are answered with NVML_ERROR_INVALID_ARGUMENT.
#![allow(clippy::missing_safety_doc)]

mod device;
mod instances;

use crate::error::{
    error_string, Ret, SimError, SimResult, DRIVER_NOT_LOADED, INSUFFICIENT_SIZE, INVALID_ARGUMENT,
    SUCCESS, UNINITIALIZED, UNKNOWN,
};
use crate::handles::{short_serial, Handle, Kind};
use crate::latency::{self, Op};
use crate::state::{ComputeInstance, FileKey, Gpu, GpuInstance, Latency, State, Store};
use std::ffi::{c_char, c_int, c_uint, c_void, CStr};
use std::os::unix::ffi::OsStrExt;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Driver version when the state names no GPU.
const DEFAULT_DRIVER: &str = "580.159.04";
/// CUDA 13.0, what driver 580 reports.
const CUDA_DRIVER_VERSION: c_int = 13000;

/// nvmlInit calls minus nvmlShutdown calls in this process.
static INIT_COUNT: AtomicUsize = AtomicUsize::new(0);
/// Whether this process has already paid for its first device-handle lookup.
static FIRST_HANDLE_DONE: AtomicBool = AtomicBool::new(false);

/// The directory this library was loaded from (dladdr on one of its own functions).
fn own_dir() -> Option<PathBuf> {
    static DIR: OnceLock<Option<PathBuf>> = OnceLock::new();
    DIR.get_or_init(|| {
        // SAFETY: Dl_info is plain data; all-zero is a valid value.
        let mut info: libc::Dl_info = unsafe { std::mem::zeroed() };
        let addr = own_dir as fn() -> Option<PathBuf> as *const c_void;
        // SAFETY: dladdr reads the address only to look it up and fills `info`.
        let rc = unsafe { libc::dladdr(addr, &mut info) };
        if rc == 0 || info.dli_fname.is_null() {
            return None;
        }
        // SAFETY: dladdr returned a NUL-terminated path that lives as long as the mapping.
        let name = unsafe { CStr::from_ptr(info.dli_fname) };
        let path = PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes()));
        let dir = path.parent()?.to_path_buf();
        if dir.is_absolute() {
            Some(dir)
        } else {
            std::env::current_dir().ok().map(|cwd| cwd.join(dir))
        }
    })
    .clone()
}

fn store() -> SimResult<Store> {
    own_dir()
        .map(Store::new)
        .ok_or(SimError::Nvml(DRIVER_NOT_LOADED))
}

/// Runs an exported call's body: errors become their NVML code, and a panic, in a build that
/// unwinds, NVML_ERROR_UNKNOWN rather than unwinding into C. The workspace's dev and release
/// profiles abort on panic (the `gpushare` entry binary needs it), so there a simulator bug
/// aborts the calling process, which a test then reports.
fn guard(f: impl FnOnce() -> SimResult<()>) -> Ret {
    match catch_unwind(AssertUnwindSafe(f)) {
        Ok(Ok(())) => SUCCESS,
        Ok(Err(e)) => e.code(),
        Err(_) => UNKNOWN,
    }
}

fn check_init() -> SimResult<()> {
    if INIT_COUNT.load(Ordering::SeqCst) == 0 {
        return Err(UNINITIALIZED.into());
    }
    Ok(())
}

/// Reads the state after checking init (a cached copy while the file is unchanged).
fn query<T>(f: impl FnOnce(&State) -> SimResult<T>) -> SimResult<T> {
    static CACHE: std::sync::Mutex<Option<(FileKey, State)>> = std::sync::Mutex::new(None);
    check_init()?;
    let st = {
        let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
        store()?.load_cached(&mut cache)?
    };
    f(&st)
}

/// Changes the state in one transaction; also returns the node's latency mode.
fn mutate<T>(f: impl FnOnce(&mut State) -> SimResult<T>) -> SimResult<(T, Latency)> {
    check_init()?;
    store()?.transact(|st| {
        let lat = st.latency;
        f(st).map(|v| (v, lat))
    })
}

/// Writes `v` to an out-pointer.
unsafe fn out<T>(p: *mut T, v: T) -> SimResult<()> {
    if p.is_null() {
        return Err(INVALID_ARGUMENT.into());
    }
    // SAFETY: non-null, and valid for a write of T by the caller's contract.
    unsafe { p.write(v) };
    Ok(())
}

fn non_null<T>(p: *const T) -> SimResult<()> {
    if p.is_null() {
        Err(INVALID_ARGUMENT.into())
    } else {
        Ok(())
    }
}

/// Copies `s` and its NUL into a caller's buffer of `len` bytes.
unsafe fn out_str(buf: *mut c_char, len: c_uint, s: &str) -> SimResult<()> {
    non_null(buf)?;
    if (len as usize) < s.len() + 1 {
        return Err(INSUFFICIENT_SIZE.into());
    }
    // SAFETY: the buffer holds `len` >= s.len() + 1 bytes.
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr().cast::<c_char>(), buf, s.len());
        *buf.add(s.len()) = 0;
    }
    Ok(())
}

/// A fixed C char array (NVML's name fields), truncated to leave room for the NUL.
fn c_name<const N: usize>(s: &str) -> [c_char; N] {
    let mut a = [0 as c_char; N];
    for (d, b) in a.iter_mut().zip(s.bytes().take(N - 1)) {
        *d = b as c_char;
    }
    a
}

/// Writes `items` to an array whose capacity is `*count` (NVML's count-in/count-out protocol):
/// a short array sets `*count` to what is needed and answers INSUFFICIENT_SIZE. A null array
/// is a size query: SUCCESS where NVML documents it so (`null_ok`: placements), otherwise
/// INSUFFICIENT_SIZE unless nothing is needed (running processes).
unsafe fn out_array<T: Copy>(
    arr: *mut T,
    count: *mut c_uint,
    items: &[T],
    null_ok: bool,
) -> SimResult<()> {
    non_null(count)?;
    let n = items.len() as c_uint;
    // SAFETY: `count` is non-null and valid by contract.
    let cap = unsafe { *count };
    unsafe { *count = n };
    if arr.is_null() {
        return if n == 0 || null_ok {
            Ok(())
        } else {
            Err(INSUFFICIENT_SIZE.into())
        };
    }
    if cap < n {
        return Err(INSUFFICIENT_SIZE.into());
    }
    // SAFETY: `arr` holds `cap` >= n elements.
    unsafe { std::ptr::copy_nonoverlapping(items.as_ptr(), arr, items.len()) };
    Ok(())
}

/// A device handle resolved against the state.
enum Dev<'a> {
    Gpu(&'a Gpu),
    Mig(&'a Gpu, &'a GpuInstance, &'a ComputeInstance),
}

fn resolve_gpu(st: &State, h: Handle) -> SimResult<&Gpu> {
    st.gpu(h.gpu).ok_or(SimError::Nvml(INVALID_ARGUMENT))
}

fn resolve_gi(st: &State, h: Handle) -> SimResult<(&Gpu, &GpuInstance)> {
    let g = resolve_gpu(st, h)?;
    let gi = g
        .gi(h.gi)
        .filter(|gi| short_serial(gi.serial) == h.serial)
        .ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    Ok((g, gi))
}

fn resolve_ci(st: &State, h: Handle) -> SimResult<(&Gpu, &GpuInstance, &ComputeInstance)> {
    let g = resolve_gpu(st, h)?;
    let (gi, ci) = g
        .gpu_instances
        .iter()
        .filter(|gi| gi.id == h.gi)
        .find_map(|gi| {
            gi.compute_instances
                .iter()
                .find(|ci| ci.id == h.ci && short_serial(ci.serial) == h.serial)
                .map(|ci| (gi, ci))
        })
        .ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    Ok((g, gi, ci))
}

fn decode(p: *mut c_void, kinds: &[Kind]) -> SimResult<Handle> {
    Handle::decode(p as usize)
        .filter(|h| kinds.contains(&h.kind))
        .ok_or(SimError::Nvml(INVALID_ARGUMENT))
}

fn dev<T>(st: &State, p: *mut T) -> SimResult<Dev<'_>> {
    let h = decode(p.cast(), &[Kind::Gpu, Kind::Mig])?;
    Ok(match h.kind {
        Kind::Gpu => Dev::Gpu(resolve_gpu(st, h)?),
        _ => {
            let (g, gi, ci) = resolve_ci(st, h)?;
            Dev::Mig(g, gi, ci)
        }
    })
}

/// A physical GPU handle only.
fn phys<T>(st: &State, p: *mut T) -> SimResult<&Gpu> {
    match dev(st, p)? {
        Dev::Gpu(g) => Ok(g),
        Dev::Mig(..) => Err(INVALID_ARGUMENT.into()),
    }
}

fn gi_handle<T>(st: &State, p: *mut T) -> SimResult<(&Gpu, &GpuInstance)> {
    resolve_gi(st, decode(p.cast(), &[Kind::GpuInstance])?)
}

fn ci_handle<T>(st: &State, p: *mut T) -> SimResult<(&Gpu, &GpuInstance, &ComputeInstance)> {
    resolve_ci(st, decode(p.cast(), &[Kind::ComputeInstance])?)
}

fn first_handle(lat: Latency) {
    if !FIRST_HANDLE_DONE.swap(true, Ordering::SeqCst) {
        latency::charge(lat, Op::FirstHandle);
    }
}

fn driver_version(st: &State) -> (String, String) {
    st.gpus
        .first()
        .and_then(|g| crate::models::model(&g.model))
        .map(|m| (m.driver.clone(), m.nvml.clone()))
        .unwrap_or_else(|| (DEFAULT_DRIVER.into(), format!("13.{DEFAULT_DRIVER}")))
}

fn init() -> SimResult<()> {
    let st = store()?.load()?;
    if INIT_COUNT.fetch_add(1, Ordering::SeqCst) == 0 {
        FIRST_HANDLE_DONE.store(false, Ordering::SeqCst);
    }
    latency::charge(st.latency, Op::Init);
    Ok(())
}

#[no_mangle]
pub extern "C" fn nvmlInit_v2() -> Ret {
    guard(init)
}

#[no_mangle]
pub extern "C" fn nvmlInitWithFlags(_flags: c_uint) -> Ret {
    guard(init)
}

#[no_mangle]
pub extern "C" fn nvmlShutdown() -> Ret {
    guard(|| {
        let dec = INIT_COUNT.fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1));
        if dec.is_err() {
            return Err(UNINITIALIZED.into());
        }
        let lat = store()
            .and_then(|s| s.load())
            .map(|st| st.latency)
            .unwrap_or_default();
        latency::charge(lat, Op::Shutdown);
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn nvmlErrorString(result: Ret) -> *const c_char {
    error_string(result).as_ptr().cast()
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetDriverVersion(version: *mut c_char, length: c_uint) -> Ret {
    guard(|| {
        let (d, _) = query(|st| Ok(driver_version(st)))?;
        // SAFETY: NVML's contract for the buffer.
        unsafe { out_str(version, length, &d) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetNVMLVersion(version: *mut c_char, length: c_uint) -> Ret {
    guard(|| {
        let (_, n) = query(|st| Ok(driver_version(st)))?;
        // SAFETY: NVML's contract for the buffer.
        unsafe { out_str(version, length, &n) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion(cuda_driver_version: *mut c_int) -> Ret {
    guard(|| {
        check_init()?;
        // SAFETY: NVML's contract for the out-pointer.
        unsafe { out(cuda_driver_version, CUDA_DRIVER_VERSION) }
    })
}

#[no_mangle]
pub unsafe extern "C" fn nvmlSystemGetCudaDriverVersion_v2(cuda_driver_version: *mut c_int) -> Ret {
    // SAFETY: same contract.
    unsafe { nvmlSystemGetCudaDriverVersion(cuda_driver_version) }
}
