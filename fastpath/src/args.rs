//! runc's command line, read one argument at a time, just enough to find gpushare's own flags,
//! the subcommand, the bundle, the container id and the engine's log file. The runtime gets
//! every argument that is not gpushare's own, unchanged.

/// `--gpushare-config=PATH`: how an engine that passes extra runtime arguments but not its
/// environment (Docker's `runtimeArgs`, Podman's `--runtime-flag`) names a config other than
/// the default. It never reaches the runtime, which would refuse a flag it does not know.
pub const CONFIG_FLAG: &[u8] = b"gpushare-config";
/// `--gpushare-after-delete=CODE`: set by the `gpushare` entry binary alone, when it has
/// already run the runtime's `delete` (which exited with CODE) and the ledger still names the
/// container: what is left is the full wrapper's.
pub const AFTER_DELETE_FLAG: &[u8] = b"gpushare-after-delete";

/// Global flags of runc (and crun) that take a value.
const GLOBAL_WITH_VALUE: &[&[u8]] = &[
    b"root",
    b"log",
    b"log-format",
    b"criu",
    b"rootless",
    b"cgroup-manager",
    // crun's
    b"log-level",
];
/// `create`/`run` flags that take a value (and those of any other command but `exec`).
const CREATE_WITH_VALUE: &[&[u8]] = &[
    b"bundle",
    b"b",
    b"console-socket",
    b"pid-file",
    b"preserve-fds",
];
/// `exec` flags that take a value, runc's and crun's.
const EXEC_WITH_VALUE: &[&[u8]] = &[
    b"console-socket",
    b"pidfd-socket",
    b"cwd",
    b"env",
    b"e",
    b"user",
    b"u",
    b"additional-gids",
    b"g",
    b"process",
    b"p",
    b"pid-file",
    b"process-label",
    b"apparmor",
    b"cap",
    b"c",
    b"preserve-fds",
    b"cgroup",
];

/// What one argument is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role<'a> {
    /// One of gpushare's own global flags, with its value when written `--flag=value`.
    Own {
        name: &'a [u8],
        value: Option<&'a [u8]>,
    },
    /// The value of the own flag just before.
    OwnValue {
        name: &'a [u8],
    },
    /// A global flag of the runtime's.
    Global {
        name: &'a [u8],
        value: Option<&'a [u8]>,
    },
    GlobalValue {
        name: &'a [u8],
    },
    /// The subcommand.
    Command,
    /// A flag of the subcommand's.
    Flag {
        name: &'a [u8],
        value: Option<&'a [u8]>,
    },
    FlagValue {
        name: &'a [u8],
    },
    /// `--` after the subcommand: what follows is positional.
    DashDash,
    Positional,
}

impl Role<'_> {
    /// Whether the argument is gpushare's and must not reach the runtime.
    pub fn is_own(&self) -> bool {
        matches!(self, Role::Own { .. } | Role::OwnValue { .. })
    }
}

/// `--name=value`, `--name value`, `-name value` (urfave/cli accepts one or two dashes).
pub fn flag_name(arg: &[u8]) -> Option<(&[u8], Option<&[u8]>)> {
    let body = arg.strip_prefix(b"--").or_else(|| arg.strip_prefix(b"-"))?;
    if body.is_empty() {
        return None;
    }
    Some(match body.iter().position(|&b| b == b'=') {
        Some(i) => (&body[..i], Some(&body[i + 1..])),
        None => (body, None),
    })
}

#[derive(Debug, Clone, Copy)]
enum State<'a> {
    Globals,
    OwnValue(&'a [u8]),
    GlobalValue(&'a [u8]),
    Command { dashdash: bool },
    FlagValue(&'a [u8]),
}

/// Reads argv (without argv[0]) one argument at a time.
#[derive(Debug, Clone, Copy)]
pub struct Roles<'a> {
    state: State<'a>,
    /// The subcommand is `exec`: its own flags take values, and everything after the container
    /// id is the command run in the container (whose `-e` is not the runtime's).
    exec: bool,
}

impl Default for Roles<'_> {
    fn default() -> Self {
        Roles {
            state: State::Globals,
            exec: false,
        }
    }
}

impl<'a> Roles<'a> {
    pub fn next(&mut self, arg: &'a [u8]) -> Role<'a> {
        let (role, state) = match self.state {
            State::OwnValue(name) => (Role::OwnValue { name }, State::Globals),
            State::GlobalValue(name) => (Role::GlobalValue { name }, State::Globals),
            State::FlagValue(name) => {
                (Role::FlagValue { name }, State::Command { dashdash: false })
            }
            State::Globals => match flag_name(arg) {
                None => {
                    self.exec = arg == b"exec";
                    (Role::Command, State::Command { dashdash: false })
                }
                Some((name, value)) if name == CONFIG_FLAG => (
                    Role::Own { name, value },
                    match value {
                        None => State::OwnValue(name),
                        Some(_) => State::Globals,
                    },
                ),
                Some((name, value)) if name == AFTER_DELETE_FLAG => {
                    (Role::Own { name, value }, State::Globals)
                }
                Some((name, value)) => (
                    Role::Global { name, value },
                    match value.is_none() && GLOBAL_WITH_VALUE.contains(&name) {
                        true => State::GlobalValue(name),
                        false => State::Globals,
                    },
                ),
            },
            State::Command { dashdash: true } => (Role::Positional, self.state),
            State::Command { dashdash: false } if arg == b"--" => {
                (Role::DashDash, State::Command { dashdash: true })
            }
            State::Command { dashdash: false } => match flag_name(arg) {
                None if self.exec => (Role::Positional, State::Command { dashdash: true }),
                None => (Role::Positional, self.state),
                Some((name, value)) => {
                    let with_value = match self.exec {
                        true => EXEC_WITH_VALUE,
                        false => CREATE_WITH_VALUE,
                    };
                    (
                        Role::Flag { name, value },
                        match value.is_none() && with_value.contains(&name) {
                            true => State::FlagValue(name),
                            false => self.state,
                        },
                    )
                }
            },
        };
        self.state = state;
        role
    }
}

/// Everything gpushare reads from argv.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Parsed<'a> {
    /// `--gpushare-config`, the last one given.
    pub config: Option<&'a [u8]>,
    /// `--gpushare-after-delete[=CODE]`: the runtime's delete already ran and exited with CODE
    /// (0 when not given; anything that is not a number counts as a failure, 1).
    pub after_delete: Option<u8>,
    pub root: Option<&'a [u8]>,
    pub log: Option<&'a [u8]>,
    pub log_format: Option<&'a [u8]>,
    /// The subcommand (`create`, `delete`, ...), if any.
    pub command: Option<&'a [u8]>,
    pub bundle: Option<&'a [u8]>,
    /// The first positional argument after the subcommand: the container id.
    pub container_id: Option<&'a [u8]>,
}

/// Read argv without argv[0].
pub fn parse<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Parsed<'a> {
    let mut out = Parsed::default();
    let mut roles = Roles::default();
    for arg in args {
        match roles.next(arg) {
            Role::Own { name, value } if name == CONFIG_FLAG => out.config = value,
            Role::OwnValue { name } if name == CONFIG_FLAG => out.config = Some(arg),
            Role::Own { value, .. } => out.after_delete = Some(value.map_or(0, exit_code)),
            Role::Global { name, value } => out.set_global(name, value),
            Role::GlobalValue { name } => out.set_global(name, Some(arg)),
            Role::Command => out.command = Some(arg),
            Role::Flag { name, value } if name == b"bundle" || name == b"b" => out.bundle = value,
            Role::FlagValue { name } if name == b"bundle" || name == b"b" => out.bundle = Some(arg),
            Role::Positional if out.container_id.is_none() => out.container_id = Some(arg),
            _ => {}
        }
    }
    out
}

fn exit_code(v: &[u8]) -> u8 {
    let digits = !v.is_empty() && v.len() <= 3 && v.iter().all(u8::is_ascii_digit);
    let n = v.iter().fold(0u32, |n, d| n * 10 + u32::from(d - b'0'));
    match digits && n <= 255 {
        true => n as u8,
        false => 1,
    }
}

impl<'a> Parsed<'a> {
    fn set_global(&mut self, name: &[u8], value: Option<&'a [u8]>) {
        match name {
            b"root" => self.root = value,
            b"log" => self.log = value,
            b"log-format" => self.log_format = value,
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::format;
    use std::vec::Vec;

    fn words(s: &str) -> Vec<&[u8]> {
        s.split_whitespace().map(str::as_bytes).collect()
    }

    #[test]
    fn containerd_style_create() {
        let w = words("--root /run/containerd/runc/k8s.io --log /x/log.json --log-format json create --bundle /b --pid-file /b/pid c1");
        let a = parse(w.iter().copied());
        assert_eq!(a.root, Some(&b"/run/containerd/runc/k8s.io"[..]));
        assert_eq!(a.log, Some(&b"/x/log.json"[..]));
        assert_eq!(a.log_format, Some(&b"json"[..]));
        assert_eq!(a.command, Some(&b"create"[..]));
        assert_eq!(a.bundle, Some(&b"/b"[..]));
        assert_eq!(a.container_id, Some(&b"c1"[..]));
    }

    #[test]
    fn own_flags_are_global_flags_only() {
        let w = words("--gpushare-after-delete -gpushare-config /c.toml --root /r delete --gpushare-config=/x c1");
        let mut roles = Roles::default();
        let own: Vec<bool> = w.iter().map(|a| roles.next(a).is_own()).collect();
        assert_eq!(own, [true, true, true, false, false, false, false, false]);
        let a = parse(w.iter().copied());
        assert_eq!(a.after_delete, Some(0));
        for (flag, code) in [("=0", 0), ("=137", 137), ("=256", 1), ("=x", 1), ("=", 1)] {
            let w = format!("--gpushare-after-delete{flag} delete c1");
            assert_eq!(
                parse(words(&w).iter().copied()).after_delete,
                Some(code),
                "{w}"
            );
        }
        assert_eq!(a.config, Some(&b"/c.toml"[..]));
        assert_eq!(a.container_id, Some(&b"c1"[..]));
    }

    #[test]
    fn values_are_taken_whatever_they_look_like() {
        let a = parse(
            words("--log --gpushare-config=/x create -b -- id")
                .iter()
                .copied(),
        );
        assert_eq!(a.log, Some(&b"--gpushare-config=/x"[..]));
        assert_eq!(a.config, None);
        assert_eq!(a.bundle, Some(&b"--"[..]));
        assert_eq!(a.container_id, Some(&b"id"[..]));
        let a = parse(words("exec -- --not-a-flag").iter().copied());
        assert_eq!(a.container_id, Some(&b"--not-a-flag"[..]));
    }

    #[test]
    fn run_reads_as_create() {
        let w = words("--root /r run -d --keep --console-socket /s --pid-file /p -b /b id9");
        let a = parse(w.iter().copied());
        assert_eq!(a.command, Some(&b"run"[..]));
        assert_eq!(a.bundle, Some(&b"/b"[..]));
        assert_eq!(a.container_id, Some(&b"id9"[..]));
    }

    #[test]
    fn exec_flags_take_their_values_and_the_command_is_positional() {
        let w = words("--root /r exec -e A=1 --env=B=2 --process /p.json -u 0 --tty c1 grep -e x");
        let a = parse(w.iter().copied());
        assert_eq!(a.command, Some(&b"exec"[..]));
        assert_eq!(a.container_id, Some(&b"c1"[..]));
        let mut roles = Roles::default();
        let roles: Vec<Role> = w.iter().map(|arg| roles.next(arg)).collect();
        assert_eq!(roles[4], Role::FlagValue { name: b"e" });
        assert_eq!(roles[7], Role::FlagValue { name: b"process" });
        assert_eq!(roles[11], Role::Positional);
        // The container's own `grep -e x` is not an env flag of the runtime's.
        assert!(
            roles[12..].iter().all(|r| *r == Role::Positional),
            "{roles:?}"
        );
        // Other commands read as before: `-e` takes no value there.
        let a = parse(words("create -e c2").iter().copied());
        assert_eq!(a.container_id, Some(&b"c2"[..]));
    }
}
