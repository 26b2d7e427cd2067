//! `gpusharectl metrics`: the counters the ledger keeps ([`crate::stats`]), plus what NVML
//! shows now, in Prometheus' text exposition format.

use crate::ledger::LedgerState;
use crate::stats::BUCKETS_US;
use crate::status::Status;
use std::fmt::Write;

/// A Prometheus label value: backslash, quote and newline escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP gpushare_{name} {help}");
    let _ = writeln!(out, "# TYPE gpushare_{name} {kind}");
}

/// The exposition text. `live` is what NVML shows now; without it (NVML not loadable) the
/// slice gauges come from the ledger alone and `gpushare_nvml_up` is 0.
pub fn render(st: &LedgerState, live: Option<&Status>) -> String {
    let mut out = String::new();
    let gpu_label = |uuid: &str| -> (String, String) {
        let index = st
            .gpus
            .iter()
            .find(|g| g.uuid == uuid)
            .map_or_else(|| "?".to_string(), |g| g.index.to_string());
        (index, label(uuid))
    };

    family(
        &mut out,
        "nvml_up",
        "gauge",
        "1 if NVML could be opened for this scrape.",
    );
    let _ = writeln!(out, "gpushare_nvml_up {}", u8::from(live.is_some()));

    family(
        &mut out,
        "slices",
        "gauge",
        "MIG instances by GPU, profile and state (busy, idle, mps: serving MPS shares, foreign, or being made).",
    );
    let mut slices: std::collections::BTreeMap<(String, String, String, &str), u64> =
        Default::default();
    match live {
        Some(s) => {
            for g in &s.gpus {
                for i in &g.instances {
                    *slices
                        .entry((
                            g.index.to_string(),
                            label(&g.uuid),
                            label(&i.profile),
                            i.state,
                        ))
                        .or_default() += 1;
                }
            }
        }
        None => {
            for r in &st.instances {
                let state = match (&r.made, &r.lease) {
                    (None, _) => "making",
                    (Some(_), Some(_)) => "busy",
                    (Some(_), None) if r.mps => "mps",
                    (Some(_), None) => "idle",
                };
                let (i, u) = gpu_label(&r.gpu_uuid);
                *slices.entry((i, u, label(&r.profile), state)).or_default() += 1;
            }
        }
    }
    for ((index, uuid, profile, state), n) in &slices {
        let _ = writeln!(
            out,
            "gpushare_slices{{gpu=\"{index}\",uuid=\"{uuid}\",profile=\"{profile}\",state=\"{state}\"}} {n}"
        );
    }

    if let Some(s) = live {
        family(
            &mut out,
            "free_slices",
            "gauge",
            "How many more instances of each profile could be made now.",
        );
        for g in &s.gpus {
            for (p, n) in &g.free {
                let _ = writeln!(
                    out,
                    "gpushare_free_slices{{gpu=\"{}\",uuid=\"{}\",profile=\"{}\"}} {n}",
                    g.index,
                    label(&g.uuid),
                    label(p)
                );
            }
        }
    }

    family(
        &mut out,
        "leases",
        "gauge",
        "Containers holding a MIG slice, by GPU.",
    );
    let mut leases: std::collections::BTreeMap<(String, String), u64> = Default::default();
    for r in st.instances.iter().filter(|r| r.lease.is_some()) {
        *leases.entry(gpu_label(&r.gpu_uuid)).or_default() += 1;
    }
    for ((index, uuid), n) in &leases {
        let _ = writeln!(
            out,
            "gpushare_leases{{gpu=\"{index}\",uuid=\"{uuid}\"}} {n}"
        );
    }

    family(
        &mut out,
        "mps_clients",
        "gauge",
        "Containers attached to an MPS control daemon, by GPU.",
    );
    for d in &st.mps {
        let (index, uuid) = gpu_label(&d.gpu_uuid);
        let _ = writeln!(
            out,
            "gpushare_mps_clients{{gpu=\"{index}\",uuid=\"{uuid}\"}} {}",
            d.clients.len()
        );
    }

    family(
        &mut out,
        "grants_total",
        "counter",
        "Slices granted, by GPU and path (warm: an idle instance reused, no NVML; cold: made).",
    );
    family(
        &mut out,
        "refused_no_room_total",
        "counter",
        "Requests a GPU could not serve for lack of room.",
    );
    family(
        &mut out,
        "warm_hit_ratio",
        "gauge",
        "Share of grants served from the idle pool, by GPU.",
    );
    for (uuid, c) in &st.stats.per_gpu {
        let (index, uuid) = gpu_label(uuid);
        let l = format!("gpu=\"{index}\",uuid=\"{uuid}\"");
        let _ = writeln!(
            out,
            "gpushare_grants_total{{{l},path=\"warm\"}} {}",
            c.grants_warm
        );
        let _ = writeln!(
            out,
            "gpushare_grants_total{{{l},path=\"cold\"}} {}",
            c.grants_cold
        );
        let _ = writeln!(
            out,
            "gpushare_refused_no_room_total{{{l}}} {}",
            c.refused_no_room
        );
        if let Some(r) = c.warm_hit_rate() {
            let _ = writeln!(out, "gpushare_warm_hit_ratio{{{l}}} {r:.4}");
        }
    }

    family(
        &mut out,
        "allocation_seconds",
        "histogram",
        "Time to allocate a slice, ledger lock wait included.",
    );
    let h = &st.stats.alloc_latency;
    let mut cum = 0u64;
    for (i, b) in BUCKETS_US.iter().enumerate() {
        cum += h.counts.get(i).copied().unwrap_or(0);
        let _ = writeln!(
            out,
            "gpushare_allocation_seconds_bucket{{le=\"{}\"}} {cum}",
            *b as f64 / 1e6
        );
    }
    let _ = writeln!(
        out,
        "gpushare_allocation_seconds_bucket{{le=\"+Inf\"}} {}",
        h.count()
    );
    let _ = writeln!(
        out,
        "gpushare_allocation_seconds_sum {}",
        h.sum_us as f64 / 1e6
    );
    let _ = writeln!(out, "gpushare_allocation_seconds_count {}", h.count());

    family(
        &mut out,
        "errors_total",
        "counter",
        "Allocation failures by kind.",
    );
    for (kind, n) in &st.stats.errors {
        let _ = writeln!(out, "gpushare_errors_total{{kind=\"{}\"}} {n}", label(kind));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn histogram_buckets_and_exposition() {
        let mut st = LedgerState::default();
        st.stats.alloc_latency.observe(Duration::from_micros(300));
        st.stats.alloc_latency.observe(Duration::from_secs(30));
        st.stats.grant("GPU-a", true);
        st.stats.grant("GPU-a", false);
        st.stats.refused("GPU-a");
        let text = render(&st, None);
        assert!(text.contains("gpushare_allocation_seconds_bucket{le=\"0.0005\"} 1"));
        assert!(text.contains("gpushare_allocation_seconds_bucket{le=\"+Inf\"} 2"));
        assert!(text.contains("gpushare_allocation_seconds_count 2"));
        assert!(text.contains("gpushare_warm_hit_ratio{gpu=\"?\",uuid=\"GPU-a\"} 0.5000"));
        assert!(text.contains("gpushare_refused_no_room_total{gpu=\"?\",uuid=\"GPU-a\"} 1"));
        assert!(text.contains("gpushare_nvml_up 0"));
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (_, value) = line.rsplit_once(' ').expect("name value");
            value.parse::<f64>().expect("a number");
        }
    }

    #[test]
    fn a_slice_serving_mps_is_neither_busy_nor_idle() {
        let mut st = LedgerState::default();
        st.instances.push(crate::ledger::InstanceRecord {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            profile: "3g.40gb".into(),
            profile_id: 9,
            slot: crate::placement::Slot { start: 0, size: 4 },
            made: Some(crate::ledger::Made {
                gi: 1,
                ci: 0,
                mig_uuid: "MIG-x".into(),
                gi_cap_minor: 1,
                ci_cap_minor: 2,
            }),
            created_at: 1,
            lease: None,
            idle_since: None,
            mps: true,
        });
        let text = render(&st, None);
        assert!(
            text.contains(
                "gpushare_slices{gpu=\"?\",uuid=\"GPU-a\",profile=\"3g.40gb\",state=\"mps\"} 1"
            ),
            "{text}"
        );
    }

    #[test]
    fn label_values_are_escaped() {
        assert_eq!(label("a\"b\\c\nd"), "a\\\"b\\\\c\\nd");
    }
}
