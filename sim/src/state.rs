//! The simulated node's state: one JSON file beside the library, changed only under an flock, so
//! that every process that loads the library (or runs the CLI) sees the same GPUs.

use crate::driver_files;
use crate::error::{SimError, SimResult};
use serde::{Deserialize, Serialize};
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

pub const STATE_FILE: &str = "gpushare-sim-state.json";
pub const LOCK_FILE: &str = "gpushare-sim-state.lock";
pub const STATE_VERSION: u32 = 1;

#[derive(Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum Latency {
    /// No added latency (fast tests).
    #[default]
    None,
    /// Each call costs what the real driver costs (see `latency.rs`).
    Measured,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct State {
    pub version: u32,
    /// The root under which the driver's files live (`/proc/...`, `/dev/...`).
    pub driver_root: PathBuf,
    #[serde(default)]
    pub latency: Latency,
    /// Source of handle serials: each GPU/compute instance gets a new one, so a handle to a
    /// destroyed instance never matches a later instance that reuses its id.
    pub next_serial: u64,
    pub gpus: Vec<Gpu>,
    #[serde(default)]
    pub processes: Vec<Process>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Gpu {
    pub index: u32,
    pub minor: u32,
    /// "GPU-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
    pub uuid: String,
    /// Key of a built-in model (`models.rs`).
    pub model: String,
    /// NVML_DEVICE_MIG_ENABLE (1) or NVML_DEVICE_MIG_DISABLE (0).
    pub mig_current: u32,
    pub mig_pending: u32,
    /// `nvmlComputeMode_t`: DEFAULT (0), PROHIBITED (2), EXCLUSIVE_PROCESS (3). A state written
    /// before compute modes were modelled reads as DEFAULT, what Linux boots a GPU in.
    #[serde(default)]
    pub compute_mode: u32,
    #[serde(default)]
    pub gpu_instances: Vec<GpuInstance>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct GpuInstance {
    pub id: u32,
    pub profile_id: u32,
    /// Placement in memory slots.
    pub start: u32,
    pub size: u32,
    pub serial: u64,
    #[serde(default)]
    pub compute_instances: Vec<ComputeInstance>,
}

#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct ComputeInstance {
    pub id: u32,
    /// Compute-instance profile id (= NVML_COMPUTE_INSTANCE_PROFILE_* index).
    pub profile_id: u32,
    /// Placement in the GPU instance's compute slices.
    pub start: u32,
    pub size: u32,
    /// "MIG-xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx", random, never reused.
    pub uuid: String,
    pub serial: u64,
}

/// A simulated process holding a context on a whole GPU or a MIG device.
#[derive(Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct Process {
    pub pid: u32,
    /// The GPU's or the MIG device's UUID.
    pub uuid: String,
    pub used_memory: u64,
}

impl State {
    pub fn gpu(&self, index: u32) -> Option<&Gpu> {
        self.gpus.get(index as usize)
    }

    pub fn gpu_mut(&mut self, index: u32) -> Option<&mut Gpu> {
        self.gpus.get_mut(index as usize)
    }

    pub fn take_serial(&mut self) -> u64 {
        let s = self.next_serial;
        self.next_serial += 1;
        s
    }

    /// Processes attached to this UUID.
    pub fn processes_on<'a>(&'a self, uuid: &'a str) -> impl Iterator<Item = &'a Process> + 'a {
        self.processes.iter().filter(move |p| p.uuid == uuid)
    }

    /// `(gpu index, gi id, ci id)` of the compute instance with this MIG UUID.
    pub fn find_mig(&self, uuid: &str) -> Option<(u32, u32, u32)> {
        self.gpus.iter().find_map(|g| {
            g.gpu_instances.iter().find_map(|gi| {
                gi.compute_instances
                    .iter()
                    .find(|ci| ci.uuid == uuid)
                    .map(|ci| (g.index, gi.id, ci.id))
            })
        })
    }
}

impl State {
    /// One GPU of `model` with nothing on it, MIG on or off: where the unit tests start.
    #[cfg(test)]
    pub fn one_gpu(model: &str, mig: bool) -> State {
        State {
            version: STATE_VERSION,
            driver_root: "/nonexistent".into(),
            latency: Latency::None,
            next_serial: 1,
            gpus: vec![Gpu {
                index: 0,
                minor: 0,
                uuid: "GPU-test".into(),
                model: model.into(),
                mig_current: u32::from(mig),
                mig_pending: u32::from(mig),
                compute_mode: 0,
                gpu_instances: vec![],
            }],
            processes: vec![],
        }
    }
}

impl Gpu {
    pub fn gi(&self, id: u32) -> Option<&GpuInstance> {
        self.gpu_instances.iter().find(|g| g.id == id)
    }

    pub fn gi_mut(&mut self, id: u32) -> Option<&mut GpuInstance> {
        self.gpu_instances.iter_mut().find(|g| g.id == id)
    }

    pub fn mig_enabled(&self) -> bool {
        self.mig_current == 1
    }

    /// Existing compute instances as MIG devices, in the order NVML enumerates them here:
    /// by GPU-instance id, then compute-instance id.
    pub fn mig_devices(&self) -> Vec<(&GpuInstance, &ComputeInstance)> {
        let mut v: Vec<_> = self
            .gpu_instances
            .iter()
            .flat_map(|gi| gi.compute_instances.iter().map(move |ci| (gi, ci)))
            .collect();
        v.sort_by_key(|(gi, ci)| (gi.id, ci.id));
        v
    }
}

/// A random UUID body "xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx" from /dev/urandom.
pub fn random_uuid() -> SimResult<String> {
    let mut b = [0u8; 16];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut b))
        .map_err(|e| SimError::io("/dev/urandom", e))?;
    // Mark it as a version-4 UUID, as NVIDIA's look.
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    ))
}

/// Which file a path named when it was read: device, inode, modification time, size.
pub type FileKey = (u64, u64, i64, i64, u64);

/// The state file and its lock in one directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

impl Store {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Store { dir: dir.into() }
    }

    /// The store the CLI uses for a node laid out under `root`.
    pub fn for_root(root: &Path) -> Self {
        Store::new(root.join("usr/lib"))
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn state_path(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn exists(&self) -> bool {
        self.state_path().exists()
    }

    fn lock(&self) -> SimResult<File> {
        let path = self.dir.join(LOCK_FILE);
        let f = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(&path)
            // A reader without write permission (an unprivileged process) can still lock.
            .or_else(|_| File::open(&path))
            .map_err(|e| SimError::io(&path.display().to_string(), e))?;
        loop {
            // SAFETY: flock on a descriptor we own; it is released when `f` is closed.
            let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) };
            if rc == 0 {
                return Ok(f);
            }
            let err = std::io::Error::last_os_error();
            if err.kind() != std::io::ErrorKind::Interrupted {
                return Err(SimError::io("flock", err));
            }
        }
    }

    fn read(&self) -> SimResult<State> {
        let path = self.state_path();
        let text = match fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SimError::NoState(path.display().to_string()))
            }
            Err(e) => return Err(SimError::io(&path.display().to_string(), e)),
        };
        serde_json::from_str(&text).map_err(|e| SimError::io(&path.display().to_string(), e))
    }

    /// Writes the state atomically (temp file + rename). The caller holds the lock.
    fn write(&self, state: &State) -> SimResult<()> {
        let path = self.state_path();
        let tmp = self
            .dir
            .join(format!(".{STATE_FILE}.{}.tmp", std::process::id()));
        let mut text =
            serde_json::to_string_pretty(state).map_err(|e| SimError::io("encode", e))?;
        text.push('\n');
        let res = File::create(&tmp)
            .and_then(|mut f| f.write_all(text.as_bytes()))
            .and_then(|_| fs::rename(&tmp, &path));
        if let Err(e) = res {
            let _ = fs::remove_file(&tmp);
            return Err(SimError::io(&path.display().to_string(), e));
        }
        Ok(())
    }

    /// The state as the last completed transaction left it, without the lock (writes are
    /// atomic renames, so a reader sees one whole state or the next), reusing `cache` while the
    /// file is the same one: a real driver answers queries from memory, and a simulator that
    /// parsed its file on every query would charge gpushare for work no driver does.
    pub fn load_cached(&self, cache: &mut Option<(FileKey, State)>) -> SimResult<State> {
        use std::os::unix::fs::MetadataExt;
        let path = self.state_path();
        let key = match fs::metadata(&path) {
            Ok(m) => (m.dev(), m.ino(), m.mtime(), m.mtime_nsec(), m.size()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(SimError::NoState(path.display().to_string()))
            }
            Err(e) => return Err(SimError::io(&path.display().to_string(), e)),
        };
        if let Some((k, st)) = cache {
            if *k == key {
                return Ok(st.clone());
            }
        }
        let st = self.read()?;
        *cache = Some((key, st.clone()));
        Ok(st)
    }

    /// Reads the state under the lock.
    pub fn load(&self) -> SimResult<State> {
        let _lock = self.lock()?;
        self.read()
    }

    /// One transaction: lock, read, act, and if the state changed, bring the driver's files in
    /// line with it and write it back. An error leaves the state file untouched.
    pub fn transact<T>(&self, f: impl FnOnce(&mut State) -> SimResult<T>) -> SimResult<T> {
        let _lock = self.lock()?;
        let before = self.read()?;
        let mut state = before.clone();
        let out = f(&mut state)?;
        if state != before {
            driver_files::sync_capabilities(&state)?;
            kill_point();
            self.write(&state)?;
        }
        Ok(out)
    }

    /// Creates the state file (for `init`), under the lock. Refuses to replace an existing one
    /// unless `force`.
    pub fn create(&self, state: &State, force: bool) -> SimResult<()> {
        fs::create_dir_all(&self.dir)
            .map_err(|e| SimError::io(&self.dir.display().to_string(), e))?;
        let _lock = self.lock()?;
        if self.exists() && !force {
            return Err(SimError::Usage(format!(
                "{} exists (use --force to replace it)",
                self.state_path().display()
            )));
        }
        driver_files::sync_capabilities(state)?;
        self.write(state)
    }
}

/// For crash tests: `GPUSHARE_SIM_KILL_AT=N` kills the calling process (SIGKILL) in its N-th
/// state-changing transaction, after the driver's files were brought in line with the new
/// state and before that state is written: the moment where a killed caller leaves the two
/// disagreeing (the files say an instance is gone that NVML still lists).
fn kill_point() {
    use std::sync::atomic::{AtomicU64, Ordering};
    static SEEN: AtomicU64 = AtomicU64::new(0);
    let Some(at) = std::env::var("GPUSHARE_SIM_KILL_AT")
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
    else {
        return;
    };
    if SEEN.fetch_add(1, Ordering::SeqCst) + 1 == at {
        // SAFETY: raising a signal at ourselves has no preconditions.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuid_shape() {
        let u = random_uuid().unwrap();
        assert_eq!(u.len(), 36);
        let parts: Vec<_> = u.split('-').map(str::len).collect();
        assert_eq!(parts, [8, 4, 4, 4, 12]);
        assert_ne!(u, random_uuid().unwrap());
    }
}
