//! attach_disk and detach_disk: validated before the VM is touched, then the VM's
//! container is re-created with the new set of disks (see `vm::recreate`).

use std::collections::BTreeMap;

use serde_json::Value;

use super::{moving, record, save, volume_gone};
use crate::cloud::CloudContext;
use crate::cloud::vm::agent_files::disk_hint;
use crate::cloud::vm::{self, recreate};
use crate::cluster::{DiskRecord, VmRecord, VmState, index};
use crate::docker::{NodeDocker, volume_copy};
use crate::protocol::{CallResult, CpiError, DiskCid, ErrorKind, VmCid};

/// The VM a disk is attached to according to the index, if that VM still exists.
pub(crate) async fn attached_vm(
    ctx: &CloudContext<'_>,
    disk: &DiskRecord,
) -> Result<Option<VmCid>, CpiError> {
    let Some(vm) = &disk.vm else {
        return Ok(None);
    };
    let keys = ctx.keys().await?;
    let exists = index::get::<VmRecord>(ctx.etcd().await?, &keys.vm(vm))
        .await?
        .is_some();
    Ok(exists.then(|| vm.clone()))
}

/// The disks really mounted in the VM's container (disk cid -> volume).
pub(super) async fn mounted_disks_of(
    docker: &crate::docker::NodeDocker,
    vm_cid: &VmCid,
) -> Result<BTreeMap<String, String>, CpiError> {
    let inspect = docker
        .inspect_container(vm_cid.as_str())
        .await?
        .ok_or_else(|| {
            CpiError::new(
                ErrorKind::VmNotFound,
                format!("VM {vm_cid} has no container"),
            )
        })?;
    Ok(recreate::mounted_disks(&inspect))
}

/// `attach_disk`: the disk appears in the VM at `/warden-cpi-dev/<disk cid>`; the hint is
/// returned (v2) and written into the agent settings. Attaching an attached disk again
/// returns the same hint and changes nothing.
pub async fn attach(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
    disk_cid: &DiskCid,
) -> Result<CallResult, CpiError> {
    let (mut vm, docker) = vm::find_existing(ctx, vm_cid).await?;
    let mut disk = record(ctx, disk_cid).await?;
    moving::remove_stray_copies(ctx, &mut disk).await;
    let mut mounted = mounted_disks_of(&docker, vm_cid).await?;
    let hint = CallResult::DiskAttached {
        hint: Value::String(disk_hint(disk_cid)),
    };
    if mounted.contains_key(disk_cid.as_str()) {
        if disk.vm.as_ref() != Some(vm_cid) {
            disk.vm = Some(vm_cid.clone());
            save(ctx, &disk).await?;
        }
        return Ok(hint);
    }
    if let Some(other) = attached_vm(ctx, &disk).await?
        && other != *vm_cid
    {
        return Err(CpiError::cloud(
            format!(
                "attach_disk: disk {disk_cid} is attached to VM {other}; detach it there first"
            ),
            false,
        ));
    }
    if disk.node != vm.node {
        moving::move_disk(ctx, &mut disk, &vm.node).await?;
    } else if !docker.volume_exists(disk_cid.as_str()).await? {
        return Err(volume_gone(&disk));
    } else {
        ensure_unmounted(ctx, &docker, disk_cid).await?;
    }
    mounted.insert(disk_cid.to_string(), disk_cid.to_string());
    recreate::recreate(ctx, &mut vm, &docker, &mounted).await?;
    disk.vm = Some(vm_cid.clone());
    save(ctx, &disk).await?;
    tracing::info!(vm = %vm_cid, disk = %disk_cid, node = %vm.node, "disk attached");
    Ok(hint)
}

/// Makes sure no container on the node mounts disk `disk_cid` before a VM gets it, whatever
/// the index says: two VMs writing one disk would corrupt it. Copy helpers a killed move
/// left and VMs the index does not know (abandoned by a failed create_vm) are removed; any
/// other holder is an error naming it.
pub(super) async fn ensure_unmounted(
    ctx: &CloudContext<'_>,
    docker: &NodeDocker,
    disk_cid: &DiskCid,
) -> Result<(), CpiError> {
    for c in docker.containers_using_volume(disk_cid.as_str()).await? {
        let label = |key: &str| c.labels.as_ref().and_then(|l| l.get(key).cloned());
        // A copy helper a killed move or snapshot left (the one list finds them too).
        if label(volume_copy::HELPER_LABEL).as_deref() == Some(disk_cid.as_str())
            && let Some(id) = &c.id
        {
            docker.remove_container(id).await?;
            continue;
        }
        // A label that is not a VM cid is not a VM of this CPI.
        let holder = label(vm::labels::VM_CID).and_then(|h| VmCid::parse(&h).ok());
        let name = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .or(c.id.clone())
            .unwrap_or_default();
        let Some(holder) = holder else {
            return Err(CpiError::cloud(
                format!(
                    "disk {disk_cid} is mounted by container {name} on node {}, which is not a VM of this CPI",
                    docker.name
                ),
                false,
            ));
        };
        match vm::abandoned::record_now(ctx, &holder).await? {
            None => {
                let why = format!("mounted disk {disk_cid}");
                vm::abandoned::remove(docker, &holder, &why).await?;
            }
            Some(record) => {
                return Err(CpiError::cloud(
                    format!(
                        "disk {disk_cid} is mounted by VM {holder} (container {name}) on node {}; detach it there first",
                        docker.name
                    ),
                    record.state == VmState::Creating,
                ));
            }
        }
    }
    Ok(())
}

/// `detach_disk`: the reverse; a disk that is not attached (or unknown) is success.
pub async fn detach(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
    disk_cid: &DiskCid,
) -> Result<CallResult, CpiError> {
    let (mut vm, docker) = vm::find_existing(ctx, vm_cid).await?;
    let mut mounted = mounted_disks_of(&docker, vm_cid).await?;
    let disk = match record(ctx, disk_cid).await {
        Ok(d) => Some(d),
        Err(e) if e.kind == ErrorKind::DiskNotFound => None,
        Err(e) => return Err(e),
    };
    if mounted.remove(disk_cid.as_str()).is_some() {
        recreate::recreate(ctx, &mut vm, &docker, &mounted).await?;
        tracing::info!(vm = %vm_cid, disk = %disk_cid, "disk detached");
    }
    if let Some(mut disk) = disk
        && disk.vm.as_ref() == Some(vm_cid)
    {
        disk.vm = None;
        save(ctx, &disk).await?;
    }
    Ok(CallResult::Plain(Value::Null))
}

/// For create_vm: the disks to mount in a new VM on the node of `docker` (disk cid ->
/// volume), moved to that node where needed. Unknown disks and disks attached to another
/// VM are refused before anything is made; so is a disk whose volume is gone from its node
/// (Docker would otherwise mount a new, empty volume of that name).
pub async fn disks_for_new_vm(
    ctx: &CloudContext<'_>,
    docker: &NodeDocker,
    disk_cids: &[DiskCid],
) -> Result<BTreeMap<String, String>, CpiError> {
    let node = docker.name.as_str();
    let mut disks = Vec::new();
    for cid in disk_cids {
        let disk = record(ctx, cid).await?;
        if let Some(other) = attached_vm(ctx, &disk).await? {
            return Err(CpiError::cloud(
                format!("create_vm: disk {cid} is attached to VM {other}"),
                false,
            ));
        }
        if disk.node == node {
            if !docker.volume_exists(cid.as_str()).await? {
                return Err(volume_gone(&disk));
            }
            ensure_unmounted(ctx, docker, cid).await?;
        }
        disks.push(disk);
    }
    let mut mounts = BTreeMap::new();
    for mut disk in disks {
        if disk.node != node {
            moving::move_disk(ctx, &mut disk, node).await?;
        }
        mounts.insert(disk.cid.to_string(), disk.cid.to_string());
    }
    Ok(mounts)
}

/// Releases every disk that the index says is attached to `vm_cid` (the VM is gone).
pub async fn release_disks_of(ctx: &CloudContext<'_>, vm_cid: &VmCid) -> Result<(), CpiError> {
    let keys = ctx.keys().await?;
    let etcd = ctx.etcd().await?;
    let resp = etcd
        .client()
        .get(
            keys.disks(),
            Some(etcd_client::GetOptions::new().with_prefix()),
        )
        .await
        .map_err(|e| etcd.error("reading the disk index", &e))?;
    for kv in resp.kvs() {
        if let Ok(mut disk) = serde_json::from_slice::<DiskRecord>(kv.value())
            && disk.vm.as_ref() == Some(vm_cid)
        {
            disk.vm = None;
            save(ctx, &disk).await?;
        }
    }
    Ok(())
}
