//! What one CPI call works with: the configuration (file + context overrides), the etcd
//! connection and Docker access, each made only when a method first needs it, so that
//! `info` touches neither disk nor network.

pub(crate) mod error;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::cluster::{ClusterView, Etcd, Keys};
use crate::config::Config;
use crate::docker::{DockerAccess, DockerTimeouts, NodeDocker};
use crate::logging::Logging;
pub use error::ContextError;

/// Lazily built resources of one call.
pub struct CloudContext<'a> {
    config_path: PathBuf,
    request_context: Map<String, Value>,
    logging: Option<&'a Logging>,
    config: OnceCell<Config>,
    etcd: OnceCell<Etcd>,
    docker: OnceCell<DockerAccess>,
    /// One client per node endpoint for the whole call, so its connections (TCP + TLS
    /// handshakes) are reused by every step that talks to that node.
    clients: tokio::sync::Mutex<HashMap<String, NodeDocker>>,
}

impl<'a> CloudContext<'a> {
    /// A context for `config_path`, with the request's `context` (cpi-config properties
    /// override the file). `logging` gets the config's log level once it is read.
    pub fn new(
        config_path: PathBuf,
        request_context: Map<String, Value>,
        logging: Option<&'a Logging>,
    ) -> Self {
        CloudContext {
            config_path,
            request_context,
            logging,
            config: OnceCell::new(),
            etcd: OnceCell::new(),
            docker: OnceCell::new(),
            clients: Default::default(),
        }
    }

    /// The validated configuration.
    pub async fn config(&self) -> Result<&Config, ContextError> {
        self.config
            .get_or_try_init(|| async {
                let config = Config::load(&self.config_path, &self.request_context)?;
                if let Some(logging) = self.logging {
                    logging.set_level(&config.log_level);
                }
                Ok::<_, ContextError>(config)
            })
            .await
    }

    /// The etcd connection.
    pub async fn etcd(&self) -> Result<&Etcd, ContextError> {
        self.etcd
            .get_or_try_init(|| async { Ok(Etcd::connect(self.config().await?).await?) })
            .await
    }

    /// The cluster's keys in etcd.
    pub async fn keys(&self) -> Result<Keys, ContextError> {
        Ok(Keys::new(&self.config().await?.etcd))
    }

    /// A fresh snapshot of the cluster (one etcd round trip).
    pub async fn view(&self) -> Result<ClusterView, ContextError> {
        let keys = self.keys().await?;
        Ok(ClusterView::load(self.etcd().await?, &keys).await?)
    }

    /// A Docker client for the node `name` of `view` (made once per call and endpoint).
    pub async fn node_docker(
        &self,
        view: &ClusterView,
        name: &str,
    ) -> Result<NodeDocker, ContextError> {
        let node = view
            .node(name)
            .ok_or_else(|| ContextError::NodeNotRegistered {
                node: name.to_string(),
            })?;
        let key = format!("{}@{}", node.name, node.docker_endpoint);
        if let Some(client) = self.clients.lock().await.get(&key) {
            return Ok(client.clone());
        }
        let access = self
            .docker
            .get_or_try_init(|| self.docker_access(view))
            .await?;
        let client = access.connect(&node.name, &node.docker_endpoint).await?;
        self.clients.lock().await.insert(key, client.clone());
        Ok(client)
    }

    /// Docker access for all nodes: the client certificate from the config, the CA from the
    /// config or else the cluster CA published in etcd.
    pub async fn docker_access(&self, view: &ClusterView) -> Result<DockerAccess, ContextError> {
        let config = self.config().await?;
        let tls = config.docker_tls()?;
        let ca = tls
            .ca_cert
            .as_deref()
            .or(view.ca_cert.as_deref())
            .ok_or_else(|| ContextError::NoDockerCa {
                key: Keys::new(&config.etcd).ca_cert(),
            })?;
        let (Some(cert), Some(key)) = (tls.client_cert.as_deref(), tls.client_key.as_ref()) else {
            return Err(ContextError::NoClientCert);
        };
        Ok(DockerAccess::new(
            ca,
            cert,
            key.expose(),
            &config.docker.api_version,
            DockerTimeouts {
                connect: Duration::from_secs(config.docker.connect_timeout_seconds),
                request: Duration::from_secs(config.docker.request_timeout_seconds),
                idle: Duration::from_secs(config.docker.idle_timeout_seconds),
            },
        )?)
    }
}
