//! `gpushare-hook`: OCI hooks. `poststop` reads the container state from stdin and releases
//! the container's slice, waiting for the ledger only a bounded time. `precreate` is an
//! oci-hooks(5) hook for Podman users who install only the hooks (no `--runtime gpushare`):
//! it reads the spec on stdin, grants exactly as the wrapper's `create` does, and writes the
//! edited spec to stdout.
//!
//! A precreate hook runs before the container has an id, so its grant is leased to a random
//! claim, recorded in the spec as the `gpushare.lease` annotation. The grant also adds a
//! `createRuntime` hook (`gpushare-hook bind`) to the spec: run by the runtime for this very
//! container, with its id on stdin, it moves the lease from the claim to the container id. From
//! then on only that container's poststop releases it: `poststop` releases the id in the OCI
//! state, never a claim an annotation names, since any container can carry any annotation and a
//! claim is shown by `status` and `podman inspect` (issue 16, finding 9).

use crate::allocator;
use crate::config::Config;
use crate::ledger::Claimant;
use crate::shim;
use serde_json::Value;
use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

/// The most of stdin read: a state document is small, and stdin is not trusted to end.
const MAX_STATE: u64 = 1 << 20;
/// The most of a spec read by `precreate`; real specs are a few KiB.
const MAX_SPEC: u64 = 16 << 20;

/// The annotation naming a precreate grant's lease.
pub const LEASE_ANNOTATION: &str = "gpushare.lease";
const CLAIM_PREFIX: &str = "precreate-";

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
    #[error("the spec on stdin is not valid: {0}")]
    Spec(String),
    /// A bad request or a failed grant, in the words the wrapper would use.
    #[error("{0}")]
    Grant(String),
    #[error("cannot write the edited spec: {0}")]
    Stdout(std::io::Error),
    #[error("cannot make a lease claim: {0}")]
    Random(std::io::Error),
}

/// A claim is unguessable (128 random bits): it is all that ties a released container to its
/// lease, and only someone who can already read the container's spec can learn it.
fn is_claim(s: &str) -> bool {
    s.strip_prefix(CLAIM_PREFIX).is_some_and(|hex| {
        hex.len() == 32 && hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
    })
}

fn new_claim() -> Result<String, HookError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(HookError::Random)?;
    let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
    Ok(format!("{CLAIM_PREFIX}{hex}"))
}

fn claim_in(annotations: Option<&Value>) -> Option<&str> {
    annotations
        .and_then(|a| a.get(LEASE_ANNOTATION))
        .and_then(Value::as_str)
        .filter(|c| is_claim(c))
}

/// True when the precreate hook already granted this spec its slice (the claim it wrote is
/// leased): the wrapper must not grant a second one.
pub fn granted_by_precreate(cfg: &Config, spec: &Value) -> bool {
    let Some(claim) = claim_in(spec.get("annotations")) else {
        return false;
    };
    crate::ledger::snapshot(&cfg.state_dir).is_ok_and(|st| st.lease_of(claim).is_some())
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

/// The lease a stopped container held: a precreate grant's claim, else the container id.
pub fn lease_key(state: &[u8]) -> Result<String, HookError> {
    let id = container_id(state)?;
    let v: Value = serde_json::from_slice(state).map_err(|e| HookError::State(e.to_string()))?;
    Ok(claim_in(v.get("annotations")).map_or(id, str::to_string))
}

pub fn poststop(config: Option<&Path>, stdin: impl Read) -> Result<bool, HookError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STATE)
        .read_to_end(&mut buf)
        .map_err(HookError::Stdin)?;
    // The container's own id only: a claim in the annotations is the tenant's word, and a
    // precreate grant's lease was moved to the id by `bind` when this container was created.
    let id = container_id(&buf)?;
    let cfg = Config::load(config)?;
    // Releasing needs only the root-owned state directory, no capability at all; except that
    // putting a GPU's compute mode back (the last MPS share of a GPU) needs CAP_SYS_ADMIN.
    let _ = crate::trust::drop_caps_for_release(crate::compute_mode::may_put_back(&cfg.state_dir));
    crate::logging::init(&cfg, "gpushare-hook");
    let released = allocator::release(
        &cfg,
        &id,
        Duration::from_millis(cfg.pool.hook_lock_timeout_ms),
    )?;
    // The container is gone: its create claim with it, unless a create holds it again.
    crate::claim::remove_after_release(&cfg.state_dir, &id);
    Ok(released)
}

/// The `createRuntime` hook a precreate grant adds to its spec: the runtime runs it for that
/// container alone, so the claim in its state's annotations is the one precreate made for it,
/// and the lease moves from the claim to the container id. Returns whether a lease moved.
pub fn bind(config: Option<&Path>, stdin: impl Read) -> Result<bool, HookError> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STATE)
        .read_to_end(&mut buf)
        .map_err(HookError::Stdin)?;
    let id = container_id(&buf)?;
    let v: Value = serde_json::from_slice(&buf).map_err(|e| HookError::State(e.to_string()))?;
    let Some(claim) = claim_in(v.get("annotations")).map(str::to_string) else {
        return Ok(false);
    };
    let _ = crate::trust::drop_all_caps();
    let cfg = Config::load(config)?;
    crate::logging::init(&cfg, "gpushare-hook");
    let ledger = crate::ledger::Ledger::new(&cfg.state_dir);
    let locked = ledger
        .lock(Duration::from_millis(cfg.pool.hook_lock_timeout_ms))
        .map_err(allocator::AllocError::from)?;
    let mut st = locked.load().map_err(allocator::AllocError::from)?;
    let mut moved = false;
    let mut rename = |l: &mut crate::ledger::Lease| {
        if l.container_id == claim {
            l.container_id = id.clone();
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
        locked.save(&st).map_err(allocator::AllocError::from)?;
    }
    Ok(moved)
}

/// The `bind` hook, run by the runtime at `createRuntime`, with the same minimal env as the
/// release hook.
fn bind_hook(cfg: &Config) -> Value {
    let mut hook = shim::poststop_hook(cfg);
    hook.args[1] = "bind".into();
    crate::spec::hook_json(&hook)
}

/// The oci-hooks(5) precreate stage: the spec on stdin, the spec to use on stdout. A spec with
/// no request (or a sandbox's) goes out byte for byte as it came in.
pub fn precreate(
    config: Option<&Path>,
    stdin: impl Read,
    mut stdout: impl Write,
) -> Result<(), HookError> {
    let mut raw = Vec::new();
    stdin
        .take(MAX_SPEC + 1)
        .read_to_end(&mut raw)
        .map_err(HookError::Stdin)?;
    if raw.len() as u64 > MAX_SPEC {
        return Err(HookError::Spec(format!("larger than {MAX_SPEC} bytes")));
    }
    let pass = |out: &mut dyn Write| {
        out.write_all(&raw)
            .and_then(|()| out.flush())
            .map_err(HookError::Stdout)
    };
    if !crate::request::may_contain_request(&raw) {
        return pass(&mut stdout);
    }
    let mut spec = crate::strict_json::from_slice(&raw)
        .map_err(|e| HookError::Grant(shim::unreadable(Path::new("the spec on stdin"), &e)))?;
    if !spec.is_object() {
        return Err(HookError::Spec("not a JSON object".into()));
    }
    let cfg = Config::load(config)?;
    crate::logging::init(&cfg, "gpushare-hook");
    if granted_by_precreate(&cfg, &spec) {
        return pass(&mut stdout);
    }
    let Some(req) = shim::wanted(&cfg, &spec).map_err(HookError::Grant)? else {
        return pass(&mut stdout);
    };
    let claim = new_claim()?;
    let who = Claimant {
        container_id: &claim,
        // No runtime state names a claim: only the release hook (or an operator) frees it.
        runtime_root: None,
    };
    shim::grant_into(&cfg, &mut spec, Path::new("the spec on stdin"), &req, &who)
        .map_err(HookError::Grant)?;
    let root = spec.as_object_mut().expect("checked above");
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
            stage.insert(0, bind_hook(&cfg));
        }
    }
    let out = serde_json::to_vec(&spec).expect("a JSON value always serializes");
    if let Err(e) = stdout.write_all(&out).and_then(|()| stdout.flush()) {
        // The engine never got the edited spec: the container will not run with this slice.
        shim::release_quietly(&cfg, &claim);
        return Err(HookError::Stdout(e));
    }
    Ok(())
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
    fn precreate_passes_a_spec_without_request_through_unchanged() {
        let spec = br#"{"ociVersion":"1.0.2",  "process":{"env":["PATH=/bin"]}}"#;
        let mut out = Vec::new();
        // No config is read on this path, so a missing one is no error.
        precreate(
            Some(Path::new("/nonexistent/gpushare.toml")),
            &spec[..],
            &mut out,
        )
        .unwrap();
        assert_eq!(out, spec);
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
