//! The NVIDIA driver's own files, read below the configured driver root: character-device
//! majors from /proc/devices, capability minors from /proc/driver/nvidia-caps/mig-minors, and
//! the per-instance capability `access` files that exist exactly while an instance does.

use crate::config::Config;
use crate::spec::DeviceNode;
use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum DriverError {
    #[error("cannot read {path}: {source} (is the NVIDIA driver loaded? driver_root is {root})")]
    Read {
        path: PathBuf,
        root: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "{path} has no `{name}` device: the NVIDIA driver module that provides it is not loaded"
    )]
    NoMajor { path: PathBuf, name: String },
    #[error("{path} has no entry `{key}`")]
    NoMinor { path: PathBuf, key: String },
}

/// Character-device majors of the driver's nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Majors {
    pub nvidia: u32,
    pub uvm: u32,
    pub caps: u32,
}

pub const NVIDIACTL_MINOR: u32 = 255;

pub struct Driver<'c> {
    cfg: &'c Config,
}

impl<'c> Driver<'c> {
    pub fn new(cfg: &'c Config) -> Self {
        Driver { cfg }
    }

    fn read(&self, abs: &str) -> Result<(PathBuf, String), DriverError> {
        let path = self.cfg.driver_path(abs);
        match std::fs::read_to_string(&path) {
            Ok(text) => Ok((path, text)),
            Err(source) => Err(DriverError::Read {
                path,
                root: self.cfg.driver_root.clone(),
                source,
            }),
        }
    }

    pub fn majors(&self) -> Result<Majors, DriverError> {
        let (path, text) = self.read("/proc/devices")?;
        let chars = text.split("Block devices:").next().unwrap_or("");
        let find = |name: &str| {
            chars
                .lines()
                .find_map(|l| {
                    let mut parts = l.split_whitespace();
                    let major = parts.next()?.parse::<u32>().ok()?;
                    (parts.next()? == name).then_some(major)
                })
                .ok_or_else(|| DriverError::NoMajor {
                    path: path.clone(),
                    name: name.into(),
                })
        };
        Ok(Majors {
            nvidia: find("nvidia")?,
            uvm: find("nvidia-uvm")?,
            caps: find("nvidia-caps")?,
        })
    }

    /// Minors of a MIG instance's two capability nodes (GPU instance, compute instance).
    pub fn cap_minors(&self, gpu_minor: u32, gi: u32, ci: u32) -> Result<(u32, u32), DriverError> {
        let (path, text) = self.read("/proc/driver/nvidia-caps/mig-minors")?;
        let gi_key = format!("gpu{gpu_minor}/gi{gi}/access");
        let ci_key = format!("gpu{gpu_minor}/gi{gi}/ci{ci}/access");
        let (mut gi_minor, mut ci_minor) = (None, None);
        for line in text.lines() {
            let Some((key, minor)) = line.split_once(' ') else {
                continue;
            };
            if key == gi_key {
                gi_minor = minor.trim().parse().ok();
            } else if key == ci_key {
                ci_minor = minor.trim().parse().ok();
            }
            if gi_minor.is_some() && ci_minor.is_some() {
                break;
            }
        }
        let missing = |key: String| DriverError::NoMinor {
            path: path.clone(),
            key,
        };
        Ok((
            gi_minor.ok_or_else(|| missing(gi_key))?,
            ci_minor.ok_or_else(|| missing(ci_key))?,
        ))
    }

    /// The capability file of GPU instance `gi` (`ci` None) or of its compute instance `ci`:
    /// it exists exactly while the instance does.
    pub fn cap_file(&self, gpu_minor: u32, gi: u32, ci: Option<u32>) -> PathBuf {
        let tail = match ci {
            Some(ci) => format!("gi{gi}/ci{ci}/access"),
            None => format!("gi{gi}/access"),
        };
        self.cfg.driver_path(&format!(
            "/proc/driver/nvidia/capabilities/gpu{gpu_minor}/mig/{tail}"
        ))
    }
}

/// The nodes every GPU container needs, plus its parent GPU's.
pub fn gpu_nodes(m: &Majors, gpu_minor: u32) -> Vec<DeviceNode> {
    let node = |path: String, major, minor| DeviceNode {
        path,
        major,
        minor,
        file_mode: 0o666,
    };
    vec![
        node("/dev/nvidiactl".into(), m.nvidia, NVIDIACTL_MINOR),
        node("/dev/nvidia-uvm".into(), m.uvm, 0),
        node("/dev/nvidia-uvm-tools".into(), m.uvm, 1),
        node(format!("/dev/nvidia{gpu_minor}"), m.nvidia, gpu_minor),
    ]
}

/// A MIG slice's two capability nodes, read-only as the driver makes them.
pub fn cap_nodes(m: &Majors, gi_minor: u32, ci_minor: u32) -> Vec<DeviceNode> {
    [gi_minor, ci_minor]
        .into_iter()
        .map(|minor| DeviceNode {
            path: format!("/dev/nvidia-caps/nvidia-cap{minor}"),
            major: m.caps,
            minor,
            file_mode: 0o444,
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn root_with(files: &[(&str, &str)]) -> (Config, PathBuf) {
        let dir = std::env::temp_dir().join(format!(
            "gpushare-driver-{}-{}",
            std::process::id(),
            files.len()
        ));
        for (p, text) in files {
            let path = dir.join(p.trim_start_matches('/'));
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, text).unwrap();
        }
        let cfg = Config {
            driver_root: dir.clone(),
            ..Config::default()
        };
        (cfg, dir)
    }

    #[test]
    fn reads_majors_and_minors_in_the_drivers_format() {
        let devices = "Character devices:\n  1 mem\n195 nvidia\n195 nvidiactl\n238 nvidia-uvm\n241 nvidia-caps\n242 nvidia-caps-imex-channels\n\nBlock devices:\n241 notthisone\n";
        let minors = "config 1\nmonitor 2\ngpu0/gi0/access 3\ngpu0/gi0/ci0/access 4\ngpu0/gi1/access 12\ngpu0/gi1/ci0/access 13\n";
        let (cfg, dir) = root_with(&[
            ("/proc/devices", devices),
            ("/proc/driver/nvidia-caps/mig-minors", minors),
        ]);
        let d = Driver::new(&cfg);
        assert_eq!(
            d.majors().unwrap(),
            Majors {
                nvidia: 195,
                uvm: 238,
                caps: 241
            }
        );
        assert_eq!(d.cap_minors(0, 1, 0).unwrap(), (12, 13));
        assert!(matches!(
            d.cap_minors(0, 2, 0),
            Err(DriverError::NoMinor { .. })
        ));
        assert!(!d.cap_file(0, 1, Some(0)).exists());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn missing_module_is_named() {
        let (cfg, dir) = root_with(&[("/proc/devices", "Character devices:\n195 nvidia\n")]);
        let err = Driver::new(&cfg).majors().unwrap_err().to_string();
        assert!(err.contains("nvidia-uvm"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
