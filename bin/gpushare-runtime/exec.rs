//! `exec` into a container the ledger may name (the entry binary sent it here): give the exec
//! its grant's env ([`gpushare_core::exec_env`]), in its argv or in a copy of its process
//! file, then replace this process with the runtime.

use super::handover;
use super::runc_args::RuncArgs;
use gpushare_core::config::Config;
use gpushare_core::exec_env::{self, ExecEnvError, GrantEnv};
use gpushare_core::trust::SpecFileError;
use gpushare_core::{gc, ledger};
use gpushare_fastpath::args::{Role, Roles};
use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

#[derive(Debug, thiserror::Error)]
pub enum ExecError {
    #[error(transparent)]
    Env(#[from] ExecEnvError),
    #[error("cannot hold the edited exec process in memory: {0}")]
    Copy(#[source] std::io::Error),
}

/// `exec` of the container in `args`; returns the exit code when the runtime could not replace
/// this process.
pub fn run(
    cfg: &Config,
    runtime: &Path,
    argv: &[OsString],
    args: &RuncArgs,
) -> Result<i32, ExecError> {
    // As for `delete`: a container the ledger never mentions costs a byte scan, not a parse
    // (where this binary is the entry point itself, on other architectures).
    let id = args
        .container_id
        .as_deref()
        .filter(|id| gc::may_hold(cfg, id));
    let grant = id.and_then(|id| {
        let st = ledger::snapshot(&cfg.state_dir)
            .map_err(|e| eprintln!("gpushare: {e}; the exec gets no GPU env from gpushare"))
            .ok()?;
        Some(exec_env::of_lease(cfg, &st, id))
    });
    let grant = match grant {
        None | Some(Ok(None)) => return Ok(handover::exec(runtime, argv)),
        Some(Ok(Some(g))) => g,
        Some(Err(e)) => return Err(e.into()),
    };
    match with_grant(&grant, argv) {
        Ok(argv) => Ok(handover::exec(runtime, &argv)),
        // A missing file, or one that is not JSON: the runtime refuses it in its own words.
        Err(ExecError::Env(
            ExecEnvError::Read(SpecFileError::Missing(_)) | ExecEnvError::NotJson,
        )) => Ok(handover::exec(runtime, argv)),
        Err(e) => Err(e),
    }
}

/// Where an exec's argv says what: the process file, the env flags' values, the fds it keeps.
#[derive(Default)]
struct ExecArgv {
    /// Index of the `exec` word.
    command: usize,
    /// (index of the argument holding the file name, the part before it in that argument).
    process: Option<(usize, Vec<u8>)>,
    /// (index, the part before `K=V` in that argument) of each `--env` value.
    env: Vec<(usize, Vec<u8>)>,
    /// The env flag as the engine wrote it (`-e`, `--env`): runc refuses an exec that mixes
    /// the two forms.
    env_flag: Option<Vec<u8>>,
    preserve_fds: u32,
}

fn read_argv(argv: &[OsString]) -> ExecArgv {
    let mut out = ExecArgv::default();
    let mut roles = Roles::default();
    for (i, arg) in argv.iter().enumerate().skip(1) {
        let bytes = arg.as_bytes();
        let prefix = |v: &[u8]| bytes[..bytes.len() - v.len()].to_vec();
        match roles.next(bytes) {
            Role::Command => out.command = i,
            Role::Flag { name, value } => match (name, value) {
                (b"process" | b"p", Some(v)) => out.process = Some((i, prefix(v))),
                (b"env" | b"e", Some(v)) => {
                    out.env.push((i, prefix(v)));
                    let flag = &bytes[..bytes.len() - v.len() - 1];
                    out.env_flag.get_or_insert_with(|| flag.to_vec());
                }
                (b"preserve-fds", Some(v)) => out.preserve_fds = decimal(v),
                _ => {}
            },
            Role::FlagValue { name } => match name {
                b"process" | b"p" => out.process = Some((i, Vec::new())),
                b"env" | b"e" => {
                    out.env.push((i, Vec::new()));
                    let flag = argv[i - 1].as_bytes();
                    out.env_flag.get_or_insert_with(|| flag.to_vec());
                }
                b"preserve-fds" => out.preserve_fds = decimal(bytes),
                _ => {}
            },
            _ => {}
        }
    }
    out
}

fn decimal(v: &[u8]) -> u32 {
    std::str::from_utf8(v)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0)
}

/// The exec's argv with the grant's env in it.
fn with_grant(grant: &GrantEnv, argv: &[OsString]) -> Result<Vec<OsString>, ExecError> {
    let found = read_argv(argv);
    let mut out = argv.to_vec();
    if let Some((at, prefix)) = &found.process {
        let file = &argv[*at].as_bytes()[prefix.len()..];
        let fd = edited_process(grant, Path::new(OsStr::from_bytes(file)), &found)?;
        let mut arg = prefix.clone();
        arg.extend_from_slice(format!("/proc/self/fd/{fd}").as_bytes());
        out[*at] = OsStr::from_bytes(&arg).to_os_string();
        return Ok(out);
    }
    // The argv form. With no `--env` at all the runtime gives the exec the container's own env,
    // which is the spec gpushare edited (runc reads the bundle's config.json, crun the copy in
    // its state): nothing to add, and a `--env` added here would make crun drop the rest of it.
    if found.env.is_empty() {
        return Ok(out);
    }
    let values: Vec<String> = found
        .env
        .iter()
        .map(|(i, prefix)| String::from_utf8_lossy(&argv[*i].as_bytes()[prefix.len()..]).into())
        .collect();
    // Path variables the exec does not set come from the container's env under runc; under crun
    // an exec with `--env` has only those, as the engine asked.
    let edited = grant.edit_list(&values, false);
    for (((i, prefix), value), was) in found.env.iter().zip(&edited).zip(&values) {
        // Unchanged ones keep their bytes (a value that is not UTF-8 included).
        if value == was {
            continue;
        }
        let mut arg = prefix.clone();
        arg.extend_from_slice(value.as_bytes());
        out[*i] = OsStr::from_bytes(&arg).to_os_string();
    }
    let flag = OsStr::from_bytes(found.env_flag.as_deref().unwrap_or(b"--env")).to_os_string();
    let added = edited[values.len()..]
        .iter()
        .flat_map(|e| [flag.clone(), OsString::from(e)]);
    let at = found.command + 1;
    out.splice(at..at, added);
    Ok(out)
}

/// The engine's process file with the grant's env, as an unnamed in-memory file this process
/// (and the runtime that replaces it) holds open: nothing is written where the engine's file
/// lies, and nothing is left behind. Returns its descriptor, above those the runtime hands on
/// to the exec'd process.
fn edited_process(grant: &GrantEnv, path: &Path, found: &ExecArgv) -> Result<i32, ExecError> {
    let data = exec_env::edited_process_file(grant, path)?;
    // runc and crun pass fds 3..3+N (N: --preserve-fds, and crun adds $LISTEN_FDS) to the exec'd
    // process and close the rest: the copy sits past them.
    let listen: u32 = std::env::var("LISTEN_FDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let lowest = 3u32
        .saturating_add(found.preserve_fds)
        .saturating_add(listen)
        .min(i32::MAX as u32) as i32;
    // SAFETY: plain system calls on descriptors this function owns.
    unsafe {
        let fd = libc::memfd_create(c"gpushare-exec-process".as_ptr(), 0);
        if fd < 0 {
            return Err(ExecError::Copy(std::io::Error::last_os_error()));
        }
        let mut file = <std::fs::File as std::os::fd::FromRawFd>::from_raw_fd(fd);
        std::io::Write::write_all(&mut file, &data).map_err(ExecError::Copy)?;
        let high = libc::fcntl(fd, libc::F_DUPFD, lowest);
        if high < 0 {
            return Err(ExecError::Copy(std::io::Error::last_os_error()));
        }
        // `file` closes the first descriptor; the high one stays open, without close-on-exec.
        Ok(high)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpushare_core::spec::PathEnv;

    fn mps_grant() -> GrantEnv {
        GrantEnv {
            vars: vec![
                ("CUDA_VISIBLE_DEVICES".into(), "GPU-1".into()),
                ("NVIDIA_VISIBLE_DEVICES".into(), "GPU-1".into()),
                ("CUDA_MPS_PIPE_DIRECTORY".into(), "/tmp/nvidia-mps".into()),
                ("CUDA_MPS_ACTIVE_THREAD_PERCENTAGE".into(), "25".into()),
                ("CUDA_MPS_PINNED_DEVICE_MEM_LIMIT".into(), "0=4096M".into()),
            ],
            paths: vec![PathEnv {
                name: "PATH".into(),
                dir: "/usr/local/gpushare/bin".into(),
                prepend: false,
                default: "/usr/bin:/bin".into(),
            }],
            mps: Some((25, Some(4 << 30))),
        }
    }

    fn os(s: &str) -> Vec<OsString> {
        s.split_whitespace().map(OsString::from).collect()
    }

    #[test]
    fn argv_form_edits_env_flags_in_place_and_adds_the_rest() {
        let g = mps_grant();
        let argv = os("gpushare --root /r exec -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=90 -e=PATH=/x -t c1 sh -e -c env");
        let out = with_grant(&g, &argv).unwrap();
        // In the form the engine used: runc refuses `-e` and `--env` in one exec.
        let want = "gpushare --root /r exec \
            -e CUDA_VISIBLE_DEVICES=GPU-1 -e NVIDIA_VISIBLE_DEVICES=GPU-1 \
            -e CUDA_MPS_PIPE_DIRECTORY=/tmp/nvidia-mps \
            -e CUDA_MPS_PINNED_DEVICE_MEM_LIMIT=0=4096M \
            -e CUDA_MPS_ACTIVE_THREAD_PERCENTAGE=25 -e=PATH=/x:/usr/local/gpushare/bin \
            -t c1 sh -e -c env";
        assert_eq!(out, os(want));
        // No env flag: the runtime's own (the edited spec's) env applies, argv untouched.
        let argv = os("gpushare exec -t c1 sh -e");
        assert_eq!(with_grant(&g, &argv).unwrap(), argv);
    }
}
