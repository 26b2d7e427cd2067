//! Placement quality: replays request traces through gpushare's placement code against an
//! in-memory GPU with the simulator's model data. No I/O beyond the trace, no NVML.
//!
//!   placement gen  --mix a --load 0.9 --count 200000 --seed 1 [--holds exp|hyper] [--scv 4] [--model h100-80gb] > t.csv
//!   placement run  --trace t.csv --policy bestfit|adaptive|lowest|driver-order|mdp --pool none|naive|aware
//!                  [--model h100-80gb] [--tolerance 0] [--mix a --load 0.9 (for mdp; default: the trace's own statistics)]
//!   placement solve [--model h100-80gb] [--mix a] [--load 0.9]   (state count, iterations, time, table size)
//!   placement grid [--count 200000] [--seed 1] [--holds exp|hyper] [--mixes a,b,c] [--loads 0.6,0.9,1.2]
//!                  [--tolerances 0,0.1] [--jobs 2]
//!
//! Loads are offered load as a share of the GPU's compute slices (7 on an H100), mean hold 1.
//! `run` prints one JSON line `{"requests":N,"accepted":A,"warm":W,"policy":"...","pool":"..."}`;
//! `grid` prints one JSON line per run and then a Markdown table.

mod args;
mod workload;

use args::{parse_args, Args};
use gpushare_core::placement::Profile;
use gpushare_core::policy::mdp::{Demand, Table};
use gpushare_core::policy::replay::{self, Event, Holds, Learner, Outcome, Placer};
use gpushare_core::policy::{model, PlacementConfig, PolicyKind, PoolKind};
use std::collections::BTreeMap;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Instant;
use workload::{holds, parse_mix, resolve};

const MODELS: &[(&str, &str)] = &[
    ("h100-80gb", include_str!("../sim/models/h100-80gb.json")),
    ("h200-141gb", include_str!("../sim/models/h200-141gb.json")),
    ("a100-40gb", include_str!("../sim/models/a100-40gb.json")),
    ("a100-80gb", include_str!("../sim/models/a100-80gb.json")),
];

fn profiles(model_key: &str) -> Result<Vec<Profile>, String> {
    let text = MODELS.iter().find(|m| m.0 == model_key).ok_or_else(|| {
        format!(
            "unknown model {model_key:?}; known: {}",
            MODELS.iter().map(|m| m.0).collect::<Vec<_>>().join(", ")
        )
    })?;
    model::profiles_from_json(text.1).map_err(|e| e.to_string())
}

fn demand(ps: &[Profile], mix: &[(usize, f64)], rate: f64) -> Demand {
    Demand {
        shares: mix.iter().map(|&(i, v)| (ps[i].name.clone(), v)).collect(),
        load: rate,
    }
}

/// The demand a whole trace shows (for `mdp` without --mix): what the exact policy knows.
fn trace_demand(ps: &[Profile], events: &[Event]) -> Demand {
    let mut shares: BTreeMap<String, f64> = BTreeMap::new();
    let mut start = std::collections::HashMap::new();
    let (mut n, mut hold, mut done) = (0.0, 0.0, 0.0);
    for e in events {
        if e.arrive {
            n += 1.0;
            *shares.entry(ps[e.profile].name.clone()).or_default() += 1.0;
            start.insert(e.id, e.time);
        } else if let Some(t) = start.remove(&e.id) {
            hold += e.time - t;
            done += 1.0;
        }
    }
    let span = events
        .iter()
        .filter(|e| e.arrive)
        .map(|e| e.time)
        .fold(0.0, f64::max);
    for v in shares.values_mut() {
        *v /= n;
    }
    Demand {
        shares,
        load: n / span.max(f64::MIN_POSITIVE) * hold / f64::max(done, 1.0),
    }
}

fn placer(name: &str, ps: &[Profile], exact: Option<&Demand>) -> Result<Placer, String> {
    Ok(match name {
        "mdp" => {
            let d = exact.ok_or("mdp needs a demand")?;
            Placer::Table(Arc::new(Table::solve(ps, d).map_err(|e| e.to_string())?))
        }
        "adaptive" => Placer::Adaptive(Box::new(Learner::new(PlacementConfig::default(), ps))),
        other => {
            Placer::Rule(PolicyKind::parse(other).ok_or_else(|| format!("--policy {other:?}"))?)
        }
    })
}

fn json_line(o: &Outcome, policy: &str, pool: &str) -> String {
    format!(
        r#"{{"requests":{},"accepted":{},"warm":{},"policy":"{policy}","pool":"{pool}"}}"#,
        o.requests, o.accepted, o.warm
    )
}

fn gen(a: &Args) -> Result<(), String> {
    let ps = profiles(a.or("model", "h100-80gb"))?;
    let mix = parse_mix(a.or("mix", "a"))?;
    let (mix, rate) = resolve(&ps, &mix, a.num("load", 0.9)?)?;
    let events = replay::generate(
        &mix,
        rate,
        holds(a)?,
        a.num("count", 200_000)?,
        a.num("seed", 1)?,
    );
    let csv = replay::to_csv(&events, &ps);
    match a.get("out") {
        Some(path) => std::fs::write(path, csv).map_err(|e| format!("{path}: {e}")),
        None => {
            use std::io::Write;
            std::io::stdout()
                .lock()
                .write_all(csv.as_bytes())
                .map_err(|e| e.to_string())
        }
    }
}

fn run(a: &Args) -> Result<(), String> {
    let ps = profiles(a.or("model", "h100-80gb"))?;
    let path = a.get("trace").ok_or("run needs --trace FILE")?;
    let text = std::fs::read_to_string(path).map_err(|e| format!("{path}: {e}"))?;
    let events = replay::parse_csv(&text, &ps).map_err(|e| format!("{path}: {e}"))?;
    let pool = PoolKind::parse(a.or("pool", "none")).ok_or("--pool: want none, naive or aware")?;
    let policy = a.or("policy", "bestfit");
    let exact = match a.get("mix") {
        Some(m) => {
            let (mix, rate) = resolve(&ps, &parse_mix(m)?, a.num("load", 0.9)?)?;
            demand(&ps, &mix, rate)
        }
        None => trace_demand(&ps, &events),
    };
    let mut p = placer(policy, &ps, Some(&exact))?;
    let o = replay::replay(&ps, &events, &mut p, pool, a.num("tolerance", 0.0)?)
        .map_err(|e| e.to_string())?;
    println!("{}", json_line(&o, policy, pool_name(pool)));
    Ok(())
}

fn solve(a: &Args) -> Result<(), String> {
    let ps = profiles(a.or("model", "h100-80gb"))?;
    let (mix, rate) = resolve(&ps, &parse_mix(a.or("mix", "a"))?, a.num("load", 0.9)?)?;
    let started = Instant::now();
    let t = Table::solve(&ps, &demand(&ps, &mix, rate)).map_err(|e| e.to_string())?;
    let ms = started.elapsed().as_secs_f64() * 1e3;
    let bytes = serde_json::to_vec(&t).map_err(|e| e.to_string())?.len();
    println!(
        r#"{{"states":{},"converged":{},"acceptance":{:.5},"solve_ms":{ms:.1},"table_bytes":{bytes}}}"#,
        t.values.len(),
        t.converged,
        t.acceptance
    );
    Ok(())
}

fn pool_name(p: PoolKind) -> &'static str {
    match p {
        PoolKind::None => "none",
        PoolKind::Naive => "naive",
        PoolKind::Aware => "aware",
    }
}

struct Cell {
    mix: String,
    load: f64,
    runs: Vec<(String, String, f64, Outcome)>,
    solves: usize,
}

fn grid(a: &Args) -> Result<(), String> {
    let ps = profiles("h100-80gb")?;
    let count: usize = a.num("count", 200_000)?;
    let seed: u64 = a.num("seed", 1)?;
    let h = holds(a)?;
    let mixes = a.list("mixes", "a,b,c");
    let loads: Vec<f64> = a.nums("loads", "0.6,0.9,1.2")?;
    let tols: Vec<f64> = a.nums("tolerances", "0")?;
    let jobs: usize = a.num("jobs", 2)?;
    let mut cells: Vec<(usize, String, f64)> = Vec::new();
    for m in &mixes {
        for &l in &loads {
            cells.push((cells.len(), m.to_string(), l));
        }
    }
    let started = Instant::now();
    let next = std::sync::atomic::AtomicUsize::new(0);
    let results = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..jobs.max(1) {
            s.spawn(|| loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                let Some((n, m, l)) = cells.get(i).cloned() else { break };
                let r = cell(&ps, &m, l, count, seed.wrapping_add(n as u64 * 7919), h, &tols);
                match r {
                    Ok(c) => {
                        for (policy, pool, tol, o) in &c.runs {
                            println!(
                                r#"{{"mix":"{}","load":{},"tolerance":{tol},"requests":{},"accepted":{},"warm":{},"policy":"{policy}","pool":"{pool}"}}"#,
                                c.mix, c.load, o.requests, o.accepted, o.warm
                            );
                        }
                        results.lock().unwrap().push((n, Ok(c)));
                    }
                    Err(e) => results.lock().unwrap().push((n, Err(e))),
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap();
    results.sort_by_key(|r| r.0);
    let cells: Vec<Cell> = results
        .into_iter()
        .map(|(_, r)| r)
        .collect::<Result<_, _>>()?;
    print_table(&cells, count, seed, h, started.elapsed().as_secs_f64());
    Ok(())
}

fn cell(
    ps: &[Profile],
    mix: &str,
    load: f64,
    count: usize,
    seed: u64,
    h: Holds,
    tols: &[f64],
) -> Result<Cell, String> {
    let (idx, rate) = resolve(ps, &parse_mix(mix)?, load)?;
    let events = replay::generate(&idx, rate, h, count, seed);
    let exact = demand(ps, &idx, rate);
    let mut runs = Vec::new();
    let mut solves = 0;
    let mut go = |policy: &str, pool: PoolKind, tol: f64| -> Result<(), String> {
        let mut p = placer(policy, ps, Some(&exact))?;
        let o = replay::replay(ps, &events, &mut p, pool, tol).map_err(|e| e.to_string())?;
        if policy == "adaptive" && pool == PoolKind::None {
            solves = p.solves();
        }
        runs.push((policy.to_string(), pool_name(pool).to_string(), tol, o));
        Ok(())
    };
    for policy in ["mdp", "adaptive", "bestfit", "lowest", "driver-order"] {
        go(policy, PoolKind::None, 0.0)?;
    }
    for policy in ["adaptive", "bestfit"] {
        go(policy, PoolKind::Naive, 0.0)?;
        for &t in tols {
            go(policy, PoolKind::Aware, t)?;
        }
    }
    Ok(Cell {
        mix: mix.to_string(),
        load,
        runs,
        solves,
    })
}

fn print_table(cells: &[Cell], count: usize, seed: u64, h: Holds, secs: f64) {
    let pct = |o: &Outcome| 100.0 * o.accepted as f64 / o.requests as f64;
    let find = |c: &Cell, policy: &str, pool: &str| {
        c.runs
            .iter()
            .find(|r| r.0 == policy && r.1 == pool)
            .map(|r| r.3)
    };
    println!();
    println!("{count} requests per cell, seed {seed}, holds {h:?}, {secs:.0} s");
    println!();
    println!("| mix | load | mdp (exact) | adaptive | adaptive/mdp | bestfit | lowest | driver-order | target met |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        let get = |p: &str| find(c, p, "none").map(|o| pct(&o)).unwrap_or(f64::NAN);
        let (m, ad, bf, lo, dr) = (
            get("mdp"),
            get("adaptive"),
            get("bestfit"),
            get("lowest"),
            get("driver-order"),
        );
        let ratio = ad / m;
        let met = ratio >= 0.995 && ad > bf && ad > lo && ad > dr;
        println!(
            "| {} | {:.0}% | {m:.3} | {ad:.3} | {:.4} | {bf:.3} | {lo:.3} | {dr:.3} | {} |",
            c.mix,
            c.load * 100.0,
            ratio,
            if met { "yes" } else { "no" }
        );
    }
    println!();
    println!("| mix | load | policy | pool | tolerance | accepted % | Δ vs no pool (points) | warm % of grants | target met |");
    println!("|---|---|---|---|---|---|---|---|---|");
    for c in cells {
        for r in c.runs.iter().filter(|r| r.1 != "none") {
            let base = find(c, &r.0, "none").map(|o| pct(&o)).unwrap_or(f64::NAN);
            let d = pct(&r.3) - base;
            let warm = 100.0 * r.3.warm as f64 / r.3.accepted.max(1) as f64;
            let met = d.abs() < 0.2 && warm >= 55.0;
            println!(
                "| {} | {:.0}% | {} | {} | {} | {:.3} | {:+.3} | {:.1} | {} |",
                c.mix,
                c.load * 100.0,
                r.0,
                r.1,
                r.2,
                pct(&r.3),
                d,
                warm,
                if met { "yes" } else { "no" }
            );
        }
    }
    println!();
    println!(
        "adaptive tables solved per cell: {:?}",
        cells.iter().map(|c| c.solves).collect::<Vec<_>>()
    );
}

fn main() -> ExitCode {
    // `cargo bench` appends `--bench`; it means nothing here.
    let raw: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| a != "--bench")
        .collect();
    let (cmd, rest) = match raw.first().map(String::as_str) {
        Some("gen") | Some("run") | Some("grid") | Some("solve") => (raw[0].clone(), &raw[1..]),
        _ => ("run".to_string(), &raw[..]),
    };
    let r = parse_args(rest).and_then(|a| match cmd.as_str() {
        "gen" => gen(&a),
        "grid" => grid(&a),
        "solve" => solve(&a),
        _ => run(&a),
    });
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("placement: {e}");
            ExitCode::from(2)
        }
    }
}
