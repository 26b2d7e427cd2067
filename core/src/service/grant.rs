//! From a spec to the edit that gives the container what it asked for: the one place the full
//! wrapper's `create` and the Podman precreate hook (module `precreate`) read a request
//! ([`wanted`]), check it against the node's trust policy, turn it into GPU access ([`grant`])
//! and write that into the spec ([`into_spec`]).

use crate::allocator::{self, AllocError};
use crate::config::Config;
use crate::driver::{Driver, DriverError, Majors};
use crate::inject::{self, InjectError};
use crate::kube::{self, KubeError};
use crate::ledger::Claimant;
use crate::mps::{self, MpsError};
use crate::mps_mig::{self, MpsMigError};
use crate::request::{self, Request, RequestError};
use crate::share::{self, ShareError};
use crate::spec::{self, Edit, Hook, SpecError};
use crate::strict_json::StrictJsonError;
use crate::trust;
use serde_json::Value;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum GrantError {
    #[error(transparent)]
    Mig(#[from] AllocError),
    #[error(transparent)]
    Mps(#[from] MpsError),
    #[error(transparent)]
    MpsMig(#[from] MpsMigError),
    #[error(transparent)]
    Share(#[from] ShareError),
    #[error(transparent)]
    Driver(#[from] DriverError),
    #[error(transparent)]
    Inject(#[from] InjectError),
    #[error(
        "{path} mentions a GPU request (gpu.* or GPUSHARE_*) but cannot be read as one: {source}"
    )]
    Unreadable {
        path: String,
        source: StrictJsonError,
    },
    #[error(transparent)]
    Request(#[from] RequestError),
    #[error(transparent)]
    Kube(#[from] KubeError),
    #[error("this node refuses GPU requests from privileged containers (policy.refuse_privileged), and this one is privileged: {why}")]
    Privileged { why: String },
    #[error("the spec already lets the container open NVIDIA devices beyond the slice gpushare grants: {entry}; with it a container could reach another tenant's GPU or slice, so the request is refused (an operator who trusts such specs sets policy.allow_foreign_devices = true)")]
    ForeignDevices { entry: String },
    #[error(transparent)]
    Spec(#[from] SpecError),
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
    let mut granted = take(cfg, req, None, who)?;
    granted.edit.poststop = Some(poststop);
    Ok(granted)
}

/// Take `req` for a DRA claim's device (`who` a claim's lease id, see
/// [`crate::ledger::Owner`]) and build the edit its CDI spec carries: the same device nodes,
/// env and driver mounts a container's spec gets, without the release hook (the kubelet's
/// unprepare releases a claim). `mig_start`: the MIG placement the scheduler allocated (the
/// request then names the GPU by index). Asked again for the same holder, it grants nothing
/// and returns the same edit. On an error nothing stays held.
pub fn for_claim(
    cfg: &Config,
    req: &Request,
    mig_start: Option<u32>,
    who: &Claimant<'_>,
) -> Result<Granted, GrantError> {
    take(cfg, req, mig_start, who)
}

fn take(
    cfg: &Config,
    req: &Request,
    mig_start: Option<u32>,
    who: &Claimant<'_>,
) -> Result<Granted, GrantError> {
    let mut granted = match req {
        Request::Mig { profile, device } => {
            let g = match (mig_start, device) {
                (Some(start), Some(crate::request::DeviceSelector::Index(gpu))) => {
                    allocator::allocate_at(cfg, profile, *gpu, start, who)?
                }
                _ => allocator::allocate(cfg, profile, device.as_ref(), who)?,
            };
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
        Request::MpsInMig {
            profile,
            percent,
            memory,
            device,
        } => {
            let g = mps_mig::grant(cfg, profile, *percent, *memory, device.as_ref(), who)?;
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
    Ok(granted)
}

/// A spec that mentions a request (its bytes passed [`request::may_contain_request`]), read
/// strictly: one that cannot be read (not JSON, or not read the same by runc) is refused, not
/// run without the GPU it may ask for. `path` names it in the refusal.
pub fn parse_spec(raw: &[u8], path: &Path) -> Result<Value, GrantError> {
    crate::strict_json::from_slice(raw).map_err(|source| GrantError::Unreadable {
        path: path.display().to_string(),
        source,
    })
}

/// What the spec asks for, if anything, and whether this node serves it. Shared by the
/// wrapper's `create` and the Podman precreate hook so that both read a spec the same way.
pub fn wanted(cfg: &Config, spec: &Value) -> Result<Option<Request>, GrantError> {
    if kube::is_sandbox(spec) || !kube::selected(spec)? {
        return Ok(None);
    }
    let req = request::from_spec(spec, cfg.policy.allow_env)?;
    if req.is_some() && cfg.policy.refuse_privileged {
        let majors = Driver::new(cfg).majors()?;
        if let Some(why) = trust::privileged(spec, &majors) {
            return Err(GrantError::Privileged { why });
        }
    }
    Ok(req)
}

/// Grant `req` to `who` and write the grant (nodes, allow rules, env, mounts, release hook)
/// into `spec` in memory. On an error nothing stays held and `spec` must not be used. Shared
/// by the wrapper's `create` and the Podman precreate hook.
pub fn into_spec(
    cfg: &Config,
    spec: &mut Value,
    spec_path: &Path,
    req: &Request,
    who: &Claimant<'_>,
) -> Result<Granted, GrantError> {
    devices_allowed(cfg, spec, who.container_id)?;
    let granted = grant(cfg, req, who, crate::hook::poststop_hook(cfg))?;
    if let Err(e) = spec::apply(spec, &granted.edit, spec_path) {
        if granted.fresh {
            return Err(release_after(cfg, who, e.into()));
        }
        return Err(e.into());
    }
    // Only a precreate grant's own claim may name the lease the release hook frees.
    if let Some(ann) = spec.get_mut("annotations").and_then(|a| a.as_object_mut()) {
        ann.remove(crate::hook::LEASE_ANNOTATION);
    }
    Ok(granted)
}

/// The trust policy on the driver's nodes the spec already lets the container open, before
/// anything is granted to `holder`: none beyond what gpushare grants (and what `holder`
/// already holds, when an engine retries a create on the spec gpushare edited).
fn devices_allowed(cfg: &Config, spec: &Value, holder: &str) -> Result<(), GrantError> {
    if cfg.policy.allow_foreign_devices || !trust::carries_devices(spec) {
        return Ok(());
    }
    let majors = Driver::new(cfg).majors()?;
    if trust::foreign_devices(spec, &majors, &[]).is_none() {
        return Ok(());
    }
    let own = held_nodes(cfg, &majors, holder);
    match trust::foreign_devices(spec, &majors, &own) {
        None => Ok(()),
        Some(entry) => Err(GrantError::ForeignDevices { entry }),
    }
}

/// The (major, minor) of the driver's nodes `holder`'s current lease gives it, if it has one.
fn held_nodes(cfg: &Config, m: &Majors, holder: &str) -> Vec<(u32, u32)> {
    let Ok(st) = crate::ledger::snapshot(&cfg.state_dir) else {
        return Vec::new();
    };
    let mut own = Vec::new();
    if let Some(r) = st.lease_of(holder).map(|i| &st.instances[i]) {
        own.push((m.nvidia, r.gpu_minor));
        if let Some(made) = &r.made {
            own.extend([(m.caps, made.gi_cap_minor), (m.caps, made.ci_cap_minor)]);
        }
    }
    let whole = st
        .shares
        .iter()
        .filter(|s| s.lease.container_id == holder)
        .map(|s| s.gpu_minor)
        .chain(
            st.mps
                .iter()
                .filter(|d| d.clients.iter().any(|c| c.lease.container_id == holder))
                .map(|d| d.gpu_minor),
        );
    own.extend(whole.map(|minor| (m.nvidia, minor)));
    let slices = st
        .mps
        .iter()
        .filter(|d| d.clients.iter().any(|c| c.lease.container_id == holder))
        .filter_map(|d| d.mig.as_ref());
    for h in slices {
        own.extend([(m.caps, h.gi_cap_minor), (m.caps, h.ci_cap_minor)]);
    }
    own
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_a_spec_are_typed_and_keep_their_words() {
        let cfg = Config::default();
        let outside_a_pod =
            serde_json::json!({"annotations": {"gpu.containers": "a", "gpu.profile": "1g.10gb"}});
        let err = wanted(&cfg, &outside_a_pod).unwrap_err();
        assert!(
            matches!(err, GrantError::Kube(KubeError::NoPodName { .. })),
            "{err:?}"
        );
        assert!(
            err.to_string().contains("has no pod container name"),
            "{err}"
        );
        let bad = serde_json::json!({"annotations": {"gpu.profile": "0g.1gb"}});
        let err = wanted(&cfg, &bad).unwrap_err();
        assert!(matches!(err, GrantError::Request(_)), "{err:?}");
        assert!(
            err.to_string()
                .starts_with("annotation gpu.profile=\"0g.1gb\" is not valid"),
            "{err}"
        );
        let twice = br#"{"annotations":{"gpu.profile":"1g.10gb","gpu.profile":"2g.20gb"}}"#;
        let err = parse_spec(twice, Path::new("/b/config.json")).unwrap_err();
        assert!(
            err.to_string().starts_with(
                "/b/config.json mentions a GPU request (gpu.* or GPUSHARE_*) but cannot be read as one: "
            ),
            "{err}"
        );
    }
}
