//! etcd access: the cluster's node records, Flannel state and PKI material.

pub mod claims;
pub mod error;
pub mod etcd;
pub mod index;
pub mod model;
pub mod view;

pub use error::{EtcdFailure, IndexError};
pub use etcd::{Etcd, EtcdAccess};
pub use model::{
    AddressClaim, Capacity, DiskRecord, FlannelConfig, NodeRecord, NodeState, SnapshotRecord,
    SubnetLease, VmRecord, VmState,
};
pub use view::{ClusterView, Keys, NodeUsage};
