//! What goes wrong finding a VM and clearing it from its node, for the handlers of `vm/`
//! and `disk/` alike. The BOSH class and retry flag of each are decided in
//! `cloud::errors::lookup`.

use crate::node_name::NodeName;
use crate::protocol::VmCid;

/// A VM that cannot be found or removed. The text is what the director is told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum VmLookupError {
    /// The index has no record of the VM.
    #[error("VM {cid} does not exist")]
    NotFound { cid: VmCid },
    /// The VM's record names a node that is no longer registered.
    #[error("VM {cid} is on node {node}, which is no longer registered in etcd")]
    NodeGone { cid: VmCid, node: NodeName },
    /// Containers or the ephemeral volume of the VM outlived every round of removal (a
    /// request of a killed call may still be running in the daemon).
    #[error(
        "node {node}: VM {cid} still has containers or its volume {volume} after {rounds} rounds of removal"
    )]
    NotRemoved {
        node: NodeName,
        cid: VmCid,
        volume: String,
        rounds: usize,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_name_the_vm_and_its_node() {
        let cid = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        let e = VmLookupError::NodeGone {
            cid,
            node: NodeName::from_record("n1"),
        };
        assert_eq!(
            e.to_string(),
            "VM vm-00000000-0000-0000-0000-000000000001 is on node n1, which is no longer registered in etcd"
        );
    }
}
