//! MIG mode switched just-in-time (`mig.manage_mode`) on a simulated node, through real runc: a
//! MIG request turns MIG on, a whole-GPU request turns it off once the slices are idle, a GPU
//! held by another kind of request is never switched, a kill -9 at each step of a switch is
//! repaired by the next call, by `gpusharectl gc` or by `gpusharectl repair` of a corrupt
//! ledger, and an A100 whose driver holds the change until a reset is left pending with
//! nothing granted.
use crate::common;
use crate::invariants;

use common::*;
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, Stdio};

/// Every failpoint of core's mig_mode.rs, for crash_safety's check that each one is killed at.
pub const FAILPOINTS: &[&str] = &[
    "mig_mode.recorded",
    "mig_mode.instances_destroyed",
    "mig_mode.set",
    "mig_mode.before_restore",
];

const SLICE: [(&str, &str); 1] = [("gpu.profile", "2g.20gb")];
const WHOLE: [(&str, &str); 1] = [("gpu.share", "timeslice")];

/// A simulated H100 (MIG on or off), mig.manage_mode on, runc in front.
fn managed_node(mig: bool) -> SimNode {
    let node = SimNode::new("h100-80gb", 1, mig);
    node.configure("[mig]\nmanage_mode = true");
    node
}

/// (current, pending) MIG mode of the simulated GPU.
fn mig(node: &SimNode) -> (u64, u64) {
    let g = &node.sim_state()["gpus"][0];
    (
        g["mig_current"].as_u64().unwrap(),
        g["mig_pending"].as_u64().unwrap(),
    )
}

fn driver_instances(node: &SimNode) -> usize {
    node.sim_state()["gpus"][0]["gpu_instances"]
        .as_array()
        .unwrap()
        .len()
}

fn gpu_uuid(node: &SimNode) -> String {
    node.sim_state()["gpus"][0]["uuid"]
        .as_str()
        .unwrap()
        .to_string()
}

/// Run a container asking for `ann` to its end; what it printed.
fn run_ok(engine: &Engine, ann: &[(&str, &str)]) -> String {
    let b = Bundle::new(SHOW_GPU, ann, &[]);
    engine.run_to_end(&b, &unique("c"))
}

/// The create's refusal: gpushare's stderr line.
fn refused(engine: &Engine, ann: &[(&str, &str)]) -> String {
    let b = Bundle::new("true", ann, &[]);
    let id = unique("refused");
    let out = engine.create(&b, &id);
    assert!(!out.status.success(), "{ann:?} was granted");
    assert!(!holds(engine.node, &id), "a refused create holds nothing");
    text(&out.stderr)
}

#[test]
fn mig_is_turned_on_for_a_slice_and_off_for_the_whole_gpu() {
    require_root();
    let node = managed_node(false);
    let engine = Engine::new(&node, Runtime::Runc);
    assert_eq!(mig(&node), (0, 0));

    let out = run_ok(&engine, &SLICE);
    let seen = env_seen(&out, "CUDA_VISIBLE_DEVICES");
    assert!(seen.starts_with("MIG-"), "runs in its slice: {out}");
    assert!(
        nodes_seen(&out)
            .iter()
            .any(|(p, _, r)| p.starts_with("/dev/nvidia-caps/") && !r.contains("not permitted")),
        "its capability nodes, open to it: {out}"
    );
    assert_eq!(mig(&node), (1, 1), "MIG was turned on");
    let st = node.ledger();
    assert!(st.mig_modes.is_empty(), "settled with the grant");
    assert_eq!(st.instances.len(), 1, "the slice stays idle in the pool");

    // The whole GPU, time-sliced: the idle slice is destroyed and MIG turned off.
    let whole = Bundle::new(&format!("{SHOW_GPU}\nsleep 30"), &WHOLE, &[]);
    let id = unique("whole");
    engine.start_detached(&whole, &id);
    assert_eq!(mig(&node), (0, 0), "MIG was turned off");
    assert_eq!(
        driver_instances(&node),
        0,
        "the idle instance was destroyed"
    );
    let st = node.ledger();
    assert!(st.instances.is_empty() && st.mig_modes.is_empty(), "{st:?}");
    assert_eq!(st.shares.len(), 1);

    // A MIG request while the time-sliced container runs: refused, saying why.
    let err = refused(&engine, &SLICE);
    assert!(err.contains("MIG mode is disabled on GPU 0"), "{err}");
    assert!(
        err.contains(&format!("{id} hold(s) it")),
        "names the holder: {err}"
    );
    assert_eq!(mig(&node), (0, 0), "not switched under a container");

    assert!(engine.delete(&id).status.success());
    let printed = std::fs::read_to_string(whole.path().join("stdout")).unwrap();
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), gpu_uuid(&node));
    // Once it is gone, the MIG request is served again.
    assert!(env_seen(&run_ok(&engine, &SLICE), "CUDA_VISIBLE_DEVICES").starts_with("MIG-"));
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn mig_is_turned_off_for_an_mps_share() {
    require_root();
    let node = managed_node(true);
    node.use_fake_mps_control("");
    let engine = Engine::new(&node, Runtime::Runc);
    run_ok(&engine, &SLICE);
    let out = run_ok(&engine, &[("gpu.mps", "25")]);
    assert_eq!(
        env_seen(&out, "CUDA_VISIBLE_DEVICES"),
        gpu_uuid(&node),
        "{out}"
    );
    assert_eq!(mig(&node), (0, 0), "MIG was turned off");
    assert_eq!(driver_instances(&node), 0);
    assert!(mps_control_log(&node).contains("start pid="));
    let st = node.ledger();
    assert!(st.mig_modes.is_empty() && st.instances.is_empty(), "{st:?}");
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn a_gpu_with_a_process_gpushare_does_not_know_is_never_switched() {
    require_root();
    let node = managed_node(false);
    let engine = Engine::new(&node, Runtime::Runc);
    let uuid = gpu_uuid(&node);
    let out = node.sim(&["process", "add", "--uuid", &uuid, "--pid", "4242"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let err = refused(&engine, &SLICE);
    assert!(err.contains("process(es) 4242"), "{err}");
    assert_eq!(mig(&node), (0, 0));
    assert!(node.ledger().mig_modes.is_empty());
}

#[test]
fn with_manage_mode_off_nothing_is_switched() {
    require_root();
    for mig_on in [false, true] {
        let node = SimNode::new("h100-80gb", 1, mig_on);
        let engine = Engine::new(&node, Runtime::Runc);
        let (ann, words): (&[(&str, &str)], &[&str]) = if mig_on {
            (
                &WHOLE,
                &["GPU 0 has MIG enabled", "nvidia-smi -i <index> -mig 0"],
            )
        } else {
            (
                &SLICE,
                &[
                    "MIG mode is disabled on GPU 0",
                    "nvidia-smi -i <index> -mig 1",
                ],
            )
        };
        let err = refused(&engine, ann);
        for w in words.iter().chain(&["mig.manage_mode is off"]) {
            assert!(err.contains(w), "{w} in: {err}");
        }
        let m = u64::from(mig_on);
        assert_eq!(mig(&node), (m, m), "nothing switched");
        assert!(node.ledger().mig_modes.is_empty());
    }
    // A list that does not name the GPU is the same as off.
    let node = SimNode::new("h100-80gb", 1, false);
    node.configure("[mig]\nmanage_mode = [\"1\", \"GPU-not-this-one\"]");
    let engine = Engine::new(&node, Runtime::Runc);
    assert!(refused(&engine, &SLICE).contains("mig.manage_mode is off"));
    assert_eq!(mig(&node), (0, 0));
}

#[test]
fn an_a100_pending_a_reset_grants_nothing_and_names_the_reset() {
    require_root();
    let node = SimNode::new("a100-40gb", 1, false);
    node.configure("[mig]\nmanage_mode = true");
    let engine = Engine::new(&node, Runtime::Runc);
    let ann = [("gpu.profile", "1g.5gb")];
    let err = refused(&engine, &ann);
    assert!(err.contains("pending enable"), "{err}");
    assert!(
        err.contains("`nvidia-smi -i 0 -r`"),
        "names the reset: {err}"
    );
    assert!(err.contains("never resets a GPU"), "{err}");
    assert_eq!(mig(&node), (0, 1), "left pending, not reset");
    let st = node.ledger();
    assert!(
        st.mig_modes.is_empty() && st.instances.is_empty() && st.shares.is_empty(),
        "nothing half-done: {st:?}"
    );
    assert_eq!(driver_instances(&node), 0);
    // Asked again: the same refusal; status and doctor say it is pending.
    assert!(refused(&engine, &ann).contains("pending enable"));
    let status = text(&node.ctl(&["status"]).stdout);
    assert!(status.contains("MIG mode pending enable"), "{status}");
    let doctor = text(&node.ctl(&["doctor"]).stdout);
    assert!(
        doctor.contains("GPU 0 mig.manage_mode") && doctor.contains("pending enable"),
        "{doctor}"
    );
    // The whole GPU is still served (MIG is off until the reset).
    run_ok(&engine, &WHOLE);
    // Once an operator resets the GPU, MIG is on and the slice is granted.
    assert!(node.sim(&["reset", "--gpu", "0"]).status.success());
    assert!(env_seen(&run_ok(&engine, &ann), "CUDA_VISIBLE_DEVICES").starts_with("MIG-"));
}

#[test]
fn status_and_doctor_say_what_manage_mode_would_do() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, false);
    let status = text(&node.ctl(&["status"]).stdout);
    assert!(
        status.contains("MIG slice: needs `nvidia-smi -i 0 -mig 1` (mig.manage_mode is off)"),
        "{status}"
    );
    assert!(status.contains("whole GPU: ready"), "{status}");
    let doctor = text(&node.ctl(&["doctor"]).stdout);
    assert!(
        doctor.contains("GPU 0 mig.manage_mode")
            && doctor.contains("needs `nvidia-smi -i 0 -mig 1` (mig.manage_mode is off)"),
        "{doctor}"
    );

    node.configure("[mig]\nmanage_mode = true");
    let engine = Engine::new(&node, Runtime::Runc);
    let json = node.status_json();
    let needs = &json["gpus"][0]["needs"];
    assert_eq!(needs[0]["kind"], "mig", "{json:#}");
    assert_eq!(needs[0]["line"], "mig.manage_mode would turn MIG on");
    assert_eq!(needs[0]["ready"], false);
    // A time-sliced container holds the GPU: a MIG slice waits for it.
    let b = Bundle::new("sleep 30", &WHOLE, &[]);
    let id = unique("whole");
    engine.start_detached(&b, &id);
    let status = text(&node.ctl(&["status"]).stdout);
    assert!(
        status.contains(&format!(
            "MIG slice: after {id} exits (then mig.manage_mode would turn MIG on)"
        )),
        "{status}"
    );
    assert!(engine.delete(&id).status.success());
    // In MIG mode with an idle slice: the whole GPU would destroy it and turn MIG off.
    run_ok(&engine, &SLICE);
    let doctor = text(&node.ctl(&["doctor"]).stdout);
    assert!(
        doctor.contains(
            "a whole GPU request: mig.manage_mode would destroy 1 idle instance(s) and turn MIG off"
        ),
        "{doctor}"
    );
}

/// Which switch a crash interrupts.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Switch {
    /// A MIG request on a GPU with MIG off: MIG turned on.
    On,
    /// A whole-GPU request on a GPU in MIG mode with an idle slice: MIG turned off.
    Off,
    /// A switch on killed after the mode changed, then `gc` killed putting it back.
    GcRestore,
}

const SCENARIOS: &[(&str, Switch)] = &[
    ("mig_mode.recorded", Switch::On),
    ("mig_mode.set", Switch::On),
    ("alloc.cold.intent_saved", Switch::On),
    ("alloc.cold.made", Switch::On),
    ("mig_mode.recorded", Switch::Off),
    ("mig_mode.instances_destroyed", Switch::Off),
    ("mig_mode.set", Switch::Off),
    ("mig_mode.before_restore", Switch::GcRestore),
];

fn killed(status: std::process::ExitStatus) -> bool {
    status.signal() == Some(libc::SIGKILL)
}

fn create_killed_at(engine: &Engine, ann: &[(&str, &str)], point: &str) {
    let b = Bundle::new("true", ann, &[]);
    let st = engine
        .cmd(&["create", "--bundle"])
        .arg(b.path())
        .arg(unique("victim"))
        .env("GPUSHARE_FAILPOINT", format!("{point}:kill"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert!(killed(st), "{point}: create was not killed ({st:?})");
}

fn gc(node: &SimNode, failpoint: Option<&str>) -> std::process::Output {
    let mut c = Command::new(CTL);
    c.arg("--config")
        .arg(node.config())
        .args(["gc", "--grace", "0"]);
    if let Some(fp) = failpoint {
        c.env("GPUSHARE_FAILPOINT", format!("{fp}:kill"));
    }
    run(&mut c)
}

fn crash_scenario(point: &str, switch: Switch, gc_first: bool) {
    let label = format!(
        "{point} ({switch:?}, {})",
        if gc_first { "gc" } else { "next call" }
    );
    let node = managed_node(switch == Switch::Off);
    let engine = Engine::new(&node, Runtime::Runc);
    match switch {
        Switch::On => create_killed_at(&engine, &SLICE, point),
        Switch::Off => {
            run_ok(&engine, &SLICE);
            create_killed_at(&engine, &WHOLE, point);
        }
        Switch::GcRestore => {
            create_killed_at(&engine, &SLICE, "mig_mode.set");
            assert_eq!(mig(&node), (1, 1), "{label}: switched before the kill");
            let out = gc(&node, Some(point));
            assert!(killed(out.status), "{label}: gc was not killed");
        }
    }
    assert_eq!(node.ledger().mig_modes.len(), 1, "{label}: the record");
    // What the GPU was found in, before the dead grant.
    let found = u64::from(switch == Switch::Off);
    if gc_first {
        let status = text(&node.ctl(&["status"]).stdout);
        assert!(
            status.contains("MIG mode switched by gpushare for a grant that died"),
            "{label}: {status}"
        );
        let out = gc(&node, None);
        assert!(
            out.status.success(),
            "{label}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        assert_eq!(mig(&node), (found, found), "{label}: {}", text(&out.stdout));
        assert!(node.ledger().mig_modes.is_empty(), "{label}");
        if switch != Switch::Off {
            assert_eq!(driver_instances(&node), 0, "{label}");
        }
        invariants::check(&node, Some(engine.root.path()))
            .unwrap_or_else(|e| panic!("{label}: after gc:\n{e}"));
    }
    // The next call of the same kind is served, and switches as if nothing happened.
    let (ann, want) = match switch {
        Switch::Off => (&WHOLE, (0, 0)),
        _ => (&SLICE, (1, 1)),
    };
    let out = run_ok(&engine, ann);
    assert!(
        !env_seen(&out, "CUDA_VISIBLE_DEVICES").is_empty(),
        "{label}: {out}"
    );
    assert_eq!(mig(&node), want, "{label}");
    let out = gc(&node, None);
    assert!(out.status.success(), "{label}: {}", text(&out.stderr));
    let again = text(&gc(&node, None).stdout);
    assert!(again.contains("nothing to repair"), "{label}: {again}");
    assert!(node.ledger().mig_modes.is_empty(), "{label}");
    invariants::check(&node, Some(engine.root.path())).unwrap_or_else(|e| panic!("{label}:\n{e}"));
}

#[test]
fn kill_at_each_step_of_a_switch_then_the_next_call_repairs() {
    require_root();
    for &(point, switch) in SCENARIOS {
        crash_scenario(point, switch, false);
    }
}

#[test]
fn kill_at_each_step_of_a_switch_then_gc_repairs() {
    require_root();
    for &(point, switch) in SCENARIOS {
        crash_scenario(point, switch, true);
    }
}

/// A kill -9 in a switch, then the ledger found corrupt (damaged ahead of its switch record):
/// `gpusharectl repair` reads the record back from the damaged text, destroys the dead grant's
/// slice and puts the mode found back, instead of leaving the GPU in a mode gpushare changed
/// with no record of it (and, switched on, a slice of nobody's in the idle pool).
#[test]
fn kill_in_a_switch_then_repair_of_a_corrupt_ledger_puts_the_mode_back() {
    require_root();
    for &(point, switch) in &[
        ("mig_mode.set", Switch::On),
        ("alloc.cold.made", Switch::On),
        ("mig_mode.instances_destroyed", Switch::Off),
        ("mig_mode.set", Switch::Off),
    ] {
        let label = format!("{point} ({switch:?})");
        let node = managed_node(switch == Switch::Off);
        let engine = Engine::new(&node, Runtime::Runc);
        if switch == Switch::Off {
            run_ok(&engine, &SLICE);
            create_killed_at(&engine, &WHOLE, point);
        } else {
            create_killed_at(&engine, &SLICE, point);
        }
        assert_eq!(node.ledger().mig_modes.len(), 1, "{label}: the record");
        let ledger = node.cfg().state_dir.join(gpushare_state::ledger::NAME);
        let raw = std::fs::read(&ledger).unwrap();
        let at = raw
            .windows(8)
            .position(|w| w == b"\"format\"")
            .unwrap_or_else(|| panic!("{label}: {}", String::from_utf8_lossy(&raw)));
        let mut torn = raw.clone();
        torn[at + 8] = b'#';
        std::fs::write(&ledger, torn).unwrap();

        let out = node.ctl(&["repair"]);
        let said = text(&out.stdout);
        assert!(out.status.success(), "{label}: {said}{}", text(&out.stderr));
        let found = u64::from(switch == Switch::Off);
        assert!(
            said.contains(&format!(
                "put the MIG mode of GPU 0 back to {}",
                if found == 1 { "on" } else { "off" }
            )),
            "{label}: {said}"
        );
        assert_eq!(mig(&node), (found, found), "{label}: {said}");
        assert_eq!(driver_instances(&node), 0, "{label}: {said}");
        let st = node.ledger();
        assert!(
            st.mig_modes.is_empty() && st.instances.is_empty(),
            "{label}: {st:?}"
        );
        invariants::check(&node, Some(engine.root.path()))
            .unwrap_or_else(|e| panic!("{label}: after repair:\n{e}"));
        // The next call switches as if nothing happened.
        let (ann, want) = match switch {
            Switch::Off => (&WHOLE, (0, 0)),
            _ => (&SLICE, (1, 1)),
        };
        run_ok(&engine, ann);
        assert_eq!(mig(&node), want, "{label}");
    }
}

/// The two halves of #19 together: a GPU whose slice hosts an MPS daemon (a share inside a
/// MIG instance) is never switched off for a whole-GPU or an MPS request, whose refusal names
/// the client; once the client is gone (the daemon quits and the slice is idle, `gc` leaves
/// the mode alone) the same request switches the GPU.
#[test]
fn a_gpu_whose_slice_hosts_an_mps_daemon_is_never_switched_off() {
    require_root();
    let node = managed_node(true);
    node.use_fake_mps_control("");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new(
        "true",
        &[("gpu.profile", "3g.40gb"), ("gpu.mps", "50")],
        &[],
    );
    let id = unique("mps-in-slice");
    let out = engine.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let pid = node.ledger().mps[0].pid.expect("the daemon runs");

    for ann in [&WHOLE[..], &[("gpu.mps", "25")][..]] {
        let err = refused(&engine, ann);
        assert!(err.contains(&id), "{ann:?}: the client is named: {err}");
        assert_eq!(mig(&node), (1, 1), "{ann:?}: not switched");
        let st = node.ledger();
        assert!(st.mig_modes.is_empty(), "{ann:?}: {st:?}");
        assert_eq!(st.mps.len(), 1, "{ann:?}: the daemon is kept");
        assert!(
            std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "{ann:?}: the daemon runs on"
        );
        assert_eq!(driver_instances(&node), 1, "{ann:?}");
    }

    // The client deleted: its share released, the daemon quits; gc then switches nothing.
    let out = engine.delete(&id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let out = gc(&node, None);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let st = node.ledger();
    assert!(st.mps.is_empty(), "{st:?}");
    assert!(
        st.instances.len() == 1 && st.instances[0].is_idle(),
        "the slice is idle: {st:?}"
    );
    assert_eq!(mig(&node), (1, 1), "gc switches nothing");

    let out = run_ok(&engine, &WHOLE);
    assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), gpu_uuid(&node));
    assert_eq!(mig(&node), (0, 0), "switched off once the slice was idle");
    assert_eq!(driver_instances(&node), 0);
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

/// A kill -9 while an MPS share inside a slice is being set up (slice granted, daemon intent
/// saved, daemon started): what the dead grant left holds the GPU, so a whole-GPU request does
/// not switch MIG off under a daemon that may be starting; `gc` releases it, and the same
/// request then switches the GPU with no daemon left behind.
#[test]
fn kill_while_an_mps_daemon_in_a_slice_starts_then_no_switch_until_gc() {
    require_root();
    for point in [
        "mps_mig.slice_granted",
        "mps_mig.intent_saved",
        "mps_mig.started",
    ] {
        let node = managed_node(true);
        node.use_fake_mps_control("");
        let engine = Engine::new(&node, Runtime::Runc);
        create_killed_at(
            &engine,
            &[("gpu.profile", "3g.40gb"), ("gpu.mps", "50")],
            point,
        );
        let err = refused(&engine, &WHOLE);
        assert!(err.contains("hold(s) it"), "{point}: {err}");
        assert_eq!(mig(&node), (1, 1), "{point}: not switched");
        assert_eq!(driver_instances(&node), 1, "{point}");
        assert!(node.ledger().mig_modes.is_empty(), "{point}");

        let out = gc(&node, None);
        assert!(
            out.status.success(),
            "{point}: {}{}",
            text(&out.stdout),
            text(&out.stderr)
        );
        let st = node.ledger();
        assert!(st.mps.is_empty(), "{point}: {st:?}");
        let out = run_ok(&engine, &WHOLE);
        assert_eq!(env_seen(&out, "CUDA_VISIBLE_DEVICES"), gpu_uuid(&node));
        assert_eq!(mig(&node), (0, 0), "{point}: switched off after gc");
        assert_eq!(driver_instances(&node), 0, "{point}");
        let log = mps_control_log(&node);
        assert_eq!(
            log.matches("start pid=").count(),
            log.matches("exit pid=").count(),
            "{point}: every daemon started has quit: {log}"
        );
        invariants::check(&node, Some(engine.root.path()))
            .unwrap_or_else(|e| panic!("{point}:\n{e}"));
    }
}

/// `mig.manage_mode` as a list: the GPU it names (by UUID here) is switched for a MIG request,
/// the one it does not name is left as the operator set it.
#[test]
fn a_list_switches_only_the_gpus_it_names() {
    require_root();
    let node = SimNode::new("h100-80gb", 2, false);
    let state = node.sim_state();
    let second = state["gpus"][1]["uuid"].as_str().unwrap().to_string();
    node.configure(&format!("[mig]\nmanage_mode = [{second:?}]"));
    let engine = Engine::new(&node, Runtime::Runc);
    let out = run_ok(&engine, &SLICE);
    let mode = |i: usize| {
        let g = &node.sim_state()["gpus"][i];
        (
            g["mig_current"].as_u64().unwrap(),
            g["mig_pending"].as_u64().unwrap(),
        )
    };
    assert_eq!(mode(0), (0, 0), "GPU 0 is not listed: {out}");
    assert_eq!(mode(1), (1, 1), "GPU 1 is: {out}");
    assert!(
        env_seen(&out, "CUDA_VISIBLE_DEVICES").starts_with("MIG-"),
        "{out}"
    );
    assert!(node.ledger().mig_modes.is_empty());
}

/// An MPS share inside a slice on a GPU with MIG off: MIG is turned on for its slice (it is a
/// MIG request first), and the daemon is bound to the new MIG device.
#[test]
fn mig_is_turned_on_for_an_mps_share_inside_a_slice() {
    require_root();
    let node = managed_node(false);
    node.use_fake_mps_control("");
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new(
        SHOW_GPU,
        &[("gpu.profile", "3g.40gb"), ("gpu.mps", "50")],
        &[],
    );
    let id = unique("mps-in-slice");
    let out = engine.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(mig(&node), (1, 1), "MIG was turned on");
    let st = node.ledger();
    assert!(st.mig_modes.is_empty(), "settled with the grant: {st:?}");
    let host = st.mps[0].mig.as_ref().expect("a daemon in a slice");
    let log = mps_control_log(&node);
    assert!(
        log.contains(&format!("visible={}\n", host.mig_uuid)),
        "bound to the new MIG device: {log}"
    );
    let printed = engine.start_and_wait(&b, &id);
    assert_eq!(env_seen(&printed, "CUDA_VISIBLE_DEVICES"), host.mig_uuid);
    assert!(engine.delete(&id).status.success());
    invariants::check(&node, Some(engine.root.path())).unwrap();
}
