//! Which live containers of the runtimes' state roots run on which MIG devices, read from what
//! the runtime keeps (runc's `state.json`, crun's `status`: the bundle and the init pid) and the
//! bundle's spec (`CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` = `MIG-<uuid>`). `gc` holds
//! this against the ledger: a container that came up with a slice the ledger no longer leases
//! to it must never see that slice granted again (issue 16, finding 1).

use serde_json::Value;
use std::path::{Path, PathBuf};

/// A live container whose spec names MIG devices.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunningGpu {
    pub container_id: String,
    pub runtime_root: String,
    pub mig_uuids: Vec<String>,
    /// The precreate claim its spec carries (hooks-only mode), which names its lease until
    /// the bind hook moved it to the id.
    pub claim: Option<String>,
}

/// The most of a runtime state file read.
const MAX_STATE: u64 = 1 << 20;

/// A runtime state file or spec: a regular file, not followed through a symlink, bounded.
pub(crate) fn read_json(path: &Path) -> Option<Value> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    if !f.metadata().ok()?.is_file() {
        return None;
    }
    let mut buf = Vec::new();
    f.take(MAX_STATE).read_to_end(&mut buf).ok()?;
    serde_json::from_slice(&buf).ok()
}

/// The bundle and init pid of container `dir` as runc (`state.json`) or crun (`status`)
/// records them.
fn bundle_and_pid(dir: &Path) -> Option<(PathBuf, i32)> {
    if let Some(s) = read_json(&dir.join("state.json")) {
        let pid = s.get("init_process_pid")?.as_i64()? as i32;
        let bundle = s
            .pointer("/config/labels")?
            .as_array()?
            .iter()
            .filter_map(Value::as_str)
            .find_map(|l| l.strip_prefix("bundle="))?;
        return Some((PathBuf::from(bundle), pid));
    }
    let s = read_json(&dir.join("status"))?;
    let pid = s.get("pid")?.as_i64()? as i32;
    let bundle = s.get("bundle")?.as_str()?;
    Some((PathBuf::from(bundle), pid))
}

/// The init pid the runtime records for container `id` under `root`.
pub fn init_pid(root: &Path, id: &str) -> Option<i32> {
    bundle_and_pid(&root.join(id)).map(|(_, pid)| pid)
}

/// The parent of process `pid`, from `/proc/<pid>/stat` (its 4th field, after the command
/// name in parentheses, which may itself hold spaces and parentheses).
pub fn parent_of(pid: i32) -> Option<i32> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = &stat[stat.rfind(')')? + 1..];
    after.split_whitespace().nth(1)?.parse().ok()
}

/// Whether process `pid` runs: it exists and is no zombie (a killed container's init stays
/// one until whoever adopted it reaps it, while the runtime's delete still runs its hooks).
pub fn alive(pid: i32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    let state = stat
        .rfind(')')
        .and_then(|i| stat[i + 1..].split_whitespace().next());
    pid > 0 && !matches!(state, Some("Z" | "X" | "x") | None)
}

/// The MIG UUIDs a spec's env hands the container.
pub fn mig_uuids(spec: &Value) -> Vec<String> {
    let mut out: Vec<String> = spec
        .pointer("/process/env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .filter_map(|e| {
            e.strip_prefix("CUDA_VISIBLE_DEVICES=")
                .or_else(|| e.strip_prefix("NVIDIA_VISIBLE_DEVICES="))
        })
        .flat_map(|v| v.split(','))
        .filter(|d| d.starts_with("MIG-"))
        .map(str::to_string)
        .collect();
    out.sort();
    out.dedup();
    out
}

/// Whether gpushare edited this spec: its poststop hooks hold gpushare's release hook. Only
/// then is the env's MIG device a grant: a tenant can write any env, but not hooks.
fn edited_by_gpushare(spec: &Value) -> bool {
    spec.pointer("/hooks/poststop")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .any(|h| {
            let args = h.get("args").and_then(Value::as_array);
            let arg = |i: usize| args.and_then(|a| a.get(i)).and_then(Value::as_str);
            arg(0) == Some("gpushare-hook") && arg(1) == Some("poststop")
        })
}

/// Every live container under `roots` whose spec gpushare edited to name MIG devices.
pub fn find(roots: &[String]) -> Vec<RunningGpu> {
    let mut out = Vec::new();
    for root in roots {
        let Ok(entries) = std::fs::read_dir(root) else {
            continue;
        };
        for e in entries.flatten() {
            let Some(id) = e.file_name().to_str().map(str::to_string) else {
                continue;
            };
            let Some((bundle, pid)) = bundle_and_pid(&e.path()) else {
                continue;
            };
            if !alive(pid) {
                continue;
            }
            let Ok(raw) = crate::trust::read_spec(&bundle.join("config.json")) else {
                continue;
            };
            let Ok(spec) = serde_json::from_slice::<Value>(&raw) else {
                continue;
            };
            let mig_uuids = mig_uuids(&spec);
            if !mig_uuids.is_empty() && edited_by_gpushare(&spec) {
                let claim = spec
                    .pointer("/annotations")
                    .and_then(|a| a.get(crate::hook::LEASE_ANNOTATION))
                    .and_then(Value::as_str)
                    .map(str::to_string);
                out.push(RunningGpu {
                    container_id: id,
                    runtime_root: root.clone(),
                    mig_uuids,
                    claim,
                });
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_zombie_is_not_alive() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id() as i32;
        assert!(alive(std::process::id() as i32));
        std::thread::sleep(std::time::Duration::from_millis(200)); // exited, not yet reaped
        assert!(!alive(pid), "a zombie");
        child.wait().unwrap();
        assert!(!alive(pid), "gone");
    }

    #[test]
    fn reads_a_parent_pid() {
        assert_eq!(
            parent_of(std::process::id() as i32),
            Some(unsafe { libc::getppid() })
        );
    }

    #[test]
    fn mig_devices_are_read_from_either_variable() {
        let spec = serde_json::json!({"process": {"env": [
            "PATH=/bin",
            "CUDA_VISIBLE_DEVICES=MIG-a",
            "NVIDIA_VISIBLE_DEVICES=MIG-a,MIG-b,0"
        ]}});
        assert_eq!(mig_uuids(&spec), vec!["MIG-a", "MIG-b"]);
        assert!(mig_uuids(&serde_json::json!({})).is_empty());
    }

    #[test]
    fn only_a_spec_with_gpushares_release_hook_counts() {
        let hook =
            serde_json::json!({"path": "/usr/bin/gpushare", "args": ["gpushare-hook", "poststop"]});
        assert!(edited_by_gpushare(
            &serde_json::json!({"hooks": {"poststop": [{"path": "/x"}, hook]}})
        ));
        assert!(!edited_by_gpushare(
            &serde_json::json!({"hooks": {"poststop": [{"path": "/x", "args": ["x"]}]}})
        ));
        assert!(!edited_by_gpushare(
            &serde_json::json!({"process": {"env": ["CUDA_VISIBLE_DEVICES=MIG-a"]}})
        ));
    }
}
