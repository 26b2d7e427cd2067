//! The kubelet's side of a DRA kubelet plugin, for the tests: `gpushare-dra` started on a
//! simulated node with claims as JSON files (no API server is packaged here), the plugin
//! registration handshake, and NodePrepareResources / NodeUnprepareResources over the plugin's
//! unix sockets with the plugin crate's generated clients, as the kubelet's plugin manager
//! makes them.

use super::{target_dir, text, SimNode, TempDir};
use gpushare_dra::proto::{registration, v1, v1beta1};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};
use tonic::transport::{Channel, Endpoint, Uri};

/// `(namespace, name, uid)` triples as the claims of a request of API version `$v` (v1 and
/// v1beta1 carry the same message under two packages, so no one type serves both).
macro_rules! claims_in {
    ($v:ident, $claims:expr) => {
        $claims
            .iter()
            .map(|(ns, name, uid)| $v::Claim {
                namespace: ns.to_string(),
                name: name.to_string(),
                uid: uid.to_string(),
            })
            .collect()
    };
}

/// The node name the plugin runs as: its pool's name.
pub const NODE_NAME: &str = "node-a";

/// The plugin binary, built by `cargo build --workspace --all-targets` (the test build carries
/// core's failpoints).
pub fn dra_bin() -> PathBuf {
    let p = target_dir().join("gpushare-dra");
    assert!(
        p.exists(),
        "{} is missing: run `cargo build --workspace --all-targets` before the tests",
        p.display()
    );
    p
}

/// The folders a kubelet and a container runtime share with the plugin.
pub struct DraDirs {
    pub base: TempDir,
    cdi: PathBuf,
}

impl DraDirs {
    /// The plugin's command line on this node with these folders, claims read from `claims`.
    pub fn plugin_args(&self, node: &SimNode, claims: &Path) -> Vec<std::ffi::OsString> {
        let mut args: Vec<std::ffi::OsString> = vec!["--config".into(), node.config().into()];
        args.extend(["--node-name".into(), NODE_NAME.into()]);
        for (flag, dir) in [
            ("--plugin-dir", self.plugin_dir()),
            ("--registry-dir", self.registry_dir()),
            ("--cdi-dir", self.cdi_dir()),
            ("--claims-dir", claims.to_path_buf()),
            ("--publish-to", self.slices_dir()),
        ] {
            args.extend([flag.into(), dir.into()]);
        }
        args
    }

    pub fn new() -> DraDirs {
        let base = TempDir::new("dra");
        let cdi = base.path().join("cdi");
        DraDirs::make(base, cdi)
    }

    /// With the CDI specs in `cdi_dir` (a folder a container runtime reads), the rest in a
    /// temp folder.
    pub fn with_cdi_dir(cdi_dir: &Path) -> DraDirs {
        DraDirs::make(TempDir::new("dra"), cdi_dir.to_path_buf())
    }

    fn make(base: TempDir, cdi: PathBuf) -> DraDirs {
        for d in ["plugins", "registry", "claims", "slices"] {
            std::fs::create_dir_all(base.path().join(d)).unwrap();
        }
        std::fs::create_dir_all(&cdi).unwrap();
        DraDirs { base, cdi }
    }
    pub fn plugin_dir(&self) -> PathBuf {
        self.base.path().join("plugins")
    }
    pub fn registry_dir(&self) -> PathBuf {
        self.base.path().join("registry")
    }
    pub fn cdi_dir(&self) -> PathBuf {
        self.cdi.clone()
    }
    pub fn claims_dir(&self) -> PathBuf {
        self.base.path().join("claims")
    }
    /// Where the plugin publishes the node's ResourceSlices (`--publish-to`).
    pub fn slices_dir(&self) -> PathBuf {
        self.base.path().join("slices")
    }
    /// The pool's newest publication: its generation and its devices' names, in slice order.
    pub fn published(&self) -> (i64, Vec<String>) {
        let slices = gpushare_dra::publish::DirSink::new(&self.slices_dir())
            .read(NODE_NAME)
            .expect("the published slices read as resource.k8s.io/v1 ResourceSlices");
        for (path, typed) in &slices {
            // k8s-openapi skips fields it does not know: the typed object must give back the
            // whole file, or the plugin wrote something the API server would refuse.
            let raw: Value = serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap();
            let back = serde_json::to_value(typed).unwrap();
            assert_eq!(
                back,
                raw,
                "{}: fields lost as a typed ResourceSlice",
                path.display()
            );
        }
        let generation = slices
            .iter()
            .map(|(_, s)| s.spec.pool.generation)
            .max()
            .unwrap_or(0);
        let devices = slices
            .iter()
            .filter(|(_, s)| s.spec.pool.generation == generation)
            .flat_map(|(_, s)| s.spec.devices.iter().flatten().map(|d| d.name.clone()))
            .collect();
        (generation, devices)
    }
    pub fn registration_socket(&self) -> PathBuf {
        gpushare_dra::sockets::registration_socket(&self.registry_dir())
    }
    /// The CDI spec of claim `uid` as the plugin wrote it, if any.
    pub fn cdi_spec(&self, uid: &str) -> Option<Value> {
        let p = gpushare_dra::cdi::spec_path(&self.cdi_dir(), uid);
        let raw = std::fs::read(p).ok()?;
        Some(serde_json::from_slice(&raw).expect("the CDI spec is JSON"))
    }

    /// Write claim `namespace/name` (uid `uid`) as the scheduler leaves it once allocated:
    /// a resource.k8s.io/v1 ResourceClaim whose status.allocation names `devices` (request,
    /// device) of this driver in `pool`.
    pub fn write_claim(
        &self,
        namespace: &str,
        name: &str,
        uid: &str,
        pool: &str,
        devices: &[(&str, &str)],
    ) {
        let requests: Vec<Value> = devices
            .iter()
            .map(|(req, _)| json!({"name": req, "exactly": {"deviceClassName": "mig.gpu.gpushare.dev", "count": 1}}))
            .collect();
        let results: Vec<Value> = devices
            .iter()
            .map(|(req, dev)| json!({"request": req, "driver": gpushare_dra::DRIVER, "pool": pool, "device": dev}))
            .collect();
        let claim = json!({
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceClaim",
            "metadata": {"name": name, "namespace": namespace, "uid": uid},
            "spec": {"devices": {"requests": requests}},
            "status": {"allocation": {
                "devices": {"results": results},
                "nodeSelector": {"nodeSelectorTerms": [{"matchFields": [
                    {"key": "metadata.name", "operator": "In", "values": [pool]}
                ]}]}
            }}
        });
        std::fs::write(
            self.claims_dir().join(format!("{namespace}_{name}.json")),
            serde_json::to_vec_pretty(&claim).unwrap(),
        )
        .unwrap();
    }
}

/// A running `gpushare-dra`; killed on drop.
pub struct Plugin {
    child: Child,
    stderr: PathBuf,
}

impl Plugin {
    /// Start the plugin for `node` with `env` (say a failpoint), and wait for its registration
    /// socket.
    pub fn start(node: &SimNode, dirs: &DraDirs, env: &[(&str, &str)]) -> Plugin {
        let stderr = dirs
            .base
            .path()
            .join(format!("plugin-{}.log", super::unique("run")));
        let reg = dirs.registration_socket();
        let _ = std::fs::remove_file(&reg);
        let child = Command::new(dra_bin())
            .args(dirs.plugin_args(node, &dirs.claims_dir()))
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&stderr).unwrap())
            .spawn()
            .expect("start gpushare-dra");
        let mut p = Plugin { child, stderr };
        let start = Instant::now();
        while !reg.exists() {
            if let Some(st) = p.child.try_wait().unwrap() {
                panic!("gpushare-dra exited ({st}) before registering: {}", p.log());
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gpushare-dra made no registration socket in 30 s: {}",
                p.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        p
    }

    /// What the plugin wrote to stderr.
    pub fn log(&self) -> String {
        text(&std::fs::read(&self.stderr).unwrap_or_default())
    }

    /// Wait (up to 30 s) for the plugin to exit, as a failpoint makes it.
    pub fn wait_exit(&mut self) -> ExitStatus {
        let start = Instant::now();
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "gpushare-dra still runs after 30 s (was it built without failpoints? `cargo build --workspace --all-targets`): {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, as the kubelet stopping the pod sends, and wait for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        // SAFETY: signalling our own child by its pid.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        self.wait_exit()
    }
}

impl Drop for Plugin {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Which DRA service a kubelet speaks: v1 (1.34+) or v1beta1 (1.32-1.33).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Version {
    V1,
    V1beta1,
}

/// One claim's answer to a prepare, as v1 messages (v1beta1's are the same fields).
pub type Prepared = v1::NodePrepareResourceResponse;

/// The kubelet's plugin manager, reduced to its calls.
pub struct Kubelet {
    rt: tokio::runtime::Runtime,
}

impl Kubelet {
    pub fn new() -> Kubelet {
        Kubelet {
            rt: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap(),
        }
    }

    fn channel(&self, sock: &Path) -> Result<Channel, tonic::transport::Error> {
        let sock = sock.to_path_buf();
        self.rt.block_on(
            Endpoint::try_from("http://localhost")
                .unwrap()
                .timeout(Duration::from_secs(60))
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let sock = sock.clone();
                    async move {
                        let s = tokio::net::UnixStream::connect(sock).await?;
                        Ok::<_, std::io::Error>(hyper_util::rt::TokioIo::new(s))
                    }
                })),
        )
    }

    /// The plugin watcher's handshake: GetInfo on the registration socket, then (the endpoint
    /// answering) NotifyRegistrationStatus. Returns the plugin's info.
    pub fn register(&self, registration_socket: &Path) -> registration::PluginInfo {
        let ch = self
            .channel(registration_socket)
            .expect("dial the registration socket");
        let mut c = registration::registration_client::RegistrationClient::new(ch);
        let info = self
            .rt
            .block_on(c.get_info(registration::InfoRequest {}))
            .expect("GetInfo")
            .into_inner();
        let reachable = self.channel(Path::new(&info.endpoint)).is_ok();
        self.rt
            .block_on(
                c.notify_registration_status(registration::RegistrationStatus {
                    plugin_registered: reachable,
                    error: if reachable {
                        String::new()
                    } else {
                        format!("cannot dial {}", info.endpoint)
                    },
                }),
            )
            .expect("NotifyRegistrationStatus");
        assert!(
            reachable,
            "the plugin's endpoint {} does not answer",
            info.endpoint
        );
        info
    }

    /// NodePrepareResources for `claims` (namespace, name, uid) on the plugin at `endpoint`.
    pub fn prepare(
        &self,
        endpoint: &Path,
        version: Version,
        claims: &[(&str, &str, &str)],
    ) -> Result<std::collections::HashMap<String, Prepared>, tonic::Status> {
        let ch = self
            .channel(endpoint)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        match version {
            Version::V1 => {
                let mut c = v1::dra_plugin_client::DraPluginClient::new(ch);
                let req = v1::NodePrepareResourcesRequest {
                    claims: claims_in!(v1, claims),
                };
                Ok(self
                    .rt
                    .block_on(c.node_prepare_resources(req))?
                    .into_inner()
                    .claims)
            }
            Version::V1beta1 => {
                let mut c = v1beta1::dra_plugin_client::DraPluginClient::new(ch);
                let req = v1beta1::NodePrepareResourcesRequest {
                    claims: claims_in!(v1beta1, claims),
                };
                let resp = self
                    .rt
                    .block_on(c.node_prepare_resources(req))?
                    .into_inner();
                Ok(resp
                    .claims
                    .into_iter()
                    .map(|(uid, r)| {
                        let devices = r
                            .devices
                            .into_iter()
                            .map(|d| v1::Device {
                                request_names: d.request_names,
                                pool_name: d.pool_name,
                                device_name: d.device_name,
                                cdi_device_ids: d.cdi_device_ids,
                            })
                            .collect();
                        (
                            uid,
                            Prepared {
                                devices,
                                error: r.error,
                            },
                        )
                    })
                    .collect())
            }
        }
    }

    /// NodeUnprepareResources for `claims`: each claim's error ("" when done).
    pub fn unprepare(
        &self,
        endpoint: &Path,
        version: Version,
        claims: &[(&str, &str, &str)],
    ) -> Result<std::collections::HashMap<String, String>, tonic::Status> {
        let ch = self
            .channel(endpoint)
            .map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        match version {
            Version::V1 => {
                let mut c = v1::dra_plugin_client::DraPluginClient::new(ch);
                let req = v1::NodeUnprepareResourcesRequest {
                    claims: claims_in!(v1, claims),
                };
                let r = self
                    .rt
                    .block_on(c.node_unprepare_resources(req))?
                    .into_inner();
                Ok(r.claims.into_iter().map(|(u, r)| (u, r.error)).collect())
            }
            Version::V1beta1 => {
                let mut c = v1beta1::dra_plugin_client::DraPluginClient::new(ch);
                let req = v1beta1::NodeUnprepareResourcesRequest {
                    claims: claims_in!(v1beta1, claims),
                };
                let r = self
                    .rt
                    .block_on(c.node_unprepare_resources(req))?
                    .into_inner();
                Ok(r.claims.into_iter().map(|(u, r)| (u, r.error)).collect())
            }
        }
    }
}
