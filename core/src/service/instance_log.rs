//! The instance log: an append-only record of every MIG instance gpushare made, kept apart from
//! the ledger so that what gpushare owns survives a ledger that lost a record (a crash between
//! a driver call and the ledger's write) or the whole ledger (corrupt, deleted).
//!
//! One JSON object a line in `instances.log` in the state directory, appended under the
//! ledger's lock: `intent` before the create call (GPU, placement, profile), `made` after it
//! (GI and CI ids, MIG UUID), `gone` once the instance is destroyed or found never made. What
//! it says is alive is gpushare's: `gc` adopts such an instance into the ledger or destroys it,
//! and `gpusharectl repair` rebuilds a ledger from it. Instances it never named stay foreign.
//!
//! Bounded: past [`COMPACT_BYTES`] the log is rewritten as one line per instance still alive.

use crate::fsutil::{now_unix, write_atomic};
use crate::placement::Slot;
use serde::{Deserialize, Serialize};
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

pub const FILE: &str = gpushare_state::INSTANCE_LOG;
/// Past this size an append compacts the log (a line is ~250 bytes: ~1000 events).
pub const COMPACT_BYTES: u64 = 256 << 10;

#[derive(Debug, thiserror::Error)]
pub enum InstanceLogError {
    #[error("cannot append to the instance log {path}: {source}; nothing was created (an instance the log does not name could not be told from another manager's)")]
    Append {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// One line of the log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "ev", rename_all = "snake_case")]
pub enum Event {
    /// About to ask NVML for a GPU instance of `profile_id` at `slot` on `gpu`.
    Intent {
        gpu: String,
        slot: Slot,
        profile: String,
        profile_id: u32,
        t: u64,
    },
    /// NVML made it: these ids and this MIG UUID.
    Made {
        gpu: String,
        slot: Slot,
        profile: String,
        profile_id: u32,
        gi: u32,
        ci: u32,
        mig: String,
        t: u64,
        /// The runtime state root of the container it was made for: where `gc` and `repair`
        /// look for the containers that may hold gpushare's instances.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        root: Option<String>,
    },
    /// Destroyed, or never made: whatever sits at `slot` from now on is not gpushare's by this
    /// log's word.
    Gone { gpu: String, slot: Slot, t: u64 },
}

/// An instance the log says gpushare made (or was making) and has not destroyed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Owned {
    pub gpu: String,
    pub slot: Slot,
    pub profile: String,
    pub profile_id: u32,
    /// None: the log holds only the intent (the create's result was never recorded).
    pub made: Option<(u32, u32, String)>,
    pub since: u64,
    pub root: Option<String>,
}

impl Owned {
    /// Whether NVML's GPU instance `gi` of `profile_id` at `slot` is this one. An intent
    /// matches whatever sits at its placement (as a ledger intent does); a made one only the
    /// same GI id.
    pub fn matches(&self, gi: u32, profile_id: u32, slot: Slot) -> bool {
        self.slot == slot
            && self.profile_id == profile_id
            && self.made.as_ref().is_none_or(|(g, _, _)| *g == gi)
    }
}

impl Owned {
    /// [`Owned::matches`] as `gc` and the cold path judge an instance no record claims: an
    /// entry that is only an intent claims a GPU instance without compute instances alone (a
    /// create that died between the two calls), never a whole one, which another manager may
    /// have made at that placement since.
    pub fn claims(&self, gi: &crate::placement::GpuInstance) -> bool {
        self.matches(gi.id, gi.profile_id, gi.slot)
            && (self.made.is_some() || gi.compute_instances.is_empty())
    }
}

fn path(dir: &Path) -> PathBuf {
    dir.join(FILE)
}

/// Replay events into the instances still alive. A torn or unknown line is skipped.
pub fn replay(text: &str) -> Vec<Owned> {
    let mut alive: Vec<Owned> = Vec::new();
    for line in text.lines() {
        let Ok(ev) = serde_json::from_str::<Event>(line) else {
            continue;
        };
        let owned = match ev {
            Event::Intent {
                gpu,
                slot,
                profile,
                profile_id,
                t,
            } => Owned {
                gpu,
                slot,
                profile,
                profile_id,
                made: None,
                since: t,
                root: None,
            },
            Event::Made {
                gpu,
                slot,
                profile,
                profile_id,
                gi,
                ci,
                mig,
                t,
                root,
            } => Owned {
                gpu,
                slot,
                profile,
                profile_id,
                made: Some((gi, ci, mig)),
                since: t,
                root,
            },
            Event::Gone { gpu, slot, .. } => {
                alive.retain(|o| !(o.gpu == gpu && o.slot == slot));
                continue;
            }
        };
        // An intent or a create at a placement replaces whatever the log had overlapping it.
        alive.retain(|o| !(o.gpu == owned.gpu && o.slot.overlaps(&owned.slot)));
        alive.push(owned);
    }
    alive
}

/// What the log in `dir` says gpushare owns; empty when there is no log.
pub fn owned(dir: &Path) -> Vec<Owned> {
    match read(&path(dir)) {
        Ok(text) => replay(&text),
        Err(e) => {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot read {}: {e}", path(dir).display());
            }
            Vec::new()
        }
    }
}

fn read(p: &Path) -> std::io::Result<String> {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(p)?;
    let mut text = String::new();
    std::io::Read::read_to_string(&mut f, &mut text)?;
    Ok(text)
}

/// Append `events` durably (the caller holds the ledger's lock). An intent must be on disk
/// before the create call it announces, so this syncs; only instance creation and destruction
/// append, never a grant.
pub fn append(dir: &Path, events: &[Event]) -> Result<(), InstanceLogError> {
    let p = path(dir);
    let err = |source| InstanceLogError::Append {
        path: p.clone(),
        source,
    };
    let mut buf = Vec::new();
    for e in events {
        serde_json::to_writer(&mut buf, e).expect("events serialize");
        buf.push(b'\n');
    }
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&p)
        .map_err(err)?;
    f.write_all(&buf).map_err(err)?;
    f.sync_data().map_err(err)?;
    if f.metadata().map(|m| m.len()).unwrap_or(0) > COMPACT_BYTES {
        compact(dir);
    }
    Ok(())
}

/// [`append`] where a failure must not stop the caller (the instance is already destroyed:
/// a log that still names it costs a `gc` a look at an empty placement).
pub fn note(dir: &Path, events: &[Event]) {
    if let Err(e) = append(dir, events) {
        tracing::warn!("{e}");
    }
}

/// Rewrite the log as the instances it says are alive (the caller holds the ledger's lock).
pub fn compact(dir: &Path) {
    let p = path(dir);
    let Ok(text) = read(&p) else { return };
    let mut out = Vec::new();
    for o in replay(&text) {
        let ev = match o.made {
            None => Event::Intent {
                gpu: o.gpu,
                slot: o.slot,
                profile: o.profile,
                profile_id: o.profile_id,
                t: o.since,
            },
            Some((gi, ci, mig)) => Event::Made {
                gpu: o.gpu,
                slot: o.slot,
                profile: o.profile,
                profile_id: o.profile_id,
                gi,
                ci,
                mig,
                t: o.since,
                root: o.root,
            },
        };
        serde_json::to_writer(&mut out, &ev).expect("events serialize");
        out.push(b'\n');
    }
    if let Err(e) = write_atomic(&p, &out, Some(0o600)) {
        tracing::warn!("cannot compact {}: {e}", p.display());
    }
}

/// The runtime roots the instances still alive were made for.
pub fn roots(owned: &[Owned]) -> Vec<String> {
    let mut r: Vec<String> = owned.iter().filter_map(|o| o.root.clone()).collect();
    r.sort();
    r.dedup();
    r
}

pub fn intent(gpu: &str, slot: Slot, profile: &str, profile_id: u32) -> Event {
    Event::Intent {
        gpu: gpu.into(),
        slot,
        profile: profile.into(),
        profile_id,
        t: now_unix(),
    }
}

pub fn gone(gpu: &str, slot: Slot) -> Event {
    Event::Gone {
        gpu: gpu.into(),
        slot,
        t: now_unix(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpushare-ilog-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    fn made(slot: u32, gi: u32) -> Event {
        Event::Made {
            gpu: "GPU-0".into(),
            slot: Slot {
                start: slot,
                size: 1,
            },
            profile: "1g.10gb".into(),
            profile_id: 19,
            gi,
            ci: 0,
            mig: format!("MIG-{gi}"),
            t: 1,
            root: Some("/run/r".into()),
        }
    }

    #[test]
    fn replay_keeps_what_was_made_and_not_gone() {
        let s = |start| Slot { start, size: 1 };
        let dir = tmp("replay");
        append(&dir, &[intent("GPU-0", s(0), "1g.10gb", 19), made(0, 7)]).unwrap();
        append(&dir, &[intent("GPU-0", s(1), "1g.10gb", 19)]).unwrap();
        append(&dir, &[intent("GPU-0", s(2), "1g.10gb", 19), made(2, 9)]).unwrap();
        append(&dir, &[gone("GPU-0", s(2))]).unwrap();
        let o = owned(&dir);
        assert_eq!(o.len(), 2, "{o:?}");
        assert_eq!(o[0].made, Some((7, 0, "MIG-7".into())));
        assert!(o[0].matches(7, 19, s(0)) && !o[0].matches(8, 19, s(0)));
        assert_eq!(o[1].made, None, "an intent whose result was never logged");
        assert!(o[1].matches(3, 19, s(1)), "an intent matches its placement");
        let mode = std::fs::metadata(dir.join(FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_torn_line_is_skipped_and_compaction_keeps_the_living() {
        let dir = tmp("compact");
        let s = Slot { start: 0, size: 1 };
        for i in 0..50 {
            append(&dir, &[intent("GPU-0", s, "1g.10gb", 19), made(0, i)]).unwrap();
            append(&dir, &[gone("GPU-0", s)]).unwrap();
        }
        append(&dir, &[made(0, 99)]).unwrap();
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(dir.join(FILE))
            .unwrap();
        f.write_all(b"{\"ev\":\"gone\",\"gpu\":\"GPU-0\",\"sl")
            .unwrap();
        compact(&dir);
        let text = std::fs::read_to_string(dir.join(FILE)).unwrap();
        assert_eq!(text.lines().count(), 1, "{text}");
        assert_eq!(owned(&dir)[0].made, Some((99, 0, "MIG-99".into())));
        assert_eq!(roots(&owned(&dir)), ["/run/r"], "kept by compaction");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_symlinked_log_is_neither_read_nor_written() {
        let dir = tmp("symlink");
        let target = dir.join("elsewhere");
        std::fs::write(&target, b"").unwrap();
        std::os::unix::fs::symlink(&target, dir.join(FILE)).unwrap();
        let err = append(&dir, &[gone("GPU-0", Slot { start: 0, size: 1 })]);
        assert!(err.is_err(), "followed a symlink");
        assert_eq!(std::fs::read(&target).unwrap(), b"");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
