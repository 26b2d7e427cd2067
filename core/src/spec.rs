//! Edits to the engine's OCI spec (`config.json`), made on JSON values so that no field this
//! code does not know is lost. Every edit removes what a previous edit added before adding,
//! so applying a grant twice gives the same spec.

use crate::driver::DeviceNode;
use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid JSON: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("{path}: `{field}` is not {expected}")]
    Shape {
        path: PathBuf,
        field: &'static str,
        expected: &'static str,
    },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Everything a grant puts into a container.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Edit {
    pub devices: Vec<DeviceNode>,
    pub env: Vec<(String, String)>,
    pub poststop: Option<Hook>,
}

/// An OCI hook. `env` is always explicit: a hook without one would inherit the container's
/// (and with it, say, an image's LD_PRELOAD) while running as root on the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hook {
    pub path: String,
    pub args: Vec<String>,
    pub env: Vec<String>,
    pub timeout: Option<u32>,
}

/// Variables gpushare owns in a container's env: removed before the grant's are added.
pub const OWNED_ENV: &[&str] = &["CUDA_VISIBLE_DEVICES", "NVIDIA_VISIBLE_DEVICES"];

pub fn read(path: &Path) -> Result<(Vec<u8>, Value), SpecError> {
    let raw = std::fs::read(path).map_err(|source| SpecError::Read {
        path: path.into(),
        source,
    })?;
    let value = serde_json::from_slice(&raw).map_err(|source| SpecError::Parse {
        path: path.into(),
        source,
    })?;
    Ok((raw, value))
}

/// Write the edited spec durably; the engine's file is replaced whole or not at all.
pub fn write(path: &Path, spec: &Value) -> Result<(), SpecError> {
    let data = serde_json::to_vec(spec).expect("a JSON value always serializes");
    crate::fsutil::write_atomic(path, &data, None).map_err(|source| SpecError::Write {
        path: path.into(),
        source,
    })
}

pub fn apply(spec: &mut Value, edit: &Edit, path: &Path) -> Result<(), SpecError> {
    let shape = |field, expected| SpecError::Shape {
        path: path.into(),
        field,
        expected,
    };
    let root = spec
        .as_object_mut()
        .ok_or_else(|| shape("(root)", "an object"))?;

    let linux = object_at(root, "linux").ok_or_else(|| shape("linux", "an object"))?;
    let devices = array_at(linux, "devices").ok_or_else(|| shape("linux.devices", "an array"))?;
    devices.retain(|d| {
        let p = d.get("path").and_then(Value::as_str);
        !edit.devices.iter().any(|n| Some(n.path.as_str()) == p)
    });
    devices.extend(edit.devices.iter().map(|n| {
        json!({"path": n.path, "type": "c", "major": n.major, "minor": n.minor,
               "fileMode": n.file_mode, "uid": 0, "gid": 0})
    }));
    let resources =
        object_at(linux, "resources").ok_or_else(|| shape("linux.resources", "an object"))?;
    let rules = array_at(resources, "devices")
        .ok_or_else(|| shape("linux.resources.devices", "an array"))?;
    let ours: Vec<Value> = edit
        .devices
        .iter()
        .map(|n| json!({"allow": true, "type": "c", "major": n.major, "minor": n.minor, "access": "rwm"}))
        .collect();
    rules.retain(|r| !ours.contains(r));
    rules.extend(ours);

    if !edit.env.is_empty() {
        let process = object_at(root, "process").ok_or_else(|| shape("process", "an object"))?;
        let env = array_at(process, "env").ok_or_else(|| shape("process.env", "an array"))?;
        env.retain(|e| {
            let name = e
                .as_str()
                .and_then(|s| s.split_once('='))
                .map_or("", |(n, _)| n);
            !OWNED_ENV.contains(&name) && !edit.env.iter().any(|(k, _)| k == name)
        });
        env.extend(
            edit.env
                .iter()
                .map(|(k, v)| Value::String(format!("{k}={v}"))),
        );
    }

    if let Some(hook) = &edit.poststop {
        let hooks = object_at(root, "hooks").ok_or_else(|| shape("hooks", "an object"))?;
        let poststop =
            array_at(hooks, "poststop").ok_or_else(|| shape("hooks.poststop", "an array"))?;
        poststop.retain(|h| h.get("path").and_then(Value::as_str) != Some(hook.path.as_str()));
        let mut h = json!({"path": hook.path, "args": hook.args, "env": hook.env});
        if let Some(t) = hook.timeout {
            h["timeout"] = json!(t);
        }
        poststop.push(h);
    }
    Ok(())
}

fn object_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let v = obj.entry(key).or_insert_with(|| Value::Object(Map::new()));
    if v.is_null() {
        *v = Value::Object(Map::new());
    }
    v.as_object_mut()
}

fn array_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    let v = obj.entry(key).or_insert_with(|| Value::Array(Vec::new()));
    if v.is_null() {
        *v = Value::Array(Vec::new());
    }
    v.as_array_mut()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn edit() -> Edit {
        Edit {
            devices: vec![DeviceNode {
                path: "/dev/nvidia0".into(),
                major: 195,
                minor: 0,
                file_mode: 0o666,
            }],
            env: vec![("CUDA_VISIBLE_DEVICES".into(), "MIG-abc".into())],
            poststop: Some(Hook {
                path: "/usr/bin/gpushare-hook".into(),
                args: vec!["gpushare-hook".into(), "poststop".into()],
                env: vec!["PATH=/usr/bin:/bin".into()],
                timeout: Some(30),
            }),
        }
    }

    fn base() -> Value {
        json!({
            "ociVersion": "1.0.2",
            "x-unknown-field": {"kept": [1, 2, 3]},
            "process": {"env": ["PATH=/bin", "CUDA_VISIBLE_DEVICES=all"], "args": ["sh"]},
            "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}, "namespaces": []},
            "hooks": {"poststop": [{"path": "/other"}]}
        })
    }

    #[test]
    fn apply_adds_nodes_rules_env_and_hook_keeping_unknown_fields() {
        let mut s = base();
        apply(&mut s, &edit(), Path::new("config.json")).unwrap();
        assert_eq!(s["x-unknown-field"], json!({"kept": [1, 2, 3]}));
        assert_eq!(s["linux"]["devices"][0]["major"], 195);
        assert_eq!(s["linux"]["resources"]["devices"][1]["allow"], true);
        assert_eq!(
            s["linux"]["resources"]["devices"][0]["allow"], false,
            "deny-all stays first"
        );
        let env: Vec<&str> = s["process"]["env"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        assert_eq!(env, ["PATH=/bin", "CUDA_VISIBLE_DEVICES=MIG-abc"]);
        assert_eq!(s["hooks"]["poststop"].as_array().unwrap().len(), 2);
        assert_eq!(s["hooks"]["poststop"][1]["env"][0], "PATH=/usr/bin:/bin");
    }

    #[test]
    fn apply_is_idempotent() {
        let mut once = base();
        apply(&mut once, &edit(), Path::new("c")).unwrap();
        let mut twice = once.clone();
        apply(&mut twice, &edit(), Path::new("c")).unwrap();
        assert_eq!(once, twice);
    }

    #[test]
    fn missing_sections_are_created_and_wrong_shapes_refused() {
        let mut s = json!({"ociVersion": "1.0.2"});
        apply(&mut s, &edit(), Path::new("c")).unwrap();
        assert_eq!(s["linux"]["devices"].as_array().unwrap().len(), 1);
        let mut bad = json!({"linux": {"devices": "nope"}});
        let err = apply(&mut bad, &edit(), Path::new("c"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("linux.devices"), "{err}");
    }
}
