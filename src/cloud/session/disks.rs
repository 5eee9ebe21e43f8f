//! Disk helpers shared by `vm/` (create_vm, delete_vm) and `disk/`: which VM a disk is
//! attached to, releasing a deleted VM's disks, and making sure no container holds a disk
//! before a VM gets it.

use super::Session;
use crate::cluster::{DiskRecord, VmState};
use crate::docker::{NodeDocker, volume_copy};
use crate::labels::vm as labels;
use crate::protocol::{CpiError, DiskCid, ErrorKind, VmCid};

/// The error for a disk the index does not know.
pub fn not_found(cid: &DiskCid) -> CpiError {
    CpiError::new(
        ErrorKind::DiskNotFound,
        format!("disk {cid} does not exist"),
    )
}

/// The error for a disk whose record names a node that no longer has its volume: the
/// CPI refuses to go on, as Docker would mount a new, empty volume of that name.
pub fn volume_gone(disk: &DiskRecord) -> CpiError {
    CpiError::new(
        ErrorKind::DiskNotFound,
        format!(
            "disk {} has no volume on its node {} (removed outside the CPI?)",
            disk.cid, disk.node
        ),
    )
}

impl Session<'_> {
    /// The VM disk tree of node `node` (see [`crate::disk_mounts`]), from its record; a
    /// node prepared before it had one is an error that says what to run.
    pub async fn disks_dir(&self, node: &str) -> Result<String, CpiError> {
        self.disks_dir_if_any(node).await?.ok_or_else(|| {
            CpiError::cloud(
                format!(
                    "node {node} has no VM disk tree in its record: run `cpi node-prep` (and `cpi node-prep disk-mounts`) on it with this version"
                ),
                false,
            )
        })
    }

    /// The VM disk tree of node `node`, `None` on a node prepared before it had one (no
    /// disk can be bound there).
    pub async fn disks_dir_if_any(&self, node: &str) -> Result<Option<String>, CpiError> {
        let view = self.view().await?;
        let record = view.registered(node)?.ok_or_else(|| {
            CpiError::cloud(format!("node {node} is not registered in etcd"), false)
        })?;
        Ok(record.disks_dir.clone())
    }

    /// The VM a disk is attached to according to the index, if that VM still exists.
    pub async fn attached_vm(&self, disk: &DiskRecord) -> Result<Option<VmCid>, CpiError> {
        let Some(vm) = &disk.vm else {
            return Ok(None);
        };
        Ok(self.vm(vm).await?.is_some().then(|| vm.clone()))
    }

    /// Releases every disk that the index says is attached to `vm_cid` (the VM is gone).
    pub async fn release_disks_of(&self, vm_cid: &VmCid) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        let etcd = self.etcd().await?;
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
    pub async fn ensure_unmounted(
        &self,
        docker: &NodeDocker,
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
        for vm in bound_in? {
            if owner.is_some_and(|o| o.as_str() == vm) {
                owned = true;
                continue;
            }
            if let Some(n) = vm
                .strip_prefix("loop")
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
            {
                // Detached from its VM, but a mount of it there has not let go yet.
                return Err(CpiError::cloud(
                    format!(
                        "disk {disk_cid} is still in use through /dev/loop{n} on node {}: a mount of it in a VM it was detached from has not let go yet",
                        docker.name
                    ),
                    true,
                ));
            }
            let holder = VmCid::parse(&vm).map_err(|_| {
                CpiError::cloud(
                    format!(
                        "disk {disk_cid} is bound in {} on node {}, which is not a VM of this CPI",
                        crate::protocol::call::printable(&vm),
                        docker.name
                    ),
                    false,
                )
            })?;
            self.free_from(docker, &holder, disk_cid, "bound").await?;
        }
        for c in containers? {
            let label = |key: &str| c.labels.as_ref().and_then(|l| l.get(key).cloned());
            // A copy helper a killed move or snapshot left (the one list finds them too).
            if label(volume_copy::HELPER_LABEL).as_deref() == Some(disk_cid.as_str())
                && let Some(id) = &c.id
            {
                docker.remove_container(id).await?;
                continue;
            }
            // A label that is not a VM cid is not a VM of this CPI.
            let holder = labels::vm_of(c.labels.as_ref());
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
            self.free_from(
                docker,
                &holder,
                disk_cid,
                &format!("mounted (container {name})"),
            )
            .await?;
        }
        Ok(owned)
    }

    /// Disk `disk_cid` is `how` in VM `holder` on the node: an abandoned VM (no record) is
    /// removed, any other holder is an error naming it (retriable while it is created).
    async fn free_from(
        &self,
        docker: &NodeDocker,
        holder: &VmCid,
        disk_cid: &DiskCid,
        how: &str,
    ) -> Result<(), CpiError> {
        match self.vm_record_now(holder).await? {
            None => {
                let why = format!("held disk {disk_cid}");
                self.remove_abandoned(docker, holder, &why).await
            }
            Some(record) => Err(CpiError::cloud(
                format!(
                    "disk {disk_cid} is {how} in VM {holder} on node {}; detach it there first",
                    docker.name
                ),
                record.state == VmState::Creating,
            )),
        }
    }
}
