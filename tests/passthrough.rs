//! Everything but create and delete reaches the runtime unchanged, exit codes preserved.

mod common;
use common::*;

#[test]
fn runc_commands_pass_through_with_exit_codes() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let engine = Engine::new(&node, Runtime::Runc);

    let ours = run(&mut engine.cmd(&["--version"]));
    let theirs = run(&mut engine.bare(&["--version"]));
    assert!(ours.status.success());
    assert_eq!(ours.stdout, theirs.stdout, "--version is runc's");

    let ours = run(&mut engine.cmd(&["features"]));
    let theirs = run(&mut engine.bare(&["features"]));
    assert_eq!(ours.status.code(), theirs.status.code());
    assert_eq!(ours.stdout, theirs.stdout, "features is runc's");

    // Unknown container: runc's own error and exit code, for state, kill, ps and delete.
    for args in [
        &["state", "nope"][..],
        &["kill", "nope", "KILL"],
        &["ps", "nope"],
        &["delete", "nope"],
    ] {
        let ours = run(&mut engine.cmd(args));
        let theirs = run(&mut engine.bare(args));
        assert_eq!(ours.status.code(), theirs.status.code(), "{args:?}");
        assert_ne!(ours.status.code(), Some(0), "{args:?}");
    }

    // A living container: state, ps and kill work through gpushare.
    let bundle = Bundle::new("sleep 30", &[("gpu.profile", "1g.10gb")], &[]);
    let id = unique("pass");
    assert!(engine.create(&bundle, &id).status.success());
    assert!(run(&mut engine.cmd(&["start", &id])).status.success());
    let st = engine.state(&id).unwrap();
    assert_eq!(st["status"], "running");
    assert_eq!(st["annotations"]["gpu.profile"], "1g.10gb");
    let ps = run(&mut engine.cmd(&["ps", &id]));
    assert!(
        ps.status.success() && text(&ps.stdout).contains("PID"),
        "{}",
        text(&ps.stdout)
    );
    assert!(run(&mut engine.cmd(&["kill", &id, "KILL"]))
        .status
        .success());
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    while engine.state(&id).unwrap()["status"] != "stopped" {
        assert!(std::time::Instant::now() < deadline);
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(engine.delete(&id).status.success());
    assert!(node.ledger().lease_of(&id).is_none());
}
