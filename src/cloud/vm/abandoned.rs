//! VM containers the index does not know. Every create_vm writes the VM's record before
//! its container, and every delete removes the containers before the record, so a VM
//! container without a record was left by a create_vm that failed (with its node too slow
//! to clean) or was killed: the director never learned its cid and will never delete it.

use std::collections::HashSet;

use bollard::models::ContainerSummary;

use super::labels;
use crate::cloud::session::Session;
use crate::docker::NodeDocker;
use crate::protocol::CpiError;

/// Removes the abandoned VMs of this CPI's index among `containers` (the VM containers
/// listed on the node of `docker`) and returns the others. Only containers labelled with
/// this index's key prefix are candidates: a VM of another index on the same node is not
/// this CPI's to judge. Failures are logged and the container kept, never fatal.
pub async fn sweep(
    s: &Session<'_>,
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
        let Some(holder) = labels::vm_of(Some(labels)) else {
            continue;
        };
        if labels.get(labels::INDEX).map(String::as_str) != Some(key_prefix)
            || removed.contains(holder.as_str())
            || !matches!(s.vm(&holder).await, Ok(None))
        {
            continue;
        }
        let outcome = async {
            // Fresh: a concurrent create_vm may have written the record since the view.
            if s.vm_record_now(&holder).await?.is_none() {
                s.remove_abandoned(
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
