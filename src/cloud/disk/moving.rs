//! Moving a disk to another node: its contents streamed node-to-node through the CPI,
//! verified (files, bytes, content digest), then the source removed. An unreachable
//! source is a retriable error and loses nothing. The disk's record names every node that
//! may hold a copy besides its own (`copying_to` while a copy is made, `old_copy_on` after
//! the switch), so a move that failed or was killed leaves nothing behind for good.

use std::collections::HashMap;

use super::{labels, save};
use crate::cloud::CloudContext;
use crate::cluster::DiskRecord;
use crate::docker::volume_copy;
use crate::protocol::CpiError;

/// Removes the copies of `disk` that the record names on other nodes than its own (the
/// source a finished move could not remove, the partial target of a move that failed or
/// was killed) and clears those marks. Never fails its caller: a node still unreachable
/// keeps its mark (and the copy) for the next call, and is named in the log.
pub async fn remove_stray_copies(ctx: &CloudContext<'_>, disk: &mut DiskRecord) {
    if let Some(node) = disk.old_copy_on.clone()
        && remove_copy(ctx, disk, &node, "old copy of the moved disk").await
    {
        disk.old_copy_on = None;
        forget_mark(ctx, disk, &node).await;
    }
    if let Some(node) = disk.copying_to.clone()
        && remove_copy(ctx, disk, &node, "partial copy of an unfinished move").await
    {
        disk.copying_to = None;
        forget_mark(ctx, disk, &node).await;
    }
}

/// Removes the copy of `disk` on `node` (and the helpers holding it), unless `node` is the
/// disk's own node; whether the copy is gone.
async fn remove_copy(ctx: &CloudContext<'_>, disk: &DiskRecord, node: &str, what: &str) -> bool {
    if node == disk.node {
        return true;
    }
    let cid = &disk.cid;
    let removed = async {
        let view = ctx.view().await?;
        if view.registered(node)?.is_some() {
            let docker = ctx.node_docker(&view, node).await?;
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

/// Saves the record after a mark was cleared; a failed save only means the next call
/// removes the (already gone) copy again.
async fn forget_mark(ctx: &CloudContext<'_>, disk: &DiskRecord, node: &str) {
    if let Err(e) = save(ctx, disk).await {
        tracing::warn!(disk = %disk.cid, node = %node, "copy removed, record not updated: {}", e.message);
    }
}

/// Moves `disk` to `target` and updates its record.
pub async fn move_disk(
    ctx: &CloudContext<'_>,
    disk: &mut DiskRecord,
    target: &str,
) -> Result<(), CpiError> {
    // The record has room for one copy of each kind: earlier ones go before a new move.
    remove_stray_copies(ctx, disk).await;
    let view = ctx.view().await?;
    let from = ctx.node_docker(&view, &disk.node).await?;
    let to = ctx.node_docker(&view, target).await?;
    let cid = disk.cid.clone();
    if !from
        .volume_exists(&cid)
        .await
        .map_err(|e| CpiError::from(e).context(format!("moving disk {cid}")))?
    {
        return Err(super::volume_gone(disk));
    }
    // Marked before the target volume exists: whatever happens next, the record leads to it.
    disk.copying_to = Some(target.to_string());
    save(ctx, disk).await?;
    // A partial copy from an earlier, interrupted move is replaced (with the helper
    // containers such a move may have left holding it).
    volume_copy::sweep_helpers(&to, &cid).await?;
    to.remove_volume(&cid).await?;
    let volume_labels = HashMap::from([
        (labels::DISK_CID.to_string(), cid.to_string()),
        (labels::SIZE_MIB.to_string(), disk.size_mib.to_string()),
    ]);
    to.create_volume(&cid, volume_labels).await?;
    tracing::info!(disk = %cid, from = %disk.node, to = %target, "moving disk");
    let digest = match volume_copy::copy_volume(&from, &cid, &to, &cid).await {
        Ok(d) => d,
        Err(e) => {
            // Cleaned now if the target answers; otherwise the mark stays for the next call.
            remove_stray_copies(ctx, disk).await;
            return Err(CpiError::from(e)
                .context(format!("moving disk {cid} from {} to {target}", disk.node)));
        }
    };
    let source = std::mem::replace(&mut disk.node, target.to_string());
    disk.old_copy_on = Some(source.clone());
    disk.copying_to = None;
    save(ctx, disk).await?;
    remove_stray_copies(ctx, disk).await;
    tracing::info!(
        disk = %cid, from = %source, to = %target, files = digest.files, bytes = digest.bytes,
        "disk moved and verified"
    );
    Ok(())
}
