//! The trust policy's checks on what an engine hands gpushare: the bundle's spec file, whether
//! a container is privileged, and dropping the capabilities gpushare's own work does not need.

use serde_json::Value;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::Path;

/// The largest config.json read: real specs are a few kB; a bigger one is not a spec an engine
/// wrote, and reading it whole would let it cost the shim unbounded memory.
pub use gpushare_front::scan::MAX_SPEC_BYTES;

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

/// Why a spec is privileged, if it is: a container that may open every device, or holds
/// CAP_SYS_ADMIN, can reach every tenant's slice, so a slice given to it isolates nothing.
pub fn privileged(spec: &Value) -> Option<&'static str> {
    let rules = spec
        .pointer("/linux/resources/devices")
        .and_then(Value::as_array);
    // A wildcard rule for character devices (`c *:* rwm`, or `c 195:*`) reaches every GPU and
    // every slice's capability nodes just as an allow-all rule does.
    let wildcard = rules.is_some_and(|rules| {
        rules.iter().any(|r| {
            r.get("allow").and_then(Value::as_bool) == Some(true)
                && matches!(
                    r.get("type").and_then(Value::as_str),
                    None | Some("a") | Some("c")
                )
                && (r.get("major").is_none_or(Value::is_null)
                    || r.get("minor").is_none_or(Value::is_null))
        })
    });
    if wildcard {
        return Some("its device cgroup allows all character devices of a major, or every device");
    }
    let sys_admin = ["bounding", "effective", "permitted"].iter().any(|set| {
        spec.pointer(&format!("/process/capabilities/{set}"))
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")))
    });
    sys_admin.then_some("it has CAP_SYS_ADMIN")
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

    #[test]
    fn privileged_specs_are_recognised() {
        assert!(privileged(&json!({})).is_none());
        let docker_privileged = json!({"linux": {"resources": {"devices": [
            {"allow": false, "access": "rwm"}, {"allow": true, "access": "rwm"}]}}});
        assert!(privileged(&docker_privileged).is_some());
        let scoped = json!({"linux": {"resources": {"devices": [
            {"allow": false, "access": "rwm"},
            {"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rwm"}]}}});
        assert!(privileged(&scoped).is_none());
        let admin =
            json!({"process": {"capabilities": {"bounding": ["CAP_CHOWN", "CAP_SYS_ADMIN"]}}});
        assert_eq!(privileged(&admin), Some("it has CAP_SYS_ADMIN"));
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
