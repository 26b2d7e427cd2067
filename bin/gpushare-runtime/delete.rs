//! `delete`: run the runtime's own delete, then release the container's slice once the runtime
//! no longer has the container. Either way the exit code is the runtime's: a slice left leased
//! is said on the engine's log, never turned into a failed delete.

use super::handover;
use super::runc_args::RuncArgs;
use super::runc_log;
use gpushare_core::config::{Config, ConfigError};
use gpushare_core::{claim, compute_mode, failpoint, gc, trust};
use std::ffi::OsString;
use std::path::Path;
use std::time::Duration;

/// `delete` of the container in `args`; returns the runtime's exit code.
pub fn run(cfg: &Config, runtime: &Path, argv: &[OsString], args: &RuncArgs) -> i32 {
    // A container the ledger never mentions holds nothing: hand over at once, as for any other
    // command, with no process of ours waiting on the runtime.
    let holds = args
        .container_id
        .as_deref()
        .is_some_and(|id| gc::may_hold(cfg, id));
    if !holds {
        return handover::exec(runtime, argv);
    }
    gpushare_core::logging::init(cfg, "gpushare");
    let id = args.container_id.as_deref().unwrap_or_default();
    let root = args.runtime_root(runtime);
    // A create of this id that has granted but whose runtime has not yet made the container:
    // wait for it, so that the runtime's delete sees the container and the slice is freed with
    // it, never while the container is still to come up with it.
    let settled = claim::settle(
        &cfg.state_dir,
        id,
        root.as_deref().map(Path::new),
        Duration::from_millis(cfg.pool.lock_timeout_ms),
    );
    let code = match handover::spawn(runtime, argv) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("gpushare: cannot run {}: {e}", runtime.display());
            return 127;
        }
    };
    let _ = trust::drop_caps_for_release(compute_mode::may_put_back(&cfg.state_dir));
    match settled {
        Ok(claim::Settled::Free(claim)) => {
            release_if_gone(cfg, runtime, args, code);
            claim.remove();
        }
        Ok(claim::Settled::RuntimeHas) => release_if_gone(cfg, runtime, args, code),
        Ok(claim::Settled::InFlight) => keep_in_flight(args, id, cfg.pool.lock_timeout_ms),
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

/// The `gpushare` entry binary ran the runtime's `delete`, which exited with `code`, and the
/// ledger still names the container: release as [`run`] would have.
pub fn after_entry(
    cfg: &Config,
    broken_config: Option<ConfigError>,
    runtime: &Path,
    args: &RuncArgs,
    code: i32,
) -> i32 {
    if let Some(e) = broken_config {
        eprintln!("gpushare: {e}; the slice stays leased until `gpusharectl gc`");
        return code;
    }
    gpushare_core::logging::init(cfg, "gpushare");
    let _ = trust::drop_caps_for_release(compute_mode::may_put_back(&cfg.state_dir));
    // The entry binary took the container's claim before the runtime's delete and this process
    // inherited it: no create of the id can grant meanwhile. Should another process hold it
    // (an entry binary of an older build), a create in flight keeps what it takes.
    if let Some(id) = args.container_id.as_deref() {
        let root = args.runtime_root(runtime);
        if claim::in_flight(&cfg.state_dir, id)
            && !root.is_some_and(|r| claim::runtime_has(Path::new(&r), id))
        {
            keep_in_flight(args, id, 0);
            return code;
        }
        release_if_gone(cfg, runtime, args, code);
        if claim::taken_by_self(&cfg.state_dir, id) {
            // Held by this process: removed under the lock, which goes at exit.
            if let Ok(p) = claim::path(&cfg.state_dir, id) {
                let _ = std::fs::remove_file(p);
            }
        }
        return code;
    }
    release_if_gone(cfg, runtime, args, code);
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
fn release_if_gone(cfg: &Config, runtime: &Path, args: &RuncArgs, code: i32) {
    let Some(id) = args.container_id.as_deref() else {
        return;
    };
    let gone = code == 0
        || args
            .runtime_root(runtime)
            .is_some_and(|root| !Path::new(&root).join(id).exists());
    if gone {
        failpoint!("runtime.deleted");
        // poststop is best effort (runc skips it when its state is gone): release here too.
        super::release_quietly(cfg, id);
    }
}
