//! Placement decisions as pure functions of the request and the cluster: no I/O here, so
//! every rule is unit-tested.

use std::net::Ipv4Addr;

use crate::cluster::{NodeRecord, NodeState, VmRecord};
use crate::echo::printable;
use crate::node_name::NodeName;

/// Why no node can take a VM (or a disk): the rule that failed, with the values that made
/// it fail, so the message tells the operator what to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlacementError {
    /// No node is registered at all.
    #[error("the cluster has no nodes registered")]
    NoNodes,
    /// A static IP lies in no node's subnet (`subnets`: each node with its subnet).
    #[error("{ip} is in no node's subnet ({subnets})")]
    OutsideEverySubnet { ip: Ipv4Addr, subnets: String },
    /// Two static IPs of the VM belong to different nodes.
    #[error(
        "the VM's static IPs are on different nodes ({first} on {first_node}, {ip} on {node}): a VM lives on one node"
    )]
    IpsOnDifferentNodes {
        first: Ipv4Addr,
        first_node: NodeName,
        ip: Ipv4Addr,
        node: NodeName,
    },
    /// The pinned node is not registered (`shown`: its name, cut short).
    #[error(
        "node '{shown}' (cloud_properties.node or the CPI's placement.node) is not a registered node"
    )]
    UnknownNode { shown: String },
    /// The VM is pinned to one node but a static IP belongs to another.
    #[error(
        "the VM is pinned to node '{pinned}' but static IP {ip} is in the subnet of node {owner}"
    )]
    PinnedElsewhere {
        pinned: NodeName,
        ip: Ipv4Addr,
        owner: NodeName,
    },
    /// The node the VM must go to takes no new VMs.
    #[error("node {node} is cordoned (takes no new VMs); uncordon it or use an IP of another node")]
    Cordoned { node: NodeName },
    /// The node the VM must go to has not enough memory left.
    #[error(
        "node {node} has no room for {wanted_mib} MiB more ({in_use_mib} MiB of {capacity_mib} MiB in use)"
    )]
    NoRoom {
        node: NodeName,
        wanted_mib: u64,
        in_use_mib: u64,
        capacity_mib: u64,
    },
    /// Every node is cordoned.
    #[error("every node is cordoned")]
    AllCordoned,
    /// No ready node has the memory left.
    #[error("no ready node has {memory_mib} MiB of memory free")]
    NoMemoryFree { memory_mib: u64 },
    /// No node is big enough for the size at all (`biggest_*`: the largest nodes).
    #[error(
        "no node can hold {cpus} CPUs and {ram_mib} MiB of RAM (largest: {biggest_cpu}; {biggest_ram})"
    )]
    TooBig {
        cpus: u64,
        ram_mib: u64,
        biggest_cpu: String,
        biggest_ram: String,
    },
}

/// The size of a VM, as `calculate_vm_cloud_properties` asks about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct VmSize {
    /// CPUs.
    pub(crate) cpus: u64,
    /// Memory in MiB.
    pub(crate) ram_mib: u64,
}

/// What a new VM asks of placement.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct VmDemand {
    /// Static IPs of its manual networks: they pin the node whose subnet holds them.
    pub(crate) manual_ips: Vec<Ipv4Addr>,
    /// `cloud_properties.node` (set by the generated cloud-config's AZs), else the CPI's
    /// `placement.node` (set per CPI by a cpi-config).
    pub(crate) pinned_node: Option<NodeName>,
    /// `env.bosh.group`: VMs of one group are spread across nodes.
    pub(crate) group: Option<String>,
    /// Memory limit in MiB (0: none).
    pub(crate) memory_mib: u64,
}

/// The node a request pins: its `cloud_properties.node` (`requested`), parsed, else the
/// CPI's `placement.node` (`configured`). A requested name that breaks the rules of node
/// names is no registered node's: it is refused as an unknown node, in the same words.
pub(crate) fn pinned(
    requested: Option<&str>,
    configured: Option<&NodeName>,
) -> Result<Option<NodeName>, PlacementError> {
    match requested {
        Some(name) => NodeName::parse(name)
            .map(Some)
            .map_err(|_| PlacementError::UnknownNode {
                shown: printable(name),
            }),
        None => Ok(configured.cloned()),
    }
}

/// Chooses the node for a new VM, or says why none fits. Rules, in order: manual IPs pin
/// the node whose Flannel subnet holds them (all on one node); `node` pins by name; else
/// the ready node with room for the memory and the fewest VMs of the same group, then the
/// fewest VMs, then by name (deterministic).
pub(crate) fn choose_node(
    demand: &VmDemand,
    nodes: &[NodeRecord],
    vms: &[VmRecord],
) -> Result<NodeName, PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let by_ips = node_of_manual_ips(&demand.manual_ips, nodes)?;
    match pinned_node(demand, by_ips, nodes)? {
        Some(node) => check_pinned(node, demand.memory_mib, vms),
        None => least_loaded(demand, nodes, vms),
    }
}

/// The node whose Flannel subnet holds every manual IP (`None` without manual IPs).
fn node_of_manual_ips<'a>(
    manual_ips: &[Ipv4Addr],
    nodes: &'a [NodeRecord],
) -> Result<Option<&'a NodeRecord>, PlacementError> {
    let mut pinned: Option<&NodeRecord> = None;
    for ip in manual_ips {
        let owner = nodes
            .iter()
            .find(|n| n.subnet.contains(ip))
            .ok_or_else(|| {
                let subnets: Vec<String> = nodes
                    .iter()
                    .map(|n| format!("{} {}", n.name, n.subnet))
                    .collect();
                PlacementError::OutsideEverySubnet {
                    ip: *ip,
                    subnets: subnets.join(", "),
                }
            })?;
        if let Some(p) = pinned
            && p.name != owner.name
        {
            return Err(PlacementError::IpsOnDifferentNodes {
                first: manual_ips[0],
                first_node: p.name.clone(),
                ip: *ip,
                node: owner.name.clone(),
            });
        }
        pinned = Some(owner);
    }
    Ok(pinned)
}

/// The node the demand pins by name, which must be the one its manual IPs pin (`by_ips`);
/// else `by_ips`.
fn pinned_node<'a>(
    demand: &VmDemand,
    by_ips: Option<&'a NodeRecord>,
    nodes: &'a [NodeRecord],
) -> Result<Option<&'a NodeRecord>, PlacementError> {
    let Some(name) = &demand.pinned_node else {
        return Ok(by_ips);
    };
    let node =
        nodes
            .iter()
            .find(|n| &n.name == name)
            .ok_or_else(|| PlacementError::UnknownNode {
                shown: printable(name),
            })?;
    if let Some(p) = by_ips
        && p.name != node.name
    {
        return Err(PlacementError::PinnedElsewhere {
            pinned: name.clone(),
            ip: demand.manual_ips[0],
            owner: p.name.clone(),
        });
    }
    Ok(Some(node))
}

/// A pinned node takes the VM only when it is not cordoned and has room for its memory.
fn check_pinned(
    node: &NodeRecord,
    memory_mib: u64,
    vms: &[VmRecord],
) -> Result<NodeName, PlacementError> {
    if node.state == NodeState::Cordoned {
        return Err(PlacementError::Cordoned {
            node: node.name.clone(),
        });
    }
    if !has_room(node, memory_mib, vms) {
        return Err(PlacementError::NoRoom {
            node: node.name.clone(),
            wanted_mib: memory_mib,
            in_use_mib: memory_in_use(node, vms),
            capacity_mib: node.capacity.memory_mib,
        });
    }
    Ok(node.name.clone())
}

/// The ready node with room for the memory and the fewest VMs of the same group, then
/// the fewest VMs, then by name.
fn least_loaded(
    demand: &VmDemand,
    nodes: &[NodeRecord],
    vms: &[VmRecord],
) -> Result<NodeName, PlacementError> {
    let ready: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    if ready.is_empty() {
        return Err(PlacementError::AllCordoned);
    }
    let roomy: Vec<&NodeRecord> = ready
        .into_iter()
        .filter(|n| has_room(n, demand.memory_mib, vms))
        .collect();
    roomy
        .into_iter()
        .min_by_key(|n| {
            let on_node = vms.iter().filter(|v| v.node == n.name);
            let same_group = on_node
                .clone()
                .filter(|v| demand.group.is_some() && v.group == demand.group)
                .count();
            (same_group, on_node.count(), n.name.clone())
        })
        .map(|n| n.name.clone())
        .ok_or(PlacementError::NoMemoryFree {
            memory_mib: demand.memory_mib,
        })
}

/// Memory the index accounts to `node`, in MiB.
pub(crate) fn memory_in_use(node: &NodeRecord, vms: &[VmRecord]) -> u64 {
    vms.iter()
        .filter(|v| v.node == node.name)
        .map(|v| v.memory_mib)
        .fold(0, u64::saturating_add)
}

fn has_room(node: &NodeRecord, memory_mib: u64, vms: &[VmRecord]) -> bool {
    node.capacity.memory_mib == 0
        || memory_mib == 0
        || memory_in_use(node, vms).saturating_add(memory_mib) <= node.capacity.memory_mib
}

/// Checks that at least one node could hold a VM of this size. Nodes that do not report
/// a capacity are not judged; with none reporting, any size is accepted. The error names
/// the largest node, so the operator sees what would fit.
pub(crate) fn fits_some_node(req: &VmSize, nodes: &[NodeRecord]) -> Result<(), PlacementError> {
    if nodes.is_empty() {
        return Err(PlacementError::NoNodes);
    }
    let known: Vec<&NodeRecord> = nodes
        .iter()
        .filter(|n| n.capacity.cpus > 0 && n.capacity.memory_mib > 0)
        .collect();
    if known.is_empty() || known.iter().any(|n| fits(req, n)) {
        return Ok(());
    }
    let biggest_ram = known
        .iter()
        .max_by_key(|n| n.capacity.memory_mib)
        .map(|n| format!("{} has {} MiB", n.name, n.capacity.memory_mib))
        .unwrap_or_default();
    let biggest_cpu = known
        .iter()
        .max_by_key(|n| n.capacity.cpus)
        .map(|n| format!("{} has {} CPUs", n.name, n.capacity.cpus))
        .unwrap_or_default();
    Err(PlacementError::TooBig {
        cpus: req.cpus,
        ram_mib: req.ram_mib,
        biggest_cpu,
        biggest_ram,
    })
}

fn fits(req: &VmSize, node: &NodeRecord) -> bool {
    req.cpus <= u64::from(node.capacity.cpus) && req.ram_mib <= node.capacity.memory_mib
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Capacity;

    fn node(name: &str, cpus: u32, memory_mib: u64) -> NodeRecord {
        serde_json::from_value(serde_json::json!({
            "name": name, "private_ip": "192.0.2.1", "docker_endpoint": "tcp://192.0.2.1:2376",
            "subnet": "10.1.1.0/24", "gateway": "10.1.1.1",
            "capacity": Capacity { cpus, memory_mib }
        }))
        .unwrap()
    }

    fn vm(node: &str, group: &str, memory_mib: u64) -> VmRecord {
        serde_json::from_value(serde_json::json!({
            "cid": format!("vm-{}", uuid::Uuid::new_v4()), "node": node, "agent_id": "a",
            "stemcell_cid": "sc-00000000-0000-0000-0000-00000000000c", "memory_mib": memory_mib, "group": group,
            "created_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap()
    }

    fn subnet_node(name: &str, subnet: &str, state: &str) -> NodeRecord {
        let mut n = node(name, 2, 4096);
        n.subnet = subnet.parse().unwrap();
        n.state = serde_json::from_value(serde_json::json!(state)).unwrap();
        n
    }

    fn three() -> Vec<NodeRecord> {
        vec![
            subnet_node("n1", "10.1.1.0/24", "ready"),
            subnet_node("n2", "10.1.2.0/24", "ready"),
            subnet_node("n3", "10.1.3.0/24", "ready"),
        ]
    }

    #[test]
    fn a_pinned_name_is_parsed_and_a_bad_one_is_an_unknown_node() {
        let configured = NodeName::parse("n2").unwrap();
        assert_eq!(
            pinned(Some("n1"), Some(&configured)).unwrap(),
            Some("n1".into())
        );
        assert_eq!(pinned(None, Some(&configured)).unwrap(), Some(configured));
        assert_eq!(pinned(None, None).unwrap(), None);
        assert_eq!(
            pinned(Some("N_1"), None).unwrap_err().to_string(),
            "node 'N_1' (cloud_properties.node or the CPI's placement.node) is not a registered node"
        );
    }

    #[test]
    fn a_manual_ip_pins_its_node() {
        let d = VmDemand {
            manual_ips: vec!["10.1.2.7".parse().unwrap()],
            ..Default::default()
        };
        assert_eq!(choose_node(&d, &three(), &[]).unwrap(), "n2");
    }

    #[test]
    fn an_ip_outside_every_subnet_is_named() {
        let d = VmDemand {
            manual_ips: vec!["10.1.9.5".parse().unwrap()],
            ..Default::default()
        };
        let e = choose_node(&d, &three(), &[]).unwrap_err().to_string();
        assert!(e.starts_with("10.1.9.5 is in no node's subnet"), "{e}");
    }

    #[test]
    fn ips_on_two_nodes_or_against_the_pin_are_refused() {
        let d = VmDemand {
            manual_ips: vec!["10.1.1.7".parse().unwrap(), "10.1.2.7".parse().unwrap()],
            ..Default::default()
        };
        assert!(
            choose_node(&d, &three(), &[])
                .unwrap_err()
                .to_string()
                .contains("different nodes")
        );
        let d = VmDemand {
            manual_ips: vec!["10.1.1.7".parse().unwrap()],
            pinned_node: Some("n3".into()),
            ..Default::default()
        };
        assert!(
            choose_node(&d, &three(), &[])
                .unwrap_err()
                .to_string()
                .contains("node n1")
        );
    }

    #[test]
    fn pinning_by_name_and_cordon() {
        let mut nodes = three();
        let d = VmDemand {
            pinned_node: Some("n3".into()),
            ..Default::default()
        };
        assert_eq!(choose_node(&d, &nodes, &[]).unwrap(), "n3");
        nodes[2].state = NodeState::Cordoned;
        assert!(
            choose_node(&d, &nodes, &[])
                .unwrap_err()
                .to_string()
                .contains("cordoned")
        );
        let d = VmDemand {
            pinned_node: Some("n9".into()),
            ..Default::default()
        };
        assert!(
            choose_node(&d, &nodes, &[])
                .unwrap_err()
                .to_string()
                .contains("'n9'")
        );
    }

    #[test]
    fn dynamic_spreads_a_group_and_skips_cordoned_nodes() {
        let mut nodes = three();
        let vms = [vm("n1", "web", 0), vm("n2", "web", 0), vm("n2", "db", 0)];
        let d = VmDemand {
            group: Some("web".into()),
            ..Default::default()
        };
        assert_eq!(choose_node(&d, &nodes, &vms).unwrap(), "n3");
        nodes[2].state = NodeState::Cordoned;
        // n1 and n2 both have one web VM; n1 has fewer VMs overall.
        assert_eq!(choose_node(&d, &nodes, &vms).unwrap(), "n1");
    }

    #[test]
    fn memory_in_records_written_by_hand_cannot_wrap_into_room() {
        let nodes = three();
        let vms = [vm("n1", "g", u64::MAX), vm("n1", "g", 2)];
        assert_eq!(memory_in_use(&nodes[0], &vms), u64::MAX);
        let d = VmDemand {
            memory_mib: 512,
            pinned_node: Some("n1".into()),
            ..Default::default()
        };
        assert!(choose_node(&d, &nodes, &vms).is_err());
        let d = VmDemand {
            memory_mib: 512,
            ..Default::default()
        };
        assert_eq!(choose_node(&d, &nodes, &vms).unwrap(), "n2");
    }

    #[test]
    fn memory_capacity_is_respected() {
        let nodes = three();
        let vms = [vm("n1", "g", 4000), vm("n2", "g", 3000)];
        let d = VmDemand {
            memory_mib: 1000,
            ..Default::default()
        };
        assert_eq!(choose_node(&d, &nodes, &vms).unwrap(), "n3");
        let d = VmDemand {
            memory_mib: 5000,
            ..Default::default()
        };
        assert!(
            choose_node(&d, &nodes, &vms)
                .unwrap_err()
                .to_string()
                .contains("5000 MiB")
        );
    }

    fn req(cpus: u64, ram_mib: u64) -> VmSize {
        VmSize { cpus, ram_mib }
    }

    #[test]
    fn fits_when_one_node_is_big_enough() {
        let nodes = [node("a", 2, 4096), node("b", 8, 32768)];
        assert!(fits_some_node(&req(8, 16384), &nodes).is_ok());
    }

    #[test]
    fn too_big_names_the_largest_node() {
        let nodes = [node("a", 2, 4096), node("b", 4, 8192)];
        let e = fits_some_node(&req(16, 1024), &nodes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("16 CPUs"), "{e}");
        assert!(e.contains("b has 4 CPUs"), "{e}");
        let e = fits_some_node(&req(1, 9000), &nodes)
            .unwrap_err()
            .to_string();
        assert!(e.contains("b has 8192 MiB"), "{e}");
    }

    #[test]
    fn unknown_capacity_is_not_judged_but_no_nodes_is_an_error() {
        assert!(fits_some_node(&req(64, 1 << 20), &[node("a", 0, 0)]).is_ok());
        assert!(fits_some_node(&req(1, 1), &[]).is_err());
    }
}
