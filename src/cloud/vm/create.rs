//! `create_vm`: place, claim the addresses, prepare the node (stemcell, network), create
//! the container with the agent's files, start it. The index record and the address claims
//! are written in one transaction before anything is made on the node, and every step
//! registers its undo, so a failure (or a killed process, through the lease) leaves nothing
//! behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use bollard::models::ContainerSummary;
use serde_json::Value;

use super::container_spec::{self, ContainerPlan};
use super::network_plan::{self, PlannedNetwork};
use super::properties::VmProperties;
use super::{agent_files, ephemeral_volume, labels, start_script};
use crate::cloud::{CloudContext, now, stemcell};
use crate::cluster::{NodeRecord, VmRecord, VmState, claims, index};
use crate::config::BlobstoreSettings;
use crate::docker::{BridgeSpec, DockerError, NodeDocker};
use crate::placement::{self, VmDemand};
use crate::protocol::{CallResult, CpiError, CreateVm, ErrorKind, NetworkType, VmCid};

/// What to undo, in reverse order, when creation fails.
enum Undo {
    /// The VM's record and the address claims it lists.
    IndexRecord(Box<VmRecord>),
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

    let cid = VmCid::generate();
    let keys = ctx.keys().await?;
    let etcd = ctx.etcd().await?;
    let docker = ctx.node_docker(&view, &node.name).await?;
    // What holds addresses on the node now; abandoned VMs (no record) are removed first.
    let vm_containers = docker.containers_with_label(labels::VM_CID).await?;
    let vm_containers =
        super::abandoned::sweep(ctx, &view, &docker, vm_containers, &config.etcd.key_prefix).await;
    let used = used_addresses(ctx, &docker, &node, vm_containers, &planned).await?;
    let wanted = wanted_addresses(&keys, &view, &node, &planned, &used);

    let mut record = VmRecord {
        cid: cid.clone(),
        node: node.name.clone(),
        agent_id: req.agent_id.clone(),
        stemcell_cid: req.stemcell_cid.to_string(),
        memory_mib: props.memory_mib(),
        group: group.clone(),
        state: VmState::Creating,
        created_at: now(),
        metadata: Default::default(),
        recreating: false,
        addresses: Vec::new(),
    };
    // While creating, the record and the address claims live on a lease: if this process
    // is killed, they expire and the next create_vm knows the leftovers are garbage.
    let lease = index::ProgressLease::start(etcd).await?;
    let claimed = match claims::claim_for_new_vm(etcd, &keys, lease.id(), &record, &wanted).await {
        Ok(c) => c,
        Err(e) => {
            lease.end().await;
            return Err(e);
        }
    };
    match claimed {
        claims::Claimed::All(addresses) => {
            for claim in &addresses {
                if let Some(p) = planned
                    .iter_mut()
                    .find(|p| p.docker_network.as_deref() == Some(claim.network.as_str()))
                {
                    p.ip = Some(claim.ip);
                }
            }
            record.addresses = addresses;
        }
        claims::Claimed::Taken {
            holder, on_lease, ..
        } if !on_lease && stale_claim(ctx, &holder).await => {
            // The holder's record is gone (removed by hand): its claim is garbage.
            lease.end().await;
            return Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: an address was claimed by VM {holder}, which has no record any more; the claim was removed, retry"
                ),
            )
            .retriable(true));
        }
        claims::Claimed::Taken {
            network,
            ip,
            holder,
            on_lease,
        } => {
            lease.end().await;
            let state = if on_lease {
                "still being created"
            } else {
                "already created"
            };
            return Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: IP {ip} on docker network {network} of node {} is taken by VM {holder} ({state})",
                    node.name
                ),
            )
            // A create still running may fail and free the address; its lease expires
            // 20 s after a killed process.
            .retriable(on_lease));
        }
        claims::Claimed::Exhausted { network } => {
            rollback(ctx, None, vec![Undo::IndexRecord(Box::new(record))]).await;
            lease.end().await;
            return Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: no free address left in the dynamic pool of docker network {network} on node {}",
                    node.name
                ),
            ));
        }
    }
    tracing::info!(vm = %cid, node = %node.name, "creating VM");

    let mut undo = vec![Undo::IndexRecord(Box::new(record.clone()))];
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
            // The record and the claims leave the lease: from now on they are permanent.
            let kept = claims::make_permanent(etcd, &keys, lease.id(), &record).await;
            let kept = match kept {
                Ok(true) => Ok(()),
                Ok(false) => Err(CpiError::cloud(
                    format!(
                        "create_vm: VM {cid} lost its record or address claims (this process stalled past their lease)"
                    ),
                    true,
                )),
                Err(e) => Err(e),
            };
            if let Err(e) = kept {
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
                vm_cid: cid.to_string(),
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

/// Whether the permanent claim of `holder` is garbage (its VM has no record, as after an
/// operator removed the record by hand); if so, the claims naming it on this VM's static
/// addresses are removed, so a retry can claim them.
async fn stale_claim(ctx: &CloudContext<'_>, holder: &str) -> bool {
    let Ok(cid) = VmCid::parse(holder) else {
        return false;
    };
    let outcome = async {
        if super::abandoned::record_now(ctx, &cid).await?.is_some() {
            return Ok(false);
        }
        let keys = ctx.keys().await?;
        claims::forget_claims_of(ctx.etcd().await?, &keys, &cid).await?;
        Ok::<bool, CpiError>(true)
    }
    .await;
    outcome.unwrap_or_else(|e| {
        tracing::warn!(vm = %cid, "cannot check its address claim: {}", e.message);
        false
    })
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

/// The addresses to claim for the planned networks: each static IP, and for each dynamic
/// network on a subnet the CPI knows, its pool without the addresses containers hold and
/// those claimed when the view was read (a claim made since is skipped inside the claim
/// transaction).
fn wanted_addresses(
    keys: &crate::cluster::Keys,
    view: &crate::cluster::ClusterView,
    node: &NodeRecord,
    planned: &[PlannedNetwork],
    used: &HashMap<Ipv4Addr, String>,
) -> Vec<claims::Wanted> {
    let mut wanted = Vec::new();
    for p in planned {
        let Some(network) = &p.docker_network else {
            continue;
        };
        match (p.spec.kind, p.ip, p.subnet) {
            (NetworkType::Manual, Some(ip), _) => wanted.push(claims::Wanted::Fixed {
                network: network.clone(),
                ip,
            }),
            (NetworkType::Dynamic, _, Some(subnet)) => {
                let candidates = network_plan::dynamic_pool(subnet)
                    .filter(|ip| !used.contains_key(ip))
                    .filter(|ip| {
                        !view
                            .claimed_addresses
                            .contains(&keys.address(&node.name, network, *ip))
                    })
                    .collect();
                wanted.push(claims::Wanted::AnyOf {
                    network: network.clone(),
                    candidates,
                });
            }
            // A foreign network picks dynamic addresses itself.
            _ => {}
        }
    }
    wanted
}

#[allow(clippy::too_many_arguments)]
async fn build(
    ctx: &CloudContext<'_>,
    view: &crate::cluster::ClusterView,
    docker: &NodeDocker,
    node: &NodeRecord,
    cid: &VmCid,
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
        (labels::STEMCELL.to_string(), req.stemcell_cid.to_string()),
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
    match docker.start(cid).await {
        Ok(()) => {}
        // The daemon's 403 on start: an address is in use. The claim was ours, so something
        // outside this CPI's VMs holds it.
        Err(DockerError::Forbidden { message, .. }) => {
            let ips: Vec<String> = planned
                .iter()
                .filter_map(|p| p.ip.map(|ip| ip.to_string()))
                .collect();
            return Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: node {}: an address of {} is held by a container that is not a VM of this CPI: {}",
                    node.name,
                    ips.join(", "),
                    crate::protocol::call::printable(&message)
                ),
            ));
        }
        Err(e) => return Err(e.into()),
    }
    verify_addresses(docker, cid, planned).await
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
            if !docker.network_exists(name).await? {
                return Err(CpiError::new(
                    ErrorKind::NetworkNotFound,
                    format!(
                        "create_vm: network '{}' names docker network {name}, which does not exist on node {}",
                        p.name, node.name
                    ),
                ));
            }
        }
    }
    Ok(())
}

/// Addresses held on the node by VM containers (`containers`, running or not, abandoned
/// ones already removed), with their holder. A static IP held by a VM without a record (a
/// killed create's, or one the index lost) is freed by removing that VM; held by a VM
/// still being created, it is a retriable `VMCreationFailed`; by a created VM, a final one.
async fn used_addresses(
    ctx: &CloudContext<'_>,
    docker: &NodeDocker,
    node: &NodeRecord,
    containers: Vec<ContainerSummary>,
    planned: &[PlannedNetwork],
) -> Result<HashMap<Ipv4Addr, String>, CpiError> {
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
    for p in planned {
        if p.spec.kind != NetworkType::Manual {
            continue;
        }
        let Some(ip) = p.ip else { continue };
        let Some(holder) = used.get(&ip).cloned() else {
            continue;
        };
        let shown = crate::protocol::call::printable(&holder);
        let Ok(holder_cid) = VmCid::parse(&holder) else {
            return Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: IP {ip} of network '{}' is held by container {shown} on node {}, which is not a VM of this CPI",
                    p.name, node.name
                ),
            ));
        };
        match super::abandoned::record_now(ctx, &holder_cid).await? {
            // No record (a killed create's expired, or never written): the director
            // never learned this VM, so it is garbage holding the address.
            None => {
                super::abandoned::remove(docker, &holder_cid, &format!("held {ip}")).await?;
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
    Ok(used)
}

/// Reads back the addresses Docker really gave, filling those a foreign network chose.
async fn verify_addresses(
    docker: &NodeDocker,
    cid: &VmCid,
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
            (Undo::Container(name), Some(d)) => d.remove_container(name).await.map_err(Into::into),
            (Undo::Volume(name), Some(d)) => d.remove_volume(name).await.map_err(Into::into),
            (Undo::IndexRecord(record), _) if node_clean => {
                match (ctx.etcd().await, ctx.keys().await) {
                    (Ok(etcd), Ok(keys)) => claims::forget_vm(etcd, &keys, record).await,
                    (Err(e), _) | (_, Err(e)) => Err(e),
                }
            }
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
