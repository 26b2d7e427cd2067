//! Everything but create and delete reaches the runtime unchanged, exit codes preserved.
use crate::common;

use common::*;
use std::process::Output;

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
    let (plain_spec, gpu_spec) = (plain.config_bytes(), gpu.config_bytes());
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
            (
                vec![sv(&["run", "--keep", "--bundle", &pb, "p"])],
                dir.path(),
                false,
            ),
            (
                vec![
                    sv(&["run", "--detach", "--bundle", &gb, "g"]),
                    sv(&["exec", "g", "true"]),
                    sv(&["exec", "--env", "A=1", "p", "true"]),
                    sv(&["delete", "--force", "g"]),
                ],
                dir.path(),
                false,
            ),
        ];
        for (steps, cwd, no_sigchld) in cases {
            let mut seen = Vec::new();
            for binary in [ENTRY, FULL] {
                // Each binary starts from the engine's specs: one gpushare edited for a lease
                // since released carries capability nodes that may be another tenant's by now,
                // and is refused (policy.allow_foreign_devices). And from no offers, so that
                // both grant through the full wrapper (warm grants by the entry binary are
                // tests/it/warm_offers.rs's), as they did while the specs stayed edited.
                for (b, spec) in [(&plain, &plain_spec), (&gpu, &gpu_spec)] {
                    std::fs::write(b.path().join("config.json"), spec).unwrap();
                }
                let _ =
                    std::fs::remove_file(node.cfg().state_dir.join(gpushare_state::offers::NAME));
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

/// A runtime that records exactly what reached it (argv NUL-separated, stdin), writes one line
/// to each of stdout and stderr, and ends as `dir/ending` says: an exit code, or `sigNAME` to
/// die by that signal.
fn verbatim_runtime(dir: &std::path::Path) -> std::path::PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let p = dir.join("verbatim-runtime");
    let d = dir.display();
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n\
             for a in \"$@\"; do printf '%s\\0' \"$a\"; done > {d}/argv\n\
             cat > {d}/stdin\n\
             echo 'runtime stdout'\n\
             echo 'runtime stderr' >&2\n\
             ending=$(cat {d}/ending)\n\
             case \"$ending\" in sig*) kill -s \"${{ending#sig}}\" $$ ;; esac\n\
             exit \"$ending\"\n"
        ),
    )
    .unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    p
}

/// The argv the verbatim runtime in `dir` last received.
fn recorded_argv(dir: &std::path::Path, what: &str) -> Vec<String> {
    let argv =
        std::fs::read(dir.join("argv")).unwrap_or_else(|_| panic!("{what}: the runtime never ran"));
    argv.split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8(a.to_vec()).unwrap())
        .collect()
}

/// A node whose gpushare runs the verbatim runtime, and the runtime's folder.
fn verbatim_node(prefix: &str) -> (SimNode, TempDir) {
    let node = SimNode::new("h100-80gb", 1, true);
    let dir = TempDir::new(prefix);
    let runtime = verbatim_runtime(dir.path());
    node.configure(&format!("runtime = {:?}", runtime.display().to_string()));
    (node, dir)
}

/// Runs `bin args` with `input` on stdin; what it printed and how it ended.
fn run_with_stdin(bin: &str, config: &std::path::Path, args: &[String], input: &[u8]) -> Output {
    with_stdin(
        std::process::Command::new(bin)
            .env("GPUSHARE_CONFIG", config)
            .args(args),
        input,
    )
}

/// state, kill, delete, features, --version and ps, with the global flags engines pass and an
/// argument with spaces, through both binaries: the runtime receives exactly the argv and stdin
/// it was given, its stdout and stderr are the caller's, and its ending (exit code or death by
/// signal) is the caller's too.
#[test]
fn every_command_reaches_the_runtime_verbatim() {
    use std::os::unix::process::ExitStatusExt;
    require_root();
    let (node, dir) = verbatim_node("verbatim");
    let log = dir.path().join("engine log.json");
    let global = [
        "--root",
        "/run/some engine/runc",
        "--log",
        log.to_str().unwrap(),
        "--log-format",
        "json",
        "--systemd-cgroup",
    ];
    let commands: [&[&str]; 9] = [
        &["state", "c1"],
        &["kill", "c1", "KILL"],
        &["kill", "--all", "c1", "SIGTERM"],
        &["delete", "c1"],
        &["delete", "--force", "c1"],
        &["features"],
        &["--version"],
        &["ps", "c1"],
        &["ps", "--format", "json", "c1", "--", "-o", "pid, comm"],
    ];
    for bin in [ENTRY, FULL] {
        for (i, cmd) in commands.iter().enumerate() {
            for (with_global, ending) in [(false, "0"), (true, "3"), (true, "sigTERM")] {
                let mut args: Vec<String> = Vec::new();
                if with_global && cmd[0] != "--version" {
                    args.extend(global.iter().map(|s| s.to_string()));
                }
                args.extend(cmd.iter().map(|s| s.to_string()));
                std::fs::write(dir.path().join("ending"), ending).unwrap();
                let _ = std::fs::remove_file(dir.path().join("argv"));
                let input = format!("stdin of case {i} {ending}\n");
                let out = run_with_stdin(bin, &node.config(), &args, input.as_bytes());
                let what = format!("{bin} {args:?} ending {ending}");
                assert_eq!(recorded_argv(dir.path(), &what), args, "{what}: argv");
                assert_eq!(
                    std::fs::read_to_string(dir.path().join("stdin")).unwrap(),
                    input,
                    "{what}: stdin"
                );
                assert_eq!(text(&out.stdout), "runtime stdout\n", "{what}: stdout");
                assert_eq!(text(&out.stderr), "runtime stderr\n", "{what}: stderr");
                match ending.strip_prefix("sig") {
                    Some(_) => assert_eq!(
                        out.status.signal(),
                        Some(libc::SIGTERM),
                        "{what}: died by the runtime's signal"
                    ),
                    None => assert_eq!(
                        out.status.code(),
                        Some(ending.parse().unwrap()),
                        "{what}: exit code"
                    ),
                }
            }
        }
    }
    assert!(node.status_json()["leases"].as_array().unwrap().is_empty());
}

/// `delete` of a container that holds a slice runs the runtime as a child (gpushare releases
/// after it): the argv is still verbatim and the runtime's exit code is the caller's, whether
/// the runtime refused (the container still exists: the slice stays) or deleted it (released).
#[test]
fn delete_of_a_leased_container_keeps_argv_and_exit_code() {
    require_root();
    let (node, dir) = verbatim_node("verbatim-delete");
    let root = dir.path().join("state root");
    let gpu = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let engine_spec = gpu.config_bytes();
    for bin in [ENTRY, FULL] {
        let id = unique("held");
        std::fs::write(dir.path().join("ending"), "0").unwrap();
        let create: Vec<String> = ["--root", root.to_str().unwrap(), "create", "--bundle"]
            .iter()
            .map(|s| s.to_string())
            .chain([gpu.path().display().to_string(), id.clone()])
            .collect();
        let out = run_with_stdin(bin, &node.config(), &create, b"");
        assert!(out.status.success(), "{bin}: {}", text(&out.stderr));
        assert!(node.ledger().lease_of(&id).is_some(), "{bin}: granted");
        // The runtime still knows the container: its refusal keeps the slice.
        std::fs::create_dir_all(root.join(&id)).unwrap();
        let delete: Vec<String> = ["--root", root.to_str().unwrap(), "delete", "--force", &id]
            .iter()
            .map(|s| s.to_string())
            .collect();
        for (ending, kept) in [("42", true), ("0", false)] {
            std::fs::write(dir.path().join("ending"), ending).unwrap();
            let out = run_with_stdin(bin, &node.config(), &delete, b"delete stdin");
            let what = format!("{bin} delete ending {ending}");
            assert_eq!(out.status.code(), Some(ending.parse().unwrap()), "{what}");
            assert_eq!(text(&out.stdout), "runtime stdout\n", "{what}: stdout");
            assert_eq!(text(&out.stderr), "runtime stderr\n", "{what}: stderr");
            assert_eq!(recorded_argv(dir.path(), &what), delete, "{what}: argv");
            assert_eq!(
                std::fs::read(dir.path().join("stdin")).unwrap(),
                b"delete stdin",
                "{what}: stdin"
            );
            assert_eq!(node.ledger().lease_of(&id).is_some(), kept, "{what}: lease");
        }
        std::fs::remove_dir_all(root.join(&id)).unwrap();
        std::fs::write(gpu.path().join("config.json"), &engine_spec).unwrap();
    }
}

/// `exec` of a container that holds no grant reaches the runtime byte for byte through both
/// binaries (argv with its env flags and process file, stdin, output, exit code, the process
/// file itself) while another container holds a slice; a GPU `run` reaches it with the
/// engine's argv unchanged. An exec into the slice's container gets an edited copy of the
/// process file, past the descriptors the runtime hands on, with every other field kept.
#[test]
fn exec_and_run_reach_the_runtime_verbatim() {
    require_root();
    let (node, dir) = verbatim_node("verbatim-exec");
    let gpu = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
    let process = dir.path().join("process.json");
    let engine_process = br#"{"args":["sh"],"env":["PATH=/bin"],"cwd":"/","x-engine":[1]}"#;
    std::fs::write(&process, engine_process).unwrap();
    let sv = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<String>>();
    let gb = gpu.path().display().to_string();
    let console = dir.path().join("console.sock").display().to_string();
    let pid_file = dir.path().join("pid").display().to_string();
    let run_args = sv(&[
        "--root",
        "/run/some engine/runc",
        "run",
        "-d",
        "--keep",
        "--pid-file",
        &pid_file,
        "--console-socket",
        &console,
        "-b",
        &gb,
        "held",
    ]);
    std::fs::write(dir.path().join("ending"), "0").unwrap();
    let out = run_with_stdin(ENTRY, &node.config(), &run_args, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(recorded_argv(dir.path(), "run"), run_args, "run: argv");
    assert!(node.ledger().lease_of("held").is_some(), "run granted");

    let pf = process.display().to_string();
    let commands = [
        sv(&[
            "exec",
            "--process",
            &pf,
            "--detach",
            "--pid-file",
            "/p",
            "plain",
        ]),
        sv(&["exec", "-p", &pf, "plain"]),
        sv(&[
            "exec",
            "-e",
            "CUDA_VISIBLE_DEVICES=x",
            "-t",
            "plain",
            "sh",
            "-e",
            "-c",
            "a b",
        ]),
        sv(&["exec", "plain", "nvidia-smi", "--env", "x"]),
    ];
    for bin in [ENTRY, FULL] {
        for (i, cmd) in commands.iter().enumerate() {
            std::fs::write(dir.path().join("ending"), "5").unwrap();
            let input = format!("exec stdin {i}");
            let out = run_with_stdin(bin, &node.config(), cmd, input.as_bytes());
            let what = format!("{bin} {cmd:?}");
            assert_eq!(recorded_argv(dir.path(), &what), *cmd, "{what}: argv");
            assert_eq!(
                std::fs::read_to_string(dir.path().join("stdin")).unwrap(),
                input,
                "{what}: stdin"
            );
            assert_eq!(text(&out.stdout), "runtime stdout\n", "{what}");
            assert_eq!(text(&out.stderr), "runtime stderr\n", "{what}");
            assert_eq!(out.status.code(), Some(5), "{what}");
            assert_eq!(std::fs::read(&process).unwrap(), engine_process, "{what}");
        }
    }

    // Into the slice's container: the runtime reads the edited copy where argv now points.
    // (The node's runtime, rewritten: the config names it by path.)
    std::fs::write(
        dir.path().join("verbatim-runtime"),
        format!(
            "#!/bin/sh\nwhile [ $# -gt 0 ]; do [ \"$1\" = --process ] && cat \"$2\" > {d}/copy && echo \"$2\" > {d}/where; shift; done\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let exec = sv(&["exec", "--preserve-fds", "7", "--process", &pf, "held"]);
    let out = run_with_stdin(ENTRY, &node.config(), &exec, b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let copy: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dir.path().join("copy")).unwrap()).unwrap();
    assert_eq!(copy["x-engine"], serde_json::json!([1]), "{copy}");
    assert_eq!(copy["args"], serde_json::json!(["sh"]));
    let uuid = {
        let st = node.ledger();
        st.instances[st.lease_of("held").unwrap()]
            .made
            .clone()
            .unwrap()
            .mig_uuid
    };
    assert!(
        copy["env"]
            .as_array()
            .unwrap()
            .contains(&serde_json::json!(format!("CUDA_VISIBLE_DEVICES={uuid}"))),
        "{copy}"
    );
    let at = std::fs::read_to_string(dir.path().join("where")).unwrap();
    let fd: u32 = at
        .trim()
        .strip_prefix("/proc/self/fd/")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        fd >= 3 + 7,
        "the copy is past the preserved descriptors: {at}"
    );
    assert_eq!(std::fs::read(&process).unwrap(), engine_process);
}
