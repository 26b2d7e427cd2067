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
    ["ledger.json", "journal"].iter().any(|f| {
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
        (dir.join("ledger.json"), 0o666, 0o600),
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
    chmod(&dir.join("offers"), 0o646);
    let by_entry = node.ledger().stats.grants_by_entry;
    let b = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    engine.run_to_end(&b, &unique("after"));
    assert_eq!(
        node.ledger().stats.grants_by_entry,
        by_entry,
        "not granted from those offers"
    );
    let mode = std::fs::metadata(dir.join("offers"))
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
    let _ = std::fs::remove_file(dir.join("journal"));
    std::os::unix::fs::symlink(&victim, dir.join("journal")).unwrap();

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
    std::fs::remove_file(dir.join("journal")).unwrap();
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
