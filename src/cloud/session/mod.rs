//! What one CPI call knows, read once: the cluster view (loaded on first use), the VM and
//! disk records it read or wrote, the containers it inspected, and a client per node. The
//! handlers of `vm/` and `disk/` share it (and the helpers in its submodules), so a call
//! does not read the same record or inspect the same container twice. A read that must
//! see what another process wrote since (a concurrent create_vm) is a named fresh read:
//! [`Session::vm_record_now`].

pub mod disks;
pub(crate) mod error;
pub mod moving;
pub mod vms;

use std::collections::HashMap;
use std::sync::Mutex;

use bollard::models::ContainerInspectResponse;
use tokio::sync::OnceCell;

use super::CloudContext;
use crate::cluster::{ClusterView, DiskRecord, Etcd, Keys, VmRecord, claims, index};
use crate::config::Config;
use crate::docker::NodeDocker;
use crate::protocol::{CpiError, DiskCid, VmCid};

/// The state of one call (see the module doc). Cheap to make: nothing is read until asked.
pub struct Session<'s> {
    ctx: &'s CloudContext<'s>,
    view: OnceCell<ClusterView>,
    /// VM records read or written by this call (`None`: known to be absent).
    vms: Mutex<HashMap<VmCid, Option<VmRecord>>>,
    /// Disk records read or written by this call (`None`: known to be absent).
    disks: Mutex<HashMap<DiskCid, Option<DiskRecord>>>,
    /// Container inspections of this call, by node and container name; dropped when the
    /// call changes that container.
    containers: Mutex<HashMap<(String, String), Option<ContainerInspectResponse>>>,
}

impl<'s> Session<'s> {
    /// A session over the call's context.
    pub(crate) fn new(ctx: &'s CloudContext<'s>) -> Self {
        Session {
            ctx,
            view: OnceCell::new(),
            vms: Default::default(),
            disks: Default::default(),
            containers: Default::default(),
        }
    }

    /// The validated configuration.
    pub(crate) async fn config(&self) -> Result<&'s Config, CpiError> {
        Ok(self.ctx.config().await?)
    }

    /// The etcd connection.
    pub(crate) async fn etcd(&self) -> Result<&'s Etcd, CpiError> {
        Ok(self.ctx.etcd().await?)
    }

    /// The cluster's keys in etcd.
    pub(crate) async fn keys(&self) -> Result<Keys, CpiError> {
        Ok(self.ctx.keys().await?)
    }

    /// The cluster view, loaded once per call (one etcd round trip).
    pub(crate) async fn view(&self) -> Result<&ClusterView, CpiError> {
        Ok(self.view.get_or_try_init(|| self.ctx.view()).await?)
    }

    /// A Docker client for node `name` (one per call and node).
    pub(crate) async fn node_docker(&self, name: &str) -> Result<NodeDocker, CpiError> {
        let view = self.view().await?;
        Ok(self.ctx.node_docker(view, name).await?)
    }

    /// The index record of VM `cid`: what this call wrote, else the view if it is loaded,
    /// else one read (kept for the rest of the call).
    pub(crate) async fn vm(&self, cid: &VmCid) -> Result<Option<VmRecord>, CpiError> {
        if let Some(known) = self.vms.lock().unwrap().get(cid) {
            return Ok(known.clone());
        }
        let record = match self.view.get() {
            Some(view) => view.vm(cid)?.cloned(),
            None => {
                let keys = self.keys().await?;
                index::get::<VmRecord>(self.etcd().await?, &keys.vm(cid)).await?
            }
        };
        self.note_vm(cid, record.clone());
        Ok(record)
    }

    /// The index record of VM `cid` read now, not from this call's view or cache: a
    /// concurrent create_vm may have written it since. `None` means the VM is abandoned.
    pub(crate) async fn vm_record_now(&self, cid: &VmCid) -> Result<Option<VmRecord>, CpiError> {
        let keys = self.keys().await?;
        // Deliberately fresh (see above); the answer replaces what the call knew.
        let record = index::get::<VmRecord>(self.etcd().await?, &keys.vm(cid)).await?;
        self.note_vm(cid, record.clone());
        Ok(record)
    }

    /// Writes a VM's index record.
    pub(crate) async fn save_vm(&self, record: &VmRecord) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        index::put(self.etcd().await?, &keys.vm(&record.cid), record).await?;
        self.note_vm(&record.cid, Some(record.clone()));
        Ok(())
    }

    /// Removes a VM's index record and its address claims.
    pub(crate) async fn forget_vm(&self, record: &VmRecord) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        claims::forget_vm(self.etcd().await?, &keys, record).await?;
        self.note_vm(&record.cid, None);
        Ok(())
    }

    /// Records what a write made elsewhere (a claim transaction) did to VM `cid`'s record.
    pub(crate) fn note_vm(&self, cid: &VmCid, record: Option<VmRecord>) {
        self.vms.lock().unwrap().insert(cid.clone(), record);
    }

    /// The disk's index record, or `DiskNotFound`.
    pub(crate) async fn disk(&self, cid: &DiskCid) -> Result<DiskRecord, CpiError> {
        self.disk_if_any(cid)
            .await?
            .ok_or_else(|| disks::not_found(cid))
    }

    /// The disk's index record, `None` when there is none (read once per call).
    pub(crate) async fn disk_if_any(&self, cid: &DiskCid) -> Result<Option<DiskRecord>, CpiError> {
        if let Some(known) = self.disks.lock().unwrap().get(cid) {
            return Ok(known.clone());
        }
        let keys = self.keys().await?;
        let record = index::get::<DiskRecord>(self.etcd().await?, &keys.disk(cid)).await?;
        self.note_disk(cid, record.clone());
        Ok(record)
    }

    /// Writes a disk's index record.
    pub(crate) async fn save_disk(&self, disk: &DiskRecord) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        index::put(self.etcd().await?, &keys.disk(&disk.cid), disk).await?;
        self.note_disk(&disk.cid, Some(disk.clone()));
        Ok(())
    }

    /// Removes a disk's index record.
    pub(crate) async fn delete_disk_record(&self, cid: &DiskCid) -> Result<(), CpiError> {
        let keys = self.keys().await?;
        index::delete(self.etcd().await?, &keys.disk(cid)).await?;
        self.note_disk(cid, None);
        Ok(())
    }

    fn note_disk(&self, cid: &DiskCid, record: Option<DiskRecord>) {
        self.disks.lock().unwrap().insert(cid.clone(), record);
    }

    /// The container `name` on the node of `docker`, inspected once per call until the call
    /// changes it (see [`Session::container_changed`]).
    pub(crate) async fn inspect(
        &self,
        docker: &NodeDocker,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, CpiError> {
        let key = (docker.name.clone(), name.to_string());
        if let Some(known) = self.containers.lock().unwrap().get(&key) {
            return Ok(known.clone());
        }
        let inspect = docker.inspect_container(name).await?;
        self.containers.lock().unwrap().insert(key, inspect.clone());
        Ok(inspect)
    }

    /// Forgets the inspection of container `name` on the node of `docker`: the call is
    /// changing it (or removed it).
    pub(crate) fn container_changed(&self, docker: &NodeDocker, name: &str) {
        self.containers
            .lock()
            .unwrap()
            .remove(&(docker.name.clone(), name.to_string()));
    }
}
