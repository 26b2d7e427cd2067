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
//!
//! This module builds the env and edits a process file; `gpushare-runtime exec`
//! (bin/gpushare-runtime/exec.rs) puts the result into the exec's argv and runs the runtime.

use crate::config::Config;
use crate::ledger::LedgerState;
use crate::spec::{PathEnv, OWNED_ENV};
use serde_json::Value;
use std::path::Path;

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
    pub fn edit_list(&self, env: &[String], paths_too: bool) -> Vec<String> {
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

/// The engine's process file (an `exec --process` file) with the grant's env, as JSON bytes.
pub fn edited_process_file(grant: &GrantEnv, path: &Path) -> Result<Vec<u8>, ExecEnvError> {
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
    Ok(serde_json::to_vec(&process).expect("a JSON value always serializes"))
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
}
