//! packaging/: the install script (staged below a temp root), the .deb builder, and the
//! shipped files that no engine here can load (containerd 2.x, Kubernetes).
use crate::common;

use common::engines::*;
use common::*;
use std::path::Path;
use std::process::Command;

fn install(args: &[&str]) -> std::process::Output {
    run(Command::new(repo_root().join("packaging/install.sh"))
        .arg("--bin-dir")
        .arg(target_dir())
        .args(args))
}

#[test]
fn install_stages_binaries_config_hooks_and_engine_configs() {
    let dest = TempDir::new("stage");
    let d = dest.path().to_str().unwrap();
    let out = install(&["--destdir", d, "--engines", "all"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for f in [
        "usr/bin/gpushare",
        "usr/bin/gpushare-runtime",
        "usr/bin/gpushare-hook",
        "usr/bin/gpusharectl",
        "etc/gpushare/config.toml",
        "usr/share/containers/oci/hooks.d/gpushare-precreate.json",
        "usr/share/containers/oci/hooks.d/gpushare-poststop.json",
        "etc/docker/daemon.json",
        "etc/containers/containers.conf.d/50-gpushare.conf",
        "etc/containerd/conf.d/gpushare.toml",
        "etc/containerd/config.toml",
        "etc/crio/crio.conf.d/50-gpushare.conf",
        "usr/share/gpushare/kubernetes/runtimeclass.yaml",
        "usr/share/gpushare/compose.yaml",
    ] {
        assert!(dest.path().join(f).exists(), "{f} not installed");
    }
    // The default config is a valid gpushare config.
    gpushare_core::config::Config::from_file(&dest.path().join("etc/gpushare/config.toml"))
        .unwrap();
    let daemon: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dest.path().join("etc/docker/daemon.json")).unwrap())
            .unwrap();
    assert_eq!(daemon["runtimes"]["gpushare"]["path"], "/usr/bin/gpushare");
    // Nothing is restarted without --restart: it only says what to restart.
    assert!(text(&out.stdout).contains("restart to apply"));
}

#[test]
fn install_keeps_an_operators_files_and_print_writes_nothing() {
    let dest = TempDir::new("stage");
    let d = dest.path().to_str().unwrap();
    let docker = dest.path().join("etc/docker/daemon.json");
    let config = dest.path().join("etc/gpushare/config.toml");
    for (f, body) in [
        (&docker, "{\"log-driver\": \"journald\"}\n"),
        (&config, "state_dir = \"/srv/gpushare\"\n"),
    ] {
        std::fs::create_dir_all(f.parent().unwrap()).unwrap();
        std::fs::write(f, body).unwrap();
    }
    let out = install(&["--destdir", d, "--engines", "docker"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(
        std::fs::read_to_string(&docker).unwrap(),
        "{\"log-driver\": \"journald\"}\n"
    );
    assert_eq!(
        std::fs::read_to_string(&config).unwrap(),
        "state_dir = \"/srv/gpushare\"\n"
    );
    let said = text(&out.stdout);
    assert!(
        said.contains("exists and differs") && said.contains("\"gpushare\""),
        "{said}"
    );

    let empty = TempDir::new("stage");
    let out = install(&[
        "--destdir",
        empty.path().to_str().unwrap(),
        "--print",
        "--engines",
        "all",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stdout).contains("[crio.runtime.runtimes.gpushare]"));
    assert_eq!(std::fs::read_dir(empty.path()).unwrap().count(), 0);
}

#[test]
fn deb_holds_binaries_config_and_hooks() {
    let out_dir = TempDir::new("deb");
    let out = run(Command::new(repo_root().join("packaging/build-deb"))
        .arg("--bin-dir")
        .arg(target_dir())
        .arg("--out")
        .arg(out_dir.path())
        .arg("--fast"));
    assert!(out.status.success(), "build-deb: {}", text(&out.stderr));
    let deb = text(&out.stdout).trim().to_string();
    assert!(Path::new(&deb).exists(), "{deb}");
    let contents = run(Command::new("dpkg-deb").arg("--contents").arg(&deb));
    let listing = text(&contents.stdout);
    for f in [
        "./usr/bin/gpushare",
        "./usr/bin/gpushare-runtime",
        "./usr/bin/gpushare-hook",
        "./usr/bin/gpusharectl",
        "./usr/bin/gpushare-install",
        "./etc/gpushare/config.toml",
        "./usr/share/containers/oci/hooks.d/gpushare-precreate.json",
        "./usr/share/containers/oci/hooks.d/gpushare-poststop.json",
        "./usr/share/gpushare/install.sh",
        "./usr/share/gpushare/containerd/gpushare-v3.toml",
        "./usr/share/gpushare/compose.yaml",
    ] {
        assert!(listing.contains(f), "{f} not in the .deb:\n{listing}");
    }
    let field = run(Command::new("dpkg-deb")
        .arg("--field")
        .arg(&deb)
        .args(["Package", "Version"]));
    let fields = text(&field.stdout);
    assert!(fields.contains("Package: gpushare"), "{fields}");
    let conffiles = run(Command::new("dpkg-deb")
        .args(["--info"])
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(text(&conffiles.stdout).trim(), "/etc/gpushare/config.toml");
}

#[test]
fn hooks_files_are_oci_hooks_with_explicit_env() {
    for name in ["gpushare-precreate.json", "gpushare-poststop.json"] {
        let v: serde_json::Value =
            serde_json::from_str(&packaging_file(&format!("podman/hooks.d/{name}"))).unwrap();
        assert_eq!(v["version"], "1.0.0", "{name}");
        assert_eq!(v["hook"]["path"], HOOK, "{name}");
        let stage = name
            .trim_start_matches("gpushare-")
            .trim_end_matches(".json");
        assert_eq!(v["stages"], serde_json::json!([stage]), "{name}");
        assert_eq!(v["hook"]["args"][1], stage, "{name}");
        // A hook without env inherits the container's (CVE-2025-23266).
        assert!(!v["hook"]["env"].as_array().unwrap().is_empty(), "{name}");
    }
}

#[test]
fn containerd_2x_entry_names_the_cri_runtime_plugin() {
    let t: toml::Table = packaging_file("containerd/gpushare-v3.toml")
        .parse()
        .unwrap();
    assert_eq!(t["version"].as_integer(), Some(3));
    let rt = &t["plugins"]["io.containerd.cri.v1.runtime"]["containerd"]["runtimes"]["gpushare"];
    assert_eq!(rt["runtime_type"].as_str(), Some("io.containerd.runc.v2"));
    assert_eq!(rt["options"]["BinaryName"].as_str(), Some(ENTRY));
    for k in ["pod_annotations", "container_annotations"] {
        assert_eq!(rt[k].as_array().unwrap()[0].as_str(), Some("gpu.*"), "{k}");
    }
}

#[test]
fn kubernetes_runtimeclass_and_pod_agree() {
    let rc = std::fs::read_to_string(repo_root().join("packaging/kubernetes/runtimeclass.yaml"))
        .unwrap();
    let pod =
        std::fs::read_to_string(repo_root().join("packaging/kubernetes/example-pod.yaml")).unwrap();
    assert!(rc.contains("kind: RuntimeClass") && rc.contains("handler: gpushare"));
    assert!(rc.contains("name: gpushare"));
    assert!(pod.contains("runtimeClassName: gpushare"));
    assert!(pod.contains("gpu.profile: \"1g.10gb\""));
}
