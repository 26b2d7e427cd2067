//! `gpusharectl`: the operator's view of gpushare on this node.

use clap::{Parser, Subcommand};
use gpushare_core::config::Config;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "gpusharectl",
    version,
    about = "Inspect and repair gpushare on this node"
)]
struct Cli {
    /// gpushare's config file (default: $GPUSHARE_CONFIG, else /etc/gpushare/config.toml).
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// GPUs, MIG instances (busy, idle, foreign), leases and free capacity per profile.
    Status {
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = Config::load(cli.config.as_deref())
        .map_err(|e| e.to_string())
        .and_then(|cfg| match cli.command {
            Cmd::Status { json } => {
                let s = gpushare_core::status::collect(&cfg).map_err(|e| e.to_string())?;
                if json {
                    println!(
                        "{}",
                        serde_json::to_string_pretty(&s).expect("status serializes")
                    );
                } else {
                    print!("{}", gpushare_core::status::render(&s));
                }
                Ok(())
            }
        });
    if let Err(e) = result {
        eprintln!("gpusharectl: {e}");
        std::process::exit(1);
    }
}
