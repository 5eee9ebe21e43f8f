//! Making the VM on its node: the node made ready (stemcell image, networks), the
//! disks moved and bound, the ephemeral volume, the container with the agent's files,
//! started. Every step pushes its undo.

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use std::collections::HashMap;
use std::net::IpAddr;

use super::CreatePlan;
use super::addresses::learn_addresses;
use super::error::CreateError;
use super::rollback::{Undo, UndoStack};
use crate::cloud::context::disks::volume_gone;
use crate::cloud::stemcell;
use crate::cloud::vm::agent_files::{AgentIdentity, AgentSettings};
use crate::cloud::vm::block_disks::{not_an_image, prepare_block_disk};
use crate::cloud::vm::container_spec::{self, ContainerPlan};
use crate::cloud::vm::network_plan::PlannedNetwork;
use crate::cloud::vm::{agent_files, ephemeral_volume, labels, start_script};
use crate::cluster::{DiskRecord, NodeRecord};
use crate::docker::mounter::BlockDisk;
use crate::docker::{BridgeSpec, DockerError};
use crate::mib::Mib;
use crate::protocol::{CpiError, DiskCid};
use crate::timestamp::Timestamp;

/// The node made ready for the VM: the stemcell's image on it, and its networks.
pub(super) async fn prepare_node(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    plan: &CreatePlan<'_, '_>,
) -> Result<(), CpiError> {
    let (image, networks) = tokio::join!(
        stemcell::ensure_on_node(ctx, docker, &plan.req.stemcell_cid, &plan.stemcell),
        prepare_networks(docker, &plan.node, &plan.networks),
    );
    image?;
    networks
}

/// Ensures the node's BOSH network exists on its Flannel subnet; other Docker networks
/// named in network cloud_properties must exist already.
async fn prepare_networks(
    docker: &NodeHandle<'_>,
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
        } else if !docker.network_exists(name).await? {
            return Err(CreateError::NoDockerNetwork {
                network: p.name.clone(),
                docker_network: name.clone(),
                node: node.name.clone(),
            }
            .into());
        }
    }
    Ok(())
}

/// Makes the VM on its ready node from the plan: disks, ephemeral volume, container with
/// the agent's files, started, addresses learnt where Docker chose them.
pub(super) async fn build(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    plan: &mut CreatePlan<'_, '_>,
    undo: &mut UndoStack,
) -> Result<(), CpiError> {
    let req = plan.req;
    // A node prepared before it had a disk tree takes VMs without disks (they get disks
    // once recreated on a prepared node); a VM with disks needs the tree.
    let dir = match ctx.disks_dir_if_any(&plan.node.name).await? {
        Some(dir) => Some(dir),
        None if req.disk_cids.is_empty() => None,
        None => Some(ctx.disks_dir(&plan.node.name).await?),
    };
    let disks = match &dir {
        Some(dir) => disks_for_new_vm(ctx, docker, dir, &req.disk_cids).await?,
        None => Vec::new(),
    };
    let volume = make_ephemeral_volume(docker, plan, undo).await?;
    // A sized ephemeral disk is an image in the volume, a block device of the disk tree
    // that the start script mounts; without a size (or a tree) Docker mounts the volume.
    let sized = plan
        .props
        .ephemeral_disk
        .map(Mib::get)
        .filter(|size| *size > 0);
    if sized.is_some() && dir.is_none() {
        tracing::warn!(vm = %plan.cid, node = %plan.node.name, "the node has no disk tree: the ephemeral disk is not held to its size");
    }
    let sized = sized.filter(|_| dir.is_some());
    let found = match &dir {
        Some(dir) => bind_disks(docker, plan, dir, sized, &disks, undo).await?,
        None => Vec::new(),
    };
    let volume = match sized {
        Some(_) => Ephemeral::Device(&volume),
        None => Ephemeral::Volume(&volume),
    };
    make_container(ctx, docker, plan, dir.as_deref(), volume).await?;
    undo.push(Undo::Container(plan.cid.clone()));
    let cids: Vec<DiskCid> = disks.iter().map(|d| d.cid.clone()).collect();
    finish(ctx, docker, plan, &cids, dir.as_deref(), found).await
}

/// Binds the sized ephemeral disk and the persistent disks into the VM's directory of
/// the disk tree, before the container exists (it starts with them); what the mounter
/// found of each disk, for [`prepare_block_disk`].
async fn bind_disks<'d>(
    docker: &NodeHandle<'_>,
    plan: &CreatePlan<'_, '_>,
    dir: &str,
    sized: Option<u64>,
    disks: &'d [DiskRecord],
    undo: &mut UndoStack,
) -> Result<Vec<(&'d DiskCid, BlockDisk)>, CpiError> {
    undo.push(Undo::DiskTree {
        disks_dir: dir.to_string(),
        vm: plan.cid.clone(),
    });
    if let Some(size) = sized {
        docker.attach_ephemeral_disk(dir, &plan.cid, size).await?;
    }
    let mut found = Vec::new();
    for disk in disks {
        let cid = &disk.cid;
        let state = docker
            .attach_block_disk(dir, &plan.cid, cid, disk.size_mib)
            .await
            .map_err(|e| not_an_image(e, &disk.cid))?;
        found.push((cid, state));
    }
    Ok(found)
}

/// The made container connected to its other networks, given the agent's files and
/// started; its disks made ready, and the addresses Docker chose read back.
async fn finish(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    plan: &mut CreatePlan<'_, '_>,
    disks: &[DiskCid],
    dir: Option<&str>,
    found: Vec<(&DiskCid, BlockDisk)>,
) -> Result<(), CpiError> {
    for p in plan.networks.iter().filter(|p| !p.primary) {
        if let Some(net) = &p.docker_network {
            docker
                .connect_network(net, &plan.cid, container_spec::endpoint(p))
                .await?;
        }
    }
    upload_agent_files(ctx, docker, plan, disks, dir.is_some()).await?;
    start(docker, plan).await?;
    if let Some(dir) = dir {
        for (disk, state) in found {
            prepare_block_disk(docker, dir, &plan.cid, disk, state).await?;
        }
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
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    disks_dir: &str,
    disk_cids: &[DiskCid],
) -> Result<Vec<DiskRecord>, CpiError> {
    let node = &docker.name;
    let mut disks = Vec::new();
    for cid in disk_cids {
        let disk = ctx.disk(cid).await?;
        if let Some(other) = ctx.attached_vm(&disk).await? {
            return Err(CreateError::DiskAttached {
                disk: cid.clone(),
                vm: other,
            }
            .into());
        }
        if disk.node == *node {
            if !docker.volume_exists(cid.as_str()).await? {
                return Err(volume_gone(&disk));
            }
            ctx.ensure_unmounted(docker, Some(disks_dir), cid, None)
                .await?;
        }
        disks.push(disk);
    }
    let mut here = Vec::new();
    for mut disk in disks {
        if disk.node != *node {
            ctx.remove_stray_copies(&mut disk).await;
            ctx.move_disk(&mut disk, node).await?;
            ctx.remove_old_copy(&mut disk).await;
        }
        here.push(disk);
    }
    Ok(here)
}

/// The VM's ephemeral volume, made on the node (and registered for undo).
async fn make_ephemeral_volume(
    docker: &NodeHandle<'_>,
    plan: &CreatePlan<'_, '_>,
    undo: &mut UndoStack,
) -> Result<String, CpiError> {
    let volume = ephemeral_volume(&plan.cid);
    let mut volume_labels = HashMap::from([
        (labels::EPHEMERAL_OF.to_string(), plan.cid.to_string()),
        (labels::AGENT_ID.to_string(), plan.req.agent_id.clone()),
    ]);
    if let Some(size) = plan.props.ephemeral_disk {
        volume_labels.insert(labels::EPHEMERAL_DISK_MIB.into(), size.get().to_string());
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
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
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
    let mut labels = container_labels(plan, &ctx.config().await?.etcd.key_prefix);
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
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    plan: &CreatePlan<'_, '_>,
    disks: &[DiskCid],
    block_disks: bool,
) -> Result<(), CpiError> {
    let config = ctx.config().await?;
    let who = AgentIdentity {
        agent_id: &plan.req.agent_id,
        vm_cid: &plan.cid,
        agent: &config.agent,
        blobstore: plan.blobstore,
    };
    let settings = AgentSettings::new(who, &plan.networks, disks, &plan.req.env);
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
    let archive =
        agent_files::archive(&plan.cid, &settings, agent_config).map_err(CreateError::Pack)?;
    Ok(docker.upload_archive(&plan.cid, "/", archive).await?)
}

/// Starts the container. An address already in use (the claim was ours) is held by
/// something outside this CPI's VMs, and said so.
async fn start(docker: &NodeHandle<'_>, plan: &CreatePlan<'_, '_>) -> Result<(), CpiError> {
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
    Err(CreateError::AddressHeldOutside {
        node: plan.node.name.clone(),
        ips: ips.join(", "),
        message: crate::protocol::call::printable(&message),
    }
    .into())
}
