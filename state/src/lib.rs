//! gpushare's state directory (`/run/gpushare` unless the config's `state_dir` says otherwise)
//! and every file in it: the names, and the formats that gpushare's full program (core, with
//! serde) and the `gpushare` entry binary (no libc, no allocator, byte scans) both read or
//! write. Each format's writer and reader sit side by side in one module, so a change to one
//! is a change to both; the binaries and core spell no name or format of their own.
//!
//! ```text
//! <state_dir>/                 0700, root's                     owner here
//!   ledger.json                the ledger; header by code       ledger
//!   ledger.lock                flock: the state's one writer    lock
//!   journal                    entry binary's grants, releases  journal
//!   offers                     warm grants the entry binary may make  offers
//!   claims/<container id>      flock: a create in flight        claim
//!   leases/<container id>      marker: the id may hold a lease  lease
//!   instances.log              every MIG instance made (JSON lines, core's)   INSTANCE_LOG
//!   history.log                request history (core's)         HISTORY_LOG
//!   placement-<model>-<hash>.json  solved placement tables (core's)  PLACEMENT_PREFIX
//!   mps/<GPU or MIG UUID>/{pipe,log}  MPS daemons' folders  MPS_DIR
//!   ledger.json.corrupt-<unix s>   a ledger `gpusharectl repair` moved aside  ledger
//!   .<name>.gpushare-tmp.<pid>.<random>  a write in progress    temp
//! ```
//!
//! The folder lives in /run, a tmpfs: a reboot empties it, and nothing in it outlives the
//! containers and MIG instances it describes (the driver forgets MIG instances at reboot too).
//! Formats therefore need no migration across reboots, only across an upgrade of gpushare
//! while containers run; each module says what a file of an older or newer gpushare does.
//!
//! Every file is root's and 0600, and is never opened through a symlink (checked by both
//! programs before use).
#![no_std]

#[cfg(test)]
extern crate std;

pub mod bytes;
pub mod claim;
pub mod decimal;
pub mod journal;
pub mod lease;
pub mod ledger;
pub mod lock;
pub mod offers;
pub mod temp;

/// Where the state lives when the config does not say.
pub const DEFAULT_DIR: &str = "/run/gpushare";

/// The instance log: one JSON object a line (`intent`, `made`, `gone`), appended under the
/// ledger's lock. Only the full program reads it (core's `instance_log`).
pub const INSTANCE_LOG: &str = "instances.log";

/// The request history: one line per arrival or departure, appended after each ledger save
/// without fsync. Only the full program reads it (core's `policy::history`).
pub const HISTORY_LOG: &str = "history.log";

/// Solved placement tables: `placement-<model fingerprint>-<demand hash>.json`, each a whole
/// JSON document written atomically (core's `policy::cache`).
pub const PLACEMENT_PREFIX: &str = "placement-";
pub const PLACEMENT_SUFFIX: &str = ".json";

/// MPS control daemons' folders: `mps/<UUID>/pipe` and `mps/<UUID>/log`, the UUID of the GPU or
/// of the MIG device the daemon serves.
pub const MPS_DIR: &str = "mps";
