//! Lifecycle benchmarks on a simulated node, through real runc.
//!
//!   cargo build --release -p gpushare-sim && cargo bench --bench lifecycle -- [--iterations 200]
//!       [--rounds 20] [--cold 5] [--only overhead|concurrency|cold]
//!
//! overhead: create+start+delete of a busybox container through gpushare vs bare runc, in one
//!   run, alternating: (a) no request, (b) a 1g.10gb request served from an idle instance.
//! concurrency: gpushare's own time for 1, 8 and 64 creates at once, every one a warm grant, with
//!   `runtime` set to a program that exits at once (so only gpushare is timed) and nvml_library
//!   pointing nowhere (a warm grant that opened NVML would fail).
//! cold: a 1g.10gb request that makes an instance, with the simulated driver's measured costs;
//!   gpushare's own time is what is left after the driver's charged costs.
//! Run as root (runc needs it). Prints Markdown.

#[path = "../tests/it/common/mod.rs"]
mod common;

use common::*;
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
    let shim = PathBuf::from(SHIM);
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
    let shim = PathBuf::from(SHIM);
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
        .filter(|e| e.file_name().to_string_lossy().starts_with("placement-"))
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
    let shim = PathBuf::from(SHIM);
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
}
