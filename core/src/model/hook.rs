//! The OCI hooks gpushare writes into GPU containers' specs, and what they read. `poststop`
//! releases the container's slice; `bind` is the `createRuntime` hook of a Podman precreate
//! grant (module `precreate`). Both run as `gpushare-hook` (bin/gpushare-hook/), which reads
//! the OCI state on stdin and hands it to the functions here.
//!
//! A precreate hook runs before the container has an id, so its grant is leased to a random
//! claim, recorded in the spec as the `gpushare.lease` annotation. The grant also adds a
//! `createRuntime` hook (`gpushare-hook bind`) to the spec: run by the runtime for this very
//! container, with its id on stdin, it moves the lease from the claim to the container id. From
//! then on only that container's poststop releases it: `poststop` releases the id in the OCI
//! state, never a claim an annotation names, since any container can carry any annotation and a
//! claim is shown by `status` and `podman inspect` (issue 16, finding 9).

use crate::config::Config;
use crate::spec::Hook;
use serde_json::Value;
use std::io::Read;

/// The annotation naming a precreate grant's lease.
pub const LEASE_ANNOTATION: &str = "gpushare.lease";
const CLAIM_PREFIX: &str = "precreate-";

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("the container state on stdin is not valid: {0}")]
    State(#[source] serde_json::Error),
    #[error("the container state on stdin is not valid: no `id`")]
    NoId,
    #[error(
        "the container state on stdin is not valid: `id` is empty, too long or has control characters"
    )]
    BadId,
    #[error("cannot make a lease claim: {0}")]
    Random(#[source] std::io::Error),
}

/// A claim is unguessable (128 random bits): it is all that ties a released container to its
/// lease, and only someone who can already read the container's spec can learn it.
fn is_claim(s: &str) -> bool {
    s.strip_prefix(CLAIM_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

/// A fresh claim for a precreate grant's lease.
pub fn new_claim() -> Result<String, HookError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(HookError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{CLAIM_PREFIX}{hex}"))
}

/// The well-formed claim a spec's or a state's annotations name, if any.
pub fn claim_in(annotations: Option<&Value>) -> Option<&str> {
    annotations
        .and_then(|a| a.get(LEASE_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|c| is_claim(c))
}

fn state_json(state: &[u8]) -> Result<Value, HookError> {
    serde_json::from_slice(state).map_err(HookError::State)
}

/// The container id from an OCI state document.
pub fn container_id(state: &[u8]) -> Result<String, HookError> {
    let v = state_json(state)?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .ok_or(HookError::NoId)?;
    if id.is_empty() || id.len() > 1024 || id.chars().any(char::is_control) {
        return Err(HookError::BadId);
    }
    Ok(id.to_string())
}

/// The precreate claim an OCI state document's annotations name, if any.
pub fn claim(state: &[u8]) -> Result<Option<String>, HookError> {
    let v = state_json(state)?;
    Ok(claim_in(v.get("annotations")).map(str::to_string))
}

/// The lease a stopped container held: a precreate grant's claim, else the container id.
pub fn lease_key(state: &[u8]) -> Result<String, HookError> {
    let id = container_id(state)?;
    Ok(claim(state)?.unwrap_or(id))
}

/// The release hook, with an explicit minimal env (never the container's).
pub fn poststop_hook(cfg: &Config) -> Hook {
    let path = cfg.hook_path();
    let mut args = vec!["gpushare-hook".to_string(), "poststop".to_string()];
    if let Some(src) = &cfg.source {
        args.push("--config".into());
        args.push(src.display().to_string());
    }
    Hook {
        path: path.display().to_string(),
        args,
        env: vec!["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into()],
        timeout: Some(30),
    }
}

/// The `bind` hook, run by the runtime at `createRuntime`, with the same minimal env as the
/// release hook.
pub fn bind_hook(cfg: &Config) -> Value {
    let mut hook = poststop_hook(cfg);
    hook.args[1] = "bind".into();
    crate::spec::hook_json(&hook)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_of_a_runc_state() {
        let s = include_bytes!("../../../fixtures/state/runc.json");
        assert_eq!(container_id(s).unwrap(), "c1");
    }

    #[test]
    fn a_precreate_claim_names_the_lease_and_a_bad_one_is_ignored() {
        let claim = new_claim().unwrap();
        assert!(is_claim(&claim), "{claim}");
        let s = format!(r#"{{"id":"c1","annotations":{{"gpushare.lease":"{claim}"}}}}"#);
        assert_eq!(lease_key(s.as_bytes()).unwrap(), claim);
        for bad in [
            "c2",
            "precreate-",
            "precreate-XYZ",
            "precreate-0123456789abcdef0123456789ABCDEF",
        ] {
            let s = format!(r#"{{"id":"c1","annotations":{{"gpushare.lease":"{bad}"}}}}"#);
            assert_eq!(lease_key(s.as_bytes()).unwrap(), "c1", "{bad}");
        }
        assert_ne!(new_claim().unwrap(), claim);
    }

    #[test]
    fn rejects_bad_states() {
        for bad in [
            &b"not json"[..],
            br#"{"status":"stopped"}"#,
            br#"{"id":""}"#,
            br#"{"id":"a\nb"}"#,
        ] {
            assert!(container_id(bad).is_err());
        }
    }
}
