//! The runtime wrapper's logic: what `gpushare <runc args>` does.

use crate::allocator::{self, Claimant};
use crate::config::Config;
use crate::driver::Driver;
use crate::request::{self, Request};
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
    let args = runc_args::parse(&argv);
    let fail = |msg: &str| {
        runc_log::error(args.log.as_deref(), args.log_format_json, msg);
        1
    };
    let cfg = match Config::load(None) {
        Ok(c) => c,
        Err(e) => return fail(&e.to_string()),
    };
    let runtime = match cfg.runtime_path() {
        Ok(r) => r,
        Err(e) => return fail(&e.to_string()),
    };
    match args.command.as_deref() {
        Some("create") => create(&cfg, &runtime, &argv, &args),
        Some("delete") => delete(&cfg, &runtime, &argv, &args),
        _ => exec(&runtime, &argv),
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

fn create(cfg: &Config, runtime: &Path, argv: &[OsString], args: &RuncArgs) -> i32 {
    let bundle = args.bundle.clone().unwrap_or_else(|| PathBuf::from("."));
    let config_path = bundle.join("config.json");
    let raw = match std::fs::read(&config_path) {
        Ok(r) => r,
        // The runtime reports a missing or unreadable bundle in its own words.
        Err(_) => return exec(runtime, argv),
    };
    if !request::may_contain_request(&raw) {
        return exec(runtime, argv);
    }
    let fail = |msg: &str| {
        runc_log::error(args.log.as_deref(), args.log_format_json, msg);
        1
    };
    let mut spec: serde_json::Value = match serde_json::from_slice(&raw) {
        Ok(v) => v,
        Err(_) => return exec(runtime, argv),
    };
    let req = match request::from_spec(&spec, cfg.policy.allow_env) {
        Ok(None) => return exec(runtime, argv),
        Ok(Some(r)) => r,
        Err(e) => return fail(&e.to_string()),
    };
    let Some(id) = args.container_id.as_deref() else {
        return fail("create without a container id");
    };
    let root = runtime_root(runtime, args);
    let who = Claimant {
        container_id: id,
        runtime_root: Some(root.as_str()),
    };
    let Request::Mig { profile, device } = &req;
    let grant = match allocator::allocate(cfg, profile, device.as_ref(), &who) {
        Ok(g) => g,
        Err(e) => return fail(&e.to_string()),
    };
    let patched = Driver::new(cfg)
        .majors()
        .map_err(|e| e.to_string())
        .and_then(|majors| {
            let edit = grant.edit(&majors, Some(poststop_hook(cfg)));
            spec::apply(&mut spec, &edit, &config_path).map_err(|e| e.to_string())?;
            spec::write(&config_path, &spec).map_err(|e| e.to_string())
        });
    if let Err(msg) = patched {
        release_quietly(cfg, id);
        return fail(&msg);
    }
    tracing::info!(container = id, mig = %grant.mig_uuid, warm = grant.warm, "granted");
    match spawn(runtime, argv) {
        Ok(0) => 0,
        Ok(code) => {
            // The runtime refused the container: it never ran, so its slice goes back now.
            release_quietly(cfg, id);
            code
        }
        Err(e) => {
            release_quietly(cfg, id);
            fail(&format!("cannot run {}: {e}", runtime.display()))
        }
    }
}

fn delete(cfg: &Config, runtime: &Path, argv: &[OsString], args: &RuncArgs) -> i32 {
    let code = match spawn(runtime, argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpushare: cannot run {}: {e}", runtime.display());
            return 127;
        }
    };
    if code == 0 {
        if let Some(id) = args.container_id.as_deref() {
            // poststop is best effort (runc skips it when its state is gone): release here too.
            release_quietly(cfg, id);
        }
    }
    code
}

fn release_quietly(cfg: &Config, id: &str) {
    if let Err(e) = allocator::release(cfg, id, Duration::from_millis(cfg.pool.lock_timeout_ms)) {
        tracing::warn!(
            container = id,
            "release failed: {e}; `gpusharectl gc` will retry"
        );
        eprintln!("gpushare: releasing the slice of {id} failed: {e}; `gpusharectl gc` will retry");
    }
}

/// The runtime's state root for this container (the engine's `--root`, else the default).
fn runtime_root(runtime: &Path, args: &RuncArgs) -> String {
    if let Some(r) = &args.root {
        return r.clone();
    }
    let name = runtime
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name.contains("crun") {
        "/run/crun".into()
    } else {
        "/run/runc".into()
    }
}

/// The release hook, with an explicit minimal env (never the container's).
fn poststop_hook(cfg: &Config) -> Hook {
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
