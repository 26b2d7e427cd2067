//! `gpushare`, the binary engines run for every runtime command. It runs with no libc, no
//! allocator and no dynamic loader, because most commands need nothing of gpushare: `start`,
//! `state`, `kill`, a `create` (or `run`) whose spec asks for no GPU, a `delete` or `exec` of a
//! container the ledger never mentions. Those it hands to the runtime with one execve(), as the
//! engine would have.
//! Everything else, and anything it is not sure of, goes to `gpushare-runtime` (the full
//! wrapper, next to this binary) with argv untouched.
//!
//! Run under the name `gpushare-hook` (argv[0], as the poststop hook gpushare writes into GPU
//! specs runs it), it is that hook: it releases the container's slice by appending one line to
//! the ledger's release journal (`gpushare_state::journal`), or hands the hook, stdin
//! included, to the full `gpushare-hook` next to it when the case is not a plain one.
//!
//! On other architectures `gpushare` is the full wrapper itself.
#![cfg_attr(target_arch = "x86_64", no_std, no_main)]

#[cfg(not(target_arch = "x86_64"))]
#[allow(dead_code)] // its own `main`
#[path = "../gpushare-runtime/main.rs"]
mod runtime;

#[cfg(not(target_arch = "x86_64"))]
fn main() {
    std::process::exit(runtime::run(std::env::args_os().collect()));
}

#[cfg(target_arch = "x86_64")]
mod sys;

#[cfg(target_arch = "x86_64")]
mod entry {
    use super::sys::{self, Errno, Map, Path};
    use gpushare_fastpath::lease as fastpath_lease;
    use gpushare_fastpath::runc_log::{self, Level};
    use gpushare_fastpath::{args, config, scan, splice, state};
    use gpushare_state::{claim, decimal, journal, lease, ledger, lock, offers};

    /// The full wrapper's file name; it lives next to this binary.
    const FULL: &[u8] = b"gpushare-runtime";
    /// The full hook's file name, next to this binary too; also the name (argv[0]) under
    /// which this binary is the hook.
    const FULL_HOOK: &[u8] = b"gpushare-hook";
    /// The most of a state document read from stdin, as the full hook reads.
    const MAX_STATE: usize = 1 << 20;
    /// How long the hook waits for the ledger's lock before the full hook (which waits its
    /// configured time) takes over: a grant holds it well under a millisecond.
    const HOOK_LOCK_MS: u32 = 200;
    /// runc's argv is a dozen words; anything longer is the full wrapper's to read.
    const MAX_ARGS: usize = 256;
    const DEFAULT_PATH_ENV: &[u8] = b"/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

    core::arch::global_asm!(
        ".globl _start",
        "_start:",
        "xor ebp, ebp",
        "mov rdi, rsp",
        "and rsp, -16",
        "call {main}",
        "ud2",
        main = sym main,
    );

    struct Process {
        argc: usize,
        argv: *const *const u8,
        envp: *const *const u8,
    }

    /// What a panic (which the code below should never reach) falls back to: the full wrapper.
    static mut PROCESS: Process = Process {
        argc: 0,
        argv: core::ptr::null(),
        envp: core::ptr::null(),
    };

    unsafe extern "C" fn main(sp: *const usize) -> ! {
        let argc = *sp;
        let argv = sp.add(1) as *const *const u8;
        let envp = argv.add(argc + 1);
        // rustix finds the vDSO (for clock_gettime) through the auxv after envp, as the
        // kernel laid them out, instead of reading it from /proc/self/auxv.
        rustix::param::init(envp as *mut *mut u8);
        PROCESS = Process { argc, argv, envp };
        let p = &*core::ptr::addr_of!(PROCESS);
        if p.argc > 0 && p.argc <= MAX_ARGS && base_name(arg(p, 0)) == FULL_HOOK {
            hook(p);
        }
        decide(p);
        delegate(p, None)
    }

    fn base_name(path: &[u8]) -> &[u8] {
        path.rsplit(|&b| b == b'/').next().unwrap_or(path)
    }

    #[panic_handler]
    fn panic(_: &core::panic::PanicInfo) -> ! {
        use core::sync::atomic::{AtomicBool, Ordering};
        static PANICKED: AtomicBool = AtomicBool::new(false);
        if PANICKED.swap(true, Ordering::Relaxed) {
            sys::exit(127); // a panic while handing over: no second try
        }
        // SAFETY: PROCESS is written once, before anything can panic.
        unsafe { delegate(&*core::ptr::addr_of!(PROCESS), None) }
    }

    fn arg(p: &Process, i: usize) -> &'static [u8] {
        // SAFETY: the kernel's argv: argc NUL-terminated strings that live as long as we do.
        unsafe { sys::cstr(*p.argv.add(i)) }
    }

    fn env(p: &Process, name: &[u8]) -> Option<&'static [u8]> {
        let mut i = 0;
        loop {
            // SAFETY: envp is NULL-terminated, each entry a NUL-terminated string.
            let e = unsafe { *p.envp.add(i) };
            if e.is_null() {
                return None;
            }
            let s = unsafe { sys::cstr(e) };
            if let Some(v) = s.strip_prefix(name).and_then(|r| r.strip_prefix(b"=")) {
                return Some(v);
            }
            i += 1;
        }
    }

    /// Returns only when the full wrapper must decide.
    fn decide(p: &Process) {
        if p.argc == 0 || p.argc > MAX_ARGS {
            return;
        }
        let parsed = args::parse((1..p.argc).map(|i| arg(p, i)));
        if parsed.after_delete.is_some() {
            return;
        }
        let Some(text) = config_text(p, parsed.config) else {
            return;
        };
        let Some(top) = config_top(&text) else {
            return;
        };
        let Some(runtime) = find_runtime(p, top.runtime) else {
            return;
        };
        match parsed.command {
            // `run` is `create` and `start` in one: its spec is granted exactly as create's.
            Some(b"create") | Some(b"run") => {
                let bundle = parsed.bundle.unwrap_or(b".");
                if bundle.is_empty() {
                    return; // "" is the working folder to the runtime: the full wrapper's case
                }
                let spec = Path::new(&[bundle, b"/config.json"]);
                match sys::read_spec(&spec, scan::MAX_SPEC_BYTES) {
                    Ok(m) if !scan::may_contain_request(m.bytes()) => exec_runtime(p, &runtime),
                    Ok(m) => {
                        let grant = Create {
                            parsed: &parsed,
                            config: &text,
                            state_dir: top.state_dir.unwrap_or(config::DEFAULT_STATE_DIR),
                            runtime: &runtime,
                            bundle,
                            spec: m.bytes(),
                        };
                        match grant.offered(p) {
                            Ok(()) => exec_runtime(p, &runtime),
                            Err(Some(why)) => tell(&parsed, why),
                            Err(None) => {}
                        }
                    }
                    _ => {}
                }
            }
            Some(b"delete") => {
                let Some(id) = parsed.container_id else {
                    exec_runtime(p, &runtime);
                    return;
                };
                let dir = top.state_dir.unwrap_or(config::DEFAULT_STATE_DIR);
                if !may_hold(dir, id) {
                    exec_runtime(p, &runtime);
                    return;
                }
                // The container's claim, held until the release is done (across the exec of
                // the runtime's delete, whose poststop hook releases): a create of this id
                // meanwhile waits, and cannot be handed the lease this delete then frees. If a
                // create of the id still runs (the claim is held), the full wrapper waits for
                // it, so the slice is never freed while the container is still to come up.
                let claim_path = Path::new(&[dir, b"/", claim::DIR.as_bytes(), b"/", id]);
                if !claim::is_nameable(id) {
                    return;
                }
                match sys::take_claim(&claim_path) {
                    // Never closed: this process, and the runtime's delete it becomes, hold
                    // the claim until they exit (a dropped descriptor would let it go now).
                    Ok(Some(fd)) => core::mem::forget(fd),
                    Ok(None) => return tell(&parsed, Why::new(Level::Info, CLAIM_HELD, None)),
                    Err(e) => return tell(&parsed, Why::new(Level::Warning, NO_CLAIM, Some(e))),
                }
                // runc's own state says it will run gpushare's poststop hook, which releases:
                // nothing is left for gpushare to do after runc, which then replaces this
                // process as for any other command. (A hook that fails leaves the lease to
                // gc, which releases leases of containers the runtime no longer has.)
                if runc_runs_our_hook(&parsed, &runtime, id) {
                    exec_runtime(p, &runtime);
                    return;
                }
                // Otherwise run the runtime's delete, whose poststop hook may release it; the
                // full wrapper is needed only if the lease is still there after (a hook that
                // timed out, a runtime that skipped hooks, a container it never had).
                let code = match spawn_runtime(p, &runtime) {
                    // Nothing ran: the full wrapper takes the whole command.
                    sys::Spawned::NotStarted => return,
                    sys::Spawned::Exited(code) => code,
                    sys::Spawned::Lost => {
                        sys::say(b"gpushare: cannot run the runtime: its exit status was lost (is SIGCHLD ignored?)\n");
                        sys::exit(127)
                    }
                };
                if !may_hold(dir, id) {
                    sys::unlink(&claim_path); // held by this process, whose exit lets it go
                    sys::exit(code);
                }
                // The full wrapper releases if the runtime deleted the container or no longer
                // has it (a create it refused), and exits with the runtime's code.
                delegate(p, Some(code));
            }
            // An exec into a container that holds a grant gets the grant's env from the full
            // wrapper; any other exec reaches the runtime untouched, after one ledger scan.
            Some(b"exec") => {
                let dir = top.state_dir.unwrap_or(config::DEFAULT_STATE_DIR);
                if parsed.container_id.is_some_and(|id| may_hold(dir, id)) {
                    return;
                }
                exec_runtime(p, &runtime)
            }
            _ => exec_runtime(p, &runtime),
        }
    }

    /// Whether the runtime is runc and its state for container `id` holds gpushare's poststop
    /// hook (runc runs a container's poststop hooks from that state when it deletes it).
    fn runc_runs_our_hook(parsed: &args::Parsed, runtime: &Path, id: &[u8]) -> bool {
        if base_name(runtime.bytes()) != b"runc"
            || !journal::is_plain_id(id)
            || id.starts_with(b".")
        {
            return false;
        }
        let root = parsed.root.unwrap_or(b"/run/runc");
        let Ok(state) = Map::open(&Path::new(&[root, b"/", id, b"/state.json"])) else {
            return false;
        };
        // runc stops at the first poststop hook that fails: only a hook that runs first is sure
        // to run. gpushare puts its own first; runc writes the spec's hooks in order.
        let s = state.bytes();
        let Some(at) = scan::find(s, b"\"poststop\":[{\"path\":\"") else {
            return false;
        };
        let first = &s[at..];
        let end = first.iter().position(|&b| b == b'}').unwrap_or(first.len());
        scan::contains(
            &first[..end],
            b"\",\"args\":[\"gpushare-hook\",\"poststop\"",
        )
    }

    /// A `create` whose spec asks for a GPU.
    struct Create<'a> {
        parsed: &'a args::Parsed<'static>,
        config: &'a Option<(Map, Path)>,
        state_dir: &'a [u8],
        runtime: &'a Path,
        bundle: &'a [u8],
        spec: &'a [u8],
    }

    impl Create<'_> {
        /// Grant what the ledger's offers hold for this spec and write the edited spec; Ok
        /// when done (the runtime is then exec'd). Err hands the whole create, untouched so far
        /// or with its grant journaled, to the full wrapper, with the reason to log if there is
        /// one a person should know.
        fn offered(&self, p: &Process) -> Result<(), Handover> {
            let started = sys::monotonic_us();
            // Crash tests kill the full wrapper at its failpoints: it must be the one to run.
            if env(p, b"GPUSHARE_FAILPOINT").is_some() {
                return Err(None);
            }
            let id = self
                .parsed
                .container_id
                .filter(|id| journal::is_plain_id(id))
                .quietly()?;
            let profile = splice::plain_profile(self.spec).quietly()?;
            let dir = self.state_dir;
            // A state folder that is not root's alone is never used: the full wrapper refuses
            // the request and says why. One that does not exist yet holds no offers.
            sys::check_state_dir(&Path::new(&[dir])).quietly()?;
            if !claim::is_nameable(id) {
                return Err(None);
            }
            // No offers file: the full wrapper has not made any (yet).
            let offers_text =
                match Map::open_state(&Path::new(&[dir, b"/", offers::NAME.as_bytes()])) {
                    Err(Errno::NOENT) => return Err(None),
                    r => r.telling(Level::Warning, b"cannot read the offers file")?,
                };
            let offers = offers::parse(offers_text.bytes())
                .telling(Level::Warning, b"cannot parse the offers file")?;
            if !self.config_matches(&offers) {
                return Err(Some(Why::new(Level::Info, STALE_CONFIG, None)));
            }
            let runtime_root = match self.parsed.root {
                Some(r) => Some(r),
                None => match base_name(self.runtime.bytes()) {
                    b"runc" => Some(&b"/run/runc"[..]),
                    b"crun" => Some(&b"/run/crun"[..]),
                    _ => None,
                },
            };
            if runtime_root.is_some_and(|r| !journal::is_plain_root(r)) {
                return Err(None);
            }
            let spec_path = Path::new(&[self.bundle, b"/config.json"]);
            let mode = sys::mode_of(&spec_path).quietly()?;

            let journal_path = Path::new(&[dir, b"/", journal::NAME.as_bytes()]);
            let leases = Path::new(&[dir, b"/", lease::DIR.as_bytes()]);
            let marker = Path::new(&[dir, b"/", lease::DIR.as_bytes(), b"/", id]);
            // Which offer applies, read from the ledger and its journal. When the lock is busy
            // it is looked at once without the lock first: when many creates come at once, most
            // find the offers spent and should not queue for the lock to learn it. A free lock
            // is taken at once, and the look made only under it.
            let applies = || {
                // The header alone: the id's lease marker stands for the rest of the ledger.
                let header = ledger_header(dir)
                    .telling(Level::Warning, b"cannot read the ledger")?
                    .telling(Level::Warning, b"cannot read the ledger's header")?;
                // An older gpushare's ledger (no flags, no markers): the full wrapper's next
                // save writes this version's.
                if !header.marked() {
                    return Err(None);
                }
                let generation = header.generation;
                if generation != offers.generation {
                    return Err(Some(Why::new(Level::Info, STALE_LEDGER, None)));
                }
                let journal = match Map::open_state(&journal_path) {
                    Err(Errno::NOENT) => None,
                    r => Some(r.telling(Level::Warning, b"cannot read the release journal")?),
                };
                let bytes = journal.as_ref().map_or(&[][..], Map::bytes);
                // The same container asking again keeps what it holds, and a long journal is
                // folded into the ledger: the full wrapper's ordinary work.
                if bytes.len() > journal::MAX_GRANT_BYTES
                    || journal::may_hold_after(bytes, generation, id, sys::is_there(&marker))
                {
                    return Err(None);
                }
                // A grant of the journal's still held, or more than one lease released: the
                // offers were spent, as containers come and go. So too when none is left for
                // this profile. The full wrapper's ordinary work either way.
                let released = journal::net_release(bytes, generation).quietly()?;
                let offer = offers.offer(released, profile).quietly()?;
                // (A journal of another version "may hold" every id: the full wrapper says why.)
                Ok((offer, generation, journal::tail(bytes).quietly()?))
            };
            // The create claim, from before the grant until the runtime's create exits (its
            // descriptor survives the exec). Anything that hands over to the full wrapper lets
            // it go first: the full wrapper takes it itself.
            let claim =
                match sys::take_claim(&Path::new(&[dir, b"/", claim::DIR.as_bytes(), b"/", id])) {
                    Ok(Some(fd)) => fd,
                    Ok(None) => return Err(Some(Why::new(Level::Info, CLAIM_HELD, None))),
                    Err(e) => return Err(Some(Why::new(Level::Warning, NO_CLAIM, Some(e)))),
                };
            let lock_path = Path::new(&[dir, b"/", lock::NAME.as_bytes()]);
            let lock = match sys::try_lock(&lock_path)
                .telling(Level::Warning, b"cannot open the ledger's lock")?
            {
                Some(fd) => fd,
                None => {
                    applies()?;
                    match sys::lock_within(&lock_path, HOOK_LOCK_MS) {
                        Ok(fd) => fd,
                        Err(Errno::WOULDBLOCK) => {
                            return Err(Some(Why::new(Level::Info, LOCK_BUSY, None)))
                        }
                        Err(e) => {
                            let why = b"cannot lock the ledger";
                            return Err(Some(Why::new(Level::Warning, why, Some(e))));
                        }
                    }
                }
            };
            let granted = (|| {
                let (offer, generation, tail) = applies()?;
                if !sys::exists(&Path::new(&[offer.cap_file])) {
                    // The full wrapper prunes it and picks again.
                    return Err(Some(Why::new(Level::Info, INSTANCE_GONE, None)));
                }
                let plan = splice::plan(self.spec, &offers, &offer).ok().quietly()?;
                // The marker before the line that makes the lease visible (docs/state.md): a
                // crash between the two leaves a marker that costs a look, never a lease
                // that a `delete` or the hook would skip.
                sys::make_marker(&leases, &marker)
                    .telling(Level::Warning, b"cannot make the lease marker")?;
                let mut line = [0u8; journal::MAX_GRANT_LINE];
                let n = journal::grant_line(
                    offer.instance,
                    id,
                    sys::now(),
                    generation,
                    runtime_root,
                    sys::monotonic_us().saturating_sub(started),
                    tail,
                    &mut line,
                )
                .quietly()?;
                sys::append_durably(&journal_path, &line[..n])
                    .telling(Level::Warning, b"cannot append to the release journal")?;
                Ok((offer, plan))
            })();
            drop(lock);
            let (offer, plan) = granted?;
            // From here the container holds the slice: a failure leaves the rest to the full
            // wrapper, which finds the grant and finishes the same create.
            let unwritten = |e| Why::new(Level::Warning, UNWRITTEN, e);
            let buf = sys::scratch(splice::room(self.spec, offers_text.bytes()))
                .map_err(|e| unwritten(Some(e)))?;
            let mut out = splice::Out::new(buf);
            splice::write(self.spec, &plan, &offers, &offer, &mut out)
                .map_err(|_| unwritten(None))?;
            sys::replace_file(self.bundle, b"config.json", out.bytes(), mode)
                .map_err(|e| unwritten(Some(e)))?;
            core::mem::forget(claim); // held by the runtime's create from here
            Ok(())
        }

        /// Whether the config file is the one the offers were made under.
        fn config_matches(&self, offers: &offers::Offers) -> bool {
            match self.config {
                None => offers.made_under(None),
                Some((_, path)) => {
                    sys::identity(path).is_some_and(|id| offers.made_under(Some(id)))
                }
            }
        }
    }

    /// Why a create or delete goes to the full wrapper, when a person should know: None when
    /// it is simply not a warm plain request (the full wrapper's ordinary work).
    type Handover = Option<Why>;

    /// A reason to log when handing over.
    struct Why {
        level: Level,
        what: &'static [u8],
        errno: Option<Errno>,
    }

    impl Why {
        fn new(level: Level, what: &'static [u8], errno: Option<Errno>) -> Why {
            Why { level, what, errno }
        }
    }

    const STALE_CONFIG: &[u8] =
        b"the warm offers were made under another config file (it changed since)";
    const STALE_LEDGER: &[u8] = b"the warm offers are stale (the ledger changed since)";
    const LOCK_BUSY: &[u8] = b"the ledger's lock stayed busy past the entry binary's wait";
    const INSTANCE_GONE: &[u8] = b"the offered GPU instance is gone";
    const CLAIM_HELD: &[u8] = b"another gpushare process holds the container's claim";
    const NO_CLAIM: &[u8] = b"cannot take the container's claim";
    const UNWRITTEN: &[u8] = b"the slice is granted but the edited spec cannot be written";

    /// What went wrong on the way to a warm grant, as a hand-over.
    trait OrHandOver<T> {
        /// The full wrapper's ordinary case: nothing to log.
        fn quietly(self) -> Result<T, Handover>;
        /// A reason to log.
        fn telling(self, level: Level, what: &'static [u8]) -> Result<T, Handover>;
    }

    impl<T> OrHandOver<T> for Option<T> {
        fn quietly(self) -> Result<T, Handover> {
            self.ok_or(None)
        }
        fn telling(self, level: Level, what: &'static [u8]) -> Result<T, Handover> {
            self.ok_or(Some(Why::new(level, what, None)))
        }
    }

    impl<T> OrHandOver<T> for Result<T, Errno> {
        fn quietly(self) -> Result<T, Handover> {
            self.map_err(|_| None)
        }
        fn telling(self, level: Level, what: &'static [u8]) -> Result<T, Handover> {
            self.map_err(|e| Some(Why::new(level, what, Some(e))))
        }
    }

    /// Log why the command goes to the full wrapper: one line in the runtime log format, to
    /// the engine's `--log` file, or to stderr without one (as runc logs). Best effort.
    fn tell(parsed: &args::Parsed, why: Why) {
        let mut digits = [0u8; 20];
        let errno: [&[u8]; 3] = match why.errno {
            Some(e) => [
                b" (errno ",
                decimal::format(u64::from(e.raw_os_error().unsigned_abs()), &mut digits),
                b")",
            ],
            None => [b"", b"", b""],
        };
        let msg: [&[u8]; 10] = [
            b"gpushare: ",
            parsed.command.unwrap_or(b""),
            b" ",
            parsed.container_id.unwrap_or(b""),
            b": ",
            why.what,
            errno[0],
            errno[1],
            errno[2],
            b"; gpushare-runtime takes it over",
        ];
        let mut buf = [0u8; 8192];
        let json = parsed.log_format == Some(b"json");
        let Some(line) = runc_log::line(&mut buf, json, why.level, &msg, sys::now()) else {
            return;
        };
        match parsed.log {
            Some(log) => {
                let _ = sys::append_line(&Path::new(&[log]), line);
            }
            None => sys::say(line),
        }
    }

    /// The config file's text: the explicit path (flag, else $GPUSHARE_CONFIG), else the
    /// default one if it exists. None when it cannot be read: the full program's case.
    fn config_text(p: &Process, flag: Option<&'static [u8]>) -> Option<Option<(Map, Path)>> {
        let explicit = flag.or_else(|| env(p, config::ENV_CONFIG).filter(|v| !v.is_empty()));
        let path = Path::new(&[explicit.unwrap_or(config::DEFAULT_PATH)]);
        match Map::open(&path) {
            Ok(m) => Some(Some((m, path))),
            Err(Errno::NOENT) if explicit.is_none() => Some(None),
            Err(_) => None,
        }
    }

    fn config_top(text: &Option<(Map, Path)>) -> Option<config::TopLevel<'_>> {
        match text {
            Some((m, _)) => config::scan(m.bytes()),
            None => Some(config::TopLevel::default()),
        }
    }

    /// Whether the ledger (with its release journal) may hold `id`'s slice; a ledger that
    /// cannot be read holds nothing, as for the full wrapper's `gc::may_hold`.
    fn may_hold(dir: &[u8], id: &[u8]) -> bool {
        match look(dir, id) {
            Ok(held) => held,
            // A state folder or file that must not be used "may hold" anything: the full
            // wrapper says why it does not release.
            Err(Errno::ACCESS) => true,
            Err(_) => false,
        }
    }

    /// Whether `id` may hold a lease, with no lock: its lease marker, the journal and the
    /// ledger's header (`fastpath::lease`), and the ledger's body only when its header has no
    /// flags (an older gpushare's). ACCESS for a state folder or file that must not be used,
    /// another error for one that cannot be read.
    fn look(dir: &[u8], id: &[u8]) -> Result<bool, Errno> {
        match sys::check_state_dir(&Path::new(&[dir])) {
            Ok(()) => {}
            Err(Errno::NOENT) => return Ok(false),
            Err(_) => return Err(Errno::ACCESS),
        }
        let marker = lease::is_nameable(id)
            && sys::is_there(&Path::new(&[dir, b"/", lease::DIR.as_bytes(), b"/", id]));
        // The journal before the ledger: a fold between the two reads then shows in the ledger
        // read after it (and the journal's lines, of the older generation, no longer apply).
        // The other order could miss a grant folded in between.
        // One that cannot be read as it stands (growing while read, say) is read as empty.
        let journal = match Map::open_state(&Path::new(&[dir, b"/", journal::NAME.as_bytes()])) {
            Err(Errno::ACCESS) => return Err(Errno::ACCESS),
            r => r.ok(),
        };
        let journal = journal.as_ref().map_or(&[][..], Map::bytes);
        let head = match ledger_header(dir) {
            Err(Errno::NOENT) => fastpath_lease::Head::Missing,
            r => fastpath_lease::Head::Read(r?),
        };
        if let Some(held) = fastpath_lease::may_hold(id, marker, head, journal) {
            return Ok(held);
        }
        let ledger = Map::open_state(&Path::new(&[dir, b"/", ledger::NAME.as_bytes()]))?;
        Ok(journal::may_hold(ledger.bytes(), journal, id))
    }

    /// The ledger's header, read alone (at most [`ledger::HEADER_MAX`] bytes of the file): None
    /// for a ledger that does not start with one.
    fn ledger_header(dir: &[u8]) -> Result<Option<ledger::Header>, Errno> {
        let mut buf = [0u8; ledger::HEADER_MAX];
        let path = Path::new(&[dir, b"/", ledger::NAME.as_bytes()]);
        Ok(ledger::header(sys::read_head(&path, &mut buf)?))
    }

    /// `gpushare-hook poststop [--config PATH]`: release the stopped container's slice with one
    /// journal line. Returns nothing: it exits, or execs the full hook, which decides whatever
    /// is not plain (a precreate lease, an MPS daemon running, a busy or unreadable ledger).
    fn hook(p: &Process) {
        let mut config_flag = None;
        let plain_argv = match p.argc {
            2 => true,
            3 => {
                config_flag = arg(p, 2).strip_prefix(b"--config=");
                config_flag.is_some()
            }
            4 if arg(p, 2) == b"--config" => {
                config_flag = Some(arg(p, 3));
                true
            }
            _ => false,
        };
        if !plain_argv || arg(p, 1) != b"poststop" {
            delegate_hook(p, None);
        }
        let Ok(state) = sys::read_stdin(MAX_STATE) else {
            // Nothing usable was read, and what was is not kept: the full hook reads the rest.
            delegate_hook(p, None)
        };
        let state = state.bytes();
        // Releasing touches only the root-owned state directory: no capability is needed.
        sys::drop_all_caps();
        let Some(id) = state::container_id(state) else {
            delegate_hook(p, Some(state))
        };
        let Some(text) = config_text(p, config_flag) else {
            delegate_hook(p, Some(state))
        };
        let Some(top) = config_top(&text) else {
            delegate_hook(p, Some(state))
        };
        let dir = top.state_dir.unwrap_or(config::DEFAULT_STATE_DIR);
        match sys::check_state_dir(&Path::new(&[dir])) {
            Ok(()) => {}
            Err(Errno::NOENT) => sys::exit(0), // nothing was ever granted here
            Err(_) => delegate_hook(p, Some(state)), // the full hook refuses and says why
        }
        // Most containers hold nothing: a missing marker says so with no lock and no ledger
        // (a file that cannot be read is the full hook's to report, further down).
        if look(dir, id) == Ok(false) {
            sys::exit(0);
        }
        let _lock = match sys::lock_within(
            &Path::new(&[dir, b"/", lock::NAME.as_bytes()]),
            HOOK_LOCK_MS,
        ) {
            Ok(fd) => fd,
            // No state directory yet: nothing was ever granted here.
            Err(Errno::NOENT) => sys::exit(0),
            Err(_) => delegate_hook(p, Some(state)),
        };
        // The header's flags, not the ledger: an MPS client's release may stop its daemon,
        // and a ledger of an older gpushare (no flags, no markers) must be read whole: the
        // full hook's work, both.
        let header = match ledger_header(dir) {
            Ok(Some(h)) => h,
            Err(Errno::NOENT) => sys::exit(0),
            Ok(None) | Err(_) => delegate_hook(p, Some(state)),
        };
        let Some(ledger::Flags {
            mps_daemons: false, ..
        }) = header.flags
        else {
            delegate_hook(p, Some(state))
        };
        let Some(marker) = lease::is_nameable(id)
            .then(|| Path::new(&[dir, b"/", lease::DIR.as_bytes(), b"/", id]))
        else {
            delegate_hook(p, Some(state))
        };
        let path = Path::new(&[dir, b"/", journal::NAME.as_bytes()]);
        let journal = match Map::open_state(&path) {
            Ok(m) => Some(m),
            Err(Errno::NOENT) => None,
            Err(_) => delegate_hook(p, Some(state)),
        };
        let journal = journal.as_ref().map_or(&[][..], Map::bytes);
        // Looked at again under the lock: a release that removed it meanwhile is done.
        if !journal::may_hold_after(journal, header.generation, id, sys::is_there(&marker)) {
            sys::exit(0); // nothing of this container's (already released, or never granted)
        }
        if journal.len() > journal::MAX_BYTES {
            delegate_hook(p, Some(state)); // the full hook folds the journal into the ledger
        }
        let mut line = [0u8; journal::MAX_RELEASE_LINE];
        let Some(n) = journal::tail(journal).and_then(|tail| {
            journal::release_line(id, sys::now(), header.generation, tail, &mut line)
        }) else {
            delegate_hook(p, Some(state))
        };
        if sys::append_durably(&path, &line[..n]).is_err() {
            delegate_hook(p, Some(state));
        }
        // The lease is gone once its release line is durable: only then its marker, still
        // under the lock (a crash before this leaves a marker that `gc` or the next save
        // removes).
        sys::unlink(&marker);
        // The container is gone: its claim with it, if nobody holds it or the one holding it
        // is this hook's parent, the runtime's delete (which the entry binary ran holding it).
        if claim::is_nameable(id) {
            sys::remove_claim(&Path::new(&[dir, b"/", claim::DIR.as_bytes(), b"/", id]));
        }
        sys::exit(0)
    }

    /// Hand the hook to the full `gpushare-hook`, argv untouched, with the state this process
    /// already read from stdin put back as its stdin.
    fn delegate_hook(p: &Process, state: Option<&[u8]>) -> ! {
        if let Some(state) = state {
            if sys::restore_stdin(state).is_err() {
                sys::say(b"gpushare-hook: cannot hand the container state to the full hook; `gpusharectl gc` will release the slice\n");
                sys::exit(1);
            }
        }
        if let Some(full) = sys::sibling(FULL_HOOK) {
            // A `gpushare-hook` that is this very binary would hand over to itself forever.
            if !sys::same_file(&full, &Path::new(&[b"/proc/self/exe"])) {
                sys::execve(&full, p.argv, p.envp);
            }
        }
        sys::say(
            b"gpushare-hook: cannot run the full gpushare-hook, which must sit next to gpushare\n",
        );
        sys::exit(1)
    }

    /// The runtime the full wrapper would pick: `runtime` when absolute, else looked up on
    /// PATH; unset: runc, else crun. A relative path with a folder in it is left to the full
    /// wrapper.
    fn find_runtime(p: &Process, configured: Option<&[u8]>) -> Option<Path> {
        let names: &[&[u8]] = match configured {
            Some(r) if r.starts_with(b"/") => return Some(Path::new(&[r])),
            Some(r) if r.contains(&b'/') => return None,
            Some(r) => &[r],
            None => &[b"runc", b"crun"],
        };
        let search = env(p, b"PATH").unwrap_or(DEFAULT_PATH_ENV);
        names.iter().find_map(|name| {
            search
                .split(|&b| b == b':')
                .map(|dir| {
                    let dir: &[u8] = if dir.is_empty() { b"." } else { dir };
                    Path::new(&[dir, b"/", name])
                })
                .find(sys::is_executable_file)
        })
    }

    /// The runtime's argv: the engine's, without gpushare's own flags, argv[0] the runtime.
    fn runtime_argv(p: &Process, runtime: &Path, out: &mut [*const u8; MAX_ARGS + 1]) {
        let mut roles = args::Roles::default();
        let mut n = 0;
        out[n] = runtime.as_ptr();
        n += 1;
        for i in 1..p.argc {
            if !roles.next(arg(p, i)).is_own() {
                // SAFETY: i < argc.
                out[n] = unsafe { *p.argv.add(i) };
                n += 1;
            }
        }
        out[n] = core::ptr::null();
    }

    /// Returns only if the runtime cannot be run (the full wrapper then says why).
    fn exec_runtime(p: &Process, runtime: &Path) {
        let mut argv = [core::ptr::null(); MAX_ARGS + 1];
        runtime_argv(p, runtime, &mut argv);
        sys::execve(runtime, argv.as_ptr(), p.envp);
    }

    fn spawn_runtime(p: &Process, runtime: &Path) -> sys::Spawned {
        let mut argv = [core::ptr::null(); MAX_ARGS + 1];
        runtime_argv(p, runtime, &mut argv);
        sys::spawn_wait(runtime, argv.as_ptr(), p.envp)
    }

    /// Hand the command to the full wrapper, argv untouched (after the runtime's `delete` ran,
    /// with `--gpushare-after-delete=CODE` first).
    fn delegate(p: &Process, after_delete: Option<i32>) -> ! {
        let full = sys::sibling(FULL);
        let mut flag = *b"--gpushare-after-delete=000\0";
        let mut argv = [core::ptr::null(); MAX_ARGS + 2];
        let argv = match after_delete {
            None => p.argv,
            // Only reached with argc <= MAX_ARGS.
            Some(code) => {
                let code = code.clamp(0, 255) as u8;
                let n = flag.len();
                flag[n - 4] = b'0' + code / 100;
                flag[n - 3] = b'0' + code / 10 % 10;
                flag[n - 2] = b'0' + code % 10;
                // SAFETY: argv[0] exists (argc >= 1 was checked before any delete).
                argv[0] = unsafe { *p.argv };
                argv[1] = flag.as_ptr();
                for i in 1..p.argc.min(MAX_ARGS) {
                    // SAFETY: i < argc.
                    argv[i + 1] = unsafe { *p.argv.add(i) };
                }
                argv.as_ptr()
            }
        };
        if let Some(full) = &full {
            sys::execve(full, argv, p.envp);
        }
        sys::say(b"gpushare: cannot run gpushare-runtime, which must sit next to gpushare\n");
        // After the runtime's delete ran, its code is the command's; the lease is gc's.
        sys::exit(after_delete.unwrap_or(127))
    }
}
