//! Moving a disk to another node: its contents streamed node-to-node through the CPI,
//! verified (files, bytes, content digest), then the source removed. An unreachable
//! source is a retriable error and loses nothing. The disk's record names every node that
//! may hold a copy besides its own ([`DiskMove`]: `copying_to` while a copy is made,
//! `old_copy_on` after the switch; drawn in docs/disks.md), so a move that failed or was
//! killed leaves nothing behind for good. No VM sees the copy before it is checked. Shared
//! by attach_disk and create_vm.

use std::collections::HashMap;

use super::CloudContext;
use super::disks::volume_gone;
use crate::cloud::disk::error::DiskError;
use crate::cluster::DiskRecord;
use crate::docker::volume_copy::{self, TreeDigest};
use crate::docker::{DockerError, NodeDocker};
use crate::labels::disk as labels;
use crate::node_name::NodeName;
use crate::protocol::CpiError;

/// Which copy a mark of the record names.
#[derive(Clone, Copy)]
enum Mark {
    OldCopy,
    Copying,
}

impl CloudContext<'_> {
    /// Removes the copies of `disk` that the record names on other nodes than its own (the
    /// source a finished move could not remove, the partial target of a move that failed
    /// or was killed) and clears those marks. Called once per disk by a call that uses the
    /// disk. Never fails its caller: a node still unreachable keeps its mark (and the
    /// copy) for the next call, and is named in the log.
    pub(crate) async fn remove_stray_copies(&self, disk: &mut DiskRecord) {
        self.clear_mark(disk, Mark::OldCopy).await;
        self.clear_mark(disk, Mark::Copying).await;
    }

    /// Removes the old copy a finished move left on its source node (see
    /// [`CloudContext::move_disk`]). Never fails its caller: a node that does not answer keeps
    /// the mark (and the copy) for the next call that uses the disk.
    pub(crate) async fn remove_old_copy(&self, disk: &mut DiskRecord) {
        self.clear_mark(disk, Mark::OldCopy).await;
    }

    /// Removes the copy `mark` names (if any) and clears the mark once it is gone.
    async fn clear_mark(&self, disk: &mut DiskRecord, mark: Mark) {
        let (node, what) = match mark {
            Mark::OldCopy => (disk.moving.old_copy_on(), "old copy of the moved disk"),
            Mark::Copying => (
                disk.moving.copying_to(),
                "partial copy of an unfinished move",
            ),
        };
        let Some(node) = node.cloned() else {
            return;
        };
        if !self.remove_copy(disk, &node, what).await {
            return;
        }
        match mark {
            Mark::OldCopy => disk.moving.old_copy_removed(),
            Mark::Copying => disk.moving.partial_copy_removed(),
        }
        // A failed save only means the next call removes the (already gone) copy again.
        if let Err(e) = self.save_disk(disk).await {
            tracing::warn!(disk = %disk.cid, node = %node, "copy removed, record not updated: {e}");
        }
    }

    /// Removes the copy of `disk` on `node` (and the helpers holding it), unless `node` is
    /// the disk's own node; whether the copy is gone.
    async fn remove_copy(&self, disk: &DiskRecord, node: &NodeName, what: &str) -> bool {
        if *node == disk.node {
            return true;
        }
        let cid = &disk.cid;
        let removed = async {
            if self.cluster().await?.registered(node)?.is_some() {
                let docker = self.node(node).await?;
                // Docker cannot see a disk bound into a VM: the node's tree is asked, and
                // a copy something still holds stays, with its mark.
                if let Some(dir) = self.disks_dir_if_any(node).await?
                    && let Some(vm) = docker.disk_holders(&dir, cid).await?.first()
                {
                    return Err(DiskError::CopyStillBound {
                        node: node.clone(),
                        vm: vm.clone(),
                    }
                    .into());
                }
                volume_copy::sweep_helpers(&docker, cid).await?;
                docker.remove_volume(cid).await?;
            }
            Ok::<(), CpiError>(())
        }
        .await;
        match removed {
            Ok(()) => {
                tracing::info!(disk = %cid, node = %node, "{what} removed");
                true
            }
            Err(e) => {
                tracing::warn!(
                    disk = %cid, node = %node,
                    "the {what} {cid} stays on node {node} for now: {}", e.message
                );
                false
            }
        }
    }

    /// Moves `disk` to `target` and updates its record: the contents streamed, the copy
    /// checked against the source stream, then the record switched to the target with the
    /// source marked as the old copy. The caller has removed the stray copies of earlier
    /// moves first ([`CloudContext::remove_stray_copies`]): the record has room for one copy of
    /// each kind. The caller removes the source with [`CloudContext::remove_old_copy`], beside
    /// its next step (the disk lives on `target` from now on). A copy that fails is
    /// removed now if the target answers; otherwise its mark stays for the next call.
    pub(crate) async fn move_disk(
        &self,
        disk: &mut DiskRecord,
        target: &NodeName,
    ) -> Result<(), CpiError> {
        let cid = disk.cid.clone();
        // The record has room for one copy of each kind: a copy that could not be removed
        // yet (its node did not answer) must not lose its mark to this move.
        let mut moving = disk.moving.clone();
        moving
            .begin(target)
            .map_err(|blocked| DiskError::MoveBlocked {
                cid: cid.clone(),
                blocked,
            })?;
        let from = self.node(&disk.node).await?;
        let to = self.node(target).await?;
        let exists = from.volume_exists(&cid).await;
        if !exists.map_err(|source| DiskError::MoveSource {
            cid: cid.clone(),
            source,
        })? {
            return Err(volume_gone(disk));
        }
        // Nothing on the source node may hold the disk, whatever the index says: a VM
        // there would write on while the copy goes elsewhere, and the source is removed.
        let from_dir = self.disks_dir_if_any(&disk.node).await?;
        self.ensure_unmounted(&from, from_dir.as_deref(), &cid, None)
            .await?;
        // Marked before the target volume exists: whatever happens next, the record leads
        // to it.
        disk.moving = moving;
        self.save_disk(disk).await?;
        let digest = match copy_disk(disk, &from, &to).await {
            Ok(digest) => digest,
            Err(source) => {
                self.clear_mark(disk, Mark::Copying).await;
                let from = disk.node.clone();
                let to = target.clone();
                return Err(DiskError::MoveCopy {
                    cid,
                    from,
                    to,
                    source,
                }
                .into());
            }
        };
        let source = std::mem::replace(&mut disk.node, target.clone());
        disk.moving.switched(source.clone());
        self.save_disk(disk).await?;
        tracing::info!(
            disk = %cid, from = %source, to = %disk.node, files = digest.files, bytes = digest.bytes,
            "disk moved and verified"
        );
        Ok(())
    }
}

/// Copies `disk`'s volume from node `from` to a new volume of the same name on node `to`,
/// checked against the source stream. A partial copy from an earlier, interrupted move is
/// replaced (with the helper containers such a move may have left holding it).
async fn copy_disk(
    disk: &DiskRecord,
    from: &NodeDocker,
    to: &NodeDocker,
) -> Result<TreeDigest, DockerError> {
    let cid = &disk.cid;
    volume_copy::sweep_helpers(to, cid).await?;
    to.remove_volume(cid).await?;
    let volume_labels = HashMap::from([
        (labels::DISK_CID.to_string(), cid.to_string()),
        (labels::SIZE_MIB.to_string(), disk.size_mib.to_string()),
    ]);
    to.create_volume(cid, volume_labels).await?;
    tracing::info!(disk = %cid, from = %disk.node, to = %to.name, "moving disk");
    volume_copy::copy_volume(from, cid, to, cid).await
}
