//! create_vm's own refusals and failures, each answered with the class and retry flag
//! the director acts on (decided in `cloud/errors/vm.rs`).

use std::net::Ipv4Addr;

use crate::node_name::NodeName;
use crate::protocol::{DiskCid, VmCid};

/// Why create_vm could not make the VM, besides the failures of etcd, Docker and the
/// other layers it calls.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CreateError {
    #[error("node {0} vanished from the view")]
    NodeVanished(NodeName),
    /// The holder's record is gone (removed by hand): its claim was garbage and is gone.
    #[error(
        "create_vm: an address was claimed by VM {holder}, which has no record any more; the claim was removed, retry"
    )]
    StaleClaim { holder: String },
    /// A static IP claimed by another VM (`on_lease`: by a create still running).
    #[error(
        "create_vm: IP {ip} on docker network {network} of node {node} is taken by VM {holder} ({})",
        if *on_lease { "still being created" } else { "already created" }
    )]
    ClaimTaken {
        ip: Ipv4Addr,
        network: String,
        node: NodeName,
        holder: String,
        on_lease: bool,
    },
    #[error(
        "create_vm: no free address left in the dynamic pool of docker network {network} on node {node}"
    )]
    PoolExhausted { network: String, node: NodeName },
    #[error(
        "create_vm: VM {vm} lost its record or address claims (this process stalled past their lease)"
    )]
    LostRecord { vm: VmCid },
    #[error("create_vm: disk {disk} is attached to VM {vm}")]
    DiskAttached { disk: DiskCid, vm: VmCid },
    #[error("cannot pack the agent settings: {0}")]
    Pack(std::io::Error),
    /// Docker refused the start: an address the CPI claimed is held outside its VMs
    /// (`message`, the daemon's, printable).
    #[error(
        "create_vm: node {node}: an address of {ips} is held by a container that is not a VM of this CPI: {message}"
    )]
    AddressHeldOutside {
        node: NodeName,
        ips: String,
        message: String,
    },
    #[error(
        "create_vm: network '{network}' names docker network {docker_network}, which does not exist on node {node}"
    )]
    NoDockerNetwork {
        network: String,
        docker_network: String,
        node: NodeName,
    },
    /// `holder` is printable.
    #[error(
        "create_vm: IP {ip} of network '{network}' is held by container {holder} on node {node}, which is not a VM of this CPI"
    )]
    IpHeldByContainer {
        ip: Ipv4Addr,
        network: String,
        holder: String,
        node: NodeName,
    },
    #[error(
        "create_vm: IP {ip} of network '{network}' is taken by VM {holder}, still being created on node {node}"
    )]
    IpTakenByCreate {
        ip: Ipv4Addr,
        network: String,
        holder: String,
        node: NodeName,
    },
    #[error("create_vm: IP {ip} of network '{network}' is already used by {holder} on node {node}")]
    IpUsed {
        ip: Ipv4Addr,
        network: String,
        holder: String,
        node: NodeName,
    },
    #[error("container {vm} vanished on node {node} right after start")]
    VanishedAfterStart { vm: VmCid, node: NodeName },
    #[error("container {vm} got {got} on {network} instead of {want}")]
    WrongAddress {
        vm: VmCid,
        got: Ipv4Addr,
        network: String,
        want: Ipv4Addr,
    },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_the_director_shows() {
        let ip: Ipv4Addr = "10.1.1.10".parse().unwrap();
        for (e, text) in [
            (
                CreateError::PoolExhausted {
                    network: "bosh".into(),
                    node: "n1".into(),
                },
                "create_vm: no free address left in the dynamic pool of docker network bosh on node n1",
            ),
            (
                CreateError::IpHeldByContainer {
                    ip,
                    network: "default".into(),
                    holder: "abc".into(),
                    node: "n1".into(),
                },
                "create_vm: IP 10.1.1.10 of network 'default' is held by container abc on node n1, which is not a VM of this CPI",
            ),
            (
                CreateError::AddressHeldOutside {
                    node: "n1".into(),
                    ips: "10.1.1.10, 10.1.1.200".into(),
                    message: "Address already in use".into(),
                },
                "create_vm: node n1: an address of 10.1.1.10, 10.1.1.200 is held by a container that is not a VM of this CPI: Address already in use",
            ),
        ] {
            assert_eq!(e.to_string(), text);
        }
    }
}
