//! runc's command line, read just enough to find the subcommand, the bundle, the container id
//! and the engine's log file (by `gpushare_fastpath::args`, which the `gpushare` entry binary
//! reads argv with too). The argv itself is handed to the runtime unchanged.

use gpushare_fastpath::args::{self as front, Roles};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuncArgs {
    pub root: Option<String>,
    pub log: Option<PathBuf>,
    pub log_format_json: bool,
    /// The subcommand (`create`, `delete`, ...), if any.
    pub command: Option<String>,
    pub bundle: Option<PathBuf>,
    /// The first positional argument after the subcommand: the container id.
    pub container_id: Option<String>,
}

/// gpushare's own global flags, taken off the runtime's argv.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Own {
    /// `--gpushare-config=PATH` (the last one wins).
    pub config: Option<PathBuf>,
    /// `--gpushare-after-delete=CODE`: the entry binary already ran the runtime's `delete`,
    /// which exited with CODE.
    pub after_delete: Option<u8>,
}

/// Split gpushare's own global flags off `argv`: the argv for the runtime (everything else, in
/// order, byte for byte) and what the flags said.
pub fn take_own(argv: &[OsString]) -> (Vec<OsString>, Own) {
    let mut roles = Roles::default();
    let mut out = Vec::with_capacity(argv.len());
    out.extend(argv.first().cloned());
    for arg in argv.iter().skip(1) {
        if !roles.next(arg.as_bytes()).is_own() {
            out.push(arg.clone());
        }
    }
    let parsed = front::parse(argv.iter().skip(1).map(|a| a.as_bytes()));
    let own = Own {
        config: parsed.config.map(|c| PathBuf::from(OsStr::from_bytes(c))),
        after_delete: parsed.after_delete,
    };
    (out, own)
}

pub fn parse(argv: &[OsString]) -> RuncArgs {
    let p = front::parse(argv.iter().skip(1).map(|a| a.as_bytes()));
    let text = |v: &[u8]| String::from_utf8_lossy(v).into_owned();
    let path = |v: &[u8]| PathBuf::from(OsStr::from_bytes(v));
    RuncArgs {
        root: p.root.map(text),
        log: p.log.map(path),
        log_format_json: p.log_format == Some(b"json"),
        command: p.command.map(text),
        bundle: p.bundle.map(path),
        container_id: p.container_id.map(text),
    }
}

impl RuncArgs {
    /// The runtime's state root for this container: the engine's `--root`, else the default of
    /// a runtime gpushare knows. None for any other runtime: its containers are then never
    /// released as "gone" by the existence check, only by delete, the hook or an operator.
    pub fn runtime_root(&self, runtime: &Path) -> Option<String> {
        if let Some(r) = &self.root {
            return Some(r.clone());
        }
        match runtime.file_name().and_then(|n| n.to_str()) {
            Some("runc") => Some("/run/runc".into()),
            Some("crun") => Some("/run/crun".into()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> RuncArgs {
        let argv: Vec<OsString> = std::iter::once("gpushare")
            .chain(s.split_whitespace())
            .map(OsString::from)
            .collect();
        parse(&argv)
    }

    /// argv as fixtures/ holds it (NUL-separated, without argv[0]).
    fn fixture(raw: &[u8]) -> Vec<OsString> {
        std::iter::once(&b"gpushare"[..])
            .chain(raw.split(|&b| b == 0))
            .map(|a| OsStr::from_bytes(a).to_os_string())
            .collect()
    }

    #[test]
    fn containerd_style_create() {
        let a = parse(&fixture(include_bytes!(
            "../../fixtures/argv/containerd-create"
        )));
        let task = "/run/containerd/io.containerd.runtime.v2.task/k8s.io/c1";
        assert_eq!(a.root.as_deref(), Some("/run/containerd/runc/k8s.io"));
        assert_eq!(a.log, Some(PathBuf::from(format!("{task}/log.json"))));
        assert!(a.log_format_json);
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.bundle, Some(PathBuf::from(task)));
        assert_eq!(a.container_id.as_deref(), Some("c1"));
    }

    #[test]
    fn docker_style_delete_with_the_own_config_flag() {
        let argv = fixture(include_bytes!("../../fixtures/argv/docker-delete"));
        let (runtime, own) = take_own(&argv);
        assert_eq!(own.config, Some(PathBuf::from("/etc/gpushare/alt.toml")));
        assert_eq!(runtime[..1], argv[..1]);
        assert_eq!(runtime[1..], argv[2..], "only the own flag is taken off");
        let a = parse(&runtime);
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id.as_deref(), Some("c1"));
    }

    #[test]
    fn equals_forms_and_single_dash() {
        let a =
            p("-root=/r --debug --systemd-cgroup create -b=/b --no-pivot --console-socket /s id2");
        assert_eq!(a.root.as_deref(), Some("/r"));
        assert_eq!(a.bundle, Some(PathBuf::from("/b")));
        assert_eq!(a.container_id.as_deref(), Some("id2"));
    }

    fn os(s: &str) -> Vec<OsString> {
        std::iter::once("gpushare")
            .chain(s.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn own_config_flag_is_taken_off_in_both_forms() {
        let (argv, cfg) = take_own(&os(
            "--gpushare-config=/etc/g.toml --root /r --log /l create --bundle /b c1",
        ));
        assert_eq!(cfg.config, Some(PathBuf::from("/etc/g.toml")));
        assert_eq!(argv, os("--root /r --log /l create --bundle /b c1"));
        let (argv, cfg) = take_own(&os("--root /r -gpushare-config /x.toml --debug state c1"));
        assert_eq!(cfg.config, Some(PathBuf::from("/x.toml")));
        assert_eq!(argv, os("--root /r --debug state c1"));
    }

    #[test]
    fn own_flag_is_only_a_global_flag() {
        // After the subcommand it belongs to the runtime (and to the container's args).
        let s = "--root /r exec c1 sh --gpushare-config=/x";
        assert_eq!(take_own(&os(s)), (os(s), Own::default()));
        // A value that merely looks like the flag stays the runtime's.
        let s = "--log --gpushare-config=/x delete c1";
        assert_eq!(take_own(&os(s)), (os(s), Own::default()));
        assert_eq!(
            take_own(&os("--version")),
            (os("--version"), Own::default())
        );
        assert_eq!(take_own(&os("")), (os(""), Own::default()));
    }

    #[test]
    fn other_commands_and_none() {
        assert_eq!(p("--version").command, None);
        let a = p("delete --force c3");
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id.as_deref(), Some("c3"));
    }
}
