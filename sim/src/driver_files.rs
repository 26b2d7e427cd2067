//! The driver's files under a root directory, in the real formats (recorded in
//! `shared/fixtures/README.md`): /proc/devices, /proc/driver/nvidia-caps/mig-minors,
//! /proc/driver/nvidia/capabilities/..., and the /dev/nvidia* nodes.

use crate::error::{SimError, SimResult};
use crate::state::State;
use std::fs;
use std::io::ErrorKind;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

pub const NVIDIA_MAJOR: u32 = 195;
pub const NVIDIACTL_MINOR: u32 = 255;
pub const UVM_MAJOR: u32 = 238;
pub const CAPS_MAJOR: u32 = 241;
/// GPUs, GPU instances and compute instances that the real driver's mig-minors lists (32
/// GPUs: the driver's own limit).
pub const MINORS_GPUS: u32 = 32;
/// The most GPUs a simulated node has. Past the real driver's 32, for benchmarks of how
/// gpushare's costs grow with a node's size: mig-minors then goes on numbering past `gpu31`
/// as the driver's formula does (a node of up to 32 GPUs gets the real file, byte for byte).
pub const MAX_GPUS: u32 = 64;
pub const MINORS_GIS: u32 = 15;
pub const MINORS_CIS: u32 = 8;

/// Minor of `/dev/nvidia-caps/nvidia-cap<N>` for `gpu<g>/gi<i>/access`.
pub fn gi_cap_minor(gpu_minor: u32, gi: u32) -> u32 {
    3 + gpu_minor * 135 + gi * 9
}

/// Minor for `gpu<g>/gi<i>/ci<c>/access`.
pub fn ci_cap_minor(gpu_minor: u32, gi: u32, ci: u32) -> u32 {
    gi_cap_minor(gpu_minor, gi) + 1 + ci
}

/// /proc/driver/nvidia-caps/mig-minors for a node of `gpus` GPUs: 4322 lines up to 32.
pub fn mig_minors(gpus: u32) -> String {
    let mut s = String::from("config 1\nmonitor 2\n");
    for g in 0..gpus.max(MINORS_GPUS) {
        for i in 0..MINORS_GIS {
            s.push_str(&format!("gpu{g}/gi{i}/access {}\n", gi_cap_minor(g, i)));
            for c in 0..MINORS_CIS {
                s.push_str(&format!(
                    "gpu{g}/gi{i}/ci{c}/access {}\n",
                    ci_cap_minor(g, i, c)
                ));
            }
        }
    }
    s
}

/// /proc/devices, as the recorded machines show it (character majors right-aligned to 3).
pub fn proc_devices() -> String {
    let chars: &[(u32, &str)] = &[
        (1, "mem"),
        (4, "/dev/vc/0"),
        (4, "tty"),
        (4, "ttyS"),
        (5, "/dev/tty"),
        (5, "/dev/console"),
        (5, "/dev/ptmx"),
        (7, "vcs"),
        (10, "misc"),
        (13, "input"),
        (29, "fb"),
        (128, "ptm"),
        (136, "pts"),
        (180, "usb"),
        (189, "usb_device"),
        (NVIDIA_MAJOR, "nvidia"),
        (NVIDIA_MAJOR, "nvidiactl"),
        (226, "drm"),
        (UVM_MAJOR, "nvidia-uvm"),
        (239, "nvidia-nvswitch"),
        (240, "nvidia-nvlink"),
        (CAPS_MAJOR, "nvidia-caps"),
        (242, "nvidia-caps-imex-channels"),
        (243, "hidraw"),
        (244, "rtc"),
        (245, "dax"),
        (246, "dimmctl"),
        (247, "ndctl"),
        (248, "tpm"),
        (249, "bsg"),
        (250, "watchdog"),
        (251, "ptp"),
        (252, "pps"),
        (253, "cec"),
        (254, "gpiochip"),
    ];
    let blocks: &[(u32, &str)] = &[
        (7, "loop"),
        (8, "sd"),
        (9, "md"),
        (11, "sr"),
        (65, "sd"),
        (253, "device-mapper"),
        (254, "mdp"),
        (259, "blkext"),
    ];
    let mut s = String::from("Character devices:\n");
    for (m, n) in chars {
        s.push_str(&format!("{m:>3} {n}\n"));
    }
    s.push_str("\nBlock devices:\n");
    for (m, n) in blocks {
        s.push_str(&format!("{m:>3} {n}\n"));
    }
    s
}

/// Contents of a capability `access` file (config uses mode 256, the others 292).
pub fn access_file(minor: u32, mode: u32) -> String {
    format!("DeviceFileMinor: {minor}\nDeviceFileMode: {mode}\nDeviceFileModify: 1\n")
}

/// `<root>/proc/driver/nvidia/capabilities/gpu<minor>/mig`
pub fn gpu_mig_dir(root: &Path, gpu_minor: u32) -> PathBuf {
    root.join(format!(
        "proc/driver/nvidia/capabilities/gpu{gpu_minor}/mig"
    ))
}

fn io<T>(path: &Path, r: std::io::Result<T>) -> SimResult<T> {
    r.map_err(|e| SimError::io(&path.display().to_string(), e))
}

fn write(path: &Path, text: &str) -> SimResult<()> {
    if let Some(parent) = path.parent() {
        io(parent, fs::create_dir_all(parent))?;
    }
    io(path, fs::write(path, text))
}

/// Numbered entries `<prefix><N>` of a directory.
fn numbered(dir: &Path, prefix: &str) -> SimResult<Vec<u32>> {
    let rd = match fs::read_dir(dir) {
        Ok(rd) => rd,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(SimError::io(&dir.display().to_string(), e)),
    };
    let mut v = vec![];
    for e in rd {
        let e = io(dir, e)?;
        if let Some(n) = e
            .file_name()
            .to_str()
            .and_then(|n| n.strip_prefix(prefix))
            .and_then(|n| n.parse().ok())
        {
            v.push(n);
        }
    }
    Ok(v)
}

/// Brings `capabilities/gpu<minor>/mig/gi<G>[/ci<C>]/access` in line with the state: present
/// exactly while the instance exists.
pub fn sync_capabilities(state: &State) -> SimResult<()> {
    for gpu in &state.gpus {
        let dir = gpu_mig_dir(&state.driver_root, gpu.minor);
        for gi in numbered(&dir, "gi")? {
            let path = dir.join(format!("gi{gi}"));
            match gpu.gi(gi) {
                None => io(&path, fs::remove_dir_all(&path))?,
                Some(g) => {
                    for ci in numbered(&path, "ci")? {
                        if !g.compute_instances.iter().any(|c| c.id == ci) {
                            let p = path.join(format!("ci{ci}"));
                            io(&p, fs::remove_dir_all(&p))?;
                        }
                    }
                }
            }
        }
        for gi in &gpu.gpu_instances {
            let gdir = dir.join(format!("gi{}", gi.id));
            let access = gdir.join("access");
            if !access.exists() {
                write(&access, &access_file(gi_cap_minor(gpu.minor, gi.id), 292))?;
            }
            for ci in &gi.compute_instances {
                let access = gdir.join(format!("ci{}/access", ci.id));
                if !access.exists() {
                    write(
                        &access,
                        &access_file(ci_cap_minor(gpu.minor, gi.id, ci.id), 292),
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// A character device node; an empty regular file where mknod is not permitted.
/// Returns false when it fell back to a regular file.
fn char_node(path: &Path, major: u32, minor: u32, mode: u32) -> SimResult<bool> {
    if let Some(parent) = path.parent() {
        io(parent, fs::create_dir_all(parent))?;
    }
    let _ = fs::remove_file(path);
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(|e| SimError::io(&path.display().to_string(), e))?;
    let dev = libc::makedev(major, minor);
    // SAFETY: `c` is a valid NUL-terminated path; mknod only reads it.
    let rc = unsafe { libc::mknod(c.as_ptr(), libc::S_IFCHR | mode as libc::mode_t, dev) };
    let made = if rc == 0 {
        true
    } else {
        let err = std::io::Error::last_os_error();
        if err.raw_os_error() != Some(libc::EPERM) {
            return Err(SimError::io(&path.display().to_string(), err));
        }
        io(path, fs::write(path, b""))?;
        false
    };
    // mknod's mode is filtered by the umask: set it exactly.
    io(
        path,
        fs::set_permissions(path, fs::Permissions::from_mode(mode)),
    )?;
    Ok(made)
}

/// Lays out the driver's files for `state` under its root. Returns the device nodes that had
/// to be regular files (mknod refused).
pub fn lay_out(state: &State) -> SimResult<Vec<PathBuf>> {
    let root = &state.driver_root;
    write(&root.join("proc/devices"), &proc_devices())?;
    write(
        &root.join("proc/driver/nvidia-caps/mig-minors"),
        &mig_minors(state.gpus.len() as u32),
    )?;
    let caps = root.join("proc/driver/nvidia/capabilities/mig");
    write(&caps.join("config"), &access_file(1, 256))?;
    write(&caps.join("monitor"), &access_file(2, 292))?;
    for gpu in &state.gpus {
        let d = gpu_mig_dir(root, gpu.minor);
        io(&d, fs::create_dir_all(&d))?;
    }
    let dev = root.join("dev");
    let mut nodes: Vec<(PathBuf, u32, u32, u32)> = state
        .gpus
        .iter()
        .map(|g| {
            (
                dev.join(format!("nvidia{}", g.minor)),
                NVIDIA_MAJOR,
                g.minor,
                0o666,
            )
        })
        .collect();
    nodes.extend([
        (dev.join("nvidiactl"), NVIDIA_MAJOR, NVIDIACTL_MINOR, 0o666),
        (dev.join("nvidia-uvm"), UVM_MAJOR, 0, 0o666),
        (dev.join("nvidia-uvm-tools"), UVM_MAJOR, 1, 0o666),
        (dev.join("nvidia-caps/nvidia-cap1"), CAPS_MAJOR, 1, 0o400),
        (dev.join("nvidia-caps/nvidia-cap2"), CAPS_MAJOR, 2, 0o444),
    ]);
    let mut fallbacks = vec![];
    for (path, major, minor, mode) in nodes {
        if !char_node(&path, major, minor, mode)? {
            fallbacks.push(path);
        }
    }
    sync_capabilities(state)?;
    Ok(fallbacks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mig_minors_matches_fixture_shape() {
        let s = mig_minors(1);
        assert_eq!(s, mig_minors(MINORS_GPUS), "the real file up to 32 GPUs");
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines.len(), 4322);
        assert_eq!(lines[0], "config 1");
        assert_eq!(lines[1], "monitor 2");
        assert_eq!(lines[2], "gpu0/gi0/access 3");
        assert_eq!(lines[3], "gpu0/gi0/ci0/access 4");
        assert_eq!(lines[10], "gpu0/gi0/ci7/access 11");
        assert_eq!(lines[11], "gpu0/gi1/access 12");
        assert_eq!(lines[12], "gpu0/gi1/ci0/access 13");
        assert_eq!(*lines.last().unwrap(), "gpu31/gi14/ci7/access 4322");
        let big = mig_minors(MAX_GPUS);
        assert!(big.starts_with(&s), "past 32 GPUs it goes on");
        assert_eq!(
            big.lines().last().unwrap(),
            format!("gpu63/gi14/ci7/access {}", ci_cap_minor(63, 14, 7))
        );
    }

    #[test]
    fn proc_devices_has_the_driver_majors() {
        let s = proc_devices();
        assert!(s.starts_with("Character devices:\n  1 mem\n"));
        for l in [
            "195 nvidia\n",
            "195 nvidiactl\n",
            "238 nvidia-uvm\n",
            "239 nvidia-nvswitch\n",
            "240 nvidia-nvlink\n",
            "241 nvidia-caps\n",
            "242 nvidia-caps-imex-channels\n",
            "\nBlock devices:\n",
        ] {
            assert!(s.contains(l), "{l}");
        }
    }
}
