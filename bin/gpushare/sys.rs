//! The handful of Linux system calls the `gpushare` entry binary makes, on x86-64, with no libc.

use core::arch::asm;

pub const ENOENT: i32 = 2;
const EINTR: isize = -4;
const ENAMETOOLONG: i32 = 36;
const EINVAL: i32 = 22;

const EWOULDBLOCK: i32 = 11;

const SYS_READ: usize = 0;
const SYS_WRITE: usize = 1;
const SYS_CLOSE: usize = 3;
const SYS_FSTAT: usize = 5;
const SYS_LSEEK: usize = 8;
const SYS_MMAP: usize = 9;
const SYS_DUP2: usize = 33;
const SYS_NANOSLEEP: usize = 35;
const SYS_GETPID: usize = 39;
const SYS_FORK: usize = 57;
const SYS_EXECVE: usize = 59;
const SYS_WAIT4: usize = 61;
const SYS_FLOCK: usize = 73;
const SYS_FSYNC: usize = 74;
const SYS_RENAME: usize = 82;
const SYS_UNLINK: usize = 87;
const SYS_READLINK: usize = 89;
const SYS_FCHMOD: usize = 91;
const SYS_CAPSET: usize = 126;
const SYS_PRCTL: usize = 157;
const SYS_CLOCK_GETTIME: usize = 228;
const SYS_EXIT_GROUP: usize = 231;
const SYS_OPENAT: usize = 257;
const SYS_NEWFSTATAT: usize = 262;
const SYS_PIPE2: usize = 293;
const SYS_MEMFD_CREATE: usize = 319;
const SYS_GETRANDOM: usize = 318;
const SYS_PWRITE64: usize = 18;
const SYS_GETPPID: usize = 110;
const SYS_GETEUID: usize = 107;

/// What a state file or folder that is not root's alone, or is a symlink, reads as.
pub const EACCES: i32 = 13;
const ELOOP: i32 = 40;
const S_IFDIR: u32 = 0o040000;

const AT_FDCWD: isize = -100;
const AT_SYMLINK_NOFOLLOW: usize = 0x100;
const O_CLOEXEC: usize = 0o2000000;
const O_RDONLY_CLOEXEC: usize = O_CLOEXEC;
const O_WRONLY: usize = 0o1;
const O_RDWR: usize = 0o2;
const O_CREAT: usize = 0o100;
const O_APPEND: usize = 0o2000;
const O_NONBLOCK: usize = 0o4000;
const LOCK_EX_NB: usize = 2 | 4;
const CLOCK_REALTIME: usize = 0;
const CLOCK_MONOTONIC: usize = 1;
const O_EXCL: usize = 0o200;
const O_DIRECTORY: usize = 0o200000;
const O_NOFOLLOW: usize = 0o400000;
const S_IFMT: u32 = 0o170000;
const S_IFREG: u32 = 0o100000;
const PROT_READ_WRITE: usize = 3;
const MAP_PRIVATE_ANONYMOUS: usize = 0x22;

/// # Safety
/// A raw system call: the caller passes what the kernel expects for `n`.
unsafe fn syscall(n: usize, a: usize, b: usize, c: usize, d: usize, e: usize, f: usize) -> isize {
    let ret: isize;
    asm!(
        "syscall",
        inlateout("rax") n as isize => ret,
        in("rdi") a,
        in("rsi") b,
        in("rdx") c,
        in("r10") d,
        in("r8") e,
        in("r9") f,
        lateout("rcx") _,
        lateout("r11") _,
        options(nostack),
    );
    ret
}

fn errno(ret: isize) -> Result<usize, i32> {
    if (-4095..0).contains(&ret) {
        Err(-ret as i32)
    } else {
        Ok(ret as usize)
    }
}

pub fn exit(code: i32) -> ! {
    // SAFETY: exit_group takes a status and does not return.
    unsafe {
        syscall(SYS_EXIT_GROUP, code as usize, 0, 0, 0, 0, 0);
        core::hint::unreachable_unchecked()
    }
}

pub fn write_all(fd: usize, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: buf is valid for its length.
        let r = unsafe { syscall(SYS_WRITE, fd, buf.as_ptr() as usize, buf.len(), 0, 0, 0) };
        match errno(r) {
            Ok(n) if n > 0 => buf = &buf[n..],
            Err(4) => continue,
            _ => return,
        }
    }
}

/// # Safety
/// `p` points to a NUL-terminated string that outlives the program.
pub unsafe fn cstr(p: *const u8) -> &'static [u8] {
    core::slice::from_raw_parts(p, strlen(p))
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

    fn c(&self) -> Result<usize, i32> {
        match self.len {
            Some(_) => Ok(self.buf.as_ptr() as usize),
            None => Err(ENAMETOOLONG),
        }
    }
}

/// `st_mode` and `st_size` of x86-64's `struct stat` (144 bytes).
fn mode_size(st: &[u64; 18]) -> (u32, u64) {
    ((st[3] & 0xffff_ffff) as u32, st[6])
}

/// x86-64's `struct stat` of `path`; `flags` is 0 (symlinks followed) or AT_SYMLINK_NOFOLLOW.
fn stat_at(path: &Path, flags: usize) -> Result<[u64; 18], i32> {
    let mut st = [0u64; 18];
    // SAFETY: st is a struct stat's size; the path is NUL-terminated.
    let r = unsafe {
        syscall(
            SYS_NEWFSTATAT,
            AT_FDCWD as usize,
            path.c()?,
            st.as_mut_ptr() as usize,
            flags,
            0,
            0,
        )
    };
    errno(r).map(|_| st)
}

fn lstat(path: &Path) -> Result<(u32, u64), i32> {
    stat_at(path, AT_SYMLINK_NOFOLLOW).map(|st| mode_size(&st))
}

/// `st_uid` of x86-64's `struct stat`.
fn uid_of(st: &[u64; 18]) -> u32 {
    (st[3] >> 32) as u32
}

/// Whether a state folder or file with this mode and owner may be used: root's (or this
/// process's user's), writable by nobody else, and of the expected kind.
fn trusted(mode: u32, uid: u32, kind: u32) -> bool {
    // SAFETY: geteuid takes nothing.
    let owner = uid == 0 || uid as isize == unsafe { syscall(SYS_GETEUID, 0, 0, 0, 0, 0, 0) };
    mode & S_IFMT == kind && owner && mode & 0o022 == 0
}

/// Whether the state folder at `path` may be used (not a symlink, root's, writable by nobody
/// else): ENOENT when it does not exist, EACCES when it must not be used.
pub fn check_state_dir(path: &Path) -> Result<(), i32> {
    let st = stat_at(path, AT_SYMLINK_NOFOLLOW)?;
    match trusted(mode_size(&st).0, uid_of(&st), S_IFDIR) {
        true => Ok(()),
        false => Err(EACCES),
    }
}

fn stat_fd_full(fd: usize) -> Result<[u64; 18], i32> {
    let mut st = [0u64; 18];
    // SAFETY: st is a struct stat's size.
    errno(unsafe { syscall(SYS_FSTAT, fd, st.as_mut_ptr() as usize, 0, 0, 0, 0) }).map(|_| st)
}

fn stat_fd(fd: usize) -> Result<(u32, u64), i32> {
    stat_fd_full(fd).map(|st| mode_size(&st))
}

fn open(path: &Path, flags: usize) -> Result<usize, i32> {
    open_mode(path, flags, 0)
}

fn open_mode(path: &Path, flags: usize, mode: usize) -> Result<usize, i32> {
    // SAFETY: a NUL-terminated path.
    errno(unsafe {
        syscall(
            SYS_OPENAT,
            AT_FDCWD as usize,
            path.c()?,
            O_RDONLY_CLOEXEC | flags,
            mode,
            0,
            0,
        )
    })
}

/// Take the exclusive lock on `fd` if it is free: whether it was.
fn flock_now(fd: usize) -> Result<bool, i32> {
    // SAFETY: flock on a descriptor we own.
    match errno(unsafe { syscall(SYS_FLOCK, fd, LOCK_EX_NB, 0, 0, 0, 0) }) {
        Ok(_) => Ok(true),
        Err(EWOULDBLOCK) | Err(4) => Ok(false),
        Err(e) => Err(e),
    }
}

/// An exclusive lock on the file at `path` (which must exist) if it is free right now: the
/// descriptor that holds it, or None when another process holds it.
pub fn try_lock(path: &Path) -> Result<Option<usize>, i32> {
    let fd = open(path, O_RDWR | O_NOFOLLOW)?;
    match flock_now(fd) {
        Ok(true) => Ok(Some(fd)),
        other => {
            close(fd);
            other.map(|_| None)
        }
    }
}

/// An exclusive lock on the file at `path` (which must exist), waiting at most about
/// `max_ms`; the descriptor holds it until the process exits or execs (close-on-exec).
pub fn lock_within(path: &Path, max_ms: u32) -> Result<usize, i32> {
    let fd = open(path, O_RDWR | O_NOFOLLOW)?;
    let pause = [0usize, 100_000]; // struct timespec: 100 us
    for _ in 0..max_ms.saturating_mul(10).max(1) {
        match flock_now(fd) {
            Ok(true) => return Ok(fd),
            Ok(false) => {}
            Err(e) => {
                close(fd);
                return Err(e);
            }
        }
        // SAFETY: a valid timespec; the remainder is not wanted.
        unsafe { syscall(SYS_NANOSLEEP, pause.as_ptr() as usize, 0, 0, 0, 0, 0) };
    }
    close(fd);
    Err(EWOULDBLOCK)
}

/// Take a container's create claim (`gpushare_fastpath::claim`): the file at `path` (made 0600
/// if new, never through a symlink) locked, on a descriptor left open across exec() so that the
/// runtime's create holds it until it exits. None when another process holds it. The lock is
/// kept only if the path still names the locked file (a remover unlinks under the lock).
pub fn take_claim(path: &Path) -> Result<Option<usize>, i32> {
    for _ in 0..8 {
        // SAFETY: a NUL-terminated path; no O_CLOEXEC on purpose.
        let fd = errno(unsafe {
            syscall(
                SYS_OPENAT,
                AT_FDCWD as usize,
                path.c()?,
                O_RDWR | O_CREAT | O_NOFOLLOW,
                0o600,
                0,
                0,
            )
        })?;
        let kept = (|| {
            let held = stat_fd_full(fd)?;
            if !trusted(mode_size(&held).0, uid_of(&held), S_IFREG) {
                return Err(EACCES);
            }
            if !flock_now(fd)? {
                return Ok(Some(false));
            }
            let now = stat_at(path, AT_SYMLINK_NOFOLLOW);
            if !now.is_ok_and(|now| now[0] == held[0] && now[1] == held[1]) {
                return Ok(None); // removed (and perhaps made again) meanwhile: start over
            }
            // The taker's pid, as the full program writes it (`{:>10}\n`): after exec() it is
            // the runtime's create's, which a delete waits for.
            // SAFETY: getpid takes nothing.
            let pid = unsafe { syscall(SYS_GETPID, 0, 0, 0, 0, 0, 0) } as u64;
            let mut digits = [0u8; 20];
            let pid = gpushare_fastpath::decimal::format(pid, &mut digits);
            let mut text = [b' '; 11];
            text[10 - pid.len()..10].copy_from_slice(pid);
            text[10] = b'\n';
            // SAFETY: text is valid for its length.
            let w = unsafe { syscall(SYS_PWRITE64, fd, text.as_ptr() as usize, 11, 0, 0, 0) };
            match errno(w) {
                Ok(11) => Ok(Some(true)),
                Ok(_) => Err(EINVAL),
                Err(e) => Err(e),
            }
        })();
        match kept {
            Ok(Some(true)) => return Ok(Some(fd)),
            Ok(Some(false)) => {
                close(fd);
                return Ok(None);
            }
            Ok(None) => close(fd),
            Err(e) => {
                close(fd);
                return Err(e);
            }
        }
    }
    Err(EWOULDBLOCK)
}

/// Remove the claim file at `path` if nobody holds it, or if the process holding it is this
/// one's parent (the pid the file records): under the lock either way, as every taker checks
/// after locking that the path still names the file it locked.
pub fn remove_claim(path: &Path) {
    let Ok(fd) = open(path, O_RDWR | O_NOFOLLOW | O_NONBLOCK) else {
        return;
    };
    let ours = match flock_now(fd) {
        Ok(true) => true,
        Ok(false) => {
            // SAFETY: getppid takes nothing.
            let parent = unsafe { syscall(SYS_GETPPID, 0, 0, 0, 0, 0, 0) } as u64;
            let mut text = [0u8; 16];
            // SAFETY: text is writable for its length.
            let r = unsafe { syscall(SYS_READ, fd, text.as_mut_ptr() as usize, 16, 0, 0, 0) };
            let n = errno(r).unwrap_or(0).min(16);
            let digits = text[..n].iter().copied().filter(u8::is_ascii_digit);
            let mut pid = 0u64;
            let mut any = false;
            for d in digits {
                pid = pid.saturating_mul(10).saturating_add(u64::from(d - b'0'));
                any = true;
            }
            any && pid == parent
        }
        Err(_) => false,
    };
    if ours {
        unlink(path);
    }
    close(fd);
}

/// Remove the file at `path` (best effort).
pub fn unlink(path: &Path) {
    if let Ok(p) = path.c() {
        // SAFETY: a NUL-terminated path.
        unsafe { syscall(SYS_UNLINK, p, 0, 0, 0, 0, 0) };
    }
}

/// Append `data` to the file at `path` (made 0600 if new) with one write, then fsync it.
pub fn append_durably(path: &Path, data: &[u8]) -> Result<(), i32> {
    let fd = open_mode(path, O_WRONLY | O_APPEND | O_CREAT | O_NOFOLLOW, 0o600)?;
    // SAFETY: data is valid for its length.
    let r = unsafe { syscall(SYS_WRITE, fd, data.as_ptr() as usize, data.len(), 0, 0, 0) };
    let written = match errno(r) {
        Ok(n) if n == data.len() => Ok(()),
        Ok(_) => Err(EINVAL),
        Err(e) => Err(e),
    };
    // SAFETY: fsync on a descriptor we own.
    let synced = written.and_then(|()| errno(unsafe { syscall(SYS_FSYNC, fd, 0, 0, 0, 0, 0) }));
    close(fd);
    synced.map(drop)
}

/// Drop every capability: effective, permitted, inheritable and ambient (the bounding set is
/// left alone, as the full hook leaves it). Best effort, as there.
pub fn drop_all_caps() {
    let header = [0x2008_0522u32, 0]; // _LINUX_CAPABILITY_VERSION_3, this process
    let data = [0u32; 6]; // two struct __user_cap_data_struct, all empty
                          // SAFETY: a capability header and two data structs, as capset(2) expects.
    unsafe {
        syscall(
            SYS_CAPSET,
            header.as_ptr() as usize,
            data.as_ptr() as usize,
            0,
            0,
            0,
            0,
        );
        syscall(SYS_PRCTL, 47, 4, 0, 0, 0, 0); // PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL
    }
}

/// A clock's (seconds, nanoseconds), or zeros if it cannot be read.
fn clock(id: usize) -> (u64, u64) {
    let mut ts = [0u64; 2];
    // SAFETY: ts is a struct timespec.
    let r = unsafe { syscall(SYS_CLOCK_GETTIME, id, ts.as_mut_ptr() as usize, 0, 0, 0, 0) };
    match errno(r) {
        Ok(_) => (ts[0], ts[1]),
        Err(_) => (0, 0),
    }
}

/// Microseconds on the monotonic clock.
pub fn monotonic_us() -> u64 {
    let (s, ns) = clock(CLOCK_MONOTONIC);
    s * 1_000_000 + ns / 1_000
}

/// A file's identity as gpushare's offers record their config's: device, inode, size, mtime
/// seconds and nanoseconds (symlinks followed).
pub fn identity(path: &Path) -> Option<[u64; 5]> {
    let st = stat_at(path, 0).ok()?;
    Some([st[0], st[1], st[6], st[11], st[12]])
}

/// Whether something is at `path` (symlinks followed).
pub fn exists(path: &Path) -> bool {
    identity(path).is_some()
}

/// The permission bits of the file at `path` itself (not following a symlink).
pub fn mode_of(path: &Path) -> Result<u32, i32> {
    lstat(path).map(|(mode, _)| mode & 0o7777)
}

/// Replace `dir/name` with `data` durably, as gpushare's full program does: a temp file in the
/// same folder with `mode`, written, fsync'd, renamed over the file, then the folder fsync'd.
pub fn replace_file(dir: &[u8], name: &[u8], data: &[u8], mode: u32) -> Result<(), i32> {
    // SAFETY: getpid takes nothing.
    let pid = unsafe { syscall(SYS_GETPID, 0, 0, 0, 0, 0, 0) } as u64;
    let mut digits = [0u8; 20];
    let pid = gpushare_fastpath::decimal::format(pid, &mut digits);
    // Unpredictable and made exclusively: nothing planted at the name is ever written through.
    let mut random = [0u8; 8];
    // SAFETY: random is writable for its length.
    let r = unsafe { syscall(SYS_GETRANDOM, random.as_mut_ptr() as usize, 8, 0, 0, 0, 0) };
    if errno(r) != Ok(8) {
        return Err(EINVAL);
    }
    let mut hex = [0u8; 16];
    for (i, b) in random.iter().enumerate() {
        hex[2 * i] = b"0123456789abcdef"[(b >> 4) as usize];
        hex[2 * i + 1] = b"0123456789abcdef"[(b & 15) as usize];
    }
    let tmp = Path::new(&[dir, b"/.", name, b".gpushare-tmp.", pid, b".", &hex]);
    let target = Path::new(&[dir, b"/", name]);
    let fd = open_mode(
        &tmp,
        O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW,
        mode as usize,
    )?;
    let written = (|| {
        // SAFETY: plain descriptor operations on a descriptor we own; data is valid.
        errno(unsafe { syscall(SYS_FCHMOD, fd, mode as usize, 0, 0, 0, 0) })?;
        let mut rest = data;
        while !rest.is_empty() {
            let r = unsafe { syscall(SYS_WRITE, fd, rest.as_ptr() as usize, rest.len(), 0, 0, 0) };
            match errno(r) {
                Ok(k) if k > 0 => rest = &rest[k..],
                Err(4) => continue,
                Ok(_) => return Err(EINVAL),
                Err(e) => return Err(e),
            }
        }
        errno(unsafe { syscall(SYS_FSYNC, fd, 0, 0, 0, 0, 0) })?;
        Ok(())
    })();
    close(fd);
    // SAFETY: NUL-terminated paths.
    let renamed = written.and_then(|()| {
        errno(unsafe { syscall(SYS_RENAME, tmp.c()?, target.c()?, 0, 0, 0, 0) }).map(drop)
    });
    if let Err(e) = renamed {
        if let Ok(t) = tmp.c() {
            // SAFETY: a NUL-terminated path.
            unsafe { syscall(SYS_UNLINK, t, 0, 0, 0, 0, 0) };
        }
        return Err(e);
    }
    let dfd = open(&Path::new(&[dir]), O_DIRECTORY)?;
    // SAFETY: fsync on a descriptor we own.
    let synced = errno(unsafe { syscall(SYS_FSYNC, dfd, 0, 0, 0, 0, 0) });
    close(dfd);
    synced.map(drop)
}

/// Anonymous memory of `len` bytes, zeroed, never freed (the process execs or exits soon).
pub fn scratch(len: usize) -> Result<&'static mut [u8], i32> {
    // SAFETY: a fresh private anonymous mapping, owned by the returned slice alone.
    let r = unsafe {
        syscall(
            SYS_MMAP,
            0,
            len,
            PROT_READ_WRITE,
            MAP_PRIVATE_ANONYMOUS,
            usize::MAX,
            0,
        )
    };
    let p = errno(r)? as *mut u8;
    Ok(unsafe { core::slice::from_raw_parts_mut(p, len) })
}

/// Seconds since the epoch.
pub fn now() -> u64 {
    clock(CLOCK_REALTIME).0
}

/// Standard input, up to `max` bytes (one more tells that there was more), read into anonymous
/// memory.
pub fn read_stdin(max: usize) -> Result<Map, i32> {
    read_fd(0, max + 1)
}

/// Make `data` this process's standard input again (a memory file, read from its start), for
/// a program exec'd next that reads what this one already took off the pipe.
pub fn restore_stdin(data: &[u8]) -> Result<(), i32> {
    // SAFETY: a NUL-terminated name; MFD_CLOEXEC (fd 0 itself, made by dup2, stays open).
    let fd =
        errno(unsafe { syscall(SYS_MEMFD_CREATE, c"state".as_ptr() as usize, 1, 0, 0, 0, 0) })?;
    let mut rest = data;
    while !rest.is_empty() {
        // SAFETY: rest is valid for its length.
        let r = unsafe { syscall(SYS_WRITE, fd, rest.as_ptr() as usize, rest.len(), 0, 0, 0) };
        match errno(r) {
            Ok(n) if n > 0 => rest = &rest[n..],
            Err(4) => continue,
            _ => {
                close(fd);
                return Err(EINVAL);
            }
        }
    }
    // SAFETY: plain descriptor operations on descriptors we own.
    let r = unsafe { syscall(SYS_LSEEK, fd, 0, 0, 0, 0, 0) }; // SEEK_SET
    let r = errno(r).and_then(|_| errno(unsafe { syscall(SYS_DUP2, fd, 0, 0, 0, 0, 0) }));
    close(fd);
    r.map(drop)
}

pub fn close(fd: usize) {
    // SAFETY: closes a descriptor this process opened.
    unsafe { syscall(SYS_CLOSE, fd, 0, 0, 0, 0, 0) };
}

/// A file's bytes, read into anonymous memory (never a mapping of the file itself, which a
/// writer truncating it would turn into SIGBUS). Never freed: the process execs or exits soon.
pub struct Map {
    ptr: *const u8,
    len: usize,
}

impl Map {
    /// Any file the path leads to (symlinks followed), as `std::fs::read` would read it.
    pub fn open(path: &Path) -> Result<Map, i32> {
        let fd = open(path, 0)?;
        let m = Self::of_fd(fd, u64::MAX);
        close(fd);
        m
    }

    /// A file in the state folder: never through a symlink, and only when it is root's and
    /// writable by nobody else (EACCES otherwise).
    pub fn open_state(path: &Path) -> Result<Map, i32> {
        let fd = match open(path, O_NOFOLLOW | O_NONBLOCK) {
            Err(ELOOP) => return Err(EACCES),
            r => r?,
        };
        let m =
            stat_fd_full(fd).and_then(|st| match trusted(mode_size(&st).0, uid_of(&st), S_IFREG) {
                true => Self::of_fd(fd, u64::MAX),
                false => Err(EACCES),
            });
        close(fd);
        m
    }

    fn of_fd(fd: usize, max: u64) -> Result<Map, i32> {
        let (mode, size) = stat_fd(fd)?;
        if mode & S_IFMT != S_IFREG || size > max || size > (1 << 40) {
            return Err(EINVAL);
        }
        // One byte more than the file had: filling it means the file grew meanwhile, and a
        // file changing under the reader is the full wrapper's to read.
        let cap = size as usize + 1;
        let m = read_fd(fd, cap)?;
        if m.len == cap {
            return Err(EINVAL);
        }
        Ok(m)
    }

    pub fn bytes(&self) -> &[u8] {
        // SAFETY: len bytes of the buffer were read into and it lives until the process ends.
        unsafe { core::slice::from_raw_parts(self.ptr, self.len) }
    }
}

/// Up to `cap` bytes read from `fd` into anonymous memory (never a mapping of a file itself,
/// which a writer truncating it would turn into SIGBUS), until end of file.
fn read_fd(fd: usize, cap: usize) -> Result<Map, i32> {
    let buf = scratch(cap)?;
    let mut len = 0;
    while len < cap {
        // SAFETY: buf has cap bytes; len < cap.
        let r = unsafe {
            syscall(
                SYS_READ,
                fd,
                buf[len..].as_mut_ptr() as usize,
                cap - len,
                0,
                0,
                0,
            )
        };
        match errno(r) {
            Ok(0) => break,
            Ok(n) => len += n,
            Err(4) => continue,
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
pub fn read_spec(path: &Path, max: u64) -> Result<Map, i32> {
    // Checked before opening, so that a FIFO or a device is never opened.
    let (mode, _) = lstat(path)?;
    if mode & S_IFMT != S_IFREG {
        return Err(EINVAL);
    }
    let fd = open(path, O_NOFOLLOW | O_NONBLOCK)?;
    let m = Map::of_fd(fd, max);
    close(fd);
    m
}

/// Whether two paths lead to the same file (symlinks followed).
pub fn same_file(a: &Path, b: &Path) -> bool {
    let id = |p: &Path| stat_at(p, 0).ok().map(|st| (st[0], st[1])); // st_dev, st_ino
    matches!((id(a), id(b)), (Some(x), Some(y)) if x == y)
}

pub fn is_executable_file(path: &Path) -> bool {
    // Symlinks are followed, as stat(2) does.
    stat_at(path, 0).is_ok_and(|st| {
        let (mode, _) = mode_size(&st);
        mode & S_IFMT == S_IFREG && mode & 0o111 != 0
    })
}

/// Returns only on failure.
pub fn execve(path: &Path, argv: *const *const u8, envp: *const *const u8) {
    if let Ok(p) = path.c() {
        // SAFETY: NULL-terminated arrays of NUL-terminated strings.
        unsafe { syscall(SYS_EXECVE, p, argv as usize, envp as usize, 0, 0, 0) };
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
    let mut fds = [0i32; 2];
    // SAFETY: fds holds two ints.
    let r = unsafe { syscall(SYS_PIPE2, fds.as_mut_ptr() as usize, O_CLOEXEC, 0, 0, 0, 0) };
    if errno(r).is_err() {
        return Spawned::NotStarted;
    }
    let (rd, wr) = (fds[0] as usize, fds[1] as usize);
    // SAFETY: fork in a single-threaded process with no locks held.
    let Ok(pid) = errno(unsafe { syscall(SYS_FORK, 0, 0, 0, 0, 0, 0) }) else {
        close(rd);
        close(wr);
        return Spawned::NotStarted;
    };
    if pid == 0 {
        close(rd);
        execve(path, argv, envp);
        write_all(wr, b"x");
        exit(127);
    }
    close(wr);
    let mut byte = [0u8; 1];
    let failed = loop {
        // SAFETY: byte is one writable byte.
        match errno(unsafe { syscall(SYS_READ, rd, byte.as_mut_ptr() as usize, 1, 0, 0, 0) }) {
            Err(4) => continue,
            Ok(n) => break n > 0,
            Err(_) => break false,
        }
    };
    close(rd);
    let mut status: i32 = 0;
    let waited = loop {
        // SAFETY: status is an int.
        let r = unsafe { syscall(SYS_WAIT4, pid, &mut status as *mut i32 as usize, 0, 0, 0, 0) };
        if r != EINTR {
            break errno(r).is_ok();
        }
    };
    match (failed, waited) {
        (true, _) => Spawned::NotStarted,
        (false, false) => Spawned::Lost,
        (false, true) => Spawned::Exited(match status & 0x7f {
            0 => (status >> 8) & 0xff,
            sig => 128 + sig,
        }),
    }
}

/// `name` in the folder this binary was started from.
pub fn sibling(name: &[u8]) -> Option<Path> {
    let mut buf = [0u8; 4096];
    let exe = Path::new(&[b"/proc/self/exe"]);
    // SAFETY: buf is writable for its length.
    let r = unsafe {
        syscall(
            SYS_READLINK,
            exe.c().ok()?,
            buf.as_mut_ptr() as usize,
            buf.len(),
            0,
            0,
            0,
        )
    };
    let n = errno(r).ok()?;
    let dir_end = buf[..n].iter().rposition(|&b| b == b'/')?;
    Some(Path::new(&[&buf[..dir_end], b"/", name]))
}

// With no libc, the compiler's calls to these must be met here. Written with string
// instructions or volatile reads so that the optimizer cannot turn them into calls to
// themselves.

#[no_mangle]
unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
        options(nostack, preserves_flags));
    dst
}

#[no_mangle]
unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize) <= (src as usize) || (dst as usize) >= (src as usize) + n {
        return memcpy(dst, src, n);
    }
    // Overlapping with dst above src: copy from the end, backwards.
    asm!("std", "rep movsb", "cld", inout("rdi") dst.add(n - 1) => _,
        inout("rsi") src.add(n - 1) => _, inout("rcx") n => _, options(nostack));
    dst
}

#[no_mangle]
unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
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
