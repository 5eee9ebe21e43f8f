//! The one object a CPI call works through: the configuration (file + context overrides),
//! the etcd connection, Docker access and a client per node, each made only when a method
//! first needs it (so that `info` touches neither disk nor network), and what the call
//! knows, read once: the cluster view, the VM, disk, stemcell and snapshot records it read
//! or wrote, and the containers it inspected.
//!
//! Every etcd write of a handler goes through the record methods ([`records`]), which
//! keep the call's copies right; every container change goes through a node's
//! [`NodeHandle`] ([`node`]), which drops that container's inspection. A read that must
//! see what another process wrote since (a concurrent create_vm) is a named fresh read:
//! [`CloudContext::vm_record_now`]. The helpers shared by the handlers of `vm/` and
//! `disk/` (finding a VM, clearing a node, freeing and moving disks) are methods of it
//! too, in [`vms`], [`disks`] and [`moving`].

pub(crate) mod disks;
pub(crate) mod error;
pub(crate) mod lookup_error;
pub(crate) mod moving;
pub(crate) mod node;
pub(crate) mod records;
pub(crate) mod vms;

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use crate::cluster::{ClusterView, DiskRecord, Etcd, Keys, VmRecord};
use crate::config::Config;
use crate::docker::{DockerAccess, DockerTimeouts, NodeDocker};
use crate::logging::Logging;
use crate::node_name::NodeName;
use crate::protocol::{DiskCid, VmCid};
pub use error::ContextError;
use node::Inspections;
pub(crate) use node::NodeHandle;

/// Everything one call works with and knows (see the module doc). `cloud::handle` makes
/// one per call and every handler takes it, so no step reads a record or inspects a
/// container that another step of the call has read or changed behind its back. It keeps
/// the name the operators' commands know it by: they use its lazily made configuration,
/// etcd and Docker access alone. Cheap to make: nothing is read until asked.
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
    /// The cluster view of the call, loaded on first use ([`CloudContext::cluster`]).
    cluster: OnceCell<ClusterView>,
    /// VM records read or written by this call (`None`: known to be absent).
    vms: Mutex<HashMap<VmCid, Option<VmRecord>>>,
    /// Disk records read or written by this call (`None`: known to be absent).
    disks: Mutex<HashMap<DiskCid, Option<DiskRecord>>>,
    /// Container inspections of this call; a [`NodeHandle`] drops the one of a container
    /// it changes.
    inspections: Inspections,
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
            cluster: OnceCell::new(),
            vms: Default::default(),
            disks: Default::default(),
            inspections: Default::default(),
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

    /// A fresh snapshot of the cluster (one etcd round trip), for the operators' commands;
    /// a CPI call reads [`CloudContext::cluster`], once.
    pub async fn view(&self) -> Result<ClusterView, ContextError> {
        let keys = self.keys().await?;
        Ok(ClusterView::load(self.etcd().await?, &keys).await?)
    }

    /// The cluster view of this call, loaded once (one etcd round trip).
    pub(crate) async fn cluster(&self) -> Result<&ClusterView, ContextError> {
        self.cluster.get_or_try_init(|| self.view()).await
    }

    /// The node `name` of this call's view: its Docker client with the call's inspections
    /// (see [`NodeHandle`]).
    pub(crate) async fn node(&self, name: &NodeName) -> Result<NodeHandle<'_>, ContextError> {
        let view = self.cluster().await?;
        let client = self.client(view, name).await?;
        Ok(NodeHandle::new(client, &self.inspections))
    }

    /// A Docker client for the node `name` of `view` (made once per call and endpoint).
    async fn client(
        &self,
        view: &ClusterView,
        name: &NodeName,
    ) -> Result<NodeDocker, ContextError> {
        let node = view
            .node(name)
            .ok_or_else(|| ContextError::NodeNotRegistered { node: name.clone() })?;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A context whose configuration cannot be read: any read of etcd or Docker fails, so
    /// an answer shows that nothing was read.
    pub(super) fn offline(view: Option<ClusterView>) -> CloudContext<'static> {
        let ctx = CloudContext::new("/nonexistent/cpi.json".into(), Map::new(), None);
        if let Some(view) = view {
            ctx.cluster.set(view).unwrap();
        }
        ctx
    }

    #[tokio::test]
    async fn a_missing_configuration_is_a_typed_failure_in_its_own_words() {
        let ctx = offline(None);
        let e = ctx.config().await.unwrap_err();
        assert!(matches!(e, ContextError::Config(_)), "{e:?}");
        assert!(
            e.to_string().starts_with("invalid CPI configuration"),
            "{e}"
        );
        assert!(matches!(ctx.etcd().await, Err(ContextError::Config(_))));
    }

    #[tokio::test]
    async fn a_node_missing_from_the_calls_view_is_not_registered() {
        let ctx = offline(Some(ClusterView::default()));
        let Err(e) = ctx.node(&"n1".into()).await else {
            panic!("a node of an empty view");
        };
        assert!(
            matches!(&e, ContextError::NodeNotRegistered { node } if node == "n1"),
            "{e:?}"
        );
        assert_eq!(e.to_string(), "node n1 is not registered in etcd");
    }
}
