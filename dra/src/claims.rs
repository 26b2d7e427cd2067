//! Where the plugin learns what the scheduler allocated to a claim: the ResourceClaim's
//! `status.allocation`. In production a GET from the API server; in tests (no API server is
//! packaged here) JSON files shaped as the scheduler writes them, `<namespace>_<name>.json` in a
//! folder (`--claims-dir`).

use k8s_openapi::api::resource::v1::ResourceClaim;
use std::path::PathBuf;

/// A claim as the kubelet names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClaimRef {
    pub namespace: String,
    pub name: String,
    pub uid: String,
}

impl std::fmt::Display for ClaimRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ResourceClaim {}/{} (uid {})",
            self.namespace, self.name, self.uid
        )
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ClaimError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a resource.k8s.io/v1 ResourceClaim: {source}")]
    Parse {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("cannot get ResourceClaim {namespace}/{name} from the API server: {source}; check the plugin's service account may get resourceclaims")]
    Api {
        namespace: String,
        name: String,
        source: kube::Error,
    },
    #[error("cannot reach the API server: {0}")]
    Client(kube::Error),
}

/// What the scheduler wrote into a claim.
pub trait ClaimSource: Send + Sync {
    fn get(&self, claim: &ClaimRef) -> Result<ResourceClaim, ClaimError>;
}

/// Claims as JSON files, `<namespace>_<name>.json` in `dir`.
pub struct DirClaims {
    pub dir: PathBuf,
}

impl ClaimSource for DirClaims {
    fn get(&self, claim: &ClaimRef) -> Result<ResourceClaim, ClaimError> {
        let path = self
            .dir
            .join(format!("{}_{}.json", claim.namespace, claim.name));
        let raw = std::fs::read(&path).map_err(|source| ClaimError::Read {
            path: path.clone(),
            source,
        })?;
        serde_json::from_slice(&raw).map_err(|source| ClaimError::Parse { path, source })
    }
}

/// Claims from the API server (the in-cluster service account, or a kubeconfig).
pub struct ApiClaims {
    client: kube::Client,
    runtime: tokio::runtime::Handle,
}

impl ApiClaims {
    /// Connect as the environment says (in a pod: its service account).
    pub async fn connect() -> Result<ApiClaims, ClaimError> {
        let client = kube::Client::try_default()
            .await
            .map_err(ClaimError::Client)?;
        Ok(ApiClaims {
            client,
            runtime: tokio::runtime::Handle::current(),
        })
    }
}

impl ClaimSource for ApiClaims {
    /// Called from a blocking thread of the plugin's runtime (never from one of its tasks).
    fn get(&self, claim: &ClaimRef) -> Result<ResourceClaim, ClaimError> {
        let api: kube::Api<ResourceClaim> =
            kube::Api::namespaced(self.client.clone(), &claim.namespace);
        self.runtime
            .block_on(api.get(&claim.name))
            .map_err(|source| ClaimError::Api {
                namespace: claim.namespace.clone(),
                name: claim.name.clone(),
                source,
            })
    }
}
