//! gpushare's configuration: `/etc/gpushare/config.toml`, or the file `GPUSHARE_CONFIG` names.

use serde::Deserialize;
use std::path::{Path, PathBuf};

pub const DEFAULT_PATH: &str = "/etc/gpushare/config.toml";
pub const ENV_CONFIG: &str = "GPUSHARE_CONFIG";

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config {path}: {source}")]
    Parse {
        path: PathBuf,
        source: toml::de::Error,
    },
    #[error("no low-level OCI runtime found: set `runtime` in {path} or install runc or crun")]
    NoRuntime { path: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The low-level runtime gpushare hands every command to. Default: runc, else crun, on PATH.
    pub runtime: Option<PathBuf>,
    /// Ledger and lock live here; root-only.
    pub state_dir: PathBuf,
    /// NVML library, opened only on cold paths (instance create/destroy, status, gc).
    pub nvml_library: PathBuf,
    /// Every driver file (/proc/devices, /proc/driver/nvidia*, /dev/nvidia*) is read below this.
    pub driver_root: PathBuf,
    /// The poststop hook added to specs (run under the name `gpushare-hook`). Default: the
    /// `gpushare` entry binary next to the running one, else `gpushare-hook` there.
    pub hook_path: Option<PathBuf>,
    pub pool: PoolConfig,
    /// Where MIG instances go and when idle ones are reused (docs/placement.md).
    pub placement: crate::policy::PlacementConfig,
    pub policy: PolicyConfig,
    pub log: LogConfig,
    pub mps: MpsConfig,
    pub inject: InjectConfig,
    pub mig: MigConfig,
    /// Where this config was read from (not a config key).
    #[serde(skip)]
    pub source: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PoolConfig {
    /// Idle MIG instances older than this are destroyed by `gpusharectl gc`; 0 keeps them.
    pub idle_timeout_s: u64,
    /// How long `create` waits for the ledger lock before failing.
    pub lock_timeout_ms: u64,
    /// How long the poststop hook waits for the ledger lock (the shim's `delete` and `gc`
    /// release anything a timed-out hook left).
    pub hook_lock_timeout_ms: u64,
    /// `gpusharectl gc` leaves leases younger than this alone even when the runtime has no
    /// such container: its `create` may still be running.
    pub gc_grace_s: u64,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// Honour `GPUSHARE_*` variables from the container's env (for Docker < 24).
    pub allow_env: bool,
    /// MIG profiles tenants may ask for; empty allows every profile the GPU offers.
    pub allowed_profiles: Vec<String>,
    /// Refuse GPU requests from privileged containers (all devices allowed, or CAP_SYS_ADMIN):
    /// such a container can open every slice's nodes, so a slice isolates nothing.
    pub refuse_privileged: bool,
    /// Grant GPU requests from specs that already carry nodes or allow rules of the driver's
    /// devices beyond what gpushare grants (another GPU, another slice's capability, a
    /// wildcard over the driver's majors). Off: such a request is refused, naming the entry,
    /// so that a slice's container reaches no other tenant's slice.
    pub allow_foreign_devices: bool,
    /// The largest MPS active-thread percentage a container may ask for (1-100).
    pub max_mps_percent: u8,
    /// The largest MPS pinned-memory limit a container may ask for, as `gpu.mps.memory` is
    /// written (e.g. "16G"); none: no ceiling beyond the GPU's memory.
    pub max_mps_memory: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: String,
    /// A file to append gpushare's own log to (besides the engine's `--log`).
    pub file: Option<PathBuf>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            runtime: None,
            // MIG instances, MPS daemons and containers are all gone after a reboot, so their
            // ledger should be too; on tmpfs its durable writes also cost next to nothing.
            state_dir: PathBuf::from(gpushare_state::DEFAULT_DIR),
            nvml_library: PathBuf::from("libnvidia-ml.so.1"),
            driver_root: PathBuf::from("/"),
            hook_path: None,
            pool: PoolConfig::default(),
            placement: crate::policy::PlacementConfig::default(),
            policy: PolicyConfig::default(),
            log: LogConfig::default(),
            mps: MpsConfig::default(),
            inject: InjectConfig::default(),
            mig: MigConfig::default(),
            source: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MpsConfig {
    /// The MPS control program (found on PATH, then under the driver root's bin folders).
    pub control: PathBuf,
    /// `strict`: one share size per GPU, enforced by the daemon's defaults (a container cannot
    /// lift it). `cooperative`: sizes may differ; each container's env carries its own share,
    /// which a container can drop.
    pub policy: MpsPolicy,
    /// Let pinned-memory limits on one GPU add up to more than it has.
    pub allow_overcommit: bool,
    /// Start the daemon in multi-user mode (`-M`): clients of every uid share one server and
    /// one ceiling.
    pub multi_user: bool,
    /// Where the daemon's pipe directory appears inside containers.
    pub mount_path: String,
    /// How long to wait for a new daemon's control socket.
    pub start_timeout_ms: u64,
    /// Set a GPU to compute mode EXCLUSIVE_PROCESS while gpushare's MPS daemon serves it (the
    /// mode found is put back after the daemon quits), so that no tenant can leave its share
    /// by pointing CUDA at another pipe folder. `false`: the GPU's settings are never touched,
    /// and shares there can be left.
    pub exclusive: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MpsPolicy {
    Strict,
    Cooperative,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InjectConfig {
    /// `gpushare`: mount the host's driver libraries and tools read-only into GPU containers;
    /// `nvidia-container-runtime`: hand GPU containers to NVIDIA's runtime instead, which does
    /// its own injection from NVIDIA_VISIBLE_DEVICES; `none`: the image brings its own.
    pub mode: InjectMode,
    /// Folders (below the driver root) searched for the driver's libraries before the host's
    /// ld cache.
    pub lib_dirs: Vec<PathBuf>,
    /// Folders (below the driver root) searched for nvidia-smi and the MPS programs.
    pub bin_dirs: Vec<PathBuf>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigConfig {
    /// Which GPUs gpushare may switch MIG mode on or off for a request (docs/operations.md,
    /// "MIG mode on demand"): `false` (none: the operator's `nvidia-smi -mig` alone decides),
    /// `true` (every GPU), or a list of GPU indexes and UUIDs.
    pub manage_mode: ManageMode,
}

/// `mig.manage_mode`: `false`, `true`, or `["0", "GPU-…"]`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum ManageMode {
    All(bool),
    Listed(Vec<String>),
}

impl Default for ManageMode {
    fn default() -> Self {
        ManageMode::All(false)
    }
}

impl ManageMode {
    /// Whether gpushare may switch the MIG mode of GPU `index` / `uuid`.
    pub fn covers(&self, index: u32, uuid: &str) -> bool {
        match self {
            ManageMode::All(all) => *all,
            ManageMode::Listed(gpus) => gpus
                .iter()
                .any(|g| *g == index.to_string() || g.eq_ignore_ascii_case(uuid)),
        }
    }

    /// Whether it covers any GPU at all.
    pub fn any(&self) -> bool {
        !matches!(self, ManageMode::All(false)) && *self != ManageMode::Listed(Vec::new())
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum InjectMode {
    Gpushare,
    NvidiaContainerRuntime,
    None,
}

impl Default for MpsConfig {
    fn default() -> Self {
        MpsConfig {
            control: PathBuf::from("nvidia-cuda-mps-control"),
            policy: MpsPolicy::Strict,
            allow_overcommit: false,
            multi_user: true,
            mount_path: "/tmp/nvidia-mps".into(),
            start_timeout_ms: 10_000,
            exclusive: true,
        }
    }
}

impl Default for InjectConfig {
    fn default() -> Self {
        InjectConfig {
            mode: InjectMode::Gpushare,
            lib_dirs: [
                "/usr/lib/x86_64-linux-gnu",
                "/usr/lib64",
                "/usr/local/nvidia/lib64",
            ]
            .into_iter()
            .map(PathBuf::from)
            .collect(),
            bin_dirs: ["/usr/bin", "/usr/local/nvidia/bin"]
                .into_iter()
                .map(PathBuf::from)
                .collect(),
        }
    }
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            idle_timeout_s: 0,
            lock_timeout_ms: 30_000,
            hook_lock_timeout_ms: 5_000,
            gc_grace_s: 60,
        }
    }
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig {
            allow_env: true,
            allowed_profiles: Vec::new(),
            refuse_privileged: false,
            allow_foreign_devices: false,
            max_mps_percent: 100,
            max_mps_memory: None,
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: "warn".into(),
            file: None,
        }
    }
}

impl Config {
    /// The config named by `explicit`, else `GPUSHARE_CONFIG`, else the default file; a
    /// missing default file means defaults, a missing named file is an error.
    /// The config file named by `--gpushare-config`, else by `GPUSHARE_CONFIG`; None: the
    /// default path.
    fn named(explicit: Option<&Path>) -> Option<PathBuf> {
        explicit.map(Path::to_path_buf).or_else(|| {
            std::env::var_os(ENV_CONFIG)
                .filter(|v| !v.is_empty())
                .map(PathBuf::from)
        })
    }

    pub fn load(explicit: Option<&Path>) -> Result<Config, ConfigError> {
        match Self::named(explicit) {
            Some(path) => Self::from_file(&path),
            None => match Self::from_file(Path::new(DEFAULT_PATH)) {
                Err(ConfigError::Read { source, .. })
                    if source.kind() == std::io::ErrorKind::NotFound =>
                {
                    Ok(Config::default())
                }
                other => other,
            },
        }
    }

    /// What gpushare runs with when the config cannot be parsed: the defaults, with the
    /// top-level `runtime` and `state_dir` as the `gpushare` entry binary reads them, so that
    /// both binaries hand a container to the same runtime.
    pub fn fallback(explicit: Option<&Path>) -> Config {
        let path = Self::named(explicit).unwrap_or_else(|| PathBuf::from(DEFAULT_PATH));
        let mut cfg = Config::default();
        let Ok(text) = std::fs::read(&path) else {
            return cfg;
        };
        if let Some(top) = gpushare_fastpath::config::scan(&text) {
            use std::os::unix::ffi::OsStrExt;
            let path = |v: &[u8]| PathBuf::from(std::ffi::OsStr::from_bytes(v));
            cfg.runtime = top.runtime.map(path);
            if let Some(dir) = top.state_dir {
                cfg.state_dir = path(dir);
            }
        }
        cfg
    }

    pub fn from_file(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let mut cfg = Self::parse(&text).map_err(|source| ConfigError::Parse {
            path: path.to_path_buf(),
            source,
        })?;
        cfg.source = Some(std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf()));
        Ok(cfg)
    }

    pub fn parse(text: &str) -> Result<Config, toml::de::Error> {
        toml::from_str(text)
    }

    /// A path of the driver's, read below `driver_root` ("/proc/devices" -> ROOT/proc/devices).
    pub fn driver_path(&self, abs: &str) -> PathBuf {
        self.driver_root.join(abs.trim_start_matches('/'))
    }

    /// The low-level runtime's absolute path.
    pub fn runtime_path(&self) -> Result<PathBuf, ConfigError> {
        let source = || {
            self.source
                .as_ref()
                .map_or(DEFAULT_PATH.to_string(), |p| p.display().to_string())
        };
        match &self.runtime {
            Some(p) if p.is_absolute() => Ok(p.clone()),
            Some(p) => find_in_path(p).ok_or_else(|| ConfigError::NoRuntime { path: source() }),
            None => find_in_path(Path::new("runc"))
                .or_else(|| find_in_path(Path::new("crun")))
                .ok_or_else(|| ConfigError::NoRuntime { path: source() }),
        }
    }

    /// The program gpushare adds to specs as their poststop hook, always run with argv[0]
    /// `gpushare-hook`. On x86-64 that is the `gpushare` entry binary next to the running one:
    /// under that name it releases with one journal line and no loader, and hands anything
    /// else to `gpushare-hook`. Elsewhere, or without it, `gpushare-hook` itself.
    pub fn hook_path(&self) -> PathBuf {
        if let Some(p) = &self.hook_path {
            return p.clone();
        }
        let Some(dir) = std::env::current_exe()
            .ok()
            .and_then(|exe| exe.parent().map(Path::to_path_buf))
        else {
            return PathBuf::from("/usr/bin/gpushare-hook");
        };
        let entry = dir.join("gpushare");
        if cfg!(target_arch = "x86_64")
            && is_executable(&entry)
            && dir.join("gpushare-hook").exists()
        {
            return entry;
        }
        dir.join("gpushare-hook")
    }

    pub fn profile_allowed(&self, profile: &str) -> bool {
        self.policy.allowed_profiles.is_empty()
            || self.policy.allowed_profiles.iter().any(|p| p == profile)
    }
}

/// The executable `name` on `$PATH`, or `name` itself when it names a folder and is a file.
pub fn find_in_path(name: &Path) -> Option<PathBuf> {
    if name.components().count() > 1 {
        return name.is_file().then(|| name.to_path_buf());
    }
    let path = std::env::var_os("PATH")
        .unwrap_or_else(|| "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into());
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| is_executable(p))
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_config_means_defaults() {
        let c = Config::parse("").unwrap();
        assert_eq!(c.state_dir, PathBuf::from("/run/gpushare"));
        assert!(c.policy.allow_env);
    }

    #[test]
    fn the_entry_binary_reads_the_same_places() {
        use gpushare_fastpath::config as front;
        assert_eq!(front::DEFAULT_PATH, DEFAULT_PATH.as_bytes());
        assert_eq!(front::ENV_CONFIG, ENV_CONFIG.as_bytes());
        let d = Config::default();
        assert_eq!(
            front::DEFAULT_STATE_DIR,
            d.state_dir.as_os_str().as_encoded_bytes()
        );
        let ledger = crate::ledger::Ledger::new(&d.state_dir).path();
        assert_eq!(
            ledger.file_name().unwrap().as_encoded_bytes(),
            gpushare_state::ledger::NAME.as_bytes()
        );
        let t = front::scan(b"runtime = \"/r\"\nstate_dir = \"/s\"\n[pool]\n").unwrap();
        let c = Config::parse("runtime = \"/r\"\nstate_dir = \"/s\"\n[pool]\n").unwrap();
        assert_eq!(
            t.runtime.unwrap(),
            c.runtime.unwrap().as_os_str().as_encoded_bytes()
        );
        assert_eq!(
            t.state_dir.unwrap(),
            c.state_dir.as_os_str().as_encoded_bytes()
        );
    }

    #[test]
    fn a_broken_config_still_names_its_runtime() {
        let dir = std::env::temp_dir().join(format!("gpushare-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("broken.toml");
        std::fs::write(
            &f,
            "runtime = \"/usr/bin/crun\"\nstat_dir = \"/x\"\n[pool]\nbad = 1\n",
        )
        .unwrap();
        assert!(Config::load(Some(&f)).is_err());
        let c = Config::fallback(Some(&f));
        assert_eq!(c.runtime, Some(PathBuf::from("/usr/bin/crun")));
        assert_eq!(c.state_dir, Config::default().state_dir);
        std::fs::write(&f, "runtime = 5\n").unwrap();
        assert_eq!(
            Config::fallback(Some(&f)).runtime,
            None,
            "unreadable top: the defaults"
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn unknown_keys_are_refused() {
        let err = Config::parse("stat_dir = \"/x\"").unwrap_err().to_string();
        assert!(err.contains("stat_dir"), "{err}");
    }

    #[test]
    fn manage_mode_is_a_switch_or_a_list_of_gpus() {
        let off = Config::parse("").unwrap().mig.manage_mode;
        assert!(!off.covers(0, "GPU-a") && !off.any());
        let all = Config::parse("[mig]\nmanage_mode = true")
            .unwrap()
            .mig
            .manage_mode;
        assert!(all.covers(3, "GPU-a") && all.any());
        let some = Config::parse("[mig]\nmanage_mode = [\"1\", \"GPU-ABC\"]")
            .unwrap()
            .mig
            .manage_mode;
        assert!(some.covers(1, "GPU-x"));
        assert!(some.covers(0, "gpu-abc"), "UUIDs match in any case");
        assert!(!some.covers(0, "GPU-x"));
        assert!(Config::parse("[mig]\nmanage_mode = \"yes\"").is_err());
    }

    #[test]
    fn driver_paths_are_below_the_root() {
        let c = Config::parse("driver_root = \"/sim\"").unwrap();
        assert_eq!(
            c.driver_path("/proc/devices"),
            PathBuf::from("/sim/proc/devices")
        );
    }
}
