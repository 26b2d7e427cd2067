//! The node's GPUs as every kind of grant sees them (a MIG slice, an MPS share, a whole GPU):
//! the ledger's cache of NVML's GPU list, a `gpu.device` selector's choice among it, and the
//! errors all three kinds share ([`GpuError`]), which each kind's own error wraps.

use crate::driver::DriverError;
use crate::gpu::{BackendError, Gpu, GpuInfo};
use crate::ledger::{GpuRecord, LedgerError, LedgerState};
use crate::request::DeviceSelector;

/// What every kind of grant can meet before it looks at its own kind of room.
#[derive(Debug, thiserror::Error)]
pub enum GpuError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error("NVML reports no GPU on this node")]
    NoGpu,
    #[error("gpu.device={selector}: no such GPU; this node has {count} GPU(s): {known}")]
    NoSuchDevice {
        selector: String,
        count: usize,
        known: String,
    },
}

impl GpuError {
    /// A stable label, for `errors_total{kind=...}`.
    pub fn kind(&self) -> &'static str {
        match self {
            GpuError::Ledger(_) => "ledger",
            GpuError::Backend(_) => "nvml",
            GpuError::Driver(_) => "driver",
            GpuError::NoGpu => "no_gpu",
            GpuError::NoSuchDevice { .. } => "no_such_device",
        }
    }

    /// `device` names none of `gpus` (index, UUID).
    fn no_such_device(device: Option<&DeviceSelector>, gpus: &[(u32, &str)]) -> GpuError {
        GpuError::NoSuchDevice {
            selector: device.map(|d| d.to_string()).unwrap_or_default(),
            count: gpus.len(),
            known: gpus
                .iter()
                .map(|(i, u)| format!("GPU {i} {u}"))
                .collect::<Vec<_>>()
                .join(", "),
        }
    }
}

/// `From` the errors [`GpuError`] wraps, for an error that wraps [`GpuError`] as `Gpu`, so `?`
/// works on a ledger, NVML or driver call in every kind of grant.
macro_rules! from_gpu_errors {
    ($error:ty) => {
        impl From<$crate::ledger::LedgerError> for $error {
            fn from(e: $crate::ledger::LedgerError) -> Self {
                Self::Gpu(e.into())
            }
        }
        impl From<$crate::gpu::BackendError> for $error {
            fn from(e: $crate::gpu::BackendError) -> Self {
                Self::Gpu(e.into())
            }
        }
        impl From<$crate::driver::DriverError> for $error {
            fn from(e: $crate::driver::DriverError) -> Self {
                Self::Gpu(e.into())
            }
        }
    };
}
pub(crate) use from_gpu_errors;

/// Whether `device` (none: any) names the GPU `index` / `uuid`.
pub(crate) fn selects(device: Option<&DeviceSelector>, index: u32, uuid: &str) -> bool {
    match device {
        None => true,
        Some(DeviceSelector::Index(i)) => *i == index,
        Some(DeviceSelector::Uuid(u)) => u.eq_ignore_ascii_case(uuid),
    }
}

/// The GPUs of NVML's list `device` names, or an error listing what exists.
pub(crate) fn select_live<'a>(
    gpus: &'a [GpuInfo],
    device: Option<&DeviceSelector>,
) -> Result<Vec<&'a GpuInfo>, GpuError> {
    if gpus.is_empty() {
        return Err(GpuError::NoGpu);
    }
    let chosen: Vec<&GpuInfo> = gpus
        .iter()
        .filter(|g| selects(device, g.index, &g.uuid))
        .collect();
    if chosen.is_empty() {
        let known: Vec<(u32, &str)> = gpus.iter().map(|g| (g.index, g.uuid.as_str())).collect();
        return Err(GpuError::no_such_device(device, &known));
    }
    Ok(chosen)
}

/// The GPUs of the ledger's cache `device` names, or an error listing what exists.
pub(crate) fn select<'a>(
    st: &'a LedgerState,
    device: Option<&DeviceSelector>,
) -> Result<Vec<&'a GpuRecord>, GpuError> {
    if st.gpus.is_empty() {
        return Err(GpuError::NoGpu);
    }
    let chosen: Vec<&GpuRecord> = st
        .gpus
        .iter()
        .filter(|g| selects(device, g.index, &g.uuid))
        .collect();
    if chosen.is_empty() {
        let known: Vec<(u32, &str)> = st.gpus.iter().map(|g| (g.index, g.uuid.as_str())).collect();
        return Err(GpuError::no_such_device(device, &known));
    }
    Ok(chosen)
}

/// The node's GPUs from the ledger's cache, filled through NVML when empty. Returns whether
/// the cache was used (no NVML).
pub(crate) fn known_gpus(be: &dyn Gpu, st: &mut LedgerState) -> Result<bool, BackendError> {
    if !st.gpus.is_empty() {
        return Ok(true);
    }
    let gpus = be.gpus()?;
    refresh_gpus(be, st, &gpus)?;
    Ok(false)
}

/// Record what NVML says of every GPU in the ledger's cache, so later grants need no NVML.
/// A GPU's profile table is kept from the cache while it is the same GPU.
pub(crate) fn refresh_gpus(
    be: &dyn Gpu,
    st: &mut LedgerState,
    gpus: &[GpuInfo],
) -> Result<(), BackendError> {
    let mut fresh = Vec::with_capacity(gpus.len());
    for g in gpus {
        let cached = st
            .gpus
            .iter()
            .find(|r| r.uuid == g.uuid && !r.profiles.is_empty());
        let profiles = match cached {
            Some(r) => r.profiles.clone(),
            None => be.profiles(g.index)?,
        };
        fresh.push(GpuRecord {
            index: g.index,
            uuid: g.uuid.clone(),
            name: g.name.clone(),
            minor: g.minor,
            profiles,
            memory_total: g.memory_total,
            mig_enabled: g.mig_mode.is_some_and(|(current, _)| current),
        });
    }
    st.gpus = fresh;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_kind_of_grant_names_a_missing_gpu_alike() {
        let info = GpuInfo {
            index: 0,
            uuid: "GPU-a".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            minor: 0,
            memory_total: 0,
            mig_mode: None,
        };
        let st = LedgerState {
            gpus: vec![GpuRecord {
                index: 0,
                uuid: "GPU-a".into(),
                name: info.name.clone(),
                minor: 0,
                profiles: Vec::new(),
                memory_total: 0,
                mig_enabled: false,
            }],
            ..LedgerState::default()
        };
        let three = DeviceSelector::Index(3);
        // The MIG allocator selects from NVML's list, MPS and time-slicing from the cache.
        let live = select_live(std::slice::from_ref(&info), Some(&three)).unwrap_err();
        let cached = select(&st, Some(&three)).unwrap_err();
        assert_eq!(live.to_string(), cached.to_string());
        assert_eq!(
            live.to_string(),
            "gpu.device=3: no such GPU; this node has 1 GPU(s): GPU 0 GPU-a"
        );
        assert!(matches!(
            select(&LedgerState::default(), None),
            Err(GpuError::NoGpu)
        ));
        assert!(matches!(select_live(&[], None), Err(GpuError::NoGpu)));
        let upper = DeviceSelector::Uuid("gpu-A".into());
        assert_eq!(
            select(&st, Some(&upper)).unwrap().len(),
            1,
            "UUIDs match in any case"
        );
    }
}
