//! The entry binary's spec splice (fastpath/src/splice.rs) on whatever config.json an engine or an
//! image produced: never a panic, and whenever it edits a spec, the result is JSON equal to what
//! the full wrapper's `spec::apply` makes of the same spec; and whenever the entry binary would
//! grant a spec by itself (its plain request, an edit planned), the full wrapper would grant it
//! too: it reads the spec strictly (no duplicate or case-folded keys), finds that very request
//! and no foreign driver node or rule. And on any spec at all, whenever the entry binary reads a
//! plain request for a profile an offer could name, the full wrapper (Kubernetes selection and
//! all, as `grant::wanted` reads a spec with the default config) reads exactly that request.
//! And the other way, as far as the rule goes: a spec the full wrapper reads as a plain request
//! for such a profile, written as serde_json writes it, the entry binary reads as that very
//! request, unless it holds what the entry binary leaves to the full wrapper by design.
#![no_main]
use gpushare_core::spec::{self, DeviceNode, Edit, Hook, Mount, PathEnv};
use gpushare_fastpath::splice;
use gpushare_state::offers;
use libfuzzer_sys::fuzz_target;
use std::path::Path;
use std::sync::OnceLock;

fn edits() -> &'static (Edit, Edit, Hook, String) {
    static E: OnceLock<(Edit, Edit, Hook, String)> = OnceLock::new();
    E.get_or_init(|| {
        let node = |path: &str, major, minor| DeviceNode {
            path: path.into(),
            major,
            minor,
            file_mode: 0o666,
        };
        let own = Edit {
            devices: vec![
                node("/dev/nvidiactl", 195, 255),
                node("/dev/nvidia-uvm", 238, 0),
                node("/dev/nvidia-uvm-tools", 238, 1),
                node("/dev/nvidia0", 195, 0),
                node("/dev/nvidia-caps/nvidia-cap12", 241, 12),
            ],
            env: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "MIG-fuzz".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "MIG-fuzz".into()),
            ],
            ..Default::default()
        };
        let common = Edit {
            mounts: vec![Mount {
                destination: "/usr/local/gpushare".into(),
                source: "tmpfs".into(),
                kind: "tmpfs".into(),
                options: vec!["nosuid".into()],
            }],
            env_paths: vec![
                PathEnv {
                    name: "LD_LIBRARY_PATH".into(),
                    dir: "/usr/local/gpushare/lib".into(),
                    prepend: true,
                    default: String::new(),
                },
                PathEnv {
                    name: "PATH".into(),
                    dir: "/usr/local/gpushare/bin".into(),
                    prepend: false,
                    default: "/usr/bin:/bin".into(),
                },
            ],
            ..Default::default()
        };
        let hook = Hook {
            path: "/usr/bin/gpushare".into(),
            args: vec!["gpushare-hook".into(), "poststop".into()],
            env: vec!["PATH=/usr/bin".into()],
            timeout: Some(30),
        };
        let mut text = gpushare_core::offers::header(1, None, &common, &hook).unwrap();
        assert!(gpushare_core::offers::offer(
            &mut text,
            None,
            "1g.10gb",
            "MIG-fuzz",
            "/proc/x/access",
            &own
        ));
        offers::write_end(&mut text).unwrap();
        (own, common, hook, text)
    })
}

/// The full wrapper's checks on the devices before it grants, which the entry binary must never
/// skip (the request itself is checked for every spec, by `full_wrapper_reads`).
fn full_wrapper_grants(data: &[u8]) {
    let spec = gpushare_core::strict_json::from_slice(data).expect("the full wrapper reads it");
    let majors = gpushare_core::driver::Majors {
        nvidia: 195,
        uvm: 238,
        caps: 241,
    };
    if let Some(entry) = gpushare_core::trust::foreign_devices(&spec, &majors, &[]) {
        panic!("the full wrapper refuses {entry}");
    }
}

/// Whether `profile` is a name an offer can hold: one the full wrapper reads back unchanged (it
/// trims and drops a `MIG ` prefix, but offers hold NVML's names without it, so for any other
/// spelling the entry binary finds no offer and hands over).
fn offerable(profile: &[u8]) -> bool {
    let Ok(p) = std::str::from_utf8(profile) else {
        return false;
    };
    let spec = serde_json::json!({ "annotations": { "gpu.profile": p } });
    matches!(gpushare_core::request::from_spec(&spec, true),
        Ok(Some(gpushare_core::request::Request::Mig { profile, device: None })) if profile == p)
}

/// The entry binary's plain request is the full wrapper's: that profile, no device, nothing else.
fn full_wrapper_reads(data: &[u8], profile: &[u8]) {
    let spec = match gpushare_core::strict_json::from_slice(data) {
        Ok(s) => s,
        Err(e) => panic!("the full wrapper cannot read the spec: {e}"),
    };
    let cfg = gpushare_core::config::Config::default();
    match gpushare_core::grant::wanted(&cfg, &spec) {
        Ok(Some(gpushare_core::request::Request::Mig {
            profile: p,
            device: None,
        })) => {
            assert_eq!(p.as_bytes(), profile)
        }
        other => panic!("the full wrapper reads another request: {other:?}"),
    }
}

/// What the entry binary leaves to the full wrapper by design, whatever the request: a string
/// that marks an env request, Kubernetes or a precreate claim anywhere; an annotation key or
/// the profile written with an escape; a number of 1e300 or more; nesting deeper than 100.
fn left_to_the_full_wrapper(spec: &serde_json::Value, written: &[u8]) -> bool {
    fn deep_or_huge(v: &serde_json::Value, depth: u32) -> bool {
        use serde_json::Value::*;
        match v {
            _ if depth > 100 => true,
            Number(n) => n.as_f64().is_none_or(|f| f.abs() >= 1e300),
            Array(a) => a.iter().any(|v| deep_or_huge(v, depth + 1)),
            Object(o) => o.values().any(|v| deep_or_huge(v, depth + 1)),
            _ => false,
        }
    }
    let marks = [&b"GPUSHARE_"[..], b"io.kubernetes", b"gpushare.lease"];
    let escaped = |s: &str| s.chars().any(|c| c == '"' || c == '\\' || c < ' ');
    let escaped_key = spec["annotations"]
        .as_object()
        .is_some_and(|a| a.keys().any(|k| escaped(k)));
    let escaped_profile = spec["annotations"]["gpu.profile"]
        .as_str()
        .is_some_and(escaped);
    marks
        .iter()
        .any(|m| written.windows(m.len()).any(|w| w == *m))
        || escaped_key
        || escaped_profile
        || deep_or_huge(spec, 0)
}

/// The full wrapper's plain request for an offerable profile is one the entry binary reads too,
/// as written in the annotation (which the full wrapper may have trimmed: the entry binary then
/// finds no offer of that name and hands over).
fn entry_binary_reads(data: &[u8]) {
    let Ok(spec) = gpushare_core::strict_json::from_slice(data) else {
        return;
    };
    let cfg = gpushare_core::config::Config::default();
    let Ok(Some(gpushare_core::request::Request::Mig {
        profile,
        device: None,
    })) = gpushare_core::grant::wanted(&cfg, &spec)
    else {
        return;
    };
    let written = serde_json::to_vec(&spec).unwrap();
    let Some(raw) = spec["annotations"]["gpu.profile"].as_str() else {
        return; // not an annotation: an env request, which the entry binary never reads
    };
    if !offerable(profile.as_bytes()) || left_to_the_full_wrapper(&spec, &written) {
        return;
    }
    assert_eq!(
        splice::plain_profile(&written),
        Some(raw.as_bytes()),
        "the entry binary does not read the full wrapper's plain request"
    );
}

fuzz_target!(|data: &[u8]| {
    let (own, common, hook, text) = edits();
    if let Some(p) = splice::plain_profile(data).filter(|p| offerable(p)) {
        full_wrapper_reads(data, p);
    }
    entry_binary_reads(data);
    let o = offers::parse(text.as_bytes()).unwrap();
    let offer = o.offer(None, b"1g.10gb").unwrap();
    let Ok(plan) = splice::plan(data, &o, &offer) else {
        return;
    };
    if splice::plain_profile(data) == Some(b"1g.10gb") {
        full_wrapper_grants(data);
    }
    let mut buf = vec![0u8; splice::room(data, text.as_bytes())];
    let mut out = splice::Out::new(&mut buf);
    splice::write(data, &plan, &o, &offer, &mut out).expect("room is enough");
    let got: serde_json::Value =
        serde_json::from_slice(out.bytes()).expect("the splice writes JSON");
    let mut want: serde_json::Value =
        serde_json::from_slice(data).expect("a spec the splice edits is JSON");
    let mut whole = own.clone();
    whole.extend(common.clone());
    whole.poststop = Some(hook.clone());
    spec::apply(&mut want, &whole, Path::new("config.json"))
        .expect("the full wrapper edits it too");
    assert_eq!(got, want);
});
