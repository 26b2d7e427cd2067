//! The CDI specs the plugin hands the container runtime: the one writer and reader of that
//! format here. One spec file per claim (`gpushare.dev-claim_<claim-uid>.json` in the CDI
//! folder), one CDI device per allocation result of this driver (`<claim-uid>-<n>`), whose
//! container edits are exactly what core grants a container: the slice's device nodes, its env
//! and the driver's mounts ([`gpushare_core::grant::for_claim`]'s edit, translated, never
//! re-derived).

use gpushare_core::spec::Edit;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// The CDI kind (vendor/class) of every device gpushare prepares.
pub const KIND: &str = "gpushare.dev/gpu";
/// The oldest CDI version that has everything these specs use, so that containerd 1.7's CDI
/// library (which refuses versions newer than it knows) reads them.
pub const VERSION: &str = "0.5.0";

const FILE_PREFIX: &str = "gpushare.dev-claim_";
const FILE_SUFFIX: &str = ".json";

#[derive(Debug, thiserror::Error)]
pub enum CdiError {
    #[error("cannot write the CDI spec {path}: {source}; the container runtime would not find the claim's devices (check that the CDI folder exists and is writable by the plugin: --cdi-dir)")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read the CDI spec {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the CDI spec {path} is not one gpushare wrote ({source}); move it aside, then let the kubelet prepare the claim again")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot remove the CDI spec {path}: {source}")]
    Remove {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// A CDI spec file (the fields gpushare writes).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Spec {
    pub cdi_version: String,
    pub kind: String,
    pub devices: Vec<Device>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Device {
    pub name: String,
    pub container_edits: ContainerEdits,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ContainerEdits {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub env: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub device_nodes: Vec<DeviceNode>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub mounts: Vec<Mount>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct DeviceNode {
    pub path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub major: i64,
    pub minor: i64,
    pub file_mode: u32,
    /// What the container's device cgroup lets it do with the node.
    pub permissions: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Mount {
    pub host_path: String,
    pub container_path: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub options: Vec<String>,
}

/// The CDI device name of the `n`-th allocation result of this driver in claim `claim_uid`.
pub fn device_name(claim_uid: &str, n: usize) -> String {
    format!("{claim_uid}-{n}")
}

/// A device's fully qualified CDI id, as the kubelet passes it to the runtime.
pub fn qualified(device: &str) -> String {
    format!("{KIND}={device}")
}

/// Where the spec of claim `claim_uid` lives in `cdi_dir`.
pub fn spec_path(cdi_dir: &Path, claim_uid: &str) -> PathBuf {
    cdi_dir.join(format!("{FILE_PREFIX}{claim_uid}{FILE_SUFFIX}"))
}

/// The container edits of a core grant's edit. CDI sets env variables whole, so a path-like
/// variable gets the value a container without it would have (the image's own value is
/// replaced, as the NVIDIA toolkit's CDI specs do).
pub fn edits(edit: &Edit) -> ContainerEdits {
    let mut env: Vec<String> = edit.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    env.extend(
        edit.env_paths
            .iter()
            .map(|p| format!("{}={}", p.name, p.value_with_dir(None))),
    );
    ContainerEdits {
        env,
        device_nodes: edit
            .devices
            .iter()
            .map(|d| DeviceNode {
                path: d.path.clone(),
                kind: "c".into(),
                major: d.major.into(),
                minor: d.minor.into(),
                file_mode: d.file_mode,
                permissions: "rw".into(),
            })
            .collect(),
        mounts: edit
            .mounts
            .iter()
            .map(|m| Mount {
                host_path: m.source.clone(),
                container_path: m.destination.clone(),
                kind: m.kind.clone(),
                options: m.options.clone(),
            })
            .collect(),
    }
}

/// Write the spec of claim `claim_uid` with `devices` (CDI name, edit) atomically: the
/// runtime, which may read the folder at any time, sees the whole spec or none.
pub fn write(
    cdi_dir: &Path,
    claim_uid: &str,
    devices: &[(String, &Edit)],
) -> Result<PathBuf, CdiError> {
    let spec = Spec {
        cdi_version: VERSION.into(),
        kind: KIND.into(),
        devices: devices
            .iter()
            .map(|(name, edit)| Device {
                name: name.clone(),
                container_edits: edits(edit),
            })
            .collect(),
    };
    let path = spec_path(cdi_dir, claim_uid);
    let data = serde_json::to_vec_pretty(&spec).expect("a CDI spec always serializes");
    // The temp file's name does not end in .json, so a runtime scanning the folder skips it.
    gpushare_core::fsutil::write_atomic(&path, &data, Some(0o644)).map_err(|source| {
        CdiError::Write {
            path: path.clone(),
            source,
        }
    })?;
    Ok(path)
}

/// The spec of claim `claim_uid`, if there is one.
pub fn read(cdi_dir: &Path, claim_uid: &str) -> Result<Option<Spec>, CdiError> {
    let path = spec_path(cdi_dir, claim_uid);
    let raw = match std::fs::read(&path) {
        Ok(r) => r,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(source) => return Err(CdiError::Read { path, source }),
    };
    serde_json::from_slice(&raw)
        .map(Some)
        .map_err(|source| CdiError::Parse { path, source })
}

/// Remove the spec of claim `claim_uid`; true if there was one.
pub fn remove(cdi_dir: &Path, claim_uid: &str) -> Result<bool, CdiError> {
    let path = spec_path(cdi_dir, claim_uid);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(source) => Err(CdiError::Remove { path, source }),
    }
}

/// The claim UIDs that have a spec in `cdi_dir`.
pub fn claims(cdi_dir: &Path) -> Vec<String> {
    let Ok(entries) = std::fs::read_dir(cdi_dir) else {
        return Vec::new();
    };
    let mut out: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name();
            let uid = name
                .to_str()?
                .strip_prefix(FILE_PREFIX)?
                .strip_suffix(FILE_SUFFIX)?;
            Some(uid.to_string())
        })
        .collect();
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_core::spec::{DeviceNode as Node, Mount as CoreMount, PathEnv};

    #[test]
    fn a_grants_edit_becomes_cdi_edits_and_reads_back() {
        let edit = Edit {
            devices: vec![Node {
                path: "/dev/nvidia-caps/nvidia-cap21".into(),
                major: 511,
                minor: 21,
                file_mode: 0o444,
            }],
            env: vec![("CUDA_VISIBLE_DEVICES".into(), "MIG-abc".into())],
            env_paths: vec![PathEnv {
                name: "LD_LIBRARY_PATH".into(),
                dir: "/usr/local/gpushare/lib".into(),
                prepend: true,
                default: String::new(),
            }],
            mounts: vec![CoreMount {
                destination: "/usr/local/gpushare/lib/libcuda.so.1".into(),
                source: "/usr/lib/libcuda.so.1".into(),
                kind: "bind".into(),
                options: vec!["bind".into(), "ro".into()],
            }],
            poststop: None,
        };
        let dir = std::env::temp_dir().join(format!("gpushare-cdi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let uid = "5f0c1c8e-7a51-4a5c-a0c2-3a8c3f1f0d1e";
        let path = write(&dir, uid, &[(device_name(uid, 0), &edit)]).unwrap();
        assert_eq!(
            path.file_name().unwrap().to_str().unwrap(),
            format!("gpushare.dev-claim_{uid}.json")
        );
        let raw: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        let dev = &raw["devices"][0];
        assert_eq!(raw["kind"], KIND);
        assert_eq!(dev["name"], format!("{uid}-0"));
        let e = &dev["containerEdits"];
        assert_eq!(
            e["env"],
            serde_json::json!([
                "CUDA_VISIBLE_DEVICES=MIG-abc",
                "LD_LIBRARY_PATH=/usr/local/gpushare/lib"
            ])
        );
        assert_eq!(e["deviceNodes"][0]["major"], 511);
        assert_eq!(e["deviceNodes"][0]["type"], "c");
        assert_eq!(e["mounts"][0]["hostPath"], "/usr/lib/libcuda.so.1");
        assert_eq!(claims(&dir), [uid]);
        assert_eq!(read(&dir, uid).unwrap().unwrap().devices.len(), 1);
        assert!(remove(&dir, uid).unwrap());
        assert!(!remove(&dir, uid).unwrap());
        assert!(read(&dir, uid).unwrap().is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
