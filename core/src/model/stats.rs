//! The counters the ledger keeps for `gpusharectl metrics` and `status`: grants warm and cold,
//! refusals, per GPU, the allocation latency histogram and failures by kind. Plain data, saved
//! with the ledger; rendering them is [`crate::metrics`]' part.

use serde::{Deserialize, Serialize};
use std::time::Duration;

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    pub grants_warm: u64,
    pub grants_cold: u64,
    pub refused_no_room: u64,
    /// Of the warm grants, those the `gpushare` entry binary made itself from the offers.
    #[serde(default)]
    pub grants_by_entry: u64,
    /// The same counters per GPU (by UUID), so an operator sees what sharing costs where.
    #[serde(default)]
    pub per_gpu: std::collections::BTreeMap<String, GpuCounters>,
    /// How long allocations took, lock wait included.
    #[serde(default)]
    pub alloc_latency: Histogram,
    /// Allocation failures by kind (`no_room`, `nvml`, ...).
    #[serde(default)]
    pub errors: std::collections::BTreeMap<String, u64>,
}

/// Upper bounds of the latency buckets, in microseconds: a warm grant lands in the first few,
/// a cold one (an instance made, about a second on real hardware) in the last.
pub const BUCKETS_US: &[u64] = &[
    250, 500, 1_000, 2_000, 5_000, 10_000, 20_000, 50_000, 100_000, 250_000, 500_000, 1_000_000,
    2_500_000, 5_000_000, 10_000_000,
];

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpuCounters {
    pub grants_warm: u64,
    pub grants_cold: u64,
    /// Requests this GPU could not serve for lack of room (a request refused on a node of
    /// several GPUs counts once on each GPU it was tried on).
    pub refused_no_room: u64,
}

impl GpuCounters {
    /// Share of grants served by an idle instance, if any grant was made.
    pub fn warm_hit_rate(&self) -> Option<f64> {
        let all = self.grants_warm + self.grants_cold;
        (all > 0).then(|| self.grants_warm as f64 / all as f64)
    }
}

/// Non-cumulative counts per bucket of [`BUCKETS_US`], plus one for "more".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Histogram {
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

impl Histogram {
    pub fn observe(&mut self, d: Duration) {
        let us = d.as_micros().min(u64::MAX as u128) as u64;
        self.counts.resize(BUCKETS_US.len() + 1, 0);
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.counts[i] += 1;
        self.sum_us = self.sum_us.saturating_add(us);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }
}

impl Stats {
    pub fn grant(&mut self, gpu_uuid: &str, warm: bool) {
        let g = self.per_gpu.entry(gpu_uuid.to_string()).or_default();
        if warm {
            self.grants_warm += 1;
            g.grants_warm += 1;
        } else {
            self.grants_cold += 1;
            g.grants_cold += 1;
        }
    }

    pub fn refused(&mut self, gpu_uuid: &str) {
        self.per_gpu
            .entry(gpu_uuid.to_string())
            .or_default()
            .refused_no_room += 1;
    }

    /// An allocation that failed, by its error's stable kind (`no_room`, `nvml`, ...).
    pub fn error(&mut self, kind: &str) {
        *self.errors.entry(kind.to_string()).or_default() += 1;
    }
}
