//! `create` and `run`: grant the slice the bundle's spec asks for, write it into the spec, and
//! hand the container to the runtime. A spec that asks for nothing goes to the runtime as it is.

use super::handover;
use super::runc_args::RuncArgs;
use gpushare_core::claim::{Claim, ClaimError};
use gpushare_core::config::{self, Config, ConfigError, InjectMode};
use gpushare_core::grant::{self, GrantError};
use gpushare_core::ledger::Claimant;
use gpushare_core::spec::{self, SpecError};
use gpushare_core::trust::{self, SpecFileError};
use gpushare_core::{failpoint, fsutil, precreate, request};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum CreateError {
    #[error(transparent)]
    SpecFile(#[from] SpecFileError),
    #[error(transparent)]
    Grant(#[from] GrantError),
    /// The config is broken and this container asks for a GPU.
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("create without a container id")]
    NoId,
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("inject.mode is nvidia-container-runtime, but it is not on PATH")]
    NoNvidiaRuntime,
    /// The allocator speaks of the request by its annotation's name; a user who asked with env
    /// (Docker < 24) should see the names they wrote.
    #[error("{source} (asked with env {vars})")]
    AskedWithEnv {
        source: Box<GrantError>,
        vars: String,
    },
    #[error(transparent)]
    SpecWrite(#[from] SpecError),
    #[error("cannot keep the create claim of {id} for the runtime: {source}")]
    KeepClaim { id: String, source: std::io::Error },
}

/// `create` (or `run`) of the container in `args`; returns the exit code when the runtime could
/// not replace this process.
pub fn run(
    cfg: &Config,
    broken_config: Option<ConfigError>,
    runtime: &Path,
    argv: &[OsString],
    args: &RuncArgs,
) -> Result<i32, CreateError> {
    let bundle = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let config_path = bundle.join("config.json");
    let raw = match trust::read_spec(&config_path) {
        Ok(r) => r,
        // A missing bundle is the runtime's to report; a spec gpushare will not read (a
        // symlink, a special file, too big) carries no request it could honour: either way the
        // runtime gets the container untouched.
        Err(SpecFileError::Missing(_)) => return Ok(handover::exec(runtime, argv)),
        Err(e) if refused_unread(&config_path) => return Err(e.into()),
        Err(_) => return Ok(handover::exec(runtime, argv)),
    };
    if !request::may_contain_request(&raw) {
        return Ok(handover::exec(runtime, argv));
    }
    gpushare_core::logging::init(cfg, "gpushare");
    let mut spec = grant::parse_spec(&raw, &config_path)?;
    if precreate::granted(cfg, &spec) {
        // Podman's precreate hook already granted the slice and edited this very spec.
        return Ok(handover::exec(runtime, argv));
    }
    let Some(req) = grant::wanted(cfg, &spec)? else {
        return Ok(handover::exec(runtime, argv));
    };
    if let Some(e) = broken_config {
        return Err(e.into());
    }
    let id = args.container_id.as_deref().ok_or(CreateError::NoId)?;
    // Held from before the grant until the runtime's create exits, so that a delete of this id
    // meanwhile waits instead of freeing a slice the container is about to come up with.
    let claim = Claim::take(
        &cfg.state_dir,
        id,
        Duration::from_millis(cfg.pool.lock_timeout_ms),
    )?;
    let root = args.runtime_root(runtime);
    let who = Claimant {
        container_id: id,
        runtime_root: root.as_deref(),
    };
    // With NVIDIA's runtime chosen for injection, GPU containers go to it instead.
    let runtime = match cfg.inject.mode {
        InjectMode::NvidiaContainerRuntime => {
            config::find_in_path(Path::new("nvidia-container-runtime"))
                .ok_or(CreateError::NoNvidiaRuntime)?
        }
        _ => runtime.to_path_buf(),
    };
    let runtime = runtime.as_path();
    let vars = request::env_source(&spec, cfg.policy.allow_env);
    let granted = match grant::into_spec(cfg, &mut spec, &config_path, &req, &who) {
        Ok(g) => g,
        Err(e) if vars.is_empty() => return Err(e.into()),
        Err(source) => {
            let (source, vars) = (Box::new(source), vars.join(", "));
            return Err(CreateError::AskedWithEnv { source, vars });
        }
    };
    failpoint!("runtime.granted");
    if let Err(e) = spec::write(&config_path, &spec) {
        if granted.fresh {
            super::release_quietly(cfg, id);
        }
        return Err(e.into());
    }
    failpoint!("runtime.spec_written");
    tracing::info!(container = id, uuid = %granted.uuid, warm = granted.warm, "granted");
    // Only now: a child started earlier (an MPS daemon) must not hold the claim for its life.
    if let Err(source) = claim.keep_across_exec() {
        if granted.fresh {
            let _ = fsutil::write_atomic(&config_path, &raw, None);
            super::release_quietly(cfg, id);
        }
        let id = id.to_string();
        return Err(CreateError::KeepClaim { id, source });
    }
    // The runtime replaces this process, as it would have been run without gpushare: waiting
    // on it would cost every GPU container a millisecond or more. If it then refuses the
    // container, the lease is freed by the engine's `delete` (the runtime no longer knows the
    // id), by the next cold grant's reap, or by `gpusharectl gc`.
    let code = handover::exec(runtime, argv);
    // Still here: the runtime could not be started, so the container never came to be. A
    // slice this call took goes back, and the spec is the engine's again.
    if granted.fresh {
        if let Err(e) = fsutil::write_atomic(&config_path, &raw, None) {
            eprintln!(
                "gpushare: could not put back {} as the engine wrote it: {e}",
                config_path.display()
            );
        }
        super::release_quietly(cfg, id);
    }
    Ok(code)
}

/// Whether a spec gpushare will not read must be refused rather than run: gpushare never edits
/// such a spec, but the runtime reads it anyway, so a glance (read only, bounded) tells whether
/// it asks for a GPU, which is then refused rather than silently lost.
fn refused_unread(config_path: &Path) -> bool {
    use std::io::Read;
    let mut head = Vec::new();
    // Only a regular file is opened: a FIFO would block, a device could be anything.
    let regular = std::fs::metadata(config_path).is_ok_and(|m| m.is_file());
    let peeked = match regular {
        true => {
            std::fs::File::open(config_path).and_then(|f| f.take(16 << 20).read_to_end(&mut head))
        }
        false => Err(std::io::ErrorKind::InvalidInput.into()),
    };
    peeked.is_err() || request::may_contain_request(&head)
}
