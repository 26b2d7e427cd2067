//! Which live containers of the runtimes' state roots run on which MIG devices, read from what
//! the runtime keeps (runc's `state.json`, crun's `status`: the bundle and the init pid) and the
//! bundle's spec (`CUDA_VISIBLE_DEVICES` / `NVIDIA_VISIBLE_DEVICES` = `MIG-<uuid>`). `gc` holds
//! this against the ledger: a container that came up with a slice the ledger no longer leases
//! to it must never see that slice granted again (issue 16, finding 1).
//!
//! Also every container of those roots, running or not, with the MIG UUIDs its spec names:
//! what `repair` rebuilds leases from and `gc` finds the holder of an instance it adopts in.

use crate::config::Config;
use crate::ledger::{Ledger, LedgerState};
use serde::Serialize;
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

/// Where low-level runtimes keep their containers' state when nobody names a root: runc's and
/// crun's defaults, and the roots Docker and containerd give runc.
const DEFAULT_ROOTS: &[&str] = &[
    "/run/runc",
    "/run/crun",
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/default",
    "/run/containerd/runc/moby",
];

/// A container a runtime has, and the MIG UUIDs its spec names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub root: String,
    pub id: String,
    pub migs: Vec<String>,
    /// The spec carries a gpushare request (`gpu.profile`, or `GPUSHARE_PROFILE` in its env).
    pub requested: bool,
}

/// The runtime roots to scan: `extra` (the operator's), the defaults, the roots gpushare's
/// instance log and the ledger's leases name, and those a corrupt ledger's text and the
/// journal's grants still name.
pub fn roots(
    cfg: &Config,
    st: &LedgerState,
    salvage: Option<&[u8]>,
    extra: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = extra.to_vec();
    out.extend(DEFAULT_ROOTS.iter().map(|s| s.to_string()));
    out.extend(crate::instance_log::roots(&crate::instance_log::owned(
        &cfg.state_dir,
    )));
    out.extend(st.leases().filter_map(|l| l.runtime_root.clone()));
    if let Some(raw) = salvage {
        out.extend(quoted_after(
            &String::from_utf8_lossy(raw),
            "\"runtime_root\":",
        ));
    }
    let journal = std::fs::read(Ledger::new(&cfg.state_dir).journal_path()).unwrap_or_default();
    for e in gpushare_state::journal::entries(&journal) {
        if let gpushare_state::journal::Entry::Grant {
            runtime_root: Some(r),
            ..
        } = e
        {
            out.push(String::from_utf8_lossy(r).into_owned());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|r| r.starts_with('/') && seen.insert(r.clone()));
    out
}

/// Every JSON string that follows `key` in `text` (a ledger too damaged to parse may still
/// name its leases' roots).
fn quoted_after(text: &str, key: &str) -> Vec<String> {
    text.match_indices(key)
        .filter_map(|(i, _)| {
            let rest = text[i + key.len()..].trim_start().strip_prefix('"')?;
            let end = rest.find('"')?;
            Some(rest[..end].to_string())
        })
        .collect()
}

/// The containers under `roots`: runc keeps `<root>/<id>/state.json` (the bundle in its
/// labels), crun `<root>/<id>/status` (with `bundle`) and a copy of the spec.
pub fn scan(roots: &[String]) -> Vec<Container> {
    let mut out = Vec::new();
    for root in roots {
        let Ok(dir) = std::fs::read_dir(root) else {
            continue;
        };
        for e in dir.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Some(spec) = spec_of(&e.path()) else {
                continue;
            };
            let migs = mig_uuids(&spec);
            let env: Vec<&str> = spec["process"]["env"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let requested = spec["annotations"].get("gpu.profile").is_some()
                || env.iter().any(|v| v.starts_with("GPUSHARE_PROFILE="));
            out.push(Container {
                root: root.clone(),
                id,
                migs,
                requested,
            });
        }
    }
    out
}

/// The OCI spec of the container whose state directory is `dir`.
fn spec_of(dir: &Path) -> Option<serde_json::Value> {
    // Read as every spec gpushare reads: a regular file, no symlink, bounded.
    let spec = |p: &Path| {
        let raw = crate::trust::read_spec(p).ok()?;
        serde_json::from_slice(&raw).ok()
    };
    if let Some(state) = read_json(&dir.join("state.json")) {
        let bundle = state["config"]["labels"].as_array().and_then(|l| {
            l.iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_prefix("bundle="))
        })?;
        return spec(&Path::new(bundle).join("config.json"));
    }
    if let Some(copy) = spec(&dir.join("config.json")) {
        return Some(copy);
    }
    let status = read_json(&dir.join("status"))?;
    spec(&Path::new(status["bundle"].as_str()?).join("config.json"))
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

    #[test]
    fn a_damaged_ledger_still_names_its_roots() {
        let raw = r#"{"instances":[{"lease":{"container_id":"a","runtime_root": "/run/x"}},{"lease":{"runtime_root":"/run/y","#;
        assert_eq!(quoted_after(raw, "\"runtime_root\":"), ["/run/x", "/run/y"]);
    }

    #[test]
    fn scan_reads_runc_and_crun_state() {
        let dir =
            std::env::temp_dir().join(format!("gpushare-running-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = |env: &str, ann: &str| {
            format!(r#"{{"process":{{"env":["PATH=/bin",{env}]}},"annotations":{{{ann}}}}}"#)
        };
        // runc: state.json names the bundle in its labels.
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            spec(
                r#""CUDA_VISIBLE_DEVICES=MIG-a""#,
                r#""gpu.profile":"1g.10gb""#,
            ),
        )
        .unwrap();
        let runc = dir.join("runc");
        std::fs::create_dir_all(runc.join("c1")).unwrap();
        std::fs::write(
            runc.join("c1/state.json"),
            format!(
                r#"{{"config":{{"labels":["bundle={}"]}}}}"#,
                bundle.display()
            ),
        )
        .unwrap();
        // crun: its own copy of the spec.
        let crun = dir.join("crun");
        std::fs::create_dir_all(crun.join("c2")).unwrap();
        std::fs::write(
            crun.join("c2/config.json"),
            spec(r#""NVIDIA_VISIBLE_DEVICES=MIG-b,MIG-c""#, ""),
        )
        .unwrap();
        std::fs::create_dir_all(crun.join("junk")).unwrap();
        let roots = [runc.display().to_string(), crun.display().to_string()];
        let found = scan(&roots);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].id, "c1");
        assert_eq!(found[0].migs, ["MIG-a"]);
        assert!(found[0].requested);
        assert_eq!(found[1].migs, ["MIG-b", "MIG-c"]);
        assert!(!found[1].requested);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
