//! VM containers the index does not know, and index records whose VM container is gone.
//! Every create_vm writes the VM's record before its container, and every delete removes
//! the containers before the record, so a VM container without a record was left by a
//! create_vm that failed (with its node too slow to clean) or was killed: the director
//! never learned its cid and will never delete it. The other way round, a finished VM's
//! record whose container is gone was written by a create_vm that failed although its last
//! write was applied after all (etcd lost its quorum with the write in flight and applied
//! it when the quorum returned, after the call had rolled back), or its container was
//! removed outside the CPI: either way its record and address claims hold nothing.

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use crate::node_name::NodeName;
use std::collections::HashSet;

use bollard::models::ContainerSummary;

use super::labels;
use crate::cluster::VmState;
use crate::protocol::CpiError;

/// Removes the abandoned VMs of this CPI's index among `containers` (the VM containers
/// listed on the node of `docker`) and returns the others. Only containers labelled with
/// this index's key prefix are candidates: a VM of another index on the same node is not
/// this CPI's to judge. Failures are logged and the container kept, never fatal.
pub(crate) async fn sweep(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    containers: Vec<ContainerSummary>,
    key_prefix: &str,
) -> Vec<ContainerSummary> {
    let mut removed = HashSet::new();
    for c in &containers {
        let Some(labels) = c.labels.as_ref() else {
            continue;
        };
        // A label that is not a VM cid was not made by this CPI.
        let Some(holder) = labels::vm_of(Some(labels)) else {
            continue;
        };
        if labels.get(labels::INDEX).map(String::as_str) != Some(key_prefix)
            || removed.contains(holder.as_str())
            || !matches!(ctx.vm(&holder).await, Ok(None))
        {
            continue;
        }
        let outcome = async {
            // Fresh: a concurrent create_vm may have written the record since the view.
            if ctx.vm_record_now(&holder).await?.is_none() {
                ctx.remove_abandoned(
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

/// Removes the records (and address claims) of finished VMs whose container is gone: those
/// of `node` whose container is not among `containers` (every VM container of the node,
/// listed after this call's cluster view was read, so a VM finished in that view had its
/// container before the list), and those of `agent` (earlier tries of the VM this call
/// makes) on any node, each checked there. A record still being created is not judged.
/// Failures are logged, never fatal.
pub(crate) async fn forget_vanished(
    ctx: &CloudContext<'_>,
    node: &NodeName,
    agent: &str,
    containers: &[ContainerSummary],
) {
    let present: HashSet<&str> = containers
        .iter()
        .filter_map(|c| c.labels.as_ref()?.get(labels::VM_CID).map(String::as_str))
        .collect();
    let Ok(view) = ctx.cluster().await else {
        return;
    };
    let finished = view.vms.iter().filter(|r| r.state == VmState::Created);
    for record in finished {
        let gone = if record.node == *node {
            !present.contains(record.cid.as_str())
        } else if record.agent_id == agent {
            container_gone(ctx, &record.node, &record.cid).await
        } else {
            false
        };
        if !gone {
            continue;
        }
        tracing::warn!(vm = %record.cid, node = %record.node, "forgetting a VM whose container is gone (its record and address claims)");
        if let Err(e) = ctx.forget_vm(record).await {
            tracing::warn!(vm = %record.cid, node = %record.node, "the record of a vanished VM is kept for now: {e}");
        }
    }
}

/// Whether node `node` answers that it has no container of VM `cid` (no answer: not gone).
async fn container_gone(ctx: &CloudContext<'_>, node: &NodeName, cid: &crate::ids::VmCid) -> bool {
    let Ok(docker) = ctx.node(node).await else {
        return false;
    };
    let label = format!("{}={}", labels::VM_CID, cid);
    docker
        .containers_with_label(&label)
        .await
        .is_ok_and(|found| found.is_empty())
}
