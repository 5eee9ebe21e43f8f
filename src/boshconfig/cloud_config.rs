//! The cloud-config of a cluster: one AZ per node (pinned with `cloud_properties.node`), one
//! manual network with one subnet per AZ on that node's Flannel subnet, vm_types,
//! disk_types and compilation. A pure function of the cluster view, so every rule is
//! unit-tested.

use std::net::Ipv4Addr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::address_plan::{self, Split};
use super::cpi_name;
use super::error::{BoshConfigError, PlanError, PresetError};
use crate::cluster::{ClusterView, NodeRecord, NodeState};
use crate::node_name::NodeName;

/// Operator's choices for the generated cloud-config.
#[derive(Debug, Clone, PartialEq)]
pub struct Options {
    /// Name of the manual network.
    pub(crate) network_name: String,
    /// How each subnet is split (reserved head, static block).
    pub(crate) split: Split,
    /// DNS servers of every subnet; empty: the subnet's gateway.
    pub(crate) dns: Vec<Ipv4Addr>,
    /// vm_types; presets plus the operator's.
    pub(crate) vm_types: Vec<VmTypePreset>,
    /// disk_types; presets plus the operator's.
    pub(crate) disk_types: Vec<DiskTypePreset>,
    /// Name each AZ's CPI (`moltencore-<node>`), for use with the generated cpi-config.
    pub(crate) per_node_cpis: bool,
    /// Compilation workers; `None`: one per ready node.
    pub(crate) compilation_workers: Option<u32>,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            network_name: "default".into(),
            split: Split {
                reserved: 20,
                static_ips: 40,
            },
            dns: Vec::new(),
            vm_types: VmTypePreset::presets(),
            disk_types: DiskTypePreset::presets(),
            per_node_cpis: false,
            compilation_workers: None,
        }
    }
}

/// A vm_type: `NAME` with no limits, or `NAME:CPU:RAM_MIB:EPHEMERAL_DISK_MIB`.
#[derive(Debug, Clone, PartialEq)]
pub struct VmTypePreset {
    /// The vm_type's name.
    pub(crate) name: String,
    /// (cpu, ram MiB, ephemeral disk MiB); `None`: no limits at all.
    pub(crate) size: Option<(f64, u64, u64)>,
}

impl VmTypePreset {
    /// The vm_types every generated cloud-config has unless overridden by name.
    pub(crate) fn presets() -> Vec<VmTypePreset> {
        let sized = |name: &str, cpu: f64, ram: u64, disk: u64| VmTypePreset {
            name: name.into(),
            size: Some((cpu, ram, disk)),
        };
        vec![
            VmTypePreset {
                name: "default".into(),
                size: None,
            },
            sized("small", 1.0, 1024, 10240),
            sized("medium", 2.0, 4096, 20480),
            sized("large", 4.0, 8192, 40960),
            sized("compilation", 2.0, 4096, 20480),
        ]
    }
}

impl FromStr for VmTypePreset {
    type Err = PresetError;
    fn from_str(s: &str) -> Result<Self, PresetError> {
        let parts: Vec<&str> = s.split(':').collect();
        let bad = || PresetError::VmTypeShape(s.to_string());
        let name = parts
            .first()
            .filter(|n| !n.trim().is_empty())
            .ok_or_else(bad)?;
        let size = match parts.as_slice() {
            [_] => None,
            [_, cpu, ram, disk] => {
                let cpu: f64 = cpu.parse().map_err(|_| bad())?;
                let ram: u64 = ram.parse().map_err(|_| bad())?;
                let disk: u64 = disk.parse().map_err(|_| bad())?;
                if !(cpu > 0.0 && cpu.is_finite()) || ram == 0 || disk == 0 {
                    return Err(PresetError::VmTypeSize(s.to_string()));
                }
                Some((cpu, ram, disk))
            }
            _ => return Err(bad()),
        };
        Ok(VmTypePreset {
            name: name.to_string(),
            size,
        })
    }
}

/// A disk_type: `NAME:SIZE_MIB`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DiskTypePreset {
    /// The disk_type's name.
    pub(crate) name: String,
    /// The disk size in MiB.
    pub(crate) size_mib: u64,
}

impl DiskTypePreset {
    /// The disk_types every generated cloud-config has unless overridden by name.
    pub(crate) fn presets() -> Vec<DiskTypePreset> {
        [
            ("default", 10240),
            ("1GB", 1024),
            ("5GB", 5120),
            ("10GB", 10240),
            ("50GB", 51200),
            ("100GB", 102400),
        ]
        .into_iter()
        .map(|(name, size_mib)| DiskTypePreset {
            name: name.into(),
            size_mib,
        })
        .collect()
    }
}

impl FromStr for DiskTypePreset {
    type Err = PresetError;
    fn from_str(s: &str) -> Result<Self, PresetError> {
        let bad = || PresetError::DiskTypeShape(s.to_string());
        let (name, size) = s.split_once(':').ok_or_else(bad)?;
        let size_mib: u64 = size.parse().map_err(|_| bad())?;
        if name.trim().is_empty() || size_mib == 0 {
            return Err(bad());
        }
        Ok(DiskTypePreset {
            name: name.into(),
            size_mib,
        })
    }
}

/// Adds `extra` to `base`, replacing entries of the same name (keeps the order of `base`).
pub(crate) fn with_overrides<T: Clone>(
    base: Vec<T>,
    extra: &[T],
    name: impl Fn(&T) -> &str,
) -> Vec<T> {
    let mut out = base;
    for e in extra {
        match out.iter_mut().find(|b| name(b) == name(e)) {
            Some(slot) => *slot = e.clone(),
            None => out.push(e.clone()),
        }
    }
    out
}

/// A cloud-config document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CloudConfig {
    /// One AZ per node.
    pub(crate) azs: Vec<Az>,
    /// The BOSH networks, one subnet per AZ.
    pub(crate) networks: Vec<Network>,
    /// The vm_types the operator asked for.
    pub(crate) vm_types: Vec<VmType>,
    /// The disk_types the operator asked for.
    pub(crate) disk_types: Vec<DiskType>,
    /// Where compilation VMs run.
    pub(crate) compilation: Compilation,
}

/// One AZ: a node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Az {
    /// The AZ's name (the node's).
    pub(crate) name: String,
    /// The cpi-config entry that serves this AZ, when there are several.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) cpi: Option<String>,
    /// Where the AZ's VMs go.
    pub(crate) cloud_properties: AzProperties,
}

/// The AZ's cloud_properties: the node its VMs and disks go to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AzProperties {
    /// The node's name.
    pub(crate) node: NodeName,
}

/// A network.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Network {
    /// The network's name.
    pub(crate) name: String,
    /// BOSH network type (`manual`).
    #[serde(rename = "type")]
    pub(crate) kind: String,
    /// One subnet per AZ.
    pub(crate) subnets: Vec<Subnet>,
}

/// A manual network's subnet (one per AZ).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Subnet {
    /// The AZ (node) the subnet belongs to.
    pub(crate) az: String,
    /// The subnet's CIDR.
    pub(crate) range: String,
    /// The gateway VMs route through.
    pub(crate) gateway: Ipv4Addr,
    /// DNS servers given to VMs.
    pub(crate) dns: Vec<Ipv4Addr>,
    /// Ranges BOSH must not assign.
    pub(crate) reserved: Vec<String>,
    /// Ranges BOSH assigns as static IPs.
    #[serde(rename = "static", default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) static_ips: Vec<String>,
    /// The subnet's cloud_properties.
    pub(crate) cloud_properties: Map<String, Value>,
}

/// A vm_type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmType {
    /// The vm_type's name.
    pub(crate) name: String,
    /// What the CPI reads for VMs of this type (cpu, ram, ...).
    pub(crate) cloud_properties: Map<String, Value>,
}

/// A disk_type.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskType {
    /// The disk_type's name.
    pub(crate) name: String,
    /// The disk size in MiB.
    pub(crate) disk_size: u64,
    /// The disk_type's cloud_properties.
    pub(crate) cloud_properties: Map<String, Value>,
}

/// The compilation block.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compilation {
    /// How many compilation VMs at once.
    pub(crate) workers: u32,
    /// Whether compilation VMs are reused.
    pub(crate) reuse_compilation_vms: bool,
    /// The AZ compilation VMs go to.
    pub(crate) az: String,
    /// The vm_type of compilation VMs.
    pub(crate) vm_type: String,
    /// The network of compilation VMs.
    pub(crate) network: String,
}

/// A generated document and what the operator should know about it.
#[derive(Debug, Clone, PartialEq)]
pub struct Generated<T> {
    /// The generated document.
    pub document: T,
    /// Things that do not stop generation but need a look (a node without a lease).
    pub warnings: Vec<String>,
}

/// Checks what every generated config needs: some nodes, and subnets that do not overlap.
pub(crate) fn check_nodes(view: &ClusterView) -> Result<(), BoshConfigError> {
    if view.nodes.is_empty() {
        return Err(BoshConfigError::NoNodes);
    }
    for (i, a) in view.nodes.iter().enumerate() {
        for b in &view.nodes[i + 1..] {
            if a.subnet.contains(&b.subnet.network()) || b.subnet.contains(&a.subnet.network()) {
                return Err(BoshConfigError::OverlappingSubnets {
                    a: a.name.clone(),
                    a_subnet: a.subnet,
                    b: b.name.clone(),
                    b_subnet: b.subnet,
                });
            }
        }
    }
    Ok(())
}

/// The cloud-config for `view`.
pub fn generate(
    view: &ClusterView,
    opts: &Options,
) -> Result<Generated<CloudConfig>, BoshConfigError> {
    check_nodes(view)?;
    let mut warnings = Vec::new();
    let mut subnets = Vec::new();
    for node in &view.nodes {
        warnings.extend(lease_warning(view, node));
        subnets.push(
            subnet(node, opts).map_err(|source| BoshConfigError::Subnet {
                node: node.name.clone(),
                source,
            })?,
        );
    }
    let compilation = compilation(view, opts, &mut warnings)?;
    let document = CloudConfig {
        azs: view
            .nodes
            .iter()
            .map(|n| Az {
                name: n.name.to_string(),
                cpi: opts.per_node_cpis.then(|| cpi_name(&n.name)),
                cloud_properties: AzProperties {
                    node: n.name.clone(),
                },
            })
            .collect(),
        networks: vec![Network {
            name: opts.network_name.clone(),
            kind: "manual".into(),
            subnets,
        }],
        vm_types: opts.vm_types.iter().map(vm_type).collect(),
        disk_types: opts
            .disk_types
            .iter()
            .map(|d| DiskType {
                name: d.name.clone(),
                disk_size: d.size_mib,
                cloud_properties: Map::new(),
            })
            .collect(),
        compilation,
    };
    Ok(Generated { document, warnings })
}

/// What the operator should know about `node`'s Flannel lease: none holds its subnet, or
/// the one that does announces another IP than the node's.
fn lease_warning(view: &ClusterView, node: &NodeRecord) -> Option<String> {
    let node_ip = node.flannel_ip.unwrap_or(node.private_ip);
    match view.lease_of(node) {
        Some(lease) if lease.public_ip.is_some_and(|ip| ip != node_ip) => Some(format!(
            "node {}: the Flannel lease of {} announces {} but the node's IP is {}",
            node.name,
            node.subnet,
            lease.public_ip.map(|ip| ip.to_string()).unwrap_or_default(),
            node_ip
        )),
        Some(_) => None,
        None => Some(format!(
            "node {}: no Flannel lease holds its subnet {}: is flanneld running there?",
            node.name, node.subnet
        )),
    }
}

/// Where compilation VMs run: the first ready node (the first node, with a warning, when
/// every node is cordoned), one worker per ready node unless the options say, on the
/// `compilation` VM type or else the first one.
fn compilation(
    view: &ClusterView,
    opts: &Options,
    warnings: &mut Vec<String>,
) -> Result<Compilation, BoshConfigError> {
    let ready: Vec<&NodeRecord> = view
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .collect();
    let compile_node = match ready.first() {
        Some(n) => n,
        None => {
            warnings.push(
                "every node is cordoned: compilation VMs will not start until one is uncordoned"
                    .into(),
            );
            &view.nodes[0]
        }
    };
    let workers = opts
        .compilation_workers
        .unwrap_or(u32::try_from(ready.len().max(1)).unwrap_or(u32::MAX));
    if workers == 0 {
        return Err(BoshConfigError::NoCompilationWorkers);
    }
    let compile_type = if opts.vm_types.iter().any(|t| t.name == "compilation") {
        "compilation"
    } else {
        opts.vm_types
            .first()
            .map(|t| t.name.as_str())
            .ok_or(BoshConfigError::NoVmTypes)?
    };
    Ok(Compilation {
        workers,
        reuse_compilation_vms: true,
        az: compile_node.name.to_string(),
        vm_type: compile_type.into(),
        network: opts.network_name.clone(),
    })
}

fn subnet(node: &NodeRecord, opts: &Options) -> Result<Subnet, PlanError> {
    let plan = address_plan::plan(node.subnet, node.gateway, opts.split)?;
    Ok(Subnet {
        az: node.name.to_string(),
        range: node.subnet.to_string(),
        gateway: node.gateway,
        dns: if opts.dns.is_empty() {
            vec![node.gateway]
        } else {
            opts.dns.clone()
        },
        reserved: plan.reserved.iter().map(ToString::to_string).collect(),
        static_ips: plan.static_range.iter().map(ToString::to_string).collect(),
        cloud_properties: Map::new(),
    })
}

fn vm_type(t: &VmTypePreset) -> VmType {
    let mut props = Map::new();
    if let Some((cpu, ram, disk)) = t.size {
        // Whole CPU counts stay integers in the YAML.
        let cpu = if cpu.fract() == 0.0 && cpu <= f64::from(u32::MAX) {
            #[expect(
                clippy::cast_possible_truncation,
                clippy::cast_sign_loss,
                reason = "a whole number of CPUs, above 0 (the preset's parser checks) and below u32::MAX"
            )]
            let whole = cpu as u64;
            Value::from(whole)
        } else {
            Value::from(cpu)
        };
        props.insert("cpu".into(), cpu);
        props.insert("ram".into(), Value::from(ram));
        props.insert("ephemeral_disk".into(), Value::from(disk));
    }
    VmType {
        name: t.name.clone(),
        cloud_properties: props,
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::cluster::SubnetLease;

    pub(crate) fn node(name: &str, third: u8) -> NodeRecord {
        serde_json::from_value(serde_json::json!({
            "name": name, "private_ip": format!("192.0.2.{}", 10 + third),
            "docker_endpoint": format!("tcp://192.0.2.{}:2376", 10 + third),
            "subnet": format!("10.1.{third}.0/24"), "gateway": format!("10.1.{third}.1"),
        }))
        .unwrap()
    }

    pub(crate) fn view(nodes: Vec<NodeRecord>) -> ClusterView {
        let leases = nodes
            .iter()
            .map(|n| SubnetLease {
                subnet: n.subnet,
                public_ip: Some(n.private_ip),
                backend_type: Some("vxlan".into()),
            })
            .collect();
        ClusterView {
            nodes,
            leases,
            ..ClusterView::default()
        }
    }

    #[test]
    fn one_az_and_one_subnet_per_node() {
        let g = generate(
            &view(vec![node("n1", 1), node("n2", 2), node("n3", 3)]),
            &Options::default(),
        )
        .unwrap();
        assert!(g.warnings.is_empty(), "{:?}", g.warnings);
        let c = g.document;
        let names: Vec<&str> = c.azs.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        for az in &c.azs {
            assert_eq!(az.cloud_properties.node.as_str(), az.name);
            assert_eq!(az.cpi, None);
        }
        let net = &c.networks[0];
        assert_eq!(
            (net.name.as_str(), net.kind.as_str()),
            ("default", "manual")
        );
        let s2 = &net.subnets[1];
        assert_eq!(s2.az, "n2");
        assert_eq!(s2.range, "10.1.2.0/24");
        assert_eq!(s2.gateway.to_string(), "10.1.2.1");
        assert_eq!(s2.dns, vec![s2.gateway]);
        assert_eq!(s2.reserved, ["10.1.2.1-10.1.2.20", "10.1.2.192-10.1.2.254"]);
        assert_eq!(s2.static_ips, ["10.1.2.21-10.1.2.60"]);
        assert_eq!(c.compilation.az, "n1");
        assert_eq!(c.compilation.workers, 3);
        assert_eq!(c.compilation.vm_type, "compilation");
        assert_eq!(c.compilation.network, "default");
        let small = c.vm_types.iter().find(|t| t.name == "small").unwrap();
        assert_eq!(
            Value::Object(small.cloud_properties.clone()),
            serde_json::json!({"cpu": 1, "ram": 1024, "ephemeral_disk": 10240})
        );
        assert!(
            c.disk_types
                .iter()
                .any(|d| d.name == "default" && d.disk_size == 10240)
        );
    }

    #[test]
    fn options_shape_the_document() {
        let mut n2 = node("n2", 2);
        n2.state = NodeState::Cordoned;
        let opts = Options {
            network_name: "flannel".into(),
            split: Split {
                reserved: 10,
                static_ips: 0,
            },
            dns: vec!["192.0.2.53".parse().unwrap()],
            vm_types: with_overrides(
                VmTypePreset::presets(),
                &[
                    "small:0.5:512:2048".parse().unwrap(),
                    "huge:16:65536:1024".parse().unwrap(),
                ],
                |t| t.name.as_str(),
            ),
            disk_types: vec!["20GB:20480".parse().unwrap()],
            per_node_cpis: true,
            compilation_workers: Some(5),
        };
        let c = generate(&view(vec![n2, node("n3", 3)]), &opts)
            .unwrap()
            .document;
        assert_eq!(c.azs[0].cpi.as_deref(), Some("moltencore-n2"));
        let s = &c.networks[0].subnets[0];
        assert_eq!(c.networks[0].name, "flannel");
        assert_eq!(s.dns.len(), 1);
        assert_eq!(s.dns[0].to_string(), "192.0.2.53");
        assert_eq!(s.reserved, ["10.1.2.1-10.1.2.10", "10.1.2.192-10.1.2.254"]);
        assert!(s.static_ips.is_empty());
        // The cordoned node keeps its AZ but compiles nothing.
        assert_eq!(c.compilation.az, "n3");
        assert_eq!(c.compilation.workers, 5);
        let small = c.vm_types.iter().find(|t| t.name == "small").unwrap();
        assert_eq!(small.cloud_properties["cpu"], serde_json::json!(0.5));
        assert_eq!(c.vm_types.last().unwrap().name, "huge");
        assert_eq!(c.disk_types.len(), 1);
        let yaml = serde_yaml_ng::to_string(&c).unwrap();
        assert!(!yaml.contains("static"), "{yaml}");
        assert!(yaml.contains("cpi: moltencore-n2"), "{yaml}");
    }

    #[test]
    fn problems_are_reported() {
        assert!(
            generate(&view(vec![]), &Options::default())
                .unwrap_err()
                .to_string()
                .contains("no nodes")
        );
        let mut clash = node("n9", 1);
        clash.subnet = "10.1.0.0/16".parse().unwrap();
        clash.gateway = "10.1.0.1".parse().unwrap();
        let e = generate(&view(vec![node("n1", 1), clash]), &Options::default())
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("n1 (10.1.1.0/24) and n9 (10.1.0.0/16) overlap"),
            "{e}"
        );
        let mut v = view(vec![node("n1", 1), node("n2", 2)]);
        v.leases.remove(1);
        v.leases[0].public_ip = Some("192.0.2.99".parse().unwrap());
        let g = generate(&v, &Options::default()).unwrap();
        assert_eq!(g.warnings.len(), 2, "{:?}", g.warnings);
        assert!(g.warnings[0].contains("announces 192.0.2.99"));
        assert!(g.warnings[1].contains("no Flannel lease holds its subnet 10.1.2.0/24"));
        // A node prepared with --flannel-ip announces that address, rightly.
        v.nodes[0].flannel_ip = Some("192.0.2.99".parse().unwrap());
        let g = generate(&v, &Options::default()).unwrap();
        assert_eq!(g.warnings.len(), 1, "{:?}", g.warnings);
        let mut bad_gw = node("n1", 1);
        bad_gw.gateway = "10.1.7.1".parse().unwrap();
        let e = generate(&view(vec![bad_gw]), &Options::default())
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("node n1: gateway 10.1.7.1 is not in"), "{e}");
        let opts = Options {
            compilation_workers: Some(0),
            ..Options::default()
        };
        assert!(generate(&view(vec![node("n1", 1)]), &opts).is_err());
    }

    #[test]
    fn presets_parse() {
        assert_eq!(
            "big:8:16384:81920".parse::<VmTypePreset>().unwrap(),
            VmTypePreset {
                name: "big".into(),
                size: Some((8.0, 16384, 81920))
            }
        );
        assert_eq!("plain".parse::<VmTypePreset>().unwrap().size, None);
        for bad in [
            "",
            ":1:2:3",
            "x:1:2",
            "x:0:1:1",
            "x:1:0:1",
            "x:a:1:1",
            "x:NaN:1:1",
        ] {
            assert!(bad.parse::<VmTypePreset>().is_err(), "{bad}");
        }
        assert_eq!(
            "20GB:20480".parse::<DiskTypePreset>().unwrap().size_mib,
            20480
        );
        for bad in ["20GB", ":5", "x:0", "x:-1"] {
            assert!(bad.parse::<DiskTypePreset>().is_err(), "{bad}");
        }
    }
}
