//! `gpusharectl`: the operator's view of gpushare on this node.

use clap::{Parser, Subcommand};
use gpushare_core::allocator::AllocError;
use gpushare_core::config::{Config, ConfigError};
use gpushare_core::gc::GcError;
use gpushare_core::ledger::LedgerError;
use gpushare_core::repair::RepairError;
use gpushare_core::status::StatusError;
use std::path::PathBuf;
use std::process::ExitCode;

/// A command that could not do its work, in the words the operator reads (after
/// `gpusharectl: `); a report that finds something wrong is an exit code, not an error.
#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Alloc(#[from] AllocError),
    #[error(transparent)]
    Status(#[from] StatusError),
    #[error(transparent)]
    Gc(#[from] GcError),
    #[error(transparent)]
    Repair(#[from] RepairError),
    #[error(transparent)]
    Ledger(#[from] LedgerError),
    #[error("{0} holds nothing (see `gpusharectl status`)")]
    HoldsNothing(String),
}

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
    /// GPUs, MIG instances (busy, idle, foreign), leases, free capacity per profile, and per GPU
    /// the warm-pool hit rate and the requests refused for lack of room.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// Reconcile the ledger with the runtime's state and with NVML: release slices of containers
    /// that no longer exist, destroy what a crashed allocation left, destroy idle instances past
    /// pool.idle_timeout_s, and report instances gpushare did not make (never touched).
    Gc {
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Release leases of missing containers only when older than this many seconds
        /// (default: pool.gc_grace_s). 0 is safe only when no `create` is running.
        #[arg(long)]
        grace: Option<u64>,
        /// Also look for live GPU containers under this runtime state root (repeatable; the
        /// roots leases name and runc's and crun's defaults are always looked at). A live
        /// container on a slice the ledger does not lease to it is an ALERT (exit 1).
        #[arg(long = "runtime-root")]
        runtime_roots: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Check the driver, NVML, MIG mode, the low-level runtime, the config, the hook, the
    /// engines' configs and the cgroup version; exits 1 if anything must be fixed.
    Doctor {
        #[arg(long)]
        json: bool,
    },
    /// Counters and gauges in Prometheus' text format (for a textfile collector or a scrape).
    Metrics,
    /// Rebuild a lost or corrupt ledger's MIG records from the driver's instances, gpushare's
    /// instance log and the runtimes' containers (their specs' MIG UUIDs): instances containers
    /// run on are leased to them, gpushare's others go idle, half-made ones are destroyed,
    /// others' are left alone. A corrupt ledger is moved aside first.
    Repair {
        /// Print what would be done; change nothing.
        #[arg(long)]
        dry_run: bool,
        /// A low-level runtime's state root to scan for containers, besides /run/runc,
        /// /run/crun, Docker's and containerd's and those the ledger and journal name.
        #[arg(long = "runtime-root", value_name = "DIR")]
        roots: Vec<String>,
        #[arg(long)]
        json: bool,
    },
    /// Release what a container (or a Podman precreate claim, `precreate-…`) holds: its MIG
    /// slice goes to the idle pool, its MPS share or time-slice lease ends. For leases no
    /// runtime state names, which `gc` cannot judge.
    Release {
        /// The container id or claim, as `status` lists it.
        id: String,
    },
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("reports serialize")
}

fn run(cli: Cli) -> Result<ExitCode, Error> {
    let cfg = Config::load(cli.config.as_deref())?;
    gpushare_core::logging::init(&cfg, "gpusharectl");
    match cli.command {
        Cmd::Status { json: as_json } => {
            let s = gpushare_core::status::collect(&cfg)?;
            if as_json {
                println!("{}", json(&s));
            } else {
                print!("{}", gpushare_core::status::render(&s));
            }
        }
        Cmd::Gc {
            dry_run,
            grace,
            runtime_roots,
            json: as_json,
        } => {
            let mut opts = gpushare_core::gc::GcOptions::from_config(&cfg);
            opts.dry_run = dry_run;
            if let Some(g) = grace {
                opts.grace_s = g;
            }
            opts.runtime_roots = runtime_roots;
            let report = gpushare_core::gc::run(&cfg, &opts)?;
            if as_json {
                println!("{}", json(&report));
            } else {
                print!("{}", report.render());
            }
            if !report.failed.is_empty() || !report.unleased.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Repair {
            dry_run,
            roots,
            json: as_json,
        } => {
            let opts = gpushare_core::repair::RepairOptions { dry_run, roots };
            let report = gpushare_core::repair::run(&cfg, &opts)?;
            if as_json {
                println!("{}", json(&report));
            } else {
                print!("{}", report.render());
            }
            if !report.failed.is_empty() || !report.conflicts.is_empty() {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Doctor { json: as_json } => {
            let checks = gpushare_core::doctor::run(&cfg);
            if as_json {
                println!("{}", json(&checks));
            } else {
                print!("{}", gpushare_core::doctor::render(&checks));
            }
            if checks
                .iter()
                .any(|c| c.level == gpushare_core::doctor::Level::Fail)
            {
                return Ok(ExitCode::FAILURE);
            }
        }
        Cmd::Release { id } => {
            let timeout = std::time::Duration::from_millis(cfg.pool.lock_timeout_ms);
            let released = gpushare_core::allocator::release(&cfg, &id, timeout)?;
            if !released {
                return Err(Error::HoldsNothing(id));
            }
            println!("released what {id} held");
        }
        Cmd::Metrics => {
            let st = gpushare_core::ledger::snapshot(&cfg.state_dir)?;
            let live = gpushare_core::status::collect(&cfg).ok();
            print!("{}", gpushare_core::metrics::render(&st, live.as_ref()));
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("gpusharectl: {e}");
            ExitCode::FAILURE
        }
    }
}
