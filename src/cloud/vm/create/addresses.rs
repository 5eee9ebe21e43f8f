//! The addresses a new VM gets on its node: what VM containers there hold now (static
//! IPs held by garbage freed), the candidates to claim, the claim transaction written
//! with the VM's record, and the addresses Docker chose read back after start.

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use std::collections::{HashMap, HashSet};
use std::net::Ipv4Addr;

use bollard::models::ContainerSummary;

use super::CreatePlan;
use super::error::CreateError;
use super::rollback::UndoStack;
use crate::cloud::vm::labels;
use crate::cloud::vm::network_plan::{self, PlannedNetwork};
use crate::cluster::{Keys, NodeRecord, VmRecord, VmState, claims, index};
use crate::protocol::{CpiError, NetworkType, VmCid};

/// The addresses to claim on the node: what VM containers hold there now (abandoned VMs,
/// without a record, are removed first), then [`wanted_addresses`].
pub(super) async fn addresses_to_claim(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    plan: &CreatePlan<'_, '_>,
) -> Result<Vec<claims::Wanted>, CpiError> {
    let key_prefix = &ctx.config().await?.etcd.key_prefix;
    let vm_containers = docker.containers_with_label(labels::VM_CID).await?;
    let vm_containers =
        crate::cloud::vm::abandoned::sweep(ctx, docker, vm_containers, key_prefix).await;
    crate::cloud::vm::abandoned::forget_vanished(
        ctx,
        &plan.node.name,
        &plan.req.agent_id,
        &vm_containers,
    )
    .await;
    let used = used_addresses(ctx, docker, &plan.node, vm_containers, &plan.networks).await?;
    Ok(wanted_addresses(
        &ctx.keys().await?,
        &ctx.cluster().await?.claimed_addresses,
        &plan.node,
        &plan.networks,
        &used,
    ))
}

/// Writes the VM's record and claims `wanted` in one transaction on `lease`, filling the
/// claimed addresses into the plan and the record; an address taken or a pool exhausted
/// is an error (the caller ends the lease; an exhausted pool's record and other claims,
/// written on the lease, are undone here).
pub(super) async fn claim(
    ctx: &CloudContext<'_>,
    lease: &index::ProgressLease,
    record: &mut VmRecord,
    plan: &mut CreatePlan<'_, '_>,
    wanted: &[claims::Wanted],
) -> Result<(), CpiError> {
    let claimed = ctx.claim_new_vm(lease, record, wanted).await?;
    let node = plan.node.name.clone();
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
        } if !on_lease && stale_claim(ctx, &holder).await => {
            Err(CreateError::StaleClaim { holder }.into())
        }
        claims::Claimed::Taken {
            network,
            ip,
            holder,
            on_lease,
        } => Err(CreateError::ClaimTaken {
            ip,
            network,
            node,
            holder,
            // A create still running may fail and free the address; its lease expires
            // 20 s after a killed process.
            on_lease,
        }
        .into()),
        claims::Claimed::Exhausted { network } => {
            UndoStack::for_record(record).run(ctx, None).await;
            Err(CreateError::PoolExhausted { network, node }.into())
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
        // Fresh: the holder may have been written since this call's view.
        if ctx.vm_record_now(&cid).await?.is_some() {
            return Ok(false);
        }
        ctx.forget_claims_of(&cid).await?;
        Ok::<bool, CpiError>(true)
    }
    .await;
    outcome.unwrap_or_else(|e| {
        tracing::warn!(vm = %cid, "cannot check its address claim: {}", e.message);
        false
    })
}

/// The addresses to claim for the planned networks: each static IP, and for each dynamic
/// network on a subnet the CPI knows, its pool without the addresses containers hold and
/// those claimed when the view was read (a claim made since is skipped inside the claim
/// transaction).
fn wanted_addresses(
    keys: &Keys,
    claimed: &HashSet<String>,
    node: &NodeRecord,
    planned: &[PlannedNetwork],
    used: &Holders,
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
                    .filter(|ip| !claimed.contains(&keys.address(&node.name, network, *ip)))
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

/// Addresses held on the node, with their holder (a VM cid, or a container id).
type Holders = HashMap<Ipv4Addr, String>;

/// The addresses VM containers (`containers`) hold on the planned Docker networks, with
/// their holder (its VM cid label, else its container id).
fn holders(containers: Vec<ContainerSummary>, planned: &[PlannedNetwork]) -> Holders {
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

/// Addresses held on the node by VM containers (`containers`, running or not, abandoned
/// ones already removed), with their holder. A static IP held by a VM without a record (a
/// killed create's, or one the index lost) is freed by removing that VM; held by a VM
/// still being created, it is a retriable `VMCreationFailed`; by a created VM, a final one.
async fn used_addresses(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    node: &NodeRecord,
    containers: Vec<ContainerSummary>,
    planned: &[PlannedNetwork],
) -> Result<Holders, CpiError> {
    let mut used = holders(containers, planned);
    for p in planned {
        if p.spec.kind != NetworkType::Manual {
            continue;
        }
        let Some(ip) = p.ip else { continue };
        let Some(holder) = used.get(&ip).cloned() else {
            continue;
        };
        free_static_ip(ctx, docker, node, p, ip, holder).await?;
        used.remove(&ip);
    }
    Ok(used)
}

/// The static IP `ip` of `p`, held by `holder`: freed when the holder is a VM without a
/// record (the director never learned it: garbage holding the address), else refused.
async fn free_static_ip(
    ctx: &CloudContext<'_>,
    docker: &NodeHandle<'_>,
    node: &NodeRecord,
    p: &PlannedNetwork,
    ip: Ipv4Addr,
    holder: String,
) -> Result<(), CpiError> {
    let (network, node) = (p.name.clone(), node.name.clone());
    let Ok(holder_cid) = VmCid::parse(&holder) else {
        let holder = crate::protocol::call::printable(&holder);
        return Err(CreateError::IpHeldByContainer {
            ip,
            network,
            holder,
            node,
        }
        .into());
    };
    // Fresh: a concurrent create_vm may have written the holder's record since.
    match ctx.vm_record_now(&holder_cid).await? {
        // No record (a killed create's expired, or never written).
        None => {
            ctx.remove_abandoned(docker, &holder_cid, &format!("held {ip}"))
                .await
        }
        Some(r) if r.state == VmState::Creating => Err(CreateError::IpTakenByCreate {
            ip,
            network,
            holder,
            node,
        }
        .into()),
        Some(_) => Err(CreateError::IpUsed {
            ip,
            network,
            holder,
            node,
        }
        .into()),
    }
}

/// Reads back the addresses Docker really gave, filling those a foreign network chose.
pub(super) async fn learn_addresses(
    docker: &NodeHandle<'_>,
    cid: &VmCid,
    planned: &mut [PlannedNetwork],
) -> Result<(), CpiError> {
    let inspect =
        docker
            .inspect_container(cid)
            .await?
            .ok_or_else(|| CreateError::VanishedAfterStart {
                vm: cid.clone(),
                node: docker.name.clone(),
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
                return Err(CreateError::WrongAddress {
                    vm: cid.clone(),
                    got,
                    network: name.clone(),
                    want,
                }
                .into());
            }
            (None, Some(got)) => p.ip = Some(got),
            _ => {}
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::vm::network_plan::tests::node;
    use bollard::models::{ContainerSummaryNetworkSettings, EndpointIpamConfig, EndpointSettings};
    use serde_json::json;

    fn planned(v: serde_json::Value) -> Vec<PlannedNetwork> {
        network_plan::plan(&serde_json::from_value(v).unwrap(), &node()).unwrap()
    }

    fn container(id: &str, vm: Option<&str>, network: &str, ip: &str) -> ContainerSummary {
        ContainerSummary {
            id: Some(id.into()),
            labels: vm.map(|vm| [(labels::VM_CID.to_string(), vm.to_string())].into()),
            network_settings: Some(ContainerSummaryNetworkSettings {
                networks: Some(
                    [(
                        network.to_string(),
                        EndpointSettings {
                            ipam_config: Some(EndpointIpamConfig {
                                ipv4_address: Some(ip.into()),
                                ..Default::default()
                            }),
                            ..Default::default()
                        },
                    )]
                    .into(),
                ),
            }),
            ..Default::default()
        }
    }

    #[test]
    fn holders_are_named_by_vm_cid_else_container_id_on_planned_networks_only() {
        let nets = planned(json!({"d": {"type": "dynamic"}}));
        let used = holders(
            vec![
                container("c1", Some("vm-1"), "bosh", "10.1.1.20"),
                container("c2", None, "bosh", "10.1.1.21"),
                container("c3", Some("vm-3"), "elsewhere", "10.9.0.2"),
            ],
            &nets,
        );
        let ip = |s: &str| s.parse::<Ipv4Addr>().unwrap();
        assert_eq!(used.len(), 2, "{used:?}");
        assert_eq!(used[&ip("10.1.1.20")], "vm-1");
        assert_eq!(used[&ip("10.1.1.21")], "c2");
    }

    #[test]
    fn static_ips_are_wanted_as_given_dynamic_ones_from_the_free_pool() {
        let keys = Keys::with_prefixes("/mc", "/coreos.com/network");
        let nets = planned(json!({
            "m": {"type": "manual", "ip": "10.1.1.10"},
            "d": {"type": "dynamic", "cloud_properties": {"name": "other"}}}));
        let wanted = wanted_addresses(&keys, &HashSet::new(), &node(), &nets, &Holders::new());
        assert_eq!(
            wanted,
            vec![claims::Wanted::Fixed {
                network: "bosh".into(),
                ip: "10.1.1.10".parse().unwrap(),
            }],
            "a foreign network chooses its own dynamic address"
        );
        let nets = planned(json!({"d": {"type": "dynamic"}}));
        let used: Holders = [("10.1.1.192".parse().unwrap(), "vm-1".to_string())].into();
        let claimed: HashSet<String> =
            [keys.address(&"n1".into(), "bosh", "10.1.1.193".parse().unwrap())].into();
        let wanted = wanted_addresses(&keys, &claimed, &node(), &nets, &used);
        let [
            claims::Wanted::AnyOf {
                network,
                candidates,
            },
        ] = wanted.as_slice()
        else {
            panic!("{wanted:?}");
        };
        assert_eq!(network, "bosh");
        assert_eq!(
            candidates.len(),
            61,
            "63 in the pool, one used, one claimed"
        );
        assert_eq!(candidates[0].to_string(), "10.1.1.194");
    }
}
