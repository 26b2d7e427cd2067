//! The `--key value` command lines of the benchmarks (`placement`, `dra`).

use std::collections::BTreeMap;

pub struct Args(BTreeMap<String, String>);

impl Args {
    pub fn get(&self, k: &str) -> Option<&str> {
        self.0.get(k).map(String::as_str)
    }
    pub fn or<'a>(&'a self, k: &str, d: &'a str) -> &'a str {
        self.get(k).unwrap_or(d)
    }
    pub fn num<T: std::str::FromStr>(&self, k: &str, d: T) -> Result<T, String> {
        match self.get(k) {
            Some(v) => v
                .parse()
                .map_err(|_| format!("--{k} {v:?} is not a number")),
            None => Ok(d),
        }
    }
    /// A comma-separated list (`--mixes a,b,c`).
    pub fn list<'a>(&'a self, k: &str, d: &'a str) -> Vec<&'a str> {
        self.or(k, d).split(',').collect()
    }
    /// A comma-separated list of numbers (`--loads 0.6,0.9`).
    pub fn nums<T: std::str::FromStr>(&self, k: &str, d: &str) -> Result<Vec<T>, String> {
        self.list(k, d)
            .into_iter()
            .map(|v| {
                v.parse()
                    .map_err(|_| format!("--{k} {v:?} is not a number"))
            })
            .collect()
    }
}

pub fn parse_args(raw: &[String]) -> Result<Args, String> {
    let mut m = BTreeMap::new();
    let mut it = raw.iter();
    while let Some(a) = it.next() {
        let k = a
            .strip_prefix("--")
            .ok_or_else(|| format!("unexpected argument {a:?}"))?;
        let v = it.next().ok_or_else(|| format!("--{k} needs a value"))?;
        m.insert(k.to_string(), v.clone());
    }
    Ok(Args(m))
}
