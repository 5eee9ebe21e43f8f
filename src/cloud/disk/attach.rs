//! attach_disk and detach_disk: validated before the VM is touched, then the VM's
//! container is re-created with the new set of disks (see `vm::recreate`).

use std::collections::BTreeMap;

use serde_json::Value;

use crate::cloud::CloudContext;
use crate::cloud::session::Session;
use crate::cloud::session::disks::volume_gone;
use crate::cloud::session::moving::StreamedDisk;
use crate::cloud::vm::agent_files::disk_hint;
use crate::cloud::vm::{find_existing, recreate};
use crate::cluster::{DiskRecord, VmRecord};
use crate::docker::NodeDocker;
use crate::protocol::{CallResult, CpiError, DiskCid, ErrorKind, VmCid};

/// The disks really mounted in the VM's container (disk cid -> volume).
pub(super) async fn mounted_disks_of(
    s: &Session<'_>,
    docker: &NodeDocker,
    vm_cid: &VmCid,
) -> Result<BTreeMap<String, String>, CpiError> {
    let inspect = s.inspect(docker, vm_cid.as_str()).await?.ok_or_else(|| {
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
    let s = Session::new(ctx);
    let (mut vm, docker) = find_existing(&s, vm_cid).await?;
    let mut disk = s.disk(disk_cid).await?;
    s.remove_stray_copies(&mut disk).await;
    let mut mounted = mounted_disks_of(&s, &docker, vm_cid).await?;
    let hint = CallResult::DiskAttached {
        hint: Value::String(disk_hint(disk_cid)),
    };
    if mounted.contains_key(disk_cid.as_str()) {
        if disk.vm.as_ref() != Some(vm_cid) {
            disk.vm = Some(vm_cid.clone());
            s.save_disk(&disk).await?;
        }
        return Ok(hint);
    }
    if let Some(other) = s.attached_vm(&disk).await?
        && other != *vm_cid
    {
        return Err(CpiError::cloud(
            format!(
                "attach_disk: disk {disk_cid} is attached to VM {other}; detach it there first"
            ),
            false,
        ));
    }
    let streamed = if disk.node != vm.node {
        Some(s.stream_disk(&mut disk, &vm.node).await?)
    } else if !docker.volume_exists(disk_cid.as_str()).await? {
        return Err(volume_gone(&disk));
    } else {
        s.ensure_unmounted(&docker, disk_cid).await?;
        None
    };
    mounted.insert(disk_cid.to_string(), disk_cid.to_string());
    match streamed {
        None => recreate::recreate(&s, &mut vm, &docker, &mounted).await?,
        Some(streamed) => {
            recreate_with_moved(&s, &mut vm, &docker, &mounted, &mut disk, streamed).await?
        }
    }
    disk.vm = Some(vm_cid.clone());
    s.save_disk(&disk).await?;
    tracing::info!(vm = %vm_cid, disk = %disk_cid, node = %vm.node, "disk attached");
    Ok(hint)
}

/// Largest copy whose check runs while the VM is re-created. The old container is
/// stopped for the rest of the check, so a larger disk is checked first, with the VM still
/// running (about 4 s of reading back at the benchmark's 250 MB/s).
const CHECK_BESIDE_RECREATION_MAX_BYTES: u64 = 1 << 30;

/// The re-creation for a disk just streamed to the VM's node: the copy is checked while
/// the re-creation is prepared (files read, old container stopped, successor made), and
/// the successor starts only on a checked disk. Once checked, the disk lives on the VM's
/// node, and its source goes while the successor starts. A failed check brings the old
/// container back and removes the unchecked copy.
async fn recreate_with_moved(
    s: &Session<'_>,
    vm: &mut VmRecord,
    docker: &NodeDocker,
    mounted: &BTreeMap<String, String>,
    disk: &mut DiskRecord,
    streamed: StreamedDisk,
) -> Result<(), CpiError> {
    if streamed.bytes() > CHECK_BESIDE_RECREATION_MAX_BYTES {
        s.finish_or_abandon_move(disk, streamed).await?;
        let (recreated, ()) = futures_util::future::join(
            recreate::recreate(s, vm, docker, mounted),
            s.remove_old_copy(disk),
        )
        .await;
        return recreated;
    }
    let (checked_tx, checked_rx) = tokio::sync::oneshot::channel();
    let mut check_failed = false;
    let mover = async {
        let checked = s.finish_move(disk, streamed).await;
        check_failed = checked.is_err();
        let passed = !check_failed;
        if let Err(Err(e)) = checked_tx.send(checked) {
            // The re-creation ended before it waited for the check: say why the copy was
            // not taken.
            tracing::warn!(disk = %disk.cid, "the moved copy failed its check: {}", e.message);
        }
        if passed {
            s.remove_old_copy(disk).await;
        }
    };
    let ready = async {
        checked_rx
            .await
            .unwrap_or_else(|_| Err(CpiError::cpi("the disk check ended without a verdict")))
    };
    let (recreated, ()) = futures_util::future::join(
        recreate::recreate_when(s, vm, docker, mounted, ready),
        mover,
    )
    .await;
    if check_failed {
        // The successor that mounted the copy is gone once the old container is back; if
        // it could not be brought back, the removal fails and the mark stays for the next
        // call.
        s.abandon_move(disk).await;
    }
    recreated
}

/// `detach_disk`: the reverse; a disk that is not attached (or unknown) is success.
pub async fn detach(
    ctx: &CloudContext<'_>,
    vm_cid: &VmCid,
    disk_cid: &DiskCid,
) -> Result<CallResult, CpiError> {
    let s = Session::new(ctx);
    let (mut vm, docker) = find_existing(&s, vm_cid).await?;
    let mut mounted = mounted_disks_of(&s, &docker, vm_cid).await?;
    let disk = s.disk_if_any(disk_cid).await?;
    if mounted.remove(disk_cid.as_str()).is_some() {
        recreate::recreate(&s, &mut vm, &docker, &mounted).await?;
        tracing::info!(vm = %vm_cid, disk = %disk_cid, "disk detached");
    }
    if let Some(mut disk) = disk
        && disk.vm.as_ref() == Some(vm_cid)
    {
        disk.vm = None;
        s.save_disk(&disk).await?;
    }
    Ok(CallResult::Plain(Value::Null))
}
