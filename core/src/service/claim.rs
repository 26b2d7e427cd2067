//! Create claims: a `create` that asks for a GPU holds `<state_dir>/claims/<id>` locked
//! (`flock`) from before its grant until the runtime's own `create` process exits, because the
//! descriptor is left open across exec(). A `delete` of that id waits while the claim is held
//! and the runtime has no state for the container yet: the runtime's delete would find nothing,
//! gpushare would release the slice, and the container would still come up with it, so that the
//! next container is granted the same instance (issue 16, finding 1).
//!
//! runc does not hand the descriptor on to the container's init; a runtime that does keeps the
//! claim held until the container starts, which is harmless: by then the runtime has the
//! container's state, and a delete that sees that state goes ahead.
//!
//! The file is removed by whoever holds its lock (a delete, after the release; `gc`), and a
//! taker checks after locking that the path still names the file it locked, so two processes
//! never believe they hold one claim through two files.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("container id {id:?} cannot name a create claim (one path component, not starting with `.`, at most 255 bytes)")]
    Name { id: String },
    #[error("cannot use the create claim {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    StateDir(#[from] crate::statedir::StateDirError),
    #[error("the create claim {path} is still held after {waited_ms} ms: another `create` of this container id is running")]
    Busy { path: PathBuf, waited_ms: u64 },
}

/// The claim file of `id` under `state_dir`.
pub fn path(state_dir: &Path, id: &str) -> Result<PathBuf, ClaimError> {
    if !gpushare_state::claim::is_nameable(id.as_bytes()) {
        return Err(ClaimError::Name { id: id.into() });
    }
    Ok(state_dir.join(gpushare_state::claim::DIR).join(id))
}

/// A held claim; dropping it lets the claim go (unless the descriptor was kept across exec).
#[derive(Debug)]
pub struct Claim {
    file: File,
    path: PathBuf,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> ClaimError + '_ {
    move |source| ClaimError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Lock `file` if it is free now: whether it was.
fn lock_now(file: &File) -> std::io::Result<bool> {
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let e = std::io::Error::last_os_error();
    match e.raw_os_error() {
        Some(libc::EWOULDBLOCK) | Some(libc::EINTR) => Ok(false),
        _ => Err(e),
    }
}

/// Whether the locked `file` is still the one at `path` (a remover unlinks under the lock).
fn still_at(file: &File, path: &Path) -> std::io::Result<bool> {
    let held = file.metadata()?;
    Ok(std::fs::symlink_metadata(path)
        .is_ok_and(|m| m.dev() == held.dev() && m.ino() == held.ino()))
}

impl Claim {
    /// Take `id`'s claim, waiting at most `timeout` for another holder to let it go.
    pub fn take(state_dir: &Path, id: &str, timeout: Duration) -> Result<Claim, ClaimError> {
        let start = Instant::now();
        loop {
            if let Some(c) = Self::try_take(state_dir, id)? {
                return Ok(c);
            }
            if start.elapsed() >= timeout {
                return Err(ClaimError::Busy {
                    path: path(state_dir, id)?,
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// Take `id`'s claim if nobody holds it now.
    pub fn try_take(state_dir: &Path, id: &str) -> Result<Option<Claim>, ClaimError> {
        let path = path(state_dir, id)?;
        let dir = path.parent().expect("a claim path has a folder");
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(dir))?;
        crate::statedir::check_dir(state_dir)?;
        crate::statedir::check_dir(dir)?;
        loop {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .mode(0o600)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&path)
                .map_err(io(&path))?;
            crate::statedir::check_file(&path, &file)?;
            if !lock_now(&file).map_err(io(&path))? {
                return Ok(None);
            }
            if still_at(&file, &path).map_err(io(&path))? {
                record_pid(&file).map_err(io(&path))?;
                return Ok(Some(Claim { file, path }));
            }
            // Removed (and perhaps made again) between our open and our lock: start over.
        }
    }

    /// Keep the claim held by whatever this process exec()s next (the runtime's `create`),
    /// until that exits.
    pub fn keep_across_exec(&self) -> std::io::Result<()> {
        let fd = self.file.as_raw_fd();
        // SAFETY: fcntl on a descriptor we own.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 || unsafe { libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(())
    }

    /// Remove the claim file (it is held, so no create is using it), then let go.
    pub fn remove(self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Write this process's id into the held claim: after exec() it is the runtime's create's.
fn record_pid(file: &File) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    let mut text = [0u8; gpushare_state::claim::PID_WIDTH + 1];
    file.write_all_at(
        gpushare_state::claim::write_pid(std::process::id().into(), &mut text),
        0,
    )
}

/// Whether the process that took the claim at `path` (the runtime's create, after exec) is
/// still running. A runtime may hand the claim's descriptor on to the container's init (crun
/// does, until `start`): the claim then stays held after the create itself is over.
fn taker_running(path: &Path) -> bool {
    // SAFETY: signal 0 only asks whether the process exists.
    taker(path).is_some_and(|p| p > 0 && unsafe { libc::kill(p, 0) } == 0)
}

/// The pid the claim file at `path` records.
fn taker(path: &Path) -> Option<i32> {
    let text = std::fs::read(path).ok()?;
    gpushare_state::claim::read_pid(&text).and_then(|p| i32::try_from(p).ok())
}

/// Whether this very process took `id`'s claim (the entry binary took it, then exec()'d the
/// full wrapper, which inherited the descriptor).
pub fn taken_by_self(state_dir: &Path, id: &str) -> bool {
    path(state_dir, id).is_ok_and(|p| taker(&p) == Some(std::process::id() as i32))
}

/// Whether a create of `id` is running: its claim is held, and the process that took it is
/// alive. (A claim held on by an init whose create was killed, which crun can leave, is no
/// create in flight: the container never came to be.)
pub fn in_flight(state_dir: &Path, id: &str) -> bool {
    held(state_dir, id)
        && path(state_dir, id).is_ok_and(|p| taker_running(&p))
        && !taken_by_self(state_dir, id)
}

/// Whether a process holds `id`'s claim now.
pub fn held(state_dir: &Path, id: &str) -> bool {
    let Ok(path) = path(state_dir, id) else {
        return false;
    };
    let Ok(file) = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(&path)
    else {
        return false;
    };
    // A file that is not ours to lock holds nothing.
    matches!(lock_now(&file), Ok(false))
}

/// Whether the runtime has state for container `id` under `root` (runc's `state.json`, crun's
/// `status`): from then on its own delete sees the container.
pub fn runtime_has(root: &Path, id: &str) -> bool {
    if !gpushare_state::claim::is_nameable(id.as_bytes()) {
        return false;
    }
    let dir = root.join(id);
    dir.join("state.json").exists() || dir.join("status").exists()
}

/// Whether the runtime has started container `id`: its exec FIFO, made before runc and crun
/// write their state and there until `start`, is gone. (While a `create` still finishes, its
/// runtime process is the init's parent too.)
fn started(root: &Path, id: &str) -> bool {
    !root.join(id).join("exec.fifo").exists()
}

/// Whether the claim's taker is the runtime process that runs container `id` (a foreground
/// `run`, the parent of the container's init, holds the claim for the container's whole life):
/// the container is then the runtime's to delete. A taker that is anything else (a `create` of
/// the same id begun meanwhile) is waited for: it may be handed this container's lease, which
/// this delete is about to free.
fn runs_it(root: &Path, id: &str, claim_file: &Path) -> bool {
    let (Some(taker), Some(init)) = (taker(claim_file), crate::running::init_pid(root, id)) else {
        return false;
    };
    crate::running::parent_of(init) == Some(taker)
}

/// What a delete found when it looked at the container's claim.
#[derive(Debug)]
pub enum Settled {
    /// No create of the id is running; the claim is held by the caller until dropped.
    Free(Claim),
    /// The claim is still held, but the runtime has the container and either the create that
    /// took the claim is over (the runtime handed its descriptor on to the container's init)
    /// or the taker runs the container (a foreground `run` holds the claim while it runs).
    RuntimeHas,
    /// A create still held the claim, with no runtime state, for the whole wait.
    InFlight,
}

/// How long a claim's taker must be seen gone before a delete believes it.
const TAKER_GONE_FOR: Duration = Duration::from_millis(50);

/// Wait (at most `timeout`) until no create of `id` is in flight: its claim is free, or the
/// runtime (state under `root`, when known) has the container and the create that took the
/// claim has exited. A runtime's delete while its create is still finishing could make that
/// create fail half-way: it is waited for too.
pub fn settle(
    state_dir: &Path,
    id: &str,
    root: Option<&Path>,
    timeout: Duration,
) -> Result<Settled, ClaimError> {
    let start = Instant::now();
    // A taker that seems gone may be a new one that has locked but not yet written its pid (the
    // file still names the last, long gone): only one seen gone for a while is believed.
    let mut gone_since: Option<Instant> = None;
    loop {
        if let Some(c) = Claim::try_take(state_dir, id)? {
            return Ok(Settled::Free(c));
        }
        let claim_file = path(state_dir, id)?;
        let gone = !taker_running(&claim_file);
        gone_since = if gone {
            gone_since.or(Some(Instant::now()))
        } else {
            None
        };
        let taker_over = gone_since.is_some_and(|t| t.elapsed() >= TAKER_GONE_FOR);
        if root.is_some_and(|r| {
            runtime_has(r, id) && (taker_over || (started(r, id) && runs_it(r, id, &claim_file)))
        }) {
            return Ok(Settled::RuntimeHas);
        }
        if start.elapsed() >= timeout {
            return Ok(Settled::InFlight);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// After the container's release (the poststop hook): remove `id`'s claim file if nobody
/// holds it, or if the one holding it is this hook's parent, the runtime's `delete` (the entry
/// binary took the claim and exec()'d it; the release, done now, is what it held it for).
pub fn remove_after_release(state_dir: &Path, id: &str) {
    let Ok(p) = path(state_dir, id) else { return };
    if !p.exists() {
        return;
    }
    match Claim::try_take(state_dir, id) {
        Ok(Some(c)) => c.remove(),
        // SAFETY: getppid has no preconditions.
        Ok(None) if taker(&p) == Some(unsafe { libc::getppid() }) => {
            let _ = std::fs::remove_file(&p);
        }
        _ => {}
    }
}

/// Remove claim files nobody holds whose id `keep` does not want kept (gc).
pub fn sweep(state_dir: &Path, keep: impl Fn(&str) -> bool) -> Vec<String> {
    let dir = state_dir.join(gpushare_state::claim::DIR);
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return Vec::new();
    };
    let mut removed = Vec::new();
    for e in entries.flatten() {
        let Some(id) = e.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if keep(&id) {
            continue;
        }
        if let Ok(Some(c)) = Claim::try_take(state_dir, &id) {
            c.remove();
            removed.push(id);
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dir(name: &str) -> PathBuf {
        crate::fsutil::test_dir("claim", name)
    }

    #[test]
    fn a_held_claim_is_seen_and_waited_for() {
        let d = dir("held");
        let c = Claim::take(&d, "c1", Duration::ZERO).unwrap();
        // Taken by this very process (an entry binary that exec()'d the full wrapper): ours.
        assert!(held(&d, "c1") && !in_flight(&d, "c1"));
        // Taken by another live process (pid 1 stands in): a create in flight.
        std::fs::write(path(&d, "c1").unwrap(), "         1\n").unwrap();
        assert!(in_flight(&d, "c1"));
        assert!(!held(&d, "c2"));
        assert!(Claim::try_take(&d, "c1").unwrap().is_none());
        assert!(matches!(
            Claim::take(&d, "c1", Duration::from_millis(20)),
            Err(ClaimError::Busy { .. })
        ));
        assert!(matches!(
            settle(&d, "c1", None, Duration::from_millis(20)).unwrap(),
            Settled::InFlight
        ));
        drop(c);
        assert!(!held(&d, "c1"));
        assert!(matches!(
            settle(&d, "c1", None, Duration::ZERO).unwrap(),
            Settled::Free(_)
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn the_runtime_having_the_container_settles_a_held_claim() {
        let d = dir("rt");
        let root = d.join("root");
        std::fs::create_dir_all(root.join("c1")).unwrap();
        let _c = Claim::take(&d, "c1", Duration::ZERO).unwrap();
        assert!(matches!(
            settle(&d, "c1", Some(&root), Duration::ZERO).unwrap(),
            Settled::InFlight
        ));
        std::fs::write(root.join("c1/state.json"), "{}").unwrap();
        // This process, the claim's taker, still runs: its create is not over.
        assert!(matches!(
            settle(&d, "c1", Some(&root), Duration::ZERO).unwrap(),
            Settled::InFlight
        ));
        // The taker is the init's parent, but the container is not started (its create still
        // finishes): waited for.
        std::fs::write(root.join("c1/exec.fifo"), "").unwrap();
        let mut child = std::process::Command::new("sleep")
            .arg("5")
            .spawn()
            .unwrap();
        let state = format!(
            r#"{{"init_process_pid": {}, "config": {{"labels": ["bundle=/b"]}}}}"#,
            child.id()
        );
        std::fs::write(root.join("c1/state.json"), state).unwrap();
        assert!(matches!(
            settle(&d, "c1", Some(&root), Duration::ZERO).unwrap(),
            Settled::InFlight
        ));
        // Started, the taker its init's parent (a foreground `run`): settled.
        std::fs::remove_file(root.join("c1/exec.fifo")).unwrap();
        assert!(matches!(
            settle(&d, "c1", Some(&root), Duration::ZERO).unwrap(),
            Settled::RuntimeHas
        ));
        let _ = child.kill();
        let _ = child.wait();
        std::fs::write(root.join("c1/state.json"), "{}").unwrap();
        // A taker that is gone (past pid_max), its claim held on by another: settled.
        std::fs::write(path(&d, "c1").unwrap(), "  99999999\n").unwrap();
        assert!(held(&d, "c1") && !in_flight(&d, "c1"));
        assert!(
            matches!(
                settle(&d, "c1", Some(&root), Duration::ZERO).unwrap(),
                Settled::InFlight
            ),
            "believed only once seen gone for a while"
        );
        assert!(matches!(
            settle(&d, "c1", Some(&root), Duration::from_secs(1)).unwrap(),
            Settled::RuntimeHas
        ));
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn removal_under_the_lock_never_splits_a_claim() {
        let d = dir("rm");
        let c = Claim::take(&d, "c1", Duration::ZERO).unwrap();
        c.remove();
        assert!(!path(&d, "c1").unwrap().exists());
        let again = Claim::take(&d, "c1", Duration::ZERO).unwrap();
        assert!(held(&d, "c1"));
        drop(again);
        assert_eq!(sweep(&d, |_| false), vec!["c1".to_string()]);
        assert!(!path(&d, "c1").unwrap().exists());
        std::fs::remove_dir_all(&d).unwrap();
    }

    #[test]
    fn an_id_that_is_no_file_name_is_refused() {
        let d = dir("name");
        for bad in ["", "..", "a/b", ".hidden"] {
            assert!(matches!(
                Claim::try_take(&d, bad),
                Err(ClaimError::Name { .. })
            ));
        }
        std::fs::remove_dir_all(&d).unwrap();
    }
}
