//! Placement decisions as pure functions of the request and the cluster: no I/O here, so
//! every rule is unit-tested.

use crate::cluster::NodeRecord;
use crate::protocol::VmRequirements;

/// Checks that at least one node could hold a VM of this size. Nodes that do not report
/// a capacity are not judged; with none reporting, any size is accepted. The error names
/// the largest node, so the operator sees what would fit.
pub fn fits_some_node(req: &VmRequirements, nodes: &[NodeRecord]) -> Result<(), String> {
    if nodes.is_empty() {
        return Err("the cluster has no nodes registered".into());
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
    Err(format!(
        "no node can hold {} CPUs and {} MiB of RAM (largest: {biggest_cpu}; {biggest_ram})",
        req.cpu, req.ram
    ))
}

fn fits(req: &VmRequirements, node: &NodeRecord) -> bool {
    req.cpu <= u64::from(node.capacity.cpus) && req.ram <= node.capacity.memory_mib
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

    fn req(cpu: u64, ram: u64) -> VmRequirements {
        VmRequirements {
            cpu,
            ram,
            ephemeral_disk_size: 1024,
        }
    }

    #[test]
    fn fits_when_one_node_is_big_enough() {
        let nodes = [node("a", 2, 4096), node("b", 8, 32768)];
        assert!(fits_some_node(&req(8, 16384), &nodes).is_ok());
    }

    #[test]
    fn too_big_names_the_largest_node() {
        let nodes = [node("a", 2, 4096), node("b", 4, 8192)];
        let e = fits_some_node(&req(16, 1024), &nodes).unwrap_err();
        assert!(e.contains("16 CPUs"), "{e}");
        assert!(e.contains("b has 4 CPUs"), "{e}");
        let e = fits_some_node(&req(1, 9000), &nodes).unwrap_err();
        assert!(e.contains("b has 8192 MiB"), "{e}");
    }

    #[test]
    fn unknown_capacity_is_not_judged_but_no_nodes_is_an_error() {
        assert!(fits_some_node(&req(64, 1 << 20), &[node("a", 0, 0)]).is_ok());
        assert!(fits_some_node(&req(1, 1), &[]).is_err());
    }
}
