//! delete_vm, has_vm, reboot_vm and set_vm_metadata: each finds the VM and its node with
//! one etcd transaction (the cluster view) and then talks to that node only.

use serde_json::Value;

use super::ephemeral_volume;
use crate::cloud::CloudContext;
use crate::cluster::{VmRecord, VmState, claims, index};
use crate::docker::NodeDocker;
use crate::protocol::{CallResult, CpiError, ErrorKind, Object, VmCid};

/// The VM's index record and a client for its node; `None` when the index has no record.
async fn find(
    ctx: &CloudContext<'_>,
    cid: &VmCid,
) -> Result<Option<(VmRecord, NodeDocker)>, CpiError> {
    let view = ctx.view().await?;
    let Some(record) = view.vm(cid)?.cloned() else {
        return Ok(None);
    };
    if view.registered(&record.node)?.is_none() {
        return Err(CpiError::cloud(
            format!(
                "VM {cid} is on node {}, which is no longer registered in etcd",
                record.node
            ),
            false,
        ));
    }
    let docker = ctx.node_docker(&view, &record.node).await?;
    let mut record = record;
    if record.recreating {
        super::recreate::repair(ctx, &mut record, &docker).await?;
    }
    Ok(Some((record, docker)))
}

/// The VM's record and node, or `VMNotFound`.
pub async fn find_existing(
    ctx: &CloudContext<'_>,
    cid: &VmCid,
) -> Result<(VmRecord, NodeDocker), CpiError> {
    find(ctx, cid).await?.ok_or_else(|| not_found(cid))
}

fn not_found(cid: &VmCid) -> CpiError {
    CpiError::new(ErrorKind::VmNotFound, format!("VM {cid} does not exist"))
}

/// `delete_vm`: removes the container (and a `-previous` one, or a successor, that a
/// killed re-creation left), its ephemeral volume, then the record; its persistent disks survive and are detached in
/// the index. An unknown cid is success (the director and create-env retry deletes, and
/// create-env never detaches first). Nothing is repaired first: deleting must not depend
/// on the old container starting again.
pub async fn delete(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let keys = ctx.keys().await?;
    let etcd = ctx.etcd().await?;
    let view = ctx.view().await?;
    let Some(record) = view.vm(cid)?.cloned() else {
        return Ok(CallResult::Plain(Value::Null));
    };
    if view.registered(&record.node)?.is_some() {
        let docker = ctx.node_docker(&view, &record.node).await?;
        remove_from_node(&docker, cid, record.recreating).await?;
    } else {
        tracing::warn!(
            vm = %cid,
            "node {} is no longer registered; forgetting the VM without touching the node",
            record.node
        );
    }
    crate::cloud::disk::release_disks_of(ctx, cid).await?;
    claims::forget_vm(etcd, &keys, &record).await?;
    Ok(CallResult::Plain(Value::Null))
}

/// Rounds of removal before a VM's ephemeral volume still in use is an error.
const REMOVAL_ROUNDS: usize = 10;

/// How long a killed re-creation's last request may still be running in the daemon.
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// Removes every container of VM `cid` on its node (its own, a `-previous`, any other
/// carrying its label) and then its ephemeral volume. After a killed re-creation the
/// daemon may still be completing the dead process's create of the successor, so a volume
/// in use means another round, and the node is checked again after a grace period.
pub(super) async fn remove_from_node(
    docker: &NodeDocker,
    cid: &VmCid,
    after_killed_recreation: bool,
) -> Result<(), CpiError> {
    let volume = ephemeral_volume(cid);
    let label = format!("{}={cid}", super::labels::VM_CID);
    for _ in 0..REMOVAL_ROUNDS {
        docker.remove_container(cid).await?;
        docker
            .remove_container(&super::recreate::previous_name(cid))
            .await?;
        for c in docker.containers_with_label(&label).await? {
            if let Some(id) = c.id {
                docker.remove_container(&id).await?;
            }
        }
        let removed = docker.remove_volume_if_unused(&volume).await?;
        if removed && !after_killed_recreation {
            return Ok(());
        }
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
        if removed
            && docker.containers_with_label(&label).await?.is_empty()
            && !docker.volume_exists(&volume).await?
        {
            return Ok(());
        }
    }
    Err(CpiError::cloud(
        format!(
            "node {}: VM {cid} still has containers or its volume {volume} after {REMOVAL_ROUNDS} rounds of removal",
            docker.name
        ),
        true,
    ))
}

/// `has_vm`: whether the container exists on its node. A finished record whose container is
/// gone is removed from the index (the node wins).
pub async fn has(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let Some((record, docker)) = find(ctx, cid).await? else {
        return Ok(CallResult::Plain(Value::Bool(false)));
    };
    let exists = docker.inspect_container(cid).await?.is_some();
    if !exists && record.state == VmState::Created {
        docker.remove_volume(&ephemeral_volume(cid)).await?;
        crate::cloud::disk::release_disks_of(ctx, cid).await?;
        let keys = ctx.keys().await?;
        claims::forget_vm(ctx.etcd().await?, &keys, &record).await?;
        tracing::warn!(vm = %cid, node = %record.node, "container gone; index record, address claims and ephemeral volume removed");
    }
    Ok(CallResult::Plain(Value::Bool(exists)))
}

/// `reboot_vm`: restarts the container (same IP, same volumes).
pub async fn reboot(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<CallResult, CpiError> {
    let (_, docker) = find(ctx, cid).await?.ok_or_else(|| not_found(cid))?;
    if docker.inspect_container(cid).await?.is_none() {
        return Err(not_found(cid));
    }
    docker.restart_container(cid, 30).await?;
    Ok(CallResult::Plain(Value::Null))
}

/// `set_vm_metadata`: merged into the VM's index record, where `cpi nodes` and operators
/// see it (Docker labels cannot change on an existing container).
pub async fn set_metadata(
    ctx: &CloudContext<'_>,
    cid: &VmCid,
    metadata: &Object,
) -> Result<CallResult, CpiError> {
    let keys = ctx.keys().await?;
    let etcd = ctx.etcd().await?;
    let mut record = index::get::<VmRecord>(etcd, &keys.vm(cid))
        .await?
        .ok_or_else(|| not_found(cid))?;
    for (k, v) in metadata {
        record.metadata.insert(k.clone(), v.clone());
    }
    index::put(etcd, &keys.vm(cid), &record).await?;
    Ok(CallResult::Plain(Value::Null))
}
