//! The cpi-config for setups that want one CPI entry per node (the original MoltenCore
//! layout): every entry runs the same `moltencore_cpi` job and passes its node as
//! `placement.node`, which the CPI reads from the request's `context`.

use serde::{Deserialize, Serialize};

use super::cloud_config::{Generated, check_nodes};
use super::cpi_name;
use crate::cluster::ClusterView;
use crate::node_name::NodeName;

/// The job type: the director runs `/var/vcap/jobs/moltencore_cpi/bin/cpi`.
pub(crate) const CPI_TYPE: &str = "moltencore";

/// A cpi-config document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpiConfig {
    /// One CPI per node.
    pub(crate) cpis: Vec<CpiEntry>,
}

/// One CPI: a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpiEntry {
    /// The CPI's name, which AZs name in `cpi`.
    pub(crate) name: String,
    /// The CPI release's job type (`moltencore`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// What the director merges into each request's context.
    pub(crate) properties: CpiProperties,
}

/// What the director merges into every request's `context` for this CPI.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CpiProperties {
    /// Which node this CPI entry places VMs on.
    pub(crate) placement: Placement,
}

/// The config section `placement` (see `crate::config::PlacementConfig`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Placement {
    /// The node's name.
    pub(crate) node: NodeName,
}

/// One CPI entry per node of `view`.
pub fn generate(view: &ClusterView) -> Result<Generated<CpiConfig>, super::BoshConfigError> {
    check_nodes(view)?;
    let cpis = view
        .nodes
        .iter()
        .map(|n| CpiEntry {
            name: cpi_name(&n.name),
            kind: CPI_TYPE.into(),
            properties: CpiProperties {
                placement: Placement {
                    node: n.name.clone(),
                },
            },
        })
        .collect();
    Ok(Generated {
        document: CpiConfig { cpis },
        warnings: Vec::new(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::boshconfig::cloud_config::tests::{node, view};
    use crate::config::{Config, merge_context};

    #[test]
    fn one_entry_per_node_whose_properties_the_config_accepts() {
        let c = generate(&view(vec![node("n1", 1), node("n2", 2)]))
            .unwrap()
            .document;
        assert_eq!(c.cpis.len(), 2);
        assert_eq!(c.cpis[1].name, "moltencore-n2");
        assert_eq!(c.cpis[1].kind, "moltencore");
        // The director merges `properties` into the top level of `context`.
        let props = serde_json::to_value(&c.cpis[1].properties).unwrap();
        let mut cfg = serde_json::json!({
            "etcd": {"endpoints": ["http://127.0.0.1:2379"]},
            "docker": {"tls": {
                "client_cert": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n",
                "client_key": "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n"}},
            "agent": {"mbus": "nats://10.0.0.6:4222"}
        });
        merge_context(&mut cfg, props.as_object().unwrap());
        let config = Config::from_value(cfg).unwrap();
        assert_eq!(config.placement.node.as_deref(), Some("n2"));
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        assert!(yaml.contains("type: moltencore"), "{yaml}");
    }

    #[test]
    fn an_empty_cluster_is_an_error() {
        assert!(generate(&view(vec![])).is_err());
    }
}
