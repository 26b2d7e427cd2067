//! runc's command line, read just enough to find the subcommand, the bundle, the container id
//! and the engine's log file. The argv itself is handed to the runtime unchanged.

use std::ffi::OsString;
use std::path::PathBuf;

/// Global flags of runc (and crun) that take a value.
const GLOBAL_WITH_VALUE: &[&str] = &[
    "root",
    "log",
    "log-format",
    "criu",
    "rootless",
    "cgroup-manager",
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
            (false, Some(_)) if a == "--" => after_dashdash = true,
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

    #[test]
    fn other_commands_and_none() {
        assert_eq!(p("--version").command, None);
        let a = p("delete --force c3");
        assert_eq!(a.command.as_deref(), Some("delete"));
        assert_eq!(a.container_id.as_deref(), Some("c3"));
    }
}
