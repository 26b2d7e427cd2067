//! The compute mode of GPUs that serve MPS shares (`mps.exclusive`).
//!
//! An MPS daemon's limits bind only clients that reach it: a tenant that points
//! `CUDA_MPS_PIPE_DIRECTORY` at an empty folder gets an ordinary context, with every SM and all
//! memory, on a GPU in compute mode Default (measured on an H200, docs/mps.md). In
//! EXCLUSIVE_PROCESS the MPS server is the one process allowed a context, so gpushare sets that
//! mode before it starts a daemon and puts the mode it found back after the daemon quits, as
//! NVIDIA's device plugin and DRA driver do.
//!
//! The mode found is written to the ledger before the change ([`ComputeModeRecord`]). A record
//! whose GPU has no daemon in the ledger is what a crash left (between the record and the
//! daemon's start, or between the daemon's stop and the restore): [`repair`] puts that mode
//! back. It runs in `gc` and in every MPS, time-slice and cold MIG allocation, and costs no
//! NVML while there is nothing to repair.

use crate::fsutil::now_unix;
use crate::gpu::{BackendError, Gpu};
use crate::ledger::{ComputeModeRecord, GpuRecord, LedgerError, LedgerState, Locked, Mode};
use nvml_wrapper::enum_wrappers::device::ComputeMode;

#[derive(Debug, thiserror::Error)]
pub enum ComputeModeError {
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error(transparent)]
    Backend(#[from] BackendError),
    #[error("GPU {gpu}: process(es) {pids} already hold a context there; gpushare sets a GPU that serves MPS shares to EXCLUSIVE_PROCESS, which would leave them beside the MPS daemon and outside its limits, or keep the daemon from the GPU. Stop them or ask for another gpu.device; an operator who accepts shares a tenant can leave sets mps.exclusive = false")]
    Busy { gpu: u32, pids: String },
    #[error("GPU {gpu} has no compute modes (NVML: not supported), so nothing stops a tenant there from leaving its MPS share; an operator who accepts that sets mps.exclusive = false")]
    Unsupported { gpu: u32 },
}

impl From<ComputeMode> for Mode {
    fn from(m: ComputeMode) -> Mode {
        match m {
            ComputeMode::Default => Mode::Default,
            ComputeMode::ExclusiveThread => Mode::ExclusiveThread,
            ComputeMode::Prohibited => Mode::Prohibited,
            ComputeMode::ExclusiveProcess => Mode::ExclusiveProcess,
        }
    }
}

impl From<Mode> for ComputeMode {
    fn from(m: Mode) -> ComputeMode {
        match m {
            Mode::Default => ComputeMode::Default,
            Mode::ExclusiveThread => ComputeMode::ExclusiveThread,
            Mode::Prohibited => ComputeMode::Prohibited,
            Mode::ExclusiveProcess => ComputeMode::ExclusiveProcess,
        }
    }
}

/// Make `gpu` EXCLUSIVE_PROCESS before its MPS daemon starts, recording (and saving) the mode
/// found first. A GPU already recorded (its daemon died and is started again) keeps its first
/// record. Refuses while another process holds a context on the GPU.
pub fn take(
    be: &dyn Gpu,
    locked: &Locked,
    st: &mut LedgerState,
    gpu: &GpuRecord,
) -> Result<(), ComputeModeError> {
    let Some(now) = be.compute_mode(gpu.index)? else {
        return Err(ComputeModeError::Unsupported { gpu: gpu.index });
    };
    let pids = be.compute_pids(gpu.index)?;
    if !pids.is_empty() {
        let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
        return Err(ComputeModeError::Busy {
            gpu: gpu.index,
            pids: pids.join(", "),
        });
    }
    if !st.compute_modes.iter().any(|r| r.gpu_uuid == gpu.uuid) {
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: gpu.uuid.clone(),
            gpu_index: gpu.index,
            found: now.into(),
            since: now_unix(),
        });
        locked.save(st)?;
        crate::failpoint!("mps.exclusive.recorded");
    }
    if Mode::from(now) != Mode::ExclusiveProcess {
        be.set_compute_mode(gpu.index, ComputeMode::ExclusiveProcess)?;
        tracing::info!(
            gpu = gpu.index,
            found = Mode::from(now).name(),
            "set compute mode Exclusive_Process for the MPS daemon"
        );
    }
    crate::failpoint!("mps.exclusive.set");
    Ok(())
}

/// Put back the mode recorded for `gpu_uuid` (its daemon is gone) and drop the record; a GPU
/// with no record is left alone, and NVML is not asked. On failure the record stays, for the
/// next [`repair`]. Returns what was put back.
pub fn give_back(
    be: &dyn Gpu,
    st: &mut LedgerState,
    gpu_uuid: &str,
) -> Result<Option<ComputeModeRecord>, BackendError> {
    let Some(i) = st.compute_modes.iter().position(|r| r.gpu_uuid == gpu_uuid) else {
        return Ok(None);
    };
    let r = st.compute_modes[i].clone();
    crate::failpoint!("mps.exclusive.before_restore");
    // The index may have moved since the record was made: find the GPU by its UUID.
    let index = be
        .gpus()?
        .into_iter()
        .find(|g| g.uuid == r.gpu_uuid)
        .map(|g| g.index);
    if let Some(index) = index {
        // None: the GPU has no compute mode now (MIG was enabled since, which resets it).
        if let Some(now) = be.compute_mode(index)? {
            if Mode::from(now) != r.found {
                be.set_compute_mode(index, r.found.into())?;
            }
        }
        tracing::info!(
            gpu = index,
            mode = r.found.name(),
            "put the compute mode found back"
        );
    }
    st.compute_modes.remove(i);
    Ok(Some(r))
}

/// Whether a release may have a compute mode to put back: the ledger in `state_dir` records
/// one. Only the ledger's header is read (its flags), with no lock and no parse, so releases on
/// a node without MPS daemons pay nothing for it; a ledger whose header has no flags (an older
/// gpushare's) may.
pub fn may_put_back(state_dir: &std::path::Path) -> bool {
    use std::io::Read;
    let Ok(f) = std::fs::File::open(crate::ledger::Ledger::new(state_dir).path()) else {
        return false;
    };
    let mut head = Vec::with_capacity(gpushare_state::ledger::HEADER_MAX);
    if f.take(gpushare_state::ledger::HEADER_MAX as u64)
        .read_to_end(&mut head)
        .is_err()
    {
        return true;
    }
    gpushare_state::ledger::header(&head)
        .and_then(|h| h.flags)
        .is_none_or(|f| f.compute_mode_records)
}

/// Records whose GPU has no MPS daemon in the ledger: a crash left the mode changed.
pub fn stranded(st: &LedgerState) -> Vec<ComputeModeRecord> {
    st.compute_modes
        .iter()
        .filter(|r| !st.mps.iter().any(|d| d.gpu_uuid == r.gpu_uuid))
        .cloned()
        .collect()
}

/// Put back every mode a crash left changed (see [`stranded`]); asks NVML only when there is
/// one. Returns what was put back; a failure keeps its record and is returned as text.
pub fn repair(be: &dyn Gpu, st: &mut LedgerState) -> (Vec<ComputeModeRecord>, Vec<String>) {
    let (mut done, mut failed) = (Vec::new(), Vec::new());
    for r in stranded(st) {
        match give_back(be, st, &r.gpu_uuid) {
            Ok(Some(r)) => {
                tracing::warn!(
                    gpu = r.gpu_index,
                    mode = r.found.name(),
                    "a crash left the compute mode changed; put back"
                );
                done.push(r);
            }
            Ok(None) => {}
            Err(e) => failed.push(format!(
                "put compute mode {} back on GPU {}: {e}",
                r.found.name(),
                r.gpu_index
            )),
        }
    }
    (done, failed)
}

/// Put back compute modes a crash left changed, saving at once: the grant may still fail.
pub(crate) fn repair_and_save(
    be: &dyn Gpu,
    locked: &Locked,
    st: &mut LedgerState,
) -> Result<(), LedgerError> {
    let (done, failed) = repair(be, st);
    for f in &failed {
        tracing::warn!("{f}");
    }
    if !done.is_empty() {
        locked.save(st)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_round_trip_through_nvml_wrapper_and_json() {
        for m in [
            Mode::Default,
            Mode::ExclusiveThread,
            Mode::Prohibited,
            Mode::ExclusiveProcess,
        ] {
            assert_eq!(Mode::from(ComputeMode::from(m)), m);
        }
        assert_eq!(
            serde_json::to_string(&Mode::ExclusiveProcess).unwrap(),
            "\"exclusive_process\""
        );
    }

    #[test]
    fn a_release_keeps_sys_admin_only_while_a_mode_is_held() {
        let dir = std::env::temp_dir().join(format!("gpushare-cm-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        assert!(!may_put_back(&dir), "no ledger");
        let mut st = LedgerState::default();
        let path = crate::ledger::Ledger::new(&dir).path();
        std::fs::write(&path, crate::ledger::encode(&st, 1)).unwrap();
        assert!(!may_put_back(&dir), "no record: the header's flag is clear");
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            found: Mode::Default,
            since: 1,
        });
        std::fs::write(&path, crate::ledger::encode(&st, 2)).unwrap();
        assert!(may_put_back(&dir));
        // A ledger without the header's flags (an older gpushare's) may hold one.
        std::fs::write(&path, serde_json::to_vec(&LedgerState::default()).unwrap()).unwrap();
        assert!(may_put_back(&dir));
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn a_record_without_a_daemon_is_stranded() {
        let mut st = LedgerState::default();
        st.compute_modes.push(ComputeModeRecord {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            found: Mode::Default,
            since: 1,
        });
        assert_eq!(stranded(&st).len(), 1);
        st.mps.push(crate::ledger::MpsDaemon {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            pid: None,
            pipe_dir: "/x".into(),
            log_dir: "/y".into(),
            percent: 25,
            memory: None,
            started_at: 1,
            clients: Vec::new(),
            mig: None,
        });
        assert!(stranded(&st).is_empty(), "its daemon is in the ledger");
    }
}
