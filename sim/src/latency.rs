//! What each simulated call costs in `measured` mode.
//!
//! Init, first handle, shutdown and MIG-mode costs were measured on a real H200 with driver
//! 580.159.04 (shared/fixtures/README.md: init 9.3-12.4 ms, first handle 6.6-6.9 ms, MIG mode
//! 0.4-0.6 ms, shutdown 2.6-3.2 ms). GPU-instance create/destroy and compute-instance
//! create/destroy were NOT measured by us (no GPU we may reconfigure): ~1 s for a GI create is
//! what NVIDIA's DRA driver reports; destroy and the CI figures are our estimates within the
//! ranges the brief gives (GI destroy 0.5-1 s, CI 0.1-0.3 s).
//!
//! The cost is charged after the call's work is done and the state lock released, so
//! concurrent processes pay it in parallel (as separate processes do against the real driver)
//! and nobody waits on a sleeping lock holder. A call that fails is not charged.

use crate::state::Latency;
use std::time::Duration;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Init,
    FirstHandle,
    Shutdown,
    MigMode,
    GiCreate,
    GiDestroy,
    CiCreate,
    CiDestroy,
}

pub fn cost(op: Op) -> Duration {
    let us = match op {
        Op::Init => 11_000,
        Op::FirstHandle => 7_000,
        Op::Shutdown => 3_000,
        Op::MigMode => 500,
        Op::GiCreate => 1_000_000,
        Op::GiDestroy => 700_000,
        Op::CiCreate => 200_000,
        Op::CiDestroy => 150_000,
    };
    Duration::from_micros(us)
}

/// Waits `op`'s cost when the node is in `measured` mode: exactly that, not more. A plain
/// sleep overshoots by the kernel's timer slack and a wake-up (~0.1-0.2 ms each on a VM,
/// several per grant), which benchmarks would then charge to gpushare; the last stretch is
/// spun instead.
pub fn charge(mode: Latency, op: Op) {
    if mode == Latency::Measured {
        wait_exactly(cost(op));
    }
}

fn wait_exactly(d: Duration) {
    const SPIN: Duration = Duration::from_micros(500);
    let until = std::time::Instant::now() + d;
    if let Some(sleep) = d.checked_sub(SPIN) {
        std::thread::sleep(sleep);
    }
    while std::time::Instant::now() < until {
        std::hint::spin_loop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn waits_at_least_and_about_exactly() {
        for ms in [1u64, 3] {
            let d = Duration::from_millis(ms);
            let t = std::time::Instant::now();
            wait_exactly(d);
            let took = t.elapsed();
            assert!(took >= d, "{took:?} < {d:?}");
            // Generous: only a descheduled spin overshoots, and CI machines are busy.
            assert!(took < d + Duration::from_millis(20), "{took:?}");
        }
    }
}
