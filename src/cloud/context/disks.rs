//! Disk helpers shared by `vm/` (create_vm, delete_vm) and `disk/`: which VM a disk is
//! attached to, releasing a deleted VM's disks, and making sure no container holds a disk
//! before a VM gets it.

use bollard::models::ContainerSummary;

use super::{CloudContext, NodeHandle};
use crate::cloud::disk::error::DiskError;
use crate::cluster::{DiskRecord, VmState, index};
use crate::docker::volume_copy;
use crate::labels::vm as labels;
use crate::node_name::NodeName;
use crate::protocol::{CpiError, DiskCid, VmCid};

/// The error for a disk the index does not know.
pub(crate) fn not_found(cid: &DiskCid) -> CpiError {
    DiskError::NotFound { cid: cid.clone() }.into()
}

/// The error for a disk whose record names a node that no longer has its volume: the
/// CPI refuses to go on, as Docker would mount a new, empty volume of that name.
pub(crate) fn volume_gone(disk: &DiskRecord) -> CpiError {
    DiskError::VolumeGone {
        cid: disk.cid.clone(),
        node: disk.node.clone(),
    }
    .into()
}

/// Who has a disk bound in their folder of the node's disk tree (the names
/// `disk_holders` answers).
#[derive(Debug, PartialEq, Eq)]
enum BoundHolder {
    /// The VM the disk is meant for.
    Owner,
    /// A loop device (`loop<n>`, the number kept): detached from its VM, a mount of it
    /// there has not let go yet.
    Loop(String),
    /// A VM of this CPI.
    Vm(VmCid),
    /// Something that is not a VM of this CPI (its name, printable).
    Foreign(String),
}

impl BoundHolder {
    fn of(name: &str, owner: Option<&VmCid>) -> BoundHolder {
        if owner.is_some_and(|o| o.as_str() == name) {
            return BoundHolder::Owner;
        }
        if let Some(n) = name
            .strip_prefix("loop")
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        {
            return BoundHolder::Loop(n.to_string());
        }
        match VmCid::parse(name) {
            Ok(vm) => BoundHolder::Vm(vm),
            Err(_) => BoundHolder::Foreign(crate::protocol::call::printable(name)),
        }
    }
}

/// Who mounts a disk's volume, from the container's summary.
#[derive(Debug, PartialEq, Eq)]
enum VolumeHolder {
    /// A copy helper a killed move or snapshot left (its container id).
    CopyHelper(String),
    /// A VM of this CPI, through its container `container`.
    Vm { vm: VmCid, container: String },
    /// A container that is not a VM of this CPI.
    Foreign { container: String },
}

impl VolumeHolder {
    fn of(c: &ContainerSummary, disk_cid: &DiskCid) -> VolumeHolder {
        let label = |key: &str| c.labels.as_ref().and_then(|l| l.get(key));
        if label(volume_copy::HELPER_LABEL).map(String::as_str) == Some(disk_cid.as_str())
            && let Some(id) = &c.id
        {
            return VolumeHolder::CopyHelper(id.clone());
        }
        let container = c
            .names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| n.trim_start_matches('/').to_string())
            .or(c.id.clone())
            .unwrap_or_default();
        // A label that is not a VM cid is not a VM of this CPI.
        match labels::vm_of(c.labels.as_ref()) {
            Some(vm) => VolumeHolder::Vm { vm, container },
            None => VolumeHolder::Foreign { container },
        }
    }
}

impl CloudContext<'_> {
    /// The disk's index record, or `DiskNotFound`.
    pub(crate) async fn disk(&self, cid: &DiskCid) -> Result<DiskRecord, CpiError> {
        self.disk_if_any(cid).await?.ok_or_else(|| not_found(cid))
    }

    /// The VM disk tree of node `node` (see [`crate::disk_mounts`]), from its record; a
    /// node prepared before it had one is an error that says what to run.
    pub(crate) async fn disks_dir(&self, node: &NodeName) -> Result<String, CpiError> {
        self.disks_dir_if_any(node)
            .await?
            .ok_or_else(|| DiskError::NoDiskTree { node: node.clone() }.into())
    }

    /// The VM disk tree of node `node`, `None` on a node prepared before it had one (no
    /// disk can be bound there).
    pub(crate) async fn disks_dir_if_any(
        &self,
        node: &NodeName,
    ) -> Result<Option<String>, CpiError> {
        let view = self.cluster().await?;
        let record = view
            .registered(node)?
            .ok_or_else(|| DiskError::NodeNotRegistered { node: node.clone() })?;
        Ok(record.disks_dir.clone())
    }

    /// The VM a disk is attached to according to the index, if that VM still exists.
    pub(crate) async fn attached_vm(&self, disk: &DiskRecord) -> Result<Option<VmCid>, CpiError> {
        let Some(vm) = &disk.vm else {
            return Ok(None);
        };
        Ok(self.vm(vm).await?.is_some().then(|| vm.clone()))
    }

    /// Releases every disk that the index says is attached to `vm_cid` (the VM is gone).
    pub(crate) async fn release_disks_of(&self, vm_cid: &VmCid) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        let etcd = self.etcd().await?;
        for kv in index::under(etcd, &keys.disks(), "reading the disk index").await? {
            if let Ok(mut disk) = serde_json::from_slice::<DiskRecord>(kv.value())
                && disk.vm.as_ref() == Some(vm_cid)
            {
                disk.vm = None;
                self.save_disk(&disk).await?;
            }
        }
        Ok(())
    }

    /// Makes sure nothing on the node but VM `owner` (if given) holds disk `disk_cid`
    /// before a VM gets it, whatever the index says: two VMs writing one disk would corrupt
    /// it. The node's disk tree (`disks_dir`) and the containers that mount the volume are
    /// asked side by side. Copy helpers a killed move left and VMs the index does not know
    /// (abandoned by a failed create_vm) are removed; any other holder is an error naming
    /// it. Whether `owner` has the disk bound already.
    pub(crate) async fn ensure_unmounted(
        &self,
        docker: &NodeHandle<'_>,
        disks_dir: Option<&str>,
        disk_cid: &DiskCid,
        owner: Option<&VmCid>,
    ) -> Result<bool, CpiError> {
        let holders = async {
            match disks_dir {
                Some(dir) => docker.disk_holders(dir, disk_cid.as_str()).await,
                None => Ok(Vec::new()),
            }
        };
        let (bound_in, containers) =
            futures_util::future::join(holders, docker.containers_using_volume(disk_cid.as_str()))
                .await;
        let mut owned = false;
        for name in bound_in? {
            match BoundHolder::of(&name, owner) {
                BoundHolder::Owner => owned = true,
                holder => self.unbind_from(docker, holder, disk_cid).await?,
            }
        }
        for c in containers? {
            self.unmount_from(docker, VolumeHolder::of(&c, disk_cid), disk_cid)
                .await?;
        }
        Ok(owned)
    }

    /// Frees disk `disk_cid` from `holder`, which has it bound in the node's tree (not the
    /// owner): a VM the index does not know is removed; any other holder is an error.
    async fn unbind_from(
        &self,
        docker: &NodeHandle<'_>,
        holder: BoundHolder,
        disk_cid: &DiskCid,
    ) -> Result<(), CpiError> {
        let node = docker.name.clone();
        let cid = disk_cid.clone();
        match holder {
            BoundHolder::Owner => Ok(()),
            BoundHolder::Loop(device) => Err(DiskError::LoopStillHeld { cid, device, node }.into()),
            BoundHolder::Foreign(holder) => {
                Err(DiskError::BoundInForeign { cid, holder, node }.into())
            }
            BoundHolder::Vm(vm) => self.free_from(docker, &vm, disk_cid, "bound").await,
        }
    }

    /// Frees disk `disk_cid` from `holder`, whose container mounts its volume: a copy
    /// helper or a VM the index does not know is removed; any other holder is an error.
    async fn unmount_from(
        &self,
        docker: &NodeHandle<'_>,
        holder: VolumeHolder,
        disk_cid: &DiskCid,
    ) -> Result<(), CpiError> {
        match holder {
            VolumeHolder::CopyHelper(id) => Ok(docker.remove_container(&id).await?),
            VolumeHolder::Foreign { container } => Err(DiskError::MountedByForeign {
                cid: disk_cid.clone(),
                container,
                node: docker.name.clone(),
            }
            .into()),
            VolumeHolder::Vm { vm, container } => {
                let how = format!("mounted (container {container})");
                self.free_from(docker, &vm, disk_cid, &how).await
            }
        }
    }

    /// Disk `disk_cid` is `how` in VM `holder` on the node: an abandoned VM (no record) is
    /// removed, any other holder is an error naming it (retriable while it is created).
    async fn free_from(
        &self,
        docker: &NodeHandle<'_>,
        holder: &VmCid,
        disk_cid: &DiskCid,
        how: &str,
    ) -> Result<(), CpiError> {
        match self.vm_record_now(holder).await? {
            None => {
                let why = format!("held disk {disk_cid}");
                self.remove_abandoned(docker, holder, &why).await
            }
            Some(record) => Err(DiskError::HeldByVm {
                cid: disk_cid.clone(),
                how: how.to_string(),
                vm: holder.clone(),
                node: docker.name.clone(),
                creating: record.state == VmState::Creating,
            }
            .into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn vm(n: u32) -> VmCid {
        VmCid::parse(&format!("vm-00000000-0000-0000-0000-{n:012}")).unwrap()
    }

    fn disk() -> DiskCid {
        DiskCid::parse("disk-00000000-0000-0000-0000-000000000009").unwrap()
    }

    #[test]
    fn names_in_the_disk_tree_say_who_holds_the_disk() {
        let owner = vm(1);
        assert_eq!(
            BoundHolder::of(owner.as_str(), Some(&owner)),
            BoundHolder::Owner
        );
        assert_eq!(
            BoundHolder::of(owner.as_str(), None),
            BoundHolder::Vm(owner.clone())
        );
        assert_eq!(
            BoundHolder::of(vm(2).as_str(), Some(&owner)),
            BoundHolder::Vm(vm(2))
        );
        assert_eq!(
            BoundHolder::of("loop7", None),
            BoundHolder::Loop("7".into())
        );
        assert_eq!(
            BoundHolder::of("loopx", None),
            BoundHolder::Foreign("loopx".into())
        );
        assert_eq!(
            BoundHolder::of("other", None),
            BoundHolder::Foreign("other".into())
        );
    }

    fn container(labels: &[(&str, &str)], name: Option<&str>) -> ContainerSummary {
        ContainerSummary {
            id: Some("abc123".into()),
            names: name.map(|n| vec![format!("/{n}")]),
            labels: Some(
                labels
                    .iter()
                    .map(|(k, v)| (k.to_string(), v.to_string()))
                    .collect::<HashMap<_, _>>(),
            ),
            ..Default::default()
        }
    }

    #[test]
    fn containers_that_mount_the_volume_say_who_they_are() {
        let helper = container(&[(volume_copy::HELPER_LABEL, disk().as_str())], None);
        assert_eq!(
            VolumeHolder::of(&helper, &disk()),
            VolumeHolder::CopyHelper("abc123".into())
        );
        let vm1 = vm(1);
        let of_vm = container(&[(labels::VM_CID, vm1.as_str())], Some(vm1.as_str()));
        assert_eq!(
            VolumeHolder::of(&of_vm, &disk()),
            VolumeHolder::Vm {
                vm: vm1.clone(),
                container: vm1.to_string()
            }
        );
        let foreign = container(&[(labels::VM_CID, "not-a-cid")], None);
        assert_eq!(
            VolumeHolder::of(&foreign, &disk()),
            VolumeHolder::Foreign {
                container: "abc123".into()
            }
        );
    }
}
