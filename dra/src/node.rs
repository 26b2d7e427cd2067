//! What the plugin does on the node: prepare a claim (grant each device this driver was
//! allocated through core, with the claim owning the lease, then write the claim's CDI spec),
//! unprepare it (remove the spec, then release), and repair at start what a killed plugin left.
//!
//! Crash safety comes from the order of the two durable steps and from core's idempotent grants:
//! a claim's spec is written only after every one of its grants is saved, and removed before any
//! of them is released. So a spec always names leases the claim holds, and a claim lease without
//! a spec was never handed to the kubelet: the next prepare of that claim takes the same leases
//! again (core returns what the holder already has), an unprepare releases them, and the repair
//! at start releases every one left behind.

use crate::cdi::{self, CdiError};
use crate::claims::{ClaimError, ClaimRef, ClaimSource};
use crate::devices::{self, DeviceError};
use crate::DRIVER;
use gpushare_core::allocator::{self, AllocError};
use gpushare_core::config::Config;
use gpushare_core::grant::{self, GrantError};
use gpushare_core::ledger::{self, Claimant, LedgerError, LedgerState, Owner};
use k8s_openapi::api::resource::v1::DeviceRequestAllocationResult;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error(transparent)]
    Claim(#[from] ClaimError),
    #[error("{claim}: the API server has uid {found} under that name: the claim the kubelet asks for was deleted and made again; the kubelet retries with the new one")]
    Uid { claim: String, found: String },
    #[error(
        "{claim} is not allocated (no status.allocation): the scheduler has not placed it yet"
    )]
    NotAllocated { claim: String },
    #[error("{claim} is allocated no device of driver {DRIVER} (its allocation names {drivers}); nothing prepared: the kubelet sends a driver only the claims allocated its devices, so the claim read (from the API server, or --claims-dir) is not the one the kubelet saw")]
    NoDevice { claim: String, drivers: String },
    #[error("{claim}: device {device} of this driver is allocated from pool {pool}, and this node ({node}) publishes pool {node}: the plugin's --node-name must be the node's name")]
    OtherPool {
        claim: String,
        device: String,
        pool: String,
        node: String,
    },
    #[error("{claim}: {source}")]
    Device {
        claim: String,
        source: Box<DeviceError>,
    },
    #[error("{claim}: cannot grant device {device}: {source}")]
    Grant {
        claim: String,
        device: String,
        source: Box<GrantError>,
    },
    #[error("{claim}: {source}")]
    Cdi { claim: String, source: CdiError },
    #[error(
        "{claim}: cannot release device {device}: {source}; the kubelet retries the unprepare"
    )]
    Release {
        claim: String,
        device: String,
        source: Box<AllocError>,
    },
    #[error(transparent)]
    Ledger(#[from] LedgerError),
}

/// Called after every grant and release, so that the node's ResourceSlices say what it can
/// still grant (the publisher, dra/src/publish.rs).
pub trait Republish: Send + Sync {
    fn republish(&self);
}

/// No publication (tests of the node half alone, or until a publisher is configured).
pub struct NoPublish;

impl Republish for NoPublish {
    fn republish(&self) {}
}

pub struct Options {
    /// The node's name: the pool this node's devices are published in.
    pub node_name: String,
    pub cdi_dir: PathBuf,
    /// Counted MPS shares per GPU (see [`devices::wanted`]).
    pub mps_shares: u32,
}

/// One prepared device, as the kubelet is told of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Prepared {
    pub request: String,
    pub pool: String,
    pub device: String,
    pub cdi_id: String,
}

pub struct Node {
    cfg: Config,
    opts: Options,
    claims: Box<dyn ClaimSource>,
    publish: Box<dyn Republish>,
    /// One prepare or unprepare at a time: the kubelet may send several claims at once, and the
    /// spec-after-grants order holds per claim only if no two calls interleave on it.
    busy: Mutex<()>,
}

impl Node {
    pub fn new(
        cfg: Config,
        opts: Options,
        claims: Box<dyn ClaimSource>,
        publish: Box<dyn Republish>,
    ) -> Node {
        Node {
            cfg,
            opts,
            claims,
            publish,
            busy: Mutex::new(()),
        }
    }

    fn timeout(&self) -> Duration {
        Duration::from_millis(self.cfg.pool.lock_timeout_ms)
    }

    /// Prepare `claim`: its devices of this driver, with their CDI ids. A claim already
    /// prepared (its spec written, its leases held) is answered from its allocation, granting
    /// nothing. One whose spec outlived its leases (a ledger rebuilt without them, a lease
    /// released by hand) is granted again, at the same placements.
    pub fn prepare(&self, claim: &ClaimRef) -> Result<Vec<Prepared>, NodeError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let results = self.allocation(claim)?;
        let prepared: Vec<Prepared> = results
            .iter()
            .enumerate()
            .map(|(n, r)| Prepared {
                request: r.request.clone(),
                pool: r.pool.clone(),
                device: r.device.clone(),
                cdi_id: cdi::qualified(&cdi::device_name(&claim.uid, n)),
            })
            .collect();
        let cdi_err = |source| NodeError::Cdi {
            claim: claim.to_string(),
            source,
        };
        let stale = cdi::read(&self.opts.cdi_dir, &claim.uid)
            .map_err(cdi_err)?
            .is_some();
        if stale {
            let held = claim_leases(&ledger::snapshot(&self.cfg.state_dir)?, Some(&claim.uid));
            let all_held = (0..results.len())
                .all(|n| held.contains(&Owner::claim_lease_id(&cdi::device_name(&claim.uid, n))));
            if all_held {
                return Ok(prepared);
            }
            tracing::warn!(
                "{claim}: its CDI spec names devices the ledger no longer leases to it; granting them again"
            );
        }
        let mut edits = Vec::with_capacity(results.len());
        for (n, r) in results.iter().enumerate() {
            match self.grant(claim, n, r) {
                Ok(edit) => edits.push((cdi::device_name(&claim.uid, n), edit)),
                Err(e) => {
                    // Nothing of this claim is handed out any more: undo it all, and take a
                    // spec that outlived its leases away from the containers still to come.
                    if stale {
                        if let Err(e) = cdi::remove(&self.opts.cdi_dir, &claim.uid) {
                            tracing::warn!("{claim}: {e}");
                        }
                    }
                    self.release_claim(claim);
                    return Err(e);
                }
            }
        }
        gpushare_core::failpoint!("dra.prepare.granted");
        let refs: Vec<(String, &gpushare_core::spec::Edit)> =
            edits.iter().map(|(name, e)| (name.clone(), e)).collect();
        if let Err(e) = cdi::write(&self.opts.cdi_dir, &claim.uid, &refs) {
            self.release_claim(claim);
            return Err(cdi_err(e));
        }
        gpushare_core::failpoint!("dra.prepare.written");
        self.publish.republish();
        Ok(prepared)
    }

    /// Unprepare `claim`: its spec goes first (no new container gets its devices), then its
    /// leases (MIG instances back to the warm pool). Unpreparing a claim this node never
    /// prepared, or twice, does nothing.
    pub fn unprepare(&self, claim: &ClaimRef) -> Result<(), NodeError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        cdi::remove(&self.opts.cdi_dir, &claim.uid).map_err(|source| NodeError::Cdi {
            claim: claim.to_string(),
            source,
        })?;
        gpushare_core::failpoint!("dra.unprepare.removed");
        let st = ledger::snapshot(&self.cfg.state_dir)?;
        let mut released = false;
        for id in claim_leases(&st, Some(&claim.uid)) {
            released |= allocator::release(&self.cfg, &id, self.timeout()).map_err(|source| {
                NodeError::Release {
                    claim: claim.to_string(),
                    device: device_of(&id).to_string(),
                    source: Box::new(source),
                }
            })?;
        }
        if released {
            self.publish.republish();
        }
        Ok(())
    }

    /// Publish the pool as it is now: at start, and from time to time, since grants of the
    /// RuntimeClass path change the same ledger without telling the plugin.
    pub fn republish(&self) {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        self.publish.republish();
    }

    /// At start, before serving (and publishing): release every claim lease whose claim has no
    /// spec (a plugin killed between a grant and its spec, or between removing a spec and the
    /// release). The kubelet retries a prepare it got no answer for. Returns the devices
    /// released.
    pub fn repair(&self) -> Result<Vec<String>, NodeError> {
        let _busy = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        let swept = gpushare_core::fsutil::sweep_temp(&self.opts.cdi_dir, Duration::ZERO);
        for t in swept {
            tracing::warn!(
                "removed {}, a CDI spec a killed plugin was writing",
                t.display()
            );
        }
        let with_spec = cdi::claims(&self.opts.cdi_dir);
        let st = ledger::snapshot(&self.cfg.state_dir)?;
        let mut released = Vec::new();
        for id in claim_leases(&st, None) {
            let device = device_of(&id);
            if with_spec
                .iter()
                .any(|uid| claim_of(device) == Some(uid.as_str()))
            {
                continue;
            }
            match allocator::release(&self.cfg, &id, self.timeout()) {
                Ok(true) => {
                    tracing::warn!(
                        "released claim device {device}: granted, but its CDI spec was never written (or already removed) when the plugin stopped"
                    );
                    released.push(device.to_string());
                }
                Ok(false) => {}
                Err(e) => tracing::warn!("cannot release claim device {device}: {e}"),
            }
        }
        Ok(released)
    }

    /// The claim's allocation results of this driver, checked against the kubelet's view.
    fn allocation(
        &self,
        claim: &ClaimRef,
    ) -> Result<Vec<DeviceRequestAllocationResult>, NodeError> {
        let rc = self.claims.get(claim)?;
        let found = rc.metadata.uid.clone().unwrap_or_default();
        if found != claim.uid {
            return Err(NodeError::Uid {
                claim: claim.to_string(),
                found,
            });
        }
        let results = rc
            .status
            .and_then(|s| s.allocation)
            .and_then(|a| a.devices)
            .and_then(|d| d.results)
            .ok_or_else(|| NodeError::NotAllocated {
                claim: claim.to_string(),
            })?;
        let drivers: std::collections::BTreeSet<String> =
            results.iter().map(|r| r.driver.clone()).collect();
        let ours: Vec<DeviceRequestAllocationResult> =
            results.into_iter().filter(|r| r.driver == DRIVER).collect();
        if ours.is_empty() {
            // Answered as prepared, the pod would start without the GPU it asked for.
            return Err(NodeError::NoDevice {
                claim: claim.to_string(),
                drivers: if drivers.is_empty() {
                    "no device".to_string()
                } else {
                    format!(
                        "only {}",
                        drivers.into_iter().collect::<Vec<_>>().join(", ")
                    )
                },
            });
        }
        if let Some(r) = ours.iter().find(|r| r.pool != self.opts.node_name) {
            return Err(NodeError::OtherPool {
                claim: claim.to_string(),
                device: r.device.clone(),
                pool: r.pool.clone(),
                node: self.opts.node_name.clone(),
            });
        }
        Ok(ours)
    }

    /// Grant the `n`-th device of `claim` (or find it granted) and return its edit.
    fn grant(
        &self,
        claim: &ClaimRef,
        n: usize,
        r: &DeviceRequestAllocationResult,
    ) -> Result<gpushare_core::spec::Edit, NodeError> {
        let wanted = devices::wanted(&self.cfg, r, self.opts.mps_shares).map_err(|source| {
            NodeError::Device {
                claim: claim.to_string(),
                source: Box::new(source),
            }
        })?;
        let id = Owner::claim_lease_id(&cdi::device_name(&claim.uid, n));
        let who = Claimant {
            container_id: &id,
            runtime_root: None,
        };
        let granted = grant::for_claim(&self.cfg, &wanted.request, wanted.mig_start, &who)
            .map_err(|source| NodeError::Grant {
                claim: claim.to_string(),
                device: r.device.clone(),
                source: Box::new(source),
            })?;
        tracing::info!(
            claim = %claim,
            device = %r.device,
            uuid = %granted.uuid,
            warm = granted.warm,
            fresh = granted.fresh,
            "granted"
        );
        Ok(granted.edit)
    }

    /// Release whatever `claim` holds, after a prepare that failed part-way.
    fn release_claim(&self, claim: &ClaimRef) {
        let Ok(st) = ledger::snapshot(&self.cfg.state_dir) else {
            return;
        };
        for id in claim_leases(&st, Some(&claim.uid)) {
            if let Err(e) = allocator::release(&self.cfg, &id, self.timeout()) {
                tracing::warn!("{claim}: cannot release {id} after a failed prepare: {e}");
            }
        }
        // What was made for it stays, idle: a device the node now offers warm.
        self.publish.republish();
    }
}

/// The lease ids of claim devices in `st` (of claim `uid` only, when given).
fn claim_leases(st: &LedgerState, uid: Option<&str>) -> Vec<String> {
    let mut out: Vec<String> = st
        .leases()
        .filter(|l| match l.owner() {
            Owner::Claim(device) => uid.is_none_or(|u| claim_of(device) == Some(u)),
            Owner::Container(_) => false,
        })
        .map(|l| l.container_id.clone())
        .collect();
    out.sort();
    out.dedup();
    out
}

/// The device part of a claim lease id.
fn device_of(id: &str) -> &str {
    match Owner::of(id) {
        Owner::Claim(device) | Owner::Container(device) => device,
    }
}

/// The claim UID of a CDI device name `<claim-uid>-<n>`.
fn claim_of(device: &str) -> Option<&str> {
    device.rsplit_once('-').map(|(uid, _)| uid)
}
