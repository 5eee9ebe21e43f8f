//! Which Docker network and IP each BOSH network of a VM gets on its node: manual IPs as
//! given, dynamic IPs claimed by the CPI from the top quarter of the node's subnet (see
//! `cluster::claims`), so the agent settings carry the real IP before the container starts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cluster::NodeRecord;
use crate::protocol::call::printable;
use crate::protocol::{CpiError, NetworkSpec, NetworkType};

/// One BOSH network of the VM, resolved on its node.
#[derive(Debug, Clone, PartialEq)]
pub struct PlannedNetwork {
    /// The BOSH network name (key of create_vm's networks).
    pub name: String,
    /// The Docker network it attaches to; `None` for VIP networks (nothing to attach).
    pub docker_network: Option<String>,
    /// The subnet of the Docker network when the CPI knows it (the node's BOSH network).
    pub subnet: Option<Ipv4Net>,
    /// The IP to use; for dynamic networks filled by [`assign_dynamic`].
    pub ip: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    /// Whether this network carries the default gateway (Docker's primary network).
    pub primary: bool,
    /// The request's spec, passed on to the agent.
    pub spec: NetworkSpec,
}

/// Static IPs of the manual networks, for placement.
pub fn manual_ips(networks: &BTreeMap<String, NetworkSpec>) -> Vec<Ipv4Addr> {
    networks
        .values()
        .filter(|n| n.kind == NetworkType::Manual)
        .filter_map(|n| n.ip)
        .collect()
}

/// Resolves every BOSH network on `node`. Manual networks need an IP inside the Docker
/// network's subnet; two BOSH networks cannot share one Docker network.
pub fn plan(
    networks: &BTreeMap<String, NetworkSpec>,
    node: &NodeRecord,
) -> Result<Vec<PlannedNetwork>, CpiError> {
    if networks.is_empty() {
        return Err(CpiError::cpi(
            "create_vm: networks is empty: a VM needs at least one network",
        ));
    }
    let mut planned = Vec::new();
    let mut used_docker: BTreeMap<String, String> = BTreeMap::new();
    for (name, spec) in networks {
        let shown = printable(name);
        if spec.kind == NetworkType::Vip {
            planned.push(PlannedNetwork {
                name: name.clone(),
                docker_network: None,
                subnet: None,
                ip: spec.ip,
                netmask: spec.netmask,
                gateway: spec.gateway,
                primary: false,
                spec: spec.clone(),
            });
            continue;
        }
        let docker_network = match spec.cloud_properties.get("name") {
            None | Some(Value::Null) => node.network_name.clone(),
            Some(Value::String(n)) => crate::docker::names::object(n)
                .map_err(|e| {
                    CpiError::cpi(format!(
                        "create_vm: network '{shown}': cloud_properties.name: {e}"
                    ))
                })?
                .to_string(),
            Some(other) => {
                return Err(CpiError::cpi(format!(
                    "create_vm: network '{shown}': cloud_properties.name must be a string, got {}",
                    crate::protocol::request::json_type(other)
                )));
            }
        };
        if let Some(other) = used_docker.insert(docker_network.clone(), name.clone()) {
            let other = printable(&other);
            return Err(CpiError::cpi(format!(
                "create_vm: networks '{other}' and '{shown}' both map to docker network {docker_network} on node {}; a container joins a network once",
                node.name
            )));
        }
        let own = docker_network == node.network_name;
        let subnet = own.then_some(node.subnet);
        let mut ip = None;
        if spec.kind == NetworkType::Manual {
            let Some(given) = spec.ip else {
                return Err(CpiError::cpi(format!(
                    "create_vm: manual network '{shown}' has no ip"
                )));
            };
            if let Some(net) = subnet {
                check_usable(given, net, node, &shown)?;
            }
            ip = Some(given);
        }
        planned.push(PlannedNetwork {
            name: name.clone(),
            docker_network: Some(docker_network),
            subnet,
            ip,
            netmask: spec.netmask.or(subnet.map(|s| s.netmask())),
            gateway: spec.gateway.or(own.then_some(node.gateway)),
            primary: spec.default.iter().any(|d| d == "gateway"),
            spec: spec.clone(),
        });
    }
    if !planned.iter().any(|p| p.primary) {
        if let Some(first) = planned.iter_mut().find(|p| p.docker_network.is_some()) {
            first.primary = true;
        }
    } else if planned.iter().filter(|p| p.primary).count() > 1 {
        let names: Vec<String> = planned
            .iter()
            .filter(|p| p.primary)
            .map(|p| printable(&p.name))
            .collect();
        return Err(CpiError::cpi(format!(
            "create_vm: networks {} all claim the default gateway; only one may",
            names.join(", ")
        )));
    }
    if !planned.iter().any(|p| p.docker_network.is_some()) {
        return Err(CpiError::cpi(
            "create_vm: only VIP networks given: a VM needs a manual or dynamic network",
        ));
    }
    Ok(planned)
}

fn check_usable(ip: Ipv4Addr, net: Ipv4Net, node: &NodeRecord, name: &str) -> Result<(), CpiError> {
    if !net.contains(&ip) {
        return Err(CpiError::cpi(format!(
            "create_vm: network '{name}': {ip} is not in node {}'s subnet {net}",
            node.name
        )));
    }
    if ip == net.network() || ip == net.broadcast() || ip == node.gateway {
        return Err(CpiError::cpi(format!(
            "create_vm: network '{name}': {ip} is the network, broadcast or gateway address of {net}"
        )));
    }
    Ok(())
}

/// The addresses dynamic networks draw from: the top quarter of the subnet, without the
/// broadcast address (in a /24: .192 to .254). Keep it out of the static range.
pub fn dynamic_pool(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(subnet.network());
    let size = 1u32 << (32 - u32::from(subnet.prefix_len()));
    let start = first + size - size / 4;
    let end = first + size - 1; // broadcast, excluded
    (start..end).map(Ipv4Addr::from)
}

/// The networks as returned by create_vm (v2) and written into the agent settings: the
/// request's spec with the real ip, netmask and gateway.
pub fn resolved_json(planned: &[PlannedNetwork]) -> serde_json::Map<String, Value> {
    planned
        .iter()
        .map(|p| {
            let mut v = serde_json::to_value(&p.spec).unwrap_or(Value::Null);
            if let Value::Object(o) = &mut v {
                for (key, value) in [("ip", p.ip), ("netmask", p.netmask), ("gateway", p.gateway)] {
                    if let Some(addr) = value {
                        o.insert(key.into(), Value::String(addr.to_string()));
                    } else if o.get(key).is_some_and(Value::is_null) {
                        o.remove(key);
                    }
                }
            }
            (p.name.clone(), v)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node() -> NodeRecord {
        serde_json::from_value(json!({"name":"n1","private_ip":"192.0.2.1",
            "docker_endpoint":"tcp://192.0.2.1:2376","subnet":"10.1.1.0/24","gateway":"10.1.1.1"}))
        .unwrap()
    }

    fn nets(v: Value) -> BTreeMap<String, NetworkSpec> {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn manual_network_keeps_its_ip_and_gets_netmask_and_gateway() {
        let p = plan(
            &nets(json!({"default": {"type": "manual", "ip": "10.1.1.10", "default": ["dns", "gateway"]}})),
            &node(),
        )
        .unwrap();
        assert_eq!(p[0].ip, Some("10.1.1.10".parse().unwrap()));
        assert_eq!(p[0].netmask, Some("255.255.255.0".parse().unwrap()));
        assert_eq!(p[0].gateway, Some("10.1.1.1".parse().unwrap()));
        assert!(p[0].primary);
    }

    #[test]
    fn bad_manual_ips_are_named() {
        for (ip, needle) in [
            ("10.1.2.10", "not in node n1's subnet"),
            ("10.1.1.1", "gateway"),
            ("10.1.1.255", "broadcast"),
        ] {
            let e = plan(&nets(json!({"a": {"type": "manual", "ip": ip}})), &node()).unwrap_err();
            assert!(e.message.contains(needle), "{ip}: {}", e.message);
        }
        let e = plan(&nets(json!({"a": {"type": "manual"}})), &node()).unwrap_err();
        assert!(e.message.contains("no ip"));
    }

    #[test]
    fn two_networks_on_one_docker_network_are_refused() {
        let e = plan(
            &nets(json!({"a": {"type": "manual", "ip": "10.1.1.10"}, "b": {"type": "dynamic"}})),
            &node(),
        )
        .unwrap_err();
        assert!(
            e.message.contains("both map to docker network bosh"),
            "{}",
            e.message
        );
    }

    #[test]
    fn dynamic_addresses_come_from_the_top_quarter() {
        let mut p = plan(&nets(json!({"d": {"type": "dynamic"}})), &node()).unwrap();
        p[0].ip = Some("10.1.1.194".parse().unwrap());
        let pool: Vec<Ipv4Addr> = dynamic_pool("10.1.1.0/24".parse().unwrap()).collect();
        assert_eq!(pool.len(), 63);
        assert_eq!(pool.last().unwrap().to_string(), "10.1.1.254");
        let json = resolved_json(&p);
        assert_eq!(json["d"]["ip"], "10.1.1.194");
        assert_eq!(json["d"]["netmask"], "255.255.255.0");
    }
}
