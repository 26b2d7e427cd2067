//! `gpusharectl repair`: rebuild the ledger's MIG records when the ledger is lost or corrupt,
//! from what survives it: the driver's instances (NVML), gpushare's instance log
//! ([`crate::instance_log`]) and the low-level runtimes' containers, whose specs name the MIG
//! UUID they were granted. An instance a container's spec names is leased to that container,
//! one gpushare made that no container names goes back to the idle pool, a half-made one is
//! destroyed, and one neither gpushare's log nor a gpushare request names stays foreign. So
//! nothing is stranded and nothing a container runs on can be granted again.
//!
//! Also the container scan `gc` uses to find who holds an instance it adopts.

use crate::config::Config;
use crate::fsutil::now_unix;
use crate::gc::Foreign;
use crate::gpu::{BackendError, Gpu};
use crate::ledger::{InstanceRecord, Lease, Ledger, LedgerError, LedgerState, Made};
use crate::node::Node;
use serde::Serialize;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Debug, thiserror::Error)]
pub enum RepairError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error(transparent)]
    Driver(#[from] crate::driver::DriverError),
    #[error("cannot move the corrupt ledger {path} aside to {to}: {source}")]
    MoveAside {
        path: PathBuf,
        to: PathBuf,
        source: std::io::Error,
    },
}

/// Where low-level runtimes keep their containers' state when nobody names a root: runc's and
/// crun's defaults, and the roots Docker and containerd give runc.
const DEFAULT_ROOTS: &[&str] = &[
    "/run/runc",
    "/run/crun",
    "/run/docker/runtime-runc/moby",
    "/run/containerd/runc/k8s.io",
    "/run/containerd/runc/default",
    "/run/containerd/runc/moby",
];

/// A container a runtime has, and the MIG UUIDs its spec names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Container {
    pub root: String,
    pub id: String,
    pub migs: Vec<String>,
    /// The spec carries a gpushare request (`gpu.profile`, or `GPUSHARE_PROFILE` in its env).
    pub requested: bool,
}

/// The runtime roots to scan: `extra` (the operator's), the defaults, the roots gpushare's
/// instance log and the ledger's leases name, and those a corrupt ledger's text and the
/// journal's grants still name.
pub fn roots(
    cfg: &Config,
    st: &LedgerState,
    salvage: Option<&[u8]>,
    extra: &[String],
) -> Vec<String> {
    let mut out: Vec<String> = extra.to_vec();
    out.extend(DEFAULT_ROOTS.iter().map(|s| s.to_string()));
    out.extend(crate::instance_log::roots(&crate::instance_log::owned(
        &cfg.state_dir,
    )));
    let leases = st
        .instances
        .iter()
        .filter_map(|r| r.lease.as_ref())
        .chain(st.shares.iter().map(|s| &s.lease))
        .chain(
            st.mps
                .iter()
                .flat_map(|d| d.clients.iter().map(|c| &c.lease)),
        );
    out.extend(leases.filter_map(|l| l.runtime_root.clone()));
    if let Some(raw) = salvage {
        out.extend(quoted_after(
            &String::from_utf8_lossy(raw),
            "\"runtime_root\":",
        ));
    }
    let journal = std::fs::read(Ledger::new(&cfg.state_dir).journal_path()).unwrap_or_default();
    for e in gpushare_fastpath::journal::entries(&journal) {
        if let gpushare_fastpath::journal::Entry::Grant {
            runtime_root: Some(r),
            ..
        } = e
        {
            out.push(String::from_utf8_lossy(r).into_owned());
        }
    }
    let mut seen = std::collections::BTreeSet::new();
    out.retain(|r| r.starts_with('/') && seen.insert(r.clone()));
    out
}

/// Every JSON string that follows `key` in `text` (a ledger too damaged to parse may still
/// name its leases' roots).
fn quoted_after(text: &str, key: &str) -> Vec<String> {
    text.match_indices(key)
        .filter_map(|(i, _)| {
            let rest = text[i + key.len()..].trim_start().strip_prefix('"')?;
            let end = rest.find('"')?;
            Some(rest[..end].to_string())
        })
        .collect()
}

/// The containers under `roots`: runc keeps `<root>/<id>/state.json` (the bundle in its
/// labels), crun `<root>/<id>/status` (with `bundle`) and a copy of the spec.
pub fn scan(roots: &[String]) -> Vec<Container> {
    let mut out = Vec::new();
    for root in roots {
        let Ok(dir) = std::fs::read_dir(root) else {
            continue;
        };
        for e in dir.flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            let Some(spec) = spec_of(&e.path()) else {
                continue;
            };
            let migs = crate::running::mig_uuids(&spec);
            let env: Vec<&str> = spec["process"]["env"]
                .as_array()
                .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
                .unwrap_or_default();
            let requested = spec["annotations"].get("gpu.profile").is_some()
                || env.iter().any(|v| v.starts_with("GPUSHARE_PROFILE="));
            out.push(Container {
                root: root.clone(),
                id,
                migs,
                requested,
            });
        }
    }
    out
}

/// The OCI spec of the container whose state directory is `dir`.
fn spec_of(dir: &Path) -> Option<serde_json::Value> {
    use crate::running::read_json;
    // Read as every spec gpushare reads: a regular file, no symlink, bounded.
    let spec = |p: &Path| {
        let raw = crate::trust::read_spec(p).ok()?;
        serde_json::from_slice(&raw).ok()
    };
    if let Some(state) = read_json(&dir.join("state.json")) {
        let bundle = state["config"]["labels"].as_array().and_then(|l| {
            l.iter()
                .filter_map(|v| v.as_str())
                .find_map(|v| v.strip_prefix("bundle="))
        })?;
        return spec(&Path::new(bundle).join("config.json"));
    }
    if let Some(copy) = spec(&dir.join("config.json")) {
        return Some(copy);
    }
    let status = read_json(&dir.join("status"))?;
    spec(&Path::new(status["bundle"].as_str()?).join("config.json"))
}

#[derive(Debug, Clone, Default)]
pub struct RepairOptions {
    /// Report only: nothing moved, destroyed or written.
    pub dry_run: bool,
    /// Runtime state roots to scan besides the defaults.
    pub roots: Vec<String>,
}

#[derive(Debug, Default, Serialize)]
pub struct RepairReport {
    pub dry_run: bool,
    /// Where the corrupt ledger was moved.
    pub moved_aside: Option<PathBuf>,
    /// The runtime roots scanned.
    pub roots: Vec<String>,
    /// Instances recorded: "<profile> GI <gi> on GPU <n>: leased to <id>" or "idle".
    pub recorded: Vec<String>,
    /// Half-made instances of gpushare's, destroyed.
    pub destroyed: Vec<String>,
    pub foreign: Vec<Foreign>,
    /// Instances more than one container's spec names: leased to the first, reported for a
    /// person to resolve (one of those containers must go).
    pub conflicts: Vec<String>,
    pub failed: Vec<String>,
}

impl RepairReport {
    pub fn render(&self) -> String {
        use std::fmt::Write;
        let mut out = String::new();
        let verb = if self.dry_run { "would " } else { "" };
        if let Some(p) = &self.moved_aside {
            let _ = writeln!(
                out,
                "{verb}move the corrupt ledger aside to {}",
                p.display()
            );
        }
        let _ = writeln!(out, "runtime roots scanned: {}", self.roots.join(", "));
        for r in &self.recorded {
            let _ = writeln!(out, "{verb}record {r}");
        }
        for d in &self.destroyed {
            let _ = writeln!(out, "{verb}destroy {d}");
        }
        for x in &self.foreign {
            let _ = writeln!(out, "{x}");
        }
        for c in &self.conflicts {
            let _ = writeln!(out, "CONFLICT: {c}");
        }
        for e in &self.failed {
            let _ = writeln!(out, "failed: {e}");
        }
        out
    }
}

/// Rebuild the ledger's MIG records; see the module docs. Holds the ledger's lock throughout.
pub fn run(cfg: &Config, opts: &RepairOptions) -> Result<RepairReport, RepairError> {
    run_on(
        cfg,
        &crate::nvml::OnDemand::new(cfg),
        &crate::node::Host::new(cfg),
        opts,
    )
}

/// [`run`] against `be`'s GPUs and `node`'s driver files.
pub fn run_on(
    cfg: &Config,
    be: &dyn Gpu,
    node: &dyn Node,
    opts: &RepairOptions,
) -> Result<RepairReport, RepairError> {
    let ledger = Ledger::new(&cfg.state_dir);
    let locked = ledger.lock(Duration::from_millis(cfg.pool.lock_timeout_ms))?;
    let mut report = RepairReport {
        dry_run: opts.dry_run,
        ..Default::default()
    };
    let (old, salvage) = match locked.load() {
        Ok(st) => (st, None),
        Err(LedgerError::Corrupt { path, .. }) => {
            let raw = std::fs::read(&path).unwrap_or_default();
            report.moved_aside =
                Some(path.with_file_name(format!("ledger.json.corrupt-{}", now_unix())));
            (LedgerState::default(), Some(raw))
        }
        Err(e) => return Err(e.into()),
    };
    report.roots = roots(cfg, &old, salvage.as_deref(), &opts.roots);
    let containers = scan(&report.roots);
    let owned = crate::instance_log::owned(&cfg.state_dir);
    let gpus = be.gpus()?;
    // Everything but the MIG records is kept from a readable ledger (empty from a corrupt one).
    let mut st = LedgerState {
        instances: Vec::new(),
        ..old.clone()
    };
    crate::allocator::refresh_gpus(be, &mut st, &gpus)?;
    let mut gone = Vec::new();
    let mut held: std::collections::BTreeSet<String> = Default::default();

    for g in &gpus {
        if !g.mig_mode.is_some_and(|(current, _)| current) {
            continue;
        }
        let profiles = st
            .gpus
            .iter()
            .find(|r| r.uuid == g.uuid)
            .map(|r| r.profiles.clone())
            .unwrap_or_default();
        for gi in be.gpu_instances(g.index, &profiles)? {
            let profile = profiles.iter().find(|p| p.id == gi.profile_id);
            let name =
                profile.map_or_else(|| format!("profile {}", gi.profile_id), |p| p.name.clone());
            let label = format!(
                "{name} GI {} at slot {} on GPU {}",
                gi.id, gi.slot.start, g.index
            );
            // gpushare made one compute instance spanning each GPU instance.
            let ci = gi.compute_instances.first().copied();
            let mig = ci.and_then(|ci| be.mig_uuid(g.index, gi.id, ci).ok());
            let by_ledger = old.instances.iter().any(|r| {
                r.gpu_uuid == g.uuid
                    && r.slot == gi.slot
                    && r.profile_id == gi.profile_id
                    && r.made.as_ref().is_none_or(|m| m.gi == gi.id)
            });
            let by_log = owned
                .iter()
                .any(|o| o.gpu == g.uuid && o.matches(gi.id, gi.profile_id, gi.slot));
            let named: Vec<&Container> = match &mig {
                Some(m) => containers.iter().filter(|c| c.migs.contains(m)).collect(),
                None => Vec::new(),
            };
            let by_request = named.iter().any(|c| c.requested);
            if !(by_ledger || by_log || by_request) {
                report.foreign.push(Foreign {
                    gpu: g.index,
                    gi: gi.id,
                    profile: name,
                    slot: gi.slot,
                });
                continue;
            }
            let (Some(ci), Some(mig), Some(profile)) = (ci, mig, profile) else {
                // Half made (or half destroyed): no container can use it.
                if !opts.dry_run {
                    if let Err(e) = be.destroy(g.index, gi.id, &gi.compute_instances) {
                        report.failed.push(format!("destroy {label}: {e}"));
                        continue;
                    }
                    gone.push(crate::instance_log::gone(&g.uuid, gi.slot));
                }
                report.destroyed.push(label);
                continue;
            };
            let (gi_cap_minor, ci_cap_minor) = node.cap_minors(g.minor, gi.id, ci)?;
            let holder = named.first().copied();
            if named.len() > 1 {
                report.conflicts.push(format!(
                    "{label} ({mig}) is named by the specs of {}: leased to {}; the others run on a slice that is not theirs",
                    named.iter().map(|c| format!("{} ({})", c.id, c.root)).collect::<Vec<_>>().join(", "),
                    named[0].id
                ));
            }
            if let Some(c) = holder {
                if !held.insert(c.id.clone()) {
                    report.conflicts.push(format!(
                        "container {} names more than one MIG instance; {label} is leased to it too",
                        c.id
                    ));
                }
            }
            let now = now_unix();
            // A lease the old ledger still holds for a container the runtime does not have yet
            // may be a `create` still running (granted, its state not yet written): kept while
            // younger than the grace period, as `gc` keeps it.
            let young = old
                .instances
                .iter()
                .filter(|r| r.made.as_ref().is_some_and(|m| m.mig_uuid == mig))
                .filter_map(|r| r.lease.clone())
                .find(|l| now.saturating_sub(l.since) < cfg.pool.gc_grace_s);
            let lease = match (holder, young) {
                (Some(c), _) => Some(Lease {
                    container_id: c.id.clone(),
                    since: now,
                    runtime_root: Some(c.root.clone()),
                }),
                (None, young) => young,
            };
            report.recorded.push(match (&lease, holder) {
                (Some(l), Some(c)) => format!("{label}: leased to container {} ({})", l.container_id, c.root),
                (Some(l), None) => format!(
                    "{label}: leased to container {}, kept: the runtime has no such container yet and the lease is younger than {} s",
                    l.container_id, cfg.pool.gc_grace_s
                ),
                (None, _) => format!("{label}: idle"),
            });
            st.instances.push(InstanceRecord {
                gpu_uuid: g.uuid.clone(),
                gpu_index: g.index,
                gpu_minor: g.minor,
                profile: profile.name.clone(),
                profile_id: profile.id,
                slot: gi.slot,
                made: Some(Made {
                    gi: gi.id,
                    ci,
                    mig_uuid: mig.clone(),
                    gi_cap_minor,
                    ci_cap_minor,
                }),
                created_at: now,
                idle_since: lease.is_none().then_some(now),
                lease,
            });
            if !by_log && !opts.dry_run {
                gone.push(crate::instance_log::Event::Made {
                    gpu: g.uuid.clone(),
                    slot: gi.slot,
                    profile: profile.name.clone(),
                    profile_id: profile.id,
                    gi: gi.id,
                    ci,
                    mig,
                    t: now,
                    root: holder.map(|c| c.root.clone()),
                });
            }
        }
    }
    if opts.dry_run {
        return Ok(report);
    }
    if let Some(to) = &report.moved_aside {
        let path = ledger.path();
        std::fs::rename(&path, to).map_err(|source| RepairError::MoveAside {
            path,
            to: to.clone(),
            source,
        })?;
    }
    // The journal's lines and the offers were made against a ledger that is no more; a new
    // ledger's generations could meet theirs, so both go before it is written.
    for stale in [
        ledger.journal_path(),
        cfg.state_dir.join(crate::offers::FILE),
    ] {
        if let Err(e) = std::fs::remove_file(&stale) {
            if e.kind() != std::io::ErrorKind::NotFound {
                report
                    .failed
                    .push(format!("cannot remove {}: {e}", stale.display()));
            }
        }
    }
    locked.save(&st)?;
    crate::instance_log::note(&cfg.state_dir, &gone);
    let generation = locked.generation();
    drop(locked);
    crate::offers::write(cfg, &mut st, generation);
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::allocator::{allocate_on, release, Claimant};
    use crate::placement::Slot;
    use crate::testing::{Call, FakeGpu, FakeNode, Scratch};

    #[test]
    fn a_lost_ledger_is_rebuilt_from_the_driver_and_the_instance_log() {
        let s = Scratch::new("repair-lost");
        let gpu = FakeGpu::h100(1);
        let node = FakeNode::new(&gpu);
        let who = Claimant {
            container_id: "a",
            runtime_root: None,
        };
        let g = allocate_on(&s.cfg, &gpu, &node, "2g.20gb", None, &who).unwrap();
        release(&s.cfg, "a", Duration::from_secs(5)).unwrap();
        let theirs = gpu.make(0, "1g.10gb", Slot { start: 6, size: 1 });
        std::fs::remove_file(Ledger::new(&s.cfg.state_dir).path()).unwrap();
        gpu.clear_calls();

        let opts = RepairOptions {
            dry_run: false,
            roots: Vec::new(),
        };
        let report = run_on(&s.cfg, &gpu, &node, &opts).unwrap();
        assert_eq!(
            gpu.changes(),
            Vec::<Call>::new(),
            "nothing made or destroyed"
        );
        let st = s.ledger();
        assert_eq!(st.instances.len(), 1, "gpushare's instance, not theirs");
        let r = &st.instances[0];
        let m = r.made.as_ref().unwrap();
        assert_eq!(r.profile, "2g.20gb");
        assert_eq!(
            (m.gi, m.ci, m.mig_uuid.as_str()),
            (g.gi, g.ci, g.mig_uuid.as_str())
        );
        assert_eq!(
            (m.gi_cap_minor, m.ci_cap_minor),
            (g.gi_cap_minor, g.ci_cap_minor)
        );
        assert!(r.lease.is_none(), "no container names it: idle");
        assert_eq!(
            report.foreign.iter().map(|f| f.gi).collect::<Vec<_>>(),
            vec![theirs.gi]
        );
    }

    #[test]
    fn a_damaged_ledger_still_names_its_roots() {
        let raw = r#"{"instances":[{"lease":{"container_id":"a","runtime_root": "/run/x"}},{"lease":{"runtime_root":"/run/y","#;
        assert_eq!(quoted_after(raw, "\"runtime_root\":"), ["/run/x", "/run/y"]);
    }

    #[test]
    fn scan_reads_runc_and_crun_state() {
        let dir = std::env::temp_dir().join(format!("gpushare-repair-scan-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let spec = |env: &str, ann: &str| {
            format!(r#"{{"process":{{"env":["PATH=/bin",{env}]}},"annotations":{{{ann}}}}}"#)
        };
        // runc: state.json names the bundle in its labels.
        let bundle = dir.join("bundle");
        std::fs::create_dir_all(&bundle).unwrap();
        std::fs::write(
            bundle.join("config.json"),
            spec(
                r#""CUDA_VISIBLE_DEVICES=MIG-a""#,
                r#""gpu.profile":"1g.10gb""#,
            ),
        )
        .unwrap();
        let runc = dir.join("runc");
        std::fs::create_dir_all(runc.join("c1")).unwrap();
        std::fs::write(
            runc.join("c1/state.json"),
            format!(
                r#"{{"config":{{"labels":["bundle={}"]}}}}"#,
                bundle.display()
            ),
        )
        .unwrap();
        // crun: its own copy of the spec.
        let crun = dir.join("crun");
        std::fs::create_dir_all(crun.join("c2")).unwrap();
        std::fs::write(
            crun.join("c2/config.json"),
            spec(r#""NVIDIA_VISIBLE_DEVICES=MIG-b,MIG-c""#, ""),
        )
        .unwrap();
        std::fs::create_dir_all(crun.join("junk")).unwrap();
        let roots = [runc.display().to_string(), crun.display().to_string()];
        let found = scan(&roots);
        assert_eq!(found.len(), 2, "{found:?}");
        assert_eq!(found[0].id, "c1");
        assert_eq!(found[0].migs, ["MIG-a"]);
        assert!(found[0].requested);
        assert_eq!(found[1].migs, ["MIG-b", "MIG-c"]);
        assert!(!found[1].requested);
        std::fs::remove_dir_all(dir).unwrap();
    }
}
