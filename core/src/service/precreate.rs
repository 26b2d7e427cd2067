//! A Podman precreate grant (oci-hooks(5), for users who install only the hooks, no
//! `--runtime gpushare`): the spec's request is granted exactly as the wrapper's `create`
//! grants it, leased to a random claim until the container's `createRuntime` hook ([`bind`])
//! moves the lease to the container id. What ties the two (the claim, the hooks) is in [`hook`].

use crate::allocator::AllocError;
use crate::config::Config;
use crate::grant::{self, GrantError};
use crate::hook::{self, HookError, LEASE_ANNOTATION};
use crate::ledger::Claimant;
use crate::ledger::{Lease, Ledger};
use serde_json::Value;
use std::path::Path;
use std::time::Duration;

/// How the spec on the hook's stdin is named in refusals.
const SPEC_NAME: &str = "the spec on stdin";

#[derive(Debug, thiserror::Error)]
pub enum PrecreateError {
    #[error("the spec on stdin is not valid: not a JSON object")]
    NotObject,
    #[error(transparent)]
    Grant(#[from] GrantError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// True when the precreate hook already granted this spec its slice (the claim it wrote is
/// leased): the wrapper must not grant a second one.
pub fn granted(cfg: &Config, spec: &Value) -> bool {
    let Some(claim) = hook::claim_in(spec.get("annotations")) else {
        return false;
    };
    crate::ledger::snapshot(&cfg.state_dir).is_ok_and(|st| st.lease_of(claim).is_some())
}

/// The spec the hook read, when it may carry a request; None when it certainly carries none
/// (the spec then goes on byte for byte as it came in). Reads no config.
pub fn parse(raw: &[u8]) -> Result<Option<Value>, PrecreateError> {
    if !crate::request::may_contain_request(raw) {
        return Ok(None);
    }
    let spec = grant::parse_spec(raw, Path::new(SPEC_NAME))?;
    if !spec.is_object() {
        return Err(PrecreateError::NotObject);
    }
    Ok(Some(spec))
}

/// Grant the request of `spec` (a JSON object, from [`parse`]) to a new claim and write the
/// grant, the claim's annotation and the `bind` hook into it. Returns the claim, or None when
/// the spec asks for nothing here (or was granted already) and goes on unchanged.
pub fn grant(cfg: &Config, spec: &mut Value) -> Result<Option<String>, PrecreateError> {
    if granted(cfg, spec) {
        return Ok(None);
    }
    let Some(req) = grant::wanted(cfg, spec)? else {
        return Ok(None);
    };
    let claim = hook::new_claim()?;
    let who = Claimant {
        container_id: &claim,
        // No runtime state names a claim: only the release hook (or an operator) frees it.
        runtime_root: None,
    };
    grant::into_spec(cfg, spec, Path::new(SPEC_NAME), &req, &who)?;
    let root = spec.as_object_mut().ok_or(PrecreateError::NotObject)?;
    let ann = root
        .entry("annotations")
        .or_insert_with(|| Value::Object(Default::default()));
    if !ann.is_object() {
        *ann = Value::Object(Default::default());
    }
    ann[LEASE_ANNOTATION] = Value::String(claim.clone());
    let hooks = root
        .entry("hooks")
        .or_insert_with(|| Value::Object(Default::default()));
    if let Some(hooks) = hooks.as_object_mut() {
        let stage = hooks
            .entry("createRuntime")
            .or_insert_with(|| Value::Array(Vec::new()));
        if !stage.is_array() {
            *stage = Value::Array(Vec::new());
        }
        if let Some(stage) = stage.as_array_mut() {
            stage.insert(0, hook::bind_hook(cfg));
        }
    }
    Ok(Some(claim))
}

/// The `createRuntime` hook a precreate grant adds to its spec: the runtime runs it for that
/// container alone, so `claim` (from its state's annotations) is the one precreate made for it,
/// and the lease moves from the claim to the container `id`. Returns whether a lease moved.
pub fn bind(cfg: &Config, claim: &str, id: &str) -> Result<bool, PrecreateError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger
        .lock(Duration::from_millis(cfg.pool.hook_lock_timeout_ms))
        .map_err(AllocError::from)?;
    let mut st = locked.load().map_err(AllocError::from)?;
    let mut moved = false;
    let mut rename = |l: &mut Lease| {
        if l.container_id == claim {
            l.container_id = id.to_string();
            moved = true;
        }
    };
    st.instances
        .iter_mut()
        .filter_map(|r| r.lease.as_mut())
        .for_each(&mut rename);
    st.shares.iter_mut().for_each(|s| rename(&mut s.lease));
    st.mps
        .iter_mut()
        .flat_map(|d| d.clients.iter_mut())
        .for_each(|c| rename(&mut c.lease));
    if moved || locked.folded() {
        locked.save(&st).map_err(AllocError::from)?;
    }
    Ok(moved)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_request_is_not_parsed() {
        let spec = br#"{"ociVersion":"1.0.2",  "process":{"env":["PATH=/bin"]}}"#;
        assert!(parse(spec).unwrap().is_none());
    }

    #[test]
    fn a_spec_that_mentions_a_request_must_be_an_object() {
        let err = parse(br#"["gpu.profile"]"#).unwrap_err();
        assert_eq!(
            err.to_string(),
            "the spec on stdin is not valid: not a JSON object"
        );
        let err = parse(br#"{"annotations":{"gpu.profile":"1g.10gb""#).unwrap_err();
        assert!(
            err.to_string()
                .starts_with("the spec on stdin mentions a GPU request"),
            "{err}"
        );
    }
}
