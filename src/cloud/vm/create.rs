//! `create_vm`: check the request (stemcell included), place, claim the addresses,
//! prepare the node (stemcell, network, disks), create the container with the agent's
//! files, start it. The index record and the address claims are written in one
//! transaction before anything is made on the node, and every step registers its undo, so
//! a failure (or a killed process, through the lease) leaves nothing behind.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr};

use bollard::models::ContainerSummary;
use serde_json::Value;

use super::block_disks::{not_an_image, prepare_block_disk};
use super::container_spec::{self, ContainerPlan};
use super::network_plan::{self, PlannedNetwork};
use super::properties::{Effective, VmProperties};
use super::{agent_files, ephemeral_volume, labels, start_script};
use crate::cloud::session::Session;
use crate::cloud::session::disks::volume_gone;
use crate::cloud::{CloudContext, stemcell};
use crate::cluster::{DiskRecord, NodeRecord, NodeState, VmRecord, VmState, claims, index};
use crate::config::BlobstoreSettings;
use crate::docker::{BridgeSpec, DockerError, NodeDocker};
use crate::placement::{self, VmDemand};
use crate::protocol::{CallResult, CpiError, CreateVm, DiskCid, ErrorKind, NetworkType, VmCid};
use crate::timestamp::Timestamp;

/// What to undo, in reverse order, when creation fails.
enum Undo {
    /// The VM's record and the address claims it lists.
    IndexRecord(Box<VmRecord>),
    Volume(String),
    Container(String),
    /// The VM's directory of the node's disk tree, with the disks bound.
    DiskTree {
        disks_dir: String,
        vm: String,
    },
}

/// What create_vm decided before anything is made: the request and its parsed cloud
/// properties, the VM's cid, where its stemcell was seen, the node, and the networks with
/// their addresses (filled in as they are claimed, and by Docker for foreign networks).
struct CreatePlan<'r, 's> {
    req: &'r CreateVm,
    cid: VmCid,
    props: VmProperties,
    effective: Effective,
    /// Decided before anything is made: an agent without a blobstore never starts.
    blobstore: Option<&'s BlobstoreSettings>,
    stemcell: stemcell::Presence,
    group: Option<String>,
    node: NodeRecord,
    networks: Vec<PlannedNetwork>,
}

impl CreatePlan<'_, '_> {
    /// The VM's index record while it is being created.
    fn record(&self) -> VmRecord {
        VmRecord {
            cid: self.cid.clone(),
            node: self.node.name.clone(),
            agent_id: self.req.agent_id.clone(),
            stemcell_cid: self.req.stemcell_cid.to_string(),
            memory_mib: self.props.memory_mib(),
            group: self.group.clone(),
            state: VmState::Creating,
            created_at: Timestamp::now(),
            metadata: Default::default(),
            addresses: Vec::new(),
        }
    }
}

/// `create_vm`. Transient failures anywhere (etcd included) come back as a retriable
/// `VMCreationFailed`, so the director retries the whole create.
pub async fn create(ctx: &CloudContext<'_>, req: CreateVm) -> Result<CallResult, CpiError> {
    let s = Session::new(ctx);
    create_classified(&s, &req).await.map_err(creation_error)
}

async fn create_classified(s: &Session<'_>, req: &CreateVm) -> Result<CallResult, CpiError> {
    let mut plan = plan(s, req).await?;
    let docker = s.node_docker(&plan.node.name).await?;
    // Three steps that need nothing of each other run side by side: what the node's VM
    // containers hold, the lease, and the node made ready (stemcell image, networks; both
    // kept if the create fails, as they serve the next one).
    // While creating, the record and the address claims live on that lease: if this
    // process is killed, they expire and the next create_vm knows the leftovers are garbage.
    let (wanted, lease, ready) = tokio::join!(
        addresses_to_claim(s, &docker, &plan),
        async { Ok::<_, CpiError>(index::ProgressLease::start(s.etcd().await?).await?) },
        prepare_node(s, &docker, &plan),
    );
    // The node's answer (a network that does not exist, an address in use) says more than
    // a failed lease grant, so it wins.
    let wanted = match (wanted, ready) {
        (Ok(wanted), Ok(())) => wanted,
        (Err(e), _) | (_, Err(e)) => {
            if let Ok(lease) = lease {
                lease.end().await;
            }
            return Err(e);
        }
    };
    let lease = lease?;
    let mut record = plan.record();
    if let Err(e) = claim(s, &lease, &mut record, &mut plan, &wanted).await {
        lease.end().await;
        return Err(e);
    }
    s.note_vm(&plan.cid, Some(record.clone()));
    tracing::info!(vm = %plan.cid, node = %plan.node.name, "creating VM");
    let mut undo = vec![Undo::IndexRecord(Box::new(record.clone()))];
    let built = async {
        build(s, &docker, &mut plan, &mut undo).await?;
        record.state = VmState::Created;
        make_permanent(s, &lease, &record).await
    }
    .await;
    if let Err(e) = built {
        tracing::warn!(vm = %plan.cid, node = %plan.node.name, "create_vm failed, undoing: {}", e.message);
        rollback(s, Some(&docker), undo).await;
        lease.end().await;
        return Err(creation_error(e));
    }
    lease.end().await;
    s.note_vm(&plan.cid, Some(record));
    record_disks_attached(s, &plan).await;
    Ok(CallResult::VmCreated {
        vm_cid: plan.cid.to_string(),
        networks: Value::Object(network_plan::resolved_json(&plan.networks)),
    })
}

/// Everything decided from the request, the configuration and the cluster view before
/// anything is written: properties, blobstore, that the stemcell exists, the node (the
/// first persistent disk draws the VM to its node unless an IP or a pin says otherwise;
/// then the disks move) and the network plan.
async fn plan<'r, 's>(s: &Session<'s>, req: &'r CreateVm) -> Result<CreatePlan<'r, 's>, CpiError> {
    let props = VmProperties::parse(&req.cloud_properties)?;
    let config = s.config().await?;
    let blobstore = super::blobstore::for_agent(&req.env, &config.agent)?;
    // The stemcell's record and the cluster view are two reads of their own.
    let (stemcell, view) = tokio::join!(stemcell::check_exists(s, &req.stemcell_cid), s.view());
    let (stemcell, view) = (stemcell?, view?);
    let group = req
        .env
        .get("bosh")
        .and_then(|b| b.get("group"))
        .and_then(Value::as_str)
        .map(str::to_string);
    let mut demand = VmDemand {
        manual_ips: network_plan::manual_ips(&req.networks),
        // The AZ's (or vm_type's) node wins over the CPI's own placement.node.
        pinned_node: props.node.clone().or_else(|| config.placement.node.clone()),
        group: group.clone(),
        memory_mib: props.memory_mib(),
    };
    if let Some(first) = req.disk_cids.first() {
        let disk = s.disk(first).await?;
        let disk_node_ready = view
            .node(&disk.node)
            .is_some_and(|n| n.state == NodeState::Ready);
        if demand.manual_ips.is_empty() && demand.pinned_node.is_none() && disk_node_ready {
            demand.pinned_node = Some(disk.node);
        }
    }
    let node_name = placement::choose_node(&demand, &view.nodes, &view.vms)
        .map_err(|e| CpiError::from(e).context("create_vm"))?;
    let node = view
        .node(&node_name)
        .cloned()
        .ok_or_else(|| CpiError::cpi(format!("node {node_name} vanished from the view")))?;
    let networks = network_plan::plan(&req.networks, &node)?;
    Ok(CreatePlan {
        req,
        cid: VmCid::generate(),
        effective: props.effective(&config.vm_defaults),
        props,
        blobstore,
        stemcell,
        group,
        node,
        networks,
    })
}

/// The addresses to claim on the node: what VM containers hold there now (abandoned VMs,
/// without a record, are removed first), then [`wanted_addresses`].
async fn addresses_to_claim(
    s: &Session<'_>,
    docker: &NodeDocker,
    plan: &CreatePlan<'_, '_>,
) -> Result<Vec<claims::Wanted>, CpiError> {
    let key_prefix = &s.config().await?.etcd.key_prefix;
    let vm_containers = docker.containers_with_label(labels::VM_CID).await?;
    let vm_containers = super::abandoned::sweep(s, docker, vm_containers, key_prefix).await;
    super::abandoned::forget_vanished(s, &plan.node.name, &plan.req.agent_id, &vm_containers).await;
    let used = used_addresses(s, docker, &plan.node, vm_containers, &plan.networks).await?;
    Ok(wanted_addresses(
        &s.keys().await?,
        s.view().await?,
        &plan.node,
        &plan.networks,
        &used,
    ))
}

/// Writes the VM's record and claims `wanted` in one transaction on `lease`, filling the
/// claimed addresses into the plan and the record; an address taken or a pool exhausted
/// is an error (the caller ends the lease).
async fn claim(
    s: &Session<'_>,
    lease: &index::ProgressLease,
    record: &mut VmRecord,
    plan: &mut CreatePlan<'_, '_>,
    wanted: &[claims::Wanted],
) -> Result<(), CpiError> {
    let keys = s.keys().await?;
    let claimed =
        claims::claim_for_new_vm(s.etcd().await?, &keys, lease.id(), record, wanted).await?;
    match claimed {
        claims::Claimed::All(addresses) => {
            for claim in &addresses {
                if let Some(p) = plan
                    .networks
                    .iter_mut()
                    .find(|p| p.docker_network.as_deref() == Some(claim.network.as_str()))
                {
                    p.ip = Some(claim.ip);
                }
            }
            record.addresses = addresses;
            Ok(())
        }
        claims::Claimed::Taken {
            holder, on_lease, ..
        } if !on_lease && stale_claim(s, &holder).await => {
            // The holder's record is gone (removed by hand): its claim is garbage.
            Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: an address was claimed by VM {holder}, which has no record any more; the claim was removed, retry"
                ),
            )
            .retriable(true))
        }
        claims::Claimed::Taken {
            network,
            ip,
            holder,
            on_lease,
        } => {
            let state = if on_lease {
                "still being created"
            } else {
                "already created"
            };
            Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: IP {ip} on docker network {network} of node {} is taken by VM {holder} ({state})",
                    plan.node.name
                ),
            )
            // A create still running may fail and free the address; its lease expires
            // 20 s after a killed process.
            .retriable(on_lease))
        }
        claims::Claimed::Exhausted { network } => {
            rollback(s, None, vec![Undo::IndexRecord(Box::new(record.clone()))]).await;
            Err(CpiError::new(
                ErrorKind::VmCreationFailed,
                format!(
                    "create_vm: no free address left in the dynamic pool of docker network {network} on node {}",
                    plan.node.name
                ),
            ))
        }
    }
}

/// The record and the claims leave the lease: from now on they are permanent.
async fn make_permanent(
    s: &Session<'_>,
    lease: &index::ProgressLease,
    record: &VmRecord,
) -> Result<(), CpiError> {
    let keys = s.keys().await?;
    match claims::make_permanent(s.etcd().await?, &keys, lease.id(), record).await? {
        true => Ok(()),
        false => Err(CpiError::cloud(
            format!(
                "create_vm: VM {} lost its record or address claims (this process stalled past their lease)",
                record.cid
            ),
            true,
        )),
    }
}

/// The VM is complete: the disks' records follow (attach_disk and get_disks read the real
/// mounts, so a failure here is repaired later, not fatal).
async fn record_disks_attached(s: &Session<'_>, plan: &CreatePlan<'_, '_>) {
    for disk_cid in &plan.req.disk_cids {
        let updated = async {
            // This call's own copy: create_vm moved the disk and wrote it last.
            let mut disk = s.disk(disk_cid).await?;
            disk.vm = Some(plan.cid.clone());
            s.save_disk(&disk).await
        }
        .await;
        if let Err(e) = updated {
            tracing::warn!(vm = %plan.cid, disk = %disk_cid, "disk record not updated: {}", e.message);
        }
    }
}

/// Whether the permanent claim of `holder` is garbage (its VM has no record, as after an
/// operator removed the record by hand); if so, the claims naming it on this VM's static
/// addresses are removed, so a retry can claim them.
async fn stale_claim(s: &Session<'_>, holder: &str) -> bool {
    let Ok(cid) = VmCid::parse(holder) else {
        return false;
    };
    let outcome = async {
        // Fresh: the holder may have been written since this call's view.
        if s.vm_record_now(&cid).await?.is_some() {
            return Ok(false);
        }
        let keys = s.keys().await?;
        claims::forget_claims_of(s.etcd().await?, &keys, &cid).await?;
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

/// The node made ready for the VM: the stemcell's image on it, and its networks.
async fn prepare_node(
    s: &Session<'_>,
    docker: &NodeDocker,
    plan: &CreatePlan<'_, '_>,
) -> Result<(), CpiError> {
    let (image, networks) = tokio::join!(
        stemcell::ensure_on_node(s, docker, &plan.req.stemcell_cid, &plan.stemcell),
        prepare_networks(docker, &plan.node, &plan.networks),
    );
    image?;
    networks
}

/// Makes the VM on its ready node from the plan: disks, ephemeral volume, container with
/// the agent's files, started, addresses learnt where Docker chose them.
async fn build(
    s: &Session<'_>,
    docker: &NodeDocker,
    plan: &mut CreatePlan<'_, '_>,
    undo: &mut Vec<Undo>,
) -> Result<(), CpiError> {
    let req = plan.req;
    // A node prepared before it had a disk tree takes VMs without disks (they get disks
    // once recreated on a prepared node); a VM with disks needs the tree.
    let dir = match s.disks_dir_if_any(&plan.node.name).await? {
        Some(dir) => Some(dir),
        None if req.disk_cids.is_empty() => None,
        None => Some(s.disks_dir(&plan.node.name).await?),
    };
    let disks = match &dir {
        Some(dir) => disks_for_new_vm(s, docker, dir, &req.disk_cids).await?,
        None => Vec::new(),
    };
    let volume = make_ephemeral_volume(docker, plan, undo).await?;
    // A sized ephemeral disk is an image in the volume, a block device of the disk tree
    // that the start script mounts; without a size (or a tree) Docker mounts the volume.
    let sized = plan.props.ephemeral_disk.filter(|size| *size > 0);
    if sized.is_some() && dir.is_none() {
        tracing::warn!(vm = %plan.cid, node = %plan.node.name, "the node has no disk tree: the ephemeral disk is not held to its size");
    }
    let sized = sized.filter(|_| dir.is_some());
    let mut found = Vec::new();
    if let Some(dir) = &dir {
        // In place before the container exists: it starts with them.
        undo.push(Undo::DiskTree {
            disks_dir: dir.clone(),
            vm: plan.cid.to_string(),
        });
        if let Some(size) = sized {
            docker.attach_ephemeral_disk(dir, &plan.cid, size).await?;
        }
        for disk in &disks {
            let cid = disk.cid.as_str();
            let state = docker
                .attach_block_disk(dir, &plan.cid, cid, disk.size_mib)
                .await
                .map_err(|e| not_an_image(e, &disk.cid))?;
            found.push((dir, cid, state));
        }
    }
    let volume = match sized {
        Some(_) => Ephemeral::Device(&volume),
        None => Ephemeral::Volume(&volume),
    };
    make_container(s, docker, plan, dir.as_deref(), volume).await?;
    undo.push(Undo::Container(plan.cid.to_string()));
    for p in plan.networks.iter().filter(|p| !p.primary) {
        if let Some(net) = &p.docker_network {
            docker
                .connect_network(net, &plan.cid, container_spec::endpoint(p))
                .await?;
        }
    }
    let cids: Vec<DiskCid> = disks.iter().map(|d| d.cid.clone()).collect();
    upload_agent_files(s, docker, plan, &cids, dir.is_some()).await?;
    start(docker, plan).await?;
    for (dir, disk, state) in found {
        prepare_block_disk(docker, dir, &plan.cid, disk, state).await?;
    }
    // Docker starts a container with the address asked for or not at all: only an address
    // a foreign network chose has to be read back.
    if plan
        .networks
        .iter()
        .any(|p| p.docker_network.is_some() && p.ip.is_none())
    {
        learn_addresses(docker, &plan.cid, &mut plan.networks).await?;
    }
    Ok(())
}

/// For create_vm: the disks to bind into a new VM on the node of `docker`, moved to that
/// node where needed. Unknown disks and disks attached to another VM are refused before
/// anything is made; so is a disk whose volume is gone from its node.
async fn disks_for_new_vm(
    s: &Session<'_>,
    docker: &NodeDocker,
    disks_dir: &str,
    disk_cids: &[DiskCid],
) -> Result<Vec<DiskRecord>, CpiError> {
    let node = docker.name.as_str();
    let mut disks = Vec::new();
    for cid in disk_cids {
        let disk = s.disk(cid).await?;
        if let Some(other) = s.attached_vm(&disk).await? {
            return Err(CpiError::cloud(
                format!("create_vm: disk {cid} is attached to VM {other}"),
                false,
            ));
        }
        if disk.node == node {
            if !docker.volume_exists(cid.as_str()).await? {
                return Err(volume_gone(&disk));
            }
            s.ensure_unmounted(docker, Some(disks_dir), cid, None)
                .await?;
        }
        disks.push(disk);
    }
    let mut here = Vec::new();
    for mut disk in disks {
        if disk.node != node {
            s.remove_stray_copies(&mut disk).await;
            s.move_disk(&mut disk, node).await?;
            s.remove_old_copy(&mut disk).await;
        }
        here.push(disk);
    }
    Ok(here)
}

/// The VM's ephemeral volume, made on the node (and registered for undo).
async fn make_ephemeral_volume(
    docker: &NodeDocker,
    plan: &CreatePlan<'_, '_>,
    undo: &mut Vec<Undo>,
) -> Result<String, CpiError> {
    let volume = ephemeral_volume(&plan.cid);
    let mut volume_labels = HashMap::from([
        (labels::EPHEMERAL_OF.to_string(), plan.cid.to_string()),
        (labels::AGENT_ID.to_string(), plan.req.agent_id.clone()),
    ]);
    if let Some(size) = plan.props.ephemeral_disk {
        volume_labels.insert(labels::EPHEMERAL_DISK_MIB.into(), size.to_string());
    }
    docker.create_volume(&volume, volume_labels).await?;
    undo.push(Undo::Volume(volume.clone()));
    Ok(volume)
}

/// The labels of the VM's container.
fn container_labels(plan: &CreatePlan<'_, '_>, key_prefix: &str) -> HashMap<String, String> {
    let mut labels = HashMap::from([
        (labels::VM_CID.to_string(), plan.cid.to_string()),
        (labels::AGENT_ID.to_string(), plan.req.agent_id.clone()),
        (
            labels::STEMCELL.to_string(),
            plan.req.stemcell_cid.to_string(),
        ),
        (labels::CREATED_AT.to_string(), Timestamp::now().to_string()),
        (labels::INDEX.to_string(), key_prefix.to_string()),
    ]);
    if let Some(g) = &plan.group {
        labels.insert(labels::GROUP.into(), g.clone());
    }
    labels
}

/// How the VM's ephemeral volume reaches `/var/vcap/data`.
#[derive(Clone, Copy)]
enum Ephemeral<'a> {
    /// Mounted by Docker (no size asked for: bounded by the node's filesystem only).
    Volume(&'a str),
    /// Its image, a block device of the disk tree, mounted by the start script.
    Device(&'a str),
}

/// Creates the (stopped) container: stemcell image, labels, primary network, ephemeral
/// volume and its directory of the node's disk tree at the hints' root.
async fn make_container(
    s: &Session<'_>,
    docker: &NodeDocker,
    plan: &CreatePlan<'_, '_>,
    disks_dir: Option<&str>,
    ephemeral: Ephemeral<'_>,
) -> Result<(), CpiError> {
    let primary = plan.networks.iter().find(|p| p.primary);
    let dns: Vec<IpAddr> = plan
        .networks
        .iter()
        .find(|p| p.spec.default.iter().any(|d| d == "dns"))
        .or(primary)
        .map(|p| p.spec.dns.iter().filter_map(|d| d.parse().ok()).collect())
        .unwrap_or_default();
    let mut labels = container_labels(plan, &s.config().await?.etcd.key_prefix);
    if disks_dir.is_some() {
        labels.insert(labels::DISKS.into(), labels::BLOCK_DISKS.into());
    }
    let body = container_spec::build(&ContainerPlan {
        image: &stemcell::image_reference(&plan.req.stemcell_cid),
        hostname: &plan.cid,
        labels,
        props: &plan.props,
        effective: &plan.effective,
        networks: &plan.networks,
        ephemeral_volume: match ephemeral {
            Ephemeral::Volume(v) => Some(v),
            Ephemeral::Device(_) => None,
        },
        disk_tree: disks_dir.map(|d| format!("{d}/{}", plan.cid)).as_deref(),
        start_script: start_script::script(
            &plan.cid,
            primary.and_then(|p| p.ip).map(IpAddr::V4),
            &dns,
            plan.effective.start_mode,
            match ephemeral {
                Ephemeral::Device(v) => Some(v),
                Ephemeral::Volume(_) => None,
            },
        ),
    })?;
    Ok(docker.create_container(&plan.cid, body).await?)
}

/// Writes the agent's settings (networks, persistent `disks`, env) into the container;
/// with `block_disks`, the stemcell's agent configuration set to mount them as devices.
async fn upload_agent_files(
    s: &Session<'_>,
    docker: &NodeDocker,
    plan: &CreatePlan<'_, '_>,
    disks: &[DiskCid],
    block_disks: bool,
) -> Result<(), CpiError> {
    let persistent: BTreeMap<String, String> = disks
        .iter()
        .map(|cid| (cid.to_string(), agent_files::disk_hint(cid)))
        .collect();
    let settings = agent_files::settings(
        &plan.req.agent_id,
        &plan.cid,
        &s.config().await?.agent,
        plan.blobstore,
        &plan.networks,
        &persistent,
        &plan.req.env,
    );
    let agent_config = match block_disks {
        true => {
            let stemcells = docker
                .read_file(&plan.cid, agent_files::AGENT_CONFIG_PATH)
                .await?;
            let ours = stemcells.and_then(|f| agent_files::block_disk_agent_config(&f.data));
            if ours.is_none() {
                // Its agent keeps its defaults: disks may not mount.
                tracing::warn!(vm = %plan.cid, stemcell = %plan.req.stemcell_cid, "the stemcell has no readable {}: its agent is not set to mount disks as devices", agent_files::AGENT_CONFIG_PATH);
            }
            ours
        }
        false => None,
    };
    let archive = agent_files::archive(&plan.cid, &settings, agent_config)
        .map_err(|e| CpiError::cpi(format!("cannot pack the agent settings: {e}")))?;
    Ok(docker.upload_archive(&plan.cid, "/", archive).await?)
}

/// Starts the container. An address already in use (the claim was ours) is held by
/// something outside this CPI's VMs, and said so.
async fn start(docker: &NodeDocker, plan: &CreatePlan<'_, '_>) -> Result<(), CpiError> {
    let message = match docker.start(&plan.cid).await {
        Ok(()) => return Ok(()),
        // The daemon's 403 on start: an address is in use. The claim was ours, so something
        // outside this CPI's VMs holds it.
        Err(DockerError::Forbidden { message, .. }) => message,
        Err(e) => return Err(e.into()),
    };
    let ips: Vec<String> = plan
        .networks
        .iter()
        .filter_map(|p| p.ip.map(|ip| ip.to_string()))
        .collect();
    Err(CpiError::new(
        ErrorKind::VmCreationFailed,
        format!(
            "create_vm: node {}: an address of {} is held by a container that is not a VM of this CPI: {}",
            plan.node.name,
            ips.join(", "),
            crate::protocol::call::printable(&message)
        ),
    ))
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
    s: &Session<'_>,
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
        // Fresh: a concurrent create_vm may have written the holder's record since.
        match s.vm_record_now(&holder_cid).await? {
            // No record (a killed create's expired, or never written): the director
            // never learned this VM, so it is garbage holding the address.
            None => {
                s.remove_abandoned(docker, &holder_cid, &format!("held {ip}"))
                    .await?;
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
async fn learn_addresses(
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

async fn rollback(s: &Session<'_>, docker: Option<&NodeDocker>, undo: Vec<Undo>) {
    let mut node_clean = true;
    for step in undo.into_iter().rev() {
        let result = match (&step, docker) {
            (Undo::Container(name), Some(d)) => d.remove_container(name).await.map_err(Into::into),
            (Undo::Volume(name), Some(d)) => d.remove_volume(name).await.map_err(Into::into),
            (Undo::DiskTree { disks_dir, vm }, Some(d)) => {
                d.forget_vm_disks(disks_dir, vm).await.map_err(Into::into)
            }
            (Undo::IndexRecord(record), _) if node_clean => s.forget_vm(record).await,
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
