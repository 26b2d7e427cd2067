//! Offers: the warm grants the `gpushare` entry binary may make by itself, with no parser, no
//! allocator and no dynamic loader. After each allocation or release the full program writes,
//! for the ledger generation it has just written, which idle instance it would itself grant
//! for a plain request of each profile (the allocator's own pick), with the spec edit that
//! grant makes, already rendered as JSON. The entry binary uses an offer only while the ledger
//! is still that generation, its journal has changed nothing but releases it can account for,
//! and the config file is the one the offers were made under; anything else is the full
//! wrapper's, which then writes fresh offers. The format is `gpushare_state::offers`'s.
//!
//! Besides the node's state as written, offers are made for the state in which one of the most
//! recently granted leases is released again: a container that stops and is replaced (a
//! notebook restarted, a server rolled) is then granted without the full wrapper even though
//! its release is still only a journal line.

use crate::config::{Config, InjectMode};
use crate::driver::Driver;
use crate::ledger::LedgerState;
use crate::spec::{Edit, Hook};
use gpushare_state::journal::is_plain_id;
use gpushare_state::offers::{self as fmt, DeviceLine, NAME as FILE};
use std::os::unix::fs::MetadataExt;
use std::path::Path;

/// For this many of the latest leases, offers are also made as if that lease were released.
const RECENT_LEASES: usize = 2;

/// Write the offers for `st`, the ledger of `generation`, or remove them when this node's
/// config leaves grants to the full wrapper. Best effort: without offers every grant is the
/// full wrapper's, which is slower, never wrong.
pub fn write(cfg: &Config, st: &mut LedgerState, generation: u64) {
    let path = cfg.state_dir.join(FILE);
    let result = match render(cfg, st, generation) {
        Some(text) => write_quick(&path, text.as_bytes()),
        None => match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        },
    };
    if let Err(e) = result {
        tracing::warn!("cannot write {}: {e}", path.display());
    }
}

/// Temp file and rename, with no fsync: offers of an older generation than the ledger's are
/// never used, so a crash that loses them costs nothing but one slower grant.
fn write_quick(path: &Path, data: &[u8]) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let (mut f, tmp) = crate::fsutil::create_temp(dir, FILE.as_ref(), 0o600)?;
    let written =
        std::io::Write::write_all(&mut f, data).and_then(|()| std::fs::rename(&tmp, path));
    if written.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    written
}

/// The config file's identity, as the entry binary checks it: device, inode, size, mtime
/// (Some(None): no config file; None: it cannot be told).
fn config_identity(cfg: &Config) -> Option<Option<[u64; 5]>> {
    match &cfg.source {
        None => Some(None),
        Some(p) => {
            let m = std::fs::metadata(p).ok()?;
            let mtime = u64::try_from(m.mtime()).ok()?;
            let mtime_ns = u64::try_from(m.mtime_nsec()).ok()?;
            Some(Some([m.dev(), m.ino(), m.size(), mtime, mtime_ns]))
        }
    }
}

/// `st` is changed while rendering (a lease taken off and put back) and left as it came.
pub(crate) fn render(cfg: &Config, st: &mut LedgerState, generation: u64) -> Option<String> {
    // Settings the entry binary cannot honour itself: a privileged check, another runtime for
    // GPU containers, or a log line per grant.
    let logs_grants = matches!(
        cfg.log.level.to_ascii_lowercase().as_str(),
        "info" | "debug" | "trace"
    );
    if cfg.policy.refuse_privileged
        || cfg.inject.mode == InjectMode::NvidiaContainerRuntime
        || logs_grants
    {
        return None;
    }
    let config = config_identity(cfg)?;
    let majors = Driver::new(cfg).majors().ok()?;
    let common = crate::inject::driver_edit(cfg).ok()?;
    let hook = crate::hook::poststop_hook(cfg);
    let mut out = header(generation, config, &common, &hook)?;
    let mut recent: Vec<(u64, usize)> = st
        .instances
        .iter()
        .enumerate()
        .filter_map(|(i, r)| r.lease.as_ref().map(|l| (l, i)))
        .filter(|(l, _)| is_plain_id(l.container_id.as_bytes()))
        .map(|(l, i)| (l.since, i))
        .collect();
    recent.sort_by_key(|&(since, _)| std::cmp::Reverse(since));
    let mut idle: Vec<String> = st
        .instances
        .iter()
        .filter(|r| r.is_idle())
        .map(|r| r.profile.clone())
        .collect();
    idle.sort_unstable();
    idle.dedup();
    for profile in &idle {
        offer_for(cfg, st, None, profile, &majors, &mut out);
    }
    // The same, as if one of the latest leases were released: the state its container's
    // poststop hook leaves (as a journal line) when it is replaced.
    for &(_, i) in recent.iter().take(RECENT_LEASES) {
        let lease = st.instances[i].lease.take().expect("a leased record");
        let profile = st.instances[i].profile.clone();
        offer_for(
            cfg,
            st,
            Some(&lease.container_id),
            &profile,
            &majors,
            &mut out,
        );
        st.instances[i].lease = Some(lease);
    }
    fmt::write_end(&mut out)?;
    Some(out)
}

fn offer_for(
    cfg: &Config,
    st: &LedgerState,
    released: Option<&str>,
    profile: &str,
    majors: &crate::driver::Majors,
    out: &mut String,
) {
    if !cfg.profile_allowed(profile) {
        return;
    }
    let Some(i) = crate::slice::pick_idle(cfg, st, profile, None) else {
        return;
    };
    let r = &st.instances[i];
    let Some(m) = &r.made else { return };
    let cap = Driver::new(cfg).cap_file(r.gpu_minor, m.gi, Some(m.ci));
    let edit = crate::slice::Grant::from_record(r, m, true, true).edit(majors, None);
    offer(
        out,
        released,
        profile,
        &m.mig_uuid,
        &cap.to_string_lossy(),
        &edit,
    );
}

/// The offers' first lines: what every grant's edit shares (driver mounts, path variables, the
/// release hook). None when a part cannot be written as a word of the file.
pub fn header(
    generation: u64,
    config: Option<[u64; 5]>,
    common: &Edit,
    hook: &Hook,
) -> Option<String> {
    let mut out = String::new();
    fmt::write_head(&mut out, generation, config)?;
    for p in &common.env_paths {
        fmt::write_path_env(&mut out, &p.name, p.prepend, &p.dir, &p.default)?;
    }
    for m in &common.mounts {
        fmt::write_mount(
            &mut out,
            &m.destination,
            &crate::spec::mount_json(m).to_string(),
        )?;
    }
    fmt::write_hook(
        &mut out,
        &hook.path,
        &crate::spec::hook_json(hook).to_string(),
    )?;
    Some(out)
}

/// One offer: its instance's own nodes and env. Skipped (false) when a part is not a plain word.
pub fn offer(
    out: &mut String,
    released: Option<&str>,
    profile: &str,
    mig_uuid: &str,
    cap: &str,
    edit: &Edit,
) -> bool {
    let json: Vec<(String, String)> = edit
        .devices
        .iter()
        .map(|d| {
            let json = crate::spec::device_json(d).to_string();
            (json, crate::spec::rule_json(d).to_string())
        })
        .collect();
    let devices = edit
        .devices
        .iter()
        .zip(&json)
        .map(|(d, (json, rule))| DeviceLine {
            path: &d.path,
            major: d.major,
            minor: d.minor,
            json,
            rule,
        });
    let env = edit.env.iter().map(|(k, v)| (k.as_str(), v.as_str()));
    fmt::write_offer(out, released, profile, mig_uuid, cap, devices, env).is_some()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::spec::DeviceNode;
    use crate::spec::{Mount, PathEnv};
    use gpushare_fastpath::splice;
    use gpushare_state::offers as front_offers;
    use serde_json::{json, Value};

    const HOOK_PATH: &str = "/usr/bin/gpushare";

    fn node(path: &str, major: u32, minor: u32, mode: u32) -> DeviceNode {
        DeviceNode {
            path: path.into(),
            major,
            minor,
            file_mode: mode,
        }
    }

    /// A grant's whole edit, as the full wrapper makes it, split as the offers file holds it.
    fn edits() -> (Edit, Edit, Hook) {
        let own = Edit {
            devices: vec![
                node("/dev/nvidiactl", 195, 255, 0o666),
                node("/dev/nvidia-uvm", 238, 0, 0o666),
                node("/dev/nvidia-uvm-tools", 238, 1, 0o666),
                node("/dev/nvidia0", 195, 0, 0o666),
                node("/dev/nvidia-caps/nvidia-cap120", 241, 120, 0o444),
                node("/dev/nvidia-caps/nvidia-cap121", 241, 121, 0o444),
            ],
            env: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "MIG-abc".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "MIG-abc".into()),
            ],
            ..Edit::default()
        };
        let common = Edit {
            mounts: vec![
                Mount {
                    destination: "/usr/local/gpushare".into(),
                    source: "tmpfs".into(),
                    kind: "tmpfs".into(),
                    options: vec!["nosuid".into(), "mode=755".into()],
                },
                Mount {
                    destination: "/usr/local/gpushare/lib/libcuda.so.1".into(),
                    source: "/usr/lib/x86_64-linux-gnu/libcuda.so.580.1".into(),
                    kind: "bind".into(),
                    options: vec!["bind".into(), "ro".into()],
                },
            ],
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
                    default: "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin".into(),
                },
            ],
            ..Edit::default()
        };
        let hook = Hook {
            path: HOOK_PATH.into(),
            args: vec!["gpushare-hook".into(), "poststop".into()],
            env: vec!["PATH=/usr/bin:/bin".into()],
            timeout: Some(30),
        };
        (own, common, hook)
    }

    /// Every combination of a few shapes of each part the edit touches. A part's `bool` says
    /// whether the full wrapper would have to replace or refuse something there.
    fn specs() -> Vec<(Value, bool)> {
        let linux: Vec<(Option<Value>, bool)> = vec![
            (None, false),
            (Some(json!({})), false),
            (Some(json!({"devices": []})), false),
            (
                Some(
                    json!({"devices": [{"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}]}),
                ),
                false,
            ),
            (Some(json!({"resources": {}})), false),
            (
                Some(
                    json!({"namespaces": [{"type": "pid"}], "resources": {"devices": [{"allow": false, "access": "rwm"}], "memory": {"limit": 1.5e9}}}),
                ),
                false,
            ),
            (Some(json!({"devices": [{"path": "/dev/nvidiactl"}]})), true),
            (
                Some(
                    json!({"resources": {"devices": [{"allow": true, "type": "c", "major": 195, "minor": 0, "access": "rwm"}]}}),
                ),
                true,
            ),
            (Some(json!({"devices": {}})), true),
            (
                Some(json!({"sysctl": {"net.x": "a\tb\"c"}, "devices": []})),
                false,
            ),
            (Some(Value::Null), true),
            // Docker's and Podman's default device cgroup: nothing of the driver's.
            (
                Some(json!({"resources": {"devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "access": "m"},
                    {"allow": true, "type": "b", "access": "m"},
                    {"allow": true, "type": "c", "major": 1, "minor": 3, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 136, "access": "rwm"}]}})),
                false,
            ),
            (
                Some(
                    json!({"devices": [{"path": "/dev/x", "type": "c", "major": 10, "minor": 1.5}],
                           "resources": {"devices": [{"allow": true, "type": "c", "major": 10, "minor": "x", "access": "rw"}]}}),
                ),
                false,
            ),
            (
                Some(
                    json!({"devices": [{"path": "/dev/x", "type": "c", "major": 4_294_967_537u64, "minor": 1}]}),
                ),
                true,
            ),
            // The driver's nodes the spec brings itself are the full wrapper's to judge.
            (
                Some(
                    json!({"devices": [{"path": "/opt/evil", "type": "c", "major": 241, "minor": 7}]}),
                ),
                true,
            ),
            (
                Some(
                    json!({"resources": {"devices": [{"allow": true, "type": "c", "major": 241, "minor": -1, "access": "rwm"}]}}),
                ),
                true,
            ),
            (
                Some(json!({"resources": {"devices": [{"allow": true, "access": "rw"}]}})),
                true,
            ),
        ];
        let process: Vec<(Option<Value>, bool)> = vec![
            (None, false),
            (Some(json!({})), false),
            (Some(json!({"env": []})), false),
            (
                Some(json!({"args": ["sh"], "env": ["PATH=/bin", "HOME=/root"]})),
                false,
            ),
            (Some(json!({"env": ["PATH=/bin", "PATH=/sbin"]})), false),
            (
                Some(
                    json!({"env": ["A=1", "LD_LIBRARY_PATH=/usr/local/gpushare/lib:/opt/lib::", "NOEQ"]}),
                ),
                false,
            ),
            (
                Some(json!({"env": ["PATH=/usr/local/gpushare/bin:/bin:/usr/local/gpushare/bin"]})),
                false,
            ),
            (Some(json!({"env": ["CUDA_VISIBLE_DEVICES=0"]})), true),
            (Some(json!({"env": ["NVIDIA_VISIBLE_DEVICES"]})), false),
            (Some(json!({"env": [1]})), true),
            (
                Some(json!({"args": ["sh", "-c", "say \"hi\"\nexit"], "env": ["PATH=/bin"]})),
                false,
            ),
            (Some(json!({"env": ["X=a\"b"]})), true),
            (Some(json!([])), true),
        ];
        let mounts: Vec<(Option<Value>, bool)> = vec![
            (None, false),
            (Some(json!([])), false),
            (
                Some(json!([{"destination": "/proc", "type": "proc", "source": "proc"}])),
                false,
            ),
            (Some(json!([{"destination": "/usr/local/gpushare"}])), true),
            (Some(json!([{"destination": "/a\"b"}])), true),
            (Some(json!("x")), true),
        ];
        let hooks: Vec<(Option<Value>, bool)> = vec![
            (None, false),
            (Some(json!({})), false),
            (Some(json!({"poststop": []})), false),
            (Some(json!({"prestart": [{"path": "/x"}]})), false),
            (
                Some(json!({"poststop": [{"path": "/other", "args": ["a"]}]})),
                false,
            ),
            (Some(json!({"poststop": [{"path": HOOK_PATH}]})), true),
        ];
        let mut out = Vec::new();
        for (l, lc) in &linux {
            for (p, pc) in &process {
                for (m, mc) in &mounts {
                    for (h, hc) in &hooks {
                        let mut spec = json!({"ociVersion": "1.0.2", "root": {"path": "rootfs"},
                            "annotations": {"gpu.profile": "1g.10gb", "other": "x"}});
                        for (k, v) in [("linux", l), ("process", p), ("mounts", m), ("hooks", h)] {
                            if let Some(v) = v {
                                spec[k] = v.clone();
                            }
                        }
                        out.push((spec, *lc || *pc || *mc || *hc));
                    }
                }
            }
        }
        out
    }

    /// The engines' specs in fixtures/: Docker's the entry binary edits exactly as the full
    /// wrapper does; a Kubernetes container's (pod annotations, `gpu.containers`) it leaves to
    /// the full wrapper, which selects the container.
    #[test]
    fn the_entry_binary_edits_dockers_spec_and_leaves_kubernetes_to_the_full_wrapper() {
        let (own, common, hook) = edits();
        let mut text = header(7, None, &common, &hook).unwrap();
        assert!(offer(
            &mut text,
            None,
            "1g.10gb",
            "MIG-abc",
            "/proc/x/access",
            &own
        ));
        text.push_str("end\n");
        let offers = front_offers::parse(text.as_bytes()).unwrap();
        let offer = offers.offer(None, b"1g.10gb").unwrap();
        let mut whole = own.clone();
        whole.extend(common.clone());
        whole.poststop = Some(hook.clone());

        let docker = include_bytes!("../../../fixtures/spec/docker.json");
        assert_eq!(splice::plain_profile(docker), Some(&b"1g.10gb"[..]));
        let plan = splice::plan(docker, &offers, &offer).expect("a plain Docker spec");
        let mut buf = vec![0u8; splice::room(docker, text.as_bytes())];
        let mut out = splice::Out::new(&mut buf);
        splice::write(docker, &plan, &offers, &offer, &mut out).unwrap();
        let got: Value = serde_json::from_slice(out.bytes()).unwrap();
        let mut want: Value = serde_json::from_slice(docker).unwrap();
        crate::spec::apply(&mut want, &whole, Path::new("config.json")).unwrap();
        assert_eq!(got, want);

        let kube = include_bytes!("../../../fixtures/spec/kubernetes.json");
        assert_eq!(splice::plain_profile(kube), None);
    }

    #[test]
    fn the_entry_binarys_edit_is_the_full_wrappers_edit() {
        let (own, common, hook) = edits();
        let mut text = header(7, None, &common, &hook).unwrap();
        assert!(offer(
            &mut text,
            None,
            "1g.10gb",
            "MIG-abc",
            "/proc/x/gi1/ci0/access",
            &own
        ));
        fmt::write_end(&mut text).unwrap();
        let offers = front_offers::parse(text.as_bytes()).expect("the front reads it");
        let offer = offers.offer(None, b"1g.10gb").unwrap();
        let mut whole = own.clone();
        whole.extend(common.clone());
        whole.poststop = Some(hook.clone());

        let (mut edited, mut left) = (0, 0);
        for (spec, conflict) in specs() {
            for pretty in [false, true] {
                let raw = match pretty {
                    true => serde_json::to_vec_pretty(&spec).unwrap(),
                    false => serde_json::to_vec(&spec).unwrap(),
                };
                assert_eq!(splice::plain_profile(&raw), Some(&b"1g.10gb"[..]));
                let mut full = spec.clone();
                let full =
                    crate::spec::apply(&mut full, &whole, Path::new("config.json")).map(|()| full);
                let plan = splice::plan(&raw, &offers, &offer);
                match (&full, plan) {
                    (Err(_), Ok(_)) => panic!(
                        "the full wrapper refuses this spec, the entry binary edits it: {spec}"
                    ),
                    (_, Err(_)) => {
                        assert!(
                            conflict,
                            "a plain spec was left to the full wrapper: {spec}"
                        );
                        left += 1;
                    }
                    (Ok(want), Ok(plan)) => {
                        assert!(
                            !conflict,
                            "edited a spec the full wrapper changes otherwise: {spec}"
                        );
                        assert_eq!(full_wrapper_grants(&raw), Ok(()), "{spec}");
                        let mut buf = vec![0u8; splice::room(&raw, text.as_bytes())];
                        let mut out = splice::Out::new(&mut buf);
                        splice::write(&raw, &plan, &offers, &offer, &mut out).unwrap();
                        let got: Value = serde_json::from_slice(out.bytes()).unwrap_or_else(|e| {
                            panic!("{e}: {}", String::from_utf8_lossy(out.bytes()))
                        });
                        assert_eq!(&got, want, "from {spec}");
                        edited += 1;
                    }
                }
            }
        }
        assert!(edited > 1000 && left > 1000, "{edited} edited, {left} left");
    }

    /// What the full wrapper checks before it grants a plain request (the strict read, the
    /// request, the devices the spec carries), for a spec the entry binary edits.
    fn full_wrapper_grants(raw: &[u8]) -> Result<(), String> {
        let spec = crate::strict_json::from_slice(raw).map_err(|e| e.to_string())?;
        match crate::request::from_spec(&spec, true) {
            Ok(Some(crate::request::Request::Mig {
                profile,
                device: None,
            })) if profile == "1g.10gb" => {}
            other => return Err(format!("{other:?}")),
        }
        let majors = crate::driver::Majors {
            nvidia: 195,
            uvm: 238,
            caps: 241,
        };
        match crate::trust::foreign_devices(&spec, &majors, &[]) {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    #[test]
    fn only_a_lone_gpu_profile_annotation_is_plain() {
        for (spec, plain) in [
            (&br#"{"annotations":{"gpu.profile":"2g.20gb"}}"#[..], Some(&b"2g.20gb"[..])),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","gpu.device":"0"}}"#, None),
            (br#"{"annotations":{"gpu.profile":1}}"#, None),
            (br#"{"annotations":{"gpu.profile":"a","gpu.profile":"b"}}"#, None),
            (br#"{"annotations":{"gpu.mps":"50"}}"#, None),
            (br#"{"annotations":{}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"process":{"env":["GPUSHARE_PROFILE=x"]}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","io.kubernetes.cri.container-type":"container"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","x":"a\"b\ud83d\ude00"}}"#, Some(&b"2g.20gb"[..])),
            (br#"{"annotations":{"\u0067pu.device":"1","gpu.profile":"2g.20gb"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20\u0067b"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","x":"\q"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","x":"\ud800"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","x":"\ude00"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","x":"\u12"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"}} x"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"n":01}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"n":tru}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"n":-1.5e+3}"#, Some(&b"2g.20gb"[..])),
            // Out of f64's range: a JSON parser refuses the whole spec (found by fuzzing).
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"n":1e400}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"n":1e-400}"#, Some(&b"2g.20gb"[..])),
            // What the full wrapper refuses (issue 16): null and unknown keys, repeated
            // variables, and keys runc and serde_json read differently, at any level.
            (br#"{"annotations":{"gpu.profile":null}}"#, None),
            (br#"{"annotations":{"gpu.prfile":"2g.20gb"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb","gpu.prfile":"x"}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"process":{"env":["GPUSHARE_PROFILE=a","GPUSHARE_PROFILE=b"]}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"linux":{},"linux":{}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"x":[{"a":1,"b":{"c":1,"c":2}}]}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"x":{"Ab":1,"aB":2}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"Linux":{}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"x":{"\u0061":1}}"#, None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"linux":{"devices":[{"MAJOR":241}]}}"#, None),
            (b"{\"annotations\":{\"gpu.profile\":\"2g.20gb\"},\"x\":{\"caf\xc3\xa9\":1}}", None),
            (br#"{"annotations":{"gpu.profile":"2g.20gb"},"x":{"a":1},"y":{"a":1}}"#, Some(&b"2g.20gb"[..])),
        ] {
            assert_eq!(splice::plain_profile(spec), plain, "{}", String::from_utf8_lossy(spec));
            if plain.is_some() {
                crate::strict_json::from_slice(spec).expect("what the splice reads, the full wrapper reads");
            }
        }
    }
}
