//! What an operator reads: `gpusharectl status`, `metrics` and `doctor`.

pub mod doctor;
pub mod metrics;
pub mod readiness;
pub mod status;
