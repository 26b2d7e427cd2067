//! `gpusharectl doctor`: is this node ready to share GPUs, and if not, what to fix.

use crate::config::Config;
use crate::driver::Driver;
use serde::Serialize;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub level: Level,
    pub detail: String,
}

fn check(out: &mut Vec<Check>, name: &str, level: Level, detail: impl Into<String>) {
    out.push(Check {
        name: name.into(),
        level,
        detail: detail.into(),
    });
}

/// Engine configuration files that name gpushare when it is installed for that engine.
const ENGINE_FILES: &[(&str, &[&str])] = &[
    ("docker", &["/etc/docker/daemon.json"]),
    (
        "containerd",
        &["/etc/containerd/config.toml", "/etc/containerd/conf.d"],
    ),
    ("cri-o", &["/etc/crio/crio.conf", "/etc/crio/crio.conf.d"]),
    (
        "podman",
        &[
            "/etc/containers/containers.conf",
            "/etc/containers/containers.conf.d",
            "/usr/share/containers/oci/hooks.d",
            "/etc/containers/oci/hooks.d",
        ],
    ),
];

fn mentions_gpushare(path: &Path) -> bool {
    let file = |p: &Path| std::fs::read(p).is_ok_and(|b| b.windows(8).any(|w| w == b"gpushare"));
    if path.is_dir() {
        std::fs::read_dir(path).is_ok_and(|rd| rd.flatten().any(|e| file(&e.path())))
    } else {
        file(path)
    }
}

/// What `mig.manage_mode` would do on `g` for a request that needs the other MIG mode, and a
/// warning for a change the driver holds until a reset.
fn manage_mode_check(g: &crate::status::GpuStatus, out: &mut Vec<Check>) {
    let name = format!("GPU {} mig.manage_mode", g.index);
    if let Some(found) = g.mig_switch_found {
        check(out, &name, Level::Warn, format!(
            "a MIG mode switch was left unsettled by a crash: the next grant or `gpusharectl gc` puts MIG {} back",
            crate::mig_mode::on_off(found)));
        return;
    }
    if let Some(on) = g.mig_pending {
        check(out, &name, Level::Warn, format!(
            "MIG mode pending {}: the driver applies it only at a GPU reset (`nvidia-smi -i {} -r`, with nothing running on it); gpushare never resets a GPU, and refuses requests that need the pending mode until then",
            if on { "enable" } else { "disable" }, g.index));
        return;
    }
    // The kind of request that would need the other mode.
    let kind = if g.mig_enabled { "whole" } else { "mig" };
    if let Some(n) = g.needs.iter().find(|n| n.kind == kind) {
        check(
            out,
            &name,
            Level::Ok,
            format!("a {} request: {}", n.label(), n.line),
        );
    }
}

pub fn run(cfg: &Config) -> Vec<Check> {
    let mut out = Vec::new();
    check(
        &mut out,
        "config",
        Level::Ok,
        match &cfg.source {
            Some(p) => format!("{} is valid", p.display()),
            None => format!("{} absent: defaults", crate::config::DEFAULT_PATH),
        },
    );

    let dir = &cfg.state_dir;
    match std::fs::metadata(dir) {
        Ok(m) => {
            let mode = m.permissions().mode() & 0o777;
            if m.uid() != 0 || mode & 0o077 != 0 {
                check(&mut out, "state dir", Level::Fail, format!(
                    "{} is uid {} mode {mode:o}: it must be root's and 0700 (chown root: {0}; chmod 700 {0})",
                    dir.display(), m.uid()));
            } else {
                match crate::ledger::snapshot(dir) {
                    Ok(st) => check(
                        &mut out,
                        "state dir",
                        Level::Ok,
                        format!(
                            "{} (root, {mode:o}); ledger: {} instance record(s)",
                            dir.display(),
                            st.instances.len()
                        ),
                    ),
                    Err(e) => check(&mut out, "state dir", Level::Fail, e.to_string()),
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => check(
            &mut out,
            "state dir",
            Level::Ok,
            format!("{} not made yet (the first grant makes it)", dir.display()),
        ),
        Err(e) => check(
            &mut out,
            "state dir",
            Level::Fail,
            format!("{}: {e}", dir.display()),
        ),
    }

    let driver = Driver::new(cfg);
    match driver.majors() {
        Ok(m) => check(
            &mut out,
            "driver",
            Level::Ok,
            format!(
                "device majors: nvidia {}, nvidia-uvm {}, nvidia-caps {} (below {})",
                m.nvidia,
                m.uvm,
                m.caps,
                cfg.driver_root.display()
            ),
        ),
        Err(e) => check(&mut out, "driver", Level::Fail, e.to_string()),
    }

    if !cfg.mps.exclusive {
        check(&mut out, "mps", Level::Warn,
            "mps.exclusive = false: gpushare leaves compute modes alone, so on a GPU in compute mode Default a tenant can leave its MPS share (CUDA_MPS_PIPE_DIRECTORY pointed elsewhere gives an ordinary context: every SM, all memory)");
    }

    match crate::status::collect(cfg) {
        Ok(s) => {
            check(
                &mut out,
                "nvml",
                Level::Ok,
                format!(
                    "{} loaded; driver {}; {} GPU(s)",
                    cfg.nvml_library.display(),
                    s.driver_version.as_deref().unwrap_or("unknown"),
                    s.gpus.len()
                ),
            );
            for g in &s.gpus {
                let foreign = g.instances.iter().filter(|i| i.state == "foreign").count();
                let managed = cfg.mig.manage_mode.covers(g.index, &g.uuid);
                let (level, mig) = if g.mig_enabled {
                    (Level::Ok, "MIG enabled".to_string())
                } else if managed {
                    (Level::Ok, "MIG disabled: mig.manage_mode turns it on for a MIG request while the GPU is idle".to_string())
                } else {
                    (Level::Warn, format!(
                        "MIG disabled: MIG requests are refused; enable with `nvidia-smi -i {} -mig 1`, or let gpushare switch it (mig.manage_mode)",
                        g.index))
                };
                let mut detail = format!("{} {}: {mig}", g.name, g.uuid);
                let level = if foreign > 0 {
                    detail.push_str(&format!(
                        "; {foreign} instance(s) made by someone else (mig-parted, nvidia-smi?): gpushare leaves them alone, but another manager may clear gpushare's"));
                    Level::Warn
                } else {
                    level
                };
                check(&mut out, &format!("GPU {}", g.index), level, detail);
                manage_mode_check(g, &mut out);
                mps_checks(cfg, g, &mut out);
            }
        }
        Err(e) => check(&mut out, "nvml", Level::Fail, e.to_string()),
    }

    match cfg.runtime_path() {
        Ok(rt) => {
            let version = std::process::Command::new(&rt)
                .arg("--version")
                .output()
                .ok()
                .and_then(|o| String::from_utf8(o.stdout).ok())
                .and_then(|s| s.lines().next().map(str::to_string));
            match version {
                Some(v) => check(
                    &mut out,
                    "runtime",
                    Level::Ok,
                    format!("{}: {v}", rt.display()),
                ),
                None => check(
                    &mut out,
                    "runtime",
                    Level::Fail,
                    format!("{} does not answer --version", rt.display()),
                ),
            }
        }
        Err(e) => check(&mut out, "runtime", Level::Fail, e.to_string()),
    }

    let hook = cfg.hook_path();
    let exec_ok =
        std::fs::metadata(&hook).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if exec_ok {
        check(&mut out, "hook", Level::Ok, hook.display().to_string());
    } else {
        check(&mut out, "hook", Level::Fail, format!(
            "{} is missing or not executable: slices are then released only by `delete` and gc (set hook_path)",
            hook.display()));
    }

    wrapper_checks(cfg, &mut out);

    let mut engines = Vec::new();
    for (engine, paths) in ENGINE_FILES {
        if let Some(p) = paths.iter().find(|p| mentions_gpushare(Path::new(p))) {
            engines.push(format!("{engine} ({p})"));
        }
    }
    if engines.is_empty() {
        check(&mut out, "engines", Level::Warn,
            "no engine config names gpushare (docker daemon.json, containerd config.toml, CRI-O, Podman): see packaging/");
    } else {
        check(&mut out, "engines", Level::Ok, engines.join(", "));
    }

    let cgroup = if Path::new("/sys/fs/cgroup/cgroup.controllers").exists() {
        "v2 (unified)"
    } else if Path::new("/sys/fs/cgroup/unified").exists() {
        "v1 (hybrid)"
    } else {
        "v1"
    };
    check(&mut out, "cgroup", Level::Ok, cgroup);
    out
}

/// A GPU serving MPS shares must be in EXCLUSIVE_PROCESS, or a tenant can leave its share by
/// pointing CUDA at another pipe folder.
fn mps_checks(cfg: &Config, g: &crate::status::GpuStatus, out: &mut Vec<Check>) {
    let name = format!("GPU {} MPS", g.index);
    let mode = g.compute_mode.as_deref().unwrap_or("unknown");
    let exclusive = mode == crate::ledger::Mode::ExclusiveProcess.name();
    let in_slices = g.instances.iter().filter(|i| i.mps.is_some()).count();
    if in_slices > 0 {
        // Not a setting to fix: NVML takes no EXCLUSIVE_PROCESS on a MIG device.
        check(out, &name, Level::Warn, format!(
            "serves MPS shares inside {in_slices} MIG instance(s): a MIG device takes no Exclusive_Process, so a client that points CUDA_MPS_PIPE_DIRECTORY elsewhere leaves its share, though not its slice (docs/mps.md, MPS inside a MIG slice)"));
    }
    if g.mps.is_none() {
        if let Some(found) = &g.compute_mode_found {
            check(out, &name, Level::Warn, format!(
                "compute mode {mode}, set by gpushare for an MPS daemon that is gone (a crash): the next grant or `gpusharectl gc` puts {found} back"));
        }
        return;
    }
    match (exclusive, cfg.mps.exclusive) {
        (true, _) => check(out, &name, Level::Ok,
            "serves MPS shares in compute mode Exclusive_Process: the MPS server is the one context, no tenant can leave its share"),
        (false, true) => check(out, &name, Level::Fail, format!(
            "serves MPS shares in compute mode {mode}, not Exclusive_Process as mps.exclusive expects: a tenant that points CUDA_MPS_PIPE_DIRECTORY elsewhere gets every SM and all memory. Someone changed it (nvidia-smi -c?): release the shares, or `nvidia-smi -i {} -c EXCLUSIVE_PROCESS`", g.index)),
        (false, false) => check(out, &name, Level::Warn, format!(
            "serves MPS shares in compute mode {mode} (mps.exclusive = false): a tenant that points CUDA_MPS_PIPE_DIRECTORY elsewhere leaves its share; set mps.exclusive = true, or `nvidia-smi -i {} -c EXCLUSIVE_PROCESS` yourself", g.index)),
    }
}

/// `gpushare` hands GPU work to `gpushare-runtime` in its own folder (this binary's, as
/// installed), and settles other commands from the top of the config alone.
fn wrapper_checks(cfg: &Config, out: &mut Vec<Check>) {
    let dir = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(Path::to_path_buf));
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    match dir {
        Some(d) if executable(&d.join("gpushare")) && executable(&d.join("gpushare-runtime")) => {
            check(out, "wrapper", Level::Ok, format!("gpushare and gpushare-runtime in {}", d.display()))
        }
        Some(d) if executable(&d.join("gpushare")) => check(out, "wrapper", Level::Fail, format!(
            "{} has gpushare but not gpushare-runtime, which it hands every GPU request to: install both",
            d.display())),
        _ => check(out, "wrapper", Level::Warn,
            "gpushare is not next to gpusharectl: check that gpushare-runtime sits next to it"),
    }
    let Some(src) = &cfg.source else { return };
    let readable = std::fs::read(src).is_ok_and(|t| gpushare_fastpath::config::scan(&t).is_some());
    if readable {
        check(out, "fast path", Level::Ok,
            "gpushare reads runtime and state_dir from the top of the config: containers without a request never load gpushare-runtime");
    } else {
        check(out, "fast path", Level::Warn, format!(
            "gpushare cannot read the top of {} by itself (escapes, dotted keys or non-string values before the first [table]): every command goes through gpushare-runtime, correct but slower",
            src.display()));
    }
}

pub fn render(checks: &[Check]) -> String {
    let mut s = String::new();
    for c in checks {
        let tag = match c.level {
            Level::Ok => "ok  ",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        };
        s.push_str(&format!("{tag}  {:<10} {}\n", c.name, c.detail));
    }
    s
}
