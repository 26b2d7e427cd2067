//! Warm grants made by the `gpushare` entry binary from the ledger's offers (core/src/service/offers.rs,
//! fastpath/src/splice.rs), through real runc: the same spec as the full wrapper writes, and the
//! full wrapper's whenever the offers may no longer hold.
use crate::common;
use crate::invariants;

use common::*;
use serde_json::Value;
use std::os::fd::AsRawFd;
use std::process::{Command, Stdio};

fn journal(node: &SimNode) -> String {
    std::fs::read_to_string(node.cfg().state_dir.join(gpushare_state::journal::NAME))
        .unwrap_or_default()
}

/// Whether the entry binary granted `id` (only it writes grant lines).
fn granted_by_entry(node: &SimNode, id: &str) -> bool {
    journal(node)
        .lines()
        .any(|l| l.starts_with('+') && l.split(' ').nth(1) == Some(id))
}

/// `gpushare create`, with extra env for gpushare.
fn create(engine: &Engine, bundle: &Bundle, id: &str, env: &[(&str, &str)]) {
    let mut c: Command = engine.cmd(&["create", "--bundle"]);
    c.arg(bundle.path())
        .arg(id)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(bundle.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(bundle.path().join("stderr")).unwrap());
    let st = c.status().unwrap();
    assert!(
        st.success(),
        "create {id}: {}",
        text(&std::fs::read(bundle.path().join("stderr")).unwrap())
    );
}

/// A node whose pool holds one idle 1g.10gb, released by its hook's journal line.
fn warm_node() -> SimNode {
    SimNode::new("h100-80gb", 1, true)
}

fn warm_up(engine: &Engine) {
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&b, &unique("first"));
}

#[test]
fn the_entry_binary_and_the_full_wrapper_write_the_same_spec() {
    require_root();
    let node = warm_node();
    let engine = Engine::new(&node, Runtime::Runc);
    warm_up(&engine);
    let b = Bundle::new(SHOW_GPU, &[("gpu.profile", "1g.10gb")], &["HOME=/root"]);
    let original = b.config_bytes();

    let by_entry = unique("entry");
    create(&engine, &b, &by_entry, &[]);
    assert!(granted_by_entry(&node, &by_entry), "{}", journal(&node));
    let entry_spec: Value = b.config();
    let printed = engine.start_and_wait(&b, &by_entry);
    let uuid = env_seen(&printed, "CUDA_VISIBLE_DEVICES");
    assert!(uuid.starts_with("MIG-"), "{printed}");
    assert!(engine.delete(&by_entry).status.success());

    // The same spec again, the full wrapper made to take it (a failpoint that never fires).
    std::fs::write(b.path().join("config.json"), &original).unwrap();
    let by_full = unique("full");
    create(
        &engine,
        &b,
        &by_full,
        &[("GPUSHARE_FAILPOINT", "none:kill")],
    );
    assert!(!granted_by_entry(&node, &by_full));
    assert_eq!(b.config(), entry_spec, "the same JSON from both");
    let printed = engine.start_and_wait(&b, &by_full);
    assert_eq!(
        env_seen(&printed, "CUDA_VISIBLE_DEVICES"),
        uuid,
        "the same slice"
    );
    assert!(engine.delete(&by_full).status.success());
    invariants::check(&node, Some(engine.root.path())).unwrap();
    let st = node.ledger();
    assert_eq!((st.stats.grants_cold, st.stats.grants_warm), (1, 2));
    assert_eq!(st.stats.grants_by_entry, 1);
    let status = text(&node.ctl(&["status"]).stdout);
    assert!(
        status.contains("2 warm (1 of them by gpushare itself"),
        "{status}"
    );
}

#[test]
fn offers_stop_applying_once_the_config_or_the_ledger_changed() {
    require_root();
    let node = warm_node();
    let engine = Engine::new(&node, Runtime::Runc);
    warm_up(&engine);
    let run = |label: &str| {
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        let id = unique(label);
        create(&engine, &b, &id, &[]);
        let by_entry = granted_by_entry(&node, &id);
        assert!(engine.delete(&id).status.success());
        by_entry
    };
    assert!(run("plain"), "offers hold: {}", journal(&node));

    // An edited config (here only its mtime) may change what a grant is: the full wrapper.
    let cfg = node.config();
    let bytes = std::fs::read(&cfg).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&cfg, bytes).unwrap();
    assert!(!run("config-touched"));
    assert!(run("offers-rewritten"), "the full wrapper wrote new offers");

    // A ledger rewritten by anyone else (gc folding the journal) is a new generation.
    let gc = node.ctl(&["gc", "--grace", "0"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert!(!run("after-gc"));
    assert!(run("again"));

    // A config that asks for a log line per grant keeps grants in the full wrapper.
    node.configure("[log]\nlevel = \"info\"");
    assert!(!run("logged"));
    assert!(!run("logged-again"));
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

#[test]
fn a_container_asking_again_keeps_its_slice_through_the_full_wrapper() {
    require_root();
    let node = warm_node();
    let engine = Engine::new(&node, Runtime::Runc);
    warm_up(&engine);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("again");
    create(&engine, &b, &id, &[]);
    assert!(granted_by_entry(&node, &id));
    let first = node.ledger().lease_of(&id).unwrap();
    // An engine retrying create for the same id (runc refuses it: the id exists).
    let mut c = engine.cmd(&["create", "--bundle"]);
    c.arg(b.path()).arg(&id).stdin(Stdio::null());
    let out = run(&mut c);
    assert!(
        !out.status.success(),
        "runc refuses a second create of one id"
    );
    // The full wrapper took it (and folded the journal): the same lease, no second grant.
    let st = node.ledger();
    assert_eq!(st.lease_of(&id), Some(first));
    assert_eq!(st.stats.grants_warm, 1, "{:?}", st.stats);
    assert_eq!(journal(&node), "");
    assert!(engine.delete(&id).status.success());
    assert!(node.ledger().lease_of(&id).is_none());
    invariants::check(&node, Some(engine.root.path())).unwrap();
}

/// Grants and releases by the entry binary are journal lines; past a bound the next create goes
/// to the full wrapper, which folds them into the ledger. Over many containers the journal stays
/// short, nearly every grant is the entry binary's, and the ledger counts every one of them.
#[test]
fn the_journal_stays_short_and_every_grant_is_counted() {
    require_root();
    let node = warm_node();
    node.configure("runtime = \"/bin/true\"");
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let engine_spec = b.config_bytes();
    let cycles: u64 = 150;
    let mut longest = 0;
    for i in 0..cycles {
        std::fs::write(b.path().join("config.json"), &engine_spec).unwrap();
        let id = format!("cycle-{i}");
        let out = run(Command::new(ENTRY)
            .env("GPUSHARE_CONFIG", node.config())
            .args(["create", "--bundle"])
            .arg(b.path())
            .arg(&id));
        assert!(out.status.success(), "create {id}: {}", text(&out.stderr));
        let out = run_hook(&b.config(), &state_of(&id, &b));
        assert!(out.status.success(), "hook {id}: {}", text(&out.stderr));
        longest = longest.max(journal(&node).len());
    }
    // One container's grant and release lines are well under 200 bytes.
    assert!(
        longest <= gpushare_state::journal::MAX_GRANT_BYTES + 200,
        "the journal grew to {longest} bytes"
    );
    // Unfolded, it would hold a grant and a release line for every container.
    let lines = journal(&node).lines().count();
    assert!(
        lines < 2 * cycles as usize,
        "the journal was folded at least once ({lines} lines)"
    );
    let st = node.status_json();
    assert!(st["leases"].as_array().unwrap().is_empty(), "{st:#}");
    let stats = &st["stats"];
    // The first grant made the instance; every later one reused it.
    assert_eq!(stats["grants_cold"], 1, "{st:#}");
    assert_eq!(stats["grants_warm"], cycles - 1, "{st:#}");
    let by_entry = stats["grants_by_entry"].as_u64().unwrap_or(0);
    assert!(
        by_entry * 10 >= cycles * 9,
        "most grants were the entry binary's: {by_entry} of {cycles}"
    );
}

/// The lines the entry binary wrote to the engine's runtime log (`engine.create` passes
/// `--log B/runtime-log.json --log-format json`, as containerd does).
fn entry_log(b: &Bundle) -> Vec<Value> {
    std::fs::read_to_string(b.path().join("runtime-log.json"))
        .unwrap_or_default()
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .filter(|v| {
            v["msg"]
                .as_str()
                .is_some_and(|m| m.starts_with("gpushare: "))
        })
        .collect()
}

/// The one line the entry binary logged, whose message holds `what`, at `level`.
fn logged_once(b: &Bundle, id: &str, level: &str, what: &str) {
    let lines = entry_log(b);
    assert_eq!(lines.len(), 1, "{lines:?}");
    let msg = lines[0]["msg"].as_str().unwrap();
    assert_eq!(lines[0]["level"], level, "{msg}");
    assert!(
        msg.starts_with(&format!("gpushare: create {id}: ")),
        "{msg}"
    );
    assert!(msg.contains(what), "{msg}");
    assert!(msg.ends_with("; gpushare-runtime takes it over"), "{msg}");
    let time = lines[0]["time"].as_str().unwrap();
    assert!(time.len() == 20 && time.ends_with('Z'), "{time}");
}

#[test]
fn a_hand_over_a_person_should_know_of_is_logged_once_and_an_ordinary_one_not() {
    require_root();
    let node = warm_node();
    let engine = Engine::new(&node, Runtime::Runc);
    let gpu = || Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);

    // Ordinary hand-overs, each granted by the full wrapper: no offers made yet, then the
    // offers spent (the only warm slice held by another container).
    let (cold, cold_id) = (gpu(), unique("cold"));
    assert!(engine.create(&cold, &cold_id).status.success());
    assert!(engine.delete(&cold_id).status.success());
    let (warm, warm_id) = (gpu(), unique("warm"));
    assert!(engine.create(&warm, &warm_id).status.success());
    assert!(granted_by_entry(&node, &warm_id), "{}", journal(&node));
    let (spent, spent_id) = (gpu(), unique("spent"));
    assert!(engine.create(&spent, &spent_id).status.success());
    assert!(!granted_by_entry(&node, &spent_id));
    for (b, id) in [(&cold, &cold_id), (&warm, &warm_id), (&spent, &spent_id)] {
        assert_eq!(entry_log(b), Vec::<Value>::new(), "{id}");
    }
    assert!(engine.delete(&warm_id).status.success());
    assert!(engine.delete(&spent_id).status.success());
    // Two leases released since the offers were made: spent too. One more container through
    // the full wrapper makes them apply again.
    warm_up(&engine);

    // The ledger's lock held past the entry binary's wait: it says so, and the full wrapper
    // grants once the lock is free.
    let lock_path = node.cfg().state_dir.join(gpushare_state::lock::NAME);
    let lock = std::fs::File::open(&lock_path).unwrap();
    // SAFETY: flock on a descriptor this test owns.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let (busy, busy_id) = (gpu(), unique("busy"));
    std::thread::scope(|s| {
        let create = s.spawn(|| engine.create(&busy, &busy_id));
        let waited = std::time::Instant::now();
        while entry_log(&busy).is_empty() && waited.elapsed().as_secs() < 20 {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        drop(lock);
        let out = create.join().unwrap();
        assert!(out.status.success(), "{}", text(&out.stderr));
    });
    logged_once(&busy, &busy_id, "info", "lock stayed busy");
    assert!(!granted_by_entry(&node, &busy_id));
    assert!(engine.delete(&busy_id).status.success());

    // Offers made under a config file edited since: stale, said on stderr (the text form, as
    // runc logs) when the engine gives no --log.
    let cfg = node.config();
    let bytes = std::fs::read(&cfg).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&cfg, bytes).unwrap();
    let (stale, stale_id) = (gpu(), unique("stale"));
    create(&engine, &stale, &stale_id, &[]);
    let stderr = text(&std::fs::read(stale.path().join("stderr")).unwrap());
    let said: Vec<&str> = stderr
        .lines()
        .filter(|l| l.contains("gpushare: "))
        .collect();
    assert_eq!(said.len(), 1, "{stderr}");
    assert!(
        said[0].starts_with("time=\"")
            && said[0].contains(&format!(
                "level=info msg=\"gpushare: create {stale_id}: the warm offers were made under another config file"
            )),
        "{stderr}"
    );
    assert!(!granted_by_entry(&node, &stale_id));
    assert!(engine.delete(&stale_id).status.success());
    invariants::check(&node, Some(engine.root.path())).unwrap();
}
