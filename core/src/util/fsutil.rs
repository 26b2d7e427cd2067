//! Durable file writes: a reader never sees a half-written file, and a crash leaves either
//! the old or the new content.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Write `data` to `path` through a temp file in the same directory: write, fsync, rename,
/// fsync the directory. `mode` is applied to the new file (the old file's mode is kept when
/// `mode` is None).
pub fn write_atomic(path: &Path, data: &[u8], mode: Option<u32>) -> io::Result<()> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "path has no file name"))?;
    let mode = match mode {
        Some(m) => m,
        None => fs::metadata(path)
            .map(|m| m.permissions().mode() & 0o7777)
            .unwrap_or(0o644),
    };
    let (mut f, tmp) = create_temp(dir, name, mode)?;
    let written = (|| {
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(data)?;
        f.sync_all()?;
        fs::rename(&tmp, path)?;
        File::open(dir)?.sync_all()
    })();
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Create a fresh temp file for `name` in `dir`, exclusively (`O_EXCL`, never through a
/// symlink): its name carries this process's id, for [`sweep_temp`], and 64 random bits, so
/// that nobody can plant a file or a link where gpushare will write.
pub fn create_temp(
    dir: &Path,
    name: &std::ffi::OsStr,
    mode: u32,
) -> io::Result<(File, std::path::PathBuf)> {
    use std::os::unix::ffi::OsStrExt;
    let mut buf = vec![0u8; name.len() + 64];
    loop {
        let n = gpushare_state::temp::write_name(
            name.as_bytes(),
            std::process::id().into(),
            random_u64()?,
            &mut buf,
        )
        .expect("room for the name and 64 bytes");
        let tmp = dir.join(std::ffi::OsStr::from_bytes(&buf[..n]));
        match OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&tmp)
        {
            Ok(f) => return Ok((f, tmp)),
            // 64 random bits met one already there: someone planted it. Draw again.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(e) => return Err(e),
        }
    }
}

fn random_u64() -> io::Result<u64> {
    let mut b = [0u8; 8];
    // SAFETY: b is writable for its length.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    if n != b.len() as isize {
        return Err(io::Error::last_os_error());
    }
    Ok(u64::from_ne_bytes(b))
}

/// Remove temp files in `dir` that a killed writer left: named as [`create_temp`] (or the
/// entry binary) names them, regular files, untouched for at least `min_age`, and whose
/// writer's process is gone (a live writer's file is never taken from under it). Returns what
/// was removed.
pub fn sweep_temp(dir: &Path, min_age: std::time::Duration) -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(pid) = gpushare_state::temp::writer_pid(name.as_encoded_bytes())
            .and_then(|p| i32::try_from(p).ok())
        else {
            continue;
        };
        let Ok(m) = e.path().symlink_metadata() else {
            continue;
        };
        let old = m
            .modified()
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age >= min_age);
        // SAFETY: kill with signal 0 only asks whether the process exists.
        let writer_alive = unsafe { libc::kill(pid, 0) } == 0
            || io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
        if !(m.is_file() || m.file_type().is_symlink()) || !old || writer_alive {
            continue;
        }
        if fs::remove_file(e.path()).is_ok() {
            removed.push(e.path());
        }
    }
    removed
}

/// Seconds since the Unix epoch.
pub fn now_unix() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh, empty folder of mode 0700 under the system's temp folder, for a unit test:
/// `gpushare-<what>-<name>-<pid>`.
#[cfg(test)]
pub fn test_dir(what: &str, name: &str) -> std::path::PathBuf {
    use std::os::unix::fs::DirBuilderExt;
    let d = std::env::temp_dir().join(format!("gpushare-{what}-{name}-{}", std::process::id()));
    let _ = fs::remove_dir_all(&d);
    fs::DirBuilder::new().mode(0o700).create(&d).unwrap();
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn atomic_write_replaces_content_and_keeps_mode() {
        let dir = std::env::temp_dir().join(format!("gpushare-fsutil-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let p = dir.join("f.json");
        write_atomic(&p, b"one", Some(0o600)).unwrap();
        write_atomic(&p, b"two", None).unwrap();
        assert_eq!(fs::read(&p).unwrap(), b"two");
        assert_eq!(
            fs::metadata(&p).unwrap().permissions().mode() & 0o777,
            0o600
        );
        let leftovers: Vec<_> = fs::read_dir(&dir).unwrap().collect();
        assert_eq!(leftovers.len(), 1, "no temp file left behind");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn temp_files_are_made_exclusively_and_never_through_a_planted_link() {
        let dir = std::env::temp_dir().join(format!("gpushare-fsutil-x-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let (_, a) = create_temp(&dir, "f".as_ref(), 0o600).unwrap();
        let (_, b) = create_temp(&dir, "f".as_ref(), 0o600).unwrap();
        assert_ne!(a, b, "unpredictable names");
        // The name an older gpushare would have used, planted as a link to a victim file.
        let victim = dir.join("victim");
        fs::write(&victim, "keep").unwrap();
        std::os::unix::fs::symlink(
            &victim,
            dir.join(format!(".f.gpushare-tmp.{}", std::process::id())),
        )
        .unwrap();
        write_atomic(&dir.join("f"), b"new", Some(0o600)).unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"keep");
        assert_eq!(fs::read(dir.join("f")).unwrap(), b"new");
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn sweep_removes_only_old_temp_files_of_dead_writers() {
        let dir = std::env::temp_dir().join(format!("gpushare-fsutil-s-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        // A pid that is surely not running: past the kernel's pid_max.
        let dead = dir.join(".ledger.json.gpushare-tmp.99999999");
        let dead_new = dir.join(".ledger.json.gpushare-tmp.99999999.00ff");
        let live = dir.join(format!(
            ".ledger.json.gpushare-tmp.{}.0001",
            std::process::id()
        ));
        let other = dir.join("ledger.json");
        for f in [&dead, &dead_new, &live, &other] {
            fs::write(f, "x").unwrap();
        }
        assert!(
            sweep_temp(&dir, std::time::Duration::from_secs(3600)).is_empty(),
            "too young"
        );
        let mut removed = sweep_temp(&dir, std::time::Duration::ZERO);
        removed.sort();
        assert_eq!(removed, vec![dead.clone(), dead_new.clone()]);
        assert!(live.exists() && other.exists());
        fs::remove_dir_all(&dir).unwrap();
    }
}
