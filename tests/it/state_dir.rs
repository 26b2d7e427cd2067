//! The state folder and its files are trusted only when root's alone and never through a
//! symlink (issue 16, finding 5), and temp files killed writers leave are swept by `gc`
//! (finding 7). Through the binaries, with real runc, on a simulated H100.
use crate::common;

use common::*;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

fn chmod(p: &Path, mode: u32) {
    std::fs::set_permissions(p, std::fs::Permissions::from_mode(mode)).unwrap();
}

fn state_dir(node: &SimNode) -> PathBuf {
    node.cfg().state_dir
}

/// Whether the ledger's files (read as bytes: a refused folder cannot be loaded) name `id`.
fn named(node: &SimNode, id: &str) -> bool {
    let dir = state_dir(node);
    [gpushare_state::ledger::NAME, gpushare_state::journal::NAME]
        .iter()
        .any(|f| {
            std::fs::read_to_string(dir.join(f))
                .is_ok_and(|t| t.contains(&format!("\"{id}\"")) || t.contains(&format!(" {id} ")))
        })
}

#[test]
fn a_state_folder_or_file_others_can_write_fails_gpu_requests_closed() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    // An idle instance and its offer: the entry binary would grant the next one itself.
    let first = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&first, &unique("first"));
    let dir = state_dir(&node);

    for (path, mode, back) in [
        (dir.clone(), 0o777, 0o700),
        (dir.join(gpushare_state::ledger::NAME), 0o666, 0o600),
    ] {
        chmod(&path, mode);
        let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        let id = unique("refused");
        let out = engine.create(&b, &id);
        let said = text(&out.stderr);
        assert!(
            !out.status.success(),
            "{}: a GPU create must fail",
            path.display()
        );
        assert!(
            said.contains(&path.display().to_string()) && said.contains(&format!("{mode:04o}")),
            "the message names {} and its mode: {said}",
            path.display()
        );
        assert!(!named(&node, &id), "nothing granted to {id}");
        assert_eq!(
            b.config()["process"]["env"].as_array().unwrap().len(),
            1,
            "spec untouched"
        );

        // A container that asks for no GPU never looks at the state folder.
        let plain = Bundle::new("echo plain", &[], &[]);
        assert_eq!(engine.run_to_end(&plain, &unique("plain")), "plain\n");
        chmod(&path, back);
    }
    // Offers others could have written are never spliced into a spec: the full wrapper grants,
    // and writes offers of its own in their place.
    chmod(&dir.join(gpushare_state::offers::NAME), 0o646);
    let by_entry = node.ledger().stats.grants_by_entry;
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&b, &unique("after"));
    assert_eq!(
        node.ledger().stats.grants_by_entry,
        by_entry,
        "not granted from those offers"
    );
    let mode = std::fs::metadata(dir.join(gpushare_state::offers::NAME))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600);
}

#[test]
fn delete_with_an_unsafe_state_folder_keeps_the_lease_and_says_why() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("held");
    assert!(engine.create(&b, &id).status.success());
    let dir = state_dir(&node);
    chmod(&dir, 0o777);
    let out = run(&mut engine.cmd(&["delete", "--force", &id]));
    let said = text(&out.stderr);
    assert!(
        out.status.success(),
        "the runtime's delete still runs: {said}"
    );
    assert!(engine.state(&id).is_none(), "the container is deleted");
    assert!(
        said.contains(&dir.display().to_string()) && said.contains("0777"),
        "{said}"
    );
    assert!(
        named(&node, &id),
        "the lease is not touched through an unsafe folder"
    );
    chmod(&dir, 0o700);
    let gc = node.ctl(&["gc", "--grace", "0"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    assert!(
        node.ledger().lease_of(&id).is_none(),
        "gc releases it once the folder is fixed"
    );
}

#[test]
fn the_release_hook_never_appends_through_a_symlinked_journal() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("linked");
    assert!(engine.create(&b, &id).status.success());
    let dir = state_dir(&node);
    let victim = node.root().join("victim-file");
    std::fs::write(&victim, "precious\n").unwrap();
    let _ = std::fs::remove_file(dir.join(gpushare_state::journal::NAME));
    std::os::unix::fs::symlink(&victim, dir.join(gpushare_state::journal::NAME)).unwrap();

    let out = run_hook(&b.config(), &state_of(&id, &b));
    assert_eq!(
        std::fs::read_to_string(&victim).unwrap(),
        "precious\n",
        "nothing written through the link"
    );
    assert!(!out.status.success(), "the hook fails closed");
    let said = text(&out.stderr);
    assert!(
        said.contains("journal") && said.contains("symlink"),
        "{said}"
    );
    std::fs::remove_file(dir.join(gpushare_state::journal::NAME)).unwrap();
    assert!(node.ledger().lease_of(&id).is_some(), "still leased");
    engine.delete(&id);
}

#[test]
fn gc_sweeps_temp_files_that_killed_writers_left() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&b, &unique("one"));
    let dir = state_dir(&node);
    // Past the kernel's pid_max: a writer that is surely gone.
    let stale = [
        dir.join(".ledger.json.gpushare-tmp.99999999"),
        dir.join(".offers.gpushare-tmp.99999999.0123456789abcdef"),
    ];
    let young = dir.join(".ledger.json.gpushare-tmp.99999998.00");
    let live = dir.join(format!(
        ".ledger.json.gpushare-tmp.{}.00",
        std::process::id()
    ));
    for f in stale.iter().chain([&young, &live]) {
        std::fs::write(f, "x").unwrap();
    }
    for f in stale.iter().chain([&live]) {
        let out = run(std::process::Command::new("touch")
            .args(["-d", "2 hours ago"])
            .arg(f));
        assert!(out.status.success());
    }
    let gc = node.ctl(&["gc"]);
    assert!(gc.status.success(), "{}", text(&gc.stderr));
    for f in &stale {
        assert!(!f.exists(), "{} is swept", f.display());
    }
    assert!(young.exists(), "a young one may be a live write");
    assert!(live.exists(), "a live writer's is never taken");
}

/// Whether the entry binary granted `id` (only it writes grant lines).
fn granted_by_entry(node: &SimNode, id: &str) -> bool {
    std::fs::read_to_string(state_dir(node).join(gpushare_state::journal::NAME))
        .unwrap_or_default()
        .lines()
        .any(|l| l.starts_with('+') && l.split(' ').nth(1) == Some(id))
}

#[test]
fn a_journal_of_another_version_is_never_read_or_appended_to_until_repair() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    // An idle instance and its offer: the entry binary would grant the next one itself.
    let first = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&first, &unique("first"));
    let journal = state_dir(&node).join(gpushare_state::journal::NAME);
    let newer = b"#gpushare-journal 2\n+MIG-x c 1 1 - 1;\n";
    std::fs::write(&journal, newer).unwrap();
    chmod(&journal, 0o600);

    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("refused");
    let out = engine.create(&b, &id);
    let said = text(&out.stderr);
    assert!(!out.status.success(), "a GPU create must fail: {said}");
    assert!(
        said.contains(&journal.display().to_string()) && said.contains("#gpushare-journal 2"),
        "the message names the journal and its version: {said}"
    );
    assert_eq!(std::fs::read(&journal).unwrap(), newer, "nothing appended");
    let plain = Bundle::new("echo plain", &[], &[]);
    assert_eq!(engine.run_to_end(&plain, &unique("plain")), "plain\n");

    let root = engine.root.path().display().to_string();
    let out = node.ctl(&["repair", "--runtime-root", &root]);
    assert!(
        out.status.success(),
        "repair: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
    assert!(!journal.exists(), "repair drops the journal");
    let id = unique("after");
    let out = engine.create(&b, &id);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(node.ledger().lease_of(&id).is_some());
    assert!(run(&mut engine.cmd(&["delete", "--force", &id]))
        .status
        .success());
}

#[test]
fn a_journal_from_before_the_version_line_is_read_and_appended_to_as_it_is() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);
    let first = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&first, &unique("first"));
    let held = unique("held");
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    assert!(engine.create(&b, &held).status.success());
    assert!(
        granted_by_entry(&node, &held),
        "granted by the entry binary"
    );
    let dir = state_dir(&node);
    let journal = dir.join(gpushare_state::journal::NAME);
    let written = std::fs::read(&journal).unwrap();
    let lines = written
        .strip_prefix(gpushare_state::journal::VERSION_LINE)
        .expect("a new journal starts with its version line");
    // The same lines, and a release of `held`, as an older gpushare's binaries wrote them: no
    // version line.
    let ledger = std::fs::read(dir.join(gpushare_state::ledger::NAME)).unwrap();
    let g = gpushare_state::ledger::generation(&ledger).expect("a header");
    let old = [lines, format!("{held} 1795580185 {g};\n").as_bytes()].concat();
    std::fs::write(&journal, &old).unwrap();
    let old = String::from_utf8(old).unwrap();
    assert!(node.ledger().lease_of(&held).is_none(), "read as version 1");

    // The next warm grant takes the instance it freed, and appends to the journal as it is.
    let next = unique("next");
    let b2 = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let out = engine.create(&b2, &next);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(
        granted_by_entry(&node, &next),
        "granted by the entry binary"
    );
    let now = std::fs::read_to_string(&journal).unwrap();
    assert!(now.starts_with(&old), "{now}");
    assert!(!now.contains('#'), "no version line in the middle: {now}");
    assert!(node.ledger().lease_of(&next).is_some());
    for id in [&held, &next] {
        assert!(run(&mut engine.cmd(&["delete", "--force", id]))
            .status
            .success());
    }
}
