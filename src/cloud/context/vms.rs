//! VM helpers shared by `vm/` and `disk/`: finding a VM and its node, and removing a VM's
//! containers, ephemeral volume and disk binds from its node (delete_vm, abandoned VMs).

use super::lookup_error::VmLookupError;
use super::{CloudContext, NodeHandle};
use crate::labels::vm as labels;
use crate::protocol::{CpiError, VmCid};

/// The error for a VM the index does not know.
pub(crate) fn not_found(cid: &VmCid) -> CpiError {
    VmLookupError::NotFound { cid: cid.clone() }.into()
}

/// The ephemeral volume of a VM.
pub(crate) fn ephemeral_volume(vm_cid: &VmCid) -> String {
    format!("{vm_cid}-ephemeral")
}

impl CloudContext<'_> {
    /// The VM's index record and a client for its node; `None` when the index has no
    /// record. A record on a node no longer registered is an error.
    pub(crate) async fn vm_and_node(
        &self,
        cid: &VmCid,
    ) -> Result<Option<(crate::cluster::VmRecord, NodeHandle<'_>)>, CpiError> {
        let view = self.cluster().await?;
        let Some(record) = self.vm(cid).await? else {
            return Ok(None);
        };
        if view.registered(&record.node)?.is_none() {
            let (cid, node) = (cid.clone(), record.node);
            return Err(VmLookupError::NodeGone { cid, node }.into());
        }
        let docker = self.node(&record.node).await?;
        Ok(Some((record, docker)))
    }

    /// Removes every container of VM `cid` on its node (its own, any other carrying its
    /// label), its ephemeral volume, and its directory of the node's disk tree with the
    /// disks bound there (the disks themselves stay).
    pub(crate) async fn remove_from_node(
        &self,
        docker: &NodeHandle<'_>,
        cid: &VmCid,
    ) -> Result<(), CpiError> {
        // A node prepared before it had a disk tree has nothing bound.
        let dir = self.disks_dir_if_any(&docker.name).await?;
        remove_from_node(docker, cid, dir.as_deref()).await
    }

    /// Removes the abandoned VM `cid` (no index record) from the node of `docker` as
    /// delete_vm does. `why` says what it was in the way of.
    pub(crate) async fn remove_abandoned(
        &self,
        docker: &NodeHandle<'_>,
        cid: &VmCid,
        why: &str,
    ) -> Result<(), CpiError> {
        tracing::warn!(vm = %cid, node = %docker.name, "removing abandoned VM (it {why})");
        self.remove_from_node(docker, cid).await
    }
}

/// Rounds of removal before a VM's ephemeral volume still in use is an error.
const REMOVAL_ROUNDS: usize = 10;

/// How long a killed call's last request may still be running in the daemon (a create of
/// the VM's container completing after the process died).
const IN_FLIGHT_GRACE: std::time::Duration = std::time::Duration::from_millis(500);

/// The containers of VM `cid` go, then its disks of the tree `disks_dir` (the loop device
/// of a sized ephemeral disk is let go there), then its ephemeral volume.
async fn remove_from_node(
    docker: &NodeHandle<'_>,
    cid: &VmCid,
    disks_dir: Option<&str>,
) -> Result<(), CpiError> {
    let volume = ephemeral_volume(cid);
    let label = format!("{}={cid}", labels::VM_CID);
    for _ in 0..REMOVAL_ROUNDS {
        docker.remove_container(cid).await?;
        for c in docker.containers_with_label(&label).await? {
            if let Some(id) = c.id {
                docker.remove_container(&id).await?;
            }
        }
        if let Some(dir) = disks_dir {
            docker.forget_vm_disks(dir, cid.as_str()).await?;
        }
        if docker.remove_volume_if_unused(&volume).await? {
            return Ok(());
        }
        tokio::time::sleep(IN_FLIGHT_GRACE).await;
    }
    Err(VmLookupError::NotRemoved {
        node: docker.name.clone(),
        cid: cid.clone(),
        volume,
        rounds: REMOVAL_ROUNDS,
    }
    .into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ephemeral_volume_is_named_after_the_vm() {
        let cid = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        assert_eq!(
            ephemeral_volume(&cid),
            "vm-00000000-0000-0000-0000-000000000001-ephemeral"
        );
    }
}
