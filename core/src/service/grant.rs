//! From a request to the spec edit that gives the container what it asked for: the one place
//! the shim (and the Podman precreate hook) turn a [`Request`] into GPU access.

use crate::allocator::{self, AllocError};
use crate::config::Config;
use crate::driver::{Driver, DriverError};
use crate::inject::{self, InjectError};
use crate::ledger::Claimant;
use crate::mps::{self, MpsError};
use crate::request::Request;
use crate::share::{self, ShareError};
use crate::spec::{Edit, Hook};

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Mig(#[from] AllocError),
    #[error(transparent)]
    Mps(#[from] MpsError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Inject(#[from] InjectError),
}

/// What was granted, for logs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Granted {
    pub edit: Edit,
    /// The MIG or GPU UUID the container sees.
    pub uuid: String,
    /// Served without NVML (warm pool, running MPS daemon, cached GPU list).
    pub warm: bool,
    /// Taken by this call (false: the container already held it, and keeps it if the runtime
    /// then refuses this create).
    pub fresh: bool,
}

/// Take what `req` asks for on behalf of `who` and build the container's edit. On an error
/// after the grant, the grant is released again: nothing is left held.
pub fn grant(
    cfg: &Config,
    req: &Request,
    who: &Claimant<'_>,
    poststop: Hook,
) -> Result<Granted, GrantError> {
    let mut granted = match req {
        Request::Mig { profile, device } => {
            let g = allocator::allocate(cfg, profile, device.as_ref(), who)?;
            let majors = Driver::new(cfg).majors();
            let majors = match majors {
                Ok(m) => m,
                Err(e) if g.fresh => return Err(release_after(cfg, who, e.into())),
                Err(e) => return Err(e.into()),
            };
            Granted {
                edit: g.edit(&majors, None),
                uuid: g.mig_uuid.clone(),
                warm: g.warm,
                fresh: g.fresh,
            }
        }
        Request::Mps {
            percent,
            memory,
            device,
        } => {
            let g = mps::grant(cfg, *percent, *memory, device.as_ref(), who)?;
            Granted {
                uuid: g.gpu_uuid.clone(),
                warm: g.warm,
                fresh: g.fresh,
                edit: g.edit,
            }
        }
        Request::TimeSlice { device } => {
            let g = share::grant(cfg, device.as_ref(), who)?;
            Granted {
                uuid: g.gpu_uuid.clone(),
                warm: g.warm,
                fresh: g.fresh,
                edit: g.edit,
            }
        }
    };
    match inject::driver_edit(cfg) {
        Ok(extra) => granted.edit.extend(extra),
        Err(e) if granted.fresh => return Err(release_after(cfg, who, e.into())),
        Err(e) => return Err(e.into()),
    }
    granted.edit.poststop = Some(poststop);
    Ok(granted)
}

fn release_after(cfg: &Config, who: &Claimant<'_>, err: GrantError) -> GrantError {
    let timeout = std::time::Duration::from_millis(cfg.pool.lock_timeout_ms);
    if let Err(e) = allocator::release(cfg, who.container_id, timeout) {
        tracing::warn!(
            container = who.container_id,
            "release after a failed grant: {e}"
        );
    }
    err
}
