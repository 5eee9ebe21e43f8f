//! Which Docker network and IP each BOSH network of a VM gets on its node: manual IPs as
//! given, dynamic IPs claimed by the CPI from the top quarter of the node's subnet (see
//! `cluster::claims`), so the agent settings carry the real IP before the container starts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde_json::Value;

use crate::cluster::NodeRecord;
use crate::node_name::NodeName;
use crate::protocol::call::printable;
use crate::protocol::{NetworkSpec, NetworkType};

/// One BOSH network of the VM, resolved on its node.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct PlannedNetwork {
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
pub(crate) fn manual_ips(networks: &BTreeMap<String, NetworkSpec>) -> Vec<Ipv4Addr> {
    networks
        .values()
        .filter(|n| n.kind == NetworkType::Manual)
        .filter_map(|n| n.ip)
        .collect()
}

/// Why the request's networks cannot be laid out on the chosen node; every one is the
/// request's fault. Network names are made printable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum NetworkPlanError {
    #[error("create_vm: networks is empty: a VM needs at least one network")]
    Empty,
    #[error("create_vm: network '{network}': cloud_properties.name: {source}")]
    BadDockerName {
        network: String,
        source: Box<crate::docker::DockerError>,
    },
    #[error("create_vm: network '{network}': cloud_properties.name must be a string, got {got}")]
    NameNotAString { network: String, got: &'static str },
    #[error(
        "create_vm: networks '{first}' and '{second}' both map to docker network {docker_network} on node {node}; a container joins a network once"
    )]
    SharedDockerNetwork {
        first: String,
        second: String,
        docker_network: String,
        node: NodeName,
    },
    #[error("create_vm: manual network '{network}' has no ip")]
    NoIp { network: String },
    #[error("create_vm: network '{network}': {ip} is not in node {node}'s subnet {subnet}")]
    OutsideSubnet {
        network: String,
        ip: Ipv4Addr,
        node: NodeName,
        subnet: Ipv4Net,
    },
    #[error(
        "create_vm: network '{network}': {ip} is the network, broadcast or gateway address of {subnet}"
    )]
    Reserved {
        network: String,
        ip: Ipv4Addr,
        subnet: Ipv4Net,
    },
    /// The names of the networks, printable and joined.
    #[error("create_vm: networks {0} all claim the default gateway; only one may")]
    SeveralGateways(String),
    #[error("create_vm: only VIP networks given: a VM needs a manual or dynamic network")]
    OnlyVip,
}

/// Resolves every BOSH network on `node`. Manual networks need an IP inside the Docker
/// network's subnet; two BOSH networks cannot share one Docker network.
pub(crate) fn plan(
    networks: &BTreeMap<String, NetworkSpec>,
    node: &NodeRecord,
) -> Result<Vec<PlannedNetwork>, NetworkPlanError> {
    if networks.is_empty() {
        return Err(NetworkPlanError::Empty);
    }
    let mut planned = Vec::new();
    let mut used_docker: BTreeMap<String, String> = BTreeMap::new();
    for (name, spec) in networks {
        if spec.kind == NetworkType::Vip {
            planned.push(vip(name, spec));
            continue;
        }
        let docker_network = docker_network_of(name, spec, node)?;
        if let Some(other) = used_docker.insert(docker_network.clone(), name.clone()) {
            return Err(NetworkPlanError::SharedDockerNetwork {
                first: printable(&other),
                second: printable(name),
                docker_network,
                node: node.name.clone(),
            });
        }
        planned.push(attached(name, spec, node, docker_network)?);
    }
    choose_primary(&mut planned)?;
    if !planned.iter().any(|p| p.docker_network.is_some()) {
        return Err(NetworkPlanError::OnlyVip);
    }
    Ok(planned)
}

/// A VIP network: nothing to attach, its addresses as given.
fn vip(name: &str, spec: &NetworkSpec) -> PlannedNetwork {
    PlannedNetwork {
        name: name.to_string(),
        docker_network: None,
        subnet: None,
        ip: spec.ip,
        netmask: spec.netmask,
        gateway: spec.gateway,
        primary: false,
        spec: spec.clone(),
    }
}

/// The Docker network a manual or dynamic network joins: its `cloud_properties.name`,
/// else the node's BOSH network.
fn docker_network_of(
    name: &str,
    spec: &NetworkSpec,
    node: &NodeRecord,
) -> Result<String, NetworkPlanError> {
    match spec.cloud_properties.get("name") {
        None | Some(Value::Null) => Ok(node.network_name.clone()),
        Some(Value::String(n)) => Ok(crate::docker::names::object(n)
            .map_err(|source| NetworkPlanError::BadDockerName {
                network: printable(name),
                source: Box::new(source),
            })?
            .to_string()),
        Some(other) => Err(NetworkPlanError::NameNotAString {
            network: printable(name),
            got: crate::protocol::request::json_type(other),
        }),
    }
}

/// A manual or dynamic network on `docker_network`: a manual one's IP checked against
/// the subnet when the CPI knows it, netmask and gateway filled in from the node's.
fn attached(
    name: &str,
    spec: &NetworkSpec,
    node: &NodeRecord,
    docker_network: String,
) -> Result<PlannedNetwork, NetworkPlanError> {
    let own = docker_network == node.network_name;
    let subnet = own.then_some(node.subnet);
    let mut ip = None;
    if spec.kind == NetworkType::Manual {
        let Some(given) = spec.ip else {
            return Err(NetworkPlanError::NoIp {
                network: printable(name),
            });
        };
        if let Some(net) = subnet {
            check_usable(given, net, node, &printable(name))?;
        }
        ip = Some(given);
    }
    Ok(PlannedNetwork {
        name: name.to_string(),
        docker_network: Some(docker_network),
        subnet,
        ip,
        netmask: spec.netmask.or(subnet.map(|s| s.netmask())),
        gateway: spec.gateway.or(own.then_some(node.gateway)),
        primary: spec.default.iter().any(|d| d == "gateway"),
        spec: spec.clone(),
    })
}

/// The network carrying the default gateway: the one that asks for it, else the first
/// that attaches; two that ask are refused.
fn choose_primary(planned: &mut [PlannedNetwork]) -> Result<(), NetworkPlanError> {
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
        return Err(NetworkPlanError::SeveralGateways(names.join(", ")));
    }
    Ok(())
}

fn check_usable(
    ip: Ipv4Addr,
    net: Ipv4Net,
    node: &NodeRecord,
    name: &str,
) -> Result<(), NetworkPlanError> {
    if !net.contains(&ip) {
        return Err(NetworkPlanError::OutsideSubnet {
            network: name.to_string(),
            ip,
            node: node.name.clone(),
            subnet: net,
        });
    }
    if ip == net.network() || ip == net.broadcast() || ip == node.gateway {
        return Err(NetworkPlanError::Reserved {
            network: name.to_string(),
            ip,
            subnet: net,
        });
    }
    Ok(())
}

/// The addresses dynamic networks draw from: the top quarter of the subnet, without the
/// broadcast address (in a /24: .192 to .254). Keep it out of the static range.
pub(crate) fn dynamic_pool(subnet: Ipv4Net) -> impl Iterator<Item = Ipv4Addr> {
    let first = u32::from(subnet.network());
    let size = 1u32 << (32 - u32::from(subnet.prefix_len()));
    let start = first + size - size / 4;
    let end = first + size - 1; // broadcast, excluded
    (start..end).map(Ipv4Addr::from)
}

/// The networks as returned by create_vm (v2) and written into the agent settings: the
/// request's spec with the real ip, netmask and gateway.
pub(crate) fn resolved_json(planned: &[PlannedNetwork]) -> serde_json::Map<String, Value> {
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
pub(crate) mod tests {
    use super::*;
    use serde_json::json;

    /// A node record for the tests of network plans and the addresses chosen by them.
    pub(crate) fn node() -> NodeRecord {
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
            assert!(e.to_string().contains(needle), "{ip}: {e}");
        }
        let e = plan(&nets(json!({"a": {"type": "manual"}})), &node()).unwrap_err();
        assert_eq!(e.to_string(), "create_vm: manual network 'a' has no ip");
    }

    #[test]
    fn two_networks_on_one_docker_network_are_refused() {
        let e = plan(
            &nets(json!({"a": {"type": "manual", "ip": "10.1.1.10"}, "b": {"type": "dynamic"}})),
            &node(),
        )
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "create_vm: networks 'a' and 'b' both map to docker network bosh on node n1; a container joins a network once"
        );
    }

    #[test]
    fn the_gateway_is_asked_for_or_the_first_attached_network() {
        let two = nets(json!({
            "a": {"type": "vip", "ip": "203.0.113.5"},
            "b": {"type": "manual", "ip": "10.1.1.10"},
            "c": {"type": "dynamic", "cloud_properties": {"name": "other"}}}));
        let p = plan(&two, &node()).unwrap();
        let primary: Vec<&str> = p
            .iter()
            .filter(|p| p.primary)
            .map(|p| p.name.as_str())
            .collect();
        assert_eq!(primary, ["b"]);
        assert_eq!(p[0].docker_network, None);
        assert_eq!(p[2].docker_network.as_deref(), Some("other"));
        assert_eq!(p[2].subnet, None, "a foreign network's subnet is not known");
        let both = nets(json!({
            "b": {"type": "manual", "ip": "10.1.1.10", "default": ["gateway"]},
            "c": {"type": "dynamic", "default": ["gateway"], "cloud_properties": {"name": "other"}}}));
        assert_eq!(
            plan(&both, &node()).unwrap_err().to_string(),
            "create_vm: networks b, c all claim the default gateway; only one may"
        );
    }

    #[test]
    fn networks_that_attach_nothing_or_name_no_network_are_refused() {
        for (v, message) in [
            (
                json!({}),
                "create_vm: networks is empty: a VM needs at least one network",
            ),
            (
                json!({"a": {"type": "vip", "ip": "203.0.113.5"}}),
                "create_vm: only VIP networks given: a VM needs a manual or dynamic network",
            ),
            (
                json!({"a": {"type": "dynamic", "cloud_properties": {"name": 7}}}),
                "create_vm: network 'a': cloud_properties.name must be a string, got a number",
            ),
        ] {
            let e = plan(&nets(v.clone()), &node()).unwrap_err();
            assert_eq!(e.to_string(), message, "{v}");
            assert_eq!(
                crate::protocol::CpiError::from(e).kind,
                crate::protocol::ErrorKind::CpiError
            );
        }
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
