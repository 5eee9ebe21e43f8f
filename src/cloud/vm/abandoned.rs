//! VM containers the index does not know. Every create_vm writes the VM's record before
//! its container, and every delete removes the containers before the record, so a VM
//! container without a record was left by a create_vm that failed (with its node too slow
//! to clean) or was killed: the director never learned its cid and will never delete it.

use super::{ephemeral_volume, recreate};
use crate::cloud::CloudContext;
use crate::cluster::{VmRecord, index};
use crate::docker::NodeDocker;
use crate::protocol::CpiError;

/// The index record of VM `cid`, read now (not from an earlier view: a concurrent
/// create_vm may have written it since); `None` means the VM is abandoned.
pub async fn record_now(ctx: &CloudContext<'_>, cid: &str) -> Result<Option<VmRecord>, CpiError> {
    let keys = ctx.keys().await?;
    index::get::<VmRecord>(ctx.etcd().await?, &keys.vm(cid)).await
}

/// Removes the abandoned VM `cid` from the node of `docker`: its container, a `-previous`
/// one, and its ephemeral volume. `why` says what it was in the way of.
pub async fn remove(docker: &NodeDocker, cid: &str, why: &str) -> Result<(), CpiError> {
    tracing::warn!(vm = %cid, node = %docker.name, "removing abandoned VM (it {why})");
    docker.remove_container(cid).await?;
    docker
        .remove_container(&recreate::previous_name(cid))
        .await?;
    docker.remove_volume(&ephemeral_volume(cid)).await
}
