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

/// A runtime that records how it was run and exits 3 (a refusal, to tell its code from ours).
fn recorder(dir: &std::path::Path, name: &str, log: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\necho \"{name} $*\" >> {}\nexit 3\n",
            log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The entry binary settles what it can itself; for every input it must do what the full
/// wrapper would: same runtime, same argv, same exit code, same grant. Configs it reads and
/// configs it does not (an unknown key, an error below the first table, a non-string value on
/// top), empty bundles, specs with and without a request.
#[test]
fn the_entry_binary_and_the_full_wrapper_agree() {
    require_root();
    let node = SimNode::new("h100-80gb", 1, true);
    let dir = TempDir::new("agree");
    let log = dir.path().join("runs.log");
    let configured = recorder(dir.path(), "configured", &log);
    // What a config the full wrapper cannot use falls back to: runc on PATH.
    let bin = dir.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    recorder(&bin, "runc", &log);
    let path = format!("{}:/usr/bin:/bin", bin.display());
    let base = std::fs::read_to_string(node.config()).unwrap();
    let top = format!("runtime = {:?}\n", configured.display().to_string());
    let configs = [
        ("readable", format!("{top}{base}")),
        (
            "unknown top-level key",
            format!("{top}stat_dir = \"/x\"\n{base}"),
        ),
        (
            "broken below a table",
            format!("{top}{base}\n[pool]\nno_such = 1\n"),
        ),
        (
            "non-string on top",
            format!("pool.lock_timeout_ms = 5\n{top}{base}"),
        ),
        (
            "runtime missing",
            format!("runtime = \"/nonexistent/runc\"\n{base}"),
        ),
    ];
    let plain = Bundle::new("true", &[], &[]);
    let gpu = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    for (what, text) in configs {
        let cfg = dir.path().join("config.toml");
        std::fs::write(&cfg, &text).unwrap();
        let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (pb, gb) = (
            plain.path().display().to_string(),
            gpu.path().display().to_string(),
        );
        // Each case a sequence of commands, run from `cwd` by each binary in turn.
        // (steps, working folder, SIGCHLD ignored as some engines leave it)
        let cases: Vec<(Vec<Vec<String>>, &std::path::Path, bool)> = vec![
            (vec![sv(&["state", "x"])], dir.path(), false),
            (
                vec![sv(&["--root", "/r", "kill", "x", "KILL"])],
                dir.path(),
                false,
            ),
            (
                vec![sv(&["create", "--bundle", &pb, "p"])],
                dir.path(),
                false,
            ),
            (vec![sv(&["create", "--bundle=", "e"])], plain.path(), false),
            (vec![sv(&["create", "--bundle=", "e"])], gpu.path(), false),
            (
                vec![
                    sv(&["create", "--bundle", &gb, "g"]),
                    sv(&["delete", "--force", "g"]),
                ],
                dir.path(),
                false,
            ),
            (
                vec![
                    sv(&["create", "--bundle", &gb, "g"]),
                    sv(&["delete", "--force", "g"]),
                ],
                dir.path(),
                true,
            ),
        ];
        for (steps, cwd, no_sigchld) in cases {
            let mut seen = Vec::new();
            for binary in [SHIM, FULL] {
                let mut outcomes = Vec::new();
                for args in &steps {
                    let _ = std::fs::remove_file(&log);
                    let mut cmd = std::process::Command::new(binary);
                    if no_sigchld {
                        use std::os::unix::process::CommandExt;
                        // SAFETY: only async-signal-safe calls between fork and exec.
                        unsafe {
                            cmd.pre_exec(|| {
                                libc::signal(libc::SIGCHLD, libc::SIG_IGN);
                                Ok(())
                            });
                        }
                    }
                    let out = run(cmd
                        .current_dir(cwd)
                        .env("GPUSHARE_CONFIG", &cfg)
                        .env("PATH", &path)
                        .args(args));
                    let ran = std::fs::read_to_string(&log).unwrap_or_default();
                    let leases: Vec<String> = node
                        .ledger()
                        .instances
                        .iter()
                        .filter_map(|r| r.lease.as_ref().map(|l| l.container_id.clone()))
                        .collect();
                    outcomes.push((out.status.code(), ran, leases));
                }
                // The next binary starts from the same ledger.
                for id in ["p", "e", "g"] {
                    let _ = node.ctl(&["release", id]);
                }
                seen.push(outcomes);
            }
            assert_eq!(
                seen[0], seen[1],
                "{what}: {steps:?} (SIGCHLD ignored: {no_sigchld}): gpushare (left) vs gpushare-runtime (right)"
            );
        }
    }
}
