//! runc's command line, read just enough to find the subcommand, the bundle, the container id
//! and the engine's log file. The argv itself is handed to the runtime unchanged.

use std::ffi::OsString;
use std::path::PathBuf;

/// gpushare's own global flag, `--gpushare-config=PATH`: how an engine that passes extra
/// runtime arguments but not its environment (Docker's `runtimeArgs`, Podman's
/// `--runtime-flag`) names a config other than the default. It never reaches the runtime,
/// which would refuse a flag it does not know.
pub const CONFIG_FLAG: &str = "gpushare-config";

/// Global flags of runc (and crun) that take a value.
const GLOBAL_WITH_VALUE: &[&str] = &[
    "root",
    "log",
    "log-format",
    "criu",
    "rootless",
    "cgroup-manager",
    // crun's
    "log-level",
];
/// `create`/`run` flags that take a value.
const CREATE_WITH_VALUE: &[&str] = &["bundle", "b", "console-socket", "pid-file", "preserve-fds"];

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

/// `--name=value`, `--name value`, `-name value` (urfave/cli accepts one or two dashes).
fn flag_name(arg: &str) -> Option<(&str, Option<&str>)> {
    let body = arg.strip_prefix("--").or_else(|| arg.strip_prefix('-'))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.split_once('=') {
        Some((n, v)) => (n, Some(v)),
        None => (body, None),
    })
}

/// Split gpushare's own global flags off `argv`: the argv for the runtime (everything else, in
/// order, byte for byte) and the config path the flags named (the last one wins).
pub fn take_own(argv: &[OsString]) -> (Vec<OsString>, Option<PathBuf>) {
    let mut out = Vec::with_capacity(argv.len());
    let mut config = None;
    let mut it = argv.iter();
    out.extend(it.next().cloned());
    while let Some(arg) = it.next() {
        let text = arg.to_string_lossy();
        let Some((name, inline)) = flag_name(&text) else {
            // The subcommand: everything from here on is the runtime's.
            out.push(arg.clone());
            out.extend(it.cloned());
            break;
        };
        if name == CONFIG_FLAG {
            config = match inline {
                Some(v) => Some(PathBuf::from(v)),
                None => it.next().map(PathBuf::from),
            };
            continue;
        }
        out.push(arg.clone());
        if GLOBAL_WITH_VALUE.contains(&name) && inline.is_none() {
            out.extend(it.next().cloned());
        }
    }
    (out, config)
}

pub fn parse(argv: &[OsString]) -> RuncArgs {
    let args: Vec<String> = argv
        .iter()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let mut out = RuncArgs::default();
    let mut i = 0;
    while i < args.len() {
        let a = &args[i];
        let Some((name, inline)) = flag_name(a) else {
            out.command = Some(a.clone());
            i += 1;
            break;
        };
        let value = if GLOBAL_WITH_VALUE.contains(&name) && inline.is_none() {
            i += 1;
            args.get(i).cloned()
        } else {
            inline.map(str::to_string)
        };
        match name {
            "root" => out.root = value,
            "log" => out.log = value.map(PathBuf::from),
            "log-format" => out.log_format_json = value.as_deref() == Some("json"),
            _ => {}
        }
        i += 1;
    }
    if out.command.is_none() {
        return out;
    }
    let mut after_dashdash = false;
    while i < args.len() {
        let a = &args[i];
        match (after_dashdash, flag_name(a)) {
            (false, _) if a == "--" => after_dashdash = true,
            (false, Some((name, inline))) => {
                let value = if CREATE_WITH_VALUE.contains(&name) && inline.is_none() {
                    i += 1;
                    args.get(i).cloned()
                } else {
                    inline.map(str::to_string)
                };
                if name == "bundle" || name == "b" {
                    out.bundle = value.map(PathBuf::from);
                }
            }
            _ => {
                if out.container_id.is_none() {
                    out.container_id = Some(a.clone());
                }
            }
        }
        i += 1;
    }
    out
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

    #[test]
    fn containerd_style_create() {
        let a = p("--root /run/containerd/runc/k8s.io --log /x/log.json --log-format json create --bundle /b --pid-file /b/pid c1");
        assert_eq!(a.root.as_deref(), Some("/run/containerd/runc/k8s.io"));
        assert_eq!(a.log, Some(PathBuf::from("/x/log.json")));
        assert!(a.log_format_json);
        assert_eq!(a.command.as_deref(), Some("create"));
        assert_eq!(a.bundle, Some(PathBuf::from("/b")));
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
        assert_eq!(cfg, Some(PathBuf::from("/etc/g.toml")));
        assert_eq!(argv, os("--root /r --log /l create --bundle /b c1"));
        let (argv, cfg) = take_own(&os("--root /r -gpushare-config /x.toml --debug state c1"));
        assert_eq!(cfg, Some(PathBuf::from("/x.toml")));
        assert_eq!(argv, os("--root /r --debug state c1"));
    }

    #[test]
    fn own_flag_is_only_a_global_flag() {
        // After the subcommand it belongs to the runtime (and to the container's args).
        let s = "--root /r exec c1 sh --gpushare-config=/x";
        assert_eq!(take_own(&os(s)), (os(s), None));
        // A value that merely looks like the flag stays the runtime's.
        let s = "--log --gpushare-config=/x delete c1";
        assert_eq!(take_own(&os(s)), (os(s), None));
        assert_eq!(take_own(&os("--version")), (os("--version"), None));
        assert_eq!(take_own(&os("")), (os(""), None));
    }

    #[test]
    fn other_commands_and_none() {
        assert_eq!(p("--version").command, None);
        let a = p("delete --force c3");
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id.as_deref(), Some("c3"));
    }
}
