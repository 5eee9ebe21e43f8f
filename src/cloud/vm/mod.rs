//! VMs: containers placed on the right node, with the agent's settings written before
//! they start, and an index record in etcd so finding one is O(1).

pub mod abandoned;
pub mod agent_files;
pub mod blobstore;
pub mod container_spec;
mod create;
mod lifecycle;
pub mod network_plan;
pub mod properties;
pub mod recreate;
pub mod start_script;

pub use create::create;
pub use lifecycle::{delete, find_existing, has, reboot, set_metadata};

/// Docker label keys on VM containers and volumes.
pub mod labels {
    pub const VM_CID: &str = "moltencore.vm.cid";
    pub const AGENT_ID: &str = "moltencore.vm.agent_id";
    pub const STEMCELL: &str = "moltencore.vm.stemcell";
    pub const GROUP: &str = "moltencore.vm.group";
    pub const CREATED_AT: &str = "moltencore.vm.created_at";
    pub const EPHEMERAL_DISK_MIB: &str = "moltencore.vm.ephemeral_disk_mib";
    pub const EPHEMERAL_OF: &str = "moltencore.ephemeral.vm";
    /// The etcd key prefix of the index the VM is recorded in: only that CPI may judge
    /// the VM abandoned.
    pub const INDEX: &str = "moltencore.vm.index";
}

/// The ephemeral volume of a VM.
pub fn ephemeral_volume(vm_cid: &str) -> String {
    format!("{vm_cid}-ephemeral")
}
