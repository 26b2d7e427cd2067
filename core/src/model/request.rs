//! What a container asks for, read from its OCI spec: annotations first, then (for Docker
//! engines older than 24, which cannot pass annotations) `GPUSHARE_*` variables in its env.
//!
//! Requests are untrusted input: everything is bounded and checked here, before anything is
//! allocated. Whether a well-formed profile exists on the GPU is the allocator's question.

use serde_json::Value;

pub const ANN_PROFILE: &str = "gpu.profile";
pub const ANN_DEVICE: &str = "gpu.device";
pub const ANN_MPS: &str = "gpu.mps";
pub const ANN_MPS_MEMORY: &str = "gpu.mps.memory";
pub const ANN_SHARE: &str = "gpu.share";

/// (annotation, env fallback) pairs, in the order they are read.
const KEYS: [(&str, &str); 5] = [
    (ANN_PROFILE, "GPUSHARE_PROFILE"),
    (ANN_DEVICE, "GPUSHARE_DEVICE"),
    (ANN_MPS, "GPUSHARE_MPS"),
    (ANN_MPS_MEMORY, "GPUSHARE_MPS_MEMORY"),
    (ANN_SHARE, "GPUSHARE_SHARE"),
];

const MAX_VALUE_LEN: usize = 64;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// A MIG slice of this profile (NVML's name without the "MIG " prefix, e.g. "2g.20gb").
    Mig {
        profile: String,
        device: Option<DeviceSelector>,
    },
    /// An MPS share: at most `percent` of the SMs and (if given) `memory` bytes of pinned
    /// device memory per client process.
    Mps {
        percent: u8,
        memory: Option<u64>,
        device: Option<DeviceSelector>,
    },
    /// An MPS share of a MIG instance of this profile: the instance's MPS daemon binds the
    /// share (`percent` of the instance's SMs, `memory` per client process), and the instance
    /// is shared with other containers asking for the same profile and share.
    MpsInMig {
        profile: String,
        percent: u8,
        memory: Option<u64>,
        device: Option<DeviceSelector>,
    },
    /// The whole GPU, time-sliced with whoever else asked for it.
    TimeSlice { device: Option<DeviceSelector> },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSelector {
    Index(u32),
    Uuid(String),
}

impl std::fmt::Display for DeviceSelector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            DeviceSelector::Index(i) => write!(f, "{i}"),
            DeviceSelector::Uuid(u) => f.write_str(u),
        }
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RequestError {
    #[error("{key}={value} is not valid: {why}; accepted: {accepted}")]
    Invalid {
        key: String,
        value: String,
        why: String,
        accepted: String,
    },
    #[error("{keys}: ask for one way of sharing a GPU, not several")]
    Conflict { keys: String },
    #[error("{key} given without {needs}")]
    Incomplete { key: String, needs: String },
    #[error("{key}={value} is not allowed by the node's policy; allowed profiles: {allowed}")]
    NotAllowed {
        key: String,
        value: String,
        allowed: String,
    },
    #[error("annotation {key} is {found}, not a string; accepted: {accepted}")]
    NotString {
        key: String,
        found: &'static str,
        accepted: &'static str,
    },
    #[error("annotation {key} is not one of gpushare's (a typo?); accepted: {known}")]
    Unknown { key: String, known: String },
    #[error("env {var} is given {count} times ({values}): the container would see the first, gpushare would read another; give it once")]
    Repeated {
        var: &'static str,
        count: usize,
        values: String,
    },
    #[error("{key} belongs to an MPS share ({ANN_MPS}), not to {mode}: ask for one way of sharing a GPU")]
    WrongMode { key: String, mode: String },
}

/// gpushare's annotations: the request's, and the Kubernetes pod's container selection.
pub const ANNOTATIONS: [&str; 6] = [
    ANN_PROFILE,
    ANN_DEVICE,
    ANN_MPS,
    ANN_MPS_MEMORY,
    ANN_SHARE,
    crate::kube::ANN_CONTAINERS,
];

/// An annotation in gpushare's namespace: `gpu.` and no `/` (a key with one, such as
/// `gpu.example.com/x`, is another owner's, as Kubernetes prefixes keys).
fn in_our_namespace(key: &str) -> bool {
    key.starts_with("gpu.") && !key.contains('/')
}

/// Annotations that cannot be read as a request: a key in gpushare's namespace it does not
/// know (a typo would otherwise run the container without the GPU it asked for), or one of its
/// keys holding something other than a string (`"gpu.profile": null` likewise).
fn check_annotations(spec: &Value) -> Result<(), RequestError> {
    let Some(annotations) = spec.get("annotations").and_then(Value::as_object) else {
        return Ok(());
    };
    for (key, value) in annotations {
        if !in_our_namespace(key) {
            continue;
        }
        if !ANNOTATIONS.contains(&key.as_str()) {
            return Err(RequestError::Unknown {
                key: shown(key),
                known: ANNOTATIONS.join(", "),
            });
        }
        let found = match value {
            Value::String(_) => continue,
            Value::Null => "null",
            Value::Bool(_) => "a boolean",
            Value::Number(_) => "a number",
            Value::Array(_) => "a list",
            Value::Object(_) => "an object",
        };
        return Err(RequestError::NotString {
            key: key.clone(),
            found,
            accepted: "a string, e.g. \"1g.10gb\"",
        });
    }
    Ok(())
}

/// A `GPUSHARE_*` variable given more than once in the env that asks: `getenv` in the
/// container finds the first, so gpushare must not pick one.
fn check_repeated(env: &[&str]) -> Result<(), RequestError> {
    for (_, var) in KEYS {
        let values: Vec<&str> = env
            .iter()
            .filter_map(|e| e.strip_prefix(var).and_then(|r| r.strip_prefix('=')))
            .collect();
        if values.len() > 1 {
            return Err(RequestError::Repeated {
                var,
                count: values.len(),
                values: values
                    .iter()
                    .map(|v| shown(v))
                    .collect::<Vec<_>>()
                    .join(", "),
            });
        }
    }
    Ok(())
}

/// Where a request value came from, so messages name what the user actually wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Source {
    Annotation,
    Env,
}

struct Found<'a> {
    source: Source,
    name: &'a str,
    value: &'a str,
}

impl Found<'_> {
    fn label(&self) -> String {
        match self.source {
            Source::Annotation => format!("annotation {}", self.name),
            Source::Env => format!("env {}", self.name),
        }
    }
}

/// The spec's env entries when env may make the request: the policy allows it, and no request
/// annotation is there. An annotation (which only the engine's user can set) makes the
/// request; an image's baked-in GPUSHARE_* must not fill in what the annotations left out.
fn env_that_asks(spec: &Value, allow_env: bool) -> Vec<&str> {
    let annotated = spec
        .get("annotations")
        .and_then(Value::as_object)
        .is_some_and(|a| KEYS.iter().any(|(k, _)| a.contains_key(*k)));
    if annotated || !allow_env {
        return Vec::new();
    }
    spec.pointer("/process/env")
        .and_then(Value::as_array)
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default()
}

/// The env variables that made the spec's request, when it came from env (an old Docker's
/// `-e GPUSHARE_PROFILE=...`) rather than from annotations: the names a refusal should quote.
pub fn env_source(spec: &Value, allow_env: bool) -> Vec<&'static str> {
    let env = env_that_asks(spec, allow_env);
    KEYS.iter()
        .map(|&(_, var)| var)
        .filter(|var| {
            env.iter()
                .any(|e| e.strip_prefix(var).is_some_and(|r| r.starts_with('=')))
        })
        .collect()
}

/// The request in `spec`, if any. `allow_env` is the trust policy for `GPUSHARE_*` variables.
pub fn from_spec(spec: &Value, allow_env: bool) -> Result<Option<Request>, RequestError> {
    check_annotations(spec)?;
    let annotations = spec.get("annotations").and_then(Value::as_object);
    let env = env_that_asks(spec, allow_env);
    check_repeated(&env)?;
    let lookup = |ann: &'static str, var: &'static str| -> Option<Found<'_>> {
        if let Some(v) = annotations.and_then(|a| a.get(ann)).and_then(Value::as_str) {
            return Some(Found {
                source: Source::Annotation,
                name: ann,
                value: v,
            });
        }
        // (A variable given twice was refused above.)
        env.iter().rev().find_map(|e| {
            e.strip_prefix(var)
                .and_then(|rest| rest.strip_prefix('='))
                .map(|v| Found {
                    source: Source::Env,
                    name: var,
                    value: v,
                })
        })
    };
    let [profile, device, mps, mps_memory, share]: [Option<Found<'_>>; 5] =
        KEYS.map(|(a, v)| lookup(a, v));
    for found in [&profile, &device, &mps, &mps_memory, &share]
        .into_iter()
        .flatten()
    {
        check_bounded(found)?;
    }
    let device_found = device;
    let device = device_found.as_ref().map(parse_device).transpose()?;
    // A profile with an MPS share is one request (a share inside a slice), not two.
    let mps_in_mig = profile.is_some() && mps.is_some();
    let asked: Vec<&Found<'_>> = [&profile, &mps, &share].into_iter().flatten().collect();
    if asked.len() > 1 && !(mps_in_mig && share.is_none()) {
        return Err(RequestError::Conflict {
            keys: asked
                .iter()
                .map(|f| f.label())
                .collect::<Vec<_>>()
                .join(", "),
        });
    }
    if let (Some(m), Some(other), None) = (&mps_memory, profile.as_ref().or(share.as_ref()), &mps) {
        return Err(RequestError::WrongMode {
            key: m.label(),
            mode: other.label(),
        });
    }
    if let (Some(p), Some(m)) = (&profile, &mps) {
        return Ok(Some(Request::MpsInMig {
            profile: parse_profile(p)?,
            percent: parse_percent(m)?,
            memory: mps_memory.as_ref().map(parse_size).transpose()?,
            device,
        }));
    }
    if let Some(p) = &profile {
        return Ok(Some(Request::Mig {
            profile: parse_profile(p)?,
            device,
        }));
    }
    if let Some(m) = &mps {
        let percent = parse_percent(m)?;
        let memory = mps_memory.as_ref().map(parse_size).transpose()?;
        return Ok(Some(Request::Mps {
            percent,
            memory,
            device,
        }));
    }
    if let Some(m) = &mps_memory {
        return Err(RequestError::Incomplete {
            key: m.label(),
            needs: format!("{ANN_MPS} (the share of the GPU's SMs, 1-100)"),
        });
    }
    if let Some(s) = &share {
        return match s.value.trim() {
            "timeslice" => Ok(Some(Request::TimeSlice { device })),
            _ => Err(invalid(s, "unknown sharing mode", "timeslice")),
        };
    }
    match device_found {
        Some(d) => Err(RequestError::Incomplete {
            key: d.label(),
            needs: format!("{ANN_PROFILE}, {ANN_MPS} or {ANN_SHARE} (what to take on that GPU)"),
        }),
        None => Ok(None),
    }
}

const PERCENT_ACCEPTED: &str = "a whole number of percent of the GPU's SMs, 1 to 100";
const SIZE_ACCEPTED: &str = "a size like 4G, 512M or 16GiB (binary units: K, M, G, T), at least 1M";

fn parse_percent(f: &Found<'_>) -> Result<u8, RequestError> {
    let v = f.value.trim().trim_end_matches('%');
    match digits(v) {
        Some(n @ 1..=100) => Ok(n as u8),
        Some(_) => Err(invalid(f, "out of range", PERCENT_ACCEPTED)),
        None => Err(invalid(f, "not a number", PERCENT_ACCEPTED)),
    }
}

/// A size from the config ("8G"), as requests are read; None if it is not one.
pub fn size_bytes(text: &str) -> Option<u64> {
    let f = Found {
        source: Source::Annotation,
        name: "",
        value: text,
    };
    parse_size(&f).ok()
}

/// Sizes as MPS takes them ("4G"), read in binary units; returned in bytes.
fn parse_size(f: &Found<'_>) -> Result<u64, RequestError> {
    let v = f.value.trim();
    let v = v
        .strip_suffix("iB")
        .or_else(|| v.strip_suffix('B'))
        .unwrap_or(v);
    let split = v.find(|c: char| !c.is_ascii_digit()).unwrap_or(v.len());
    let (num, unit) = v.split_at(split);
    let shift = match unit {
        "" => 0,
        "K" | "k" => 10,
        "M" | "m" => 20,
        "G" | "g" => 30,
        "T" | "t" => 40,
        _ => return Err(invalid(f, "unknown unit", SIZE_ACCEPTED)),
    };
    let n: u64 = match num.parse() {
        Ok(n) if num.len() <= 12 => n,
        _ => return Err(invalid(f, "not a size", SIZE_ACCEPTED)),
    };
    match n.checked_mul(1u64 << shift) {
        Some(bytes) if bytes >= 1 << 20 => Ok(bytes),
        Some(_) => Err(invalid(f, "smaller than 1M", SIZE_ACCEPTED)),
        None => Err(invalid(f, "too large", SIZE_ACCEPTED)),
    }
}

/// Quick test used by the no-request path to skip JSON parsing: a spec that mentions neither
/// an annotation prefix nor an env fallback cannot hold a request.
pub use gpushare_fastpath::scan::may_contain_request;

/// Values shown in messages: control characters escaped, long values cut.
fn shown(value: &str) -> String {
    let mut s: String = value.chars().take(40).collect::<String>();
    if s.len() < value.len() {
        s = format!("{s}... ({} bytes)", value.len());
    }
    format!("{s:?}")
}

fn invalid(f: &Found<'_>, why: &str, accepted: &str) -> RequestError {
    RequestError::Invalid {
        key: f.label(),
        value: shown(f.value),
        why: why.into(),
        accepted: accepted.into(),
    }
}

const PROFILE_ACCEPTED: &str =
    "a MIG profile name as `nvidia-smi mig -lgip` prints it, e.g. 1g.10gb, 2g.20gb, 3g.40gb, 7g.80gb";

fn check_bounded(f: &Found<'_>) -> Result<(), RequestError> {
    if f.value.len() > MAX_VALUE_LEN {
        return Err(invalid(
            f,
            &format!("longer than {MAX_VALUE_LEN} bytes"),
            "short values",
        ));
    }
    if f.value.chars().any(char::is_control) {
        return Err(invalid(
            f,
            "contains control characters",
            "printable values",
        ));
    }
    Ok(())
}

/// `<slices>g.<memory>gb` with an optional `+me`/`+gfx`-style suffix, as NVML names profiles.
fn parse_profile(f: &Found<'_>) -> Result<String, RequestError> {
    check_bounded(f)?;
    let v = f.value.trim();
    if v.is_empty() {
        return Err(invalid(f, "empty", PROFILE_ACCEPTED));
    }
    let v = v.strip_prefix("MIG ").unwrap_or(v);
    let (base, suffix) = match v.split_once('+') {
        Some((b, s)) => (b, Some(s)),
        None => (v, None),
    };
    let ok_suffix = suffix
        .is_none_or(|s| !s.is_empty() && s.len() <= 8 && s.bytes().all(|b| b.is_ascii_lowercase()));
    let parsed = base.split_once("g.").and_then(|(slices, mem)| {
        let slices: u32 = digits(slices)?;
        let mem: u32 = digits(mem.strip_suffix("gb")?)?;
        Some((slices, mem))
    });
    match parsed {
        Some((slices, mem)) if ok_suffix && (1..=8).contains(&slices) && mem >= 1 => {
            Ok(v.to_string())
        }
        Some((0, _)) => Err(invalid(
            f,
            "a slice has at least 1 compute slice",
            PROFILE_ACCEPTED,
        )),
        _ => Err(invalid(f, "not a MIG profile name", PROFILE_ACCEPTED)),
    }
}

fn digits(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 4 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

fn parse_device(f: &Found<'_>) -> Result<DeviceSelector, RequestError> {
    check_bounded(f)?;
    const ACCEPTED: &str = "a GPU index (0, 1, ...) or a GPU UUID (GPU-xxxxxxxx-...)";
    let v = f.value.trim();
    if let Some(i) = digits(v) {
        return Ok(DeviceSelector::Index(i));
    }
    if let Some(rest) = v.strip_prefix("GPU-") {
        if !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_hexdigit() || b == b'-') {
            return Ok(DeviceSelector::Uuid(v.to_string()));
        }
    }
    Err(invalid(f, "not a GPU index or UUID", ACCEPTED))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn spec_with(ann: &[(&str, &str)], env: &[&str]) -> Value {
        let a: serde_json::Map<String, Value> =
            ann.iter().map(|(k, v)| (k.to_string(), json!(v))).collect();
        json!({"ociVersion": "1.0.2", "process": {"env": env}, "annotations": a})
    }

    #[test]
    fn env_source_names_the_variables_only_when_env_asked() {
        let env = ["PATH=/bin", "GPUSHARE_PROFILE=1g.10gb", "GPUSHARE_DEVICE=0"];
        assert_eq!(
            env_source(&spec_with(&[], &env), true),
            ["GPUSHARE_PROFILE", "GPUSHARE_DEVICE"]
        );
        assert!(env_source(&spec_with(&[], &env), false).is_empty());
        let annotated = spec_with(&[("gpu.profile", "1g.10gb")], &env);
        assert!(env_source(&annotated, true).is_empty());
        assert!(env_source(&spec_with(&[], &["GPUSHARE_PROFILES=x"]), true).is_empty());
    }

    #[test]
    fn no_request_is_none() {
        assert_eq!(from_spec(&spec_with(&[], &["PATH=/bin"]), true), Ok(None));
        assert_eq!(from_spec(&json!({}), true), Ok(None));
    }

    #[test]
    fn annotation_profile_and_device() {
        let s = spec_with(&[("gpu.profile", "2g.20gb"), ("gpu.device", "1")], &[]);
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::Mig {
                profile: "2g.20gb".into(),
                device: Some(DeviceSelector::Index(1))
            }))
        );
    }

    #[test]
    fn annotation_wins_over_env_and_env_obeys_policy() {
        let s = spec_with(&[("gpu.profile", "1g.10gb")], &["GPUSHARE_PROFILE=3g.40gb"]);
        assert!(
            matches!(from_spec(&s, true), Ok(Some(Request::Mig { profile, .. })) if profile == "1g.10gb")
        );
        let s = spec_with(&[], &["GPUSHARE_PROFILE=3g.40gb"]);
        assert!(
            matches!(from_spec(&s, true), Ok(Some(Request::Mig { profile, .. })) if profile == "3g.40gb")
        );
        assert_eq!(from_spec(&s, false), Ok(None));
    }

    #[test]
    fn an_annotated_request_ignores_the_images_env() {
        let s = spec_with(
            &[("gpu.mps", "25")],
            &[
                "GPUSHARE_PROFILE=1g.10gb",
                "GPUSHARE_DEVICE=3",
                "GPUSHARE_MPS_MEMORY=70G",
            ],
        );
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::Mps {
                percent: 25,
                memory: None,
                device: None
            }))
        );
    }

    #[test]
    fn profile_suffixes_and_prefix() {
        for ok in ["1g.10gb+me", "MIG 1g.10gb", "7g.141gb", "1g.18gb"] {
            let s = spec_with(&[("gpu.profile", ok)], &[]);
            assert!(from_spec(&s, true).is_ok(), "{ok}");
        }
    }

    #[test]
    fn bad_values_name_the_key_value_and_what_is_accepted() {
        let long = "a".repeat(10 * 1024);
        for bad in [
            "",
            "0g.1gb",
            "2g",
            "foo",
            "1g.10gb\n",
            "9g.10gb",
            "1g.10gb+",
            long.as_str(),
        ] {
            let s = spec_with(&[("gpu.profile", bad)], &[]);
            let err = from_spec(&s, true).unwrap_err().to_string();
            assert!(err.contains("annotation gpu.profile"), "{err}");
            assert!(err.contains("accepted:"), "{err}");
            assert!(err.len() < 400, "message stays short: {err}");
        }
        let s = spec_with(&[("gpu.profile", "1g.10gb"), ("gpu.device", "first")], &[]);
        let err = from_spec(&s, true).unwrap_err().to_string();
        assert!(
            err.contains("gpu.device") && err.contains("GPU index"),
            "{err}"
        );
    }

    #[test]
    fn env_errors_name_the_variable() {
        let s = spec_with(&[], &["GPUSHARE_PROFILE=huge"]);
        let err = from_spec(&s, true).unwrap_err().to_string();
        assert!(err.contains("env GPUSHARE_PROFILE"), "{err}");
    }

    #[test]
    fn device_without_profile_is_refused() {
        let s = spec_with(&[("gpu.device", "0")], &[]);
        assert!(matches!(
            from_spec(&s, true),
            Err(RequestError::Incomplete { .. })
        ));
    }

    #[test]
    fn mps_and_timeslice_requests() {
        let s = spec_with(&[("gpu.mps", "25"), ("gpu.mps.memory", "4G")], &[]);
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::Mps {
                percent: 25,
                memory: Some(4 << 30),
                device: None
            }))
        );
        let s = spec_with(&[], &["GPUSHARE_MPS=50", "GPUSHARE_MPS_MEMORY=512MiB"]);
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::Mps {
                percent: 50,
                memory: Some(512 << 20),
                device: None
            }))
        );
        let s = spec_with(&[("gpu.share", "timeslice"), ("gpu.device", "1")], &[]);
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::TimeSlice {
                device: Some(DeviceSelector::Index(1))
            }))
        );
    }

    #[test]
    fn bad_mps_and_share_values() {
        for (k, v, want) in [
            ("gpu.mps", "0", "out of range"),
            ("gpu.mps", "101", "out of range"),
            ("gpu.mps", "half", "not a number"),
            ("gpu.share", "mig", "unknown sharing mode"),
        ] {
            let err = from_spec(&spec_with(&[(k, v)], &[]), true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(want) && err.contains(k) && err.contains("accepted:"),
                "{err}"
            );
        }
        for v in ["4X", "1K", "", "99999999999999G"] {
            let s = spec_with(&[("gpu.mps", "10"), ("gpu.mps.memory", v)], &[]);
            let err = from_spec(&s, true).unwrap_err().to_string();
            assert!(
                err.contains("gpu.mps.memory") && err.contains("accepted:"),
                "{v}: {err}"
            );
        }
        let s = spec_with(&[("gpu.mps.memory", "4G")], &[]);
        assert!(matches!(
            from_spec(&s, true),
            Err(RequestError::Incomplete { .. })
        ));
        let s = spec_with(&[("gpu.mps", "10"), ("gpu.share", "timeslice")], &[]);
        let err = from_spec(&s, true).unwrap_err().to_string();
        assert!(err.contains("not several"), "{err}");
    }

    #[test]
    fn a_profile_with_an_mps_share_is_a_share_inside_a_slice() {
        let s = spec_with(
            &[
                ("gpu.profile", "3g.40gb"),
                ("gpu.mps", "33"),
                ("gpu.mps.memory", "8G"),
                ("gpu.device", "1"),
            ],
            &[],
        );
        assert_eq!(
            from_spec(&s, true),
            Ok(Some(Request::MpsInMig {
                profile: "3g.40gb".into(),
                percent: 33,
                memory: Some(8 << 30),
                device: Some(DeviceSelector::Index(1)),
            }))
        );
        let s = spec_with(&[], &["GPUSHARE_PROFILE=3g.40gb", "GPUSHARE_MPS=50"]);
        assert!(matches!(
            from_spec(&s, true),
            Ok(Some(Request::MpsInMig {
                percent: 50,
                memory: None,
                ..
            }))
        ));
        // Each half is checked as on its own, and a third way of sharing is refused.
        for (ann, want) in [
            (
                vec![("gpu.profile", "3g.40gb"), ("gpu.mps", "0")],
                "gpu.mps",
            ),
            (
                vec![("gpu.profile", "3g"), ("gpu.mps", "50")],
                "gpu.profile",
            ),
            (
                vec![
                    ("gpu.profile", "3g.40gb"),
                    ("gpu.mps", "50"),
                    ("gpu.mps.memory", "4X"),
                ],
                "gpu.mps.memory",
            ),
            (
                vec![
                    ("gpu.profile", "3g.40gb"),
                    ("gpu.mps", "50"),
                    ("gpu.share", "timeslice"),
                ],
                "not several",
            ),
        ] {
            let err = from_spec(&spec_with(&ann, &[]), true)
                .unwrap_err()
                .to_string();
            assert!(err.contains(want), "{ann:?}: {err}");
        }
    }

    #[test]
    fn null_and_other_non_string_values_are_refused() {
        for (v, found) in [
            (json!(null), "null"),
            (json!(1), "a number"),
            (json!(["1g.10gb"]), "a list"),
            (json!(true), "a boolean"),
        ] {
            for key in ANNOTATIONS {
                let s = json!({"annotations": {key: v.clone()}});
                let err = from_spec(&s, true).unwrap_err().to_string();
                assert!(
                    err.contains(&format!("annotation {key} is {found}, not a string")),
                    "{err}"
                );
            }
        }
        // Before the fix, a null profile was no request at all.
        let s = json!({"annotations": {"gpu.profile": null}});
        assert!(matches!(
            from_spec(&s, true),
            Err(RequestError::NotString { .. })
        ));
    }

    #[test]
    fn unknown_keys_in_gpushares_namespace_are_refused() {
        for key in ["gpu.prfile", "gpu.", "gpu.profile.x", "gpu.mps_memory"] {
            let s = spec_with(&[(key, "1g.10gb")], &[]);
            let err = from_spec(&s, true).unwrap_err().to_string();
            assert!(
                err.contains(&format!("annotation {key:?} is not one of gpushare's"))
                    && err.contains("accepted: gpu.profile, gpu.device"),
                "{err}"
            );
        }
        // Another owner's key (Kubernetes-prefixed), and keys outside the namespace.
        for key in [
            "gpu.example.com/model",
            "gpus",
            "gpushare.lease",
            "nvidia.com/gpu",
        ] {
            let s = spec_with(&[(key, "x"), ("gpu.profile", "1g.10gb")], &[]);
            assert!(from_spec(&s, true).is_ok(), "{key}");
        }
    }

    #[test]
    fn a_variable_given_twice_is_refused_only_where_env_asks() {
        let env = [
            "GPUSHARE_PROFILE=1g.10gb",
            "PATH=/bin",
            "GPUSHARE_PROFILE=7g.80gb",
        ];
        let err = from_spec(&spec_with(&[], &env), true)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains(r#"env GPUSHARE_PROFILE is given 2 times ("1g.10gb", "7g.80gb")"#),
            "{err}"
        );
        // Env that does not ask is no request at all.
        assert_eq!(from_spec(&spec_with(&[], &env), false), Ok(None));
        let annotated = spec_with(&[("gpu.profile", "2g.20gb")], &env);
        assert!(from_spec(&annotated, true).is_ok());
    }

    #[test]
    fn mps_memory_beside_another_mode_is_refused() {
        for (ann, env, mode) in [
            (
                vec![("gpu.profile", "1g.10gb"), ("gpu.mps.memory", "4G")],
                vec![],
                "annotation gpu.profile",
            ),
            (
                vec![("gpu.share", "timeslice"), ("gpu.mps.memory", "4G")],
                vec![],
                "annotation gpu.share",
            ),
            (
                vec![],
                vec!["GPUSHARE_PROFILE=1g.10gb", "GPUSHARE_MPS_MEMORY=4G"],
                "env GPUSHARE_PROFILE",
            ),
        ] {
            let err = from_spec(&spec_with(&ann, &env), true)
                .unwrap_err()
                .to_string();
            assert!(
                err.contains("gpu.mps.memory") || err.contains("GPUSHARE_MPS_MEMORY"),
                "{err}"
            );
            assert!(
                err.contains(&format!("belongs to an MPS share (gpu.mps), not to {mode}")),
                "{err}"
            );
        }
    }

    #[test]
    fn quick_scan_matches_parser() {
        assert!(!may_contain_request(
            br#"{"annotations":{"org.x":"1"},"process":{"env":["A=1"]}}"#
        ));
        assert!(may_contain_request(
            br#"{"annotations":{"gpu.profile":"1g.10gb"}}"#
        ));
        assert!(may_contain_request(
            br#"{"process":{"env":["GPUSHARE_PROFILE=1g.10gb"]}}"#
        ));
    }
}
