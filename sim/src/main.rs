//! `gpushare-sim`: lays out and drives a simulated NVIDIA node for gpushare's tests.

use clap::{Parser, Subcommand, ValueEnum};
use gpushare_sim::error::SimError;
use gpushare_sim::node::{self, InitOptions};
use gpushare_sim::state::Latency;
use std::path::PathBuf;
use std::process::ExitCode;

#[derive(Parser)]
#[command(
    name = "gpushare-sim",
    version,
    about = "A simulated NVIDIA driver (NVML library + driver files) for gpushare's tests"
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Clone, Copy, ValueEnum)]
enum OnOff {
    On,
    Off,
}

#[derive(Clone, Copy, ValueEnum)]
enum LatencyArg {
    None,
    Measured,
}

impl From<LatencyArg> for Latency {
    fn from(l: LatencyArg) -> Self {
        match l {
            LatencyArg::None => Latency::None,
            LatencyArg::Measured => Latency::Measured,
        }
    }
}

/// nvidia-smi's `-c` names (EXCLUSIVE_THREAD is gone from the driver).
#[derive(Clone, Copy, ValueEnum)]
enum ComputeModeArg {
    Default,
    Prohibited,
    ExclusiveProcess,
}

#[derive(Clone, Copy, ValueEnum)]
enum ProcAction {
    Add,
    Remove,
}

#[derive(Subcommand)]
enum Cmd {
    /// Lay out a simulated node under DIR (library, state, /proc, /dev, config.toml).
    Init {
        #[arg(long)]
        root: PathBuf,
        /// h100-80gb, h200-141gb, a100-40gb, a100-80gb, b200-180gb, h100-nvl-94gb, gh200-96gb
        /// or h20-96gb.
        #[arg(long)]
        model: String,
        #[arg(long, default_value_t = 1)]
        gpus: u32,
        #[arg(long, value_enum, default_value = "on")]
        mig: OnOff,
        #[arg(long, value_enum, default_value = "none")]
        latency: LatencyArg,
        /// The simulated library to install (default: libgpushare_sim.so beside this program).
        #[arg(long)]
        lib: Option<PathBuf>,
        /// Replace an existing simulated node.
        #[arg(long)]
        force: bool,
    },
    /// Print the state as JSON.
    Show {
        #[arg(long)]
        root: PathBuf,
    },
    /// Turn MIG mode on or off, as `nvidia-smi -i N -mig 1|0` (refused while instances exist,
    /// or processes on a model that switches at once; pending until `reset` on one that needs a
    /// GPU reset).
    Mig {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        gpu: u32,
        #[arg(value_enum)]
        mode: OnOff,
    },
    /// Reset a GPU, as `nvidia-smi -i N -r`: its MIG instances are gone and a pending MIG mode
    /// becomes current (refused while a process holds the GPU).
    Reset {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        gpu: u32,
    },
    /// Set a GPU's compute mode, as `nvidia-smi -i N -c MODE` does.
    ComputeMode {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        gpu: u32,
        #[arg(value_enum)]
        mode: ComputeModeArg,
    },
    /// Attach or detach a simulated process to a GPU or MIG device (refused, as CUDA refuses
    /// the context, where the GPU's compute mode does not admit it).
    Process {
        #[arg(value_enum)]
        action: ProcAction,
        #[arg(long)]
        root: PathBuf,
        /// GPU-... or MIG-... UUID.
        #[arg(long)]
        uuid: String,
        #[arg(long)]
        pid: u32,
        #[arg(long, default_value_t = 0)]
        memory_mib: u64,
    },
    /// Create a GPU instance and its full compute instance, as another MIG manager would.
    CreateInstance {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        gpu: u32,
        /// e.g. 1g.10gb
        #[arg(long)]
        profile: String,
        /// Memory slot to place it at (default: the first free placement).
        #[arg(long)]
        start: Option<u32>,
    },
    /// Destroy a GPU instance and its compute instances.
    DestroyInstance {
        #[arg(long)]
        root: PathBuf,
        #[arg(long)]
        gpu: u32,
        #[arg(long)]
        gi: u32,
    },
    /// Set the latency mode.
    Latency {
        #[arg(long)]
        root: PathBuf,
        #[arg(value_enum)]
        mode: LatencyArg,
    },
}

fn run(cli: Cli) -> Result<(), SimError> {
    match cli.cmd {
        Cmd::Init {
            root,
            model,
            gpus,
            mig,
            latency,
            lib,
            force,
        } => {
            let r = node::init(&InitOptions {
                root,
                model,
                gpus,
                mig: matches!(mig, OnOff::On),
                latency: latency.into(),
                lib,
                force,
            })?;
            for p in &r.fallback_nodes {
                eprintln!(
                    "gpushare-sim: mknod not permitted; {} is an empty regular file",
                    p.display()
                );
            }
            if r.reused_state {
                eprintln!("gpushare-sim: kept the existing state; refreshed the node's files");
            }
            println!("{}", r.root.join("config.toml").display());
        }
        Cmd::Show { root } => {
            let st = node::show(&root)?;
            let s = serde_json::to_string_pretty(&st).map_err(|e| SimError::io("encode", e))?;
            println!("{s}");
        }
        Cmd::Mig { root, gpu, mode } => {
            let on = matches!(mode, OnOff::On);
            let status = node::set_mig(&root, gpu, on)?;
            if status != gpushare_sim::error::SUCCESS {
                // nvidia-smi's words for a change the driver could not make take effect.
                let state = if on { "enable" } else { "disable" };
                eprintln!(
                    "Warning: MIG mode is in pending {state} state for GPU {gpu}: {}\n\
                     Reset the GPU (gpushare-sim reset --gpu {gpu}) to make MIG mode effective.",
                    gpushare_sim::error::describe(status)
                );
            }
        }
        Cmd::Reset { root, gpu } => node::reset_gpu(&root, gpu)?,
        Cmd::Process {
            action,
            root,
            uuid,
            pid,
            memory_mib,
        } => match action {
            ProcAction::Add => node::add_process(&root, &uuid, pid, memory_mib << 20)?,
            ProcAction::Remove => node::remove_process(&root, &uuid, pid)?,
        },
        Cmd::CreateInstance {
            root,
            gpu,
            profile,
            start,
        } => {
            let c = node::create_instance(&root, gpu, &profile, start)?;
            let s = serde_json::to_string(&c).map_err(|e| SimError::io("encode", e))?;
            println!("{s}");
        }
        Cmd::DestroyInstance { root, gpu, gi } => node::destroy_instance(&root, gpu, gi)?,
        Cmd::ComputeMode { root, gpu, mode } => {
            let m = match mode {
                ComputeModeArg::Default => gpushare_sim::compute_mode::DEFAULT,
                ComputeModeArg::Prohibited => gpushare_sim::compute_mode::PROHIBITED,
                ComputeModeArg::ExclusiveProcess => gpushare_sim::compute_mode::EXCLUSIVE_PROCESS,
            };
            node::set_compute_mode(&root, gpu, m)?
        }
        Cmd::Latency { root, mode } => node::set_latency(&root, mode.into())?,
    }
    Ok(())
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-sim: error: {e}");
            ExitCode::FAILURE
        }
    }
}
