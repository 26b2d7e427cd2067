//! `gpushare-hook`: the OCI hook gpushare adds to GPU containers' specs.

use clap::{Parser, Subcommand};
use std::path::PathBuf;

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
            gpushare_core::hook::poststop(config.as_deref(), std::io::stdin().lock()).map(drop)
        }
        Cmd::Bind { config } => {
            gpushare_core::hook::bind(config.as_deref(), std::io::stdin().lock()).map(drop)
        }
        Cmd::Precreate { config } => gpushare_core::hook::precreate(
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
