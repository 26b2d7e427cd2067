//! The poststop hook gpushare writes into GPU specs: the `gpushare` entry binary run under the
//! name `gpushare-hook`. A plain release is one line in the ledger's release journal, folded
//! into the ledger by the next locked change; anything else reaches the full `gpushare-hook`
//! with the container state it already read from stdin.
use crate::common;
use crate::invariants;

use common::*;
use serde_json::{json, Value};
use std::os::unix::io::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn state_dir(node: &SimNode) -> PathBuf {
    node.cfg().state_dir
}

/// The journal's lines, after its version line.
fn journal(node: &SimNode) -> String {
    let raw =
        std::fs::read(state_dir(node).join(gpushare_state::journal::NAME)).unwrap_or_default();
    let lines = raw
        .strip_prefix(gpushare_state::journal::VERSION_LINE)
        .unwrap_or(&raw);
    String::from_utf8(lines.to_vec()).unwrap()
}

/// The ledger file as written, with no journal applied.
fn ledger_file(node: &SimNode) -> Value {
    serde_json::from_slice(
        &std::fs::read(state_dir(node).join(gpushare_state::ledger::NAME)).unwrap(),
    )
    .unwrap()
}

fn file_lease_of(node: &SimNode, id: &str) -> bool {
    ledger_file(node)["instances"]
        .as_array()
        .unwrap()
        .iter()
        .any(|r| r["lease"]["container_id"] == id)
}

/// A container created through gpushare with a 1g.10gb slice (not started).
fn leased(engine: &Engine, id: &str) -> Bundle {
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&b, id);
    assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
    b
}

fn bare_delete(engine: &Engine, id: &str) {
    let out = run(&mut engine.bare(&["delete", "--force", id]));
    assert!(out.status.success(), "runc delete: {}", text(&out.stderr));
}

#[test]
fn a_plain_release_is_one_journal_line_and_so_is_the_next_warm_grant() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let id = unique("c");
    let b = leased(&engine, &id);
    let spec = b.config();
    let hook = &spec["hooks"]["poststop"][0];
    assert_eq!(hook["path"], ENTRY, "the entry binary is the hook: {hook}");
    assert_eq!(hook["args"][0], "gpushare-hook");

    let out = run_hook(&spec, &state_of(&id, &b));
    assert!(out.status.success(), "hook: {}", text(&out.stderr));
    assert!(
        journal(&node).starts_with(&format!("{id} ")),
        "{}",
        journal(&node)
    );
    assert!(
        file_lease_of(&node, &id),
        "the ledger file is not rewritten by the hook"
    );
    assert!(
        node.ledger().lease_of(&id).is_none(),
        "views apply the journal"
    );
    let status = node.status_json().to_string();
    assert!(!status.contains(&id), "status shows no lease: {status}");

    // runc's own delete runs the hook again: nothing more is written.
    bare_delete(&engine, &id);
    assert_eq!(journal(&node).lines().count(), 1, "{}", journal(&node));

    // The next grant takes the same instance: the entry binary grants it from the offers, as
    // another journal line; the next locked change (here gc) writes both into the ledger.
    let next = unique("next");
    leased(&engine, &next);
    assert!(
        journal(&node).contains(&format!(" {next} ")),
        "{}",
        journal(&node)
    );
    let st = node.ledger();
    assert_eq!(st.instances.len(), 1, "the idle instance was reused");
    assert!(st.lease_of(&next).is_some());
    assert_eq!(st.stats.grants_warm, 1);
    let gc = node.ctl(&["gc", "--grace", "0"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert_eq!(journal(&node), "");
    assert!(!file_lease_of(&node, &id));
    assert!(file_lease_of(&node, &next));
    let del = engine.delete(&next);
    assert!(del.status.success(), "{}", text(&del.stderr));
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn the_entry_hook_and_the_full_hook_leave_the_same_ledger() {
    require_root();
    let released_by = |full: bool| {
        let node = SimNode::new("h100-80gb", 1, true);
        let engine = Engine::new(&node, Runtime::Runc);
        let id = "same-id";
        let b = leased(&engine, id);
        let out = if full {
            let mut c = Command::new(HOOK);
            c.args(["poststop", "--config"]).arg(node.config());
            with_stdin(&mut c, &state_of(id, &b))
        } else {
            run_hook(&b.config(), &state_of(id, &b))
        };
        assert!(out.status.success(), "{}", text(&out.stderr));
        bare_delete(&engine, id);
        // A locked load and save (gc) folds what the entry hook journaled.
        let gc = node.ctl(&["gc", "--grace", "0"]);
        assert!(gc.status.success(), "{}", text(&gc.stderr));
        assert_eq!(journal(&node), "");
        let mut st = ledger_file(&node);
        for r in st["instances"].as_array_mut().unwrap() {
            assert_eq!(r["lease"], Value::Null);
            assert!(r["idle_since"].is_u64(), "{r}");
            // Times, uuids and ids differ between two nodes.
            for k in ["idle_since", "created_at", "gpu_uuid", "made"] {
                r[k] = Value::Null;
            }
        }
        for k in ["gpus", "stats", "generation"] {
            st[k] = Value::Null;
        }
        st
    };
    assert_eq!(released_by(false), released_by(true));
}

#[test]
fn what_is_not_plain_goes_to_the_full_hook_with_the_state_it_read() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let released_without_journal = |id: &str| {
        assert!(
            !file_lease_of(&node, id),
            "{id}: released in the ledger file"
        );
        assert!(!journal(&node).contains(id), "{id}: {}", journal(&node));
    };

    // An id written with an escape: only a JSON parser reads it right.
    let id = unique("esc");
    let b = leased(&engine, &id);
    let escaped = format!(
        r#"{{"ociVersion":"1.0.2","id":"\u{:04x}{}","status":"stopped","pid":0}}"#,
        id.as_bytes()[0],
        &id[1..]
    );
    let out = run_hook(&b.config(), escaped.as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    released_without_journal(&id);
    bare_delete(&engine, &id);

    // A busy ledger: the entry hook waits briefly, then the full hook waits its own time.
    let id = unique("busy");
    let b = leased(&engine, &id);
    let lock = std::fs::File::open(state_dir(&node).join(gpushare_state::lock::NAME)).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let unlock = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        drop(lock);
    });
    let t = Instant::now();
    let out = run_hook(&b.config(), &state_of(&id, &b));
    unlock.join().unwrap();
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        t.elapsed() >= Duration::from_millis(600),
        "it waited for the lock"
    );
    released_without_journal(&id);
    bare_delete(&engine, &id);

    // An MPS daemon on the node: a release may have to stop it, which is the full hook's.
    let id = unique("mps");
    let b = leased(&engine, &id);
    let path = state_dir(&node).join(gpushare_state::ledger::NAME);
    let mut ledger = ledger_file(&node);
    ledger["mps"] = json!([{"gpu_uuid": "GPU-x", "gpu_index": 0, "gpu_minor": 0, "pid": null,
        "pipe_dir": "/nonexistent", "log_dir": "/nonexistent", "percent": 50, "memory": null,
        "started_at": 1, "clients": []}]);
    std::fs::write(&path, serde_json::to_vec(&ledger).unwrap()).unwrap();
    let out = run_hook(&b.config(), &state_of(&id, &b));
    assert!(out.status.success(), "{}", text(&out.stderr));
    released_without_journal(&id);
    let mut ledger = ledger_file(&node);
    ledger["mps"] = json!([]);
    std::fs::write(&path, serde_json::to_vec(&ledger).unwrap()).unwrap();
    bare_delete(&engine, &id);

    // A command the entry hook does not know: the full hook's answer, exit code included.
    let out = Command::new(ENTRY)
        .arg0("gpushare-hook")
        .arg("prestart")
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "clap's usage error: {}",
        text(&out.stderr)
    );
    assert!(
        text(&out.stderr).contains("prestart"),
        "{}",
        text(&out.stderr)
    );

    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn a_precreate_lease_is_released_by_the_full_hook() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let mut c = Command::new(HOOK);
    c.args(["precreate", "--config"]).arg(node.config());
    let out = with_stdin(&mut c, &b.config_bytes());
    assert!(out.status.success(), "precreate: {}", text(&out.stderr));
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let claim = spec["annotations"]["gpushare.lease"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(file_lease_of(&node, &claim));
    let state = json!({"ociVersion": "1.0.2", "id": "podman-ctr", "status": "creating", "pid": 0,
                       "annotations": spec["annotations"]});
    // The runtime runs the createRuntime hook precreate added: the lease moves to the id.
    let out = run_create_runtime_hook(&spec, state.to_string().as_bytes());
    assert!(out.status.success(), "bind: {}", text(&out.stderr));
    assert!(!file_lease_of(&node, &claim) && file_lease_of(&node, "podman-ctr"));
    let out = run_hook(&spec, state.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        !file_lease_of(&node, "podman-ctr"),
        "the container's lease is released"
    );
    assert_eq!(journal(&node), "");
}

/// The spec's first createRuntime hook, run as the runtime runs it, with `state` on stdin.
fn run_create_runtime_hook(spec: &Value, state: &[u8]) -> std::process::Output {
    let hook = &spec["hooks"]["createRuntime"][0];
    let args: Vec<String> = serde_json::from_value(hook["args"].clone()).unwrap();
    let env: Vec<String> = serde_json::from_value(hook["env"].clone()).unwrap();
    let mut c = Command::new(hook["path"].as_str().unwrap());
    std::os::unix::process::CommandExt::arg0(&mut c, &args[0])
        .args(&args[1..])
        .env_clear()
        .envs(env.iter().map(|e| e.split_once('=').unwrap()));
    with_stdin(&mut c, state)
}

/// Hooks-only mode: another container that names a precreate claim in its own annotations
/// (read from `status` or `podman inspect`) releases nothing of it, before or after the claim's
/// own container is created; that container's poststop releases it (issue 16, finding 9).
#[test]
fn a_precreate_claim_named_by_another_container_is_not_released() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let mut c = Command::new(HOOK);
    c.args(["precreate", "--config"]).arg(node.config());
    let out = with_stdin(&mut c, &b.config_bytes());
    assert!(out.status.success(), "precreate: {}", text(&out.stderr));
    let spec: Value = serde_json::from_slice(&out.stdout).unwrap();
    let claim = spec["annotations"]["gpushare.lease"]
        .as_str()
        .unwrap()
        .to_string();
    // The thief's container: its own gpu.* annotation (so the hooks.d poststop runs for it)
    // and the victim's claim.
    let thief = json!({"ociVersion": "1.0.2", "id": "thief", "status": "stopped", "pid": 0,
                       "annotations": {"gpu.share": "timeslice", "gpushare.lease": claim}});
    let out = run_hook(&spec, thief.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        file_lease_of(&node, &claim),
        "still the victim's before it is created"
    );

    let victim = json!({"ociVersion": "1.0.2", "id": "victim", "status": "creating", "pid": 0,
                        "annotations": spec["annotations"]});
    let out = run_create_runtime_hook(&spec, victim.to_string().as_bytes());
    assert!(out.status.success(), "bind: {}", text(&out.stderr));
    let out = run_hook(&spec, thief.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        file_lease_of(&node, "victim"),
        "still the victim's once created"
    );

    let out = run_hook(&spec, victim.to_string().as_bytes());
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(!file_lease_of(&node, "victim") && !file_lease_of(&node, &claim));
}

/// runc stops at the first poststop hook that fails (and still deletes): gpushare's release
/// hook goes first, whether the full wrapper or the entry binary edited the spec.
#[test]
fn a_failing_hook_of_the_containers_own_does_not_keep_the_slice() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    for round in ["cold", "warm"] {
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        let mut spec = b.config();
        spec["hooks"] = json!({"poststop": [{"path": "/bin/false", "args": ["false"]}]});
        std::fs::write(
            b.path().join("config.json"),
            serde_json::to_vec(&spec).unwrap(),
        )
        .unwrap();
        let id = unique(round);
        let out = engine.create(&b, &id);
        assert!(out.status.success(), "{round}: {}", text(&out.stderr));
        let hooks = &b.config()["hooks"]["poststop"];
        assert_eq!(hooks[0]["args"][0], "gpushare-hook", "{round}: {hooks}");
        assert_eq!(
            hooks[1]["path"], "/bin/false",
            "{round}: the container's own is kept"
        );
        engine.start_and_wait(&b, &id);
        let del = engine.delete(&id);
        assert!(del.status.success(), "{round}: {}", text(&del.stderr));
        assert!(node.ledger().lease_of(&id).is_none(), "{round}: released");
    }
    assert_eq!(
        node.ledger().stats.grants_by_entry,
        1,
        "the second was the entry binary's"
    );
    invariants::check(&node, Some(engine.root.path())).unwrap();
}
