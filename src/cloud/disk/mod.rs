//! Persistent disks: Docker volumes named after the disk cid, on the node of the VM that
//! uses them (moved between nodes when a VM elsewhere attaches them), indexed in etcd.

mod attach;
pub(crate) mod error;
mod snapshot;

pub(crate) use attach::{attach, detach};
pub(crate) use snapshot::{delete_snapshot, snapshot};

use std::collections::HashMap;

use serde_json::Value;

use super::CloudContext;
use super::context::disks::volume_gone;
use crate::cluster::DiskRecord;
use crate::cluster::model::DiskMove;
use crate::placement::{self, VmDemand};
use crate::protocol::{CallResult, CpiError, DiskCid, Object, VmCid};
use crate::timestamp::Timestamp;
use error::DiskError;

/// Docker label keys on disk volumes (spelled in [`crate::labels`]).
pub(crate) use crate::labels::disk as labels;
/// `create_disk`: a volume on the VM's node (locality), else on `cloud_properties.node`,
/// else on the CPI's `placement.node`, else where placement puts a VM.
pub(crate) async fn create(
    ctx: &CloudContext<'_>,
    size_mib: u64,
    cloud_properties: &Object,
    vm_cid: Option<&VmCid>,
) -> Result<CallResult, CpiError> {
    let view = ctx.cluster().await?;
    let mut node = match vm_cid {
        Some(vm) => ctx.vm(vm).await?.map(|r| r.node),
        None => None,
    };
    if node.is_none() {
        let requested = cloud_properties.get("node").and_then(Value::as_str);
        let configured = &ctx.config().await?.placement.node;
        let pinned =
            placement::pinned(requested, configured.as_ref()).map_err(DiskError::Placement)?;
        let demand = VmDemand {
            pinned_node: pinned,
            ..Default::default()
        };
        node = Some(
            placement::choose_node(&demand, &view.nodes, &view.vms)
                .map_err(DiskError::Placement)?,
        );
    }
    let node = node.unwrap_or_default();
    let docker = ctx.node(&node).await?;
    let cid = DiskCid::generate();
    let record = DiskRecord {
        cid: cid.clone(),
        node: node.clone(),
        size_mib,
        vm: None,
        moving: DiskMove::Settled,
        created_at: Timestamp::now(),
        metadata: Default::default(),
    };
    // The record first: a killed process leaves a record delete_disk can follow.
    ctx.save_disk(&record).await?;
    let volume_labels = HashMap::from([
        (labels::DISK_CID.to_string(), cid.to_string()),
        (labels::SIZE_MIB.to_string(), size_mib.to_string()),
    ]);
    if let Err(e) = docker.create_volume(cid.as_str(), volume_labels).await {
        let _ = ctx.delete_disk_record(&cid).await;
        return Err(e.into());
    }
    tracing::info!(disk = %cid, node = %node, size_mib, "disk created");
    Ok(CallResult::DiskCreated(cid))
}

/// `delete_disk`: idempotent; an attached disk is refused, naming the VM.
pub(crate) async fn delete(ctx: &CloudContext<'_>, cid: &DiskCid) -> Result<CallResult, CpiError> {
    let Some(mut disk) = ctx.disk_if_any(cid).await? else {
        return Ok(CallResult::Done);
    };
    if let Some(vm) = ctx.attached_vm(&disk).await? {
        let cid = cid.clone();
        return Err(DiskError::DeleteAttached { cid, vm }.into());
    }
    ctx.remove_stray_copies(&mut disk).await;
    if let Some(node) = disk.moving.stray_copy() {
        // Forgetting the record now would leave that copy of the data on the node for good.
        let (cid, node) = (cid.clone(), node.clone());
        return Err(DiskError::CopyLeft { cid, node }.into());
    }
    if ctx.cluster().await?.registered(&disk.node)?.is_some() {
        let docker = ctx.node(&disk.node).await?;
        let dir = ctx.disks_dir_if_any(&disk.node).await?;
        ctx.ensure_unmounted(&docker, dir.as_deref(), cid, None)
            .await?;
        docker.remove_volume(cid.as_str()).await?;
    }
    ctx.delete_disk_record(cid).await?;
    Ok(CallResult::Done)
}

/// `has_disk`: the record and the volume on its node.
pub(crate) async fn has(ctx: &CloudContext<'_>, cid: &DiskCid) -> Result<CallResult, CpiError> {
    let Some(mut disk) = ctx.disk_if_any(cid).await? else {
        return Ok(CallResult::Exists(false));
    };
    ctx.remove_stray_copies(&mut disk).await;
    if ctx.cluster().await?.registered(&disk.node)?.is_none() {
        return Ok(CallResult::Exists(false));
    }
    let docker = ctx.node(&disk.node).await?;
    Ok(CallResult::Exists(
        docker.volume_exists(cid.as_str()).await?,
    ))
}

/// `set_disk_metadata`: merged into the disk's index record.
pub(crate) async fn set_metadata(
    ctx: &CloudContext<'_>,
    cid: &DiskCid,
    metadata: &Object,
) -> Result<CallResult, CpiError> {
    let mut disk = ctx.disk(cid).await?;
    for (k, v) in metadata {
        disk.metadata.insert(k.clone(), v.clone());
    }
    ctx.save_disk(&disk).await?;
    Ok(CallResult::Done)
}

/// `resize_disk`: grows a detached disk for real (its image, and the ext4 filesystem in it,
/// data kept) on its node; a disk never attached gets its image of the new size at its
/// first attach. Shrinking is refused with `NotSupported` (the director then copies the
/// data to a new disk), and so is an attached disk (the director detaches first).
pub(crate) async fn resize(
    ctx: &CloudContext<'_>,
    cid: &DiskCid,
    new_size_mib: u64,
) -> Result<CallResult, CpiError> {
    let mut disk = ctx.disk(cid).await?;
    if new_size_mib < disk.size_mib {
        let (cid, from, to) = (cid.clone(), disk.size_mib, new_size_mib);
        return Err(DiskError::Shrink { cid, from, to }.into());
    }
    if let Some(vm) = ctx.attached_vm(&disk).await? {
        let cid = cid.clone();
        return Err(DiskError::ResizeAttached { cid, vm }.into());
    }
    ctx.remove_stray_copies(&mut disk).await;
    if let Some(dir) = ctx.disks_dir_if_any(&disk.node).await? {
        let docker = ctx.node(&disk.node).await?;
        if !docker.volume_exists(cid.as_str()).await? {
            return Err(volume_gone(&disk));
        }
        docker
            .grow_disk(&dir, cid.as_str(), new_size_mib)
            .await
            .map_err(|e| grow_error(e, cid))?;
    }
    disk.size_mib = new_size_mib;
    ctx.save_disk(&disk).await?;
    tracing::info!(disk = %cid, node = %disk.node, size_mib = new_size_mib, "disk resized");
    Ok(CallResult::Done)
}

/// The mounter's refusals of a grow, said for the director: a disk the node still holds
/// (a lazy unmount not finished) is worth a retry; an image larger than the record (a
/// shrink) is `NotSupported`.
fn grow_error(e: crate::docker::DockerError, cid: &DiskCid) -> DiskError {
    use crate::docker::{DockerError, mounter};
    let cid = cid.clone();
    match e {
        DockerError::Mount { code, detail, .. } if code == mounter::IN_USE => {
            DiskError::GrowInUse { cid, detail }
        }
        DockerError::Mount { detail, .. } if detail.contains("does not shrink") => {
            DiskError::GrowShrinks { cid, detail }
        }
        e => e.into(),
    }
}

/// `get_disks`: the persistent disks the VM's node has attached to it.
pub(crate) async fn get_disks(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
) -> Result<CallResult, CpiError> {
    let (_, docker) = super::vm::find_existing(ctx, vm_cid).await?;
    let names = attach::disks_of(ctx, &docker, vm_cid).await?;
    let disks = names
        .iter()
        .filter_map(|name| match DiskCid::parse(name) {
            Ok(cid) => Some(cid),
            Err(_) => {
                let name = crate::echo::printable(name);
                tracing::warn!(vm = %vm_cid, "get_disks: {name} is not a disk cid; not answered");
                None
            }
        })
        .collect();
    Ok(CallResult::Disks(disks))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::{DockerError, mounter};
    use crate::protocol::ErrorKind;

    fn refusal(code: i64, detail: &str) -> DockerError {
        DockerError::Mount {
            node: "n1".into(),
            command: "grow".into(),
            code,
            detail: detail.into(),
        }
    }

    #[test]
    fn the_mounters_refusals_of_a_grow_are_said_for_the_director() {
        let cid = DiskCid::generate();
        let e = CpiError::from(grow_error(refusal(mounter::IN_USE, "busy"), &cid));
        assert_eq!((e.kind, e.ok_to_retry), (ErrorKind::CloudError, true));
        assert_eq!(
            e.message,
            format!("resize_disk: disk {cid} is still in use on its node: busy")
        );
        let e = CpiError::from(grow_error(refusal(1, "the image does not shrink"), &cid));
        assert_eq!(e.kind, ErrorKind::NotSupported);
        let e = CpiError::from(grow_error(refusal(1, "other"), &cid));
        assert_eq!(e.kind, ErrorKind::CloudError);
        assert_eq!(
            e.message,
            "node n1: mc-mounter grow failed (exit code 1): other"
        );
    }
}
