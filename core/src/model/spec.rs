//! Edits to the engine's OCI spec (`config.json`), made on JSON values so that no field this
//! code does not know is lost. Every edit removes what a previous edit added before adding,
//! so applying a grant twice gives the same spec.

use serde_json::{json, Map, Value};
use std::path::{Path, PathBuf};

/// A device node to put in a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceNode {
    pub path: String,
    pub major: u32,
    pub minor: u32,
    pub file_mode: u32,
}

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
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
    /// Directories put in front of (or behind) a `:`-separated variable such as PATH.
    pub env_paths: Vec<PathEnv>,
    pub mounts: Vec<Mount>,
    pub poststop: Option<Hook>,
}

impl Edit {
    /// Add another edit's parts (devices, env, mounts) to this one.
    pub fn extend(&mut self, other: Edit) {
        self.devices.extend(other.devices);
        self.env.extend(other.env);
        self.env_paths.extend(other.env_paths);
        self.mounts.extend(other.mounts);
        if other.poststop.is_some() {
            self.poststop = other.poststop;
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PathEnv {
    pub name: String,
    pub dir: String,
    pub prepend: bool,
    /// The value when the container's env has no such variable.
    pub default: String,
}

impl PathEnv {
    /// The variable's value with this directory added once, in its place (`current`: the value
    /// the process has, None when it has no such variable).
    pub fn value_with_dir(&self, current: Option<&str>) -> String {
        let mut dirs: Vec<&str> = current
            .unwrap_or(&self.default)
            .split(':')
            .filter(|d| !d.is_empty() && *d != self.dir)
            .collect();
        match self.prepend {
            true => dirs.insert(0, &self.dir),
            false => dirs.push(&self.dir),
        }
        dirs.join(":")
    }
}

/// An OCI mount; edits replace any mount at the same destination.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub destination: String,
    pub source: String,
    pub kind: String,
    pub options: Vec<String>,
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
    devices.extend(edit.devices.iter().map(device_json));
    let resources =
        object_at(linux, "resources").ok_or_else(|| shape("linux.resources", "an object"))?;
    let rules = array_at(resources, "devices")
        .ok_or_else(|| shape("linux.resources.devices", "an array"))?;
    let ours: Vec<Value> = edit.devices.iter().map(rule_json).collect();
    rules.retain(|r| !ours.contains(r));
    rules.extend(ours);

    if !edit.env.is_empty() {
        let process = object_at(root, "process").ok_or_else(|| shape("process", "an object"))?;
        let env = array_at(process, "env").ok_or_else(|| shape("process.env", "an array"))?;
        let name_of = |e: &Value| {
            e.as_str()
                .and_then(|s| s.split_once('='))
                .map(|(n, _)| n.to_string())
        };
        // Variables gpushare owns but this grant does not set are dropped; the grant's own
        // replace an earlier value where it stands, so a second edit changes nothing.
        env.retain(|e| {
            let name = name_of(e).unwrap_or_default();
            !OWNED_ENV.contains(&name.as_str()) || edit.env.iter().any(|(k, _)| *k == name)
        });
        for (k, v) in &edit.env {
            let value = Value::String(format!("{k}={v}"));
            let mut seen = false;
            env.retain_mut(|e| {
                if name_of(e).as_deref() != Some(k.as_str()) {
                    return true;
                }
                if seen {
                    return false;
                }
                seen = true;
                *e = value.clone();
                true
            });
            if !seen {
                env.push(value);
            }
        }
    }

    if !edit.env_paths.is_empty() {
        let process = object_at(root, "process").ok_or_else(|| shape("process", "an object"))?;
        let env = array_at(process, "env").ok_or_else(|| shape("process.env", "an array"))?;
        for p in &edit.env_paths {
            let prefix = format!("{}=", p.name);
            let at = env
                .iter()
                .position(|e| e.as_str().is_some_and(|s| s.starts_with(&prefix)));
            let current = at.map(|i| &env[i].as_str().unwrap_or_default()[prefix.len()..]);
            let value = Value::String(format!("{prefix}{}", p.value_with_dir(current)));
            match at {
                Some(i) => env[i] = value,
                None => env.push(value),
            }
        }
    }

    if !edit.mounts.is_empty() {
        let mounts = array_at(root, "mounts").ok_or_else(|| shape("mounts", "an array"))?;
        mounts.retain(|m| {
            let d = m.get("destination").and_then(Value::as_str);
            !edit
                .mounts
                .iter()
                .any(|n| Some(n.destination.as_str()) == d)
        });
        mounts.extend(edit.mounts.iter().map(mount_json));
    }

    if let Some(hook) = &edit.poststop {
        let hooks = object_at(root, "hooks").ok_or_else(|| shape("hooks", "an object"))?;
        let poststop =
            array_at(hooks, "poststop").ok_or_else(|| shape("hooks.poststop", "an array"))?;
        poststop.retain(|h| h.get("path").and_then(Value::as_str) != Some(hook.path.as_str()));
        // First: runc stops at the first poststop hook that fails, and the release must run.
        poststop.insert(0, hook_json(hook));
    }
    Ok(())
}

/// The `linux.devices` entry of a device node gpushare adds (also rendered into the offers
/// the entry binary splices in, so both write the same JSON).
pub fn device_json(n: &DeviceNode) -> Value {
    json!({"path": n.path, "type": "c", "major": n.major, "minor": n.minor,
           "fileMode": n.file_mode, "uid": 0, "gid": 0})
}

/// The `linux.resources.devices` allow rule for a node gpushare adds.
pub fn rule_json(n: &DeviceNode) -> Value {
    json!({"allow": true, "type": "c", "major": n.major, "minor": n.minor, "access": "rwm"})
}

pub fn mount_json(m: &Mount) -> Value {
    json!({"destination": m.destination, "type": m.kind, "source": m.source, "options": m.options})
}

pub fn hook_json(hook: &Hook) -> Value {
    let mut h = json!({"path": hook.path, "args": hook.args, "env": hook.env});
    if let Some(t) = hook.timeout {
        h["timeout"] = json!(t);
    }
    h
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
            env_paths: vec![PathEnv {
                name: "LD_LIBRARY_PATH".into(),
                dir: "/usr/local/gpushare/lib".into(),
                prepend: true,
                default: String::new(),
            }],
            mounts: vec![Mount {
                destination: "/run/mps".into(),
                source: "/var/lib/gpushare/mps/x".into(),
                kind: "bind".into(),
                options: vec!["rbind".into(), "rw".into()],
            }],
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
        assert_eq!(
            env,
            [
                "PATH=/bin",
                "CUDA_VISIBLE_DEVICES=MIG-abc",
                "LD_LIBRARY_PATH=/usr/local/gpushare/lib"
            ]
        );
        assert_eq!(s["mounts"][0]["destination"], "/run/mps");
        assert_eq!(s["hooks"]["poststop"].as_array().unwrap().len(), 2);
        assert_eq!(
            s["hooks"]["poststop"][0]["env"][0], "PATH=/usr/bin:/bin",
            "gpushare's hook runs first (runc stops at the first that fails)"
        );
    }

    #[test]
    fn path_variables_keep_the_images_entries() {
        let mut s = base();
        s["process"]["env"] = json!([
            "LD_LIBRARY_PATH=/opt/lib:/usr/local/gpushare/lib",
            "PATH=/bin"
        ]);
        let mut e = edit();
        e.env_paths.push(PathEnv {
            name: "PATH".into(),
            dir: "/usr/local/gpushare/bin".into(),
            prepend: false,
            default: "/usr/bin:/bin".into(),
        });
        apply(&mut s, &e, Path::new("c")).unwrap();
        assert_eq!(
            s["process"]["env"][0],
            "LD_LIBRARY_PATH=/usr/local/gpushare/lib:/opt/lib"
        );
        assert_eq!(s["process"]["env"][1], "PATH=/bin:/usr/local/gpushare/bin");
    }

    /// The edited spec still reads as a typed OCI runtime spec, with the grant where runc
    /// looks for it: oci-spec-rs's default spec, and the specs Docker and containerd's CRI
    /// plugin write.
    #[test]
    fn edited_spec_is_a_valid_oci_spec() {
        let engines: [&[u8]; 2] = [
            include_bytes!("../../../fixtures/spec/docker.json"),
            include_bytes!("../../../fixtures/spec/kubernetes.json"),
        ];
        let specs = engines
            .iter()
            .map(|raw| serde_json::from_slice(raw).unwrap())
            .chain([serde_json::to_value(oci_spec::runtime::Spec::default()).unwrap()]);
        for mut s in specs {
            serde_json::from_value::<oci_spec::runtime::Spec>(s.clone()).expect("a valid spec");
            apply(&mut s, &edit(), Path::new("c")).unwrap();
            assert_is_granted(serde_json::from_value(s).unwrap());
        }
    }

    fn assert_is_granted(typed: oci_spec::runtime::Spec) {
        let linux = typed.linux().as_ref().unwrap();
        let dev = &linux.devices().as_ref().unwrap()[0];
        assert_eq!((dev.major(), dev.minor()), (195, 0));
        let rules = linux
            .resources()
            .as_ref()
            .unwrap()
            .devices()
            .as_ref()
            .unwrap();
        let allow = rules
            .iter()
            .find(|r| r.allow() && r.major() == Some(195))
            .unwrap();
        assert_eq!(allow.access().as_deref(), Some("rwm"));
        let hook = &typed.hooks().as_ref().unwrap().poststop().as_ref().unwrap()[0];
        assert_eq!(
            hook.env().as_ref().unwrap(),
            &vec!["PATH=/usr/bin:/bin".to_string()]
        );
        let env = typed.process().as_ref().unwrap().env().as_ref().unwrap();
        assert!(env.contains(&"CUDA_VISIBLE_DEVICES=MIG-abc".to_string()));
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
