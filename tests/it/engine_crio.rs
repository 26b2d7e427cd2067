//! CRI-O. Debian bookworm does not package CRI-O (nor crictl), so no CRI-O runs here: the
//! shipped drop-in is checked as TOML against the keys CRI-O documents for a runtime
//! handler, and, on a machine where `crio` is installed, by `crio config` itself. The
//! sandbox rule CRI-O depends on (`io.kubernetes.cri-o.ContainerType=sandbox` never gets a
//! slice) runs for real through containerd in engine_containerd.rs.
use crate::common;

use common::engines::*;
use common::*;
use std::process::Command;

fn dropin() -> toml::Table {
    packaging_file("crio/50-gpushare.conf")
        .parse()
        .expect("packaging/crio/50-gpushare.conf is not valid TOML")
}

#[test]
fn crio_dropin_declares_the_gpushare_runtime_handler() {
    let t = dropin();
    let handler = t["crio"]["runtime"]["runtimes"]["gpushare"]
        .as_table()
        .expect("[crio.runtime.runtimes.gpushare]");
    assert_eq!(handler["runtime_path"].as_str(), Some(ENTRY));
    assert_eq!(handler["runtime_type"].as_str(), Some("oci"));
    // Only keys CRI-O knows for a handler: it refuses to start on unknown ones.
    let known = [
        "runtime_path",
        "runtime_type",
        "runtime_root",
        "runtime_config_path",
        "monitor_path",
        "monitor_cgroup",
        "monitor_env",
        "privileged_without_host_devices",
        "allowed_annotations",
        "platform_runtime_paths",
    ];
    for k in handler.keys() {
        assert!(known.contains(&k.as_str()), "unknown CRI-O handler key {k}");
    }
    // Nothing else in the drop-in: it must not override the node's other CRI-O settings.
    assert_eq!(t.keys().collect::<Vec<_>>(), ["crio"]);
    assert_eq!(t["crio"].as_table().unwrap().len(), 1);
    assert_eq!(t["crio"]["runtime"].as_table().unwrap().len(), 1);
}

#[test]
fn crio_accepts_the_dropin_where_installed() {
    if Command::new("crio").arg("--version").output().is_err() {
        eprintln!("crio is not installed (not packaged in Debian bookworm): `crio config` not run");
        return;
    }
    let dir = ShortDir::new("gs-crio");
    let d = dir.path();
    std::fs::create_dir_all(d.join("crio.conf.d")).unwrap();
    std::fs::write(
        d.join("crio.conf.d/50-gpushare.conf"),
        packaging_file("crio/50-gpushare.conf"),
    )
    .unwrap();
    let out = run(Command::new("crio")
        .arg("--config-dir")
        .arg(d.join("crio.conf.d"))
        .arg("config"));
    assert!(out.status.success(), "crio config: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("[crio.runtime.runtimes.gpushare]"),
        "{}",
        text(&out.stdout)
    );
}
