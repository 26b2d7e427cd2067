//! The state directory is trusted: the entry binary splices the offers file (a hook path and
//! JSON) into specs that run as root, and the ledger says whose slice is whose. So before any
//! use the folder and each file in it must be owned by root (or by the user gpushare runs as)
//! and writable by nobody else, and no file in it is ever opened through a symlink. A folder
//! or file that fails this is refused with its path and mode, never used (issue 16, finding 5).

use std::fs::{File, Metadata, OpenOptions};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum StateDirError {
    #[error("{kind} {path} is {what}: gpushare uses its state only when it is owned by root and writable by nobody else ({fix}); nothing was granted or released")]
    Unsafe {
        kind: &'static str,
        path: PathBuf,
        what: String,
        fix: String,
    },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn owner_ok(uid: u32) -> bool {
    // SAFETY: geteuid has no preconditions.
    uid == 0 || uid == unsafe { libc::geteuid() }
}

fn check(path: &Path, m: &Metadata, dir: bool) -> Result<(), StateDirError> {
    let kind = if dir { "state directory" } else { "state file" };
    let mode = m.mode() & 0o7777;
    let unsafe_ = |what: String, fix: String| StateDirError::Unsafe {
        kind,
        path: path.to_path_buf(),
        what,
        fix,
    };
    let ft = m.file_type();
    if ft.is_symlink() {
        return Err(unsafe_(
            "a symlink".into(),
            format!("remove it: rm {}", path.display()),
        ));
    }
    if dir != ft.is_dir() || (!dir && !ft.is_file()) {
        return Err(unsafe_(
            format!("not a {}", if dir { "directory" } else { "regular file" }),
            format!("remove it: rm -r {}", path.display()),
        ));
    }
    if !owner_ok(m.uid()) {
        return Err(unsafe_(
            format!("owned by uid {} (mode {mode:04o})", m.uid()),
            format!("chown root {}", path.display()),
        ));
    }
    if mode & 0o022 != 0 {
        let want = if dir { "700" } else { "600" };
        return Err(unsafe_(
            format!("mode {mode:04o}, writable by group or others"),
            format!("chmod {want} {}", path.display()),
        ));
    }
    Ok(())
}

/// Check the state directory itself (not following a symlink). A missing one is an I/O error
/// of kind NotFound.
pub fn check_dir(dir: &Path) -> Result<(), StateDirError> {
    let m = std::fs::symlink_metadata(dir).map_err(|source| StateDirError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    check(dir, &m, true)
}

/// Check a state file already open (through `O_NOFOLLOW`).
pub fn check_file(path: &Path, f: &File) -> Result<(), StateDirError> {
    let m = f.metadata().map_err(|source| StateDirError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    check(path, &m, false)
}

/// Open a state file for reading, never through a symlink, and check it; None when it does
/// not exist.
pub fn open_read(path: &Path) -> Result<Option<File>, StateDirError> {
    match OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    {
        Ok(f) => {
            check_file(path, &f)?;
            Ok(Some(f))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        // O_NOFOLLOW on a symlink: say what it is rather than "too many levels of links".
        Err(e) if e.raw_os_error() == Some(libc::ELOOP) => {
            let m = std::fs::symlink_metadata(path).map_err(|source| StateDirError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            check(path, &m, false).and(Err(StateDirError::Io {
                path: path.to_path_buf(),
                source: e,
            }))
        }
        Err(source) => Err(StateDirError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

/// A whole state file, checked; None when it does not exist.
pub fn read(path: &Path) -> Result<Option<Vec<u8>>, StateDirError> {
    let Some(mut f) = open_read(path)? else {
        return Ok(None);
    };
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)
        .map_err(|source| StateDirError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    Ok(Some(buf))
}

/// Open a state file for appending (made 0600 if new), never through a symlink, checked.
pub fn open_append(path: &Path) -> Result<File, StateDirError> {
    let f = OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(|source| StateDirError::Io {
            path: path.to_path_buf(),
            source,
        })?;
    check_file(path, &f)?;
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn dir(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpushare-sd-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        d
    }

    #[test]
    fn a_writable_folder_or_file_and_a_symlink_are_refused_with_path_and_mode() {
        let d = dir("modes");
        check_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o777)).unwrap();
        let e = check_dir(&d).unwrap_err().to_string();
        assert!(
            e.contains(&d.display().to_string()) && e.contains("0777"),
            "{e}"
        );
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_dir(&d).unwrap();

        let f = d.join(gpushare_state::ledger::NAME);
        std::fs::write(&f, "{}").unwrap();
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o666)).unwrap();
        let e = read(&f).unwrap_err().to_string();
        assert!(
            e.contains(gpushare_state::ledger::NAME) && e.contains("0666"),
            "{e}"
        );
        std::fs::set_permissions(&f, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert_eq!(read(&f).unwrap().unwrap(), b"{}");

        let link = d.join(gpushare_state::journal::NAME);
        std::os::unix::fs::symlink(&f, &link).unwrap();
        let e = read(&link).unwrap_err().to_string();
        assert!(e.contains("symlink"), "{e}");
        assert!(open_append(&link).is_err());
        assert_eq!(
            std::fs::read(&f).unwrap(),
            b"{}",
            "nothing written through it"
        );
        assert!(read(&d.join("absent")).unwrap().is_none());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
