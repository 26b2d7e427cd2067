//! `gpushare-runtime`: the full wrapper, an OCI runtime with runc's command line. The
//! `gpushare` entry binary sends it every command it does not settle itself (on other
//! architectures `gpushare` is this wrapper). It acts on `create` and `run` (grant the slice
//! the container asks for and write it into the spec, [`create`]), `delete` (release it,
//! [`delete`]) and `exec` (give the exec its grant's env, [`exec`]); every other command is
//! handed to the real runtime untouched ([`handover`]).
//!
//! Each command returns the exit code, or an error that [`run`] reports once, the way engines
//! read it ([`runc_log`]); the decisions are gpushare-core's.

// The commands name what they share by `super::`, never `crate::`: on other architectures
// `gpushare` includes this file as a module of its own.
mod create;
mod delete;
mod exec;
mod handover;
mod runc_args;
mod runc_log;

use gpushare_core::allocator;
use gpushare_core::config::Config;
use std::ffi::OsString;
use std::time::Duration;

/// A command that failed, in the words the engine shows its user.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] gpushare_core::config::ConfigError),
    #[error(transparent)]
    Create(#[from] create::CreateError),
    #[error(transparent)]
    Exec(#[from] exec::ExecError),
}

fn main() {
    std::process::exit(run(std::env::args_os().collect()));
}

/// Run the wrapper; returns the exit code (the runtime's own, when it ran).
pub fn run(argv: Vec<OsString>) -> i32 {
    let (argv, own) = runc_args::take_own(&argv);
    let args = runc_args::parse(&argv);
    // A broken config must not stop engines from managing containers that never asked for a
    // GPU: every command still reaches a runtime, and only a GPU request is refused with it.
    let (cfg, broken) = match Config::load(own.config.as_deref()) {
        Ok(c) => (c, None),
        Err(e) => (Config::fallback(own.config.as_deref()), Some(e)),
    };
    let done = match cfg.runtime_path() {
        Err(e) => Err(broken.unwrap_or(e).into()),
        Ok(runtime) => match (args.command.as_deref(), broken) {
            (Some("delete"), broken) if own.after_delete.is_some() => {
                let code = own.after_delete.map_or(1, i32::from);
                Ok(delete::after_entry(&cfg, broken, &runtime, &args, code))
            }
            // `run` is create and start in one: the spec is granted exactly as for `create`,
            // and the poststop hook gpushare writes releases when the runtime deletes the
            // container at its exit (or the engine's `delete` does, after `run --keep` or
            // `--detach`).
            (Some("create" | "run"), broken) => {
                create::run(&cfg, broken, &runtime, &argv, &args).map_err(Error::from)
            }
            (Some("delete"), None) => Ok(delete::run(&cfg, &runtime, &argv, &args)),
            (Some("exec"), None) => exec::run(&cfg, &runtime, &argv, &args).map_err(Error::from),
            (_, broken) => {
                if let Some(e) = broken {
                    eprintln!("gpushare: {e}");
                }
                Ok(handover::exec(&runtime, &argv))
            }
        },
    };
    done.unwrap_or_else(|e| {
        runc_log::error(args.log.as_deref(), args.log_format_json, &e.to_string());
        1
    })
}

/// Release what `id` holds; a failure is said, not fatal: `gpusharectl gc` retries.
fn release_quietly(cfg: &Config, id: &str) {
    if let Err(e) = allocator::release(cfg, id, Duration::from_millis(cfg.pool.lock_timeout_ms)) {
        tracing::warn!(
            container = id,
            "release failed: {e}; `gpusharectl gc` will retry"
        );
        eprintln!("gpushare: releasing the slice of {id} failed: {e}; `gpusharectl gc` will retry");
    }
}
