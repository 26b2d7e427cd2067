//! Time-slicing (`gpu.share=timeslice`): the whole GPU, shared with whoever else asked, with no
//! isolation and no limits. The GPU list comes from the ledger's cache; NVML is opened only
//! while that cache is empty.

use crate::config::Config;
use crate::driver;
use crate::fsutil::now_unix;
use crate::gpu::Gpu;
use crate::gpus::{known_gpus, select, GpuError};
use crate::ledger::{Claimant, GpuRecord, Lease, Ledger, ShareLease};
use crate::node::Node;
use crate::request::DeviceSelector;
use crate::spec::Edit;
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum ShareError {
    #[error(transparent)]
    Gpu(#[from] GpuError),
    #[error("{what}: {gpus} has MIG enabled, so CUDA sees no whole GPU there, and gpushare does not turn it off: {why}; ask for a MIG slice (gpu.profile) instead, or an operator disables MIG with `nvidia-smi -i <index> -mig 0`")]
    MigEnabled {
        what: &'static str,
        gpus: String,
        why: String,
    },
    #[error("gpu.share=timeslice: {gpus} serves MPS shares; the whole GPU cannot be given beside them (ask for gpu.mps, or another gpu.device)")]
    ServesMps { gpus: String },
}

crate::gpus::from_gpu_errors!(ShareError);

/// A whole GPU granted to a container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WholeGpu {
    pub gpu_uuid: String,
    pub edit: Edit,
    pub warm: bool,
    /// Taken by this call (false: the container already held it).
    pub fresh: bool,
}

/// The edit that gives a container one whole GPU: the shared nodes and the GPU's own node.
pub fn whole_gpu_edit(majors: &driver::Majors, gpu: &GpuRecord) -> Edit {
    Edit {
        devices: driver::gpu_nodes(majors, gpu.minor),
        env: vec![
            ("CUDA_VISIBLE_DEVICES".into(), gpu.uuid.clone()),
            ("NVIDIA_VISIBLE_DEVICES".into(), gpu.uuid.clone()),
        ],
        ..Edit::default()
    }
}

pub fn grant(
    cfg: &Config,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<WholeGpu, ShareError> {
    let be = crate::nvml::OnDemand::new(cfg);
    grant_on(cfg, &be, &crate::node::Host::new(cfg), device, who)
}

/// [`grant`] on `be`'s GPUs and `node`'s driver files.
pub fn grant_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    device: Option<&DeviceSelector>,
    who: &Claimant<'_>,
) -> Result<WholeGpu, ShareError> {
    let majors = node.majors()?;
    let locked =
        Ledger::new(&cfg.state_dir).lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut st = locked.load()?;
    let mut warm = known_gpus(be, &mut st)?;
    // A GPU a crash left in EXCLUSIVE_PROCESS would admit one time-sliced container only.
    crate::compute_mode::repair_and_save(be, &locked, &mut st)?;
    crate::mig_mode::repair_and_save(be, node, &locked, &mut st)?;
    let mut candidates: Vec<GpuRecord> = select(&st, device)?.into_iter().cloned().collect();
    let mut usable: Vec<GpuRecord> = candidates
        .iter()
        .filter(|g| !g.mig_enabled)
        .cloned()
        .collect();
    if usable.is_empty()
        && st
            .shares
            .iter()
            .all(|s| s.lease.container_id != who.container_id)
    {
        // No GPU out of MIG mode: mig.manage_mode may turn one off.
        let uuids: Vec<String> = candidates.iter().map(|g| g.uuid.clone()).collect();
        match crate::mig_mode::switch_off_one(cfg, be, &locked, &mut st, &uuids)? {
            Ok(uuid) => {
                warm = false;
                candidates = select(&st, device)?.into_iter().cloned().collect();
                usable = candidates
                    .iter()
                    .filter(|g| g.uuid == uuid)
                    .cloned()
                    .collect();
            }
            Err(why) => {
                let gpus = candidates
                    .iter()
                    .map(|g| format!("GPU {}", g.index))
                    .collect::<Vec<_>>()
                    .join(", ");
                return Err(ShareError::MigEnabled {
                    what: "gpu.share=timeslice",
                    gpus,
                    why: crate::mig_mode::explain(&why),
                });
            }
        }
    }
    // A time-sliced container on a GPU that serves MPS shares would take the whole GPU beside
    // clients whose shares the MPS daemon is meant to bound.
    let usable: Vec<&GpuRecord> = usable
        .iter()
        .filter(|g| !st.mps.iter().any(|d| d.gpu_uuid == g.uuid))
        .collect();
    if usable.is_empty() {
        return Err(ShareError::ServesMps {
            gpus: candidates
                .iter()
                .map(|g| format!("GPU {}", g.index))
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    // The GPU fewest containers share now.
    let load = |g: &GpuRecord| st.shares.iter().filter(|s| s.gpu_uuid == g.uuid).count();
    let gpu = (*usable
        .iter()
        .min_by_key(|g| (load(g), g.index))
        .expect("not empty"))
    .clone();
    if let Some(existing) = st
        .shares
        .iter()
        .find(|s| s.lease.container_id == who.container_id)
    {
        // The same container asking again keeps its GPU.
        let same = st
            .gpus
            .iter()
            .find(|g| g.uuid == existing.gpu_uuid)
            .cloned()
            .unwrap_or(gpu);
        return Ok(WholeGpu {
            fresh: false,
            gpu_uuid: same.uuid.clone(),
            edit: whole_gpu_edit(&majors, &same),
            warm: true,
        });
    }
    st.shares.push(ShareLease {
        gpu_uuid: gpu.uuid.clone(),
        gpu_index: gpu.index,
        gpu_minor: gpu.minor,
        lease: Lease {
            container_id: who.container_id.to_string(),
            since: now_unix(),
            runtime_root: who.runtime_root.map(str::to_string),
        },
    });
    crate::mig_mode::settled(&mut st, &gpu.uuid);
    locked.save(&st)?;
    Ok(WholeGpu {
        fresh: true,
        gpu_uuid: gpu.uuid.clone(),
        edit: whole_gpu_edit(&majors, &gpu),
        warm,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};

    fn who(id: &str) -> Claimant<'_> {
        Claimant {
            container_id: id,
            runtime_root: None,
        }
    }

    #[test]
    fn the_first_grant_learns_the_gpus_and_later_ones_ask_nvml_nothing() {
        let s = Scratch::new("share-cache");
        let gpu = FakeGpu::h100(2);
        gpu.set_mig(1, false);
        let node = FakeNode::new(&gpu);

        let a = grant_on(&s.cfg, &gpu, &node, None, &who("a")).unwrap();
        assert!(!a.warm && a.fresh);
        assert_eq!(a.gpu_uuid, gpu.info(1).uuid, "GPU 0 has MIG on");
        assert!(gpu.calls().contains(&Call::Gpus));
        assert!(a
            .edit
            .devices
            .iter()
            .any(|d| d.path == "/dev/nvidia1" && (d.major, d.minor) == (195, 1)));
        gpu.clear_calls();

        let b = grant_on(&s.cfg, &gpu, &node, None, &who("b")).unwrap();
        assert!(b.warm && b.fresh);
        assert_eq!(b.gpu_uuid, a.gpu_uuid);
        assert_eq!(gpu.calls(), Vec::<Call>::new());

        let err = grant_on(
            &s.cfg,
            &gpu,
            &node,
            Some(&DeviceSelector::Index(0)),
            &who("c"),
        )
        .unwrap_err();
        assert!(matches!(err, ShareError::MigEnabled { .. }), "{err:?}");
        assert!(err.to_string().contains("GPU 0 has MIG enabled"), "{err}");
        assert!(err.to_string().contains("mig.manage_mode is off"), "{err}");
        assert_eq!(s.ledger().shares.len(), 2);
    }

    #[test]
    fn a_gpu_an_operator_took_out_of_mig_mode_is_served_though_the_cache_says_mig() {
        let s = Scratch::new("share-stale");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let g =
            crate::allocator::allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("m")).unwrap();
        crate::allocator::release(&s.cfg, "m", Duration::from_secs(5)).unwrap();
        assert!(s.ledger().gpus[0].mig_enabled);
        // `nvidia-smi -mig 0` behind gpushare's back, after destroying the instance.
        gpu.vanish(0, g.gi);
        gpu.set_mig(0, false);
        let a = grant_on(&s.cfg, &gpu, &node, None, &who("a")).unwrap();
        assert_eq!(a.gpu_uuid, gpu.info(0).uuid);
        assert!(!gpu
            .calls()
            .iter()
            .any(|c| matches!(c, Call::SetMigMode { .. })));
        assert!(!s.ledger().gpus[0].mig_enabled, "the cache caught up");
    }

    #[test]
    fn mig_is_turned_off_for_a_whole_gpu_once_its_instances_are_idle() {
        let mut s = Scratch::new("share-switch");
        s.cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        crate::allocator::allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who("m")).unwrap();
        let err = grant_on(&s.cfg, &gpu, &node, None, &who("a")).unwrap_err();
        assert!(
            err.to_string().contains("m hold(s) it"),
            "the slice's container: {err}"
        );
        assert_eq!(gpu.info(0).mig_mode, Some((true, true)));
        crate::allocator::release(&s.cfg, "m", Duration::from_secs(5)).unwrap();

        let a = grant_on(&s.cfg, &gpu, &node, None, &who("a")).unwrap();
        assert_eq!(a.gpu_uuid, gpu.info(0).uuid);
        assert_eq!(gpu.info(0).mig_mode, Some((false, false)));
        assert!(gpu.instances(0).is_empty(), "the idle slice went first");
        let st = s.ledger();
        assert!(st.instances.is_empty() && st.mig_modes.is_empty());
        assert!(!st.gpus[0].mig_enabled);
        // A MIG request now: refused while the whole GPU is held, naming its holder.
        let err = crate::allocator::allocate_on(&s.cfg, &gpu, &node, "1g.10gb", None, &who("b"))
            .unwrap_err();
        assert!(err.to_string().contains("a hold(s) it"), "{err}");
    }
}
