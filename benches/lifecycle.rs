//! Lifecycle benchmarks on a simulated node, through real runc.
//!
//!   cargo build --release -p gpushare-sim && cargo bench --bench lifecycle -- [--iterations 200]
//!       [--rounds 20] [--cold 5] [--samples 300] [--history 100000] [--sizes 1,8,64]
//!       [--only overhead|concurrency|cold|scaling]
//!
//! overhead: create+start+delete of a busybox container through gpushare vs bare runc, in one
//!   run, alternating: (a) no request, (b) a 1g.10gb request served from an idle instance.
//! concurrency: gpushare's own time for 1, 8 and 64 creates at once, every one a warm grant, with
//!   `runtime` set to a program that exits at once (so only gpushare is timed) and nvml_library
//!   pointing nowhere (a warm grant that opened NVML would fail).
//! cold: a 1g.10gb request that makes an instance, with the simulated driver's measured costs;
//!   gpushare's own time is what is left after the driver's charged costs.
//! scaling: how gpushare's own time for a warm grant (the entry binary's `create`), the
//!   `delete` that hands over to runc, and the release (the poststop hook, run as runc runs it)
//!   grow with the node: 1, 8 and 64 GPUs (H100, 7 1g.10gb slices each), with every slice idle
//!   and with every slice but one leased; then the same before and after `--history` (100,000)
//!   lifecycles on one node. The runtime is a `runc` that exits at once (so only gpushare is
//!   timed), with the runc state gpushare's `delete` reads written for every container.
//!   `--samples` lifecycles are timed a case; `--sizes 1,8,64` picks the nodes.
//! Run as root (runc needs it). Prints Markdown.

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::*;
use serde_json::{json, Value};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn only() -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--only")
        .and_then(|i| args.get(i + 1).cloned())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn pct(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((p / 100.0) * (sorted.len() - 1) as f64).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn sorted(mut v: Vec<f64>) -> Vec<f64> {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v
}

fn quiet(c: &mut Command) -> &mut Command {
    c.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
}

fn ok(c: &mut Command, what: &str) {
    let out = c
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what}: {}{}",
        text(&out.stdout),
        text(&out.stderr)
    );
}

/// create + start + delete of container `id`; `via` is gpushare or runc. The time of each.
fn lifecycle(via: &Path, root: &Path, bundle: &Path, id: &str, config: &Path) -> [Duration; 3] {
    let mut steps = [Duration::ZERO; 3];
    for (step, args) in [
        vec!["create", "--bundle", bundle.to_str().unwrap(), id],
        vec!["start", id],
        vec!["delete", "--force", id],
    ]
    .into_iter()
    .enumerate()
    {
        let t = Instant::now();
        let st = quiet(
            Command::new(via)
                .env("GPUSHARE_CONFIG", config)
                .arg("--root")
                .arg(root)
                .args(&args),
        )
        .status()
        .unwrap();
        assert!(st.success(), "{} {args:?} failed", via.display());
        steps[step] = t.elapsed();
    }
    steps
}

fn overhead(iterations: usize) {
    let node = SimNode::new("h100-80gb", 1, true);
    assert!(node.sim(&["latency", "measured"]).status.success());
    let engine = Engine::new(&node, Runtime::Runc);
    let runc = Runtime::Runc.path();
    let shim = PathBuf::from(ENTRY);
    println!("## create+start+delete, gpushare vs bare runc ({iterations} iterations each, alternating)\n");
    println!("| case | bare runc median (ms) | gpushare median (ms) | ratio of medians | bare mean | gpushare mean | target | median step, bare / gpushare (ms): create, start, delete |");
    println!("|---|---|---|---|---|---|---|---|");
    for (case, ann, target) in [
        ("(a) no request", vec![], 1.03),
        (
            "(b) 1g.10gb from an idle instance",
            vec![("gpu.profile", "1g.10gb")],
            1.10,
        ),
    ] {
        let b_shim = Bundle::new("true", &ann, &[]);
        let b_bare = Bundle::new("true", &ann, &[]);
        // An engine writes a fresh config.json for every container: gpushare's edit of the last
        // one is not what the next create finds.
        let fresh_spec = b_shim.config_bytes();
        let fresh = || std::fs::write(b_shim.path().join("config.json"), &fresh_spec).unwrap();
        // Warm the pool (and the page cache) before timing.
        for _ in 0..3 {
            fresh();
            lifecycle(
                &shim,
                engine.root.path(),
                b_shim.path(),
                &unique("warmup"),
                &node.config(),
            );
            lifecycle(
                &runc,
                engine.root.path(),
                b_bare.path(),
                &unique("warmup"),
                &node.config(),
            );
        }
        // For (b), a third runner: bare runc given the very spec gpushare wrote (its device
        // nodes, allow rules, env and poststop hook, which then finds nothing to release): what
        // runc itself spends on a GPU container, the floor under gpushare's own time.
        let b_edit = (!ann.is_empty()).then(|| {
            let b = Bundle::new("true", &ann, &[]);
            std::fs::copy(
                b_shim.path().join("config.json"),
                b.path().join("config.json"),
            )
            .unwrap();
            b
        });
        let (mut bare, mut ours, mut edit) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..iterations {
            let mut runs: Vec<(&mut Vec<[Duration; 3]>, &Path, &Path, &str)> = vec![
                (&mut bare, &runc, b_bare.path(), "b"),
                (&mut ours, &shim, b_shim.path(), "g"),
            ];
            if let Some(b) = &b_edit {
                runs.push((&mut edit, &runc, b.path(), "e"));
            }
            let n = runs.len();
            runs.rotate_left(i % n);
            fresh();
            for (out, via, bundle, tag) in runs {
                out.push(lifecycle(
                    via,
                    engine.root.path(),
                    bundle,
                    &unique(tag),
                    &node.config(),
                ));
            }
        }
        if !ann.is_empty() {
            let st = node.ledger();
            assert!(
                st.stats.grants_warm as usize >= iterations,
                "every timed grant was warm: {:?}",
                st.stats
            );
            assert_eq!(
                st.stats.grants_cold, 1,
                "only the first warm-up grant made an instance"
            );
        }
        let step = |v: &[[Duration; 3]], i: usize| {
            pct(&sorted(v.iter().map(|s| ms(s[i])).collect()), 50.0)
        };
        let step_of = step;
        let ours_steps = ours.clone();
        let steps = (0..3)
            .map(|i| format!("{:.2} / {:.2}", step(&bare, i), step(&ours, i)))
            .collect::<Vec<_>>()
            .join(", ");
        let total =
            |v: &[[Duration; 3]]| -> Vec<f64> { v.iter().map(|s| ms(s.iter().sum())).collect() };
        let (bare, ours) = (total(&bare), total(&ours));
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (bm, om) = (mean(&bare), mean(&ours));
        let (bare, ours) = (sorted(bare), sorted(ours));
        let (b50, o50) = (pct(&bare, 50.0), pct(&ours, 50.0));
        let ratio = o50 / b50;
        println!(
            "| {case} | {b50:.2} | {o50:.2} | {ratio:.3}x | {bm:.2} | {om:.2} | <= {target:.2}x {} | {steps} |",
            if ratio <= target { "met" } else { "NOT met" }
        );
        if !edit.is_empty() {
            let esteps = (0..3)
                .map(|i| format!("{:.2} / {:.2}", step_of(&edit, i), step_of(&ours_steps, i)))
                .collect::<Vec<_>>()
                .join(", ");
            let e = sorted(total(&edit));
            let e50 = pct(&e, 50.0);
            println!(
                "| (b) floor: bare runc given the spec gpushare wrote, vs gpushare | {e50:.2} | {o50:.2} | {:.3}x (floor {:.3}x of bare) | {:.2} | {om:.2} | | {esteps} |",
                o50 / e50,
                e50 / b50,
                mean(&total(&edit)),
            );
        }
    }
    println!();
}

/// A program that exits 0 at once, standing in for the runtime so only gpushare is timed.
fn stub_runtime() -> PathBuf {
    for p in ["/bin/true", "/usr/bin/true"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!("no `true` binary");
}

fn concurrency(rounds: usize) {
    // 10 H100s hold 70 1g.10gb slices: room for 64 at once.
    let node = SimNode::new("h100-80gb", 10, true);
    let stub = stub_runtime();
    node.configure(&format!("runtime = {:?}", stub.display().to_string()));
    let root = TempDir::new("rtroot");
    let shim = PathBuf::from(ENTRY);
    let bundles: Vec<Bundle> = (0..64)
        .map(|_| Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]))
        .collect();
    // Engines write a fresh spec for every container; a spec gpushare already edited for a
    // released lease is refused. The stub runtime never consumes the bundle, so each create
    // puts the engine's spec back first (outside the timed part).
    let specs: Vec<Vec<u8>> = bundles.iter().map(Bundle::config_bytes).collect();
    let create = |i: usize, id: &str| -> Duration {
        std::fs::write(bundles[i].path().join("config.json"), &specs[i]).unwrap();
        let t = Instant::now();
        let st = quiet(
            Command::new(&shim)
                .env("GPUSHARE_CONFIG", node.config())
                .arg("--root")
                .arg(root.path())
                .args(["create", "--bundle"])
                .arg(bundles[i].path())
                .arg(id),
        )
        .status()
        .unwrap();
        let d = t.elapsed();
        assert!(st.success(), "create {id}");
        d
    };
    let delete = |id: &str| {
        ok(
            Command::new(&shim)
                .env("GPUSHARE_CONFIG", node.config())
                .arg("--root")
                .arg(root.path())
                .args(["delete", id]),
            "delete",
        )
    };
    // Fill the pool with 64 idle instances (no latency: this part is set-up, not measured).
    let ids: Vec<String> = (0..64).map(|_| unique("fill")).collect();
    for (i, id) in ids.iter().enumerate() {
        create(i, id);
    }
    for id in &ids {
        delete(id);
    }
    assert!(node.sim(&["latency", "measured"]).status.success());
    // From here on NVML cannot even be loaded: every grant below is warm or fails.
    let cfg_text = std::fs::read_to_string(node.config()).unwrap();
    let nowhere = cfg_text
        .lines()
        .map(|l| {
            if l.starts_with("nvml_library") {
                "nvml_library = \"/nonexistent/libnvidia-ml.so.1\"".to_string()
            } else {
                l.to_string()
            }
        })
        .collect::<Vec<_>>()
        .join("\n");
    std::fs::write(node.config(), nowhere).unwrap();
    // Placement tables (solved MDP policies) live in the state directory: a warm grant may read
    // one but never solves or writes one.
    let tables_before = placement_tables(&node);

    println!("## gpushare's own time per create, N at once (warm grants; runtime = {}; NVML unloadable)\n", stub.display());
    println!("| concurrent creates | samples | gpushare p50 (ms) | gpushare p99 (ms) | bare `{}` p50 | p99 | target |", stub.display());
    println!("|---|---|---|---|---|---|---|");
    for n in [1usize, 8, 64] {
        let rounds = if n == 64 {
            rounds.max(1)
        } else {
            (rounds * 64 / n / 4).max(rounds)
        };
        let mut ours = Vec::new();
        let mut bare = Vec::new();
        for _ in 0..rounds {
            let ids: Vec<String> = (0..n).map(|_| unique("c")).collect();
            let times: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = ids
                    .iter()
                    .enumerate()
                    .map(|(i, id)| s.spawn(move || create(i, id)))
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            ours.extend(times.iter().map(|d| ms(*d)));
            for id in &ids {
                delete(id);
            }
            let times: Vec<Duration> = std::thread::scope(|s| {
                let hs: Vec<_> = ids
                    .iter()
                    .map(|id| {
                        let stub = &stub;
                        s.spawn(move || {
                            let t = Instant::now();
                            quiet(Command::new(stub).args([
                                "--root",
                                "/nonexistent",
                                "create",
                                "--bundle",
                                "/nonexistent",
                                id,
                            ]))
                            .status()
                            .unwrap();
                            t.elapsed()
                        })
                    })
                    .collect();
                hs.into_iter().map(|h| h.join().unwrap()).collect()
            });
            bare.extend(times.iter().map(|d| ms(*d)));
        }
        let st = node.ledger();
        assert_eq!(st.instances.iter().filter(|r| r.lease.is_some()).count(), 0);
        let (ours, bare) = (sorted(ours), sorted(bare));
        let p99 = pct(&ours, 99.0);
        println!(
            "| {n} | {} | {:.2} | {p99:.2} | {:.2} | {:.2} | {} |",
            ours.len(),
            pct(&ours, 50.0),
            pct(&bare, 50.0),
            pct(&bare, 99.0),
            if n == 64 {
                format!(
                    "p99 <= 50 ms {}",
                    if p99 <= 50.0 { "met" } else { "NOT met" }
                )
            } else {
                "-".into()
            }
        );
    }
    let st = node.ledger();
    println!(
        "\nledger after the runs: {} warm grants, {} cold (the 64 cold ones filled the pool before NVML was made unloadable)\n",
        st.stats.grants_warm, st.stats.grants_cold
    );
    let tables_after = placement_tables(&node);
    assert_eq!(
        tables_before, tables_after,
        "a warm grant wrote a placement table"
    );
    println!(
        "placement tables in the state directory before and after the warm grants: {} and {}, unchanged (no solving on the warm path)\n",
        tables_before.len(),
        tables_after.len()
    );
}

/// (name, size, mtime) of every cached placement table.
fn placement_tables(node: &SimNode) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut out: Vec<_> = std::fs::read_dir(node.cfg().state_dir)
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with(gpushare_state::PLACEMENT_PREFIX)
        })
        .map(|e| {
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    out.sort();
    out
}

fn cold(count: usize) {
    let stub = stub_runtime();
    let shim = PathBuf::from(ENTRY);
    // The simulated driver's charges for one cold grant on a 1-GPU node (sim/src/latency.rs):
    // init 11, first handle 7, MIG mode 0.5 per GPU, GI create 1000, CI create 200, shutdown 3.
    let charged_ms = 11.0 + 7.0 + 0.5 + 1000.0 + 200.0 + 3.0;
    // What the stand-in runtime itself costs, to take out of gpushare's share.
    let mut execs: Vec<f64> = (0..50)
        .map(|_| {
            let t = Instant::now();
            ok(Command::new(&stub).arg("create"), "stub");
            ms(t.elapsed())
        })
        .collect();
    execs = sorted(execs);
    let exec_ms = pct(&execs, 50.0);
    println!(
        "## A cold 1g.10gb grant (instance made; runtime = {}, whose own exec takes {exec_ms:.1} ms)\n",
        stub.display()
    );
    println!("| grant | latency mode | samples | create median (ms) | min | max | driver's charged costs (ms) | gpushare's own (median - charged - runtime exec) |");
    println!("|---|---|---|---|---|---|---|---|");
    for first in [true, false] {
        for mode in ["measured", "none"] {
            let mut times = Vec::new();
            for _ in 0..count {
                // A fresh node each time. The first grant on a node (as after a reboot) also
                // learns the GPU's profile table; a later cold grant finds it in the ledger.
                let node = SimNode::new("h100-80gb", 1, true);
                node.configure(&format!("runtime = {:?}", stub.display().to_string()));
                let create = |profile: &str| {
                    let b = Bundle::new("true", &[("gpu.profile", profile)], &[]);
                    let root = TempDir::new("rtroot");
                    let t = Instant::now();
                    ok(
                        Command::new(&shim)
                            .env("GPUSHARE_CONFIG", node.config())
                            .arg("--root")
                            .arg(root.path())
                            .args(["create", "--bundle"])
                            .arg(b.path())
                            .arg(unique("cold")),
                        "cold create",
                    );
                    ms(t.elapsed())
                };
                if !first {
                    create("2g.20gb");
                }
                assert!(node.sim(&["latency", mode]).status.success());
                times.push(create("1g.10gb"));
                assert_eq!(node.ledger().stats.grants_cold, if first { 1 } else { 2 });
            }
            let times = sorted(times);
            let charged = if mode == "measured" { charged_ms } else { 0.0 };
            println!(
                "| {} | {mode} | {} | {:.1} | {:.1} | {:.1} | {charged:.1} | {:.1} |",
                if first {
                    "first on its node"
                } else {
                    "later (profile table known)"
                },
                times.len(),
                pct(&times, 50.0),
                times[0],
                times[times.len() - 1],
                pct(&times, 50.0) - charged - exec_ms
            );
        }
    }
    println!();
}

/// The node sizes (GPUs) the scaling part measures: `--sizes 1,8,64`.
fn sizes() -> Vec<u32> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == "--sizes")
        .and_then(|i| args.get(i + 1))
        .map(|v| {
            v.split(',')
                .map(|n| n.parse().expect("--sizes: GPU counts, comma-separated"))
                .collect()
        })
        .unwrap_or_else(|| vec![1, 8, 64])
}

/// 1g.10gb slices of one H100.
const SLICES_PER_GPU: usize = 7;

/// A node of the scaling part: gpushare in front of a `runc` that exits at once.
struct Scaled {
    node: SimNode,
    /// Holds the stand-in `runc`.
    _bin: TempDir,
    stub: PathBuf,
    root: TempDir,
    bundle: Bundle,
    /// The engine's spec, written afresh before every create.
    spec: Vec<u8>,
    state_dir: PathBuf,
}

/// One container's times: gpushare's create (a grant), delete and release, and one exec of
/// the stand-in runtime alone, which the create and the delete each include once.
#[derive(Clone, Copy)]
struct Steps {
    create: Duration,
    delete: Duration,
    release: Duration,
    stub: Duration,
}

impl Scaled {
    fn new(gpus: u32) -> Scaled {
        let node = SimNode::new("h100-80gb", gpus, true);
        // gpushare's `delete` execs runc at once when runc's state says runc will run
        // gpushare's poststop hook (which releases): the stand-in is named runc to get that path.
        let bin = TempDir::new("stub");
        let stub = bin.path().join("runc");
        std::os::unix::fs::symlink(stub_runtime(), &stub).unwrap();
        node.configure(&format!("runtime = {:?}", stub.display().to_string()));
        let bundle = Bundle::new("true", &[("gpu.profile", "1g.10gb")], &[]);
        let spec = bundle.config_bytes();
        Scaled {
            state_dir: node.cfg().state_dir,
            node,
            _bin: bin,
            stub,
            root: TempDir::new("rtroot"),
            bundle,
            spec,
        }
    }

    fn gpushare(&self, args: &[&str]) -> Duration {
        let t = Instant::now();
        let st = quiet(
            Command::new(ENTRY)
                .env("GPUSHARE_CONFIG", self.node.config())
                .arg("--root")
                .arg(self.root.path())
                .args(args),
        )
        .status()
        .unwrap();
        let d = t.elapsed();
        assert!(st.success(), "gpushare {args:?} failed");
        d
    }

    /// `create` of the engine's spec (timed), then what runc's create would have left: its
    /// state, holding the spec's hooks (runc's `delete` runs the poststop ones from there).
    fn create(&self, id: &str) -> (Duration, Value) {
        let config = self.bundle.path().join("config.json");
        std::fs::write(&config, &self.spec).unwrap();
        let d = self.gpushare(&[
            "create",
            "--bundle",
            self.bundle.path().to_str().unwrap(),
            id,
        ]);
        let spec: Value = serde_json::from_slice(&std::fs::read(&config).unwrap()).unwrap();
        let hook = &spec["hooks"]["poststop"][0];
        let dir = self.root.path().join(id);
        std::fs::create_dir_all(&dir).unwrap();
        // As runc writes it: Go's field order (path, args, env), and the rest of the container's
        // config beside the hooks, so the file has about runc's size.
        std::fs::write(
            dir.join("state.json"),
            format!(
                r#"{{"id":{},"init_process_pid":1,"config":{{"hooks":{{"poststop":[{{"path":{},"args":{},"env":{}}}]}},"spec":{spec}}}}}"#,
                json!(id),
                hook["path"],
                hook["args"],
                hook["env"],
            ),
        )
        .unwrap();
        (d, spec)
    }

    /// The poststop hook as runc runs it at `delete`: the spec's path, argv and env only, the
    /// container's state on stdin. Then runc's state of the container goes.
    fn release(&self, id: &str, spec: &Value) -> Duration {
        use std::io::Write;
        use std::os::unix::process::CommandExt;
        let hook = &spec["hooks"]["poststop"][0];
        let args: Vec<String> = serde_json::from_value(hook["args"].clone()).unwrap();
        let env: Vec<String> = serde_json::from_value(hook["env"].clone()).unwrap_or_default();
        let state = json!({"ociVersion": "1.0.2", "id": id, "status": "stopped", "pid": 0,
            "bundle": self.bundle.path(), "annotations": {"gpu.profile": "1g.10gb"}})
        .to_string();
        let mut c = Command::new(hook["path"].as_str().unwrap());
        c.arg0(&args[0])
            .args(&args[1..])
            .env_clear()
            .envs(env.iter().filter_map(|e| e.split_once('=')))
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let t = Instant::now();
        let mut child = c.spawn().unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(state.as_bytes())
            .unwrap();
        let st = child.wait().unwrap();
        let d = t.elapsed();
        assert!(st.success(), "the poststop hook of {id} failed");
        std::fs::remove_dir_all(self.root.path().join(id)).unwrap();
        d
    }

    /// One exec of the stand-in runtime with a create's argv.
    fn stub(&self) -> Duration {
        let t = Instant::now();
        quiet(Command::new(&self.stub).args([
            "--root",
            "/nonexistent",
            "create",
            "--bundle",
            "/nonexistent",
            "x",
        ]))
        .status()
        .unwrap();
        t.elapsed()
    }

    fn journal_len(&self) -> u64 {
        std::fs::metadata(self.state_dir.join(gpushare_state::journal::NAME)).map_or(0, |m| m.len())
    }

    fn lifecycle(&self, with_stub: bool) -> Steps {
        let id = unique("s");
        let (create, spec) = self.create(&id);
        // The delete leaves the release to runc's run of the hook; the hook journals it.
        let journal = self.journal_len();
        let delete = self.gpushare(&["delete", &id]);
        assert_eq!(
            self.journal_len(),
            journal,
            "the delete released {id} itself"
        );
        let release = self.release(&id, &spec);
        assert!(
            self.journal_len() > journal,
            "the hook did not journal {id}'s release"
        );
        Steps {
            create,
            delete,
            release,
            stub: if with_stub {
                self.stub()
            } else {
                Duration::ZERO
            },
        }
    }

    /// `samples` lifecycles, each checked to be a warm grant (no instance made).
    fn measure(&self, samples: usize) -> (Vec<Steps>, u64) {
        self.lifecycles(samples, true)
    }

    fn lifecycles(&self, samples: usize, with_stub: bool) -> (Vec<Steps>, u64) {
        let before = self.node.ledger().stats;
        let steps: Vec<Steps> = (0..samples).map(|_| self.lifecycle(with_stub)).collect();
        let after = self.node.ledger().stats;
        assert_eq!(
            after.grants_cold, before.grants_cold,
            "a timed grant was cold"
        );
        assert_eq!(after.grants_warm - before.grants_warm, samples as u64);
        (steps, after.grants_by_entry - before.grants_by_entry)
    }

    /// `n` containers that each hold a slice (instances made as needed).
    fn fill(&self, n: usize) -> Vec<(String, Value)> {
        (0..n)
            .map(|_| {
                let id = unique("fill");
                let (_, spec) = self.create(&id);
                (id, spec)
            })
            .collect()
    }

    fn end(&self, (id, spec): &(String, Value)) {
        self.gpushare(&["delete", id]);
        self.release(id, spec);
    }

    /// (name, bytes) of each file of the state directory; a folder counts its entries.
    fn state_files(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = std::fs::read_dir(&self.state_dir)
            .unwrap()
            .flatten()
            .map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let m = e.metadata().unwrap();
                if m.is_dir() {
                    let n = std::fs::read_dir(e.path()).unwrap().count();
                    (format!("{name}/"), format!("{n} entries"))
                } else {
                    (name, format!("{} B", m.len()))
                }
            })
            .collect();
        out.sort();
        out
    }

    fn file_kib(&self, name: &str) -> f64 {
        std::fs::metadata(self.state_dir.join(name)).map_or(0.0, |m| m.len() as f64 / 1024.0)
    }

    fn row(
        &self,
        label: &str,
        leases: usize,
        idle: usize,
        (steps, by_entry): &(Vec<Steps>, u64),
        reference: &str,
    ) {
        let col = |f: fn(&Steps) -> Duration| sorted(steps.iter().map(|s| ms(f(s))).collect());
        let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
        let (c, d, r, b) = (
            col(|s| s.create),
            col(|s| s.delete),
            col(|s| s.release),
            col(|s| s.stub),
        );
        println!(
            "| {label} | {leases} | {idle} | {:.0} | {} | {:.2} / {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} | {by_entry} | {reference} |",
            self.file_kib(gpushare_state::ledger::NAME),
            steps.len(),
            pct(&c, 50.0),
            pct(&c, 99.0),
            mean(&c),
            pct(&d, 50.0),
            pct(&d, 99.0),
            pct(&r, 50.0),
            pct(&r, 99.0),
            pct(&b, 50.0),
        );
    }
}

/// Time `s` and `reference` in turns of `turn` lifecycles until each has `samples`, so that
/// what else the machine does weighs on both alike.
fn in_turns(s: &Scaled, reference: &Scaled, samples: usize) -> [(Vec<Steps>, u64); 2] {
    let turn = 20;
    let mut out = [(Vec::new(), 0), (Vec::new(), 0)];
    let mut left = samples;
    while left > 0 {
        let n = left.min(turn);
        for (node, (steps, by_entry)) in [s, reference].into_iter().zip(&mut out) {
            let (more, entry) = node.measure(n);
            steps.extend(more);
            *by_entry += entry;
        }
        left -= n;
    }
    out
}

fn scaling(samples: usize, history: usize, sizes: &[u32]) {
    // More than one fold of the journal (about every 50 containers) before anything is timed.
    let warm_up = 60;
    println!(
        "## How the cost grows: gpushare's own time for a warm 1g.10gb grant and its release\n"
    );
    println!("runtime = a `runc` that exits at once (`{}`); each create, delete and poststop hook timed as a whole process; {samples} lifecycles a row after {warm_up} untimed, in turns of 20 with the same lifecycles on a reference node (1 GPU, its 7 slices idle, no history).\n", stub_runtime().display());
    println!("| node | leases held | idle instances | ledger (KiB) | samples | grant: create p50 / p99 / mean (ms) | delete p50 / p99 | release (hook) p50 / p99 | the stand-in runtime alone p50 | grants by the entry binary | reference in the same turns: create / delete / release p50 |");
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    let idle_node = |gpus: u32| {
        let s = Scaled::new(gpus);
        for h in &s.fill(gpus as usize * SLICES_PER_GPU) {
            s.end(h);
        }
        s.measure(warm_up);
        s
    };
    let reference = idle_node(1);
    for &gpus in sizes {
        let slices = gpus as usize * SLICES_PER_GPU;
        let t = Instant::now();
        let s = Scaled::new(gpus);
        let mut held = s.fill(slices);
        // The latest lease ends, as when a container is replaced: its offers apply at once.
        s.end(&held.pop().unwrap());
        eprintln!(
            "{gpus} GPU(s): {slices} slices leased in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        measured_row(
            &format!("{gpus} GPU(s), every slice but one leased"),
            &s,
            &reference,
            slices - 1,
            1,
            samples,
            warm_up,
        );
        for h in &held {
            s.end(h);
        }
        measured_row(
            &format!("{gpus} GPU(s), every slice idle"),
            &s,
            &reference,
            0,
            slices,
            samples,
            warm_up,
        );
    }
    if history == 0 {
        println!();
        return;
    }
    // The history: a 1-GPU node like the reference, then `history` lifecycles on it, timed in
    // ten blocks as they go (without the stand-in's own run beside each).
    let s = idle_node(1);
    let files_before = s.state_files();
    let t = Instant::now();
    let blocks = 10usize.min(history);
    let mut curve = Vec::new();
    for b in 0..blocks {
        let n = history / blocks + usize::from(b < history % blocks);
        curve.push(s.lifecycles(n, false));
        eprintln!(
            "history: {} lifecycles in {:.0} s",
            curve.iter().map(|c| c.0.len()).sum::<usize>(),
            t.elapsed().as_secs_f64()
        );
    }
    let took = t.elapsed();
    let files_after = s.state_files();
    measured_row(
        &format!("1 GPU, every slice idle, after {history} lifecycles"),
        &s,
        &reference,
        0,
        SLICES_PER_GPU,
        samples,
        0,
    );
    println!("\nThe {history} lifecycles of the last row (create, delete, poststop hook each; {:.0} s, {:.2} ms a lifecycle), timed as they went:\n", took.as_secs_f64(), ms(took) / history as f64);
    println!("| lifecycles | grant p50 / p99 / mean (ms) | delete p50 | release p50 | grants by the entry binary |");
    println!("|---|---|---|---|---|");
    let mut done = 0;
    for (steps, by_entry) in &curve {
        done += steps.len();
        let col = |f: fn(&Steps) -> Duration| sorted(steps.iter().map(|s| ms(f(s))).collect());
        let c = col(|s| s.create);
        println!(
            "| {}-{done} | {:.2} / {:.2} / {:.2} | {:.2} | {:.2} | {by_entry} |",
            done - steps.len() + 1,
            pct(&c, 50.0),
            pct(&c, 99.0),
            c.iter().sum::<f64>() / c.len() as f64,
            pct(&col(|s| s.delete), 50.0),
            pct(&col(|s| s.release), 50.0),
        );
    }
    println!("\nIts state directory before and after them:\n");
    println!("| file | before | after |");
    println!("|---|---|---|");
    let mut names: Vec<&String> = files_before
        .iter()
        .chain(&files_after)
        .map(|(n, _)| n)
        .collect();
    names.sort();
    names.dedup();
    let size = |files: &[(String, String)], n: &str| {
        files
            .iter()
            .find(|(f, _)| f == n)
            .map_or("-".to_string(), |(_, s)| s.clone())
    };
    for n in names {
        println!(
            "| {n} | {} | {} |",
            size(&files_before, n),
            size(&files_after, n)
        );
    }
    println!();
}

/// One row of the scaling table: `s` timed in turns with `reference`.
#[allow(clippy::too_many_arguments)]
fn measured_row(
    label: &str,
    s: &Scaled,
    reference: &Scaled,
    leases: usize,
    idle: usize,
    samples: usize,
    warm_up: usize,
) {
    s.measure(warm_up);
    let [m, r] = in_turns(s, reference, samples);
    let p50 =
        |f: fn(&Steps) -> Duration| pct(&sorted(r.0.iter().map(|s| ms(f(s))).collect()), 50.0);
    s.row(
        label,
        leases,
        idle,
        &m,
        &format!(
            "{:.2} / {:.2} / {:.2}",
            p50(|s| s.create),
            p50(|s| s.delete),
            p50(|s| s.release)
        ),
    );
}

fn main() {
    // cargo bench passes --bench; a plain `cargo test --benches` run passes nothing useful.
    let only = only();
    let want = |s: &str| only.as_deref().is_none_or(|o| o == s);
    require_root();
    if want("overhead") {
        overhead(arg("--iterations", 200));
    }
    if want("concurrency") {
        concurrency(arg("--rounds", 10));
    }
    if want("cold") {
        cold(arg("--cold", 5));
    }
    if want("scaling") {
        scaling(arg("--samples", 300), arg("--history", 100_000), &sizes());
    }
}
