//! `gpushare-hook`: the OCI hooks gpushare adds to GPU containers' specs, one file per hook:
//! [`poststop`] releases the container's slice, [`bind`] moves a precreate grant's lease to
//! the container, and [`precreate`] is the oci-hooks(5) precreate stage for Podman users who
//! install only the hooks. Each reads stdin, calls gpushare-core, and returns an error that
//! [`main`] reports once, on stderr and in syslog.

mod bind;
mod poststop;
mod precreate;

use clap::{Parser, Subcommand};
use gpushare_core::allocator::AllocError;
use gpushare_core::config::ConfigError;
use gpushare_core::hook::HookError;
use gpushare_core::precreate::PrecreateError;
use std::io::Read;
use std::path::PathBuf;

/// The most of stdin read for a state document: it is small, and stdin is not trusted to end.
const MAX_STATE: u64 = 1 << 20;

/// A hook that failed, in the words an operator reads.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error("cannot read the container state on stdin: {0}")]
    Stdin(#[source] std::io::Error),
    #[error("the spec on stdin is not valid: larger than {0} bytes")]
    TooLarge(u64),
    #[error("cannot write the edited spec: {0}")]
    Stdout(#[source] std::io::Error),
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Hook(#[from] HookError),
    #[error(transparent)]
    Precreate(#[from] PrecreateError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
}

/// The OCI state document on stdin, at most [`MAX_STATE`] bytes of it.
fn read_state(stdin: impl Read) -> Result<Vec<u8>, Error> {
    let mut buf = Vec::new();
    stdin
        .take(MAX_STATE)
        .read_to_end(&mut buf)
        .map_err(Error::Stdin)?;
    Ok(buf)
}

#[derive(Parser)]
#[command(name = "gpushare-hook", version, about = "gpushare's OCI hooks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Release the container's slice (reads the OCI state JSON on stdin).
    Poststop {
        /// gpushare's config file (default: $GPUSHARE_CONFIG, else /etc/gpushare/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// The createRuntime hook a precreate grant adds: move the grant's lease from its claim
    /// to the container's id (reads the OCI state JSON on stdin).
    Bind {
        /// gpushare's config file (default: $GPUSHARE_CONFIG, else /etc/gpushare/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Podman's oci-hooks precreate stage: grant the spec's request and write the edited spec
    /// (reads the OCI spec JSON on stdin, writes it to stdout).
    Precreate {
        /// gpushare's config file (default: $GPUSHARE_CONFIG, else /etc/gpushare/config.toml).
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Poststop { config } => {
            poststop::run(config.as_deref(), std::io::stdin().lock()).map(drop)
        }
        Cmd::Bind { config } => bind::run(config.as_deref(), std::io::stdin().lock()).map(drop),
        Cmd::Precreate { config } => precreate::run(
            config.as_deref(),
            std::io::stdin().lock(),
            std::io::stdout().lock(),
        ),
    };
    if let Err(e) = result {
        let msg = format!("gpushare-hook: {e}");
        eprintln!("{msg}");
        syslog(&msg);
        std::process::exit(1);
    }
}

/// Engines may drop a hook's stderr (Podman 4.3 does for precreate hooks), so a refusal is
/// also left where an operator looks: syslog (`journalctl -t gpushare-hook`).
fn syslog(msg: &str) {
    let Ok(c) = std::ffi::CString::new(msg.replace('\0', " ")) else {
        return;
    };
    // SAFETY: the ident is a static NUL-terminated string that outlives the calls; the format
    // is a fixed "%s" with one C string argument.
    unsafe {
        libc::openlog(c"gpushare-hook".as_ptr(), libc::LOG_PID, libc::LOG_DAEMON);
        libc::syslog(libc::LOG_ERR, c"%s".as_ptr(), c.as_ptr());
        libc::closelog();
    }
}
