//! VMs: containers placed on the right node, with the agent's settings written before
//! they start, and an index record in etcd so finding one is O(1).

pub mod abandoned;
pub mod agent_files;
pub mod blobstore;
pub(crate) mod block_disks;
pub mod container_spec;
pub(crate) mod create;
pub mod graceful_stop;
pub mod inside;
mod lifecycle;
pub mod network_plan;
pub mod properties;
pub mod requirements;
pub mod start_script;

pub use create::create;
pub use lifecycle::{delete, find_existing, has, reboot, set_metadata};

pub use crate::cloud::session::vms::ephemeral_volume;
/// Docker label keys on VM containers and volumes (spelled in [`crate::labels`]).
pub use crate::labels::vm as labels;
