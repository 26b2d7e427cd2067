//! `gpushare-hook`: OCI hooks. `poststop` reads the container state from stdin and releases
//! the container's slice, waiting for the ledger only a bounded time.

use crate::allocator;
use crate::config::Config;
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// The most of stdin read: a state document is small, and stdin is not trusted to end.
const MAX_STATE: u64 = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum HookError {
    #[error("cannot read the container state on stdin: {0}")]
    Stdin(std::io::Error),
    #[error("the container state on stdin is not valid: {0}")]
    State(String),
    #[error(transparent)]
    Config(#[from] crate::config::ConfigError),
    #[error(transparent)]
    Alloc(#[from] allocator::AllocError),
}

/// The container id from an OCI state document.
pub fn container_id(state: &[u8]) -> Result<String, HookError> {
    let v: serde_json::Value =
        serde_json::from_slice(state).map_err(|e| HookError::State(e.to_string()))?;
    let id = v
        .get("id")
        .and_then(|i| i.as_str())
        .ok_or_else(|| HookError::State("no `id`".into()))?;
    if id.is_empty() || id.len() > 1024 || id.chars().any(char::is_control) {
        return Err(HookError::State(
            "`id` is empty, too long or has control characters".into(),
        ));
    }
    Ok(id.to_string())
}

pub fn poststop(config: Option<&Path>, stdin: impl Read) -> Result<bool, HookError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STATE)
        .read_to_end(&mut buf)
        .map_err(HookError::Stdin)?;
    let id = container_id(&buf)?;
    let cfg = Config::load(config)?;
    Ok(allocator::release(
        &cfg,
        &id,
        Duration::from_millis(cfg.pool.hook_lock_timeout_ms),
    )?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_the_id_of_a_runc_state() {
        let s = br#"{"ociVersion":"1.0.2","id":"c1","status":"stopped","pid":0,"bundle":"/b","annotations":{"gpu.profile":"1g.10gb"}}"#;
        assert_eq!(container_id(s).unwrap(), "c1");
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
