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
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.command {
        Cmd::Poststop { config } => {
            gpushare_core::hook::poststop(config.as_deref(), std::io::stdin().lock())
        }
    };
    if let Err(e) = result {
        eprintln!("gpushare-hook: {e}");
        std::process::exit(1);
    }
}
