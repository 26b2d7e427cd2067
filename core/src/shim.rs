//! The runtime wrapper's logic: what `gpushare <runc args>` does.

use crate::allocator;
use crate::config::Config;
use crate::config::InjectMode;
use crate::grant;
use crate::ledger::Claimant;
use crate::request;
use crate::runc_args::{self, RuncArgs};
use crate::runc_log;
use crate::spec::{self, Hook};
use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

/// Run the wrapper; returns the exit code (the runtime's own, when it ran).
pub fn run(argv: Vec<OsString>) -> i32 {
    let (argv, own) = runc_args::take_own(&argv);
    let args = runc_args::parse(&argv);
    let fail = |msg: &str| {
        runc_log::error(args.log.as_deref(), args.log_format_json, msg);
        1
    };
    // A broken config must not stop engines from managing containers that never asked for a
    // GPU: every command still reaches a runtime, and only a GPU request is refused with it.
    let (cfg, broken) = match Config::load(own.config.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (Config::fallback(own.config.as_deref()), Some(e.to_string())),
    };
    let runtime = match cfg.runtime_path() {
        Ok(r) => r,
        Err(e) => return fail(&broken.unwrap_or_else(|| e.to_string())),
    };
    match (args.command.as_deref(), broken) {
        (Some("delete"), broken) if own.after_delete.is_some() => {
            let code = own.after_delete.map_or(1, i32::from);
            after_delete(&cfg, broken, &runtime, &args, code)
        }
        // `run` is create and start in one: the spec is granted exactly as for `create`, and
        // the poststop hook gpushare writes releases when the runtime deletes the container
        // at its exit (or the engine's `delete` does, after `run --keep` or `--detach`).
        (Some("create" | "run"), broken) => create(&cfg, broken.as_deref(), &runtime, &argv, &args),
        (Some("delete"), None) => delete(&cfg, &runtime, &argv, &args),
        (Some("exec"), None) => crate::exec_env::exec(&cfg, &runtime, &argv, &args),
        (_, broken) => {
            if let Some(e) = broken {
                eprintln!("gpushare: {e}");
            }
            exec(&runtime, &argv)
        }
    }
}

/// Replace this process with the runtime: same argv, stdio, and exit code.
fn exec(runtime: &Path, argv: &[OsString]) -> i32 {
    let err = Command::new(runtime).args(&argv[1..]).exec();
    eprintln!("gpushare: cannot run {}: {err}", runtime.display());
    127
}

/// Run the runtime as a child and return its exit code, so that gpushare can act on the result.
fn spawn(runtime: &Path, argv: &[OsString]) -> Result<i32, std::io::Error> {
    let status = Command::new(runtime).args(&argv[1..]).status()?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}

fn create(
    cfg: &Config,
    broken_config: Option<&str>,
    runtime: &Path,
    argv: &[OsString],
    args: &RuncArgs,
) -> i32 {
    let bundle = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let config_path = bundle.join("config.json");
    let raw = match crate::trust::read_spec(&config_path) {
        Ok(r) => r,
        // A missing bundle is the runtime's to report; a spec gpushare will not read (a
        // symlink, a special file, too big) carries no request it could honour: either way the
        // runtime gets the container untouched.
        Err(crate::trust::SpecFileError::Missing(_)) => return exec(runtime, argv),
        Err(e) => {
            // gpushare never edits such a spec; the runtime reads it anyway, so a glance (read
            // only, bounded) tells whether it asks for a GPU, which is then refused rather than
            // silently lost.
            use std::io::Read;
            let mut head = Vec::new();
            // Only a regular file is opened: a FIFO would block, a device could be anything.
            let regular = std::fs::metadata(&config_path).is_ok_and(|m| m.is_file());
            let peeked = match regular {
                true => std::fs::File::open(&config_path)
                    .and_then(|f| f.take(16 << 20).read_to_end(&mut head)),
                false => Err(std::io::ErrorKind::InvalidInput.into()),
            };
            if peeked.is_err() || request::may_contain_request(&head) {
                runc_log::error(args.log.as_deref(), args.log_format_json, &e.to_string());
                return 1;
            }
            return exec(runtime, argv);
        }
    };
    if !request::may_contain_request(&raw) {
        return exec(runtime, argv);
    }
    crate::logging::init(cfg, "gpushare");
    let fail = |msg: &str| {
        runc_log::error(args.log.as_deref(), args.log_format_json, msg);
        1
    };
    // The spec mentions a request: one that cannot be read (not JSON, or not read the same by
    // runc) is refused, not run without the GPU it may ask for.
    let mut spec = match crate::strict_json::from_slice(&raw) {
        Ok(v) => v,
        Err(e) => return fail(&unreadable(&config_path, &e)),
    };
    if crate::hook::granted_by_precreate(cfg, &spec) {
        // Podman's precreate hook already granted the slice and edited this very spec.
        return exec(runtime, argv);
    }
    let req = match wanted(cfg, &spec) {
        Ok(None) => return exec(runtime, argv),
        Ok(Some(r)) => r,
        Err(msg) => return fail(&msg),
    };
    if let Some(e) = broken_config {
        return fail(e);
    }
    let Some(id) = args.container_id.as_deref() else {
        return fail("create without a container id");
    };
    // Held from before the grant until the runtime's create exits, so that a delete of this id
    // meanwhile waits instead of freeing a slice the container is about to come up with.
    let claim = match crate::claim::Claim::take(
        &cfg.state_dir,
        id,
        Duration::from_millis(cfg.pool.lock_timeout_ms),
    ) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let root = runtime_root(runtime, args);
    let who = Claimant {
        container_id: id,
        runtime_root: root.as_deref(),
    };
    // With NVIDIA's runtime chosen for injection, GPU containers go to it instead.
    let runtime = match cfg.inject.mode {
        InjectMode::NvidiaContainerRuntime => {
            match crate::config::find_in_path(Path::new("nvidia-container-runtime")) {
                Some(p) => p,
                None => {
                    return fail("inject.mode is nvidia-container-runtime, but it is not on PATH")
                }
            }
        }
        _ => runtime.to_path_buf(),
    };
    let runtime = runtime.as_path();
    // The allocator speaks of the request by its annotation's name; a user who asked with env
    // (Docker < 24) should see the names they wrote.
    let vars = request::env_source(&spec, cfg.policy.allow_env);
    let granted = match grant_into(cfg, &mut spec, &config_path, &req, &who) {
        Ok(g) => g,
        Err(msg) if vars.is_empty() => return fail(&msg),
        Err(msg) => return fail(&format!("{msg} (asked with env {})", vars.join(", "))),
    };
    crate::failpoint!("shim.granted");
    if let Err(e) = spec::write(&config_path, &spec) {
        if granted.fresh {
            release_quietly(cfg, id);
        }
        return fail(&e.to_string());
    }
    crate::failpoint!("shim.spec_written");
    tracing::info!(container = id, uuid = %granted.uuid, warm = granted.warm, "granted");
    // Only now: a child started earlier (an MPS daemon) must not hold the claim for its life.
    if let Err(e) = claim.keep_across_exec() {
        if granted.fresh {
            let _ = crate::fsutil::write_atomic(&config_path, &raw, None);
            release_quietly(cfg, id);
        }
        return fail(&format!(
            "cannot keep the create claim of {id} for the runtime: {e}"
        ));
    }
    // The runtime replaces this process, as it would have been run without gpushare: waiting
    // on it would cost every GPU container a millisecond or more. If it then refuses the
    // container, the lease is freed by the engine's `delete` (the runtime no longer knows the
    // id), by the next cold grant's reap, or by `gpusharectl gc`.
    let code = exec(runtime, argv);
    // Still here: the runtime could not be started, so the container never came to be. A
    // slice this call took goes back, and the spec is the engine's again.
    if granted.fresh {
        if let Err(e) = crate::fsutil::write_atomic(&config_path, &raw, None) {
            eprintln!(
                "gpushare: could not put back {} as the engine wrote it: {e}",
                config_path.display()
            );
        }
        release_quietly(cfg, id);
    }
    code
}

/// The refusal of a spec that mentions a request but cannot be read as one.
pub(crate) fn unreadable(path: &Path, e: &crate::strict_json::StrictJsonError) -> String {
    format!(
        "{} mentions a GPU request (gpu.* or GPUSHARE_*) but cannot be read as one: {e}",
        path.display()
    )
}

/// What the spec asks for, if anything, and whether this node serves it. Shared by the
/// wrapper's `create` and the Podman precreate hook so that both read a spec the same way.
pub fn wanted(cfg: &Config, spec: &serde_json::Value) -> Result<Option<request::Request>, String> {
    if crate::kube::is_sandbox(spec) || !crate::kube::selected(spec).map_err(|e| e.to_string())? {
        return Ok(None);
    }
    let req = request::from_spec(spec, cfg.policy.allow_env).map_err(|e| e.to_string())?;
    if req.is_some() && cfg.policy.refuse_privileged {
        let majors = crate::driver::Driver::new(cfg)
            .majors()
            .map_err(|e| e.to_string())?;
        if let Some(why) = crate::trust::privileged(spec, &majors) {
            return Err(format!("this node refuses GPU requests from privileged containers (policy.refuse_privileged), and this one is privileged: {why}"));
        }
    }
    Ok(req)
}

/// The trust policy on the driver's nodes the spec already lets the container open, before
/// anything is granted to `holder`: none beyond what gpushare grants (and what `holder`
/// already holds, when an engine retries a create on the spec gpushare edited).
fn devices_allowed(cfg: &Config, spec: &serde_json::Value, holder: &str) -> Result<(), String> {
    use crate::trust;
    if cfg.policy.allow_foreign_devices || !trust::carries_devices(spec) {
        return Ok(());
    }
    let majors = crate::driver::Driver::new(cfg)
        .majors()
        .map_err(|e| e.to_string())?;
    if trust::foreign_devices(spec, &majors, &[]).is_none() {
        return Ok(());
    }
    let own = held_nodes(cfg, &majors, holder);
    match trust::foreign_devices(spec, &majors, &own) {
        None => Ok(()),
        Some(entry) => Err(format!("the spec already lets the container open NVIDIA devices beyond the slice gpushare grants: {entry}; with it a container could reach another tenant's GPU or slice, so the request is refused (an operator who trusts such specs sets policy.allow_foreign_devices = true)")),
    }
}

/// The (major, minor) of the driver's nodes `holder`'s current lease gives it, if it has one.
fn held_nodes(cfg: &Config, m: &crate::driver::Majors, holder: &str) -> Vec<(u32, u32)> {
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
    own
}

/// Grant `req` to `who` and write the grant (nodes, allow rules, env, mounts, release hook)
/// into `spec` in memory. On an error nothing stays held and `spec` must not be used. Shared
/// by the wrapper's `create` and the Podman precreate hook.
pub fn grant_into(
    cfg: &Config,
    spec: &mut serde_json::Value,
    spec_path: &Path,
    req: &request::Request,
    who: &Claimant<'_>,
) -> Result<grant::Granted, String> {
    devices_allowed(cfg, spec, who.container_id)?;
    let granted = grant::grant(cfg, req, who, poststop_hook(cfg)).map_err(|e| e.to_string())?;
    if let Err(e) = spec::apply(spec, &granted.edit, spec_path) {
        if granted.fresh {
            release_quietly(cfg, who.container_id);
        }
        return Err(e.to_string());
    }
    // Only a precreate grant's own claim may name the lease the release hook frees.
    if let Some(ann) = spec.get_mut("annotations").and_then(|a| a.as_object_mut()) {
        ann.remove(crate::hook::LEASE_ANNOTATION);
    }
    Ok(granted)
}

fn delete(cfg: &Config, runtime: &Path, argv: &[OsString], args: &RuncArgs) -> i32 {
    // A container the ledger never mentions holds nothing: hand over at once, as for any other
    // command, with no process of ours waiting on the runtime.
    let holds = args
        .container_id
        .as_deref()
        .is_some_and(|id| crate::gc::may_hold(cfg, id));
    if !holds {
        return exec(runtime, argv);
    }
    crate::logging::init(cfg, "gpushare");
    let id = args.container_id.as_deref().unwrap_or_default();
    let root = runtime_root(runtime, args);
    // A create of this id that has granted but whose runtime has not yet made the container:
    // wait for it, so that the runtime's delete sees the container and the slice is freed with
    // it, never while the container is still to come up with it.
    let settled = crate::claim::settle(
        &cfg.state_dir,
        id,
        root.as_deref().map(Path::new),
        Duration::from_millis(cfg.pool.lock_timeout_ms),
    );
    let code = match spawn(runtime, argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpushare: cannot run {}: {e}", runtime.display());
            return 127;
        }
    };
    let _ = crate::trust::drop_caps_for_release(crate::compute_mode::may_put_back(&cfg.state_dir));
    match settled {
        Ok(crate::claim::Settled::Free(claim)) => {
            release_after_delete(cfg, runtime, args, code);
            claim.remove();
        }
        Ok(crate::claim::Settled::RuntimeHas) => release_after_delete(cfg, runtime, args, code),
        Ok(crate::claim::Settled::InFlight) => keep_in_flight(args, id, cfg.pool.lock_timeout_ms),
        Err(e) => {
            runc_log::error(
                args.log.as_deref(),
                args.log_format_json,
                &format!("{e}; the slice of {id} stays leased"),
            );
        }
    }
    code
}

/// Say why a delete left a slice leased: the container's create still runs.
fn keep_in_flight(args: &RuncArgs, id: &str, waited_ms: u64) {
    runc_log::error(
        args.log.as_deref(),
        args.log_format_json,
        &format!("the create of {id} is still running after {waited_ms} ms: its slice stays leased (the container may still come up with it); delete it again once created, or `gpusharectl gc` releases it once the runtime no longer has it"),
    );
}

/// After the runtime's `delete` exited with `code`: release the container's slice if the
/// runtime deleted it, or if the runtime has no such container (its `create` failed, or it was
/// deleted behind gpushare's back). A delete refused for a container that still exists (one
/// still running, without --force) keeps its slice.
fn release_after_delete(cfg: &Config, runtime: &Path, args: &RuncArgs, code: i32) {
    let Some(id) = args.container_id.as_deref() else {
        return;
    };
    let gone = code == 0
        || runtime_root(runtime, args).is_some_and(|root| !Path::new(&root).join(id).exists());
    if gone {
        crate::failpoint!("shim.deleted");
        // poststop is best effort (runc skips it when its state is gone): release here too.
        release_quietly(cfg, id);
    }
}

/// The `gpushare` entry binary ran the runtime's `delete`, which exited with `code`, and the
/// ledger still names the container: release as [`delete`] would have.
fn after_delete(
    cfg: &Config,
    broken_config: Option<String>,
    runtime: &Path,
    args: &RuncArgs,
    code: i32,
) -> i32 {
    if let Some(e) = broken_config {
        eprintln!("gpushare: {e}; the slice stays leased until `gpusharectl gc`");
        return code;
    }
    crate::logging::init(cfg, "gpushare");
    let _ = crate::trust::drop_caps_for_release(crate::compute_mode::may_put_back(&cfg.state_dir));
    // The entry binary took the container's claim before the runtime's delete and this process
    // inherited it: no create of the id can grant meanwhile. Should another process hold it
    // (an entry binary of an older build), a create in flight keeps what it takes.
    if let Some(id) = args.container_id.as_deref() {
        let root = runtime_root(runtime, args);
        if crate::claim::in_flight(&cfg.state_dir, id)
            && !root.is_some_and(|r| crate::claim::runtime_has(Path::new(&r), id))
        {
            keep_in_flight(args, id, 0);
            return code;
        }
        release_after_delete(cfg, runtime, args, code);
        if crate::claim::taken_by_self(&cfg.state_dir, id) {
            // Held by this process: removed under the lock, which goes at exit.
            if let Ok(p) = crate::claim::path(&cfg.state_dir, id) {
                let _ = std::fs::remove_file(p);
            }
        }
        return code;
    }
    release_after_delete(cfg, runtime, args, code);
    code
}

pub(crate) fn release_quietly(cfg: &Config, id: &str) {
    if let Err(e) = allocator::release(cfg, id, Duration::from_millis(cfg.pool.lock_timeout_ms)) {
        tracing::warn!(
            container = id,
            "release failed: {e}; `gpusharectl gc` will retry"
        );
        eprintln!("gpushare: releasing the slice of {id} failed: {e}; `gpusharectl gc` will retry");
    }
}

/// The runtime's state root for this container: the engine's `--root`, else the default of a
/// runtime gpushare knows. None for any other runtime: its containers are then never released
/// as "gone" by the existence check, only by delete, the hook or an operator.
fn runtime_root(runtime: &Path, args: &RuncArgs) -> Option<String> {
    if let Some(r) = &args.root {
        return Some(r.clone());
    }
    match runtime.file_name().and_then(|n| n.to_str()) {
        Some("runc") => Some("/run/runc".into()),
        Some("crun") => Some("/run/crun".into()),
        _ => None,
    }
}

/// The release hook, with an explicit minimal env (never the container's).
pub(crate) fn poststop_hook(cfg: &Config) -> Hook {
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
