//! attach_disk and detach_disk, live: the disk appears in (or leaves) the running VM's
//! `/warden-cpi-dev` as a block device, through the node's disk tree (see
//! [`crate::disk_mounts`]), and its hint is written into (or out of) the agent's settings.
//! No process of the VM restarts, so the agent can mount two disks at once and migrate
//! between them as on any IaaS. A new disk is formatted on its first attach; a disk on
//! another node is moved first (copied and checked before the VM sees it).

use bollard::models::ContainerInspectResponse;
use serde_json::Value;

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use crate::cloud::context::disks::volume_gone;
use crate::cloud::disk::error::DiskError;
use crate::cloud::vm::agent_files::{self, DISK_MOUNT_ROOT, SETTINGS_PATH};
use crate::cloud::vm::block_disks::{not_an_image, prepare_block_disk};
use crate::cloud::vm::{find_existing, inside};
use crate::cluster::DiskRecord;
use crate::labels::vm as labels;
use crate::protocol::{CallResult, CpiError, DiskCid, VmCid};

/// The VM's container, or `VMNotFound`.
async fn container_of(
    docker: &NodeHandle<'_>,
    vm_cid: &VmCid,
) -> Result<ContainerInspectResponse, CpiError> {
    docker.inspect(vm_cid.as_str()).await?.ok_or_else(|| {
        DiskError::NoContainer {
            vm: vm_cid.clone(),
            node: docker.name.clone(),
        }
        .into()
    })
}

/// How a VM takes persistent disks, by the CPI version that made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum VmDisks {
    /// Block devices in its folder of the node's disk tree (every VM made now).
    Block,
    /// Folders bound into its folder of the disk tree; its agent mounts them as folders.
    Bound,
    /// Docker volume mounts fixed at creation.
    Fixed,
}

impl VmDisks {
    fn of(c: &ContainerInspectResponse) -> VmDisks {
        let label = c.config.as_ref().and_then(|c| c.labels.as_ref());
        if label.and_then(|l| l.get(labels::DISKS)).map(String::as_str) == Some(labels::BLOCK_DISKS)
        {
            return VmDisks::Block;
        }
        let tree = c.mounts.iter().flatten().any(|m| {
            m.destination.as_deref() == Some(DISK_MOUNT_ROOT) && m.typ.as_deref() == Some("bind")
        });
        if tree { VmDisks::Bound } else { VmDisks::Fixed }
    }
}

/// Disks mounted as Docker volumes at their hints: the disks of a VM made before disks
/// attached live.
fn volume_disks(c: &ContainerInspectResponse) -> Vec<String> {
    let prefix = format!("{DISK_MOUNT_ROOT}/");
    c.mounts
        .iter()
        .flatten()
        .filter_map(|m| Some(m.destination.as_deref()?.strip_prefix(&prefix)?.to_string()))
        .collect()
}

/// The persistent disks of the VM as its node has them.
pub(super) async fn disks_of(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    vm_cid: &VmCid,
) -> Result<Vec<String>, CpiError> {
    let container = container_of(docker, vm_cid).await?;
    if VmDisks::of(&container) == VmDisks::Fixed {
        return Ok(volume_disks(&container));
    }
    let dir = ctx.disks_dir(&docker.name).await?;
    let mut disks = docker.disks_bound_in(&dir, vm_cid.as_str()).await?;
    disks.sort();
    Ok(disks)
}

/// Writes disk `disk`'s hint into (or out of) the agent settings in the VM.
async fn set_hint(
    docker: &NodeHandle<'_>,
    vm_cid: &VmCid,
    disk: &DiskCid,
    attached: bool,
) -> Result<(), DiskError> {
    let vm = || vm_cid.clone();
    let file = docker
        .read_file(vm_cid, SETTINGS_PATH)
        .await?
        .ok_or_else(|| DiskError::NoAgentSettings {
            vm: vm(),
            path: SETTINGS_PATH,
        })?;
    let mut settings: Value = serde_json::from_slice(&file.data)
        .map_err(|source| DiskError::SettingsUnreadable { vm: vm(), source })?;
    agent_files::set_disk_hint(&mut settings, disk, attached);
    let archive = agent_files::settings_archive(&settings).map_err(DiskError::SettingsPack)?;
    Ok(docker.upload_archive(vm_cid, "/", archive).await?)
}

/// `attach_disk`: the disk appears in the running VM at `/warden-cpi-dev/<disk cid>`; the
/// hint is returned (v2) and written into the agent settings. Attaching an attached disk
/// again returns the same hint and changes nothing.
pub(crate) async fn attach(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
    disk_cid: &DiskCid,
) -> Result<CallResult, CpiError> {
    let (vm, docker) = find_existing(ctx, vm_cid).await?;
    let mut disk = ctx.disk(disk_cid).await?;
    ctx.remove_stray_copies(&mut disk).await;
    let container = container_of(&docker, vm_cid).await?;
    let hint = CallResult::DiskAttached {
        hint: agent_files::disk_hint(disk_cid),
    };
    if VmDisks::of(&container) != VmDisks::Block {
        attach_to_earlier(ctx, &docker, vm_cid, &mut disk).await?;
        return Ok(hint);
    }
    if let Some(other) = ctx.attached_vm(&disk).await?
        && other != *vm_cid
    {
        let cid = disk_cid.clone();
        return Err(DiskError::AttachedElsewhere { cid, vm: other }.into());
    }
    let dir = ctx.disks_dir(&vm.node).await?;
    bring_to_node(ctx, &docker, &dir, vm_cid, &mut disk).await?;
    let found = docker
        .attach_block_disk(&dir, vm_cid.as_str(), disk_cid.as_str(), disk.size_mib)
        .await
        .map_err(|e| not_an_image(e, disk_cid))?;
    prepare_block_disk(&docker, &dir, vm_cid, disk_cid, found).await?;
    finish_attach(ctx, &docker, vm_cid, &mut disk).await?;
    // After the record names the VM: both write the record.
    ctx.remove_old_copy(&mut disk).await;
    tracing::info!(vm = %vm_cid, disk = %disk_cid, node = %vm.node, "disk attached");
    Ok(hint)
}

/// attach_disk to a VM made by an earlier version (folders, or fixed volume mounts): a
/// disk it has already is success (the index says so again); any other is refused, as
/// its agent mounts folders, not the block devices disks are now.
async fn attach_to_earlier(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    vm_cid: &VmCid,
    disk: &mut DiskRecord,
) -> Result<(), CpiError> {
    let has = disks_of(ctx, docker, vm_cid).await?;
    if !has.iter().any(|d| d == disk.cid.as_str()) {
        return Err(DiskError::MadeEarlier { vm: vm_cid.clone() }.into());
    }
    if disk.vm.as_ref() != Some(vm_cid) {
        disk.vm = Some(vm_cid.clone());
        ctx.save_disk(disk).await?;
    }
    Ok(())
}

/// The disk's volume on the VM's node, held by nothing else there: moved from another
/// node, or found on this one. A retried attach finds the disk in the VM already; it is put
/// there again (which changes nothing) so that a format the first try did not finish is
/// done.
async fn bring_to_node(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    dir: &str,
    vm_cid: &VmCid,
    disk: &mut DiskRecord,
) -> Result<(), CpiError> {
    if disk.node != docker.name {
        return ctx.move_disk(disk, &docker.name).await;
    }
    let (exists, held) = futures_util::future::join(
        docker.volume_exists(disk.cid.as_str()),
        ctx.ensure_unmounted(docker, Some(dir), &disk.cid, Some(vm_cid)),
    )
    .await;
    if !exists? {
        return Err(volume_gone(disk));
    }
    held?;
    Ok(())
}

/// After the disk is in the VM: the hint in the agent settings, the VM in the disk's record.
async fn finish_attach(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    vm_cid: &VmCid,
    disk: &mut DiskRecord,
) -> Result<(), CpiError> {
    set_hint(docker, vm_cid, &disk.cid, true).await?;
    if disk.vm.as_ref() != Some(vm_cid) {
        disk.vm = Some(vm_cid.clone());
        ctx.save_disk(disk).await?;
    }
    Ok(())
}

/// `detach_disk`: the disk leaves the running VM and its settings; a disk that is not
/// attached (or unknown) is success.
pub(crate) async fn detach(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
    disk_cid: &DiskCid,
) -> Result<CallResult, CpiError> {
    let (vm, docker) = find_existing(ctx, vm_cid).await?;
    let container = container_of(&docker, vm_cid).await?;
    let disk = ctx.disk_if_any(disk_cid).await?;
    if VmDisks::of(&container) != VmDisks::Fixed {
        let dir = ctx.disks_dir(&vm.node).await?;
        // Removing the device does not take the disk from a mount the VM made of it (the
        // agent's unmount_disk may have failed, or not been asked): such a disk would look
        // free while the VM writes on. Detached means gone from the VM, as on any IaaS.
        let taken = inside::unmount_disk(&docker, vm_cid, disk_cid).await?;
        if !taken.is_empty() {
            let taken: Vec<String> = taken.iter().map(|p| crate::echo::printable(p)).collect();
            tracing::info!(vm = %vm_cid, disk = %disk_cid, "unmounted in the VM: {}", taken.join(", "));
        }
        docker
            .unbind_disk(&dir, vm_cid.as_str(), disk_cid.as_str())
            .await?;
        set_hint(&docker, vm_cid, disk_cid, false).await?;
        tracing::info!(vm = %vm_cid, disk = %disk_cid, "disk detached");
    } else if volume_disks(&container)
        .iter()
        .any(|d| d == disk_cid.as_str())
    {
        // Its container keeps the volume until the VM is deleted (the director detaches
        // before it deletes, so `bosh recreate` moves such a VM to live disks); any other
        // VM that wants the disk meanwhile is refused, as the container still mounts it.
        tracing::warn!(vm = %vm_cid, disk = %disk_cid, "VM made with fixed disks: detached in the index only; the disk stays mounted until the VM is deleted");
    }
    if let Some(mut disk) = disk
        && disk.vm.as_ref() == Some(vm_cid)
    {
        disk.vm = None;
        ctx.save_disk(&disk).await?;
    }
    Ok(CallResult::Done)
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use bollard::models::{ContainerConfig, MountPoint};

    use super::*;

    fn container(block_label: bool, mounts: &[(&str, &str)]) -> ContainerInspectResponse {
        let labels = block_label
            .then(|| HashMap::from([(labels::DISKS.to_string(), labels::BLOCK_DISKS.to_string())]));
        ContainerInspectResponse {
            config: Some(ContainerConfig {
                labels,
                ..Default::default()
            }),
            mounts: Some(
                mounts
                    .iter()
                    .map(|(dest, typ)| MountPoint {
                        destination: Some(dest.to_string()),
                        typ: Some(typ.to_string()),
                        ..Default::default()
                    })
                    .collect(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn how_a_vm_takes_disks_is_read_from_its_container() {
        assert_eq!(VmDisks::of(&container(true, &[])), VmDisks::Block);
        assert_eq!(
            VmDisks::of(&container(false, &[(DISK_MOUNT_ROOT, "bind")])),
            VmDisks::Bound
        );
        assert_eq!(VmDisks::of(&container(false, &[])), VmDisks::Fixed);
    }

    #[test]
    fn fixed_disks_are_the_volumes_mounted_at_their_hints() {
        let hint = format!("{DISK_MOUNT_ROOT}/disk-1");
        let c = container(false, &[(&hint, "volume"), ("/var/vcap/data", "volume")]);
        assert_eq!(volume_disks(&c), vec!["disk-1"]);
    }
}
