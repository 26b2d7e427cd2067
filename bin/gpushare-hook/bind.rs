//! `gpushare-hook bind`: the `createRuntime` hook a precreate grant adds to its spec. The
//! runtime runs it for that container alone, with its state on stdin; the lease moves from the
//! precreate claim to the container id ([`gpushare_core::precreate::bind`]).

use crate::Error;
use gpushare_core::config::Config;
use gpushare_core::{hook, precreate, trust};
use std::io::Read;
use std::path::Path;

/// Returns whether a lease moved.
pub fn run(config: Option<&Path>, stdin: impl Read) -> Result<bool, Error> {
    let state = crate::read_state(stdin)?;
    let id = hook::container_id(&state)?;
    let Some(claim) = hook::claim(&state)? else {
        return Ok(false);
    };
    let _ = trust::drop_all_caps();
    let cfg = Config::load(config)?;
    gpushare_core::logging::init(&cfg, "gpushare-hook");
    Ok(precreate::bind(&cfg, &claim, &id)?)
}
