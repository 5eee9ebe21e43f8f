//! VMs: containers placed on the right node, with the agent's settings written before
//! they start, and an index record in etcd so finding one is O(1).

pub(crate) mod abandoned;
pub(crate) mod agent_files;
pub mod blobstore;
pub(crate) mod block_disks;
pub(crate) mod container_spec;
pub(crate) mod create;
pub(crate) mod graceful_stop;
pub mod inside;
mod lifecycle;
pub(crate) mod network_plan;
pub(crate) mod properties;
pub(crate) mod requirements;
pub(crate) mod start_script;

pub(crate) use create::create;
pub(crate) use lifecycle::{delete, find_existing, has, reboot, set_metadata};

pub(crate) use crate::cloud::context::vms::ephemeral_volume;
/// Docker label keys on VM containers and volumes (spelled in [`crate::labels`]).
pub(crate) use crate::labels::vm as labels;
