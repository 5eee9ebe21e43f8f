//! What goes wrong with a persistent disk: finding it and its volume, who holds it on its
//! node, moving it, attaching it, deleting and resizing it. The BOSH class and retry flag
//! of each are decided in `cloud::errors::disk`.

use crate::cluster::model::MoveBlocked;
use crate::docker::DockerError;
use crate::node_name::NodeName;
use crate::placement::PlacementError;
use crate::protocol::{DiskCid, VmCid};

/// A disk operation that cannot go on. The text is what the director is told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DiskError {
    /// The index has no record of the disk.
    #[error("disk {cid} does not exist")]
    NotFound { cid: DiskCid },
    /// The record names a node that no longer has the disk's volume (Docker would mount
    /// a new, empty volume of that name).
    #[error("disk {cid} has no volume on its node {node} (removed outside the CPI?)")]
    VolumeGone { cid: DiskCid, node: NodeName },
    /// The node was prepared before it had a disk tree.
    #[error(
        "node {node} has no VM disk tree in its record: run `cpi node-prep` (and `cpi node-prep disk-mounts`) on it with this version"
    )]
    NoDiskTree { node: NodeName },
    /// The disk's (or VM's) node has no record.
    #[error("node {node} is not registered in etcd")]
    NodeNotRegistered { node: NodeName },
    /// A loop device of the disk is still held by a mount in a VM it was detached from.
    #[error(
        "disk {cid} is still in use through /dev/loop{device} on node {node}: a mount of it in a VM it was detached from has not let go yet"
    )]
    LoopStillHeld {
        cid: DiskCid,
        device: String,
        node: NodeName,
    },
    /// Something that is not a VM of this CPI has the disk bound in the node's tree.
    #[error("disk {cid} is bound in {holder} on node {node}, which is not a VM of this CPI")]
    BoundInForeign {
        cid: DiskCid,
        /// The holder's name, printable.
        holder: String,
        node: NodeName,
    },
    /// A container that is not a VM of this CPI mounts the disk's volume.
    #[error(
        "disk {cid} is mounted by container {container} on node {node}, which is not a VM of this CPI"
    )]
    MountedByForeign {
        cid: DiskCid,
        container: String,
        node: NodeName,
    },
    /// A VM of the index holds the disk (`how`: bound, mounted); retriable while that VM
    /// is being created.
    #[error("disk {cid} is {how} in VM {vm} on node {node}; detach it there first")]
    HeldByVm {
        cid: DiskCid,
        how: String,
        vm: VmCid,
        node: NodeName,
        creating: bool,
    },
    /// The copy a move left on a node is still bound in a VM there.
    #[error("the copy on node {node} is still bound in VM {vm}")]
    CopyStillBound { node: NodeName, vm: String },
    /// A move cannot start while a copy of an earlier one is on another node.
    #[error("moving disk {cid}: {blocked}")]
    MoveBlocked {
        cid: DiskCid,
        #[source]
        blocked: MoveBlocked,
    },
    /// The volume could not be checked before a move.
    #[error("moving disk {cid}: {source}")]
    MoveSource {
        cid: DiskCid,
        #[source]
        source: DockerError,
    },
    /// The copy of a move failed.
    #[error("moving disk {cid} from {from} to {to}: {source}")]
    MoveCopy {
        cid: DiskCid,
        from: NodeName,
        to: NodeName,
        #[source]
        source: DockerError,
    },
    /// No node can take the new disk.
    #[error("create_disk: {0}")]
    Placement(#[source] PlacementError),
    /// The disk is attached to another VM than the one it is to be attached to.
    #[error("attach_disk: disk {cid} is attached to VM {vm}; detach it there first")]
    AttachedElsewhere { cid: DiskCid, vm: VmCid },
    /// The VM has no container on its node.
    #[error("VM {vm} has no container on node {node}")]
    NoContainer { vm: VmCid, node: NodeName },
    /// A VM made by an earlier version takes no live disks.
    #[error(
        "VM {vm} was made by a CPI version whose disks are folders; recreate it (bosh recreate) to attach disks"
    )]
    MadeEarlier { vm: VmCid },
    /// The VM's agent settings file is missing.
    #[error("VM {vm} has no agent settings at {path}")]
    NoAgentSettings { vm: VmCid, path: &'static str },
    /// The VM's agent settings are not JSON.
    #[error("VM {vm}: agent settings unreadable: {source}")]
    SettingsUnreadable {
        vm: VmCid,
        #[source]
        source: serde_json::Error,
    },
    /// The agent settings could not be packed for upload.
    #[error("cannot pack the agent settings: {0}")]
    SettingsPack(#[source] std::io::Error),
    /// delete_disk of an attached disk.
    #[error("delete_disk: disk {cid} is attached to VM {vm}; detach it first")]
    DeleteAttached { cid: DiskCid, vm: VmCid },
    /// delete_disk while a copy an earlier move left could not be removed.
    #[error(
        "delete_disk: disk {cid} still has a copy an earlier move left on node {node}, which cannot be removed now; retry when node {node} answers (or unregister it)"
    )]
    CopyLeft { cid: DiskCid, node: NodeName },
    /// resize_disk to a smaller size.
    #[error("resize_disk: disk {cid} cannot shrink from {from} MiB to {to} MiB")]
    Shrink { cid: DiskCid, from: u64, to: u64 },
    /// resize_disk of an attached disk.
    #[error("resize_disk: disk {cid} is attached to VM {vm}; detach it first")]
    ResizeAttached { cid: DiskCid, vm: VmCid },
    /// The node still holds the disk (a lazy unmount not finished).
    #[error("resize_disk: disk {cid} is still in use on its node: {detail}")]
    GrowInUse { cid: DiskCid, detail: String },
    /// The disk's image is larger than the new size.
    #[error("resize_disk: disk {cid}: {detail}")]
    GrowShrinks { cid: DiskCid, detail: String },
    /// The node's Docker failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_name_the_disk_and_the_node() {
        let cid = DiskCid::parse("disk-00000000-0000-0000-0000-000000000001").unwrap();
        let e = DiskError::LoopStillHeld {
            cid: cid.clone(),
            device: "3".into(),
            node: "n1".into(),
        };
        assert_eq!(
            e.to_string(),
            "disk disk-00000000-0000-0000-0000-000000000001 is still in use through /dev/loop3 on node n1: a mount of it in a VM it was detached from has not let go yet"
        );
        let e = DiskError::CopyLeft {
            cid,
            node: "n2".into(),
        };
        assert_eq!(
            e.to_string(),
            "delete_disk: disk disk-00000000-0000-0000-0000-000000000001 still has a copy an earlier move left on node n2, which cannot be removed now; retry when node n2 answers (or unregister it)"
        );
    }
}
