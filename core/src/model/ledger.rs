//! The ledger: gpushare's durable record of the MIG instances it made and who holds them.
//! One JSON file in the state directory, changed only under an exclusive lock and written
//! atomically, so every process (shim, hook, ctl) sees one consistent ledger and a crash
//! leaves the old or the new one, never half of each.

use crate::fsutil::{now_unix, write_atomic};
use crate::placement::{Profile, Slot};
use crate::stats::Stats;
use gpushare_state::{journal, ledger::FORMAT};
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use gpushare_state::ledger::NAME as LEDGER_FILE;
use gpushare_state::lock::NAME as LOCK_FILE;
use gpushare_state::HISTORY_LOG as HISTORY_FILE;

/// The release journal's path in a state directory (see [`gpushare_state::journal`]).
fn journal_path(dir: &Path) -> PathBuf {
    dir.join(journal::NAME)
}

#[derive(Debug, thiserror::Error)]
pub enum LedgerError {
    #[error("cannot use state directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger {path} is busy: another gpushare process held its lock for {waited_ms} ms")]
    Busy { path: PathBuf, waited_ms: u64 },
    #[error("cannot read ledger {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("ledger {path} is corrupt ({source}); run `gpusharectl repair` to rebuild it from the driver's instances, gpushare's instance log and the runtimes' containers (`gpusharectl repair --dry-run` shows what it would record); do not delete it")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("ledger {path} is of format {found}, and this gpushare reads format {FORMAT}: a gpushare of another version wrote it. Run that version, or `gpusharectl repair` to rebuild the ledger in this version's format (`--dry-run` shows what it would record); do not delete it")]
    Format { path: PathBuf, found: u32 },
    #[error("journal {path} begins {found:?}, a version this gpushare does not read: a gpushare of another version wrote it, and nothing was granted or released. Run one gpushare version on the node (gpushare, gpushare-runtime, gpushare-hook and gpusharectl come as one), or `gpusharectl repair`, which drops the journal (its grants and releases are then lost until `gpusharectl gc`)")]
    Journal { path: PathBuf, found: String },
    #[error(transparent)]
    StateDir(#[from] crate::statedir::StateDirError),
    #[error(transparent)]
    Marker(#[from] crate::lease_marker::MarkerError),
    #[error("cannot write ledger {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerState {
    /// Written by the header ([`gpushare_state::ledger::write`]), read here wherever it stands.
    #[serde(skip_serializing)]
    pub format: u32,
    /// Bumped by every write; a release journal line applies only to the generation it was
    /// written against. Written by the header, which the entry binary reads.
    #[serde(default, skip_serializing)]
    pub generation: u64,
    /// What the cold path learnt of each GPU, so warm grants need no NVML.
    #[serde(default)]
    pub gpus: Vec<GpuRecord>,
    #[serde(default)]
    pub instances: Vec<InstanceRecord>,
    #[serde(default)]
    pub stats: Stats,
    /// Recent requests (profile, arrival, hold), to learn the node's demand from. Not written
    /// into the ledger (an older ledger's copy is still read): it lives in `history.log`,
    /// appended on every change and read back only by the cold path ([`Locked::load_history`]).
    #[serde(default, skip_serializing)]
    pub history: crate::policy::history::History,
    /// For each GPU model (profile-table fingerprint), the demand key of the placement table
    /// the cold path chose; the table itself is cached in the state directory.
    #[serde(default)]
    pub placement: std::collections::BTreeMap<String, String>,
    /// Whole-GPU, time-sliced leases.
    #[serde(default)]
    pub shares: Vec<ShareLease>,
    /// MPS control daemons gpushare started, with their clients.
    #[serde(default)]
    pub mps: Vec<MpsDaemon>,
    /// GPUs whose compute mode gpushare changed for their MPS daemon, with the mode found:
    /// written before the change, dropped once that mode is back (see [`crate::compute_mode`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub compute_modes: Vec<ComputeModeRecord>,
    /// GPUs whose MIG mode gpushare is switching for a request (`mig.manage_mode`), with the
    /// mode found: written before the switch, dropped in the save that records the grant it
    /// was for. One seen by another process is what a crash left (see [`crate::mig_mode`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mig_modes: Vec<MigModeRecord>,
    /// On disk only: each GPU model's profile table, written once rather than once per GPU
    /// (a node of identical GPUs would otherwise read and rewrite N copies on every grant).
    /// Empty in memory, where every [`GpuRecord`] holds its own.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub profile_tables: std::collections::BTreeMap<String, Vec<Profile>>,
}

/// A GPU whose compute mode gpushare set for its MPS daemon, and the mode to put back.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ComputeModeRecord {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    /// The mode found before the change.
    pub found: Mode,
    pub since: u64,
}

/// A MIG mode switch in progress: the GPU, and whether MIG was on when gpushare found it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigModeRecord {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    /// MIG mode (current) before the switch: what a repair puts back.
    pub found: bool,
    pub since: u64,
}

/// `nvmlComputeMode_t`, as the ledger and `status` name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    Default,
    ExclusiveThread,
    Prohibited,
    ExclusiveProcess,
}

impl Mode {
    /// nvidia-smi's name.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Default => "Default",
            Mode::ExclusiveThread => "Exclusive_Thread",
            Mode::Prohibited => "Prohibited",
            Mode::ExclusiveProcess => "Exclusive_Process",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShareLease {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    pub gpu_minor: u32,
    pub lease: Lease,
}

/// One MPS control daemon per GPU, shared by that GPU's MPS containers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsDaemon {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    pub gpu_minor: u32,
    /// The daemon's pid, as its pid file says.
    pub pid: Option<u32>,
    pub pipe_dir: PathBuf,
    pub log_dir: PathBuf,
    /// The daemon's default active-thread percentage: a ceiling no client can lift.
    pub percent: u8,
    /// The daemon's default pinned-memory limit per client process, in bytes.
    pub memory: Option<u64>,
    pub started_at: u64,
    pub clients: Vec<MpsClient>,
    /// The MIG instance this daemon serves (an MPS share inside a MIG slice), whose record is
    /// marked [`InstanceRecord::mps`]; None for a daemon of a whole GPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mig: Option<MigHost>,
}

impl MpsDaemon {
    /// The device the daemon serves and its clients see: the MIG UUID, or the GPU's.
    pub fn device_uuid(&self) -> &str {
        self.mig.as_ref().map_or(&self.gpu_uuid, |h| &h.mig_uuid)
    }
}

/// The MIG device an MPS daemon is bound to: its only device (`CUDA_VISIBLE_DEVICES`), and
/// the device nodes its clients get.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MigHost {
    pub mig_uuid: String,
    pub profile: String,
    pub gi_cap_minor: u32,
    pub ci_cap_minor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MpsClient {
    pub lease: Lease,
    pub percent: u8,
    pub memory: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuRecord {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub minor: u32,
    /// On disk, empty when the table is in [`LedgerState::profile_tables`] under `name`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub profiles: Vec<Profile>,
    #[serde(default)]
    pub memory_total: u64,
    /// MIG mode as NVML last said (refreshed whenever NVML is opened).
    #[serde(default)]
    pub mig_enabled: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstanceRecord {
    pub gpu_uuid: String,
    pub gpu_index: u32,
    pub gpu_minor: u32,
    pub profile: String,
    pub profile_id: u32,
    pub slot: Slot,
    /// None while the instance is being made: a crash then leaves a record that says the
    /// instance at this placement is gpushare's, for `gc` to reclaim.
    pub made: Option<Made>,
    pub created_at: u64,
    pub lease: Option<Lease>,
    pub idle_since: Option<u64>,
    /// An MPS daemon serves this instance (the record in [`LedgerState::mps`] whose `mig`
    /// names its MIG UUID): busy for MIG requests though no container leases it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub mps: bool,
}

impl InstanceRecord {
    /// Made, and neither leased nor serving MPS: in the idle (warm) pool.
    pub fn is_idle(&self) -> bool {
        self.lease.is_none() && !self.mps && self.made.is_some()
    }
}

/// Ids NVML gave the instance. Ids are reused after a destroy, so the MIG UUID is what
/// identifies an instance.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Made {
    pub gi: u32,
    pub ci: u32,
    pub mig_uuid: String,
    pub gi_cap_minor: u32,
    pub ci_cap_minor: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub container_id: String,
    pub since: u64,
    /// The low-level runtime's state root the container was created under, so `gc` can ask
    /// whether it still exists.
    pub runtime_root: Option<String>,
}

impl Lease {
    /// Whose lease this is: a container's, or a DRA claim's (see [`Owner`]).
    pub fn owner(&self) -> Owner<'_> {
        Owner::of(&self.container_id)
    }
}

/// What holds a lease. A container's lease ends when the runtime no longer has the container
/// (gc reaps it); a claim's lease (granted by the kubelet plugin `gpushare-dra` for a
/// Kubernetes ResourceClaim) ends only when the kubelet unprepares the claim, whatever
/// containers come and go on it. A claim's lease id is [`CLAIM_LEASE_PREFIX`] and the claim
/// device's CDI name (`<claim-uid>-<n>`): runc refuses `:` in container ids, so no container's
/// id reads as a claim's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Owner<'a> {
    Container(&'a str),
    /// The claim's device, `<claim-uid>-<n>`.
    Claim(&'a str),
}

pub const CLAIM_LEASE_PREFIX: &str = "dra:";

impl<'a> Owner<'a> {
    /// The owner a lease id names.
    pub fn of(id: &'a str) -> Owner<'a> {
        match id.strip_prefix(CLAIM_LEASE_PREFIX) {
            Some(device) => Owner::Claim(device),
            None => Owner::Container(id),
        }
    }

    /// The lease id of a claim's device (`<claim-uid>-<n>`).
    pub fn claim_lease_id(device: &str) -> String {
        format!("{CLAIM_LEASE_PREFIX}{device}")
    }

    pub fn is_claim(&self) -> bool {
        matches!(self, Owner::Claim(_))
    }
}

impl std::fmt::Display for Owner<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Owner::Container(id) => write!(f, "container {id}"),
            Owner::Claim(device) => write!(f, "claim device {device}"),
        }
    }
}

/// Who asks for a grant: the container a [`Lease`] will name.
#[derive(Debug, Clone)]
pub struct Claimant<'a> {
    pub container_id: &'a str,
    pub runtime_root: Option<&'a str>,
}

impl LedgerState {
    /// Every lease: of MIG instances, of whole GPUs (time-sliced) and of MPS clients. A new
    /// kind of lease must be added here, or its container gets no lease marker
    /// ([`crate::lease_marker`]) and the entry binary would skip its release.
    pub fn leases(&self) -> impl Iterator<Item = &Lease> {
        let instances = self.instances.iter().filter_map(|r| r.lease.as_ref());
        let shares = self.shares.iter().map(|s| &s.lease);
        let clients = self
            .mps
            .iter()
            .flat_map(|d| d.clients.iter().map(|c| &c.lease));
        instances.chain(shares).chain(clients)
    }

    /// The ids of every lease's container.
    pub fn lease_ids(&self) -> BTreeSet<String> {
        self.leases().map(|l| l.container_id.clone()).collect()
    }

    pub fn lease_of(&self, container_id: &str) -> Option<usize> {
        self.instances.iter().position(|i| {
            i.lease
                .as_ref()
                .is_some_and(|l| l.container_id == container_id)
        })
    }

    /// Release `container_id`'s slice into the idle pool, or drop its time-slice lease.
    /// Returns whether it held one. MPS clients are released by [`crate::mps`].
    pub fn release(&mut self, container_id: &str) -> bool {
        self.release_at(container_id, now_unix())
    }

    /// [`Self::release`], as of `now` (a journaled release is applied later than it was made).
    pub fn release_at(&mut self, container_id: &str, now: u64) -> bool {
        let shares = self.shares.len();
        self.shares.retain(|s| s.lease.container_id != container_id);
        if self.shares.len() != shares {
            return true;
        }
        match self.lease_of(container_id) {
            Some(i) => {
                if let Some(l) = self.instances[i].lease.take() {
                    self.history
                        .depart(&self.instances[i].profile, l.since, now);
                }
                self.instances[i].idle_since = Some(now);
                true
            }
            None => false,
        }
    }

    /// Apply the journal's lines written against this ledger's generation, in order.
    fn apply_journal(&mut self, journal: &[u8]) {
        use journal::{of_generation, Entry};
        let text = |b: &[u8]| {
            std::str::from_utf8(b)
                .expect("journal words are ASCII")
                .to_string()
        };
        for e in of_generation(journal, self.generation) {
            match e {
                // The hook journals only while no MPS daemon runs, so a release names a MIG or
                // a time-slice lease; an id already released (a second hook run) changes nothing.
                Entry::Release { id, time, .. } => {
                    self.release_at(&text(id), time);
                }
                Entry::Grant {
                    instance,
                    id,
                    time,
                    runtime_root,
                    latency_us,
                    ..
                } => {
                    let at = self.instances.iter().position(|r| {
                        r.is_idle()
                            && r.made
                                .as_ref()
                                .is_some_and(|m| m.mig_uuid.as_bytes() == instance)
                    });
                    // `create` grants only an idle instance the offers name, under the lock.
                    let Some(i) = at else {
                        tracing::warn!(instance = %text(instance), container = %text(id),
                            "a journaled grant names no idle instance; ignored");
                        continue;
                    };
                    let r = &mut self.instances[i];
                    r.lease = Some(Lease {
                        container_id: text(id),
                        since: time,
                        runtime_root: runtime_root.map(text),
                    });
                    r.idle_since = None;
                    let (gpu, profile) = (r.gpu_uuid.clone(), r.profile.clone());
                    self.stats.grant(&gpu, true);
                    self.stats.grants_by_entry += 1;
                    self.stats
                        .alloc_latency
                        .observe(Duration::from_micros(latency_us));
                    // The warm path keeps no history in memory: the event is only appended.
                    self.history.arrive(&profile, time, true, usize::MAX);
                }
            }
        }
    }
}

/// The state directory and its lock. `lock` gives a [`Locked`] guard; reading and writing the
/// ledger happen only through it.
pub struct Ledger {
    dir: PathBuf,
}

pub struct Locked {
    _lock: File,
    dir: PathBuf,
    path: PathBuf,
    journal: PathBuf,
    /// The generation of the ledger file as loaded or last saved.
    generation: std::cell::Cell<u64>,
    /// The journal had lines when loaded: empty it once the ledger holds them.
    journaled: std::cell::Cell<bool>,
    /// Ids whose lease marker is known to exist: those the ledger file as loaded (or last
    /// saved) leases, when its writer kept markers, and that its journal did not release.
    marked: std::cell::RefCell<BTreeSet<String>>,
    /// Ids whose marker may exist and must go once the ledger no longer leases them: every id
    /// the ledger file or its journal leased as loaded (or last saved).
    seen: std::cell::RefCell<BTreeSet<String>>,
}

impl Ledger {
    pub fn new(dir: &Path) -> Ledger {
        Ledger {
            dir: dir.to_path_buf(),
        }
    }

    pub fn path(&self) -> PathBuf {
        self.dir.join(LEDGER_FILE)
    }

    /// The release journal the poststop hook appends to.
    pub fn journal_path(&self) -> PathBuf {
        journal_path(&self.dir)
    }

    /// Take the exclusive lock, waiting at most `timeout`.
    pub fn lock(&self, timeout: Duration) -> Result<Locked, LedgerError> {
        let dir_err = |source| LedgerError::Dir {
            path: self.dir.clone(),
            source,
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)
            .map_err(dir_err)?;
        crate::statedir::check_dir(&self.dir)?;
        let lock_path = self.dir.join(LOCK_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&lock_path)
            .map_err(dir_err)?;
        crate::statedir::check_file(&lock_path, &file)?;
        let start = Instant::now();
        // Short polls: a grant holds the lock for well under a millisecond, and a lock released
        // while every waiter sleeps idles the whole queue (64 creates at once convoyed behind
        // 10 ms sleeps before this).
        let mut pause = Duration::from_micros(10);
        loop {
            // SAFETY: flock on a file descriptor we own.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(Locked {
                    _lock: file,
                    dir: self.dir.clone(),
                    path: self.path(),
                    journal: journal_path(&self.dir),
                    generation: Default::default(),
                    journaled: Default::default(),
                    marked: Default::default(),
                    seen: Default::default(),
                });
            }
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK)
                && err.raw_os_error() != Some(libc::EINTR)
            {
                return Err(dir_err(err));
            }
            if start.elapsed() >= timeout {
                return Err(LedgerError::Busy {
                    path: self.path(),
                    waited_ms: timeout.as_millis() as u64,
                });
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_micros(100));
        }
    }
}

/// The ledger as written: the header, then the body with profile tables once per GPU model.
/// The ledger's bytes as core writes them (header by `gpushare_state::ledger`, body by serde):
/// public for the fuzz target that holds the entry binary's scans to them.
pub fn encode(state: &LedgerState, generation: u64) -> Vec<u8> {
    let mut state = state.clone();
    state.profile_tables.clear();
    for g in &mut state.gpus {
        if g.profiles.is_empty() {
            continue;
        }
        match state.profile_tables.get(&g.name) {
            None => {
                state
                    .profile_tables
                    .insert(g.name.clone(), std::mem::take(&mut g.profiles));
            }
            Some(t) if *t == g.profiles => g.profiles.clear(),
            // Same model name, another table (a driver mid-upgrade): kept with its GPU.
            Some(_) => {}
        }
    }
    // Compact: the whole ledger is rewritten under the lock on every grant and release (and
    // the entry binary's scans rely on it, see `gpushare_state::ledger`).
    let body = serde_json::to_vec(&state).expect("ledger always serializes");
    let mut out = Vec::with_capacity(body.len() + gpushare_state::ledger::HEADER_MAX);
    let flags = gpushare_state::ledger::Flags {
        mps_daemons: !state.mps.is_empty(),
        compute_mode_records: !state.compute_modes.is_empty(),
    };
    gpushare_state::ledger::write(generation, flags, &body, |b| out.extend_from_slice(b))
        .expect("a struct serializes to an object");
    out
}

/// The ledger as used: every GPU record holds its profile table.
fn decode(path: &Path, raw: &[u8]) -> Result<LedgerState, LedgerError> {
    let mut st: LedgerState =
        serde_json::from_slice(raw).map_err(|source| LedgerError::Corrupt {
            path: path.to_path_buf(),
            source,
        })?;
    if st.format != FORMAT {
        return Err(LedgerError::Format {
            path: path.to_path_buf(),
            found: st.format,
        });
    }
    let tables = std::mem::take(&mut st.profile_tables);
    for g in &mut st.gpus {
        if g.profiles.is_empty() {
            if let Some(t) = tables.get(&g.name) {
                g.profiles = t.clone();
            }
        }
    }
    Ok(st)
}

/// The release journal's bytes; none when it does not exist. One of another version is refused.
fn read_journal(path: &Path) -> Result<Vec<u8>, LedgerError> {
    let raw = crate::statedir::read(path)?.unwrap_or_default();
    if journal::is_foreign(&raw) {
        return Err(LedgerError::Journal {
            path: path.to_path_buf(),
            found: String::from_utf8_lossy(journal::first_line(&raw))
                .chars()
                .take(40)
                .collect(),
        });
    }
    Ok(raw)
}

impl Locked {
    /// The ledger, with the releases its journal holds applied.
    pub fn load(&self) -> Result<LedgerState, LedgerError> {
        let mut st = self.load_without_journal()?;
        let journal = read_journal(&self.journal)?;
        if !journal.is_empty() {
            st.apply_journal(&journal);
            self.journaled.set(true);
            // A journaled grant's marker is the entry binary's to make before its line; the
            // save makes it again all the same (one open), in case a gpushare of an older
            // version journaled it. A journaled release's marker goes with the save.
            let ids = st.lease_ids();
            self.marked.borrow_mut().retain(|id| ids.contains(id));
            self.seen.borrow_mut().extend(ids);
        }
        Ok(st)
    }

    /// The ledger file alone, its journal not applied (`repair`, which drops a journal it
    /// cannot read).
    pub fn load_without_journal(&self) -> Result<LedgerState, LedgerError> {
        let (st, marked) = match crate::statedir::read(&self.path)? {
            Some(raw) => (
                decode(&self.path, &raw)?,
                gpushare_state::ledger::header(&raw).is_some_and(|h| h.marked()),
            ),
            None => (
                LedgerState {
                    format: FORMAT,
                    ..Default::default()
                },
                true,
            ),
        };
        self.generation.set(st.generation);
        let ids = st.lease_ids();
        // A ledger whose writer kept no markers (an older gpushare, a hand edit): the save makes
        // every lease's.
        *self.marked.borrow_mut() = if marked { ids.clone() } else { BTreeSet::new() };
        *self.seen.borrow_mut() = ids;
        Ok(st)
    }

    /// The generation of the ledger file as last loaded or saved through this lock.
    pub fn generation(&self) -> u64 {
        self.generation.get()
    }

    /// Whether the last load applied journal lines that only a save makes part of the ledger
    /// file (and empties from the journal): a caller that saves only on a change saves then too.
    pub fn folded(&self) -> bool {
        self.journaled.get()
    }

    /// Write `original` as the ledger (a new generation), with its lease markers: made before
    /// the write for leases it adds, removed after it for leases it drops (docs/state.md says
    /// why each order is safe).
    pub fn save(&self, original: &LedgerState) -> Result<(), LedgerError> {
        let generation = self.generation.get().wrapping_add(1);
        let data = encode(original, generation);
        let ids = original.lease_ids();
        let new: Vec<&str> = {
            let marked = self.marked.borrow();
            ids.iter()
                .filter(|id| !marked.contains(*id))
                .map(String::as_str)
                .collect()
        };
        if !new.is_empty() {
            crate::lease_marker::make(&self.dir, new)?;
            crate::failpoint!("ledger.save.markers_made");
        }
        crate::failpoint!("ledger.save.before_write");
        write_atomic(&self.path, &data, Some(0o600)).map_err(|source| LedgerError::Write {
            path: self.path.clone(),
            source,
        })?;
        self.generation.set(generation);
        crate::failpoint!("ledger.save.before_journal_emptied");
        // The ledger now holds every journaled release (and lines of older generations no
        // longer apply): the journal can go. Failing that costs nothing but a longer journal.
        if self.journaled.get() {
            match OpenOptions::new()
                .write(true)
                .truncate(true)
                .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
                .open(&self.journal)
            {
                Ok(_) => self.journaled.set(false),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => self.journaled.set(false),
                Err(e) => tracing::warn!("cannot empty {}: {e}", self.journal.display()),
            }
        }
        // No lease of the ids dropped is visible any more (the journal's lines, of an older
        // generation now, no longer apply): their markers can go.
        let gone: Vec<String> = self
            .seen
            .borrow()
            .iter()
            .filter(|id| !ids.contains(*id))
            .cloned()
            .collect();
        if !gone.is_empty() {
            crate::failpoint!("ledger.save.before_markers_removed");
            crate::lease_marker::remove(&self.dir, gone.iter().map(String::as_str));
        }
        *self.marked.borrow_mut() = ids.clone();
        *self.seen.borrow_mut() = ids;
        // Advisory data: appended after the ledger, without fsync; a torn line is skipped.
        let lines = original.history.take_unwritten();
        if !lines.is_empty() {
            let log = self.path.with_file_name(HISTORY_FILE);
            let appended = crate::statedir::open_append(&log)
                .map_err(|e| std::io::Error::other(e.to_string()))
                .and_then(|mut f| std::io::Write::write_all(&mut f, lines.as_bytes()));
            if let Err(e) = appended {
                tracing::warn!("cannot append to {}: {e}", log.display());
            }
        }
        Ok(())
    }

    /// Read the request history back from its log into `st` (the cold path, which learns from
    /// it), keeping the last `cap` requests; a log grown well past that is compacted.
    pub fn load_history(&self, st: &mut LedgerState, cap: usize) {
        let log = self.path.with_file_name(HISTORY_FILE);
        let Some(text) = read_history(&log) else {
            return;
        };
        let mut h = crate::policy::history::History::replay(&text, cap);
        if too_long(&text, cap) {
            rewrite_history(&log, &h);
        }
        // Events of this very call not yet in the log stay pending, and count.
        for ev in &st.history.pending[st.history.written.get()..] {
            match ev {
                crate::policy::history::Event::Arrive { p, t, a } => h.arrive(p, *t, *a, cap),
                crate::policy::history::Event::Depart { p, t, n } => {
                    h.depart(p, *t, *n);
                }
            }
        }
        // `h.pending` now holds exactly the events the log lacks.
        st.history = h;
    }
}

impl Locked {
    /// Compact the request history's log down to its last `cap` requests once it holds more
    /// than four times as many lines. Warm grants and releases append to it at every fold and
    /// only the cold path read it back (compacting it then): on a node served warm it grew
    /// ~100 B a container, for the next cold grant to read whole. `gc` calls this, off every
    /// request's path.
    pub fn compact_history(&self, cap: usize) {
        let log = self.path.with_file_name(HISTORY_FILE);
        let Some(text) = read_history(&log) else {
            return;
        };
        if too_long(&text, cap) {
            rewrite_history(&log, &crate::policy::history::History::replay(&text, cap));
        }
    }
}

/// Whether a history log of `text` holds more than four times the `cap` requests kept.
/// The history log's text; none when it is missing, unreadable or not UTF-8 (a history is a
/// hint for the policy, never a reason to fail a grant).
fn read_history(log: &Path) -> Option<String> {
    crate::statedir::read(log)
        .ok()
        .flatten()
        .and_then(|b| String::from_utf8(b).ok())
}

fn too_long(text: &str, cap: usize) -> bool {
    text.lines().count() > 4 * cap.max(1)
}

/// Rewrite the history log `log` as `h`, its replay (atomically: appends happen under the
/// ledger's lock, which the caller holds).
fn rewrite_history(log: &Path, h: &crate::policy::history::History) {
    if let Err(e) = write_atomic(log, h.to_log().as_bytes(), Some(0o600)) {
        tracing::warn!("cannot compact {}: {e}", log.display());
    }
}

/// Read the ledger without taking the lock (a consistent snapshot thanks to atomic writes),
/// with its journaled releases applied in memory; for read-only views like `status`.
pub fn snapshot(dir: &Path) -> Result<LedgerState, LedgerError> {
    // The journal before the ledger: if a locked change folds the journal in between, the ledger
    // read second already holds its lines (and they, of the older generation, no longer apply).
    // Read the other way round, a grant folded in between would be missing from both.
    match crate::statedir::check_dir(dir) {
        Err(crate::statedir::StateDirError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::NotFound =>
        {
            return Ok(LedgerState::default())
        }
        r => r?,
    }
    let journal = read_journal(&journal_path(dir))?;
    let path = dir.join(LEDGER_FILE);
    let mut st = match crate::statedir::read(&path)? {
        Some(raw) => decode(&path, &raw)?,
        None => LedgerState::default(),
    };
    st.apply_journal(&journal);
    Ok(st)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tmp(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpushare-ledger-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[test]
    fn a_claims_lease_id_reads_as_the_claim_and_a_containers_as_the_container() {
        let id = Owner::claim_lease_id("0b6c0d2e-1f1e-4c55-9c39-6f0e1a1b2c3d-0");
        assert_eq!(
            Owner::of(&id),
            Owner::Claim("0b6c0d2e-1f1e-4c55-9c39-6f0e1a1b2c3d-0")
        );
        // A container id may be a UUID too; only the prefix makes a claim's.
        assert_eq!(
            Owner::of("0b6c0d2e-1f1e-4c55-9c39-6f0e1a1b2c3d"),
            Owner::Container("0b6c0d2e-1f1e-4c55-9c39-6f0e1a1b2c3d")
        );
        assert_eq!(
            Owner::of(&id).to_string(),
            format!("claim device {}", &id[4..])
        );
    }

    #[test]
    fn profile_tables_are_written_once_per_model() {
        let table = |n: u32| {
            vec![Profile {
                name: "1g.10gb".into(),
                id: 19,
                index: 0,
                slice_count: 1,
                instance_count: n,
                memory_mb: 9856,
                multiprocessors: 16,
                placements: vec![Slot { start: 0, size: 1 }],
            }]
        };
        let gpu = |i: u32, name: &str, profiles| GpuRecord {
            index: i,
            uuid: format!("GPU-{i}"),
            name: name.into(),
            minor: i,
            profiles,
            memory_total: 1,
            mig_enabled: true,
        };
        let st = LedgerState {
            format: FORMAT,
            gpus: vec![
                gpu(0, "H100", table(7)),
                gpu(1, "H100", table(7)),
                gpu(2, "H100", table(6)), // another table under the same name stays its own
                gpu(3, "A100", table(7)),
                gpu(4, "A100", vec![]), // not learnt yet: stays empty
            ],
            ..Default::default()
        };
        let raw = encode(&st, 0);
        let text = String::from_utf8(raw.clone()).unwrap();
        assert_eq!(text.matches("\"1g.10gb\"").count(), 3, "{text}");
        let mut back = decode(Path::new("l"), &raw).unwrap();
        assert_eq!(
            back.gpus[4].profiles,
            table(7),
            "filled from its model's table"
        );
        back.gpus[4].profiles.clear();
        assert_eq!(back, st);
    }

    fn leased(id: &str, since: u64) -> InstanceRecord {
        InstanceRecord {
            gpu_uuid: "GPU-0".into(),
            gpu_index: 0,
            gpu_minor: 0,
            profile: "1g.10gb".into(),
            profile_id: 19,
            slot: Slot { start: 0, size: 1 },
            made: None,
            created_at: 1,
            lease: Some(Lease {
                container_id: id.into(),
                since,
                runtime_root: None,
            }),
            idle_since: None,
            mps: false,
        }
    }

    /// The entry binary reads core's ledger through `gpushare_state::ledger` alone: the header,
    /// the ids, and whether an MPS daemon or a compute mode record is there.
    #[test]
    fn the_entry_binary_reads_what_core_writes() {
        use gpushare_state::ledger as fmt;
        let mut st = LedgerState {
            format: FORMAT,
            instances: vec![leased("c-1.x", 100)],
            ..Default::default()
        };
        let raw = encode(&st, 77);
        assert!(
            raw.starts_with(br#"{"format":1,"generation":77,"#),
            "{raw:?}"
        );
        assert_eq!(fmt::generation(&raw), Some(77));
        assert!(fmt::may_mention(&raw, b"c-1.x") && !fmt::may_mention(&raw, b"c-1"));
        let none = fmt::Flags {
            mps_daemons: false,
            compute_mode_records: false,
        };
        let head = fmt::header(&raw[..fmt::HEADER_MAX]).unwrap();
        assert_eq!((head.generation, head.flags), (77, Some(none)));
        st.mps.push(MpsDaemon {
            gpu_uuid: "GPU-0".into(),
            gpu_index: 0,
            gpu_minor: 0,
            pid: None,
            pipe_dir: "/p".into(),
            log_dir: "/l".into(),
            percent: 50,
            memory: None,
            started_at: 1,
            mig: None,
            clients: vec![],
        });
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: "GPU-0".into(),
            gpu_index: 0,
            found: Mode::Default,
            since: 1,
        });
        let raw = encode(&st, 78);
        assert_eq!(fmt::generation(&raw), Some(78));
        let both = fmt::Flags {
            mps_daemons: true,
            compute_mode_records: true,
        };
        assert_eq!(fmt::header(&raw).unwrap().flags, Some(both));
        let back = decode(Path::new("l"), &raw).unwrap();
        assert_eq!((back.format, back.generation), (FORMAT, 78));
        assert_eq!(back.mps, st.mps);
    }

    #[test]
    fn members_in_another_order_load_and_another_format_is_refused() {
        let st = LedgerState {
            format: FORMAT,
            instances: vec![leased("a", 100)],
            ..Default::default()
        };
        // A tool that rewrote the file with its members in another order: no header, a ledger.
        let raw = encode(&st, 9);
        let rest = raw.strip_prefix(br#"{"format":1,"generation":9,"#).unwrap();
        let moved = [
            b"{",
            &rest[..rest.len() - 1],
            br#","generation":9,"format":1}"#,
        ]
        .concat();
        assert_eq!(
            gpushare_state::ledger::generation(&moved),
            None,
            "the entry binary hands over"
        );
        let back = decode(Path::new("l"), &moved).unwrap();
        assert_eq!((back.generation, back.lease_of("a")), (9, Some(0)));

        let mut v: serde_json::Value = serde_json::from_slice(&raw).unwrap();
        v["format"] = 2.into();
        let err = decode(
            Path::new("/x/ledger.json"),
            &serde_json::to_vec(&v).unwrap(),
        )
        .unwrap_err();
        assert!(matches!(err, LedgerError::Format { found: 2, .. }), "{err}");
        let err = err.to_string();
        assert!(
            err.contains("/x/ledger.json") && err.contains("format 2"),
            "{err}"
        );
    }

    #[test]
    fn a_journal_of_another_version_stops_every_reader_and_says_so() {
        let dir = tmp("journal-foreign");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances = vec![leased("a", 100)];
        locked.save(&st).unwrap();
        std::fs::write(journal_path(&dir), b"#gpushare-journal 2\nwhatever\n").unwrap();
        for err in [locked.load().unwrap_err(), snapshot(&dir).unwrap_err()] {
            assert!(matches!(err, LedgerError::Journal { .. }), "{err}");
            let err = err.to_string();
            assert!(
                err.contains("#gpushare-journal 2") && err.contains("journal"),
                "{err}"
            );
        }
        assert_eq!(
            locked.load_without_journal().unwrap().lease_of("a"),
            Some(0)
        );
        // One from before the version line is read as version 1.
        let g = locked.generation();
        std::fs::write(journal_path(&dir), format!("a 150 {g};\n")).unwrap();
        assert_eq!(locked.load().unwrap().lease_of("a"), None);
        std::fs::remove_dir_all(dir).unwrap();
    }

    fn share(id: &str) -> ShareLease {
        ShareLease {
            gpu_uuid: "GPU-1".into(),
            gpu_index: 1,
            gpu_minor: 1,
            lease: Lease {
                container_id: id.into(),
                since: 1,
                runtime_root: None,
            },
        }
    }

    /// Every save leaves a marker for each lease and for nothing else (one a crashed hook
    /// left with its journaled release included), and a ledger an older gpushare wrote gets
    /// a marker for each of its leases at the first save.
    #[test]
    fn saves_keep_a_marker_for_every_lease_and_drop_the_rest() {
        use crate::lease_marker::list;
        let dir = tmp("markers");
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<BTreeSet<_>>();
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances = vec![leased("a", 100)];
        locked.save(&st).unwrap();
        assert_eq!(list(&dir), ids(&["a"]));
        st.release("a");
        st.shares.push(share("b"));
        locked.save(&st).unwrap();
        assert_eq!(list(&dir), ids(&["b"]), "made before, removed after");
        drop(locked);

        // The hook journaled b's release and died before removing b's marker: the fold
        // removes it.
        journal_release(&dir, "b", 5);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        assert!(st.shares.is_empty() && locked.folded());
        assert_eq!(list(&dir), ids(&["b"]));
        locked.save(&st).unwrap();
        assert!(list(&dir).is_empty());
        // A lease given back to the same id after its journaled release: marked again.
        st.shares.push(share("b"));
        locked.save(&st).unwrap();
        drop(locked);
        journal_release(&dir, "b", 6);
        std::fs::remove_file(crate::lease_marker::dir(&dir).join("b")).unwrap();
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.shares.push(share("b"));
        locked.save(&st).unwrap();
        assert_eq!(list(&dir), ids(&["b"]));
        drop(locked);

        // An older gpushare's ledger (no flags in its header) leasing c with no marker.
        let mut v: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join(LEDGER_FILE)).unwrap()).unwrap();
        v["instances"] = serde_json::to_value(vec![leased("c", 1)]).unwrap();
        std::fs::write(dir.join(LEDGER_FILE), serde_json::to_vec(&v).unwrap()).unwrap();
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let st = locked.load().unwrap();
        locked.save(&st).unwrap();
        assert_eq!(list(&dir), ids(&["b", "c"]));
        let raw = std::fs::read(dir.join(LEDGER_FILE)).unwrap();
        assert!(gpushare_state::ledger::header(&raw).unwrap().marked());
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// What the hook appends, for the ledger as it is on disk now.
    fn journal_release(dir: &Path, id: &str, t: u64) {
        let raw = std::fs::read(dir.join(LEDGER_FILE)).unwrap();
        let g = gpushare_state::ledger::generation(&raw).expect("the hook can read it");
        let journal = std::fs::read(journal_path(dir)).unwrap_or_default();
        let tail = journal::tail(&journal).unwrap();
        let mut buf = [0u8; 128];
        let n = journal::release_line(id.as_bytes(), t, g, tail, &mut buf).unwrap();
        let mut f = OpenOptions::new()
            .append(true)
            .create(true)
            .open(journal_path(dir))
            .unwrap();
        std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
    }

    #[test]
    fn journaled_releases_apply_on_load_and_leave_with_the_next_save() {
        let dir = tmp("journal");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances = vec![leased("a", 100), leased("b", 100)];
        st.instances[1].slot.start = 1;
        locked.save(&st).unwrap();
        drop(locked);

        journal_release(&dir, "a", 150);
        journal_release(&dir, "a", 160); // a hook run twice
        let seen = snapshot(&dir).unwrap();
        assert_eq!(
            seen.lease_of("a"),
            None,
            "read-only views apply the journal"
        );
        assert_eq!(
            seen.instances[0].idle_since,
            Some(150),
            "as of the hook's time"
        );
        assert!(seen.lease_of("b").is_some());

        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        assert_eq!(st.lease_of("a"), None);
        assert_eq!(st.instances[0].idle_since, Some(150));
        let departs = st.history.pending.clone();
        assert_eq!(departs.len(), 1, "one release, not two: {departs:?}");
        st.instances[0].lease = Some(Lease {
            container_id: "a".into(), // an engine reusing the id
            since: 200,
            runtime_root: None,
        });
        locked.save(&st).unwrap();
        assert_eq!(
            std::fs::read(journal_path(&dir)).unwrap(),
            b"",
            "emptied by the save"
        );
        assert!(
            locked.load().unwrap().lease_of("a").is_some(),
            "the new lease stands"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_line_left_by_a_crash_never_applies_to_a_later_ledger() {
        let dir = tmp("journal-crash");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances = vec![leased("a", 100)];
        locked.save(&st).unwrap();
        drop(locked);
        journal_release(&dir, "a", 150);
        let stale = std::fs::read(journal_path(&dir)).unwrap();

        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        assert_eq!(st.lease_of("a"), None);
        st.instances[0].lease = Some(Lease {
            container_id: "a".into(),
            since: 200,
            runtime_root: None,
        });
        locked.save(&st).unwrap();
        drop(locked);
        // As if the save had crashed after writing the ledger, before emptying the journal.
        std::fs::write(journal_path(&dir), &stale).unwrap();
        assert!(snapshot(&dir).unwrap().lease_of("a").is_some());
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        assert!(
            locked.load().unwrap().lease_of("a").is_some(),
            "the new lease stands"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_journal_edited_by_hand_never_stops_a_load() {
        let dir = tmp("journal-odd");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.instances = vec![leased("a", 100)];
        locked.save(&st).unwrap();
        let g = locked.generation();
        let mut raw = Vec::new();
        for line in [
            format!("+MIG-1 b 1 {g} /run/r\u{fc}nc 5;\n").into_bytes(),
            format!("\u{fc} 1 {g};\nzz\n").into_bytes(),
            [
                &b"+MIG-1 c 1 "[..],
                g.to_string().as_bytes(),
                b" /run/\xfc 5;\n",
            ]
            .concat(),
            format!("a 150 {g};\n").into_bytes(),
        ] {
            raw.extend_from_slice(&line);
        }
        std::fs::write(journal_path(&dir), raw).unwrap();
        let st = locked.load().unwrap();
        assert_eq!(st.lease_of("a"), None, "the good line applies");
        assert!(snapshot(&dir).unwrap().lease_of("a").is_none());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn round_trip_and_root_only_files() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tmp("rt");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.stats.grants_cold = 3;
        locked.save(&st).unwrap();
        assert_eq!(locked.load().unwrap().stats.grants_cold, 3);
        let mode = std::fs::metadata(ledger.path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o700);
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// A log that only warm folds appended to is compacted without a cold grant, to the
    /// history a cold grant would have read from it.
    #[test]
    fn a_long_history_log_is_compacted_off_the_cold_path() {
        let dir = tmp("history-compact");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        for t in 0..40 {
            st.history.arrive("1g.10gb", t, true, usize::MAX);
            st.history.depart("1g.10gb", t, t + 5);
            locked.save(&st).unwrap();
        }
        let log = dir.join(HISTORY_FILE);
        let long = std::fs::read_to_string(&log).unwrap();
        assert_eq!(long.lines().count(), 80);
        locked.compact_history(40);
        assert_eq!(std::fs::read_to_string(&log).unwrap(), long, "not long yet");
        locked.compact_history(4);
        let short = std::fs::read_to_string(&log).unwrap();
        assert_eq!(short.lines().count(), 8, "{short}");
        let replayed = |text: &str| crate::policy::history::History::replay(text, 4).entries;
        assert_eq!(replayed(&short), replayed(&long));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn history_is_appended_once_and_read_back_by_the_cold_path() {
        let dir = tmp("history");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        let mut st = locked.load().unwrap();
        st.history.arrive("1g.10gb", 10, true, 100);
        st.history.arrive("2g.20gb", 11, false, 100);
        locked.save(&st).unwrap();
        locked.save(&st).unwrap();
        st.history.depart("1g.10gb", 10, 25);
        locked.save(&st).unwrap();
        let raw = std::fs::read_to_string(ledger.path()).unwrap();
        assert!(!raw.contains("history"), "not in the ledger: {raw}");
        let log = std::fs::read_to_string(dir.join(HISTORY_FILE)).unwrap();
        assert_eq!(log.lines().count(), 3, "each event once: {log}");

        let mut fresh = locked.load().unwrap();
        assert!(
            fresh.history.entries.is_empty(),
            "the warm path reads no history"
        );
        fresh.history.arrive("1g.10gb", 30, true, 100);
        locked.load_history(&mut fresh, 100);
        let e: Vec<_> = fresh
            .history
            .entries
            .iter()
            .map(|e| (e.profile.as_str(), e.at, e.hold))
            .collect();
        assert_eq!(
            e,
            [
                ("1g.10gb", 10, Some(15)),
                ("2g.20gb", 11, None),
                ("1g.10gb", 30, None)
            ]
        );
        locked.save(&fresh).unwrap();
        let log = std::fs::read_to_string(dir.join(HISTORY_FILE)).unwrap();
        assert_eq!(
            log.lines().count(),
            4,
            "the pending arrival appended once: {log}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn lock_times_out_while_held() {
        let dir = tmp("busy");
        let ledger = Ledger::new(&dir);
        let _held = ledger.lock(Duration::from_secs(1)).unwrap();
        // flock locks belong to the open file description, so a second open conflicts.
        let err = ledger
            .lock(Duration::from_millis(30))
            .err()
            .expect("second lock must wait");
        assert!(matches!(err, LedgerError::Busy { .. }), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn corrupt_ledger_is_reported_not_replaced() {
        let dir = tmp("corrupt");
        let ledger = Ledger::new(&dir);
        let locked = ledger.lock(Duration::from_secs(1)).unwrap();
        std::fs::write(ledger.path(), b"{not json").unwrap();
        let err = locked.load().unwrap_err().to_string();
        assert!(
            err.contains("corrupt") && err.contains("`gpusharectl repair`"),
            "{err}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    /// The ledger and journal in fixtures/ (the fuzz targets' seeds too) are what core writes
    /// and the entry binary appends: core writes the ledger back byte for byte, the entry
    /// binary reads its generation off its start, and the journal's lines apply to it.
    #[test]
    fn the_fixture_ledger_is_what_core_writes_and_both_sides_read() {
        let raw = include_bytes!("../../../fixtures/ledger/ledger.json");
        let st = decode(Path::new("fixtures/ledger/ledger.json"), raw).unwrap();
        assert_eq!(
            String::from_utf8(encode(&st, st.generation)).unwrap(),
            std::str::from_utf8(raw).unwrap(),
            "fixtures/ledger/ledger.json is no longer what core writes: regenerate it"
        );
        assert_eq!(gpushare_state::ledger::generation(raw), Some(st.generation));
        let journal = include_bytes!("../../../fixtures/ledger/journal");
        let mut applied = st.clone();
        applied.apply_journal(journal);
        assert_eq!(applied.lease_of("c1"), None, "c1's release applied");
        let i = applied.lease_of("c2").expect("the journaled grant applied");
        assert_eq!(
            applied.instances[i].made.as_ref().unwrap().mig_uuid,
            "MIG-0c9d8e7f-6a5b-5c4d-8e3f-2a1b0c9d8e7f"
        );
        for (id, held) in [("c1", false), ("c2", true), ("c3", false)] {
            assert_eq!(
                gpushare_state::journal::may_hold(raw, journal, id.as_bytes()),
                held,
                "{id}"
            );
        }
    }
}
