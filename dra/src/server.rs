//! The plugin's gRPC services over unix sockets: the registration service the kubelet's plugin
//! watcher finds in its registry folder, and the DRA node service (v1, and v1beta1 for 1.32-1.33
//! kubelets) at the endpoint the registration names. Prepare and unprepare run on a blocking
//! thread: core's grants take file locks and may call NVML.

use crate::claims::ClaimRef;
use crate::node::{Node, NodeError};
use crate::proto::{registration, v1, v1beta1, PLUGIN_TYPE, SERVICES};
use crate::sockets;
use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::{Request, Response, Status};

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error("cannot create the socket folder {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot listen on {path}: {source}; is another gpushare-dra running on this node?")]
    Bind {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the gRPC server on {path} stopped: {source}")]
    Serve {
        path: PathBuf,
        source: tonic::transport::Error,
    },
}

/// How long a stopping plugin waits for the calls in flight.
const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(2);

/// The registration service: tells the kubelet the driver's name and where its DRA service is.
pub struct Registration {
    endpoint: String,
}

#[tonic::async_trait]
impl registration::registration_server::Registration for Registration {
    async fn get_info(
        &self,
        _req: Request<registration::InfoRequest>,
    ) -> Result<Response<registration::PluginInfo>, Status> {
        Ok(Response::new(registration::PluginInfo {
            r#type: PLUGIN_TYPE.into(),
            name: crate::DRIVER.into(),
            endpoint: self.endpoint.clone(),
            supported_versions: SERVICES.iter().map(|s| s.to_string()).collect(),
        }))
    }

    async fn notify_registration_status(
        &self,
        req: Request<registration::RegistrationStatus>,
    ) -> Result<Response<registration::RegistrationStatusResponse>, Status> {
        let s = req.into_inner();
        if s.plugin_registered {
            tracing::info!("registered with the kubelet");
        } else {
            tracing::error!("the kubelet refused the registration: {}", s.error);
        }
        Ok(Response::new(registration::RegistrationStatusResponse {}))
    }
}

/// A claim of a request, checked: the kubelet always sends all three fields.
fn claim_ref(namespace: String, uid: String, name: String) -> Result<ClaimRef, Status> {
    if uid.is_empty() || name.is_empty() || namespace.is_empty() {
        return Err(Status::invalid_argument(format!(
            "a claim needs its namespace, name and uid (got namespace {namespace:?}, name {name:?}, uid {uid:?})"
        )));
    }
    Ok(ClaimRef {
        namespace,
        name,
        uid,
    })
}

/// `op` (prepare or unprepare, named `what` in the log) on each claim, on a blocking thread:
/// each claim's result, by uid.
async fn each_claim<T: Send + 'static>(
    node: Arc<Node>,
    claims: Vec<ClaimRef>,
    what: &'static str,
    op: fn(&Node, &ClaimRef) -> Result<T, NodeError>,
) -> Result<Vec<(String, Result<T, String>)>, Status> {
    tokio::task::spawn_blocking(move || {
        claims
            .into_iter()
            .map(|c| {
                let r = op(&node, &c).map_err(|e| {
                    tracing::error!("{what}: {e}");
                    e.to_string()
                });
                (c.uid, r)
            })
            .collect()
    })
    .await
    .map_err(|e| Status::internal(format!("the {what} thread died: {e}")))
}

/// The DRA node service of one API version (v1 and v1beta1 carry the same messages).
macro_rules! dra_service {
    ($name:ident, $v:ident) => {
        pub struct $name {
            pub node: Arc<Node>,
        }

        #[tonic::async_trait]
        impl $v::dra_plugin_server::DraPlugin for $name {
            async fn node_prepare_resources(
                &self,
                req: Request<$v::NodePrepareResourcesRequest>,
            ) -> Result<Response<$v::NodePrepareResourcesResponse>, Status> {
                let claims = req
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| claim_ref(c.namespace, c.uid, c.name))
                    .collect::<Result<Vec<_>, _>>()?;
                let done = each_claim(self.node.clone(), claims, "prepare", Node::prepare).await?;
                let claims: HashMap<String, $v::NodePrepareResourceResponse> = done
                    .into_iter()
                    .map(|(uid, r)| {
                        let resp = match r {
                            Ok(devices) => $v::NodePrepareResourceResponse {
                                devices: devices
                                    .into_iter()
                                    .map(|d| $v::Device {
                                        request_names: vec![d.request],
                                        pool_name: d.pool,
                                        device_name: d.device,
                                        cdi_device_ids: vec![d.cdi_id],
                                    })
                                    .collect(),
                                error: String::new(),
                            },
                            Err(error) => $v::NodePrepareResourceResponse {
                                devices: Vec::new(),
                                error,
                            },
                        };
                        (uid, resp)
                    })
                    .collect();
                Ok(Response::new($v::NodePrepareResourcesResponse { claims }))
            }

            async fn node_unprepare_resources(
                &self,
                req: Request<$v::NodeUnprepareResourcesRequest>,
            ) -> Result<Response<$v::NodeUnprepareResourcesResponse>, Status> {
                let claims = req
                    .into_inner()
                    .claims
                    .into_iter()
                    .map(|c| claim_ref(c.namespace, c.uid, c.name))
                    .collect::<Result<Vec<_>, _>>()?;
                let done =
                    each_claim(self.node.clone(), claims, "unprepare", Node::unprepare).await?;
                let claims = done
                    .into_iter()
                    .map(|(uid, r)| {
                        let error = r.err().unwrap_or_default();
                        (uid, $v::NodeUnprepareResourceResponse { error })
                    })
                    .collect();
                Ok(Response::new($v::NodeUnprepareResourcesResponse { claims }))
            }
        }
    };
}

dra_service!(DraV1, v1);
dra_service!(DraV1beta1, v1beta1);

/// Listen on `path`, replacing a socket a previous run left.
fn listen(path: &Path) -> Result<UnixListener, ServerError> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|source| ServerError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(source) => {
            return Err(ServerError::Bind {
                path: path.to_path_buf(),
                source,
            })
        }
    }
    UnixListener::bind(path).map_err(|source| ServerError::Bind {
        path: path.to_path_buf(),
        source,
    })
}

/// Serve until `stop` resolves: the DRA service first, then the registration socket (the
/// kubelet dials the endpoint as soon as it reads the registration). Both sockets are removed
/// on the way out, which the kubelet takes as the plugin's deregistration.
pub async fn serve(
    node: Arc<Node>,
    plugin_dir: &Path,
    registry_dir: &Path,
    stop: impl Future<Output = ()>,
) -> Result<(), ServerError> {
    let dra_path = sockets::dra_socket(plugin_dir);
    let reg_path = sockets::registration_socket(registry_dir);
    let dra = listen(&dra_path)?;
    let reg = listen(&reg_path)?;
    let (tx, rx) = tokio::sync::watch::channel(false);
    let stopped = |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };
    let dra_server = tonic::transport::Server::builder()
        .add_service(v1::dra_plugin_server::DraPluginServer::new(DraV1 {
            node: node.clone(),
        }))
        .add_service(v1beta1::dra_plugin_server::DraPluginServer::new(
            DraV1beta1 { node },
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(dra), stopped(rx.clone()));
    let reg_server = tonic::transport::Server::builder()
        .add_service(registration::registration_server::RegistrationServer::new(
            Registration {
                endpoint: dra_path.display().to_string(),
            },
        ))
        .serve_with_incoming_shutdown(UnixListenerStream::new(reg), stopped(rx));
    tracing::info!(
        "serving {} and registering through {}",
        dra_path.display(),
        reg_path.display()
    );
    let servers = async {
        tokio::try_join!(
            async {
                dra_server.await.map_err(|source| ServerError::Serve {
                    path: dra_path.clone(),
                    source,
                })
            },
            async {
                reg_server.await.map_err(|source| ServerError::Serve {
                    path: reg_path.clone(),
                    source,
                })
            },
        )
        .map(|_| ())
    };
    tokio::pin!(servers);
    let result = tokio::select! {
        r = &mut servers => r,
        () = stop => {
            let _ = tx.send(true);
            // The kubelet keeps its connections open: calls in flight get a moment to finish,
            // then the plugin goes (a prepare cut short is repaired at the next start).
            match tokio::time::timeout(SHUTDOWN_GRACE, &mut servers).await {
                Ok(r) => r,
                Err(_) => Ok(()),
            }
        }
    };
    let _ = std::fs::remove_file(&reg_path);
    let _ = std::fs::remove_file(&dra_path);
    result
}
