//! What each GPU would need to serve each kind of request now: a MIG slice, the whole GPU
//! (`gpu.share=timeslice`), an MPS share. `status` shows these lines and `doctor` what
//! `mig.manage_mode` would do; both read them from [`assess`], which applies the switching
//! rule of [`crate::mig_mode`] to what `status` saw, so the words match what a grant does.

use crate::config::Config;
use crate::gpu::GpuInfo;
use crate::ledger::LedgerState;
use crate::mig_mode::{self, Hold};
use serde::Serialize;

/// One kind of request on one GPU.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Need {
    /// `mig`, `whole` (gpu.share=timeslice) or `mps`.
    pub kind: &'static str,
    /// A request of this kind is served now, without waiting or switching.
    pub ready: bool,
    /// What it would need, in words ("after llm-2 and llm-3 exit").
    pub line: String,
}

impl Need {
    /// How `status` names the kind.
    pub fn label(&self) -> &'static str {
        match self.kind {
            "mig" => "MIG slice",
            "whole" => "whole GPU",
            // An MPS share inside a slice (gpu.profile with gpu.mps) is a MIG request.
            _ => "MPS share of the whole GPU",
        }
    }
}

/// What the driver showed of a GPU, beside the ledger.
pub struct Seen<'a> {
    pub info: &'a GpuInfo,
    /// Processes holding a context there (None: NVML would not say).
    pub pids: Option<Vec<u32>>,
    /// GPU instances there gpushare did not make.
    pub foreign: usize,
    /// Idle instances of gpushare's there.
    pub idle: usize,
    /// Some MIG profile has room now (MIG on).
    pub room: bool,
}

/// "a", "a and b", "a, b and c".
fn and_list(items: &[String]) -> String {
    match items {
        [] => String::new(),
        [one] => one.clone(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// "a exits", "a and b exit": what a request waits for.
fn exit(who: &[String]) -> String {
    match who {
        [one] => format!("{one} exits"),
        _ => format!("{} exit", and_list(who)),
    }
}

/// What a request needing MIG mode `on` needs on a GPU in the other mode.
fn switch_line(cfg: &Config, st: &LedgerState, seen: &Seen<'_>, on: bool) -> String {
    let index = seen.info.index;
    let manual = format!("`nvidia-smi -i {index} -mig {}`", if on { 1 } else { 0 });
    let turn = format!("turn MIG {}", mig_mode::on_off(on));
    let who = mig_mode::holders(st, &seen.info.uuid);
    match mig_mode::hold(cfg, st, seen.info, on) {
        Some(Hold::NotManaged) if who.is_empty() => {
            format!("needs {manual} (mig.manage_mode is off)")
        }
        Some(Hold::NotManaged) => format!(
            "after {}, then needs {manual} (mig.manage_mode is off)",
            exit(&who)
        ),
        Some(Hold::Holders(who)) => {
            format!("after {} (then mig.manage_mode would {turn})", exit(&who))
        }
        Some(h) => h.to_string(),
        None => {
            if let Some(pids) = seen.pids.as_ref().filter(|p| !p.is_empty()) {
                let pids: Vec<String> = pids.iter().map(u32::to_string).collect();
                return format!(
                    "after process(es) {} exit: not gpushare's (then mig.manage_mode would {turn})",
                    and_list(&pids)
                );
            }
            if !on && seen.foreign > 0 {
                return format!(
                    "never while {} GPU instance(s) gpushare did not make are there (mig.manage_mode switches only an idle GPU)",
                    seen.foreign
                );
            }
            if !on && seen.idle > 0 {
                format!(
                    "mig.manage_mode would destroy {} idle instance(s) and {turn}",
                    seen.idle
                )
            } else {
                format!("mig.manage_mode would {turn}")
            }
        }
    }
}

/// For each kind of request, what `seen`'s GPU needs to serve it now.
pub fn assess(cfg: &Config, st: &LedgerState, seen: &Seen<'_>) -> Vec<Need> {
    let uuid = &seen.info.uuid;
    let ready = |kind, line: &str| Need {
        kind,
        ready: true,
        line: line.into(),
    };
    let wait = |kind, line: String| Need {
        kind,
        ready: false,
        line,
    };
    let mig_on = seen.info.mig_mode.is_some_and(|(current, _)| current);
    let share_holders: Vec<String> = st
        .shares
        .iter()
        .filter(|s| s.gpu_uuid == *uuid)
        .map(|s| s.lease.container_id.clone())
        .collect();
    let mps_clients: Vec<String> = st
        .mps
        .iter()
        .filter(|d| d.gpu_uuid == *uuid)
        .flat_map(|d| d.clients.iter().map(|c| c.lease.container_id.clone()))
        .collect();
    let serves_mps = st.mps.iter().any(|d| d.gpu_uuid == *uuid);
    let mut out = Vec::with_capacity(3);
    if mig_on {
        out.push(if seen.room {
            ready("mig", "ready (MIG mode)")
        } else {
            // Slices serving MPS are held by their daemons' clients.
            let busy: Vec<String> = st
                .instances
                .iter()
                .filter(|r| r.gpu_uuid == *uuid)
                .filter_map(|r| r.lease.as_ref().map(|l| l.container_id.clone()))
                .chain(mps_clients.iter().cloned())
                .collect();
            wait(
                "mig",
                if busy.is_empty() {
                    "no room: the instances there are not gpushare's".to_string()
                } else {
                    format!("no room: after some of {} exit", and_list(&busy))
                },
            )
        });
        let off = switch_line(cfg, st, seen, false);
        out.push(wait("whole", off.clone()));
        out.push(wait("mps", off));
    } else {
        out.push(wait("mig", switch_line(cfg, st, seen, true)));
        out.push(if serves_mps {
            wait(
                "whole",
                format!(
                    "after {} (the GPU serves MPS shares)",
                    if mps_clients.is_empty() {
                        "gpushare's MPS daemon quits".to_string()
                    } else {
                        exit(&mps_clients)
                    }
                ),
            )
        } else {
            ready("whole", "ready")
        });
        out.push(if share_holders.is_empty() {
            ready("mps", "ready")
        } else {
            wait(
                "mps",
                format!("after {} (held whole, time-sliced)", exit(&share_holders)),
            )
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Lease, ShareLease};

    fn gpu(mig: Option<(bool, bool)>) -> GpuInfo {
        GpuInfo {
            index: 0,
            uuid: "GPU-a".into(),
            name: "NVIDIA H100 80GB HBM3".into(),
            minor: 0,
            memory_total: 0,
            mig_mode: mig,
        }
    }

    fn seen(info: &GpuInfo) -> Seen<'_> {
        Seen {
            info,
            pids: Some(Vec::new()),
            foreign: 0,
            idle: 0,
            room: true,
        }
    }

    fn line(needs: &[Need], kind: &str) -> String {
        needs.iter().find(|n| n.kind == kind).unwrap().line.clone()
    }

    fn shared(st: &mut LedgerState, id: &str) {
        st.shares.push(ShareLease {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            lease: Lease {
                container_id: id.into(),
                since: 1,
                runtime_root: None,
            },
        });
    }

    #[test]
    fn each_kind_says_what_it_waits_for() {
        let mut cfg = Config::default();
        let mut st = LedgerState::default();
        let off = gpu(Some((false, false)));
        let needs = assess(&cfg, &st, &seen(&off));
        assert_eq!(
            line(&needs, "mig"),
            "needs `nvidia-smi -i 0 -mig 1` (mig.manage_mode is off)"
        );
        assert!(needs.iter().find(|n| n.kind == "whole").unwrap().ready);

        cfg.mig.manage_mode = crate::config::ManageMode::All(true);
        assert_eq!(
            line(&assess(&cfg, &st, &seen(&off)), "mig"),
            "mig.manage_mode would turn MIG on"
        );
        shared(&mut st, "llm-2");
        shared(&mut st, "llm-3");
        let needs = assess(&cfg, &st, &seen(&off));
        assert_eq!(
            line(&needs, "mig"),
            "after llm-2 and llm-3 exit (then mig.manage_mode would turn MIG on)"
        );
        assert_eq!(
            line(&needs, "mps"),
            "after llm-2 and llm-3 exit (held whole, time-sliced)"
        );
        st.shares.remove(0);
        let needs = assess(&cfg, &st, &seen(&off));
        assert_eq!(
            line(&needs, "mig"),
            "after llm-3 exits (then mig.manage_mode would turn MIG on)"
        );
        assert_eq!(
            line(&needs, "mps"),
            "after llm-3 exits (held whole, time-sliced)"
        );
        st.shares.clear();
        let mut s = seen(&off);
        s.pids = Some(vec![77]);
        assert!(line(&assess(&cfg, &st, &s), "mig").starts_with("after process(es) 77 exit"));

        let on = gpu(Some((true, true)));
        let mut s = seen(&on);
        s.idle = 2;
        assert_eq!(
            line(&assess(&cfg, &st, &s), "whole"),
            "mig.manage_mode would destroy 2 idle instance(s) and turn MIG off"
        );
        s.foreign = 1;
        assert!(line(&assess(&cfg, &st, &s), "whole").starts_with("never while 1 GPU instance"));

        let pending = gpu(Some((false, true)));
        let l = line(&assess(&cfg, &st, &seen(&pending)), "mig");
        assert!(
            l.contains("pending enable") && l.contains("nvidia-smi -i 0 -r"),
            "{l}"
        );
        assert!(line(&assess(&cfg, &st, &seen(&gpu(None))), "mig").contains("no MIG"));
    }

    #[test]
    fn a_whole_gpu_waits_for_a_daemon_that_has_no_client_left_to_quit() {
        let cfg = Config::default();
        let mut st = LedgerState::default();
        st.mps.push(crate::ledger::MpsDaemon {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            pid: Some(1),
            pipe_dir: "/p".into(),
            log_dir: "/l".into(),
            percent: 50,
            memory: None,
            started_at: 1,
            clients: Vec::new(),
            mig: None,
        });
        let off = gpu(Some((false, false)));
        assert_eq!(
            line(&assess(&cfg, &st, &seen(&off)), "whole"),
            "after gpushare's MPS daemon quits (the GPU serves MPS shares)"
        );
    }

    #[test]
    fn a_full_gpu_waits_for_the_mps_clients_of_its_slices_too() {
        let cfg = Config::default();
        let mut st = LedgerState::default();
        st.mps.push(crate::ledger::MpsDaemon {
            gpu_uuid: "GPU-a".into(),
            gpu_index: 0,
            gpu_minor: 0,
            pid: None,
            pipe_dir: "/p".into(),
            log_dir: "/l".into(),
            percent: 50,
            memory: None,
            started_at: 1,
            clients: ["m1", "m2"]
                .map(|id| crate::ledger::MpsClient {
                    lease: Lease {
                        container_id: id.into(),
                        since: 1,
                        runtime_root: None,
                    },
                    percent: 50,
                    memory: None,
                })
                .to_vec(),
            mig: Some(crate::ledger::MigHost {
                mig_uuid: "MIG-x".into(),
                profile: "7g.80gb".into(),
                gi_cap_minor: 1,
                ci_cap_minor: 2,
            }),
        });
        let on = gpu(Some((true, true)));
        let mut s = seen(&on);
        s.room = false;
        assert_eq!(
            line(&assess(&cfg, &st, &s), "mig"),
            "no room: after some of m1 and m2 exit"
        );
    }
}
