//! What goes wrong reaching what a call works with: the configuration, etcd, and Docker
//! on the nodes. The BOSH class and retry flag of each are decided in
//! `cloud::errors::context`; operators' commands and the reboot manager report the text.

use crate::cluster::IndexError;
use crate::config::ConfigError;
use crate::docker::DockerError;
use crate::node_name::NodeName;

/// The configuration, etcd or a node's Docker could not be reached or set up. The text is
/// what the director (or the operator) is told.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// The configuration file (with the request's overrides) is missing or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// etcd could not be reached, or refused or garbled a request.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A node's Docker client could not be made.
    #[error(transparent)]
    Docker(#[from] DockerError),
    /// A node the call needs has no record in etcd.
    #[error("node {node} is not registered in etcd")]
    NodeNotRegistered {
        /// The node's name.
        node: NodeName,
    },
    /// Neither the configuration nor etcd gives the CA of the nodes' Docker daemons.
    #[error(
        "no Docker CA certificate: set docker.tls.ca_cert in the CPI config or publish it at {key}"
    )]
    NoDockerCa {
        /// The etcd key where the cluster CA would be published.
        key: String,
    },
    /// The configuration lacks the client certificate or key for Docker.
    #[error("docker.tls client_cert and client_key are required")]
    NoClientCert,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_layers_below_speak_for_themselves() {
        let config = ConfigError::invalid("etcd.tls", "https endpoints need etcd.tls");
        let e = ContextError::from(config.clone());
        assert_eq!(e.to_string(), config.to_string());
        let e = ContextError::from(IndexError::from(config));
        assert_eq!(
            e.to_string(),
            "invalid CPI configuration: etcd.tls: https endpoints need etcd.tls"
        );
    }
}
