//! Moving a disk to another node: its contents streamed node-to-node through the CPI,
//! verified (files, bytes, content digest), then the source removed. An unreachable
//! source is a retriable error and loses nothing.

use std::collections::HashMap;

use super::{labels, save};
use crate::cloud::CloudContext;
use crate::cluster::DiskRecord;
use crate::docker::volume_copy;
use crate::protocol::CpiError;

/// Removes the source volume a finished move left on `disk.old_copy_on` and clears the
/// mark. Never fails its caller: a node still unreachable keeps the mark (and the copy)
/// for the next call, and is named in the log.
pub async fn remove_old_copy(ctx: &CloudContext<'_>, disk: &mut DiskRecord) {
    let Some(node) = disk.old_copy_on.clone() else {
        return;
    };
    let cid = disk.cid.clone();
    let removed = async {
        if node != disk.node {
            let view = ctx.view().await?;
            if view.registered(&node)?.is_some() {
                let docker = ctx.node_docker(&view, &node).await?;
                volume_copy::sweep_helpers(&docker, &cid).await?;
                docker.remove_volume(&cid).await?;
            }
        }
        disk.old_copy_on = None;
        save(ctx, disk).await
    }
    .await;
    match removed {
        Ok(()) => tracing::info!(disk = %cid, node = %node, "old copy of the moved disk removed"),
        Err(e) => tracing::warn!(
            disk = %cid, node = %node,
            "the old copy of moved disk {cid} stays on node {node} for now: {}", e.message
        ),
    }
}

/// Moves `disk` to `target` and updates its record.
pub async fn move_disk(
    ctx: &CloudContext<'_>,
    disk: &mut DiskRecord,
    target: &str,
) -> Result<(), CpiError> {
    // The record has room for one leftover copy: an earlier one goes before a new move.
    remove_old_copy(ctx, disk).await;
    let view = ctx.view().await?;
    let from = ctx.node_docker(&view, &disk.node).await?;
    let to = ctx.node_docker(&view, target).await?;
    let cid = disk.cid.clone();
    if !from
        .volume_exists(&cid)
        .await
        .map_err(|e| e.context(format!("moving disk {cid}")))?
    {
        return Err(super::volume_gone(disk));
    }
    // A partial copy from an earlier, interrupted move is replaced (with the helper
    // containers such a move may have left holding it).
    volume_copy::sweep_helpers(&to, &cid).await?;
    to.remove_volume(&cid).await?;
    let volume_labels = HashMap::from([
        (labels::DISK_CID.to_string(), cid.clone()),
        (labels::SIZE_MIB.to_string(), disk.size_mib.to_string()),
    ]);
    to.create_volume(&cid, volume_labels).await?;
    tracing::info!(disk = %cid, from = %disk.node, to = %target, "moving disk");
    let digest = match volume_copy::copy_volume(&from, &cid, &to, &cid).await {
        Ok(d) => d,
        Err(e) => {
            let _ = to.remove_volume(&cid).await;
            return Err(e.context(format!("moving disk {cid} from {} to {target}", disk.node)));
        }
    };
    let source = std::mem::replace(&mut disk.node, target.to_string());
    disk.old_copy_on = Some(source.clone());
    save(ctx, disk).await?;
    remove_old_copy(ctx, disk).await;
    tracing::info!(
        disk = %cid, from = %source, to = %target, files = digest.files, bytes = digest.bytes,
        "disk moved and verified"
    );
    Ok(())
}
