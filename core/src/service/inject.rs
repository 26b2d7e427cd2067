//! Driver injection: the host's NVIDIA user-space libraries and tools, mounted read-only into
//! GPU containers. The libraries must match the kernel module, so the host's are always the
//! right ones, whatever the image carries: they go to a private folder that is put first on
//! LD_LIBRARY_PATH, over a tmpfs, so nothing in the image's own folders is touched and no
//! program of the image (such as its ldconfig) ever runs as root.

use crate::config::{Config, InjectMode};
use crate::spec::{Edit, Mount, PathEnv};
use std::path::{Path, PathBuf};

/// Where injected files appear inside the container.
pub const LIB_DIR: &str = "/usr/local/gpushare/lib";
pub const BIN_DIR: &str = "/usr/local/gpushare/bin";
const TOP: &str = "/usr/local/gpushare";

/// Compute and utility libraries (NVIDIA_DRIVER_CAPABILITIES=compute,utility: what LLM
/// servers and notebooks need), by file-name stem.
const LIBRARIES: &[&str] = &[
    "libcuda.so",
    "libcudadebugger.so",
    "libnvidia-ml.so",
    "libnvidia-ptxjitcompiler.so",
    "libnvidia-nvvm.so",
    "libnvidia-gpucomp.so",
    "libnvidia-cfg.so",
    "libnvidia-allocator.so",
    "libnvidia-opencl.so",
    "libnvidia-pkcs11-openssl3.so",
];
const TOOLS: &[&str] = &[
    "nvidia-smi",
    "nvidia-debugdump",
    "nvidia-cuda-mps-control",
    "nvidia-cuda-mps-server",
];

/// The host's ld cache tool, at a fixed path: never a program from a container's rootfs.
const LDCONFIG: &str = "/sbin/ldconfig";

#[derive(Debug, thiserror::Error)]
pub enum InjectError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The mounts and env that bring the driver's files into a GPU container (empty when the
/// mode is not `gpushare`, or the driver's files are not found).
pub fn driver_edit(cfg: &Config) -> Result<Edit, InjectError> {
    if cfg.inject.mode != InjectMode::Gpushare {
        return Ok(Edit::default());
    }
    let libs = find_libraries(cfg)?;
    let tools = find_tools(cfg);
    if libs.is_empty() && tools.is_empty() {
        tracing::debug!("no driver libraries found to inject");
        return Ok(Edit::default());
    }
    let mut mounts = vec![Mount {
        destination: TOP.into(),
        source: "tmpfs".into(),
        kind: "tmpfs".into(),
        options: ["nosuid", "nodev", "mode=755", "size=1m"]
            .map(String::from)
            .to_vec(),
    }];
    let bind = |source: &Path, destination: String| Mount {
        destination,
        source: source.display().to_string(),
        kind: "bind".into(),
        options: ["bind", "ro", "nosuid", "nodev"].map(String::from).to_vec(),
    };
    for (name, source) in &libs {
        mounts.push(bind(source, format!("{LIB_DIR}/{name}")));
    }
    for (name, source) in &tools {
        mounts.push(bind(source, format!("{BIN_DIR}/{name}")));
    }
    Ok(Edit {
        mounts,
        env_paths: vec![
            PathEnv {
                name: "LD_LIBRARY_PATH".into(),
                dir: LIB_DIR.into(),
                prepend: true,
                default: String::new(),
            },
            PathEnv {
                name: "PATH".into(),
                dir: BIN_DIR.into(),
                prepend: false,
                default: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
            },
        ],
        ..Edit::default()
    })
}

/// (name inside the container, host file) for every driver library found: each versioned
/// file under all the names it has in its folder (`libcuda.so.1`, `libcuda.so.580.159.04`),
/// except the unversioned development name.
pub fn find_libraries(cfg: &Config) -> Result<Vec<(String, PathBuf)>, InjectError> {
    let dirs: Vec<PathBuf> = cfg
        .inject
        .lib_dirs
        .iter()
        .map(|d| cfg.driver_path(&d.to_string_lossy()))
        .collect();
    let found = search(&dirs)?;
    // The ld cache costs a process start: asked only when the configured folders miss libcuda.
    if found.iter().any(|(n, _)| n.starts_with("libcuda.so")) || cfg.driver_root != Path::new("/") {
        return Ok(found);
    }
    let mut dirs = dirs;
    dirs.extend(ld_cache_dirs());
    search(&dirs)
}

fn search(dirs: &[PathBuf]) -> Result<Vec<(String, PathBuf)>, InjectError> {
    // Each folder is listed once (a distribution's library folder holds thousands of files),
    // and each library is taken from the first folder that has any version of it.
    let mut listed = Vec::with_capacity(dirs.len());
    for dir in dirs {
        listed.push(driver_files_in(dir)?);
    }
    let mut out = Vec::new();
    for stem in LIBRARIES {
        let prefix = format!("{stem}.");
        if let Some(found) = listed
            .iter()
            .map(|files| {
                files
                    .iter()
                    .filter(|(name, _)| name.starts_with(&prefix))
                    .cloned()
                    .collect::<Vec<_>>()
            })
            .find(|found| !found.is_empty())
        {
            out.extend(found);
        }
    }
    Ok(out)
}

/// The files in `dir` named like a version of one of [`LIBRARIES`], with what they resolve to.
fn driver_files_in(dir: &Path) -> Result<Vec<(String, PathBuf)>, InjectError> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(source) => {
            return Err(InjectError::Read {
                path: dir.to_path_buf(),
                source,
            })
        }
    };
    let mut out = Vec::new();
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let wanted = LIBRARIES.iter().any(|stem| {
            name.strip_prefix(stem)
                .is_some_and(|rest| rest.starts_with('.'))
        });
        if !wanted {
            continue;
        }
        // The host's own links are trusted; what they point to must be a regular file.
        let Ok(real) = std::fs::canonicalize(e.path()) else {
            continue;
        };
        if real.is_file() {
            out.push((name, real));
        }
    }
    out.sort();
    Ok(out)
}

fn find_tools(cfg: &Config) -> Vec<(String, PathBuf)> {
    TOOLS
        .iter()
        .filter_map(|t| {
            cfg.inject
                .bin_dirs
                .iter()
                .map(|d| cfg.driver_path(&d.join(t).to_string_lossy()))
                .find_map(|p| std::fs::canonicalize(p).ok().filter(|r| r.is_file()))
                .map(|p| (t.to_string(), p))
        })
        .collect()
}

/// Folders of the host's ld cache that hold libcuda, in cache order.
fn ld_cache_dirs() -> Vec<PathBuf> {
    let Ok(out) = std::process::Command::new(LDCONFIG)
        .arg("-p")
        .env_clear()
        .output()
    else {
        return Vec::new();
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let mut dirs: Vec<PathBuf> = Vec::new();
    for line in text.lines() {
        let Some((name, path)) = line.trim().split_once(" => ") else {
            continue;
        };
        if !name.starts_with("libcuda.so") && !name.starts_with("libnvidia-ml.so") {
            continue;
        }
        if let Some(dir) = Path::new(path.trim()).parent() {
            if !dirs.iter().any(|d| d == dir) {
                dirs.push(dir.to_path_buf());
            }
        }
    }
    dirs
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_versioned_libraries_and_tools_below_the_driver_root() {
        let root = std::env::temp_dir().join(format!("gpushare-inject-{}", std::process::id()));
        let lib = root.join("usr/lib/x86_64-linux-gnu");
        let bin = root.join("usr/bin");
        std::fs::create_dir_all(&lib).unwrap();
        std::fs::create_dir_all(&bin).unwrap();
        std::fs::write(lib.join("libcuda.so.580.159.04"), b"elf").unwrap();
        std::os::unix::fs::symlink("libcuda.so.580.159.04", lib.join("libcuda.so.1")).unwrap();
        std::os::unix::fs::symlink("libcuda.so.1", lib.join("libcuda.so")).unwrap();
        std::fs::write(bin.join("nvidia-smi"), b"#!").unwrap();
        let cfg = Config {
            driver_root: root.clone(),
            ..Config::default()
        };
        let edit = driver_edit(&cfg).unwrap();
        let dests: Vec<&str> = edit.mounts.iter().map(|m| m.destination.as_str()).collect();
        assert_eq!(
            dests,
            [
                TOP,
                "/usr/local/gpushare/lib/libcuda.so.1",
                "/usr/local/gpushare/lib/libcuda.so.580.159.04",
                "/usr/local/gpushare/bin/nvidia-smi"
            ]
        );
        assert!(edit.mounts[1].source.ends_with("libcuda.so.580.159.04"));
        assert!(edit.mounts[1].options.contains(&"ro".to_string()));
        assert_eq!(edit.env_paths[0].name, "LD_LIBRARY_PATH");
        std::fs::remove_dir_all(root).unwrap();
    }

    #[test]
    fn nothing_found_means_no_edit() {
        let cfg = Config {
            driver_root: PathBuf::from("/nonexistent-gpushare-root"),
            ..Config::default()
        };
        assert_eq!(driver_edit(&cfg).unwrap(), Edit::default());
    }
}
