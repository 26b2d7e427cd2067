//! Where a node's ResourceSlices go: the API server (the kube publisher) or a folder of JSON
//! files (`--publish-to DIR`, for tests and for clusters without a reachable API server here).
//!
//! Every publication replaces the pool: its slices get the next generation (the scheduler then
//! ignores the older ones, and a pool whose newest generation is only partly written is
//! skipped until it is whole), and slices of the pool the new publication no longer has are
//! deleted. The kubelet plugin publishes after every grant and release.

use crate::slices::{self, Shape, SlicesError, DRIVER, MANAGED_BY};
use gpushare_core::config::Config;
use gpushare_core::dra_devices::{self, Sharing};
use gpushare_core::dra_name::{DeviceName, DraNameError};
use gpushare_core::ledger::LedgerState;
use k8s_openapi::api::resource::v1::{ResourceClaim, ResourceSlice};
use std::future::Future;
use std::path::{Path, PathBuf};

/// The field manager of server-side apply.
const FIELD_MANAGER: &str = "gpushare-dra";

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error("cannot name a published device: {0}")]
    Name(#[from] DraNameError),
    #[error(transparent)]
    Slices(#[from] SlicesError),
    #[error("publishing ResourceSlices to {dir}: {what}: {source}")]
    Dir {
        dir: PathBuf,
        what: String,
        source: std::io::Error,
    },
    #[error("ResourceSlice file {path}: {source}")]
    Json {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("the API server dropped the memory-slice counters of ResourceSlice {slice} (pool {pool}): its DRAPartitionableDevices feature gate is off (alpha in Kubernetes 1.33-1.35: turn it on in kube-apiserver, kube-scheduler and kubelet). Without counters the scheduler could allocate overlapping MIG placements, so the pool's slices were deleted")]
    CountersDropped { pool: String, slice: String },
    #[error("publishing ResourceSlices of pool {pool} to the API server: {what}: {source} (the plugin's service account needs get, list, create, patch and delete on resource.k8s.io resourceslices: packaging/kubernetes/rbac.yaml)")]
    Kube {
        pool: String,
        what: String,
        source: kube::Error,
    },
}

/// A destination for one node's pool.
pub trait Publisher {
    /// Replace the pool's slices with `slices` (all of one pool, as [`slices::resource_slices`]
    /// makes them), under the pool's next generation.
    fn publish(
        &mut self,
        slices: Vec<ResourceSlice>,
    ) -> impl Future<Output = Result<(), PublishError>> + Send;
}

/// A node's pool and how it is published: the node's name (the pool's) and the cluster's
/// shapes.
#[derive(Debug, Clone)]
pub struct Pool {
    pub node: String,
    pub shape: Shape,
    pub sharing: Sharing,
}

impl Pool {
    /// The pool's slices for the ledger's state now (generation left to the publisher).
    /// `allocated`: the pool's devices that claims hold ([`allocated_devices`]), kept published
    /// until prepared.
    pub fn slices(
        &self,
        cfg: &Config,
        st: &LedgerState,
        allocated: &[DeviceName],
    ) -> Result<Vec<ResourceSlice>, PublishError> {
        let devices = dra_devices::node_devices(cfg, st, self.sharing, allocated)?;
        Ok(slices::resource_slices(
            &self.node, &devices, self.shape, 0,
        )?)
    }
}

/// The devices of `pool` that these claims were allocated (`status.allocation`), as the
/// scheduler wrote them; names that are not gpushare's are left out.
pub fn allocated_devices<'a>(
    claims: impl IntoIterator<Item = &'a ResourceClaim>,
    pool: &str,
) -> Vec<DeviceName> {
    let mut out: Vec<DeviceName> = claims
        .into_iter()
        .filter_map(|c| c.status.as_ref()?.allocation.as_ref()?.devices.as_ref())
        .flat_map(|d| d.results.iter().flatten())
        .filter(|r| r.driver == DRIVER && r.pool == pool)
        .filter_map(|r| r.device.parse().ok())
        .collect();
    out.sort();
    out.dedup();
    out
}

fn pool_of(slices: &[ResourceSlice]) -> Option<&str> {
    slices.first().map(|s| s.spec.pool.name.as_str())
}

fn set_generation(slices: &mut [ResourceSlice], generation: i64) {
    for s in slices {
        s.spec.pool.generation = generation;
    }
}

/// `--publish-to DIR`: one `<slice name>.json` per slice, written whole (temp file and rename)
/// so a reader never sees half a slice.
#[derive(Debug, Clone)]
pub struct DirSink {
    dir: PathBuf,
}

impl DirSink {
    pub fn new(dir: &Path) -> DirSink {
        DirSink {
            dir: dir.to_path_buf(),
        }
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PublishError + '_ {
        let what = what.into();
        move |source| PublishError::Dir {
            dir: self.dir.clone(),
            what,
            source,
        }
    }

    /// The pool's slices now in the folder, by file.
    pub fn read(&self, pool: &str) -> Result<Vec<(PathBuf, ResourceSlice)>, PublishError> {
        let mut out = Vec::new();
        let entries = match std::fs::read_dir(&self.dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
            Err(e) => return Err(self.err("reading the folder")(e)),
        };
        for entry in entries {
            let path = entry.map_err(self.err("reading the folder"))?.path();
            if path.extension().is_none_or(|x| x != "json") {
                continue;
            }
            let text =
                std::fs::read(&path).map_err(self.err(format!("reading {}", path.display())))?;
            let slice: ResourceSlice =
                serde_json::from_slice(&text).map_err(|source| PublishError::Json {
                    path: path.clone(),
                    source,
                })?;
            if slice.spec.pool.name == pool && slice.spec.driver == DRIVER {
                out.push((path, slice));
            }
        }
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(out)
    }
}

impl Publisher for DirSink {
    async fn publish(&mut self, mut slices: Vec<ResourceSlice>) -> Result<(), PublishError> {
        // resource_slices always makes at least one slice, so the pool is known.
        let Some(pool) = pool_of(&slices).map(str::to_string) else {
            return Ok(());
        };
        std::fs::create_dir_all(&self.dir).map_err(self.err("creating the folder"))?;
        let old = self.read(&pool)?;
        let generation = old
            .iter()
            .map(|(_, s)| s.spec.pool.generation)
            .max()
            .unwrap_or(0)
            + 1;
        set_generation(&mut slices, generation);
        let mut written = Vec::new();
        for s in &slices {
            let name = s.metadata.name.as_deref().unwrap_or_default();
            let path = self.dir.join(format!("{name}.json"));
            let text = serde_json::to_vec_pretty(s).expect("a ResourceSlice serializes");
            gpushare_core::fsutil::write_atomic(&path, &text, Some(0o644))
                .map_err(self.err(format!("writing {}", path.display())))?;
            written.push(path);
        }
        for (path, _) in old {
            if !written.contains(&path) {
                std::fs::remove_file(&path)
                    .or_else(|e| match e.kind() {
                        std::io::ErrorKind::NotFound => Ok(()),
                        _ => Err(e),
                    })
                    .map_err(self.err(format!("removing {}", path.display())))?;
            }
        }
        Ok(())
    }
}

/// The API server: server-side apply of every slice of the pool (field manager
/// `gpushare-dra`), then deletion of the pool's slices the publication no longer has.
pub struct KubePublisher {
    api: kube::Api<ResourceSlice>,
    claims: kube::Api<ResourceClaim>,
    node: String,
}

impl KubePublisher {
    /// From the in-cluster service account (or KUBECONFIG outside a cluster).
    pub async fn new(node: &str) -> Result<KubePublisher, PublishError> {
        let client = kube::Client::try_default()
            .await
            .map_err(|source| PublishError::Kube {
                pool: node.to_string(),
                what: "connecting (in-cluster service account or KUBECONFIG)".into(),
                source,
            })?;
        Ok(KubePublisher::with_client(client, node))
    }

    pub fn with_client(client: kube::Client, node: &str) -> KubePublisher {
        KubePublisher {
            api: kube::Api::all(client.clone()),
            claims: kube::Api::all(client),
            node: node.to_string(),
        }
    }

    fn err(&self, what: impl Into<String>) -> impl FnOnce(kube::Error) -> PublishError + '_ {
        let what = what.into();
        move |source| PublishError::Kube {
            pool: self.node.clone(),
            what,
            source,
        }
    }

    /// The pool's devices that claims hold now, in every namespace ([`allocated_devices`]).
    pub async fn allocated(&self) -> Result<Vec<DeviceName>, PublishError> {
        let list = self
            .claims
            .list(&Default::default())
            .await
            .map_err(self.err("listing ResourceClaims"))?;
        Ok(allocated_devices(&list.items, &self.node))
    }

    /// The pool's slices as the API server has them.
    async fn existing(&self) -> Result<Vec<ResourceSlice>, PublishError> {
        let lp = kube::api::ListParams::default()
            .labels(&format!("{}={}", MANAGED_BY.0, MANAGED_BY.1))
            .fields(&format!("spec.driver={DRIVER},spec.nodeName={}", self.node));
        let list = self.api.list(&lp).await.map_err(self.err("listing"))?;
        Ok(list.items)
    }
}

impl Publisher for KubePublisher {
    async fn publish(&mut self, mut slices: Vec<ResourceSlice>) -> Result<(), PublishError> {
        let old = self.existing().await?;
        let generation = old
            .iter()
            .map(|s| s.spec.pool.generation)
            .max()
            .unwrap_or(0)
            + 1;
        set_generation(&mut slices, generation);
        let pp = kube::api::PatchParams::apply(FIELD_MANAGER).force();
        for s in &slices {
            let name = s.metadata.name.clone().unwrap_or_default();
            let applied = self
                .api
                .patch(&name, &pp, &kube::api::Patch::Apply(s))
                .await
                .map_err(self.err(format!("applying {name}")))?;
            if !counters_kept(s, &applied) {
                let mine: Vec<String> = slices
                    .iter()
                    .chain(&old)
                    .filter_map(|s| s.metadata.name.clone())
                    .collect();
                for n in mine {
                    self.delete(&n).await?;
                }
                return Err(PublishError::CountersDropped {
                    pool: self.node.clone(),
                    slice: name,
                });
            }
        }
        for s in &old {
            let Some(name) = &s.metadata.name else {
                continue;
            };
            if !slices
                .iter()
                .any(|n| n.metadata.name.as_deref() == Some(name))
            {
                self.delete(name).await?;
            }
        }
        Ok(())
    }
}

impl KubePublisher {
    async fn delete(&self, name: &str) -> Result<(), PublishError> {
        match self.api.delete(name, &Default::default()).await {
            Ok(_) => Ok(()),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
            Err(e) => Err(self.err(format!("deleting {name}"))(e)),
        }
    }
}

/// Whether the API server kept the memory-slice counters a slice was applied with: an API
/// server without `DRAPartitionableDevices` drops `sharedCounters` and `consumesCounters` and
/// stores the rest. Only MIG's counters count: without them the scheduler could allocate
/// overlapping placements. Dropped sharing counters leave a GPU's whole device and MPS shares
/// untied, as they were before the ties: the second of two prepares is refused, the pool
/// stays up (docs/kubernetes.md).
pub fn counters_kept(sent: &ResourceSlice, stored: &ResourceSlice) -> bool {
    let sets = |s: &ResourceSlice| {
        s.spec
            .shared_counters
            .iter()
            .flatten()
            .filter(|c| slices::is_memory_slices_set(&c.name))
            .count()
    };
    let consuming = |s: &ResourceSlice| {
        s.spec
            .devices
            .iter()
            .flatten()
            .filter(|d| {
                d.consumes_counters
                    .iter()
                    .flatten()
                    .any(|c| slices::is_memory_slices_set(&c.counter_set))
            })
            .count()
    };
    sets(stored) == sets(sent) && consuming(stored) == consuming(sent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_core::ledger::{GpuRecord, LedgerState};
    use gpushare_core::policy::model::profiles_from_json;

    fn state(mig: bool) -> LedgerState {
        LedgerState {
            gpus: (0..2)
                .map(|i| GpuRecord {
                    index: i,
                    uuid: format!("GPU-{i}"),
                    name: "NVIDIA H100 80GB HBM3".into(),
                    minor: i,
                    profiles: profiles_from_json(include_str!("../../sim/models/h100-80gb.json"))
                        .unwrap(),
                    memory_total: 80 << 30,
                    mig_enabled: mig,
                })
                .collect(),
            ..Default::default()
        }
    }

    fn node() -> Pool {
        Pool {
            node: "node-a".into(),
            shape: Shape::V1_35,
            sharing: Sharing::Consumable,
        }
    }

    fn temp_dir(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("gpushare-dra-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        d
    }

    #[tokio::test]
    async fn the_folder_sink_replaces_the_pool_under_the_next_generation() {
        let dir = temp_dir("sink");
        let mut sink = DirSink::new(&dir);
        let cfg = Config::default();
        // Two MIG GPUs: a counter-set slice and a device slice.
        sink.publish(node().slices(&cfg, &state(true), &[]).unwrap())
            .await
            .unwrap();
        let first = sink.read("node-a").unwrap();
        assert_eq!(first.len(), 2);
        assert!(first.iter().all(|(_, s)| s.spec.pool.generation == 1));
        // A foreign file in the folder is neither read as ours nor removed.
        let foreign = dir.join("other.json");
        let mut other = first[0].1.clone();
        other.spec.pool.name = "node-b".into();
        std::fs::write(&foreign, serde_json::to_vec(&other).unwrap()).unwrap();
        // Out of MIG: one device slice, no counters; the counter-set slice goes.
        sink.publish(node().slices(&cfg, &state(false), &[]).unwrap())
            .await
            .unwrap();
        let second = sink.read("node-a").unwrap();
        assert_eq!(second.len(), 1, "{second:?}");
        let (path, slice) = &second[0];
        assert_eq!(slice.spec.pool.generation, 2);
        assert_eq!(slice.spec.pool.resource_slice_count, 1);
        // What is on disk is a typed resource.k8s.io/v1 ResourceSlice.
        let text = std::fs::read_to_string(path).unwrap();
        let typed: ResourceSlice = serde_json::from_str(&text).unwrap();
        assert_eq!(&typed, slice);
        let names: Vec<&str> = typed
            .spec
            .devices
            .iter()
            .flatten()
            .map(|d| d.name.as_str())
            .collect();
        assert_eq!(names, ["gpu0-whole", "gpu0-mps", "gpu1-whole", "gpu1-mps"]);
        assert!(foreign.exists());
        // Nothing left to offer: one empty slice of the next generation, the old ones gone.
        sink.publish(node().slices(&cfg, &LedgerState::default(), &[]).unwrap())
            .await
            .unwrap();
        let third = sink.read("node-a").unwrap();
        assert_eq!(third.len(), 1);
        assert_eq!(third[0].1.spec.pool.generation, 3);
        assert!(third[0].1.spec.devices.is_none());
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn allocated_devices_are_this_pools_from_the_claims_status() {
        let claim = |pool: &str, driver: &str, device: &str| -> ResourceClaim {
            serde_json::from_value(serde_json::json!({
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "metadata": {"name": "c", "namespace": "default", "uid": "u"},
                "spec": {"devices": {"requests": [{"name": "gpu", "exactly": {"deviceClassName": "mig.gpu.gpushare.dev"}}]}},
                "status": {"allocation": {"devices": {"results": [
                    {"request": "gpu", "driver": driver, "pool": pool, "device": device}
                ]}}}
            }))
            .unwrap()
        };
        let unallocated: ResourceClaim = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "d"},
            "spec": {}
        }))
        .unwrap();
        let claims = [
            claim("node-a", DRIVER, "gpu0-1g-10gb-at3"),
            claim("node-a", DRIVER, "gpu0-1g-10gb-at3"),
            claim("node-b", DRIVER, "gpu0-1g-10gb-at6"),
            claim("node-a", "gpu.nvidia.com", "gpu-0-mig-1g10gb-19-0"),
            claim("node-a", DRIVER, "not-ours"),
            claim("node-a", DRIVER, "gpu1-whole"),
            unallocated,
        ];
        let got: Vec<String> = allocated_devices(&claims, "node-a")
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(got, ["gpu0-1g-10gb-at3", "gpu1-whole"]);
        // Kept published: on an empty GPU the policy offers 1g.10gb elsewhere than at 3.
        let names = |held: &[DeviceName]| -> Vec<String> {
            let slices = node()
                .slices(&Config::default(), &state(true), held)
                .unwrap();
            slices
                .iter()
                .flat_map(|s| s.spec.devices.iter().flatten())
                .map(|d| d.name.clone())
                .collect()
        };
        let want = "gpu0-1g-10gb-at3".to_string();
        assert!(!names(&[]).contains(&want));
        assert!(names(&allocated_devices(&claims, "node-a")).contains(&want));
    }

    /// What an API server without DRAPartitionableDevices stores.
    fn without_counters(sent: &ResourceSlice) -> ResourceSlice {
        let mut stored = sent.clone();
        stored.spec.shared_counters = None;
        for d in stored.spec.devices.iter_mut().flatten() {
            d.consumes_counters = None;
        }
        stored
    }

    #[test]
    fn a_slice_stored_without_its_counters_is_noticed() {
        let cfg = Config::default();
        let mut n = node();
        for shape in [Shape::V1_34, Shape::V1_35] {
            n.shape = shape;
            for sent in n.slices(&cfg, &state(true), &[]).unwrap() {
                assert!(counters_kept(&sent, &sent.clone()));
                assert!(!counters_kept(&sent, &without_counters(&sent)));
            }
        }
    }

    /// Counted whole-GPU and MPS devices lose only their tie where the cluster has no
    /// partitionable devices: their slices stay published, as before the ties.
    #[test]
    fn sharing_counters_dropped_keep_the_pool_up() {
        let cfg = Config::default();
        let mut n = node();
        n.sharing = Sharing::Counted { shares: 4 };
        for shape in [Shape::V1_34, Shape::V1_35] {
            n.shape = shape;
            let sent = n.slices(&cfg, &state(false), &[]).unwrap();
            assert!(sent.iter().any(|s| s.spec.shared_counters.is_some()));
            for s in &sent {
                assert!(counters_kept(s, &without_counters(s)), "{shape:?}");
            }
        }
    }

    #[tokio::test]
    async fn a_broken_file_of_the_folder_is_reported_with_its_path() {
        let dir = temp_dir("broken");
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("node-a-gpushare-0000.json"), b"{").unwrap();
        let mut sink = DirSink::new(&dir);
        let err = sink
            .publish(
                node()
                    .slices(&Config::default(), &state(true), &[])
                    .unwrap(),
            )
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("node-a-gpushare-0000.json"),
            "{err}"
        );
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
