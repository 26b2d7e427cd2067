//! What an allocated device is granted as: its published name (core's
//! [`gpushare_core::dra_name`], the one parser of those names) read back into the request core's
//! grant understands, with the exact MIG placement the scheduler chose.

use gpushare_core::config::Config;
use gpushare_core::dra_name::{DeviceName, DraNameError};
use gpushare_core::gpu::{BackendError, Gpu};
use gpushare_core::request::{DeviceSelector, Request};
use k8s_openapi::api::resource::v1::DeviceRequestAllocationResult;

/// The consumable capacity (KEP-5075) an MPS device's allocation consumes: percent of the
/// GPU's SMs, as the ResourceSlices publish it for `gpu<i>-mps` (dra/src/slices.rs). The
/// scheduler records it under the device's own capacity name; the qualified form
/// (`gpu.gpushare.dev/smPercent`, as a claim's request names it) is read too.
pub const MPS_CAPACITY: &str = "smPercent";

#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    #[error(transparent)]
    Name(#[from] DraNameError),
    #[error("device {device}: GPU {gpu} has no MIG profile of that name (its profiles: {known}); the node's ResourceSlices are out of date or another node's")]
    UnknownProfile {
        device: String,
        gpu: u32,
        known: String,
    },
    #[error("device {device}: cannot read GPU {gpu}'s MIG profiles: {source}")]
    Profiles {
        device: String,
        gpu: u32,
        source: BackendError,
    },
    #[error("device {device}: the allocation consumes no {MPS_CAPACITY:?} capacity, or one that is not a percentage from 1 to 100 ({found}); the claim must ask for a share of the GPU's SMs")]
    MpsCapacity { device: String, found: String },
}

/// What to grant for one allocated device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub request: Request,
    /// For a MIG device: the placement's first memory slot.
    pub mig_start: Option<u32>,
}

/// The grant for `result` (a result of this driver). `mps_shares`: how many counted MPS shares
/// each GPU is published as, where the cluster has no consumable capacity (each is
/// `100 / mps_shares` percent of the SMs, at most `policy.max_mps_percent`).
pub fn wanted(
    cfg: &Config,
    result: &DeviceRequestAllocationResult,
    mps_shares: u32,
) -> Result<Wanted, DeviceError> {
    let name: DeviceName = result.device.parse()?;
    let device = Some(DeviceSelector::Index(name.gpu()));
    let request = match &name {
        DeviceName::Mig { gpu, start, .. } => {
            let profiles = profiles(cfg, *gpu).map_err(|source| DeviceError::Profiles {
                device: result.device.clone(),
                gpu: *gpu,
                source,
            })?;
            let Some(p) = name.profile(&profiles) else {
                return Err(DeviceError::UnknownProfile {
                    device: result.device.clone(),
                    gpu: *gpu,
                    known: profiles
                        .iter()
                        .map(|p| p.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                });
            };
            return Ok(Wanted {
                request: Request::Mig {
                    profile: p.name.clone(),
                    device,
                },
                mig_start: Some(*start),
            });
        }
        DeviceName::Whole { .. } => Request::TimeSlice { device },
        DeviceName::Mps { .. } => Request::Mps {
            percent: consumed_percent(result)?,
            memory: None,
            device,
        },
        DeviceName::MpsShare { .. } => Request::Mps {
            // As the slices publish it: never above the node's MPS ceiling.
            percent: u8::try_from(100 / mps_shares.clamp(1, 100))
                .expect("at most 100")
                .min(cfg.policy.max_mps_percent),
            memory: None,
            device,
        },
    };
    Ok(Wanted {
        request,
        mig_start: None,
    })
}

/// The share of SMs an allocation of a consumable MPS device takes.
fn consumed_percent(result: &DeviceRequestAllocationResult) -> Result<u8, DeviceError> {
    let qualified = format!("{}/{MPS_CAPACITY}", crate::DRIVER);
    let q = result
        .consumed_capacity
        .as_ref()
        .and_then(|c| c.get(MPS_CAPACITY).or_else(|| c.get(&qualified)));
    let found = q.map_or_else(|| "none".to_string(), |q| q.0.clone());
    q.and_then(|q| q.0.parse::<u8>().ok())
        .filter(|p| (1..=100).contains(p))
        .ok_or(DeviceError::MpsCapacity {
            device: result.device.clone(),
            found,
        })
}

/// GPU `gpu`'s MIG profiles: from the ledger when gpushare has seen the GPU (no NVML), else
/// from NVML.
fn profiles(
    cfg: &Config,
    gpu: u32,
) -> Result<Vec<gpushare_core::placement::Profile>, BackendError> {
    if let Ok(st) = gpushare_core::ledger::snapshot(&cfg.state_dir) {
        if let Some(g) = st
            .gpus
            .iter()
            .find(|g| g.index == gpu && !g.profiles.is_empty())
        {
            return Ok(g.profiles.clone());
        }
    }
    gpushare_core::nvml::OnDemand::new(cfg).profiles(gpu)
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::api::resource::Quantity;

    fn result(device: &str, consumed: &[(&str, &str)]) -> DeviceRequestAllocationResult {
        DeviceRequestAllocationResult {
            request: "gpu".into(),
            driver: crate::DRIVER.into(),
            pool: "node-a".into(),
            device: device.into(),
            consumed_capacity: (!consumed.is_empty()).then(|| {
                consumed
                    .iter()
                    .map(|(k, v)| (k.to_string(), Quantity(v.to_string())))
                    .collect()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn whole_gpus_and_mps_shares_read_from_their_names_and_capacity() {
        let cfg = Config::default();
        let on = |gpu| Some(DeviceSelector::Index(gpu));
        assert_eq!(
            wanted(&cfg, &result("gpu2-whole", &[]), 4).unwrap().request,
            Request::TimeSlice { device: on(2) }
        );
        let counted = wanted(&cfg, &result("gpu1-mps-3", &[]), 3).unwrap();
        assert_eq!(
            counted.request,
            Request::Mps {
                percent: 33,
                memory: None,
                device: on(1)
            }
        );
        let capped = Config {
            policy: gpushare_core::config::PolicyConfig {
                max_mps_percent: 20,
                ..Config::default().policy
            },
            ..Config::default()
        };
        let Request::Mps { percent, .. } = wanted(&capped, &result("gpu1-mps-0", &[]), 2)
            .unwrap()
            .request
        else {
            panic!("an MPS share")
        };
        assert_eq!(percent, 20);
        for key in [MPS_CAPACITY, "gpu.gpushare.dev/smPercent"] {
            let w = wanted(&cfg, &result("gpu0-mps", &[(key, "40")]), 4).unwrap();
            assert!(
                matches!(w.request, Request::Mps { percent: 40, .. }),
                "{w:?}"
            );
        }
        for bad in [&[][..], &[("smPercent", "0")], &[("smPercent", "1Gi")]] {
            let err = wanted(&cfg, &result("gpu0-mps", bad), 4).unwrap_err();
            assert!(
                err.to_string().starts_with(
                    "device gpu0-mps: the allocation consumes no \"smPercent\" capacity"
                ),
                "{err}"
            );
        }
        let err = wanted(&cfg, &result("gpu0-7g", &[]), 4).unwrap_err();
        assert!(matches!(err, DeviceError::Name(_)), "{err:?}");
    }
}
