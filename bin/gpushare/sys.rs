//! The Linux system calls the `gpushare` entry binary makes, with no libc: through rustix's
//! `linux_raw` backend (its own `syscall` instructions, no libc, no std, no allocator), except
//! the few that rustix offers only to libc replacements (`raw` below).

use core::ffi::CStr;
use gpushare_state::{claim, temp};
use rustix::fd::{AsFd, BorrowedFd, OwnedFd};
use rustix::fs::{
    AtFlags, FileType, FlockOperation, MemfdFlags, Mode, OFlags, SeekFrom, Stat, CWD,
};
pub use rustix::io::Errno;
use rustix::io::{self as rio};
use rustix::time::ClockId;

/// The exit, exec and fork this binary needs, which rustix has only in its `runtime` module:
/// an unstable API for libc replacements whose name rustix changes from release to release on
/// purpose. Three calls are not worth depending on that.
mod raw {
    /// # Safety
    /// A raw system call: the caller passes what the kernel expects for `n`.
    unsafe fn syscall3(n: usize, a: usize, b: usize, c: usize) -> isize {
        let ret: isize;
        core::arch::asm!(
            "syscall",
            inlateout("rax") n as isize => ret,
            in("rdi") a,
            in("rsi") b,
            in("rdx") c,
            lateout("rcx") _,
            lateout("r11") _,
            options(nostack),
        );
        ret
    }

    const SYS_FORK: usize = linux_raw_sys::general::__NR_fork as usize;
    const SYS_EXECVE: usize = linux_raw_sys::general::__NR_execve as usize;
    const SYS_EXIT_GROUP: usize = linux_raw_sys::general::__NR_exit_group as usize;

    pub fn exit_group(code: i32) -> ! {
        // SAFETY: exit_group takes a status and does not return.
        unsafe {
            syscall3(SYS_EXIT_GROUP, code as usize, 0, 0);
            core::hint::unreachable_unchecked()
        }
    }

    /// # Safety
    /// `argv` and `envp` are NULL-terminated arrays of NUL-terminated strings.
    pub unsafe fn execve(path: &core::ffi::CStr, argv: *const *const u8, envp: *const *const u8) {
        syscall3(
            SYS_EXECVE,
            path.as_ptr() as usize,
            argv as usize,
            envp as usize,
        );
    }

    /// The child's pid in the parent, 0 in the child, None when no child was made.
    ///
    /// # Safety
    /// The process has one thread and holds no locks (the child runs on a copy of it).
    pub unsafe fn fork() -> Option<usize> {
        let r = syscall3(SYS_FORK, 0, 0, 0);
        (r >= 0).then_some(r as usize)
    }
}

pub fn exit(code: i32) -> ! {
    raw::exit_group(code)
}

pub fn write_all(fd: BorrowedFd<'_>, mut buf: &[u8]) -> Result<(), Errno> {
    while !buf.is_empty() {
        match rio::write(fd, buf) {
            Ok(0) => return Err(Errno::IO),
            Ok(n) => buf = &buf[n..],
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Say `msg` on standard error (best effort: there is nobody else to tell).
pub fn say(msg: &[u8]) {
    // SAFETY: fd 2 is only ever written to, never closed.
    let _ = write_all(unsafe { rustix::stdio::stderr() }, msg);
}

/// # Safety
/// `p` points to a NUL-terminated string that outlives the program.
pub unsafe fn cstr(p: *const u8) -> &'static [u8] {
    CStr::from_ptr(p.cast()).to_bytes()
}

/// A NUL-terminated path built in place; one that does not fit (or holds a NUL) is unusable.
pub struct Path {
    buf: [u8; 4096],
    len: Option<usize>,
}

impl Path {
    pub fn new(parts: &[&[u8]]) -> Path {
        let mut p = Path {
            buf: [0; 4096],
            len: Some(0),
        };
        for part in parts {
            let at = p.len.unwrap_or(usize::MAX);
            if part.contains(&0) || at.saturating_add(part.len()) >= p.buf.len() {
                p.len = None;
                return p;
            }
            p.buf[at..at + part.len()].copy_from_slice(part);
            p.len = Some(at + part.len());
        }
        p
    }

    pub fn as_ptr(&self) -> *const u8 {
        self.buf.as_ptr()
    }

    /// The path's bytes (none for an unusable one).
    pub fn bytes(&self) -> &[u8] {
        &self.buf[..self.len.unwrap_or(0)]
    }

    /// The path as the kernel takes it (rustix passes a `&CStr` through without copying).
    fn c(&self) -> Result<&CStr, Errno> {
        let len = self.len.ok_or(Errno::NAMETOOLONG)?;
        // SAFETY: no part holds a NUL and buf[len] is one of the zeros it started as
        // (len < buf.len()).
        Ok(unsafe { CStr::from_bytes_with_nul_unchecked(&self.buf[..=len]) })
    }
}

/// `path`'s status; `flags` is empty (symlinks followed) or SYMLINK_NOFOLLOW.
fn stat_at(path: &Path, flags: AtFlags) -> Result<Stat, Errno> {
    rustix::fs::statat(CWD, path.c()?, flags)
}

fn lstat(path: &Path) -> Result<Stat, Errno> {
    stat_at(path, AtFlags::SYMLINK_NOFOLLOW)
}

fn kind(st: &Stat) -> FileType {
    FileType::from_raw_mode(st.st_mode)
}

/// Whether a state folder or file with this status may be used: root's (or this process's
/// user's), writable by nobody else, and of the expected kind.
fn trusted(st: &Stat, want: FileType) -> bool {
    let owner = st.st_uid == 0 || st.st_uid == rustix::process::geteuid().as_raw();
    kind(st) == want && owner && st.st_mode & 0o022 == 0
}

/// Whether the state folder at `path` may be used (not a symlink, root's, writable by nobody
/// else): NOENT when it does not exist, ACCESS when it must not be used.
pub fn check_state_dir(path: &Path) -> Result<(), Errno> {
    match trusted(&lstat(path)?, FileType::Directory) {
        true => Ok(()),
        false => Err(Errno::ACCESS),
    }
}

/// Open `path` close-on-exec (every descriptor but a claim's is this process's alone).
fn open(path: &Path, flags: OFlags) -> Result<OwnedFd, Errno> {
    open_mode(path, flags, Mode::empty())
}

fn open_mode(path: &Path, flags: OFlags, mode: Mode) -> Result<OwnedFd, Errno> {
    rustix::fs::open(path.c()?, OFlags::CLOEXEC | flags, mode)
}

/// Take the exclusive lock on `fd` if it is free: whether it was.
fn flock_now(fd: BorrowedFd<'_>) -> Result<bool, Errno> {
    match rustix::fs::flock(fd, FlockOperation::NonBlockingLockExclusive) {
        Ok(()) => Ok(true),
        Err(Errno::WOULDBLOCK) | Err(Errno::INTR) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An exclusive lock on the file at `path` (which must exist) if it is free right now: the
/// descriptor that holds it, or None when another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<OwnedFd>, Errno> {
    let fd = open(path, OFlags::RDWR | OFlags::NOFOLLOW)?;
    Ok(flock_now(fd.as_fd())?.then_some(fd))
}

/// An exclusive lock on the file at `path` (which must exist), waiting at most about
/// `max_ms`; the descriptor holds it until the process exits or execs (close-on-exec).
pub fn lock_within(path: &Path, max_ms: u32) -> Result<OwnedFd, Errno> {
    let fd = open(path, OFlags::RDWR | OFlags::NOFOLLOW)?;
    let pause = rustix::time::Timespec {
        tv_sec: 0,
        tv_nsec: 100_000,
    };
    // Bounded by the clock, not by a count of pauses: on a loaded node each pause lasts far
    // longer than asked, and a count would wait many times `max_ms`.
    let deadline = monotonic_us() + u64::from(max_ms) * 1_000;
    loop {
        if flock_now(fd.as_fd())? {
            return Ok(fd);
        }
        if monotonic_us() >= deadline {
            return Err(Errno::WOULDBLOCK);
        }
        // Interrupted or not, the next try comes soon enough.
        let _ = rustix::thread::nanosleep(&pause);
    }
}

/// Take a container's create claim (`gpushare_state::claim`): the file at `path` (made 0600
/// if new, never through a symlink) locked, on a descriptor left open across exec() so that the
/// runtime's create holds it until it exits. None when another process holds it. The lock is
/// kept only if the path still names the locked file (a remover unlinks under the lock).
pub fn take_claim(path: &Path) -> Result<Option<OwnedFd>, Errno> {
    for _ in 0..8 {
        // No CLOEXEC, on purpose.
        let fd = rustix::fs::open(
            path.c()?,
            OFlags::RDWR | OFlags::CREATE | OFlags::NOFOLLOW,
            Mode::RUSR | Mode::WUSR,
        )?;
        let held = rustix::fs::fstat(&fd)?;
        if !trusted(&held, FileType::RegularFile) {
            return Err(Errno::ACCESS);
        }
        if !flock_now(fd.as_fd())? {
            return Ok(None);
        }
        let now = lstat(path);
        if !now.is_ok_and(|now| now.st_dev == held.st_dev && now.st_ino == held.st_ino) {
            continue; // removed (and perhaps made again) meanwhile: start over
        }
        // The taker's pid: after exec() it is the runtime's create's, which a delete waits for.
        let pid = rustix::process::getpid().as_raw_nonzero().get() as u64;
        let mut text = [0u8; claim::PID_WIDTH + 1];
        let text = claim::write_pid(pid, &mut text);
        return match rio::pwrite(&fd, text, 0)? {
            n if n == text.len() => Ok(Some(fd)),
            _ => Err(Errno::IO),
        };
    }
    Err(Errno::WOULDBLOCK)
}

/// Remove the claim file at `path` if nobody holds it, or if the process holding it is this
/// one's parent (the pid the file records): under the lock either way, as every taker checks
/// after locking that the path still names the file it locked.
pub fn remove_claim(path: &Path) {
    let Ok(fd) = open(path, OFlags::RDWR | OFlags::NOFOLLOW | OFlags::NONBLOCK) else {
        return;
    };
    let ours = match flock_now(fd.as_fd()) {
        Ok(true) => true,
        Ok(false) => {
            let parent = rustix::process::getppid().map_or(0, |p| p.as_raw_nonzero().get() as u64);
            let mut text = [0u8; claim::PID_WIDTH + 1];
            let n = rio::read(&fd, &mut text).unwrap_or(0).min(text.len());
            claim::read_pid(&text[..n]) == Some(parent)
        }
        Err(_) => false,
    };
    if ours {
        unlink(path);
    }
}

/// Remove the file at `path` (best effort).
pub fn unlink(path: &Path) {
    if let Ok(p) = path.c() {
        let _ = rustix::fs::unlink(p);
    }
}

/// Write all of `data` to `fd`, retrying short and interrupted writes.
fn write_fd(fd: &OwnedFd, data: &[u8]) -> Result<(), Errno> {
    write_all(fd.as_fd(), data)
}

/// Append `data` to the file at `path` (made 0600 if new) with one write, then fsync it.
pub fn append_durably(path: &Path, data: &[u8]) -> Result<(), Errno> {
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE | OFlags::NOFOLLOW;
    let fd = open_mode(path, flags, Mode::RUSR | Mode::WUSR)?;
    // One write or nothing: a journal line written in two parts could interleave with another.
    if rio::write(&fd, data)? != data.len() {
        return Err(Errno::IO);
    }
    rustix::fs::fsync(&fd)
}

/// Append one line to the file at `path` (made if new, as runc's `--log` file is), with no
/// fsync: a log line, not state.
pub fn append_line(path: &Path, line: &[u8]) -> Result<(), Errno> {
    let flags = OFlags::WRONLY | OFlags::APPEND | OFlags::CREATE;
    let fd = open_mode(path, flags, Mode::from_raw_mode(0o666))?;
    write_fd(&fd, line)
}

/// Drop every capability: effective, permitted, inheritable and ambient (the bounding set is
/// left alone, as the full hook leaves it). Best effort, as there.
pub fn drop_all_caps() {
    use rustix::thread::{CapabilitySet, CapabilitySets};
    let none = CapabilitySets {
        effective: CapabilitySet::empty(),
        permitted: CapabilitySet::empty(),
        inheritable: CapabilitySet::empty(),
    };
    let _ = rustix::thread::set_capabilities(None, none);
    let _ = rustix::thread::clear_ambient_capability_set();
}

/// Microseconds on the monotonic clock.
pub fn monotonic_us() -> u64 {
    let t = rustix::time::clock_gettime(ClockId::Monotonic);
    t.tv_sec as u64 * 1_000_000 + t.tv_nsec as u64 / 1_000
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    rustix::time::clock_gettime(ClockId::Realtime).tv_sec as u64
}

/// A file's identity as gpushare's offers record their config's: device, inode, size, mtime
/// seconds and nanoseconds (symlinks followed).
pub fn identity(path: &Path) -> Option<[u64; 5]> {
    let st = stat_at(path, AtFlags::empty()).ok()?;
    Some([
        st.st_dev,
        st.st_ino,
        st.st_size as u64,
        st.st_mtime as u64,
        st.st_mtime_nsec,
    ])
}

/// Whether something is at `path` (symlinks followed).
pub fn exists(path: &Path) -> bool {
    identity(path).is_some()
}

/// Whether a file is at `path` itself (a symlink counts, and is never followed): a lease
/// marker's probe. An error other than NOENT is a "maybe".
pub fn is_there(path: &Path) -> bool {
    !matches!(lstat(path), Err(Errno::NOENT))
}

/// Make the empty file at `path` (0600, never through a symlink) if it is not there, and its
/// folder `dir` (0700) if that is not there either: a lease marker. Ok when a file of
/// root's (or ours) that nobody else may write is there afterwards.
pub fn make_marker(dir: &Path, path: &Path) -> Result<(), Errno> {
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::NOFOLLOW | OFlags::NONBLOCK;
    let user_rw = Mode::RUSR | Mode::WUSR;
    let fd = match open_mode(path, flags, user_rw) {
        Err(Errno::NOENT) => {
            match rustix::fs::mkdir(dir.c()?, Mode::RWXU) {
                Ok(()) | Err(Errno::EXIST) => {}
                Err(e) => return Err(e),
            }
            open_mode(path, flags, user_rw)?
        }
        r => r?,
    };
    match trusted(&rustix::fs::fstat(&fd)?, FileType::RegularFile) {
        true => Ok(()),
        false => Err(Errno::ACCESS),
    }
}

/// The first bytes of a state file (as [`Map::open_state`] checks it), at most `buf.len()`:
/// the ledger's header, read without reading the ledger.
pub fn read_head<'a>(path: &Path, buf: &'a mut [u8]) -> Result<&'a [u8], Errno> {
    let fd = open_state_fd(path)?;
    let mut len = 0;
    while len < buf.len() {
        match rio::pread(&fd, &mut buf[len..], len as u64) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(&buf[..len])
}

/// The permission bits of the file at `path` itself (not following a symlink).
pub fn mode_of(path: &Path) -> Result<Mode, Errno> {
    lstat(path).map(|st| Mode::from_raw_mode(st.st_mode & 0o7777))
}

/// Replace `dir/name` with `data` durably, as gpushare's full program does: a temp file in the
/// same folder with `mode`, written, fsync'd, renamed over the file, then the folder fsync'd.
pub fn replace_file(dir: &[u8], name: &[u8], data: &[u8], mode: Mode) -> Result<(), Errno> {
    let pid = rustix::process::getpid().as_raw_nonzero().get() as u64;
    // Unpredictable and made exclusively: nothing planted at the name is ever written through.
    let mut random = [0u8; 8];
    if rustix::rand::getrandom(&mut random, rustix::rand::GetRandomFlags::empty())? != 8 {
        return Err(Errno::IO);
    }
    let mut tmp_name = [0u8; 256];
    let n = temp::write_name(name, pid, u64::from_ne_bytes(random), &mut tmp_name)
        .ok_or(Errno::NAMETOOLONG)?;
    let tmp = Path::new(&[dir, b"/", &tmp_name[..n]]);
    let target = Path::new(&[dir, b"/", name]);
    let flags = OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW;
    let fd = open_mode(&tmp, flags, mode)?;
    let renamed = (|| {
        // The umask applied to open's mode; the spec keeps the mode it had.
        rustix::fs::fchmod(&fd, mode)?;
        write_fd(&fd, data)?;
        rustix::fs::fsync(&fd)?;
        rustix::fs::rename(tmp.c()?, target.c()?)
    })();
    drop(fd);
    if let Err(e) = renamed {
        unlink(&tmp);
        return Err(e);
    }
    rustix::fs::fsync(open(&Path::new(&[dir]), OFlags::DIRECTORY)?)
}

/// Anonymous memory of `len` bytes, zeroed, never freed (the process execs or exits soon).
pub fn scratch(len: usize) -> Result<&'static mut [u8], Errno> {
    use rustix::mm::{MapFlags, ProtFlags};
    // SAFETY: a fresh private anonymous mapping, owned by the returned slice alone.
    unsafe {
        let p = rustix::mm::mmap_anonymous(
            core::ptr::null_mut(),
            len,
            ProtFlags::READ | ProtFlags::WRITE,
            MapFlags::PRIVATE,
        )?;
        Ok(core::slice::from_raw_parts_mut(p.cast::<u8>(), len))
    }
}

/// Standard input, up to `max` bytes (one more tells that there was more), read into anonymous
/// memory.
pub fn read_stdin(max: usize) -> Result<Map, Errno> {
    // SAFETY: fd 0 is not closed while it is read (restore_stdin replaces it only after).
    read_fd(unsafe { rustix::stdio::stdin() }, max + 1)
}

/// Make `data` this process's standard input again (a memory file, read from its start), for
/// a program exec'd next that reads what this one already took off the pipe.
pub fn restore_stdin(data: &[u8]) -> Result<(), Errno> {
    // Close-on-exec: fd 0 itself, made by dup2, stays open.
    let fd = rustix::fs::memfd_create(c"state", MemfdFlags::CLOEXEC)?;
    write_fd(&fd, data)?;
    rustix::fs::seek(&fd, SeekFrom::Start(0))?;
    rustix::stdio::dup2_stdin(&fd)
}

/// A file's bytes, read into anonymous memory (never a mapping of the file itself, which a
/// writer truncating it would turn into SIGBUS). Never freed: the process execs or exits soon.
pub struct Map {
    ptr: *const u8,
    len: usize,
}

impl Map {
    /// Any file the path leads to (symlinks followed), as `std::fs::read` would read it.
    pub fn open(path: &Path) -> Result<Map, Errno> {
        Self::of_fd(&open(path, OFlags::RDONLY)?, u64::MAX)
    }

    /// A file in the state folder: never through a symlink, and only when it is root's and
    /// writable by nobody else (ACCESS otherwise).
    pub fn open_state(path: &Path) -> Result<Map, Errno> {
        Self::of_fd(&open_state_fd(path)?, u64::MAX)
    }

    fn of_fd(fd: &OwnedFd, max: u64) -> Result<Map, Errno> {
        let st = rustix::fs::fstat(fd)?;
        let size = st.st_size as u64;
        if kind(&st) != FileType::RegularFile || size > max || size > (1 << 40) {
            return Err(Errno::INVAL);
        }
        // One byte more than the file had: filling it means the file grew meanwhile, and a
        // file changing under the reader is the full wrapper's to read.
        let cap = size as usize + 1;
        let m = read_fd(fd.as_fd(), cap)?;
        if m.len == cap {
            return Err(Errno::INVAL);
        }
        Ok(m)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: len bytes of the buffer were read into and it lives until the process ends.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// A file in the state folder, opened for reading: never through a symlink, and only when it is
/// root's and writable by nobody else (ACCESS otherwise).
fn open_state_fd(path: &Path) -> Result<OwnedFd, Errno> {
    let fd = match open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK) {
        Err(Errno::LOOP) => return Err(Errno::ACCESS),
        r => r?,
    };
    match trusted(&rustix::fs::fstat(&fd)?, FileType::RegularFile) {
        true => Ok(fd),
        false => Err(Errno::ACCESS),
    }
}

/// Up to `cap` bytes read from `fd` into anonymous memory (never a mapping of a file itself,
/// which a writer truncating it would turn into SIGBUS), until end of file.
fn read_fd(fd: BorrowedFd<'_>, cap: usize) -> Result<Map, Errno> {
    let buf = scratch(cap)?;
    let mut len = 0;
    while len < cap {
        match rio::read(fd, &mut buf[len..]) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(Errno::INTR) => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(Map {
        ptr: buf.as_ptr(),
        len,
    })
}

/// A bundle's config.json as gpushare agrees to read one: a regular file, not through a
/// symlink, of bounded size; anything else is an error and the full wrapper decides.
pub fn read_spec(path: &Path, max: u64) -> Result<Map, Errno> {
    // Checked before opening, so that a FIFO or a device is never opened.
    if kind(&lstat(path)?) != FileType::RegularFile {
        return Err(Errno::INVAL);
    }
    Map::of_fd(
        &open(path, OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::NONBLOCK)?,
        max,
    )
}

/// Whether two paths lead to the same file (symlinks followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let id = |p: &Path| {
        stat_at(p, AtFlags::empty())
            .ok()
            .map(|st| (st.st_dev, st.st_ino))
    };
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

pub fn is_executable_file(path: &Path) -> bool {
    // Symlinks are followed, as stat(2) does.
    stat_at(path, AtFlags::empty())
        .is_ok_and(|st| kind(&st) == FileType::RegularFile && st.st_mode & 0o111 != 0)
}

/// Returns only on failure.
pub fn execve(path: &Path, argv: *const *const u8, envp: *const *const u8) {
    if let Ok(p) = path.c() {
        // SAFETY: argv and envp are the kernel's or built from its strings, NULL-terminated.
        unsafe { raw::execve(p, argv, envp) };
    }
}

/// What became of a runtime run as a child.
pub enum Spawned {
    /// It could not be started (no child, or its execve failed): nothing ran.
    NotStarted,
    /// It ran and exited with this code (128 + signal when killed).
    Exited(i32),
    /// It was started, but its end could not be waited for (SIGCHLD ignored by the engine).
    Lost,
}

/// Run `path` as a child with these argv and envp and wait for it. Whether its execve worked
/// comes back on a close-on-exec pipe, so a runtime that never started is told apart from one
/// that exited 127.
pub fn spawn_wait(path: &Path, argv: *const *const u8, envp: *const *const u8) -> Spawned {
    use rustix::process::{waitpid, Pid, WaitOptions};
    let Ok((rd, wr)) = rustix::pipe::pipe_with(rustix::pipe::PipeFlags::CLOEXEC) else {
        return Spawned::NotStarted;
    };
    // SAFETY: this process has one thread and holds no locks.
    let Some(pid) = (unsafe { raw::fork() }) else {
        return Spawned::NotStarted;
    };
    if pid == 0 {
        drop(rd);
        execve(path, argv, envp);
        let _ = rio::write(&wr, b"x");
        exit(127);
    }
    drop(wr);
    let mut byte = [0u8; 1];
    let failed = loop {
        match rio::read(&rd, &mut byte) {
            Err(Errno::INTR) => continue,
            Ok(n) => break n > 0,
            Err(_) => break false,
        }
    };
    drop(rd);
    let Some(pid) = Pid::from_raw(pid as i32) else {
        return Spawned::Lost;
    };
    let waited = loop {
        match waitpid(Some(pid), WaitOptions::empty()) {
            Err(Errno::INTR) => continue,
            Ok(Some((_, status))) => break Some(status),
            _ => break None,
        }
    };
    match (failed, waited) {
        (true, _) => Spawned::NotStarted,
        (false, None) => Spawned::Lost,
        (false, Some(status)) => Spawned::Exited(match status.terminating_signal() {
            Some(sig) => 128 + sig,
            None => status.exit_status().unwrap_or(0),
        }),
    }
}

/// `name` in the folder this binary was started from.
pub fn sibling(name: &[u8]) -> Option<Path> {
    let mut buf = [0u8; 4096];
    let n = rustix::fs::readlinkat_raw(CWD, c"/proc/self/exe", &mut buf[..]).ok()?;
    let dir_end = buf[..n].iter().rposition(|&b| b == b'/')?;
    Some(Path::new(&[&buf[..dir_end], b"/", name]))
}

// With no libc, the compiler's calls to these must be met here: rustix makes system calls and
// no more, and Rust's compiler_builtins supplies them only on targets that have no libc (on
// x86_64-unknown-linux-gnu it leaves them to libc). Written with string instructions or
// volatile reads so that the optimizer cannot turn them into calls to themselves. (core's
// CStr::from_ptr calls strlen.)

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    core::arch::asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
        options(nostack, preserves_flags));
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        return memcpy(dst, src, n);
    }
    // Overlapping with dst above src: copy from the end, backwards.
    core::arch::asm!("std", "rep movsb", "cld", inout("rdi") dst.add(n - 1) => _,
        inout("rsi") src.add(n - 1) => _, inout("rcx") n => _, options(nostack));
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    core::arch::asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
        options(nostack, preserves_flags));
    dst
}

#[no_mangle]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        let (x, y) = (a.add(i).read_volatile(), b.add(i).read_volatile());
        if x != y {
            return x as i32 - y as i32;
        }
    }
    0
}

#[no_mangle]
unsafe extern "C" fn strlen(s: *const u8) -> usize {
    let mut n = 0;
    while s.add(n).read_volatile() != 0 {
        n += 1;
    }
    n
}

#[no_mangle]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    memcmp(a, b, n)
}

/// libcore is built to unwind and names this routine; with panic=abort nothing calls it.
#[no_mangle]
extern "C" fn rust_eh_personality() {}
