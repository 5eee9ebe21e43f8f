//! Re-creating a VM's container with another set of persistent disks: Docker cannot add a
//! mount to an existing container. The VM keeps its identity: name, IPs and MACs,
//! hostname, labels, ephemeral volume, the agent's settings (with the new disk hints),
//! `update_settings.json` and the DNS `records.json`. If the new container does not start,
//! the old one comes back. A process killed half-way leaves a mark in the VM's index record
//! that [`repair`] acts on at the next call.

use std::collections::{BTreeMap, HashMap};

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, EndpointIpamConfig, EndpointSettings, Mount,
    MountType, NetworkingConfig,
};
use futures_util::FutureExt;
use serde_json::Value;

use super::agent_files::{self, DISK_MOUNT_ROOT, SETTINGS_PATH};
use crate::cloud::session::Session;
pub use crate::cloud::session::vms::previous_name;
use crate::cluster::VmRecord;
use crate::docker::containers::ContainerFile;
use crate::docker::{DockerError, NodeDocker};
use crate::protocol::{CpiError, ErrorKind};

/// Files of the agent on the root filesystem that must survive a re-creation: its
/// update_settings (trusted certs, NATS creds), the DNS records, and the applied spec (so
/// get_state still tells the director which jobs the VM runs).
pub const KEPT_FILES: &[&str] = &[
    "/var/vcap/bosh/update_settings.json",
    "/var/vcap/instance/dns/records.json",
    "/var/vcap/bosh/spec.json",
];

/// Seconds the old container gets to stop.
const STOP_GRACE: i32 = 30;

/// Persistent disks mounted in a container: disk cid -> volume name.
pub fn mounted_disks(inspect: &ContainerInspectResponse) -> BTreeMap<String, String> {
    let prefix = format!("{DISK_MOUNT_ROOT}/");
    inspect
        .mounts
        .iter()
        .flatten()
        .filter_map(|m| {
            let cid = m.destination.as_deref()?.strip_prefix(&prefix)?;
            Some((cid.to_string(), m.name.clone()?))
        })
        .collect()
}

/// Re-creates the container of `record` on `docker` with exactly `disks` (disk cid ->
/// volume) mounted at their hints, updating the agent settings to match.
pub async fn recreate(
    s: &Session<'_>,
    record: &mut VmRecord,
    docker: &NodeDocker,
    disks: &BTreeMap<String, String>,
) -> Result<(), CpiError> {
    recreate_when(s, record, docker, disks, async { Ok(()) }).await
}

/// [`recreate`], with the successor started only once `ready` says yes (the check of a
/// disk just copied to the node, which runs meanwhile). A `ready` already failed before
/// the old container is stopped leaves the VM untouched; one failing later brings the old
/// container back, as a successor that does not start does.
pub async fn recreate_when(
    s: &Session<'_>,
    record: &mut VmRecord,
    docker: &NodeDocker,
    disks: &BTreeMap<String, String>,
    ready: impl std::future::Future<Output = Result<(), CpiError>>,
) -> Result<(), CpiError> {
    let mut ready = std::pin::pin!(ready.fuse());
    let cid = record.cid.to_string();
    // The inspection the caller made to read the mounted disks, if it made one.
    let old = s.inspect(docker, &cid).await?.ok_or_else(|| {
        CpiError::new(
            ErrorKind::VmNotFound,
            format!("VM {cid} has no container on node {}", docker.name),
        )
    })?;
    // Everything is read and prepared before the old container is touched. The agent's
    // files are read at once (one request each, side by side, not one after another).
    let (settings_raw, kept_files) = futures_util::future::join(
        docker.read_file(&cid, SETTINGS_PATH),
        futures_util::future::join_all(KEPT_FILES.iter().map(|path| docker.read_file(&cid, path))),
    )
    .await;
    let settings_raw = settings_raw?.ok_or_else(|| {
        CpiError::cloud(
            format!("VM {cid} has no agent settings at {SETTINGS_PATH}"),
            false,
        )
    })?;
    let mut settings: Value = serde_json::from_slice(&settings_raw.data)
        .map_err(|e| CpiError::cloud(format!("VM {cid}: agent settings unreadable: {e}"), false))?;
    settings["disks"]["persistent"] = Value::Object(
        disks
            .keys()
            .map(|d| (d.clone(), Value::String(agent_files::disk_hint(d))))
            .collect(),
    );
    let mut kept = Vec::new();
    for (path, file) in KEPT_FILES.iter().zip(kept_files) {
        if let Some(file) = file? {
            kept.push((*path, file));
        }
    }
    let archive = files_archive(&cid, &settings, &kept)
        .map_err(|e| CpiError::cpi(format!("cannot pack the agent files: {e}")))?;
    let (body, extra_networks) = successor_body(&old, disks)?;
    // A verdict already in is taken now: a "no" stops here, with nothing touched.
    let mut verdict = (&mut ready).now_or_never();
    if let Some(Err(e)) = verdict {
        return Err(e);
    }

    record.recreating = true;
    s.save_vm(record).await?;

    s.container_changed(docker, &cid);
    s.container_changed(docker, &previous_name(&cid));
    docker.stop_container(&cid, STOP_GRACE).await?;
    docker.rename_container(&cid, &previous_name(&cid)).await?;
    let outcome = async {
        docker.create_container(&cid, body).await?;
        for (net, endpoint) in &extra_networks {
            docker.connect_network(net, &cid, endpoint.clone()).await?;
        }
        docker.upload_archive(&cid, "/", archive).await?;
        match verdict.take() {
            Some(known) => known?,
            None => ready.await?,
        }
        docker.start(&cid).await?;
        verify_successor(docker, &cid, &old).await
    }
    .await;
    match outcome {
        Ok(()) => {
            docker.remove_container(&previous_name(&cid)).await?;
            record.recreating = false;
            s.save_vm(record).await?;
            Ok(())
        }
        Err(e) => {
            tracing::warn!(vm = %cid, "the new container is not kept, restoring the old one: {}", e.message);
            restore(docker, &cid).await?;
            record.recreating = false;
            s.save_vm(record).await?;
            Err(e)
        }
    }
}

/// How long a successor must keep running before the old container is dropped, unless
/// Docker shows sooner that its init has come up (see [`SUPERVISORS`]).
const SETTLE: std::time::Duration = std::time::Duration::from_millis(500);
/// Pause between two looks at a successor that has not come up yet.
const POLL: std::time::Duration = std::time::Duration::from_millis(25);
/// Stemcell inits that supervise services and never exit on their own (runit's runsvdir,
/// systemd). Once one of them is the successor's first process, the start script has
/// run and exec'd the init, and the init has reached its supervisor: the successor is up.
const SUPERVISORS: &[&str] = &["runsvdir", "systemd"];

/// Waits until the successor is up, from what Docker reports: it fails as soon as Docker
/// shows the successor dead or restarted, and succeeds when its first process is a
/// supervisor, else once it has run for [`SETTLE`].
async fn settle(docker: &NodeDocker, cid: &str) -> Result<ContainerInspectResponse, CpiError> {
    let started = std::time::Instant::now();
    loop {
        // Fresh on purpose: the successor is watched as it comes up.
        let new = docker.inspect_container(cid).await?.ok_or_else(|| {
            CpiError::cloud(format!("the new container of VM {cid} vanished"), true)
        })?;
        let state = new.state.clone().unwrap_or_default();
        // The restart policy may already have brought a dead successor back: that counts too.
        let restarts = new.restart_count.unwrap_or(0);
        if restarts > 0 || state.restarting == Some(true) {
            return Err(CpiError::cloud(
                format!(
                    "the new container of VM {cid} died right after start (restarted {restarts} times by its restart policy)"
                ),
                false,
            ));
        }
        if state.running != Some(true) {
            let code = state.exit_code.unwrap_or(-1);
            return Err(CpiError::cloud(
                format!(
                    "the new container of VM {cid} stopped right after start (exit code {code})"
                ),
                false,
            ));
        }
        if started.elapsed() >= SETTLE || first_process_supervises(docker, cid, state.pid).await {
            return Ok(new);
        }
        tokio::time::sleep(POLL).await;
    }
}

/// Whether the process `pid` (the container's first, as inspected) is still there and is
/// a [`SUPERVISORS`] init. A restart would have given the container another first process.
async fn first_process_supervises(docker: &NodeDocker, cid: &str, pid: Option<i64>) -> bool {
    let Some(pid) = pid.filter(|p| *p > 0).map(|p| p.to_string()) else {
        return false;
    };
    let options = bollard::query_parameters::TopOptionsBuilder::new()
        .ps_args("-o pid,comm")
        .build();
    match docker.docker.top_processes(cid, Some(options)).await {
        Ok(top) => supervises(&top.processes.unwrap_or_default(), &pid),
        Err(e) => {
            tracing::debug!(vm = %cid, "cannot list the successor's processes: {e}");
            false
        }
    }
}

/// Whether the `pid, comm` rows of `ps` show `pid` as a [`SUPERVISORS`] init.
fn supervises(rows: &[Vec<String>], pid: &str) -> bool {
    rows.iter().any(|row| {
        row.first().is_some_and(|p| p == pid)
            && row
                .get(1)
                .is_some_and(|c| SUPERVISORS.contains(&c.as_str()))
    })
}

/// The successor is up (see [`settle`]) and has the old container's addresses.
async fn verify_successor(
    docker: &NodeDocker,
    cid: &str,
    old: &ContainerInspectResponse,
) -> Result<(), CpiError> {
    let new = settle(docker, cid).await?;
    let (before, after) = (expected_addresses(old), actual_addresses(&new));
    let kept = before.len() == after.len()
        && before.iter().all(|(name, want)| {
            after
                .get(name)
                .is_some_and(|got| want.as_ref().is_none_or(|w| w == got))
        });
    if !kept {
        return Err(CpiError::cloud(
            format!("the new container of VM {cid} has addresses {after:?} instead of {before:?}"),
            true,
        ));
    }
    Ok(())
}

/// The address the successor must have on each network of `old`: the one configured for
/// it, else the one it had (a stopped container shows none: then any address will do).
fn expected_addresses(old: &ContainerInspectResponse) -> BTreeMap<String, Option<String>> {
    networks_of(old)
        .into_iter()
        .map(|(name, ep)| {
            let address = kept_address(&ep);
            (name, address)
        })
        .collect()
}

/// The address a container keeps on a network across re-creation: the configured one,
/// else the one it has (none when it is stopped and was given none).
fn kept_address(ep: &EndpointSettings) -> Option<String> {
    let configured = ep.ipam_config.as_ref().and_then(|c| c.ipv4_address.clone());
    let had = ep.ip_address.clone().filter(|ip| !ip.is_empty());
    configured.filter(|ip| !ip.is_empty()).or(had)
}

/// The address a running container has on each of its networks.
fn actual_addresses(c: &ContainerInspectResponse) -> BTreeMap<String, String> {
    networks_of(c)
        .into_iter()
        .map(|(name, ep)| (name, ep.ip_address.unwrap_or_default()))
        .collect()
}

fn networks_of(c: &ContainerInspectResponse) -> HashMap<String, EndpointSettings> {
    c.network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default()
}

/// Brings the previous container back under the VM's name and starts it. A killed
/// process's last request may still be running in the daemon (a create of the successor
/// completing after it died), so a name conflict is removed and retried.
async fn restore(docker: &NodeDocker, cid: &str) -> Result<(), CpiError> {
    let mut attempt = 0;
    loop {
        attempt += 1;
        docker.remove_container(cid).await?;
        match docker.rename_container(&previous_name(cid), cid).await {
            Ok(()) => break,
            // The daemon's 409: the name is still taken.
            Err(DockerError::Conflict { .. }) if attempt < RESTORE_ATTEMPTS => {
                tokio::time::sleep(std::time::Duration::from_millis(300)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(docker.start(cid).await?)
}

/// Attempts at taking the VM's name back from a successor that is still being made.
const RESTORE_ATTEMPTS: usize = 10;

/// Finishes or undoes a re-creation that a killed process left half-done, then clears the
/// mark. After it, the VM's container is the old one or the complete new one, running.
pub async fn repair(
    s: &Session<'_>,
    record: &mut VmRecord,
    docker: &NodeDocker,
) -> Result<(), CpiError> {
    let cid = record.cid.to_string();
    let previous = docker.inspect_container(&previous_name(&cid)).await?;
    let current = docker.inspect_container(&cid).await?;
    // Whatever happens below changes the two containers.
    s.container_changed(docker, &cid);
    s.container_changed(docker, &previous_name(&cid));
    let current_running = current
        .as_ref()
        .and_then(|c| c.state.as_ref())
        .and_then(|s| s.running)
        .unwrap_or(false);
    match (previous, current) {
        (Some(_), Some(_)) if current_running => {
            docker.remove_container(&previous_name(&cid)).await?;
        }
        (Some(_), _) => restore(docker, &cid).await?,
        (None, Some(_)) if !current_running => docker.start(&cid).await?,
        _ => {}
    }
    tracing::warn!(vm = %cid, node = %docker.name, "repaired an unfinished container re-creation");
    record.recreating = false;
    s.save_vm(record).await
}

/// The successor's create body from the old container: same config, host config with the
/// disk mounts replaced, same addresses; plus the non-primary networks to connect.
fn successor_body(
    old: &ContainerInspectResponse,
    disks: &BTreeMap<String, String>,
) -> Result<(ContainerCreateBody, Vec<(String, EndpointSettings)>), CpiError> {
    let config = old
        .config
        .clone()
        .ok_or_else(|| CpiError::cloud("container inspect has no config", false))?;
    let mut body: ContainerCreateBody = serde_json::to_value(&config)
        .and_then(serde_json::from_value)
        .map_err(|e| CpiError::cpi(format!("cannot reuse the container config: {e}")))?;
    let mut host = old
        .host_config
        .clone()
        .ok_or_else(|| CpiError::cloud("container inspect has no host config", false))?;
    let prefix = format!("{DISK_MOUNT_ROOT}/");
    let mut mounts: Vec<Mount> = host
        .mounts
        .take()
        .unwrap_or_default()
        .into_iter()
        .filter(|m| !m.target.as_deref().is_some_and(|t| t.starts_with(&prefix)))
        .collect();
    for (disk, volume) in disks {
        mounts.push(Mount {
            target: Some(agent_files::disk_hint(disk)),
            source: Some(volume.clone()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        });
    }
    host.mounts = Some(mounts);
    let primary = host.network_mode.clone().unwrap_or_default();
    let networks = old
        .network_settings
        .as_ref()
        .and_then(|n| n.networks.clone())
        .unwrap_or_default();
    let endpoint_of = |ep: &EndpointSettings| EndpointSettings {
        ipam_config: kept_address(ep).map(|ip| EndpointIpamConfig {
            ipv4_address: Some(ip),
            ..Default::default()
        }),
        mac_address: ep.mac_address.clone().filter(|m| !m.is_empty()),
        ..Default::default()
    };
    let mut primary_endpoint = HashMap::new();
    let mut extra = Vec::new();
    for (name, ep) in &networks {
        if *name == primary {
            primary_endpoint.insert(name.clone(), endpoint_of(ep));
        } else {
            extra.push((name.clone(), endpoint_of(ep)));
        }
    }
    body.host_config = Some(host);
    body.networking_config = Some(NetworkingConfig {
        endpoints_config: Some(primary_endpoint),
    });
    Ok((body, extra))
}

/// The agent files and the kept files, each kept one with the mode and owner it had
/// (update_settings.json holds credentials). No folder entries: the successor's folders
/// are the image's, and Docker makes a missing one (`/var/vcap/instance/dns`).
fn files_archive(
    cid: &str,
    settings: &Value,
    kept: &[(&str, ContainerFile)],
) -> std::io::Result<Vec<u8>> {
    let base = agent_files::archive(cid, settings)?;
    if kept.is_empty() {
        return Ok(base);
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut existing = tar::Archive::new(base.as_slice());
    for entry in existing.entries()? {
        let mut entry = entry?;
        let mut header = entry.header().clone();
        let path = entry.path()?.to_path_buf();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data)?;
        builder.append_data(&mut header, path, data.as_slice())?;
    }
    for (path, file) in kept {
        agent_files::append_file(
            &mut builder,
            path,
            &file.data,
            agent_files::FileOwner {
                mode: file.mode,
                uid: file.uid,
                gid: file.gid,
            },
        )?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn inspect_with(networks: Vec<(&str, Option<&str>, &str)>) -> ContainerInspectResponse {
        ContainerInspectResponse {
            network_settings: Some(bollard::models::NetworkSettings {
                networks: Some(
                    networks
                        .into_iter()
                        .map(|(name, configured, ip)| {
                            let ep = EndpointSettings {
                                ipam_config: configured.map(|c| EndpointIpamConfig {
                                    ipv4_address: Some(c.to_string()),
                                    ..Default::default()
                                }),
                                ip_address: Some(ip.to_string()),
                                ..Default::default()
                            };
                            (name.to_string(), ep)
                        })
                        .collect(),
                ),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn a_stopped_container_expects_its_configured_address_or_any() {
        // Stopped: Docker shows no address; the configured one is expected, else any.
        let old = inspect_with(vec![("bosh", Some("10.1.1.5"), ""), ("other", None, "")]);
        let want = expected_addresses(&old);
        assert_eq!(want["bosh"].as_deref(), Some("10.1.1.5"));
        assert_eq!(want["other"], None);
        // Running without IPAM config: the address it has.
        let old = inspect_with(vec![("other", None, "172.18.0.3")]);
        assert_eq!(
            expected_addresses(&old)["other"].as_deref(),
            Some("172.18.0.3")
        );
    }

    #[test]
    fn only_the_first_process_as_a_supervisor_counts() {
        let rows = |r: &[(&str, &str)]| -> Vec<Vec<String>> {
            r.iter()
                .map(|(p, c)| vec![p.to_string(), c.to_string()])
                .collect()
        };
        // Still the start script, or a stemcell init that is a script: not yet known.
        assert!(!supervises(&rows(&[("41", "sh")]), "41"));
        assert!(!supervises(&rows(&[("41", "runsvdir-start")]), "41"));
        // The supervisor, but not as the inspected first process (restarted meanwhile).
        assert!(!supervises(
            &rows(&[("52", "runsvdir"), ("53", "runsv")]),
            "41"
        ));
        assert!(supervises(
            &rows(&[("41", "runsvdir"), ("53", "runsv")]),
            "41"
        ));
        assert!(supervises(&rows(&[("41", "systemd")]), "41"));
    }

    #[test]
    fn kept_files_join_the_agent_files() {
        let kept = vec![
            (
                "/var/vcap/instance/dns/records.json",
                ContainerFile {
                    data: b"{\"records\":[]}".to_vec(),
                    mode: 0o644,
                    uid: 0,
                    gid: 1000,
                },
            ),
            (
                "/var/vcap/bosh/update_settings.json",
                ContainerFile {
                    data: b"{}".to_vec(),
                    mode: 0o600,
                    uid: 0,
                    gid: 0,
                },
            ),
        ];
        let tar_bytes = files_archive("vm-1", &serde_json::json!({}), &kept).unwrap();
        let mut found = BTreeMap::new();
        let mut records = String::new();
        for e in tar::Archive::new(tar_bytes.as_slice()).entries().unwrap() {
            let mut e = e.unwrap();
            let p = e.path().unwrap().to_string_lossy().to_string();
            assert!(e.header().entry_type().is_file(), "{p}: no folder entries");
            let h = e.header();
            found.insert(
                p.clone(),
                (h.mode().unwrap(), h.uid().unwrap(), h.gid().unwrap()),
            );
            if p.ends_with("records.json") {
                e.read_to_string(&mut records).unwrap();
            }
        }
        assert_eq!(
            found["var/vcap/bosh/warden-cpi-agent-env.json"],
            (0o600, 0, 0)
        );
        assert_eq!(
            found["var/vcap/instance/dns/records.json"],
            (0o644, 0, 1000)
        );
        assert_eq!(found["var/vcap/bosh/update_settings.json"], (0o600, 0, 0));
        assert_eq!(records, "{\"records\":[]}");
    }
}
