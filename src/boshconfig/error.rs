//! Why a BOSH config cannot be generated from the cluster (or a preset flag is wrong),
//! typed so that tests and callers tell the causes apart; the command prints the text.

use crate::node_name::NodeName;
use ipnet::Ipv4Net;

/// The plan's own error, kept beside the plan it describes.
pub(crate) use super::address_plan::PlanError;

/// Why a cloud-config or cpi-config cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BoshConfigError {
    /// etcd has no node records.
    #[error("no nodes are registered in etcd: run cpi node-prep on the hosts first")]
    NoNodes,
    /// Two node records claim overlapping subnets.
    #[error(
        "the subnets of nodes {a} ({a_subnet}) and {b} ({b_subnet}) overlap: fix the node records before generating a cloud-config"
    )]
    OverlappingSubnets {
        a: NodeName,
        a_subnet: Ipv4Net,
        b: NodeName,
        b_subnet: Ipv4Net,
    },
    /// A node's subnet cannot be split as asked.
    #[error("node {node}: {source}")]
    Subnet {
        node: NodeName,
        #[source]
        source: PlanError,
    },
    /// Every vm_type was left out, so compilation has none to use.
    #[error("at least one vm_type is needed")]
    NoVmTypes,
    /// `--compilation-workers 0`.
    #[error("compilation workers must be at least 1")]
    NoCompilationWorkers,
}

/// A `--vm-type` or `--disk-type` flag that is not of the documented shape.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PresetError {
    /// Not `NAME` or `NAME:CPU:RAM_MIB:DISK_MIB`.
    #[error("vm type '{0}' must be NAME or NAME:CPU:RAM_MIB:DISK_MIB (e.g. big:8:16384:81920)")]
    VmTypeShape(String),
    /// A size of zero (or not a finite CPU count).
    #[error("vm type '{0}': CPU, RAM and disk must be above 0")]
    VmTypeSize(String),
    /// Not `NAME:SIZE_MIB` with a size above 0.
    #[error("disk type '{0}' must be NAME:SIZE_MIB (e.g. 20GB:20480)")]
    DiskTypeShape(String),
}
