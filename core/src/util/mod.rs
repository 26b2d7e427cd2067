//! The lowest layer: files, strict JSON, state-folder checks, test hooks and runc's log
//! format, knowing nothing of GPUs or containers.

pub mod failpoint;
pub mod fsutil;
pub mod statedir;
pub mod strict_json;
