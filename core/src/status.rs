//! What `gpusharectl status` shows: the GPUs as NVML sees them, every MIG instance (gpushare's,
//! busy or idle, and anyone else's), the leases, and free capacity per profile.

use crate::config::Config;
use crate::ledger::{self, LedgerState};
use crate::nvml::{self, Backend};
use crate::placement;
use serde::Serialize;

#[derive(Debug, Serialize)]
pub struct Status {
    pub driver_version: Option<String>,
    pub gpus: Vec<GpuStatus>,
    pub leases: Vec<LeaseStatus>,
    pub stats: ledger::Stats,
}

#[derive(Debug, Serialize)]
pub struct GpuStatus {
    pub index: u32,
    pub uuid: String,
    pub name: String,
    pub mig_enabled: bool,
    pub instances: Vec<InstanceStatus>,
    /// How many more instances of each profile could be made now.
    pub free: Vec<(String, u32)>,
    /// Grants (warm: from the idle pool) and refusals for lack of room on this GPU.
    pub counters: crate::metrics::GpuCounters,
    /// NVML's MIG profile table (answered even while MIG is disabled).
    pub profiles: Vec<placement::Profile>,
    /// MPS daemon and time-slice users on this GPU.
    pub mps: Option<MpsStatus>,
    pub timeslice_containers: Vec<String>,
}

#[derive(Debug, Serialize)]
pub struct MpsStatus {
    pub pid: Option<u32>,
    pub running: bool,
    /// The daemon's defaults: enforced on every client, which can only go lower.
    pub enforced_percent: u8,
    pub enforced_memory_mib: Option<u64>,
    /// (container, percent, memory MiB): what each container's env asks for.
    pub clients: Vec<(String, u8, Option<u64>)>,
}

#[derive(Debug, Serialize)]
pub struct InstanceStatus {
    pub profile: String,
    pub gi: u32,
    pub ci: Option<u32>,
    pub placement: placement::Slot,
    pub mig_uuid: Option<String>,
    /// "busy", "idle", or "foreign" (made by someone else).
    pub state: &'static str,
    pub container_id: Option<String>,
}

#[derive(Debug, Serialize)]
pub struct LeaseStatus {
    pub container_id: String,
    pub gpu: u32,
    pub profile: String,
    pub mig_uuid: String,
    pub since: u64,
}

pub fn collect(cfg: &Config) -> Result<Status, crate::allocator::AllocError> {
    let st: LedgerState = ledger::snapshot(&cfg.state_dir)?;
    let be = Backend::open(cfg)?;
    let mut gpus = Vec::new();
    for g in be.gpus()? {
        let profiles = be.profiles(g.index)?;
        let mig_enabled = g.mig_mode.is_some_and(|(current, _)| current);
        let existing = if mig_enabled {
            be.gpu_instances(g.index, &profiles)?
        } else {
            Vec::new()
        };
        let occupied = nvml::occupancy(&existing);
        let instances = existing
            .iter()
            .map(|gi| {
                let ours = st.instances.iter().find(|r| {
                    r.gpu_uuid == g.uuid
                        && r.made.as_ref().is_some_and(|m| m.gi == gi.id)
                        && r.slot == gi.slot
                });
                let name = profiles
                    .iter()
                    .find(|p| p.id == gi.profile_id)
                    .map_or_else(|| format!("profile {}", gi.profile_id), |p| p.name.clone());
                InstanceStatus {
                    profile: name,
                    gi: gi.id,
                    ci: gi.compute_instances.first().copied(),
                    placement: gi.slot,
                    mig_uuid: ours.and_then(|r| r.made.as_ref().map(|m| m.mig_uuid.clone())),
                    state: match ours {
                        Some(r) if r.lease.is_some() => "busy",
                        Some(_) => "idle",
                        None => "foreign",
                    },
                    container_id: ours
                        .and_then(|r| r.lease.as_ref().map(|l| l.container_id.clone())),
                }
            })
            .collect();
        let free = if mig_enabled {
            profiles
                .iter()
                .map(|p| (p.name.clone(), placement::capacity(p, &occupied)))
                .collect()
        } else {
            Vec::new()
        };
        let counters = st.stats.per_gpu.get(&g.uuid).cloned().unwrap_or_default();
        let mps = st
            .mps
            .iter()
            .find(|d| d.gpu_uuid == g.uuid)
            .map(|d| MpsStatus {
                pid: d.pid,
                running: crate::mps::alive(d),
                enforced_percent: d.percent,
                enforced_memory_mib: d.memory.map(|m| m >> 20),
                clients: d
                    .clients
                    .iter()
                    .map(|c| {
                        (
                            c.lease.container_id.clone(),
                            c.percent,
                            c.memory.map(|m| m >> 20),
                        )
                    })
                    .collect(),
            });
        let timeslice_containers = st
            .shares
            .iter()
            .filter(|s| s.gpu_uuid == g.uuid)
            .map(|s| s.lease.container_id.clone())
            .collect();
        gpus.push(GpuStatus {
            profiles: profiles.clone(),
            mps,
            timeslice_containers,
            counters,
            index: g.index,
            uuid: g.uuid,
            name: g.name,
            mig_enabled,
            instances,
            free,
        });
    }
    let leases = st
        .instances
        .iter()
        .filter_map(|r| {
            let l = r.lease.as_ref()?;
            Some(LeaseStatus {
                container_id: l.container_id.clone(),
                gpu: r.gpu_index,
                profile: r.profile.clone(),
                mig_uuid: r
                    .made
                    .as_ref()
                    .map_or_else(|| "(being made)".into(), |m| m.mig_uuid.clone()),
                since: l.since,
            })
        })
        .collect();
    Ok(Status {
        driver_version: be.driver_version(),
        gpus,
        leases,
        stats: st.stats,
    })
}

/// The table a person reads.
pub fn render(s: &Status) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let _ = writeln!(
        out,
        "driver {}",
        s.driver_version.as_deref().unwrap_or("unknown")
    );
    for g in &s.gpus {
        let mig = if g.mig_enabled {
            "MIG enabled"
        } else {
            "MIG disabled"
        };
        let _ = writeln!(out, "\nGPU {}  {}  {}  {}", g.index, g.name, g.uuid, mig);
        if g.instances.is_empty() {
            let _ = writeln!(out, "  no MIG instances");
        } else {
            let _ = writeln!(
                out,
                "  {:<12} {:>3} {:>3} {:<9} {:<8} {:<42} CONTAINER",
                "PROFILE", "GI", "CI", "SLOTS", "STATE", "MIG UUID"
            );
            for i in &g.instances {
                let slots = format!(
                    "{}-{}",
                    i.placement.start,
                    i.placement.start + i.placement.size - 1
                );
                let _ = writeln!(
                    out,
                    "  {:<12} {:>3} {:>3} {:<9} {:<8} {:<42} {}",
                    i.profile,
                    i.gi,
                    i.ci.map_or("-".into(), |c| c.to_string()),
                    slots,
                    i.state,
                    i.mig_uuid.as_deref().unwrap_or("-"),
                    i.container_id.as_deref().unwrap_or("-")
                );
            }
        }
        if g.mig_enabled {
            let free: Vec<String> = g.free.iter().map(|(p, n)| format!("{p} x{n}")).collect();
            let _ = writeln!(out, "  free: {}", free.join(", "));
        } else if !g.profiles.is_empty() {
            let names: Vec<&str> = g.profiles.iter().map(|p| p.name.as_str()).collect();
            let _ = writeln!(
                out,
                "  MIG profiles (once MIG is enabled): {}",
                names.join(", ")
            );
        }
        if let Some(m) = &g.mps {
            let _ = writeln!(
                out,
                "  MPS daemon pid {} {}: enforced on every client: {}% of SMs, {} pinned memory per process",
                m.pid.map_or("-".into(), |p| p.to_string()),
                if m.running { "running" } else { "NOT RUNNING" },
                m.enforced_percent,
                m.enforced_memory_mib.map_or("no limit on".into(), |v| format!("{v} MiB"))
            );
            for (id, pct, mem) in &m.clients {
                let mem = mem.map_or(String::new(), |v| format!(", {v} MiB"));
                let _ = writeln!(out, "    {id}: asks {pct}%{mem} (its own env: cooperative below the enforced ceiling)");
            }
        }
        if !g.timeslice_containers.is_empty() {
            let _ = writeln!(
                out,
                "  time-sliced (no isolation): {}",
                g.timeslice_containers.join(", ")
            );
        }
        let c = &g.counters;
        let _ = writeln!(
            out,
            "  grants: {} warm, {} cold (warm-pool hit rate {}); refused for lack of room: {}",
            c.grants_warm,
            c.grants_cold,
            c.warm_hit_rate()
                .map_or_else(|| "-".to_string(), |r| format!("{:.0}%", r * 100.0)),
            c.refused_no_room
        );
    }
    let _ = writeln!(out, "\nleases: {}", s.leases.len());
    for l in &s.leases {
        let _ = writeln!(
            out,
            "  {}  GPU {}  {}  {}  since {}",
            l.container_id, l.gpu, l.profile, l.mig_uuid, l.since
        );
    }
    let _ = writeln!(
        out,
        "grants: {} warm ({} of them by gpushare itself, from the offers), {} cold; refused for lack of room: {}",
        s.stats.grants_warm,
        s.stats.grants_by_entry,
        s.stats.grants_cold,
        s.stats.refused_no_room
    );
    out
}
