//! BOSH configs generated from the cluster in etcd (`cpi bosh-config`): the cloud-config
//! (one AZ and one subnet per node) and, for one-CPI-per-node setups, the cpi-config.

pub(crate) mod address_plan;
pub mod cloud_config;
pub mod cpi_config;
pub(crate) mod error;

pub(crate) use error::BoshConfigError;

/// The CPI name of a node in the generated cpi-config, which the cloud-config's AZs name
/// when they are generated for it.
pub(crate) fn cpi_name(node: &crate::node_name::NodeName) -> String {
    format!("moltencore-{node}")
}
