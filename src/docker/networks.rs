//! The BOSH bridge network of a node: created on the node's Flannel subnet when missing,
//! checked when present (a network on another subnet is never silently reused).

use std::collections::HashMap;
use std::net::Ipv4Addr;

use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest};
use ipnet::Ipv4Net;

use super::error::{DockerError, is_status};
use super::node::NodeDocker;

/// What a node's BOSH network must look like.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct BridgeSpec {
    pub(crate) name: String,
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
}

impl NodeDocker {
    /// Makes sure the network exists as specified; creates it when absent. A network of
    /// that name with another subnet or gateway is an error naming both.
    pub(crate) async fn ensure_bridge(&self, spec: &BridgeSpec) -> Result<(), DockerError> {
        super::names::object(&spec.name)?;
        match self.docker.inspect_network(&spec.name, None).await {
            Ok(existing) => {
                let configs = existing.ipam.and_then(|i| i.config).unwrap_or_default();
                let matches = configs.iter().any(|c| {
                    c.subnet.as_deref().and_then(|s| s.parse::<Ipv4Net>().ok()) == Some(spec.subnet)
                        && c.gateway
                            .as_deref()
                            .is_none_or(|g| g.parse::<Ipv4Addr>().ok() == Some(spec.gateway))
                });
                if matches {
                    return Ok(());
                }
                let found: Vec<String> = configs
                    .iter()
                    .map(|c| {
                        format!(
                            "{} gateway {}",
                            c.subnet.as_deref().unwrap_or("?"),
                            c.gateway.as_deref().unwrap_or("?")
                        )
                    })
                    .collect();
                Err(DockerError::NetworkMismatch {
                    node: self.name.to_string(),
                    network: spec.name.clone(),
                    found: found.join(", "),
                    subnet: spec.subnet.to_string(),
                    gateway: spec.gateway.to_string(),
                })
            }
            Err(e) if is_status(&e, 404) => self.create_bridge(spec).await,
            Err(e) => Err(self.error(&format!("inspecting network {}", spec.name), &e)),
        }
    }

    /// Docker before API 1.44 lets two concurrent creates make two networks of one name.
    /// Every creator keeps the network with the smallest id and removes the others, so
    /// all converge on the same one.
    async fn dedupe_network(&self, name: &str) -> Result<(), DockerError> {
        let filters: HashMap<String, Vec<String>> =
            [("name".to_string(), vec![name.to_string()])].into();
        let mut same: Vec<String> = self
            .docker
            .list_networks(Some(
                bollard::query_parameters::ListNetworksOptionsBuilder::new()
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.error(&format!("listing networks named {name}"), &e))?
            .into_iter()
            .filter(|n| n.name.as_deref() == Some(name))
            .filter_map(|n| n.id)
            .collect();
        same.sort();
        for extra in same.iter().skip(1) {
            if let Err(e) = self.docker.remove_network(extra).await {
                tracing::warn!(node = %self.name, "removing duplicate network {name} ({extra}): {e}");
            }
        }
        Ok(())
    }

    async fn create_bridge(&self, spec: &BridgeSpec) -> Result<(), DockerError> {
        let options: HashMap<String, String> = [
            (
                "com.docker.network.driver.mtu".to_string(),
                spec.mtu.to_string(),
            ),
            (
                "com.docker.network.bridge.enable_ip_masquerade".to_string(),
                "false".to_string(),
            ),
        ]
        .into();
        let request = NetworkCreateRequest {
            name: spec.name.clone(),
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                driver: Some("default".into()),
                config: Some(vec![IpamConfig {
                    subnet: Some(spec.subnet.trunc().to_string()),
                    gateway: Some(spec.gateway.to_string()),
                    ..Default::default()
                }]),
                options: None,
            }),
            options: Some(options),
            labels: Some([(crate::labels::NETWORK.to_string(), "bosh".to_string())].into()),
            ..Default::default()
        };
        match self.docker.create_network(request).await {
            Ok(_) => self.dedupe_network(&spec.name).await,
            // Created concurrently by another call: check it like an existing one.
            Err(e) if is_status(&e, 409) => Box::pin(self.ensure_bridge(spec)).await,
            Err(e) => Err(self.error(&format!("creating network {}", spec.name), &e)),
        }
    }
}

impl NodeDocker {
    /// Whether the network `name` exists on the node.
    pub(crate) async fn network_exists(&self, name: &str) -> Result<bool, DockerError> {
        let name = super::names::object(name)?;
        match self.docker.inspect_network(name, None).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(self.error(&format!("inspecting network {name}"), &e)),
        }
    }
}
