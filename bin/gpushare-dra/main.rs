//! `gpushare-dra`: the kubelet plugin of gpushare's DRA driver (docs/kubernetes.md). Registers
//! with the kubelet, then prepares and unprepares claims until SIGTERM or SIGINT.

use clap::Parser;
use gpushare_core::config::{Config, ConfigError};
use gpushare_core::dra_devices::Sharing;
use gpushare_dra::claims::{ApiClaims, ClaimError, ClaimSource, DirClaims};
use gpushare_dra::node::{Node, NodeError, Options};
use gpushare_dra::publish::{DirSink, KubePublisher, Pool, PublishError};
use gpushare_dra::republish::{Held, Republisher, Sink};
use gpushare_dra::server::{self, ServerError};
use gpushare_dra::slices::Shape;
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
    #[error(transparent)]
    Publish(#[from] PublishError),
    #[error("cannot ask the API server its version (to publish the slices' shape it takes): {0}; give --kubernetes-version")]
    Version(kube::Error),
    #[error("--kubernetes-version {0:?} is not a Kubernetes version such as 1.34")]
    BadVersion(String),
    #[error("--claims-dir {}: {source}; it must be a folder holding the claims the scheduler allocated, as <namespace>_<name>.json files (create it, or leave --claims-dir out to read claims from the API server)", dir.display())]
    ClaimsDir {
        dir: PathBuf,
        source: std::io::Error,
    },
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
    /// has no consumable capacity (each is 100/N percent of the SMs; the GPU's sharing counter
    /// has value N, of which the whole GPU consumes N and each share 1).
    #[arg(long, default_value_t = 4)]
    mps_shares: u32,
    /// Write the node's ResourceSlices as JSON files here instead of applying them through the
    /// API server.
    #[arg(long)]
    publish_to: Option<PathBuf>,
    /// The cluster's Kubernetes version (e.g. 1.34), which decides the slices' shape: counters
    /// beside the devices (1.34) or in slices of their own (1.35+). Default: the API server's,
    /// or 1.35 with --publish-to.
    #[arg(long)]
    kubernetes_version: Option<String>,
    /// Publish whole GPUs and MPS shares as devices with consumable capacity (the cluster has
    /// DRAConsumableCapacity on); else as counted shares (--mps-shares).
    #[arg(long)]
    consumable_capacity: bool,
    /// Publish the pool again every this many seconds (0: only after the plugin's own grants
    /// and releases), so that grants of the RuntimeClass path on the same node are seen.
    #[arg(long, default_value_t = 60)]
    republish_every: u64,
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
    // Found missing only later, every publication and every prepare would fail on it.
    if let Some(dir) = &cli.claims_dir {
        std::fs::read_dir(dir).map_err(|source| Error::ClaimsDir {
            dir: dir.clone(),
            source,
        })?;
    }
    // One thread serves both sockets; prepares run on the runtime's blocking threads, one at a
    // time (the node serializes them), so a few suffice.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .max_blocking_threads(4)
        .build()
        .map_err(Error::Runtime)?;
    rt.block_on(async {
        let claims: Box<dyn ClaimSource> = match &cli.claims_dir {
            Some(dir) => Box::new(DirClaims { dir: dir.clone() }),
            None => Box::new(ApiClaims::connect().await?),
        };
        let shape = match &cli.kubernetes_version {
            Some(v) => shape_of(v)?,
            None if cli.publish_to.is_some() => Shape::V1_35,
            None => {
                let client = kube::Client::try_default().await.map_err(Error::Version)?;
                let info = client.apiserver_version().await.map_err(Error::Version)?;
                shape_of(&format!("{}.{}", info.major, info.minor))?
            }
        };
        let pool = Pool {
            node: node_name.clone(),
            shape,
            sharing: if cli.consumable_capacity {
                Sharing::Consumable
            } else {
                Sharing::Counted {
                    shares: cli.mps_shares,
                }
            },
        };
        let sink = match &cli.publish_to {
            Some(dir) => Sink::Dir(DirSink::new(dir)),
            None => Sink::Api(Box::new(KubePublisher::new(&node_name).await?)),
        };
        let held = match &cli.claims_dir {
            Some(dir) => Held::Files(dir.clone()),
            None => Held::Api(Box::new(KubePublisher::new(&node_name).await?)),
        };
        let learn_cfg = cfg.clone();
        let publisher = Republisher::new(
            cfg.clone(),
            pool,
            sink,
            held,
            tokio::runtime::Handle::current(),
        );
        let node = Arc::new(Node::new(
            cfg,
            Options {
                node_name,
                cdi_dir: cli.cdi_dir,
                mps_shares: cli.mps_shares,
            },
            claims,
            Box::new(publisher),
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
        // The pool is published from the ledger, which knows no GPU before a first grant.
        let first = node.clone();
        tokio::task::spawn_blocking(move || {
            if let Err(e) = gpushare_core::allocator::learn_gpus(&learn_cfg) {
                eprintln!("gpushare-dra: cannot list the node's GPUs: {e}; the pool is published without them");
            }
            first.republish();
        })
        .await
        .expect("the first publication does not panic");
        let every = cli.republish_every;
        let publisher = node.clone();
        let publishing = async move {
            if every == 0 {
                return std::future::pending::<()>().await;
            }
            loop {
                tokio::time::sleep(std::time::Duration::from_secs(every)).await;
                let n = publisher.clone();
                let _ = tokio::task::spawn_blocking(move || n.republish()).await;
            }
        };
        tokio::select! {
            served = server::serve(node, &cli.plugin_dir, &cli.registry_dir, stop()) => served?,
            _ = publishing => {}
        }
        Ok(())
    })
}

/// The slices' shape for Kubernetes `version` ("1.34", "v1.35.2", "1.36+").
fn shape_of(version: &str) -> Result<Shape, Error> {
    let bad = || Error::BadVersion(version.to_string());
    let v = version.trim_start_matches('v');
    let mut parts = v.split('.');
    let major: u32 = parts.next().and_then(|m| m.parse().ok()).ok_or_else(bad)?;
    let minor: u32 = parts
        .next()
        .map(|m| m.trim_end_matches(|c: char| !c.is_ascii_digit()))
        .and_then(|m| m.parse().ok())
        .ok_or_else(bad)?;
    if major != 1 {
        return Err(bad());
    }
    Ok(if minor <= 34 {
        Shape::V1_34
    } else {
        Shape::V1_35
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
