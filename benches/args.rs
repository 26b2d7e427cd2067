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
