//! etcd access: the cluster's node records, Flannel state and PKI material.

pub(crate) mod claims;
pub(crate) mod error;
pub(crate) mod etcd;
pub mod index;
pub(crate) mod model;
pub(crate) mod view;

pub use etcd::{Etcd, EtcdAccess};
pub use model::{NodeRecord, NodeState, SubnetLease};
pub use view::{ClusterView, Keys};

#[cfg(test)]
pub(crate) use error::EtcdFailure;
pub(crate) use error::IndexError;
pub(crate) use model::{Capacity, DiskRecord, FlannelConfig, SnapshotRecord, VmRecord, VmState};
pub(crate) use view::NodeUsage;
