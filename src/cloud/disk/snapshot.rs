//! snapshot_disk and delete_snapshot: a snapshot is a volume on the disk's node holding a
//! verified copy of the disk's contents at snapshot time (its image, copied hole for hole
//! by the node's mounter), labelled with the metadata.

use std::collections::HashMap;

use serde_json::Value;

use crate::cloud::CloudContext;
use crate::cluster::SnapshotRecord;
use crate::docker::{DockerError, NodeDocker, mounter, volume_copy};
use crate::labels::snapshot as labels;
use crate::protocol::{CallResult, CpiError, DiskCid, Object, SnapshotCid};
use crate::timestamp::Timestamp;

/// `snapshot_disk`: the record first (a killed call leaves a record delete_snapshot can
/// follow), then the volume and the copy; a failed copy takes both away again.
pub(crate) async fn snapshot(
    ctx: &CloudContext<'_>,
    disk_cid: &DiskCid,
    metadata: &Object,
) -> Result<CallResult, CpiError> {
    let disk = ctx.disk(disk_cid).await?;
    let docker = ctx.node(&disk.node).await?;
    let cid = SnapshotCid::generate();
    let rec = SnapshotRecord {
        cid: cid.clone(),
        disk_cid: disk_cid.clone(),
        node: disk.node.clone(),
        created_at: Timestamp::now(),
        metadata: metadata.clone(),
    };
    ctx.save_snapshot(&rec).await?;
    let dir = ctx.disks_dir_if_any(&disk.node).await?;
    let volume_labels = volume_labels(&cid, disk_cid, metadata);
    match copy_into_new_volume(&docker, dir.as_deref(), disk_cid, &cid, volume_labels).await {
        Ok(how) => {
            tracing::info!(snapshot = %cid, disk = %disk_cid, "snapshot taken: {how}");
            Ok(CallResult::SnapshotCreated(cid))
        }
        Err(e) => {
            let _ = docker.remove_volume(cid.as_str()).await;
            let _ = ctx.forget_snapshot(&cid).await;
            Err(CpiError::from(e).context(format!("snapshot_disk {disk_cid}")))
        }
    }
}

/// The labels of a snapshot's volume: its cid, its disk, and the metadata (each value as
/// text: a JSON string as is, anything else as JSON).
fn volume_labels(
    cid: &SnapshotCid,
    disk_cid: &DiskCid,
    metadata: &Object,
) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (labels::CID.to_string(), cid.to_string()),
        (labels::DISK.to_string(), disk_cid.to_string()),
    ]);
    for (k, v) in metadata {
        let text = match v {
            Value::String(s) => s.clone(),
            other => other.to_string(),
        };
        labels.insert(format!("{}{k}", labels::META_PREFIX), text);
    }
    labels
}

/// Makes the snapshot's volume and copies the disk into it; says how it was copied. A disk
/// with an image is copied on its node by the mounter, hole for hole (a disk of 10 GiB
/// holding 100 MiB costs about 100 MiB). A disk never attached (no image), or kept as a
/// folder by an earlier version (files besides or instead of its image), is copied whole
/// through the volume archive.
async fn copy_into_new_volume(
    docker: &NodeDocker,
    disks_dir: Option<&str>,
    disk_cid: &DiskCid,
    cid: &SnapshotCid,
    volume_labels: HashMap<String, String>,
) -> Result<String, DockerError> {
    docker.create_volume(cid.as_str(), volume_labels).await?;
    if let Some(dir) = disks_dir {
        match docker
            .copy_disk_image(dir, disk_cid.as_str(), cid.as_str())
            .await
        {
            Ok(bytes) => return Ok(format!("{bytes} bytes of data copied on the node")),
            Err(DockerError::Mount {
                code: mounter::NOT_HERE | mounter::NOT_AN_IMAGE,
                ..
            }) => {}
            Err(e) => return Err(e),
        }
    }
    volume_copy::copy_volume(docker, disk_cid.as_str(), docker, cid.as_str())
        .await
        .map(|d| format!("{} files, {} bytes copied", d.files, d.bytes))
}

/// `delete_snapshot`: idempotent.
pub(crate) async fn delete_snapshot(
    ctx: &CloudContext<'_>,
    cid: &SnapshotCid,
) -> Result<CallResult, CpiError> {
    if let Some(rec) = ctx.snapshot(cid).await? {
        if ctx.cluster().await?.registered(&rec.node)?.is_some() {
            ctx.node(&rec.node)
                .await?
                .remove_volume(cid.as_str())
                .await?;
        }
        ctx.forget_snapshot(cid).await?;
    }
    Ok(CallResult::Done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_becomes_labels_as_text() {
        let cid = SnapshotCid::generate();
        let disk = DiskCid::generate();
        let metadata = serde_json::json!({"director": "d", "index": 0, "ok": true});
        let labels = volume_labels(&cid, &disk, metadata.as_object().unwrap());
        assert_eq!(labels[labels::CID], cid.to_string());
        assert_eq!(labels[labels::DISK], disk.to_string());
        let meta = |k: &str| labels[&format!("{}{k}", labels::META_PREFIX)].clone();
        assert_eq!(meta("director"), "d");
        assert_eq!(meta("index"), "0");
        assert_eq!(meta("ok"), "true");
        assert_eq!(labels.len(), 5);
    }
}
