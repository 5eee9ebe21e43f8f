//! `create_vm`: check the request (stemcell included), place, claim the addresses,
//! prepare the node (stemcell, network, disks), create the container with the agent's
//! files, start it. The index record and the address claims are written in one
//! transaction before anything is made on the node, and every step registers its undo, so
//! a failure (or a killed process, through the lease) leaves nothing behind.

mod addresses;
mod container;
mod error;
mod rollback;

use serde_json::Value;

use super::network_plan::{self, PlannedNetwork};
use super::properties::{Effective, VmProperties};
use crate::cloud::context::NodeHandle;
use crate::cloud::errors::creation_failure;
use crate::cloud::{CloudContext, stemcell};
use crate::cluster::{NodeRecord, NodeState, VmRecord, VmState, claims, index};
use crate::config::BlobstoreSettings;
use crate::placement::{self, VmDemand};
use crate::protocol::{CallResult, CpiError, CreateVm, VmCid};
use crate::timestamp::Timestamp;
pub(crate) use error::CreateError;
use rollback::UndoStack;

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
pub(crate) async fn create(ctx: &CloudContext<'_>, req: CreateVm) -> Result<CallResult, CpiError> {
    create_classified(ctx, &req).await.map_err(creation_failure)
}

async fn create_classified(ctx: &CloudContext<'_>, req: &CreateVm) -> Result<CallResult, CpiError> {
    let mut plan = plan(ctx, req).await?;
    let docker = ctx.node(&plan.node.name).await?;
    // Three steps that need nothing of each other run side by side: what the node's VM
    // containers hold, the lease, and the node made ready (stemcell image, networks; both
    // kept if the create fails, as they serve the next one).
    // While creating, the record and the address claims live on that lease: if this
    // process is killed, they expire and the next create_vm knows the leftovers are garbage.
    let (wanted, lease, ready) = tokio::join!(
        addresses::addresses_to_claim(ctx, &docker, &plan),
        ctx.progress_lease(),
        container::prepare_node(ctx, &docker, &plan),
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
    let made = make_on_lease(ctx, &docker, &lease, &mut plan, &wanted).await;
    lease.end().await;
    made?;
    record_disks_attached(ctx, &plan).await;
    Ok(CallResult::VmCreated {
        vm_cid: plan.cid.clone(),
        networks: Value::Object(network_plan::resolved_json(&plan.networks)),
    })
}

/// What is done on `lease` (the caller ends it): the record and the claims written, the
/// VM made, the record and claims made permanent. A failure after the claim undoes what
/// was made, last first.
async fn make_on_lease(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    lease: &index::ProgressLease,
    plan: &mut CreatePlan<'_, '_>,
    wanted: &[claims::Wanted],
) -> Result<VmRecord, CpiError> {
    let mut record = plan.record();
    addresses::claim(ctx, lease, &mut record, plan, wanted).await?;
    tracing::info!(vm = %plan.cid, node = %plan.node.name, "creating VM");
    let mut undo = UndoStack::for_record(&record);
    let built = async {
        container::build(ctx, docker, plan, &mut undo).await?;
        record.state = VmState::Created;
        make_permanent(ctx, lease, &record).await
    }
    .await;
    if let Err(e) = built {
        tracing::warn!(vm = %plan.cid, node = %plan.node.name, "create_vm failed, undoing: {}", e.message);
        undo.run(ctx, Some(docker)).await;
        return Err(creation_failure(e));
    }
    Ok(record)
}

/// Everything decided from the request, the configuration and the cluster view before
/// anything is written: properties, blobstore, that the stemcell exists, the node (the
/// first persistent disk draws the VM to its node unless an IP or a pin says otherwise;
/// then the disks move) and the network plan.
async fn plan<'r, 's>(
    ctx: &'s CloudContext<'_>,
    req: &'r CreateVm,
) -> Result<CreatePlan<'r, 's>, CpiError> {
    let props = VmProperties::parse(&req.cloud_properties)?;
    let config = ctx.config().await?;
    let blobstore = crate::cloud::vm::blobstore::for_agent(&req.env, &config.agent)?;
    // The stemcell's record and the cluster view are two reads of their own.
    let (stemcell, view) = tokio::join!(
        stemcell::check_exists(ctx, &req.stemcell_cid),
        ctx.cluster()
    );
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
        pinned_node: placement::pinned(props.node.as_deref(), config.placement.node.as_ref())
            .map_err(|e| CpiError::from(e).context("create_vm"))?,
        group: group.clone(),
        memory_mib: props.memory_mib(),
    };
    if let Some(first) = req.disk_cids.first() {
        let disk = ctx.disk(first).await?;
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
        .ok_or(CreateError::NodeVanished(node_name))?;
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

/// The record and the claims leave the lease: from now on they are permanent.
async fn make_permanent(
    ctx: &CloudContext<'_>,
    lease: &index::ProgressLease,
    record: &VmRecord,
) -> Result<(), CpiError> {
    match ctx.make_vm_permanent(lease, record).await? {
        true => Ok(()),
        false => Err(CreateError::LostRecord {
            vm: record.cid.clone(),
        }
        .into()),
    }
}

/// The VM is complete: the disks' records follow (attach_disk and get_disks read the real
/// mounts, so a failure here is repaired later, not fatal).
async fn record_disks_attached(ctx: &CloudContext<'_>, plan: &CreatePlan<'_, '_>) {
    for disk_cid in &plan.req.disk_cids {
        let updated = async {
            // This call's own copy: create_vm moved the disk and wrote it last.
            let mut disk = ctx.disk(disk_cid).await?;
            disk.vm = Some(plan.cid.clone());
            Ok::<(), CpiError>(ctx.save_disk(&disk).await?)
        }
        .await;
        if let Err(e) = updated {
            tracing::warn!(vm = %plan.cid, disk = %disk_cid, "disk record not updated: {}", e.message);
        }
    }
}
