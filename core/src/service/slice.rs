//! A MIG slice granted to a container ([`Grant`]) and its spec edit, and the warm pick of an
//! idle one: what the allocator grants and the offers file prepares, with no NVML.

use crate::config::Config;
use crate::driver;
use crate::gpus::selects;
use crate::ledger::{InstanceRecord, LedgerState, Made};
use crate::request::DeviceSelector;
use crate::spec::{Edit, Hook};

/// A slice granted to a container: what its spec needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub gpu_index: u32,
    pub gpu_uuid: String,
    pub gpu_minor: u32,
    pub profile: String,
    pub gi: u32,
    pub ci: u32,
    pub mig_uuid: String,
    pub gi_cap_minor: u32,
    pub ci_cap_minor: u32,
    /// Served from the idle pool (no NVML).
    pub warm: bool,
    /// Taken by this call (false: the container already held it).
    pub fresh: bool,
}

impl Grant {
    pub(crate) fn from_record(r: &InstanceRecord, m: &Made, warm: bool, fresh: bool) -> Grant {
        Grant {
            gpu_index: r.gpu_index,
            gpu_uuid: r.gpu_uuid.clone(),
            gpu_minor: r.gpu_minor,
            profile: r.profile.clone(),
            gi: m.gi,
            ci: m.ci,
            mig_uuid: m.mig_uuid.clone(),
            gi_cap_minor: m.gi_cap_minor,
            ci_cap_minor: m.ci_cap_minor,
            warm,
            fresh,
        }
    }

    /// The spec edit for this grant: the GPU's shared nodes, its own two capability nodes and
    /// no other, the MIG UUID in env, and the release hook.
    pub fn edit(&self, majors: &driver::Majors, poststop: Option<Hook>) -> Edit {
        let mut devices = driver::gpu_nodes(majors, self.gpu_minor);
        devices.extend(driver::cap_nodes(
            majors,
            self.gi_cap_minor,
            self.ci_cap_minor,
        ));
        Edit {
            devices,
            env: vec![
                ("CUDA_VISIBLE_DEVICES".into(), self.mig_uuid.clone()),
                ("NVIDIA_VISIBLE_DEVICES".into(), self.mig_uuid.clone()),
            ],
            poststop,
            ..Edit::default()
        }
    }
}

/// Pool-aware: an idle instance is reused only where it sits at a best placement for its GPU's
/// busy occupancy (from the ledger and the cached policy table; no NVML, no solving).
pub(crate) fn pick_idle(
    cfg: &Config,
    st: &LedgerState,
    profile: &str,
    device: Option<&DeviceSelector>,
) -> Option<usize> {
    crate::policy::node::warm_pick(cfg, st, profile, |r| {
        selects(device, r.gpu_index, &r.gpu_uuid)
    })
}
