//! Ledger records of H100s and their MIG instances, as a test's scene: the device tables of
//! core and of the DRA plugin are built from the same ones.

use super::gpu::h100_profiles;
use crate::ledger::{GpuRecord, InstanceRecord, Lease, Made, Owner};
use crate::placement::Slot;

/// GPU `index` of an H100 node, in MIG mode if `mig`.
pub fn gpu_record(index: u32, mig: bool) -> GpuRecord {
    GpuRecord {
        index,
        uuid: format!("GPU-{index:04}"),
        name: "NVIDIA H100 80GB HBM3".into(),
        minor: index,
        profiles: h100_profiles(),
        memory_total: 80 << 30,
        mig_enabled: mig,
    }
}

/// A made `profile` instance of `g` at slice `start`: leased to a claim of its own, or idle.
pub fn instance_record(g: &GpuRecord, profile: &str, start: u32, leased: bool) -> InstanceRecord {
    let p = g.profiles.iter().find(|p| p.name == profile).unwrap();
    InstanceRecord {
        gpu_uuid: g.uuid.clone(),
        gpu_index: g.index,
        gpu_minor: g.minor,
        profile: p.name.clone(),
        profile_id: p.id,
        slot: *p.placements.iter().find(|s| s.start == start).unwrap(),
        made: Some(Made {
            gi: start,
            ci: 0,
            mig_uuid: format!("MIG-{}-{start}", g.index),
            gi_cap_minor: 0,
            ci_cap_minor: 0,
        }),
        created_at: 0,
        lease: leased.then(|| Lease {
            container_id: Owner::claim_lease_id(&format!("uid-{}-{start}-0", g.index)),
            since: 0,
            runtime_root: None,
        }),
        idle_since: (!leased).then_some(1),
        mps: false,
    }
}

/// An H100 `profile` instance at `slot` on GPU 0 (`gpu_uuid`) whose creation was never
/// recorded as done (`made: None`), as a grant that died half-way leaves it: leased to
/// `holder`, or to no one.
pub fn unmade_instance_record(
    gpu_uuid: &str,
    profile: &str,
    slot: Slot,
    holder: Option<&str>,
) -> InstanceRecord {
    let p = h100_profiles()
        .into_iter()
        .find(|p| p.name == profile)
        .unwrap();
    InstanceRecord {
        gpu_uuid: gpu_uuid.into(),
        gpu_index: 0,
        gpu_minor: 0,
        profile: p.name,
        profile_id: p.id,
        slot,
        made: None,
        created_at: 1,
        lease: holder.map(|id| Lease {
            container_id: id.into(),
            since: 1,
            runtime_root: None,
        }),
        idle_since: None,
        mps: false,
    }
}
