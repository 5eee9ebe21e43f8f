//! Emptying a node before its reboot: what each of its VMs looks like (IPs, volumes) is
//! recorded first, then all are stopped at once within a grace period: each VM's jobs
//! drained and stopped as its agent would ([`crate::cloud::vm::graceful_stop`]), then its
//! container stopped (what still runs then is killed).

use futures_util::future::join_all;

use super::record::VmSnapshot;
use crate::cloud::vm::{graceful_stop, inside};
use crate::docker::{DockerError, NodeDocker};
use crate::ids::VmCid;

/// What each VM container in `cids` looks like now, from Docker and from inside the
/// running ones (absent containers are skipped: there is nothing to bring back).
pub(crate) async fn snapshot(
    docker: &NodeDocker,
    cids: &[VmCid],
) -> Result<Vec<VmSnapshot>, DockerError> {
    let mut vms = Vec::new();
    for cid in cids {
        let Some(c) = docker.inspect_container(cid).await? else {
            continue;
        };
        vms.push(observe(cid, &c));
    }
    join_all(vms.iter_mut().filter(|v| v.running).map(|v| async move {
        match inside::look(docker, &v.cid).await {
            Ok(seen) => v.inside = Some(seen),
            // Nothing to compare with later: the gate checks Docker's view alone.
            Err(e) => {
                tracing::warn!(vm = %v.cid, "cannot look inside the VM before the reboot: {e}")
            }
        }
    }))
    .await;
    Ok(vms)
}

/// One container as the snapshot and the health gate see it.
pub(crate) fn observe(cid: &VmCid, c: &bollard::models::ContainerInspectResponse) -> VmSnapshot {
    let running = c.state.as_ref().and_then(|s| s.running).unwrap_or(false);
    let ips = c
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.as_ref())
        .map(|nets| {
            nets.iter()
                .filter_map(|(name, ep)| {
                    let ip = ep.ip_address.clone().filter(|ip| !ip.is_empty())?;
                    Some((name.clone(), ip))
                })
                .collect()
        })
        .unwrap_or_default();
    let mut volumes: Vec<String> = c
        .mounts
        .iter()
        .flatten()
        .filter(|m| m.typ.as_deref() == Some("volume"))
        .filter_map(|m| m.name.clone())
        .collect();
    volumes.sort();
    VmSnapshot {
        cid: cid.clone(),
        running,
        ips,
        volumes,
        inside: None,
    }
}

/// Seconds a container gets to stop after its jobs did (its agent and runit).
const CONTAINER_GRACE: i32 = 10;

/// Stops every VM of `vms` that ran, all at once, each within `grace_seconds`; already
/// stopped or absent is success. The errors, one per VM that could not be stopped.
pub(crate) async fn stop_all(
    docker: &NodeDocker,
    vms: &[VmSnapshot],
    grace_seconds: i32,
) -> Vec<DockerError> {
    let grace = std::time::Duration::from_secs(u64::from(grace_seconds.max(0).unsigned_abs()));
    let stops = vms.iter().filter(|v| v.running).map(|v| async move {
        tracing::info!(vm = %v.cid, grace_seconds, "stopping VM for the node's reboot");
        match graceful_stop::stop_jobs(docker, &v.cid, grace).await {
            Ok(how) => tracing::info!(vm = %v.cid, "jobs stopped: {how:?}"),
            Err(e) => tracing::warn!(vm = %v.cid, "the VM's jobs could not be stopped first: {e}"),
        }
        docker.stop_container(&v.cid, CONTAINER_GRACE).await
    });
    join_all(stops)
        .await
        .into_iter()
        .filter_map(Result::err)
        .collect()
}
