//! The workload the placement benchmarks share (`placement` on one GPU, `dra` on a cluster):
//! the request mixes, offered load as an arrival rate, and the holding-time law.

use crate::args::Args;
use gpushare_core::placement::Profile;
use gpushare_core::policy::replay::Holds;

/// The three mixes, by H100 profile name.
pub fn named_mix(name: &str) -> Option<Vec<(String, f64)>> {
    let m: &[(&str, f64)] = match name {
        "a" => &[
            ("1g.10gb", 1.0 / 3.0),
            ("2g.20gb", 1.0 / 3.0),
            ("3g.40gb", 1.0 / 3.0),
        ],
        "b" => &[
            ("2g.20gb", 0.5),
            ("1g.10gb", 0.3),
            ("3g.40gb", 0.15),
            ("7g.80gb", 0.05),
        ],
        "c" => &[
            ("1g.10gb", 0.6),
            ("1g.20gb", 0.15),
            ("2g.20gb", 0.15),
            ("3g.40gb", 0.1),
        ],
        _ => return None,
    };
    Some(m.iter().map(|&(k, v)| (k.to_string(), v)).collect())
}

pub fn parse_mix(s: &str) -> Result<Vec<(String, f64)>, String> {
    if let Some(m) = named_mix(s) {
        return Ok(m);
    }
    s.split(',')
        .map(|kv| {
            let (k, v) = kv
                .split_once('=')
                .ok_or_else(|| format!("mix {s:?}: want a, b, c or name=share,..."))?;
            Ok((
                k.to_string(),
                v.parse::<f64>().map_err(|_| format!("mix share {v:?}"))?,
            ))
        })
        .collect()
}

/// Mix as profile indexes, and the arrival rate per mean hold for an offered load (share of
/// compute slices).
pub fn resolve(
    ps: &[Profile],
    mix: &[(String, f64)],
    load: f64,
) -> Result<(Vec<(usize, f64)>, f64), String> {
    let total: f64 = mix.iter().map(|m| m.1).sum();
    let idx: Vec<(usize, f64)> = mix
        .iter()
        .map(|(n, v)| {
            ps.iter()
                .position(|p| &p.name == n)
                .map(|i| (i, v / total))
                .ok_or_else(|| format!("profile {n} is not on this GPU"))
        })
        .collect::<Result<_, _>>()?;
    let slices = ps.iter().map(|p| p.slice_count).max().unwrap_or(7) as f64;
    let mean: f64 = idx.iter().map(|&(i, v)| v * ps[i].slice_count as f64).sum();
    Ok((idx, load * slices / mean))
}

pub fn holds(a: &Args) -> Result<Holds, String> {
    match a.or("holds", "exp") {
        "exp" => Ok(Holds::Exponential),
        "hyper" => Ok(Holds::Hyper {
            scv: a.num("scv", 4.0)?,
        }),
        o => Err(format!("--holds {o:?}: want exp or hyper")),
    }
}
