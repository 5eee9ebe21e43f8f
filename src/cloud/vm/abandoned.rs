//! VM containers the index does not know. Every create_vm writes the VM's record before
//! its container, and every delete removes the containers before the record, so a VM
//! container without a record was left by a create_vm that failed (with its node too slow
//! to clean) or was killed: the director never learned its cid and will never delete it.

use std::collections::HashSet;

use bollard::models::ContainerSummary;

use super::labels;
use crate::cloud::CloudContext;
use crate::cluster::{ClusterView, VmRecord, index};
use crate::docker::NodeDocker;
use crate::protocol::{CpiError, VmCid};

/// The index record of VM `cid`, read now (not from an earlier view: a concurrent
/// create_vm may have written it since); `None` means the VM is abandoned.
pub async fn record_now(ctx: &CloudContext<'_>, cid: &VmCid) -> Result<Option<VmRecord>, CpiError> {
    let keys = ctx.keys().await?;
    Ok(index::get::<VmRecord>(ctx.etcd().await?, &keys.vm(cid)).await?)
}

/// Removes the abandoned VM `cid` from the node of `docker` as delete_vm does: its
/// containers and its ephemeral volume. `why` says what it was in the way of.
pub async fn remove(docker: &NodeDocker, cid: &VmCid, why: &str) -> Result<(), CpiError> {
    tracing::warn!(vm = %cid, node = %docker.name, "removing abandoned VM (it {why})");
    super::lifecycle::remove_from_node(docker, cid, false).await
}

/// Removes the abandoned VMs of this CPI's index among `containers` (the VM containers
/// listed on the node of `docker`) and returns the others. Only containers labelled with
/// this index's key prefix are candidates: a VM of another index on the same node is not
/// this CPI's to judge. Failures are logged and the container kept, never fatal.
pub async fn sweep(
    ctx: &CloudContext<'_>,
    view: &ClusterView,
    docker: &NodeDocker,
    containers: Vec<ContainerSummary>,
    key_prefix: &str,
) -> Vec<ContainerSummary> {
    let mut removed = HashSet::new();
    for c in &containers {
        let Some(labels) = c.labels.as_ref() else {
            continue;
        };
        // A label that is not a VM cid was not made by this CPI.
        let Some(holder) = labels
            .get(labels::VM_CID)
            .and_then(|h| VmCid::parse(h).ok())
        else {
            continue;
        };
        if labels.get(labels::INDEX).map(String::as_str) != Some(key_prefix)
            || removed.contains(holder.as_str())
            || !matches!(view.vm(&holder), Ok(None))
        {
            continue;
        }
        let outcome = async {
            if record_now(ctx, &holder).await?.is_none() {
                remove(
                    docker,
                    &holder,
                    "was left by a create_vm that failed or was killed",
                )
                .await?;
                return Ok(true);
            }
            Ok::<bool, CpiError>(false)
        }
        .await;
        match outcome {
            Ok(true) => {
                removed.insert(holder.to_string());
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(vm = %holder, node = %docker.name, "abandoned VM kept for now: {}", e.message)
            }
        }
    }
    containers
        .into_iter()
        .filter(|c| {
            c.labels
                .as_ref()
                .and_then(|l| l.get(labels::VM_CID))
                .is_none_or(|h| !removed.contains(h))
        })
        .collect()
}
