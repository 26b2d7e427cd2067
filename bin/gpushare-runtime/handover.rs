//! Handing a command to the real runtime: replaced by it (every command gpushare does not act
//! on, and `create` once the spec is granted), or waiting on it as a child (`delete`, which
//! releases after the runtime's own delete).

use std::ffi::OsString;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::Command;

/// Replace this process with the runtime: same argv, stdio, and exit code. Returns only when
/// the runtime could not be started, with the exit code a shell gives a command not run.
pub fn exec(runtime: &Path, argv: &[OsString]) -> i32 {
    let err = Command::new(runtime).args(&argv[1..]).exec();
    eprintln!("gpushare: cannot run {}: {err}", runtime.display());
    127
}

/// Run the runtime as a child and return its exit code, so that gpushare can act on the result.
pub fn spawn(runtime: &Path, argv: &[OsString]) -> Result<i32, std::io::Error> {
    let status = Command::new(runtime).args(&argv[1..]).status()?;
    Ok(status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0)))
}
