//! `exec` into a container that holds a grant: the exec'd process gets the env the container's
//! own process got from gpushare (the visible-devices variables, the MPS variables, the driver
//! folders on `PATH` and `LD_LIBRARY_PATH`). Engines build an exec's process from their own
//! container config, never from the `config.json` gpushare edited, so without this an exec'd
//! `nvidia-smi` is not found and CUDA sees no device.
//!
//! The grant's env is rebuilt from the ledger's lease, with the same functions that built the
//! container's edit, rather than read back from the bundle's `config.json`: the ledger is
//! gpushare's own root-only record of what was granted (the bundle is the engine's, and where it
//! lies is written only in each runtime's private state format); the `gpushare` entry binary has
//! already scanned the ledger to send this exec here at all; and an MPS share's limits, which an
//! exec may not raise, are the lease's own numbers.
//!
//! What the exec sets itself wins (an engine's `exec -e`, or the container's env the engine
//! copies into every exec), except an MPS share: the thread percentage and pinned-memory limit
//! may only go lower than the grant's, and the pipe folder is always the daemon's.

use crate::config::Config;
use crate::ledger::{self, LedgerState};
use crate::runc_args::RuncArgs;
use crate::runc_log;
use crate::spec::{PathEnv, OWNED_ENV};
use gpushare_fastpath::args::{Role, Roles};
use serde_json::Value;
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

const PERCENT: &str = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE";
const MEMORY: &str = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT";
const PIPE: &str = "CUDA_MPS_PIPE_DIRECTORY";

#[derive(Debug, thiserror::Error)]
pub enum ExecEnvError {
    #[error("exec --process: {0}")]
    Read(#[from] crate::trust::SpecFileError),
    #[error("exec --process {path} is {what}: gpushare reads an exec's process only from a regular file, never through a symlink, to give it its container's GPU env; the engine writes a plain file")]
    NotRegular { path: String, what: &'static str },
    #[error("exec --process {path}: `env` is not a list of strings; gpushare cannot give the exec its container's GPU env")]
    Shape { path: String },
    #[error("exec --process: the file is not JSON")]
    NotJson,
    #[error("cannot hold the edited exec process in memory: {0}")]
    Copy(std::io::Error),
    #[error(transparent)]
    Inject(#[from] crate::inject::InjectError),
}

/// What a grant puts into the env of every process of its container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantEnv {
    /// Variables with the grant's value.
    pub vars: Vec<(String, String)>,
    /// Folders added to `:`-separated variables.
    pub paths: Vec<PathEnv>,
    /// An MPS share's thread percentage and pinned-memory limit, which an exec may not raise.
    pub mps: Option<(u8, Option<u64>)>,
}

/// The env of `id`'s grant, from the ledger's lease; None when it holds none.
pub fn of_lease(
    cfg: &Config,
    st: &LedgerState,
    id: &str,
) -> Result<Option<GrantEnv>, ExecEnvError> {
    let visible = |uuid: &str| {
        OWNED_ENV
            .iter()
            .map(|n| (n.to_string(), uuid.to_string()))
            .collect()
    };
    let mig = st.lease_of(id).and_then(|i| {
        let made = st.instances[i].made.as_ref()?;
        Some((visible(&made.mig_uuid), None))
    });
    let share = || {
        st.shares
            .iter()
            .find(|s| s.lease.container_id == id)
            .map(|s| (visible(&s.gpu_uuid), None))
    };
    let mps = || {
        st.mps.iter().find_map(|d| {
            let c = d.clients.iter().find(|c| c.lease.container_id == id)?;
            let vars = crate::mps::client_env(cfg, d, c.percent, c.memory);
            Some((vars, Some((c.percent, c.memory))))
        })
    };
    let Some((vars, mps)) = mig.or_else(share).or_else(mps) else {
        return Ok(None);
    };
    let paths = crate::inject::driver_edit(cfg)?.env_paths;
    Ok(Some(GrantEnv { vars, paths, mps }))
}

impl GrantEnv {
    /// What `NAME=value`, set by the exec itself, becomes: kept, unless it would lift an MPS
    /// share, and with gpushare's folder added to a path variable.
    fn settle(&self, entry: &str) -> String {
        let Some((name, value)) = entry.split_once('=') else {
            return entry.to_string();
        };
        if let Some(p) = self.paths.iter().find(|p| p.name == name) {
            return format!("{name}={}", p.value_with_dir(Some(value)));
        }
        let granted = self.vars.iter().find(|(n, _)| n == name).map(|(_, v)| v);
        let (Some(granted), Some((percent, memory))) = (granted, self.mps) else {
            return entry.to_string();
        };
        let within = match name {
            PERCENT => value
                .trim()
                .parse::<u8>()
                .is_ok_and(|p| (1..=percent).contains(&p)),
            MEMORY => memory.is_some_and(|m| memory_within(value, m)),
            PIPE => value == granted,
            _ => true,
        };
        match within {
            true => entry.to_string(),
            false => format!("{name}={granted}"),
        }
    }

    /// The exec's env list with the grant's: every entry settled, and the grant's variables
    /// (and path variables, when `paths_too`) the exec does not set added after.
    fn edit_list(&self, env: &[String], paths_too: bool) -> Vec<String> {
        let sets = |name: &str| {
            env.iter()
                .any(|e| e.split_once('=').is_some_and(|(n, _)| n == name))
        };
        let mut out: Vec<String> = env.iter().map(|e| self.settle(e)).collect();
        for (name, value) in &self.vars {
            if !sets(name) {
                out.push(format!("{name}={value}"));
            }
        }
        if paths_too {
            for p in self.paths.iter().filter(|p| !sets(&p.name)) {
                out.push(format!("{}={}", p.name, p.value_with_dir(None)));
            }
        }
        out
    }

    /// Edit an OCI process (an `exec --process` file) as a JSON value: its `env` only, every
    /// other field kept as it is.
    fn edit_process(&self, process: &mut Value) -> Result<(), ()> {
        let obj = process.as_object_mut().ok_or(())?;
        let env = match obj.get("env") {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::Array(a)) => a
                .iter()
                .map(|e| e.as_str().map(str::to_string).ok_or(()))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(()),
        };
        let edited = self.edit_list(&env, true);
        obj.insert(
            "env".into(),
            edited.into_iter().map(Value::String).collect(),
        );
        Ok(())
    }
}

/// Whether a `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` value (`0=4096M`, `0=2G,1=1G`, or one size for
/// every device) asks no device for more than `limit` bytes.
fn memory_within(value: &str, limit: u64) -> bool {
    value.split(',').all(|entry| {
        let size = entry.split_once('=').map_or(entry, |(_, s)| s);
        crate::request::size_bytes(size).is_some_and(|b| b > 0 && b <= limit)
    })
}

/// `gpushare exec ...` for a container the ledger may name (the entry binary sent it here): give
/// the exec its grant's env, then replace this process with the runtime.
pub fn exec(cfg: &Config, runtime: &Path, argv: &[OsString], args: &RuncArgs) -> i32 {
    let fail = |msg: &str| {
        runc_log::error(args.log.as_deref(), args.log_format_json, msg);
        1
    };
    // As for `delete`: a container the ledger never mentions costs a byte scan, not a parse
    // (where this binary is the entry point itself, on other architectures).
    let id = args
        .container_id
        .as_deref()
        .filter(|id| crate::gc::may_hold(cfg, id));
    let grant = id.and_then(|id| {
        let st = ledger::snapshot(&cfg.state_dir)
            .map_err(|e| eprintln!("gpushare: {e}; the exec gets no GPU env from gpushare"))
            .ok()?;
        Some(of_lease(cfg, &st, id))
    });
    let grant = match grant {
        None | Some(Ok(None)) => return run_runtime(runtime, argv),
        Some(Ok(Some(g))) => g,
        Some(Err(e)) => return fail(&e.to_string()),
    };
    match with_grant(&grant, argv) {
        Ok(argv) => run_runtime(runtime, &argv),
        // A missing file, or one that is not JSON: the runtime refuses it in its own words.
        Err(
            ExecEnvError::Read(crate::trust::SpecFileError::Missing(_)) | ExecEnvError::NotJson,
        ) => run_runtime(runtime, argv),
        Err(e) => fail(&e.to_string()),
    }
}

fn run_runtime(runtime: &Path, argv: &[OsString]) -> i32 {
    let err = Command::new(runtime).args(&argv[1..]).exec();
    eprintln!("gpushare: cannot run {}: {err}", runtime.display());
    127
}

/// Where an exec's argv says what: the process file, the env flags' values, the fds it keeps.
#[derive(Default)]
struct ExecArgv {
    /// Index of the `exec` word.
    command: usize,
    /// (index of the argument holding the file name, the part before it in that argument).
    process: Option<(usize, Vec<u8>)>,
    /// (index, the part before `K=V` in that argument) of each `--env` value.
    env: Vec<(usize, Vec<u8>)>,
    /// The env flag as the engine wrote it (`-e`, `--env`): runc refuses an exec that mixes
    /// the two forms.
    env_flag: Option<Vec<u8>>,
    preserve_fds: u32,
}

fn read_argv(argv: &[OsString]) -> ExecArgv {
    let mut out = ExecArgv::default();
    let mut roles = Roles::default();
    for (i, arg) in argv.iter().enumerate().skip(1) {
        let bytes = arg.as_bytes();
        let prefix = |v: &[u8]| bytes[..bytes.len() - v.len()].to_vec();
        match roles.next(bytes) {
            Role::Command => out.command = i,
            Role::Flag { name, value } => match (name, value) {
                (b"process" | b"p", Some(v)) => out.process = Some((i, prefix(v))),
                (b"env" | b"e", Some(v)) => {
                    out.env.push((i, prefix(v)));
                    let flag = &bytes[..bytes.len() - v.len() - 1];
                    out.env_flag.get_or_insert_with(|| flag.to_vec());
                }
                (b"preserve-fds", Some(v)) => out.preserve_fds = decimal(v),
                _ => {}
            },
            Role::FlagValue { name } => match name {
                b"process" | b"p" => out.process = Some((i, Vec::new())),
                b"env" | b"e" => {
                    out.env.push((i, Vec::new()));
                    let flag = argv[i - 1].as_bytes();
                    out.env_flag.get_or_insert_with(|| flag.to_vec());
                }
                b"preserve-fds" => out.preserve_fds = decimal(bytes),
                _ => {}
            },
            _ => {}
        }
    }
    out
}

fn decimal(v: &[u8]) -> u32 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The exec's argv with the grant's env in it.
fn with_grant(grant: &GrantEnv, argv: &[OsString]) -> Result<Vec<OsString>, ExecEnvError> {
    let found = read_argv(argv);
    let mut out = argv.to_vec();
    if let Some((at, prefix)) = &found.process {
        let file = &argv[*at].as_bytes()[prefix.len()..];
        let fd = edited_process(grant, Path::new(OsStr::from_bytes(file)), &found)?;
        let mut arg = prefix.clone();
        arg.extend_from_slice(format!("/proc/self/fd/{fd}").as_bytes());
        out[*at] = OsStr::from_bytes(&arg).to_os_string();
        return Ok(out);
    }
    // The argv form. With no `--env` at all the runtime gives the exec the container's own env,
    // which is the spec gpushare edited (runc reads the bundle's config.json, crun the copy in
    // its state): nothing to add, and a `--env` added here would make crun drop the rest of it.
    if found.env.is_empty() {
        return Ok(out);
    }
    let values: Vec<String> = found
        .env
        .iter()
        .map(|(i, prefix)| String::from_utf8_lossy(&argv[*i].as_bytes()[prefix.len()..]).into())
        .collect();
    // Path variables the exec does not set come from the container's env under runc; under crun
    // an exec with `--env` has only those, as the engine asked.
    let edited = grant.edit_list(&values, false);
    for (((i, prefix), value), was) in found.env.iter().zip(&edited).zip(&values) {
        // Unchanged ones keep their bytes (a value that is not UTF-8 included).
        if value == was {
            continue;
        }
        let mut arg = prefix.clone();
        arg.extend_from_slice(value.as_bytes());
        out[*i] = OsStr::from_bytes(&arg).to_os_string();
    }
    let flag = OsStr::from_bytes(found.env_flag.as_deref().unwrap_or(b"--env")).to_os_string();
    let added = edited[values.len()..]
        .iter()
        .flat_map(|e| [flag.clone(), OsString::from(e)]);
    let at = found.command + 1;
    out.splice(at..at, added);
    Ok(out)
}

/// The engine's process file with the grant's env, as an unnamed in-memory file this process
/// (and the runtime that replaces it) holds open: nothing is written where the engine's file
/// lies, and nothing is left behind. Returns its descriptor, above those the runtime hands on
/// to the exec'd process.
fn edited_process(grant: &GrantEnv, path: &Path, found: &ExecArgv) -> Result<i32, ExecEnvError> {
    let raw = crate::trust::read_spec(path).map_err(|e| match e {
        crate::trust::SpecFileError::NotRegular { path, what } => {
            ExecEnvError::NotRegular { path, what }
        }
        e => e.into(),
    })?;
    let shape = || ExecEnvError::Shape {
        path: path.display().to_string(),
    };
    let mut process: Value = serde_json::from_slice(&raw).map_err(|_| ExecEnvError::NotJson)?;
    grant.edit_process(&mut process).map_err(|_| shape())?;
    let data = serde_json::to_vec(&process).expect("a JSON value always serializes");
    // runc and crun pass fds 3..3+N (N: --preserve-fds, and crun adds $LISTEN_FDS) to the exec'd
    // process and close the rest: the copy sits past them.
    let listen: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lowest = 3u32
        .saturating_add(found.preserve_fds)
        .saturating_add(listen)
        .min(i32::MAX as u32) as i32;
    // SAFETY: plain system calls on descriptors this function owns.
    unsafe {
        let fd = libc::memfd_create(c"gpushare-exec-process".as_ptr(), 0);
        if fd < 0 {
            return Err(ExecEnvError::Copy(std::io::Error::last_os_error()));
        }
        let mut file = <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd);
        std::io::Write::write_all(&mut file, &data).map_err(ExecEnvError::Copy)?;
        let high = libc::fcntl(fd, libc::F_DUPFD, lowest);
        if high < 0 {
            return Err(ExecEnvError::Copy(std::io::Error::last_os_error()));
        }
        // `file` closes the first descriptor; the high one stays open, without close-on-exec.
        Ok(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mps_grant() -> GrantEnv {
        GrantEnv {
            vars: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "GPU-1".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "GPU-1".into()),
                (PIPE.into(), "/tmp/nvidia-mps".into()),
                (PERCENT.into(), "25".into()),
                (MEMORY.into(), "0=4096M".into()),
            ],
            paths: vec![PathEnv {
                name: "PATH".into(),
                dir: "/usr/local/gpushare/bin".into(),
                prepend: false,
                default: "/usr/bin:/bin".into(),
            }],
            mps: Some((25, Some(4 << 30))),
        }
    }

    fn strings(v: &[&str]) -> Vec<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_execs_own_values_win_but_an_mps_share_only_goes_lower() {
        let g = mps_grant();
        let env = strings(&[
            "CUDA_VISIBLE_DEVICES=x",
            "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=100",
            "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1G",
            "CUDA_MPS_PIPE_DIRECTORY=/tmp/elsewhere",
            "PATH=/bin",
        ]);
        assert_eq!(
            g.edit_list(&env, true),
            strings(&[
                "CUDA_VISIBLE_DEVICES=x",
                "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25",
                "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=1G",
                "CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps",
                "PATH=/bin:/usr/local/gpushare/bin",
                "NVIDIA_VISIBLE_DEVICES=GPU-1",
            ])
        );
        for (asked, kept) in [
            ("10", "10"),
            ("25", "25"),
            ("26", "25"),
            ("0", "25"),
            ("x", "25"),
        ] {
            let e = g.settle(&format!("{PERCENT}={asked}"));
            assert_eq!(e, format!("{PERCENT}={kept}"), "{asked}");
        }
        for (asked, kept) in [
            ("0=4G", "0=4G"),
            ("2G", "2G"),
            ("0=5G", "0=4096M"),
            ("0=1G,1=8G", "0=4096M"),
            ("lots", "0=4096M"),
        ] {
            let e = g.settle(&format!("{MEMORY}={asked}"));
            assert_eq!(e, format!("{MEMORY}={kept}"), "{asked}");
        }
    }

    #[test]
    fn a_process_file_keeps_its_fields_and_gets_the_grant() {
        let g = mps_grant();
        let mut p = serde_json::json!({"args": ["sh"], "x-unknown": [1], "cwd": "/"});
        g.edit_process(&mut p).unwrap();
        assert_eq!(p["x-unknown"], serde_json::json!([1]));
        let env: Vec<&str> = p["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert!(env.contains(&"PATH=/usr/bin:/bin:/usr/local/gpushare/bin"));
        assert!(env.contains(&"CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25"));
        let mut bad = serde_json::json!({"env": "PATH=/bin"});
        assert!(g.edit_process(&mut bad).is_err());
    }

    fn os(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn argv_form_edits_env_flags_in_place_and_adds_the_rest() {
        let g = mps_grant();
        let argv = os("gpushare --root /r exec -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90 -e=PATH=/x -t c1 sh -e -c env");
        let out = with_grant(&g, &argv).unwrap();
        // In the form the engine used: runc refuses `-e` and `--env` in one exec.
        let want = "gpushare --root /r exec \
            -e CUDA_VISIBLE_DEVICES=GPU-1 -e NVIDIA_VISIBLE_DEVICES=GPU-1 \
            -e CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps \
            -e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M \
            -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 -e=PATH=/x:/usr/local/gpushare/bin \
            -t c1 sh -e -c env";
        assert_eq!(out, os(want));
        // No env flag: the runtime's own (the edited spec's) env applies, argv untouched.
        let argv = os("gpushare exec -t c1 sh -e");
        assert_eq!(with_grant(&g, &argv).unwrap(), argv);
    }
}
