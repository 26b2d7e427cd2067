//! The trust policy's checks on what an engine hands gpushare: the bundle's spec file, whether
//! a container is privileged, and dropping the capabilities gpushare's own work does not need.

use crate::driver::Majors;
use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config.json read: real specs are a few kB; a bigger one is not a spec an engine
/// wrote, and reading it whole would let it cost the shim unbounded memory.
pub use gpushare_fastpath::scan::MAX_SPEC_BYTES;

#[derive(Debug, thiserror::Error)]
pub enum SpecFileError {
    /// No such file: the runtime reports a bad bundle in its own words.
    #[error("{0} does not exist")]
    Missing(String),
    #[error("{path} is {what}; gpushare reads only a regular file that is not a symlink (the engine writes one), so it refuses to guess what this container asked for")]
    NotRegular { path: String, what: &'static str },
    #[error("{path} is {size} bytes, more than the {max} bytes a spec may have")]
    TooBig { path: String, size: u64, max: u64 },
    #[error("cannot read {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
}

/// Read the bundle's config.json, refusing anything but a bounded regular file: a FIFO would
/// hang `create`, and a symlink could make gpushare read (and the rename then replace) a file
/// the engine did not write.
pub fn read_spec(path: &Path) -> Result<Vec<u8>, SpecFileError> {
    let shown = path.display().to_string();
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            return Err(SpecFileError::Missing(shown))
        }
        Err(source) => {
            return Err(SpecFileError::Io {
                path: shown,
                source,
            })
        }
    };
    let ft = meta.file_type();
    let what = if ft.is_symlink() {
        Some("a symlink")
    } else if ft.is_fifo() {
        Some("a FIFO")
    } else if ft.is_dir() {
        Some("a directory")
    } else if ft.is_socket() || ft.is_block_device() || ft.is_char_device() {
        Some("a special file")
    } else {
        None
    };
    if let Some(what) = what {
        return Err(SpecFileError::NotRegular { path: shown, what });
    }
    if meta.len() > MAX_SPEC_BYTES {
        return Err(SpecFileError::TooBig {
            path: shown,
            size: meta.len(),
            max: MAX_SPEC_BYTES,
        });
    }
    // O_NOFOLLOW and O_NONBLOCK close the window between the check above and the open: a
    // symlink or FIFO swapped in meanwhile fails or does not block.
    let io = |source| SpecFileError::Io {
        path: shown.clone(),
        source,
    };
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .map_err(io)?;
    if !f.metadata().map_err(io)?.is_file() {
        return Err(SpecFileError::NotRegular {
            path: shown,
            what: "not a regular file",
        });
    }
    let mut buf = Vec::with_capacity(meta.len() as usize);
    f.take(MAX_SPEC_BYTES + 1)
        .read_to_end(&mut buf)
        .map_err(io)?;
    if buf.len() as u64 > MAX_SPEC_BYTES {
        return Err(SpecFileError::TooBig {
            path: shown,
            size: buf.len() as u64,
            max: MAX_SPEC_BYTES,
        });
    }
    Ok(buf)
}

/// A device number of a rule or node as runc reads it: a missing or null number, and -1, are
/// the wildcard `*`; anything that is not a whole number runc would refuse, and gpushare
/// cannot tell what it reaches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Any,
    Is(u32),
    Unreadable,
}

fn num(v: Option<&Value>) -> Num {
    match v {
        None | Some(Value::Null) => Num::Any,
        Some(n) => match n.as_i64() {
            Some(-1) => Num::Any,
            Some(n) => u32::try_from(n).map_or(Num::Unreadable, Num::Is),
            None => Num::Unreadable,
        },
    }
}

impl std::fmt::Display for Num {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Num::Any => f.write_str("*"),
            Num::Is(n) => write!(f, "{n}"),
            Num::Unreadable => f.write_str("?"),
        }
    }
}

/// An allow rule of `linux.resources.devices` that may open a character device, as runc reads
/// it: `allow` true; a missing or empty `type` is `a` (every type), `b` reaches no character
/// device; a rule that allows only mknod (`c *:* m`, in every Docker and Podman container)
/// opens nothing. Returns (type, major, minor).
fn opening_rule(r: &Value) -> Option<(&str, Num, Num)> {
    if r.get("allow").and_then(Value::as_bool) != Some(true) {
        return None;
    }
    if let Some(access) = r.get("access").and_then(Value::as_str) {
        if !access.is_empty() && access.chars().all(|c| c == 'm') {
            return None;
        }
    }
    let kind = match r.get("type").and_then(Value::as_str) {
        None | Some("") => "a",
        Some("b") => return None,
        Some(t) => t,
    };
    Some((kind, num(r.get("major")), num(r.get("minor"))))
}

fn rules(spec: &Value) -> impl Iterator<Item = (usize, (&str, Num, Num))> {
    spec.pointer("/linux/resources/devices")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, r)| opening_rule(r).map(|o| (i, o)))
}

/// Which of the driver's majors `major` is, if any.
fn driver_major(m: &Majors, major: u32) -> Option<&'static str> {
    match major {
        _ if major == m.caps => Some("nvidia-caps, the MIG slices' capabilities"),
        _ if major == m.nvidia => Some("nvidia, the GPUs"),
        _ if major == m.uvm => Some("nvidia-uvm"),
        _ => None,
    }
}

/// Nodes every GPU container gets from gpushare whatever it asked for (nvidiactl, nvidia-uvm,
/// nvidia-uvm-tools), or that `own` (major, minor) lists: a spec may carry them already.
fn granted_anyway(m: &Majors, own: &[(u32, u32)], major: u32, minor: u32) -> bool {
    (major == m.nvidia && minor == crate::driver::NVIDIACTL_MINOR)
        || (major == m.uvm && minor <= 1)
        || own.contains(&(major, minor))
}

/// Why a spec is privileged, if it is: a container whose device cgroup opens every device, or
/// every minor of one of the driver's majors (`m`), or holds CAP_SYS_ADMIN, can reach every
/// tenant's slice, so a slice given to it isolates nothing.
pub fn privileged(spec: &Value, m: &Majors) -> Option<String> {
    if let Some(why) = wildcard_rule(spec, m) {
        return Some(why);
    }
    let sys_admin = ["bounding", "effective", "permitted"].iter().any(|set| {
        spec.pointer(&format!("/process/capabilities/{set}"))
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")))
    });
    sys_admin.then(|| "it has CAP_SYS_ADMIN".to_string())
}

/// An allow rule that opens every device, or every minor of one of the driver's majors (or
/// cannot be read as numbers, which runc would refuse).
fn wildcard_rule(spec: &Value, m: &Majors) -> Option<String> {
    for (i, (kind, major, minor)) in rules(spec) {
        let at = format!("linux.resources.devices[{i}] allows {kind} {major}:{minor}");
        match (major, minor) {
            (Num::Any, Num::Any) => {
                return Some(format!("its device cgroup allows every device ({at})"))
            }
            (Num::Any, _) => {
                return Some(format!(
                    "its device cgroup allows a minor of every major, the driver's included ({at})"
                ))
            }
            // Not a number runc reads as itself (a fraction, one past 32 bits that the kernel
            // or runc's eBPF filter would cut to another major): nothing can be told.
            (Num::Unreadable, _) => {
                return Some(format!(
                    "its device cgroup has a rule runc cannot read as numbers ({at})"
                ))
            }
            (Num::Is(major), Num::Unreadable) if driver_major(m, major).is_some() => {
                return Some(format!(
                    "its device cgroup has a rule runc cannot read as numbers ({at})"
                ))
            }
            (Num::Is(_), Num::Unreadable) => {}
            (Num::Is(major), Num::Any) => {
                if let Some(name) = driver_major(m, major) {
                    return Some(format!(
                        "its device cgroup allows every minor of major {major} ({name}; {at})"
                    ));
                }
            }
            (Num::Is(_), Num::Is(_)) => {}
        }
    }
    None
}

/// Whether the spec carries device nodes or allow rules at all: only then does
/// [`foreign_devices`] need the driver's majors.
pub fn carries_devices(spec: &Value) -> bool {
    let nodes = spec
        .pointer("/linux/devices")
        .and_then(Value::as_array)
        .is_some_and(|d| !d.is_empty());
    nodes || rules(spec).next().is_some()
}

/// The first device node (`linux.devices`) or allow rule (`linux.resources.devices`) the spec
/// brings itself that reaches one of the driver's nodes beyond the ones gpushare grants every
/// GPU container: another GPU, another tenant's capability (at whatever path), a wildcard over
/// the driver's majors. runc creates and allows what the spec says, so gpushare's own nodes
/// would not be all the container can open. `own` lists the (major, minor) of what the
/// container already holds (an engine retrying `create` on the spec gpushare edited).
pub fn foreign_devices(spec: &Value, m: &Majors, own: &[(u32, u32)]) -> Option<String> {
    if let Some(why) = wildcard_rule(spec, m) {
        return Some(why);
    }
    let nodes = spec.pointer("/linux/devices").and_then(Value::as_array);
    for (i, d) in nodes.into_iter().flatten().enumerate() {
        // runc makes character nodes of type c (and u); a missing number is 0 to it.
        if !matches!(d.get("type").and_then(Value::as_str), Some("c" | "u")) {
            continue;
        }
        let number = |key| match d.get(key) {
            None | Some(Value::Null) => Num::Is(0),
            v => num(v),
        };
        let path = d.get("path").and_then(Value::as_str).unwrap_or("(no path)");
        let at = |what: String| format!("linux.devices[{i}] ({path:?}, c {what})");
        match (number("major"), number("minor")) {
            (Num::Is(major), Num::Is(minor)) => {
                if let Some(name) = driver_major(m, major) {
                    if !granted_anyway(m, own, major, minor) {
                        return Some(at(format!("{major}:{minor}, {name}")));
                    }
                }
            }
            (Num::Is(major), _) if driver_major(m, major).is_none() => {}
            (major, minor) => {
                return Some(at(format!("{major}:{minor}, numbers runc cannot read")))
            }
        }
    }
    for (i, (kind, major, minor)) in rules(spec) {
        if let (Num::Is(major), Num::Is(minor)) = (major, minor) {
            if let Some(name) = driver_major(m, major) {
                if !granted_anyway(m, own, major, minor) {
                    return Some(format!(
                        "linux.resources.devices[{i}] allows {kind} {major}:{minor} ({name})"
                    ));
                }
            }
        }
    }
    None
}

/// Drop every capability of this process (effective, permitted, inheritable, ambient). Called
/// where gpushare's remaining work is only files in its root-owned state directory, which uid 0
/// reaches as their owner without any capability. The bounding set is left alone: it is not
/// ours to narrow for whatever the engine runs next.
pub fn drop_all_caps() -> Result<(), caps::errors::CapsError> {
    use caps::CapSet;
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::clear(None, CapSet::Effective)?;
    caps::clear(None, CapSet::Permitted)
}

/// [`drop_all_caps`], keeping CAP_SYS_ADMIN alone where `keep_sys_admin`: the NVIDIA driver
/// lets only a caller with it change a GPU's compute mode, which the release of a GPU's last MPS
/// share puts back (see [`crate::compute_mode::may_put_back`]).
pub fn drop_caps_for_release(keep_sys_admin: bool) -> Result<(), caps::errors::CapsError> {
    use caps::{CapSet, Capability};
    if !keep_sys_admin {
        return drop_all_caps();
    }
    let only: caps::CapsHashSet = [Capability::CAP_SYS_ADMIN].into_iter().collect();
    caps::clear(None, CapSet::Ambient)?;
    caps::clear(None, CapSet::Inheritable)?;
    caps::set(None, CapSet::Effective, &only)?;
    caps::set(None, CapSet::Permitted, &only)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const M: Majors = Majors {
        nvidia: 195,
        uvm: 238,
        caps: 241,
    };

    fn with_rules(rules: Value) -> Value {
        json!({"linux": {"resources": {"devices": rules}}})
    }

    /// What Docker and Podman put in every container's device cgroup (moby's and
    /// containers/common's defaults): none of it reaches the driver's nodes.
    fn engine_defaults() -> Value {
        json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "access": "m"},
            {"allow": true, "type": "b", "access": "m"},
            {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
            {"allow": true, "type": "c", "major": 1, "minor": 5, "access": "rwm"},
            {"allow": true, "type": "c", "major": 136, "access": "rwm"},
            {"allow": true, "type": "c", "major": 5, "minor": 2, "access": "rwm"},
            {"allow": true, "type": "c", "major": 10, "minor": 200, "access": "rwm"},
            {"allow": false, "type": "c", "major": 241, "access": "rwm"}
        ])
    }

    #[test]
    fn privileged_specs_are_recognised() {
        assert!(privileged(&json!({}), &M).is_none());
        assert!(privileged(&with_rules(engine_defaults()), &M).is_none());
        let docker_privileged = with_rules(json!([
            {"allow": false, "access": "rwm"}, {"allow": true, "access": "rwm"}]));
        assert!(privileged(&docker_privileged, &M)
            .unwrap()
            .contains("every device"));
        let scoped = with_rules(json!([
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rwm"}]));
        assert!(privileged(&scoped, &M).is_none());
        let admin =
            json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}}});
        assert_eq!(
            privileged(&admin, &M).as_deref(),
            Some("it has CAP_SYS_ADMIN")
        );
    }

    /// runc reads a missing, null or -1 minor (or major) as `*`, and a missing or empty type
    /// as `a`: each is a wildcard over a slice's capability nodes.
    #[test]
    fn every_wildcard_runc_reads_is_privileged() {
        for rule in [
            json!({"allow": true, "type": "c", "major": 241, "minor": -1, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": 241, "minor": null, "access": "rw"}),
            json!({"allow": true, "type": "c", "major": 241, "access": "r"}),
            json!({"allow": true, "major": 241, "access": "rwm"}),
            json!({"allow": true, "type": "a", "major": 241, "access": "rwm"}),
            json!({"allow": true, "type": "", "major": 195, "minor": -1, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": -1, "minor": 120, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": null, "minor": 120, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": 241, "minor": 1.5, "access": "rwm"}),
        ] {
            let spec = with_rules(json!([{"allow": false, "access": "rwm"}, rule]));
            let why = privileged(&spec, &M).unwrap_or_else(|| panic!("{rule}"));
            assert!(why.contains("linux.resources.devices[1]"), "{why}");
            assert_eq!(foreign_devices(&spec, &M, &[]), Some(why), "{rule}");
        }
        // Denied, mknod only, block devices, other majors: no reach.
        for rule in [
            json!({"allow": false, "type": "c", "major": 241, "access": "rwm"}),
            json!({"allow": null, "type": "c", "major": 241, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": 241, "access": "m"}),
            json!({"allow": true, "type": "b", "major": 241, "access": "rwm"}),
            json!({"allow": true, "type": "c", "major": 10, "access": "rwm"}),
        ] {
            assert!(
                privileged(&with_rules(json!([rule])), &M).is_none(),
                "{rule}"
            );
        }
    }

    #[test]
    fn foreign_nodes_and_rules_are_named() {
        let defaults = with_rules(engine_defaults());
        assert!(!carries_devices(&json!({})));
        assert!(carries_devices(&defaults));
        assert_eq!(foreign_devices(&defaults, &M, &[]), None);
        let mut spec = defaults.clone();
        spec["linux"]["devices"] = json!([
            {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229},
            {"path": "/dev/nvidiactl", "type": "c", "major": 195, "minor": 255},
            {"path": "/dev/nvidia-uvm", "type": "c", "major": 238, "minor": 0},
            {"path": "/dev/sda", "type": "b", "major": 241, "minor": 1}
        ]);
        spec["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "c", "major": 238, "minor": 1, "access": "rwm"}));
        assert_eq!(
            foreign_devices(&spec, &M, &[]),
            None,
            "what gpushare grants anyway"
        );

        let mut evil = spec.clone();
        evil["linux"]["devices"].as_array_mut().unwrap().push(
            json!({"path": "/opt/evil", "type": "c", "major": 241, "minor": 120, "fileMode": 438}),
        );
        let why = foreign_devices(&evil, &M, &[]).unwrap();
        assert_eq!(
            why,
            r#"linux.devices[4] ("/opt/evil", c 241:120, nvidia-caps, the MIG slices' capabilities)"#
        );
        assert!(
            privileged(&evil, &M).is_none(),
            "a node alone is no wildcard"
        );
        assert_eq!(
            foreign_devices(&evil, &M, &[(241, 120)]),
            None,
            "the container's own slice"
        );

        let mut gpu = spec.clone();
        gpu["linux"]["resources"]["devices"]
            .as_array_mut()
            .unwrap()
            .push(json!({"allow": true, "type": "c", "major": 195, "minor": 1, "access": "rw"}));
        let why = foreign_devices(&gpu, &M, &[]).unwrap();
        assert!(why.contains("allows c 195:1 (nvidia, the GPUs)"), "{why}");

        let mut odd = spec;
        // mknod and runc's eBPF filter take 32 bits: 2^32 + 241 would be nvidia-caps.
        for major in [
            json!("241"),
            json!(241.0),
            json!(4_294_967_537u64),
            json!(-1),
        ] {
            odd["linux"]["devices"] = json!([{"path": "/dev/x", "type": "c", "major": major}]);
            let why = foreign_devices(&odd, &M, &[]).unwrap();
            assert!(why.contains("numbers runc cannot read"), "{why}");
        }
        // Another major's odd minor is runc's to refuse, not a driver node.
        odd["linux"]["devices"] =
            json!([{"path": "/dev/x", "type": "c", "major": 10, "minor": 1.5}]);
        assert_eq!(foreign_devices(&odd, &M, &[]), None);
        let rule = json!([{"allow": true, "type": "c", "major": 10, "minor": "x", "access": "rw"}]);
        assert_eq!(foreign_devices(&with_rules(rule), &M, &[]), None);
        let rule = json!([{"allow": true, "type": "c", "major": 4_294_967_537u64, "minor": 1, "access": "rw"}]);
        assert!(foreign_devices(&with_rules(rule), &M, &[]).is_some());
    }

    #[test]
    fn spec_file_must_be_a_bounded_regular_file() {
        let dir = std::env::temp_dir().join(format!("gpushare-trust-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let real = dir.join("real.json");
        std::fs::write(&real, b"{}").unwrap();
        assert_eq!(read_spec(&real).unwrap(), b"{}");
        let link = dir.join("config.json");
        std::os::unix::fs::symlink(&real, &link).unwrap();
        let err = read_spec(&link).unwrap_err().to_string();
        assert!(err.contains("symlink"), "{err}");
        let fifo = dir.join("fifo.json");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid C string path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let err = read_spec(&fifo).unwrap_err().to_string();
        assert!(err.contains("FIFO"), "{err}");
        assert!(matches!(
            read_spec(&dir.join("absent.json")),
            Err(SpecFileError::Missing(_))
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
