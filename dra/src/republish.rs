//! The node's pool, published again after every grant and release ([`crate::node::Republish`]):
//! what the ledger says now, plus the devices claims hold (kept published until prepared),
//! through the publisher of [`crate::publish`]. A publication that fails is logged, never fails
//! the prepare or unprepare that caused it: the next one replaces the whole pool.

use crate::claims::ClaimError;
use crate::node::Republish;
use crate::publish::{allocated_devices, DirSink, KubePublisher, Pool, PublishError, Publisher};
use gpushare_core::config::Config;
use gpushare_core::dra_name::DeviceName;
use k8s_openapi::api::resource::v1::ResourceClaim;
use std::path::PathBuf;
use std::sync::Mutex;

#[derive(Debug, thiserror::Error)]
pub enum RepublishError {
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error(transparent)]
    Claims(#[from] ClaimError),
    #[error(transparent)]
    Ledger(#[from] gpushare_core::ledger::LedgerError),
}

/// Where the slices go.
pub enum Sink {
    /// `--publish-to DIR`.
    Dir(DirSink),
    Api(Box<KubePublisher>),
}

/// Where the devices claims hold are read.
pub enum Held {
    /// `--claims-dir`: every claim file there.
    Files(PathBuf),
    /// ResourceClaims of every namespace (the publisher's client).
    Api(Box<KubePublisher>),
}

pub struct Republisher {
    cfg: Config,
    pool: Pool,
    sink: Mutex<Sink>,
    held: Held,
    runtime: tokio::runtime::Handle,
}

impl Republisher {
    /// `runtime`: the plugin's, driven by its main thread while this is called from a blocking
    /// thread.
    pub fn new(
        cfg: Config,
        pool: Pool,
        sink: Sink,
        held: Held,
        runtime: tokio::runtime::Handle,
    ) -> Republisher {
        Republisher {
            cfg,
            pool,
            sink: Mutex::new(sink),
            held,
            runtime,
        }
    }

    /// Publish the pool as the ledger has it now.
    pub fn publish_now(&self) -> Result<(), RepublishError> {
        let st = gpushare_core::ledger::snapshot(&self.cfg.state_dir)?;
        let allocated = self.allocated()?;
        let slices = self.pool.slices(&self.cfg, &st, &allocated)?;
        let mut sink = self.sink.lock().unwrap_or_else(|e| e.into_inner());
        self.runtime.block_on(async {
            match &mut *sink {
                Sink::Dir(d) => d.publish(slices).await,
                Sink::Api(k) => k.publish(slices).await,
            }
        })?;
        Ok(())
    }

    fn allocated(&self) -> Result<Vec<DeviceName>, RepublishError> {
        match &self.held {
            Held::Api(k) => Ok(self.runtime.block_on(k.allocated())?),
            Held::Files(dir) => {
                let mut claims: Vec<ResourceClaim> = Vec::new();
                let entries = std::fs::read_dir(dir).map_err(|source| ClaimError::Read {
                    path: dir.clone(),
                    source,
                })?;
                for e in entries.flatten() {
                    let path = e.path();
                    if path.extension().is_none_or(|x| x != "json") {
                        continue;
                    }
                    let raw = std::fs::read(&path).map_err(|source| ClaimError::Read {
                        path: path.clone(),
                        source,
                    })?;
                    claims.push(
                        serde_json::from_slice(&raw)
                            .map_err(|source| ClaimError::Parse { path, source })?,
                    );
                }
                Ok(allocated_devices(&claims, &self.pool.node))
            }
        }
    }
}

impl Republish for Republisher {
    fn republish(&self) {
        if let Err(e) = self.publish_now() {
            tracing::error!(
                "cannot publish pool {}: {e}; the scheduler sees the previous publication until the next one",
                self.pool.node
            );
        }
    }
}
