//! Docker label keys on VM containers and volumes.

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
