//! Where the kubelet finds the plugin (team contract, docs/kubernetes.md): the registration
//! socket in the kubelet's plugin registry folder, and the DRA service's socket in the plugin's
//! own folder, which the registration names.

use crate::DRIVER;
use std::path::{Path, PathBuf};

pub const DEFAULT_PLUGIN_DIR: &str = "/var/lib/kubelet/plugins/gpu.gpushare.dev";
pub const DEFAULT_REGISTRY_DIR: &str = "/var/lib/kubelet/plugins_registry";
pub const DEFAULT_CDI_DIR: &str = "/var/run/cdi";

/// The DRA service's socket in `plugin_dir`.
pub fn dra_socket(plugin_dir: &Path) -> PathBuf {
    plugin_dir.join("dra.sock")
}

/// The registration socket in the kubelet's `registry_dir`.
pub fn registration_socket(registry_dir: &Path) -> PathBuf {
    registry_dir.join(format!("{DRIVER}-reg.sock"))
}
