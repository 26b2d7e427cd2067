//! Kubernetes' way into containerd, without a cluster: a CRI client speaking containerd's CRI
//! gRPC API over its unix socket the way kubelet does (the `k8s-cri` crate's tonic bindings),
//! a privately started containerd whose config is the one `packaging/` ships, and OCI images
//! (a static pause program for the sandbox, busybox for the pods' containers) built here and
//! imported with `ctr`, since no registry is reachable. A module of the test binary of its own (tests/it/main.rs), not of `common`,
//! so the benchmarks, which include `common`, do not build the CRI client.

#![allow(dead_code)]

use crate::common::engines::*;
use crate::common::trixie::Trixie;
use crate::common::*;
use k8s_cri::v1::image_service_client::ImageServiceClient;
use k8s_cri::v1::runtime_service_client::RuntimeServiceClient;
use k8s_cri::v1::{
    CdiDevice, ContainerConfig, ContainerFilter, ContainerMetadata, ContainerState,
    ContainerStatus, ContainerStatusRequest, CreateContainerRequest, ImageSpec, ImageStatusRequest,
    LinuxContainerConfig, LinuxContainerSecurityContext, LinuxPodSandboxConfig,
    LinuxSandboxSecurityContext, ListContainersRequest, ListPodSandboxRequest, NamespaceMode,
    NamespaceOption, PodSandboxConfig, PodSandboxMetadata, RemoveContainerRequest,
    RemovePodSandboxRequest, RunPodSandboxRequest, StartContainerRequest, StatusRequest,
    StopContainerRequest, StopPodSandboxRequest,
};
use k8s_cri::v1::{ExecSyncRequest, ExecSyncResponse};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// The runtime handler gpushare's containerd config declares (a RuntimeClass's `handler`).
pub const HANDLER: &str = "gpushare";
/// The plain runc handler of the same config.
pub const RUNC: &str = "runc";
/// Images built by [`oci_image_tar`] and imported into containerd's `k8s.io` namespace.
pub const PAUSE_IMAGE: &str = "gpushare.test/pause:1";
pub const BUSYBOX_IMAGE: &str = "gpushare.test/busybox:1";
/// The runc shim keeps CRI containers' runc state here (namespace `k8s.io`).
pub const RUNC_ROOT: &str = "/run/containerd/runc/k8s.io";

/// Builds `tests/it/common/pause.c` as a static binary.
pub fn build_pause(dir: &Path) -> PathBuf {
    let src = repo_root().join("tests/it/common/pause.c");
    let out = dir.join("pause");
    let res = run(Command::new("gcc")
        .args(["-static", "-Os", "-s", "-o"])
        .arg(&out)
        .arg(&src));
    assert!(
        res.status.success(),
        "gcc -static {}: {} (the CRI tests need gcc and libc6-dev's static libc)",
        src.display(),
        text(&res.stderr)
    );
    out
}

fn sha256_hex(bytes: &[u8]) -> String {
    let mut h = Sha256::new();
    h.update(bytes);
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

/// containerd's name for this machine's architecture.
fn oci_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        other => other,
    }
}

/// An OCI image layout tarball (`oci-layout`, `index.json`, `blobs/sha256/...`) holding one
/// image named `name`: one uncompressed layer made from `rootfs`, and an image config with
/// `entrypoint` and `cmd`. `ctr images import` takes it.
pub fn oci_image_tar(
    dir: &Path,
    name: &str,
    rootfs: &Path,
    entrypoint: &[&str],
    cmd: &[&str],
) -> PathBuf {
    let layout = dir.join(format!("layout-{}", sha256_hex(name.as_bytes())));
    let blobs = layout.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    let blob = |bytes: &[u8]| -> (String, usize) {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        (format!("sha256:{hex}"), bytes.len())
    };
    let layer_path = dir.join(format!("layer-{}.tar", sha256_hex(name.as_bytes())));
    let out = run(Command::new("tar")
        .args(["--numeric-owner", "--owner=0", "--group=0", "-C"])
        .arg(rootfs)
        .arg("-cf")
        .arg(&layer_path)
        .arg("."));
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    let layer = std::fs::read(&layer_path).unwrap();
    let (layer_digest, layer_size) = blob(&layer);
    let config = json!({
        "architecture": oci_arch(),
        "os": "linux",
        "config": {
            "Env": ["PATH=/bin"],
            "Entrypoint": entrypoint,
            "Cmd": cmd,
            "WorkingDir": "/"
        },
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created_by": "gpushare tests/it/common/cri.rs"}]
    });
    let (config_digest, config_size) = blob(&serde_json::to_vec(&config).unwrap());
    let manifest = json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar",
            "digest": layer_digest,
            "size": layer_size
        }]
    });
    let (manifest_digest, manifest_size) = blob(&serde_json::to_vec(&manifest).unwrap());
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "platform": {"architecture": oci_arch(), "os": "linux"},
            "annotations": {
                "io.containerd.image.name": name,
                "org.opencontainers.image.ref.name": tag
            }
        }]
    });
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    std::fs::write(
        layout.join("oci-layout"),
        br#"{"imageLayoutVersion":"1.0.0"}"#,
    )
    .unwrap();
    let tarball = dir.join(format!("image-{}.tar", sha256_hex(name.as_bytes())));
    let out = run(Command::new("tar")
        .arg("-C")
        .arg(&layout)
        .arg("-cf")
        .arg(&tarball)
        .args(["oci-layout", "index.json", "blobs"]));
    assert!(out.status.success(), "tar: {}", text(&out.stderr));
    tarball
}

/// containerd's config for this test: private paths, then the file packaging/ ships for
/// containerd 1.x exactly (only the binary's path is this build's), then the CRI settings a
/// node without a registry or CNI needs. On containerd 1.x an imported drop-in replaces
/// config.toml's whole CRI section, so a node with CRI settings of its own pastes the shipped
/// tables into config.toml, as here.
pub fn containerd_config(d: &Path, sock: &Path) -> String {
    containerd_config_with(d, sock, &packaging_file("containerd/gpushare-v2.toml"))
}

/// The CRI plugin's own table. The shipped 1.x drop-in has one (its CDI settings), so the
/// node's CRI settings go into it: TOML allows a table once.
const CRI_TABLE: &str = "[plugins.\"io.containerd.grpc.v1.cri\"]\n";

/// [`containerd_config`] around `shipped`, the drop-in's text.
pub fn containerd_config_with(d: &Path, sock: &Path, shipped: &str) -> String {
    let node_cri = format!(
        "  sandbox_image = {PAUSE_IMAGE:?}\n\
         # The sandbox asks for oom_score_adj -998, which a nested machine may not lower to.\n  \
         restrict_oom_score_adj = true\n"
    );
    let with_cri = match shipped.find(CRI_TABLE) {
        Some(at) => {
            let (head, tail) = shipped.split_at(at + CRI_TABLE.len());
            format!("{head}{node_cri}{tail}")
        }
        None => format!("{shipped}\n{CRI_TABLE}{node_cri}"),
    };
    format!(
        "root = {root:?}\nstate = {state:?}\n\n{with_cri}\n\
         [grpc]\n  address = {sock:?}\n[ttrpc]\n  address = {ttrpc:?}\n\n\
         [plugins.\"io.containerd.grpc.v1.cri\".cni]\n  bin_dir = {cni_bin:?}\n  conf_dir = {cni_conf:?}\n",
        root = d.join("root").display().to_string(),
        state = d.join("state").display().to_string(),
        sock = sock.display().to_string(),
        ttrpc = format!("{}.ttrpc", sock.display()),
        cni_bin = d.join("cni/bin").display().to_string(),
        cni_conf = d.join("cni/conf").display().to_string(),
    )
}

/// A pod as kubelet keeps it: the sandbox id and the config every later call repeats.
#[derive(Clone)]
pub struct Pod {
    pub id: String,
    pub name: String,
    pub config: PodSandboxConfig,
}

/// Which containerd a [`Cri`] drives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Containerd {
    /// This machine's (Debian bookworm: 1.6), with this build's binaries where they are.
    Host,
    /// Debian trixie's 1.7 in the trixie root (tests/it/common/trixie.rs), gpushare as installed
    /// there: the shipped drop-in verbatim, /etc/gpushare/config.toml.
    Trixie,
}

/// A privately started containerd with its CRI plugin, and a CRI client to it.
pub struct Cri {
    // Dropped in this order after `Drop::drop` removed every pod: client, daemon, namespace,
    // directory.
    rt: tokio::runtime::Runtime,
    client: RuntimeServiceClient<Channel>,
    daemon: Option<Daemon>,
    pub sock: PathBuf,
    pub node_config: PathBuf,
    // After the daemon, before the directory: the namespace the daemon ran in (its mounts of
    // the directory go with it).
    trixie: Option<Trixie>,
    pub dir: ShortDir,
}

fn ns_option(mode: NamespaceMode) -> NamespaceOption {
    NamespaceOption {
        network: NamespaceMode::Node as i32,
        pid: mode as i32,
        ipc: NamespaceMode::Pod as i32,
        ..Default::default()
    }
}

impl Cri {
    /// containerd on `node` (its gpushare config in containerd's environment), with the pause
    /// and busybox images imported.
    pub fn start(node: &SimNode) -> Cri {
        Cri::start_on(node, Containerd::Host)
    }

    /// The same, with the containerd `which` names.
    pub fn start_on(node: &SimNode, which: Containerd) -> Cri {
        Cri::start_configured(node, which, None)
    }

    /// Trixie's containerd 1.7, whose CRI plugin has CDI on by the shipped drop-in, with
    /// `spec_dir` seen at `/var/run/cdi` inside the trixie namespace: what a DRA driver writes
    /// there from outside is what containerd resolves CDI ids from. containerd 1.6 has no CDI.
    pub fn start_cdi(node: &SimNode, spec_dir: &Path) -> Cri {
        Cri::start_configured(node, Containerd::Trixie, Some(spec_dir))
    }

    fn start_configured(node: &SimNode, which: Containerd, cdi_dir: Option<&Path>) -> Cri {
        require_root();
        let runc = match which {
            Containerd::Host => Runtime::Runc.path().display().to_string(),
            Containerd::Trixie => "/usr/sbin/runc".to_string(),
        };
        node.configure(&format!("runtime = {runc:?}"));
        let dir = ShortDir::new("gs-cri");
        let d = dir.path().to_path_buf();
        let sock = d.join("c.sock");
        for sub in ["cni/bin", "cni/conf", "pods"] {
            std::fs::create_dir_all(d.join(sub)).unwrap();
        }
        let (config, trixie) = match which {
            Containerd::Host => (containerd_config(&d, &sock), None),
            Containerd::Trixie => {
                let shipped = std::fs::read_to_string(
                    repo_root().join("packaging/containerd/gpushare-v2.toml"),
                )
                .unwrap();
                // /var/run is a link to /run, a fresh tmpfs in the namespace.
                let binds: Vec<(&Path, &str)> =
                    cdi_dir.into_iter().map(|p| (p, "/run/cdi")).collect();
                (
                    containerd_config_with(&d, &sock, &shipped),
                    Some(Trixie::enter_binding(node, &[&d], &binds)),
                )
            }
        };
        std::fs::write(d.join("config.toml"), config).unwrap();
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let daemon = spawn_containerd(trixie.as_ref(), &d, &sock, &node.config());
        let client = connect(&rt, &sock);
        let mut cri = Cri {
            rt,
            client,
            daemon: Some(daemon),
            sock,
            node_config: node.config(),
            dir,
            trixie,
        };
        cri.wait_cri_ready();
        // Images: the pause program and busybox, each an OCI layout tarball.
        let img = d.join("img");
        std::fs::create_dir_all(img.join("pause-root")).unwrap();
        std::fs::copy(build_pause(&img), img.join("pause-root/pause")).unwrap();
        let pause = oci_image_tar(&img, PAUSE_IMAGE, &img.join("pause-root"), &["/pause"], &[]);
        let bb_root = busybox_rootfs(&img);
        let busybox = oci_image_tar(&img, BUSYBOX_IMAGE, &bb_root, &[], &["/bin/sh"]);
        for (tar, name) in [(pause, PAUSE_IMAGE), (busybox, BUSYBOX_IMAGE)] {
            let out = cri.ctr(&[
                "images",
                "import",
                "--no-unpack=false",
                &tar.display().to_string(),
            ]);
            assert!(
                out.status.success(),
                "ctr images import {name}: {}{}",
                text(&out.stdout),
                text(&out.stderr)
            );
            cri.wait_image(name);
        }
        cri
    }

    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.rt.block_on(f)
    }

    pub fn ctr(&self, args: &[&str]) -> Output {
        let mut ctr = match &self.trixie {
            Some(tx) => tx.cmd("ctr"),
            None => Command::new("ctr"),
        };
        run(ctr
            .arg("-a")
            .arg(&self.sock)
            .args(["-n", "k8s.io"])
            .args(args))
    }

    pub fn daemon_log(&self) -> String {
        self.daemon
            .as_ref()
            .map(Daemon::log_text)
            .unwrap_or_default()
    }

    fn wait_cri_ready(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let mut c = self.client.clone();
            let st = self.block_on(async move { c.status(StatusRequest { verbose: false }).await });
            match st {
                Ok(st) => {
                    let ready = st.into_inner().status.is_some_and(|s| {
                        s.conditions
                            .iter()
                            .any(|c| c.r#type == "RuntimeReady" && c.status)
                    });
                    if ready {
                        return;
                    }
                }
                Err(e) if Instant::now() > deadline => {
                    panic!("CRI not answering: {e}\n{}", self.daemon_log())
                }
                Err(_) => {}
            }
            assert!(
                Instant::now() < deadline,
                "CRI runtime not ready within 60 s:\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Wait until the CRI image service knows `name` (it learns of `ctr` imports by event).
    fn wait_image(&self, name: &str) {
        let deadline = Instant::now() + Duration::from_secs(30);
        let rt_sock = self.sock.clone();
        loop {
            let image = name.to_string();
            let sock = rt_sock.clone();
            let found = self.block_on(async move {
                let ch = connect_async(&sock).await;
                let mut images = ImageServiceClient::new(ch);
                images
                    .image_status(ImageStatusRequest {
                        image: Some(ImageSpec {
                            image,
                            ..Default::default()
                        }),
                        verbose: false,
                    })
                    .await
                    .map(|r| r.into_inner().image.is_some())
            });
            if found.as_ref().is_ok_and(|f| *f) {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "CRI does not see image {name}: {found:?}\n{}",
                self.daemon_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// RunPodSandbox with host networking (no CNI), as kubelet sends it for a
    /// `hostNetwork: true` pod with this `runtimeClassName`'s handler.
    pub fn run_pod(
        &self,
        name: &str,
        handler: &str,
        annotations: &[(&str, &str)],
    ) -> Result<Pod, tonic::Status> {
        let uid = unique("uid");
        let log_dir = self.dir.path().join("pods").join(&uid);
        std::fs::create_dir_all(&log_dir).unwrap();
        let config = PodSandboxConfig {
            metadata: Some(PodSandboxMetadata {
                name: name.to_string(),
                uid,
                namespace: "default".into(),
                attempt: 0,
            }),
            // kubelet sets no hostname for a host-network pod (it keeps the node's UTS namespace).
            hostname: String::new(),
            log_directory: log_dir.display().to_string(),
            annotations: annotations
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            labels: HashMap::from([("io.kubernetes.pod.name".into(), name.to_string())]),
            linux: Some(LinuxPodSandboxConfig {
                security_context: Some(LinuxSandboxSecurityContext {
                    namespace_options: Some(ns_option(NamespaceMode::Container)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let mut c = self.client.clone();
        let req = RunPodSandboxRequest {
            config: Some(config.clone()),
            runtime_handler: handler.to_string(),
        };
        let id = self
            .block_on(async move { c.run_pod_sandbox(req).await })?
            .into_inner()
            .pod_sandbox_id;
        Ok(Pod {
            id,
            name: name.to_string(),
            config,
        })
    }

    /// CreateContainer (busybox running `sh -c script`, its log at `<pod logs>/<name>.log`).
    pub fn create_container(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
    ) -> Result<String, tonic::Status> {
        self.create_container_cdi(pod, name, script, &[])
    }

    /// [`Cri::create_container`] with fully qualified CDI device names in the ContainerConfig's
    /// `CDI_devices`, as kubelet (1.28 on) passes what a DRA driver's NodePrepareResources
    /// returned for the pod's claims.
    pub fn create_container_cdi(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
        cdi_devices: &[&str],
    ) -> Result<String, tonic::Status> {
        let config = ContainerConfig {
            cdi_devices: cdi_devices
                .iter()
                .map(|d| CdiDevice {
                    name: d.to_string(),
                })
                .collect(),
            metadata: Some(ContainerMetadata {
                name: name.to_string(),
                attempt: 0,
            }),
            image: Some(ImageSpec {
                image: BUSYBOX_IMAGE.into(),
                ..Default::default()
            }),
            command: vec!["/bin/sh".into(), "-c".into(), script.to_string()],
            log_path: format!("{name}.log"),
            labels: HashMap::from([("io.kubernetes.container.name".into(), name.to_string())]),
            linux: Some(LinuxContainerConfig {
                security_context: Some(LinuxContainerSecurityContext {
                    namespace_options: Some(ns_option(NamespaceMode::Container)),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        let req = CreateContainerRequest {
            pod_sandbox_id: pod.id.clone(),
            config: Some(config),
            sandbox_config: Some(pod.config.clone()),
        };
        let mut c = self.client.clone();
        Ok(self
            .block_on(async move { c.create_container(req).await })?
            .into_inner()
            .container_id)
    }

    /// StartContainer: this is where containerd creates the task, so where the runtime
    /// (gpushare, then runc) runs `create`.
    pub fn start_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        let req = StartContainerRequest {
            container_id: id.to_string(),
        };
        self.block_on(async move { c.start_container(req).await })?;
        Ok(())
    }

    /// Create and start, as kubelet does for each container of a pod.
    pub fn run_container(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
    ) -> Result<String, tonic::Status> {
        let id = self.create_container(pod, name, script)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// [`Cri::run_container`] with CDI devices ([`Cri::create_container_cdi`]).
    pub fn run_container_cdi(
        &self,
        pod: &Pod,
        name: &str,
        script: &str,
        cdi_devices: &[&str],
    ) -> Result<String, tonic::Status> {
        let id = self.create_container_cdi(pod, name, script, cdi_devices)?;
        self.start_container(&id)?;
        Ok(id)
    }

    /// ExecSync: what `kubectl exec` (and an exec probe) makes containerd do, a process run in
    /// the container through the runtime's `exec --process FILE`.
    pub fn exec_sync(&self, id: &str, cmd: &[&str]) -> Result<ExecSyncResponse, tonic::Status> {
        let mut c = self.client.clone();
        let req = ExecSyncRequest {
            container_id: id.to_string(),
            cmd: cmd.iter().map(|s| s.to_string()).collect(),
            timeout: 30,
        };
        Ok(self
            .block_on(async move { c.exec_sync(req).await })?
            .into_inner())
    }

    pub fn container_status(&self, id: &str) -> ContainerStatus {
        let mut c = self.client.clone();
        let req = ContainerStatusRequest {
            container_id: id.to_string(),
            verbose: false,
        };
        self.block_on(async move { c.container_status(req).await })
            .unwrap_or_else(|e| panic!("ContainerStatus {id}: {e}"))
            .into_inner()
            .status
            .expect("a status")
    }

    /// Wait (bounded) until the container has exited; returns its status.
    pub fn wait_exited(&self, id: &str) -> ContainerStatus {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let st = self.container_status(id);
            if st.state == ContainerState::ContainerExited as i32 {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "container {id} did not exit within 60 s: {st:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// What the container wrote, from its CRI log file (`<time> <stream> <P|F> <text>` lines).
    pub fn log(&self, pod: &Pod, name: &str) -> String {
        let path = Path::new(&pod.config.log_directory).join(format!("{name}.log"));
        let raw = std::fs::read_to_string(&path).unwrap_or_default();
        let mut out = String::new();
        for line in raw.lines() {
            let mut parts = line.splitn(4, ' ');
            let (_time, _stream, tag) = (parts.next(), parts.next(), parts.next());
            out.push_str(parts.next().unwrap_or_default());
            if tag == Some("F") {
                out.push('\n');
            }
        }
        out
    }

    /// Wait (bounded) until the container's log holds `marker`; returns the log.
    pub fn wait_log(&self, pod: &Pod, name: &str, marker: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let log = self.log(pod, name);
            if log.contains(marker) {
                return log;
            }
            assert!(
                Instant::now() < deadline,
                "{name} did not log {marker:?} within 60 s:\n{log}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        let req = StopContainerRequest {
            container_id: id.to_string(),
            timeout: 0,
        };
        self.block_on(async move { c.stop_container(req).await })?;
        Ok(())
    }

    pub fn remove_container(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        let req = RemoveContainerRequest {
            container_id: id.to_string(),
        };
        self.block_on(async move { c.remove_container(req).await })?;
        Ok(())
    }

    pub fn stop_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        let req = StopPodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.block_on(async move { c.stop_pod_sandbox(req).await })?;
        Ok(())
    }

    pub fn remove_pod(&self, id: &str) -> Result<(), tonic::Status> {
        let mut c = self.client.clone();
        let req = RemovePodSandboxRequest {
            pod_sandbox_id: id.to_string(),
        };
        self.block_on(async move { c.remove_pod_sandbox(req).await })?;
        Ok(())
    }

    /// StopPodSandbox then RemovePodSandbox, as kubelet does when a pod is deleted.
    pub fn delete_pod(&self, id: &str) {
        self.stop_pod(id)
            .unwrap_or_else(|e| panic!("StopPodSandbox {id}: {e}\n{}", self.daemon_log()));
        self.remove_pod(id)
            .unwrap_or_else(|e| panic!("RemovePodSandbox {id}: {e}\n{}", self.daemon_log()));
    }

    pub fn pod_ids(&self) -> Vec<String> {
        let mut c = self.client.clone();
        self.block_on(async move {
            c.list_pod_sandbox(ListPodSandboxRequest { filter: None })
                .await
        })
        .map(|r| r.into_inner().items.into_iter().map(|p| p.id).collect())
        .unwrap_or_default()
    }

    /// Container ids (all states), optionally of one pod.
    pub fn container_ids(&self, pod: Option<&str>) -> Vec<String> {
        let mut c = self.client.clone();
        let req = ListContainersRequest {
            filter: Some(ContainerFilter {
                pod_sandbox_id: pod.unwrap_or_default().to_string(),
                ..Default::default()
            }),
        };
        self.block_on(async move { c.list_containers(req).await })
            .map(|r| {
                r.into_inner()
                    .containers
                    .into_iter()
                    .map(|c| c.id)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The shim's runc root for the `k8s.io` namespace, as seen from this process.
    pub fn runc_root(&self) -> PathBuf {
        match &self.trixie {
            Some(tx) => tx.outside(Path::new(RUNC_ROOT)),
            None => PathBuf::from(RUNC_ROOT),
        }
    }

    /// The OCI spec containerd wrote for a container's (or sandbox's) task, as the runtime
    /// read it (gpushare's edits included).
    pub fn task_spec(&self, id: &str) -> Value {
        let p = self
            .dir
            .path()
            .join("state/io.containerd.runtime.v2.task/k8s.io")
            .join(id)
            .join("config.json");
        let raw = std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
        serde_json::from_slice(&raw).unwrap()
    }

    /// SIGKILL containerd (its shims and containers keep running, as after a crash).
    pub fn kill_containerd(&mut self) {
        self.daemon.take().expect("containerd running").kill();
    }

    /// Start containerd again on the same root, state and config.
    pub fn restart_containerd(&mut self) {
        assert!(self.daemon.is_none(), "containerd is still running");
        let _ = std::fs::remove_file(&self.sock);
        self.daemon = Some(spawn_containerd(
            self.trixie.as_ref(),
            self.dir.path(),
            &self.sock,
            &self.node_config,
        ));
        self.client = connect(&self.rt, &self.sock);
        self.wait_cri_ready();
    }
}

impl Drop for Cri {
    fn drop(&mut self) {
        if self.daemon.is_none() {
            return;
        }
        // Pods a failed test left: stop and remove them so no shim or container outlives us.
        for id in self.pod_ids() {
            let _ = self.stop_pod(&id);
            let _ = self.remove_pod(&id);
        }
    }
}

async fn connect_async(sock: &Path) -> Channel {
    let sock = sock.to_path_buf();
    Endpoint::try_from("http://localhost")
        .unwrap()
        .timeout(Duration::from_secs(120))
        .connect_with_connector(tower::service_fn(move |_: Uri| {
            let sock = sock.clone();
            async move {
                let s = tokio::net::UnixStream::connect(sock).await?;
                Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
            }
        }))
        .await
        .expect("connect to containerd's socket")
}

fn connect(rt: &tokio::runtime::Runtime, sock: &Path) -> RuntimeServiceClient<Channel> {
    RuntimeServiceClient::new(rt.block_on(connect_async(sock)))
}
