//! Compute modes (`nvmlDeviceGetComputeMode` / `nvmlDeviceSetComputeMode`) and what they do to
//! a process asking for a context.
//!
//! A GPU with MIG disabled has its own mode, kept in the state. With MIG enabled, NVML wants a
//! MIG device's handle ("If MIG is enabled on a GPU, device must be MIG device handle", NVML
//! reference of `nvmlDeviceGetComputeMode`/`nvmlDeviceSetComputeMode`, r580), so the physical
//! handle answers NOT_SUPPORTED. A MIG device has only Default: "[EXCLUSIVE_PROCESS] mode is not
//! supported when the GPU is in MIG mode as we use multiple MPS servers (one per MIG GPU
//! instance)" (MIG User Guide, "CUDA MPS"), so its getter answers DEFAULT and its setter takes
//! DEFAULT and answers NOT_SUPPORTED for any other mode. Neither answer was recorded on
//! hardware (the lent GPUs keep MIG off). A model without compute modes answers NOT_SUPPORTED.

use crate::error::{SimError, SimResult, INVALID_ARGUMENT, NOT_SUPPORTED};
use crate::mig;
use crate::state::{Gpu, State};
use nvml_wrapper_sys::bindings as b;

pub const DEFAULT: u32 = b::nvmlComputeMode_enum_NVML_COMPUTEMODE_DEFAULT;
pub const EXCLUSIVE_THREAD: u32 = b::nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_THREAD;
pub const PROHIBITED: u32 = b::nvmlComputeMode_enum_NVML_COMPUTEMODE_PROHIBITED;
pub const EXCLUSIVE_PROCESS: u32 = b::nvmlComputeMode_enum_NVML_COMPUTEMODE_EXCLUSIVE_PROCESS;

/// nvidia-smi's names, for the CLI and messages.
pub fn name(mode: u32) -> &'static str {
    match mode {
        DEFAULT => "Default",
        EXCLUSIVE_THREAD => "Exclusive_Thread",
        PROHIBITED => "Prohibited",
        EXCLUSIVE_PROCESS => "Exclusive_Process",
        _ => "unknown",
    }
}

fn supported(g: &Gpu) -> SimResult<()> {
    if mig::model_of(g)?.compute_mode.is_none() || g.mig_enabled() {
        return Err(NOT_SUPPORTED.into());
    }
    Ok(())
}

/// What a MIG device handle answers.
pub const MIG_DEVICE: u32 = DEFAULT;

/// `nvmlDeviceSetComputeMode` on a MIG device handle.
pub fn set_mig_device(mode: u32) -> SimResult<()> {
    match mode {
        DEFAULT => Ok(()),
        PROHIBITED | EXCLUSIVE_PROCESS | EXCLUSIVE_THREAD => Err(NOT_SUPPORTED.into()),
        _ => Err(INVALID_ARGUMENT.into()),
    }
}

pub fn get(g: &Gpu) -> SimResult<u32> {
    supported(g)?;
    Ok(g.compute_mode)
}

/// Takes effect at once and leaves running contexts alone (a process that already holds one
/// keeps it), as the driver does.
pub fn set(st: &mut State, gpu: u32, mode: u32) -> SimResult<()> {
    let g = st.gpu_mut(gpu).ok_or(SimError::Nvml(INVALID_ARGUMENT))?;
    supported(g)?;
    match mode {
        DEFAULT | PROHIBITED | EXCLUSIVE_PROCESS => {
            g.compute_mode = mode;
            Ok(())
        }
        // Support for it was removed from the driver.
        EXCLUSIVE_THREAD => Err(NOT_SUPPORTED.into()),
        _ => Err(INVALID_ARGUMENT.into()),
    }
}

/// Whether this process has CAP_SYS_ADMIN in its effective set, as the driver asks of a
/// caller that changes a GPU's settings.
pub fn caller_is_admin() -> bool {
    const CAP_SYS_ADMIN: u32 = 21;
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("CapEff:"))
                .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        })
        .is_some_and(|eff| eff & (1 << CAP_SYS_ADMIN) != 0)
}

/// Whether process `pid` may open a context on the whole GPU `g`, as CUDA's context creation
/// decides it: in EXCLUSIVE_PROCESS only while no other process holds one, in PROHIBITED never.
/// Err carries CUDA's answer.
pub fn may_open_context(st: &State, g: &Gpu, pid: u32) -> Result<(), String> {
    const BUSY: &str = "all CUDA-capable devices are busy or unavailable";
    match g.compute_mode {
        PROHIBITED => Err(format!("{BUSY} (GPU {} is Prohibited)", g.index)),
        EXCLUSIVE_PROCESS => match st.processes_on(&g.uuid).find(|p| p.pid != pid) {
            Some(p) => Err(format!(
                "{BUSY} (GPU {} is Exclusive_Process and process {} holds its context)",
                g.index, p.pid
            )),
            None => Ok(()),
        },
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::state::Process;

    #[test]
    fn set_and_get() {
        let mut st = State::one_gpu("h100-80gb", false);
        set(&mut st, 0, EXCLUSIVE_PROCESS).unwrap();
        assert_eq!(get(&st.gpus[0]).unwrap(), EXCLUSIVE_PROCESS);
        assert_eq!(
            set(&mut st, 0, EXCLUSIVE_THREAD).unwrap_err().code(),
            NOT_SUPPORTED
        );
        assert_eq!(set(&mut st, 0, 4).unwrap_err().code(), INVALID_ARGUMENT);
        assert_eq!(
            set(&mut st, 1, DEFAULT).unwrap_err().code(),
            INVALID_ARGUMENT
        );
        assert_eq!(
            get(&st.gpus[0]).unwrap(),
            EXCLUSIVE_PROCESS,
            "refusals change nothing"
        );
    }

    #[test]
    fn mig_enabled_gpu_has_no_compute_mode_on_its_physical_handle() {
        let mut st = State::one_gpu("h100-80gb", true);
        assert_eq!(get(&st.gpus[0]).unwrap_err().code(), NOT_SUPPORTED);
        assert_eq!(
            set(&mut st, 0, EXCLUSIVE_PROCESS).unwrap_err().code(),
            NOT_SUPPORTED
        );
    }

    #[test]
    fn a_mig_device_has_only_default() {
        assert_eq!(MIG_DEVICE, DEFAULT);
        set_mig_device(DEFAULT).unwrap();
        for m in [EXCLUSIVE_PROCESS, PROHIBITED, EXCLUSIVE_THREAD] {
            assert_eq!(set_mig_device(m).unwrap_err().code(), NOT_SUPPORTED, "{m}");
        }
        assert_eq!(set_mig_device(9).unwrap_err().code(), INVALID_ARGUMENT);
    }

    #[test]
    fn exclusive_process_admits_one_context() {
        let mut st = State::one_gpu("h100-80gb", false);
        st.processes.push(Process {
            pid: 7,
            uuid: "GPU-test".into(),
            used_memory: 0,
        });
        let g = st.gpus[0].clone();
        assert!(may_open_context(&st, &g, 8).is_ok(), "Default shares");
        st.gpus[0].compute_mode = EXCLUSIVE_PROCESS;
        let g = st.gpus[0].clone();
        assert!(may_open_context(&st, &g, 7).is_ok(), "the holder itself");
        let err = may_open_context(&st, &g, 8).unwrap_err();
        assert!(
            err.contains("busy or unavailable") && err.contains("process 7"),
            "{err}"
        );
        st.gpus[0].compute_mode = PROHIBITED;
        let g = st.gpus[0].clone();
        assert!(may_open_context(&st, &g, 7).is_err());
    }
}
