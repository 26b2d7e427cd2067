//! `gpushare-dra`: the kubelet plugin of gpushare's DRA driver (docs/kubernetes.md). Registers
//! with the kubelet, then prepares and unprepares claims until SIGTERM or SIGINT.

use clap::Parser;
use gpushare_core::config::{Config, ConfigError};
use gpushare_dra::claims::{ApiClaims, ClaimError, ClaimSource, DirClaims};
use gpushare_dra::node::{NoPublish, Node, NodeError, Options};
use gpushare_dra::server::{self, ServerError};
use gpushare_dra::sockets;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
enum Error {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Claims(#[from] ClaimError),
    #[error("repairing what a previous run left: {0}")]
    Repair(#[from] NodeError),
    #[error(transparent)]
    Server(#[from] ServerError),
    #[error("cannot start the plugin's runtime: {0}")]
    Runtime(std::io::Error),
    #[error("the node's name is needed (--node-name, or NODE_NAME from the pod's spec.nodeName): it names the pool this node publishes")]
    NoNodeName,
}

#[derive(Parser, Debug)]
#[command(
    name = "gpushare-dra",
    version,
    about = "gpushare's DRA kubelet plugin"
)]
struct Cli {
    /// gpushare's config file (default: $GPUSHARE_CONFIG, else /etc/gpushare/config.toml).
    #[arg(long)]
    config: Option<PathBuf>,
    /// This node's name: the pool its devices are published in.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// The plugin's folder, where the DRA service's socket (dra.sock) is made.
    #[arg(long, default_value = sockets::DEFAULT_PLUGIN_DIR)]
    plugin_dir: PathBuf,
    /// The kubelet's plugin registry, where the registration socket is made.
    #[arg(long, default_value = sockets::DEFAULT_REGISTRY_DIR)]
    registry_dir: PathBuf,
    /// Where CDI specs are written, one per prepared claim (the container runtime's CDI folder).
    #[arg(long, default_value = sockets::DEFAULT_CDI_DIR)]
    cdi_dir: PathBuf,
    /// Read claims from JSON files `<namespace>_<name>.json` here instead of the API server
    /// (tests, and nodes without API access).
    #[arg(long)]
    claims_dir: Option<PathBuf>,
    /// Counted MPS shares per GPU, as the node's ResourceSlices publish them where the cluster
    /// has no consumable capacity (each is 100/N percent of the SMs).
    #[arg(long, default_value_t = 4)]
    mps_shares: u32,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("gpushare-dra: {e}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<(), Error> {
    let cfg = Config::load(cli.config.as_deref())?;
    gpushare_core::logging::init(&cfg, "gpushare-dra");
    let node_name = cli
        .node_name
        .filter(|n| !n.is_empty())
        .ok_or(Error::NoNodeName)?;
    // One thread serves both sockets; prepares run on the runtime's blocking threads, one at a
    // time (the node serializes them), so a few suffice.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        let claims: Box<dyn ClaimSource> = match cli.claims_dir {
            Some(dir) => Box::new(DirClaims { dir }),
            None => Box::new(ApiClaims::connect().await?),
        };
        let node = Arc::new(Node::new(
            cfg,
            Options {
                node_name,
                cdi_dir: cli.cdi_dir,
                mps_shares: cli.mps_shares,
            },
            claims,
            Box::new(NoPublish),
        ));
        let repair = node.clone();
        let released = tokio::task::spawn_blocking(move || repair.repair())
            .await
            .expect("the repair thread does not panic")?;
        if !released.is_empty() {
            eprintln!(
                "gpushare-dra: released {} claim device(s) a previous run granted but never handed to the kubelet: {}",
                released.len(),
                released.join(", ")
            );
        }
        server::serve(node, &cli.plugin_dir, &cli.registry_dir, stop()).await?;
        Ok(())
    })
}

/// SIGTERM (the kubelet or DaemonSet stopping the pod) or SIGINT.
async fn stop() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
