//! `create_vm`: place, prepare the node (stemcell, network), create the container with the
//! agent's files, start it. The index record is written first and every step registers
//! its undo, so a failure (or a killed process, through delete_vm) leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use bollard::models::ContainerSummary;
use serde_json::Value;

use super::container_spec::{self, ContainerPlan};
use super::network_plan::{self, PlannedNetwork};
use super::properties::VmProperties;
use super::{agent_files, ephemeral_volume, labels, start_script};
use crate::cloud::{CloudContext, now, stemcell};
use crate::cluster::{NodeRecord, VmRecord, VmState, index};
use crate::config::BlobstoreSettings;
use crate::docker::containers::docker_message;
use crate::docker::{BridgeSpec, NodeDocker};
use crate::placement::{self, VmDemand};
use crate::protocol::{CallResult, CpiError, CreateVm, ErrorKind, NetworkType};

/// Attempts at finding a free dynamic address when concurrent creates race for one.
const ADDRESS_ATTEMPTS: usize = 5;

/// What to undo, in reverse order, when creation fails.
enum Undo {
    IndexRecord(String),
    Volume(String),
    Container(String),
}

/// `create_vm`. Transient failures anywhere (etcd included) come back as a retriable
/// `VMCreationFailed`, so the director retries the whole create.
pub async fn create(ctx: &CloudContext<'_>, req: CreateVm) -> Result<CallResult, CpiError> {
    create_classified(ctx, req).await.map_err(creation_error)
}

async fn create_classified(ctx: &CloudContext<'_>, req: CreateVm) -> Result<CallResult, CpiError> {
    let props = VmProperties::parse(&req.cloud_properties)?;
    let config = ctx.config().await?;
    // Decided before anything is made: an agent without a blobstore never starts.
    let blobstore = super::blobstore::for_agent(&req.env, &config.agent)?;
    let placement = &config.placement;
    let view = ctx.view().await?;
    let group = req
        .env
        .get("bosh")
        .and_then(|b| b.get("group"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut demand = VmDemand {
        manual_ips: network_plan::manual_ips(&req.networks),
        // The AZ's (or vm_type's) node wins over the CPI's own placement.node.
        pinned_node: props.node.clone().or_else(|| placement.node.clone()),
        group: group.clone(),
        memory_mib: props.memory_mib(),
    };
    // Persistent disks draw the VM to their node unless an IP or a pin says otherwise
    // (then the disks move).
    if let Some(first) = req.disk_cids.first() {
        let disk = crate::cloud::disk::record(ctx, first).await?;
        let disk_node_ready = view
            .node(&disk.node)
            .is_some_and(|n| n.state == crate::cluster::NodeState::Ready);
        if demand.manual_ips.is_empty() && demand.pinned_node.is_none() && disk_node_ready {
            demand.pinned_node = Some(disk.node);
        }
    }
    let node_name = placement::choose_node(&demand, &view.nodes, &view.vms)
        .map_err(|m| CpiError::new(ErrorKind::VmCreationFailed, format!("create_vm: {m}")))?;
    let node = view
        .node(&node_name)
        .cloned()
        .ok_or_else(|| CpiError::cpi(format!("node {node_name} vanished from the view")))?;
    let mut planned = network_plan::plan(&req.networks, &node)?;

    let cid = format!("vm-{}", uuid::Uuid::new_v4());
    let keys = ctx.keys().await?;
    let etcd = ctx.etcd().await?;
    let mut record = VmRecord {
        cid: cid.clone(),
        node: node.name.clone(),
        agent_id: req.agent_id.clone(),
        stemcell_cid: req.stemcell_cid.clone(),
        memory_mib: props.memory_mib(),
        group: group.clone(),
        state: VmState::Creating,
        created_at: now(),
        metadata: Default::default(),
        recreating: false,
    };
    // While creating, the record lives on a lease: if this process is killed, the record
    // expires and the next create_vm wanting the same IP knows the leftovers are garbage.
    let lease = index::ProgressLease::start(etcd).await?;
    if let Err(e) = lease.put(&keys.vm(&cid), &record).await {
        lease.end().await;
        return Err(e);
    }
    let mut undo = vec![Undo::IndexRecord(keys.vm(&cid))];
    tracing::info!(vm = %cid, node = %node.name, "creating VM");

    let docker = match ctx.node_docker(&view, &node.name).await {
        Ok(d) => d,
        Err(e) => {
            rollback(ctx, None, undo).await;
            lease.end().await;
            return Err(creation_error(e));
        }
    };
    let outcome = build(
        ctx,
        &view,
        &docker,
        &node,
        &cid,
        &req,
        &props,
        blobstore,
        group.as_deref(),
        &mut planned,
        &mut undo,
    )
    .await;
    match outcome {
        Ok(()) => {
            record.state = VmState::Created;
            // A plain put detaches the record from the lease: from now on it is permanent.
            if let Err(e) = index::put(etcd, &keys.vm(&cid), &record).await {
                rollback(ctx, Some(&docker), undo).await;
                lease.end().await;
                return Err(creation_error(e));
            }
            lease.end().await;
            // The VM is complete: the disks' records follow (attach_disk and get_disks
            // read the real mounts, so a failure here is repaired later, not fatal).
            for disk_cid in &req.disk_cids {
                let updated = async {
                    let mut disk = crate::cloud::disk::record(ctx, disk_cid).await?;
                    disk.vm = Some(cid.clone());
                    crate::cloud::disk::save(ctx, &disk).await
                }
                .await;
                if let Err(e) = updated {
                    tracing::warn!(vm = %cid, disk = %disk_cid, "disk record not updated: {}", e.message);
                }
            }
            Ok(CallResult::VmCreated {
                vm_cid: cid,
                networks: Value::Object(network_plan::resolved_json(&planned)),
            })
        }
        Err(e) => {
            tracing::warn!(vm = %cid, node = %node.name, "create_vm failed, undoing: {}", e.message);
            rollback(ctx, Some(&docker), undo).await;
            lease.end().await;
            Err(creation_error(e))
        }
    }
}

/// Transient infrastructure failures become `VMCreationFailed` with `ok_to_retry`, so the
/// director retries the whole create; bad input keeps its own kind.
fn creation_error(e: CpiError) -> CpiError {
    if e.kind == ErrorKind::CloudError {
        CpiError {
            kind: ErrorKind::VmCreationFailed,
            ..e
        }
    } else {
        e
    }
}

#[allow(clippy::too_many_arguments)]
async fn build(
    ctx: &CloudContext<'_>,
    view: &crate::cluster::ClusterView,
    docker: &NodeDocker,
    node: &NodeRecord,
    cid: &str,
    req: &CreateVm,
    props: &VmProperties,
    blobstore: Option<&BlobstoreSettings>,
    group: Option<&str>,
    planned: &mut [PlannedNetwork],
    undo: &mut Vec<Undo>,
) -> Result<(), CpiError> {
    let config = ctx.config().await?;
    let effective = props.effective(&config.vm_defaults);
    stemcell::ensure_on_node(ctx, view, docker, &req.stemcell_cid).await?;
    prepare_networks(docker, node, planned).await?;
    let disks = crate::cloud::disk::disks_for_new_vm(ctx, docker, &req.disk_cids).await?;
    let disk_mounts: BTreeMap<String, String> = disks
        .iter()
        .map(|(cid, volume)| (agent_files::disk_hint(cid), volume.clone()))
        .collect();
    let persistent: BTreeMap<String, String> = disks
        .keys()
        .map(|cid| (cid.clone(), agent_files::disk_hint(cid)))
        .collect();

    let vm_containers = docker.containers_with_label(labels::VM_CID).await?;
    let vm_containers =
        super::abandoned::sweep(ctx, view, docker, vm_containers, &config.etcd.key_prefix).await;
    let mut used = used_addresses(vm_containers, planned);
    for p in planned.iter() {
        if p.spec.kind == NetworkType::Manual
            && let Some(ip) = p.ip
            && let Some(holder) = used.get(&ip).cloned()
        {
            match super::abandoned::record_now(ctx, &holder).await? {
                // No record (a killed create's expired, or never written): the director
                // never learned this VM, so it is garbage holding the address.
                None => {
                    super::abandoned::remove(docker, &holder, &format!("held {ip}")).await?;
                    used.remove(&ip);
                }
                Some(r) if r.state == VmState::Creating => {
                    return Err(CpiError::new(
                        ErrorKind::VmCreationFailed,
                        format!(
                            "create_vm: IP {ip} of network '{}' is taken by VM {holder}, still being created on node {}",
                            p.name, node.name
                        ),
                    )
                    .retriable(true));
                }
                Some(_) => {
                    return Err(CpiError::new(
                        ErrorKind::VmCreationFailed,
                        format!(
                            "create_vm: IP {ip} of network '{}' is already used by {holder} on node {}",
                            p.name, node.name
                        ),
                    ));
                }
            }
        }
    }

    let volume = ephemeral_volume(cid);
    let mut volume_labels = HashMap::from([
        (labels::EPHEMERAL_OF.to_string(), cid.to_string()),
        (labels::AGENT_ID.to_string(), req.agent_id.clone()),
    ]);
    if let Some(size) = props.ephemeral_disk {
        volume_labels.insert(labels::EPHEMERAL_DISK_MIB.into(), size.to_string());
    }
    docker.create_volume(&volume, volume_labels).await?;
    undo.push(Undo::Volume(volume.clone()));

    let used_set: HashSet<Ipv4Addr> = used.keys().copied().collect();
    let mut skip = HashSet::new();
    for attempt in 1..=ADDRESS_ATTEMPTS {
        network_plan::assign_dynamic(planned, &used_set, &skip)?;
        let settings = agent_files::settings(
            &req.agent_id,
            cid,
            &config.agent,
            blobstore,
            planned,
            &persistent,
            &req.env,
        );
        let archive = agent_files::archive(cid, &settings)
            .map_err(|e| CpiError::cpi(format!("cannot pack the agent settings: {e}")))?;
        let primary = planned.iter().find(|p| p.primary);
        let dns: Vec<IpAddr> = planned
            .iter()
            .find(|p| p.spec.default.iter().any(|d| d == "dns"))
            .or(primary)
            .map(|p| p.spec.dns.iter().filter_map(|d| d.parse().ok()).collect())
            .unwrap_or_default();
        let mut container_labels = HashMap::from([
            (labels::VM_CID.to_string(), cid.to_string()),
            (labels::AGENT_ID.to_string(), req.agent_id.clone()),
            (labels::STEMCELL.to_string(), req.stemcell_cid.clone()),
            (labels::CREATED_AT.to_string(), now()),
            (labels::INDEX.to_string(), config.etcd.key_prefix.clone()),
        ]);
        if let Some(g) = group {
            container_labels.insert(labels::GROUP.into(), g.to_string());
        }
        let body = container_spec::build(&ContainerPlan {
            image: &stemcell::image_reference(&req.stemcell_cid),
            hostname: cid,
            labels: container_labels,
            props,
            effective: &effective,
            networks: planned,
            ephemeral_volume: &volume,
            disk_mounts: &disk_mounts,
            start_script: start_script::script(
                cid,
                primary.and_then(|p| p.ip).map(IpAddr::V4),
                &dns,
                effective.start_mode,
            ),
        })?;
        docker.create_container(cid, body).await?;
        undo.push(Undo::Container(cid.to_string()));
        for p in planned.iter().filter(|p| !p.primary) {
            if let Some(net) = &p.docker_network {
                docker
                    .connect_network(net, cid, container_spec::endpoint(p))
                    .await?;
            }
        }
        docker.upload_archive(cid, "/", archive).await?;
        match docker.start_container(cid).await {
            Ok(()) => return verify_addresses(docker, cid, planned).await,
            Err(e) => {
                let message = docker_message(&e);
                let dynamic: Vec<Ipv4Addr> = planned
                    .iter()
                    .filter(|p| p.spec.kind == NetworkType::Dynamic)
                    .filter_map(|p| p.ip)
                    .collect();
                if message.contains("already in use")
                    && !dynamic.is_empty()
                    && attempt < ADDRESS_ATTEMPTS
                {
                    tracing::info!(vm = %cid, "address {dynamic:?} taken meanwhile, trying another");
                    docker.remove_container(cid).await?;
                    undo.pop();
                    skip.extend(dynamic);
                    continue;
                }
                return Err(docker.error(&format!("starting container {cid}"), &e));
            }
        }
    }
    Err(CpiError::new(
        ErrorKind::VmCreationFailed,
        format!("create_vm: no free dynamic address after {ADDRESS_ATTEMPTS} attempts"),
    )
    .retriable(true))
}

/// Ensures the node's BOSH network exists on its Flannel subnet; other Docker networks
/// named in network cloud_properties must exist already.
async fn prepare_networks(
    docker: &NodeDocker,
    node: &NodeRecord,
    planned: &[PlannedNetwork],
) -> Result<(), CpiError> {
    for p in planned {
        let Some(name) = &p.docker_network else {
            continue;
        };
        if *name == node.network_name {
            docker
                .ensure_bridge(&BridgeSpec {
                    name: name.clone(),
                    subnet: node.subnet,
                    gateway: node.gateway,
                    mtu: node.mtu,
                })
                .await?;
        } else {
            match docker.docker.inspect_network(name, None).await {
                Ok(_) => {}
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 404, ..
                }) => {
                    return Err(CpiError::new(
                        ErrorKind::NetworkNotFound,
                        format!(
                            "create_vm: network '{}' names docker network {name}, which does not exist on node {}",
                            p.name, node.name
                        ),
                    ));
                }
                Err(e) => return Err(docker.error(&format!("inspecting network {name}"), &e)),
            }
        }
    }
    Ok(())
}

/// Addresses held on the node by VM containers (`containers`, running or stopped), with
/// their holder.
fn used_addresses(
    containers: Vec<ContainerSummary>,
    planned: &[PlannedNetwork],
) -> HashMap<Ipv4Addr, String> {
    let networks: HashSet<&str> = planned
        .iter()
        .filter_map(|p| p.docker_network.as_deref())
        .collect();
    let mut used = HashMap::new();
    for c in containers {
        let holder = c
            .labels
            .as_ref()
            .and_then(|l| l.get(labels::VM_CID).cloned())
            .unwrap_or_else(|| c.id.clone().unwrap_or_default());
        let nets = c
            .network_settings
            .and_then(|n| n.networks)
            .unwrap_or_default();
        for (name, ep) in nets {
            if !networks.contains(name.as_str()) {
                continue;
            }
            let configured = ep.ipam_config.and_then(|i| i.ipv4_address);
            for ip in [configured, ep.ip_address].into_iter().flatten() {
                if let Ok(ip) = ip.parse() {
                    used.insert(ip, holder.clone());
                }
            }
        }
    }
    used
}

/// Reads back the addresses Docker really gave, filling those a foreign network chose.
async fn verify_addresses(
    docker: &NodeDocker,
    cid: &str,
    planned: &mut [PlannedNetwork],
) -> Result<(), CpiError> {
    let inspect = docker.inspect_container(cid).await?.ok_or_else(|| {
        CpiError::cloud(
            format!(
                "container {cid} vanished on node {} right after start",
                docker.name
            ),
            true,
        )
    })?;
    let nets = inspect
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default();
    for p in planned.iter_mut() {
        let Some(name) = &p.docker_network else {
            continue;
        };
        let actual = nets
            .get(name)
            .and_then(|ep| ep.ip_address.as_deref())
            .and_then(|ip| ip.parse::<Ipv4Addr>().ok());
        match (p.ip, actual) {
            (Some(want), Some(got)) if want != got => {
                return Err(CpiError::cloud(
                    format!("container {cid} got {got} on {name} instead of {want}"),
                    true,
                ));
            }
            (None, Some(got)) => p.ip = Some(got),
            _ => {}
        }
    }
    Ok(())
}

async fn rollback(ctx: &CloudContext<'_>, docker: Option<&NodeDocker>, undo: Vec<Undo>) {
    let mut node_clean = true;
    for step in undo.into_iter().rev() {
        let result = match (&step, docker) {
            (Undo::Container(name), Some(d)) => d.remove_container(name).await,
            (Undo::Volume(name), Some(d)) => d.remove_volume(name).await,
            (Undo::IndexRecord(key), _) if node_clean => match ctx.etcd().await {
                Ok(etcd) => index::delete(etcd, key).await,
                Err(e) => Err(e),
            },
            // The node could not be cleaned: keep the record so delete_vm can finish.
            (Undo::IndexRecord(_), _) => Ok(()),
            (_, None) => Ok(()),
        };
        if let Err(e) = result {
            node_clean = false;
            tracing::warn!("undo after failed create_vm: {}", e.message);
        }
    }
}
