//! delete_vm, has_vm, reboot_vm and set_vm_metadata: each finds the VM and its node with
//! one etcd transaction (the cluster view) and then talks to that node only.

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use crate::cloud::context::vms::not_found;
use crate::cluster::{VmRecord, VmState};
use crate::protocol::{CallResult, CpiError, Object, VmCid};

/// The VM's record and node, or `VMNotFound`.
pub(crate) async fn find_existing<'c>(
    ctx: &'c CloudContext<'_>,
    cid: &VmCid,
) -> Result<(VmRecord, NodeHandle<'c>), CpiError> {
    ctx.vm_and_node(cid).await?.ok_or_else(|| not_found(cid))
}

/// `delete_vm`: removes the container, its ephemeral volume and its disk binds, then the
/// record; its persistent disks survive and are detached in the index. An unknown cid is
/// success (the director and create-env retry deletes, and create-env never detaches
/// first). The director has stopped the jobs already (the agent's `stop`); create-env
/// has too, so the container is removed without stopping its jobs again.
pub(crate) async fn delete(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let view = ctx.cluster().await?;
    let Some(record) = ctx.vm(cid).await? else {
        return Ok(CallResult::Done);
    };
    if view.registered(&record.node)?.is_some() {
        let docker = ctx.node(&record.node).await?;
        ctx.remove_from_node(&docker, cid).await?;
    } else {
        tracing::warn!(
            vm = %cid,
            "node {} is no longer registered; forgetting the VM without touching the node",
            record.node
        );
    }
    ctx.release_disks_of(cid).await?;
    ctx.forget_vm(&record).await?;
    Ok(CallResult::Done)
}

/// `has_vm`: whether the container exists on its node. A finished record whose container is
/// gone is removed from the index (the node wins).
pub(crate) async fn has(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let Some((record, docker)) = ctx.vm_and_node(cid).await? else {
        return Ok(CallResult::Exists(false));
    };
    let exists = docker.inspect(cid.as_str()).await?.is_some();
    if !exists && record.state == VmState::Created {
        ctx.remove_from_node(&docker, cid).await?;
        ctx.release_disks_of(cid).await?;
        ctx.forget_vm(&record).await?;
        tracing::warn!(vm = %cid, node = %record.node, "container gone; index record, address claims, ephemeral volume and disk binds removed");
    }
    Ok(CallResult::Exists(exists))
}

/// Seconds a VM's jobs get to drain and stop before reboot_vm restarts its container.
const REBOOT_GRACE_SECONDS: u64 = 30;

/// `reboot_vm`: the jobs drained and stopped as the agent would, then the container
/// restarted (same IP, same disks; the start mounts the store again before any job).
pub(crate) async fn reboot(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let (_, docker) = find_existing(ctx, cid).await?;
    if docker.inspect(cid.as_str()).await?.is_none() {
        return Err(not_found(cid));
    }
    let grace = std::time::Duration::from_secs(REBOOT_GRACE_SECONDS);
    let how = super::graceful_stop::stop_jobs(&docker, cid, grace).await?;
    tracing::info!(vm = %cid, "jobs stopped before the reboot: {how:?}");
    docker.restart_container(cid, 10).await?;
    Ok(CallResult::Done)
}

/// `set_vm_metadata`: merged into the VM's index record, where `cpi nodes` and operators
/// see it (Docker labels cannot change on an existing container).
pub(crate) async fn set_metadata(
    ctx: &CloudContext<'_>,
    cid: &VmCid,
    metadata: &Object,
) -> Result<CallResult, CpiError> {
    let mut record = ctx.vm(cid).await?.ok_or_else(|| not_found(cid))?;
    for (k, v) in metadata {
        record.metadata.insert(k.clone(), v.clone());
    }
    ctx.save_vm(&record).await?;
    Ok(CallResult::Done)
}
