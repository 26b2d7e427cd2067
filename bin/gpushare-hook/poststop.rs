//! `gpushare-hook poststop`: release the stopped container's slice, waiting for the ledger only
//! a bounded time (pool.hook_lock_timeout_ms).

use crate::Error;
use gpushare_core::config::Config;
use gpushare_core::{allocator, claim, compute_mode, hook, trust};
use std::io::Read;
use std::path::Path;
use std::time::Duration;

/// Returns whether the container held anything.
pub fn run(config: Option<&Path>, stdin: impl Read) -> Result<bool, Error> {
    let state = crate::read_state(stdin)?;
    // The container's own id only: a claim in the annotations is the tenant's word, and a
    // precreate grant's lease was moved to the id by `bind` when this container was created.
    let id = hook::container_id(&state)?;
    let cfg = Config::load(config)?;
    // Releasing needs only the root-owned state directory, no capability at all; except that
    // putting a GPU's compute mode back (the last MPS share of a GPU) needs CAP_SYS_ADMIN.
    let _ = trust::drop_caps_for_release(compute_mode::may_put_back(&cfg.state_dir));
    gpushare_core::logging::init(&cfg, "gpushare-hook");
    let released = allocator::release(
        &cfg,
        &id,
        Duration::from_millis(cfg.pool.hook_lock_timeout_ms),
    )?;
    // The container is gone: its create claim with it, unless a create holds it again.
    claim::remove_after_release(&cfg.state_dir, &id);
    Ok(released)
}
