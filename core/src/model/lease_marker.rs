//! Lease markers, `<state_dir>/leases/<container id>` ([`gpushare_state::lease`]): the full
//! program's side. Every ledger save makes the markers of the leases it adds before the ledger
//! is written and removes those of the leases it drops after ([`crate::ledger::Locked::save`]);
//! `gc` and `repair` sweep markers no lease names. All of it under the ledger's lock.

use std::collections::BTreeSet;
use std::fs::OpenOptions;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum MarkerError {
    #[error("cannot make lease marker {path} (the lease is not recorded; check the state directory's file system, it may be full or read-only): {source}")]
    Make {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    StateDir(#[from] crate::statedir::StateDirError),
}

/// The markers' folder in `state_dir`.
pub fn dir(state_dir: &Path) -> PathBuf {
    state_dir.join(gpushare_state::lease::DIR)
}

/// Make the markers of `ids` (those that can name one; an existing one is kept).
pub fn make<'a>(
    state_dir: &Path,
    ids: impl IntoIterator<Item = &'a str>,
) -> Result<(), MarkerError> {
    let dir = dir(state_dir);
    let mut checked = false;
    for id in ids {
        if !gpushare_state::lease::is_nameable(id.as_bytes()) {
            continue;
        }
        if !checked {
            let made = |source| MarkerError::Make {
                path: dir.clone(),
                source,
            };
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(&dir)
                .map_err(made)?;
            crate::statedir::check_dir(&dir)?;
            checked = true;
        }
        let path = dir.join(id);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
            .open(&path)
            .map_err(|source| MarkerError::Make { path, source })?;
    }
    Ok(())
}

/// Remove the markers of `ids`. Best effort: a marker left behind only costs a look (a "maybe"),
/// and the next `gc` sweeps it.
pub fn remove<'a>(state_dir: &Path, ids: impl IntoIterator<Item = &'a str>) {
    let dir = dir(state_dir);
    for id in ids {
        if !gpushare_state::lease::is_nameable(id.as_bytes()) {
            continue;
        }
        let path = dir.join(id);
        if let Err(e) = std::fs::remove_file(&path) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!("cannot remove lease marker {}: {e}", path.display());
            }
        }
    }
}

/// The ids that have a marker.
pub fn list(state_dir: &Path) -> BTreeSet<String> {
    let Ok(entries) = std::fs::read_dir(dir(state_dir)) else {
        return BTreeSet::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().into_string().ok())
        .collect()
}

/// Remove every marker whose id `holds` nothing; returns the ids removed. Only under the
/// ledger's lock, with `holds` answering for the ledger as loaded under it (journal applied):
/// no lease can appear meanwhile, since a lease is made visible only under the lock too.
pub fn sweep(state_dir: &Path, holds: impl Fn(&str) -> bool) -> Vec<String> {
    let stale: Vec<String> = list(state_dir)
        .into_iter()
        .filter(|id| !holds(id))
        .collect();
    remove(state_dir, stale.iter().map(String::as_str));
    stale
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        crate::fsutil::test_dir("marker", name)
    }

    #[test]
    fn markers_are_made_listed_removed_and_swept() {
        let d = tmp("cycle");
        make(&d, ["c1", "c2", "c2", "a/b", ".hidden"]).unwrap();
        assert_eq!(list(&d), BTreeSet::from(["c1".into(), "c2".into()]));
        remove(&d, ["c1", "never"]);
        assert_eq!(list(&d), BTreeSet::from(["c2".into()]));
        make(&d, ["c3"]).unwrap();
        assert_eq!(sweep(&d, |id| id == "c3"), vec!["c2".to_string()]);
        assert_eq!(list(&d), BTreeSet::from(["c3".into()]));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn a_marker_folder_others_may_write_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let d = tmp("unsafe");
        std::fs::DirBuilder::new()
            .mode(0o700)
            .create(dir(&d))
            .unwrap();
        std::fs::set_permissions(dir(&d), std::fs::Permissions::from_mode(0o777)).unwrap();
        assert!(matches!(make(&d, ["c1"]), Err(MarkerError::StateDir(_))));
        assert!(list(&d).is_empty());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
