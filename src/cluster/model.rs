//! The records the cluster keeps in etcd: node records (written by node-prep), Flannel's
//! network config and subnet leases, and the CPI's VM, disk, snapshot and stemcell records.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ids::{DiskCid, SnapshotCid, StemcellCid, VmCid};
use crate::timestamp::Timestamp;

/// Whether placement may put new VMs on a node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Accepts new VMs.
    #[default]
    Ready,
    /// Keeps its VMs but takes no new ones.
    Cordoned,
}

impl std::fmt::Display for NodeState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NodeState::Ready => "ready",
            NodeState::Cordoned => "cordoned",
        })
    }
}

/// What a node can hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Capacity {
    #[serde(default)]
    pub cpus: u32,
    #[serde(default)]
    pub memory_mib: u64,
}

/// A node's record at `<key_prefix>/nodes/<name>`. Unknown keys are ignored so newer
/// node-prep versions can add fields.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NodeRecord {
    pub name: String,
    pub private_ip: Ipv4Addr,
    #[serde(default)]
    pub public_ip: Option<Ipv4Addr>,
    /// The address the node's Flannel lease announces, when node-prep was told one other
    /// than the private IP (`--flannel-ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub flannel_ip: Option<Ipv4Addr>,
    /// `tcp://<ip>:2376`, served with mutual TLS.
    pub docker_endpoint: String,
    /// The node's Flannel subnet, network address form (`10.1.2.0/24`).
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The Docker bridge network for BOSH VMs on this node.
    #[serde(default = "default_network_name")]
    pub network_name: String,
    #[serde(default)]
    pub state: NodeState,
    #[serde(default)]
    pub capacity: Capacity,
    #[serde(default)]
    pub cert_fingerprint: Option<String>,
    #[serde(default)]
    pub prepared_at: Option<String>,
    /// The node's VM disk tree (a shared mount, see [`crate::disk_mounts`]): where the CPI
    /// binds persistent disks into running VMs. `None` on a node prepared by a node-prep
    /// that had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disks_dir: Option<String>,
}

fn default_mtu() -> u32 {
    1500
}
fn default_network_name() -> String {
    "bosh".into()
}

/// Flannel's `<prefix>/config`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlannelConfig {
    #[serde(rename = "Network")]
    pub network: Ipv4Net,
    #[serde(rename = "SubnetLen", default = "default_subnet_len")]
    pub subnet_len: u8,
    #[serde(rename = "Backend", default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<FlannelBackend>,
    /// Lowest subnet flannel may lease (aligned to `SubnetLen`).
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub subnet_min: Option<Ipv4Addr>,
    /// Highest subnet flannel may lease.
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub subnet_max: Option<Ipv4Addr>,
}

impl FlannelConfig {
    /// The backend type, if the config names one (flannel falls back to udp if not).
    pub fn backend_type(&self) -> Option<&str> {
        self.backend.as_ref().map(|b| b.kind.as_str())
    }
}

/// Flannel's backend section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlannelBackend {
    #[serde(rename = "Type")]
    pub kind: String,
}

fn default_subnet_len() -> u8 {
    24
}

/// One Flannel subnet lease `<prefix>/subnets/<a.b.c.d>-<len>`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetLease {
    pub subnet: Ipv4Net,
    pub public_ip: Option<Ipv4Addr>,
    pub backend_type: Option<String>,
}

#[derive(Deserialize)]
struct LeaseValue {
    #[serde(rename = "PublicIP", default)]
    public_ip: Option<Ipv4Addr>,
    #[serde(rename = "BackendType", default)]
    backend_type: Option<String>,
}

impl SubnetLease {
    /// The key name of a lease for `subnet` (`10.1.2.0-24`).
    pub fn key_name(subnet: &Ipv4Net) -> String {
        format!("{}-{}", subnet.network(), subnet.prefix_len())
    }

    /// The JSON value of a reservation for `public_ip`, in flannel's lease format. Written
    /// without an etcd lease it never expires; flanneld adopts it for the same public IP.
    pub fn reservation_value(public_ip: Ipv4Addr, backend_type: &str) -> String {
        serde_json::json!({
            "PublicIP": public_ip,
            "PublicIPv6": null,
            "BackendType": backend_type,
            "BackendData": null,
        })
        .to_string()
    }

    /// Parses a lease from its key's last segment (`10.1.2.0-24`) and JSON value.
    pub fn parse(key_name: &str, value: &[u8]) -> Result<SubnetLease, String> {
        let (addr, len) = key_name
            .rsplit_once('-')
            .ok_or_else(|| format!("lease key '{key_name}' is not <address>-<length>"))?;
        let subnet = format!("{addr}/{len}")
            .parse::<Ipv4Net>()
            .map_err(|e| format!("lease key '{key_name}': {e}"))?;
        let v: LeaseValue = serde_json::from_slice(value)
            .map_err(|e| format!("lease '{key_name}' value is not flannel JSON: {e}"))?;
        Ok(SubnetLease {
            subnet,
            public_ip: v.public_ip,
            backend_type: v.backend_type,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_from_key_and_value() {
        let l = SubnetLease::parse(
            "10.1.2.0-24",
            br#"{"PublicIP":"192.0.2.11","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1}}"#,
        )
        .unwrap();
        assert_eq!(l.subnet, "10.1.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(l.public_ip, Some(Ipv4Addr::new(192, 0, 2, 11)));
        assert!(SubnetLease::parse("10.1.2.0", b"{}").is_err());
        assert!(SubnetLease::parse("10.1.2.0-24", b"nope").is_err());
    }

    #[test]
    fn node_record_defaults_and_unknown_keys() {
        let n: NodeRecord = serde_json::from_str(
            r#"{"name":"n1","private_ip":"192.168.210.11","docker_endpoint":"tcp://192.168.210.11:2376",
                "subnet":"10.1.1.0/24","gateway":"10.1.1.1","future":true}"#,
        )
        .unwrap();
        assert_eq!(n.state, NodeState::Ready);
        assert_eq!(n.mtu, 1500);
        assert_eq!(n.network_name, "bosh");
    }

    #[test]
    fn flannel_config() {
        let c: FlannelConfig = serde_json::from_str(
            r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
        )
        .unwrap();
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.backend_type(), Some("vxlan"));
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"Network":"10.1.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#
        );
    }

    #[test]
    fn reservation_round_trips() {
        let subnet: Ipv4Net = "10.1.7.0/24".parse().unwrap();
        let name = SubnetLease::key_name(&subnet);
        assert_eq!(name, "10.1.7.0-24");
        let value = SubnetLease::reservation_value(Ipv4Addr::new(192, 0, 2, 7), "vxlan");
        let l = SubnetLease::parse(&name, value.as_bytes()).unwrap();
        assert_eq!(l.subnet, subnet);
        assert_eq!(l.public_ip, Some(Ipv4Addr::new(192, 0, 2, 7)));
        assert_eq!(l.backend_type.as_deref(), Some("vxlan"));
    }
}

/// Where a VM lives, at `<key_prefix>/vms/<cid>`: written before anything is created on
/// the node, so a killed create leaves a record that delete_vm can follow.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VmRecord {
    pub cid: VmCid,
    pub node: String,
    pub agent_id: String,
    pub stemcell_cid: String,
    /// Memory limit in MiB (0: none), for placement's capacity accounting.
    #[serde(default)]
    pub memory_mib: u64,
    /// `env.bosh.group`, for spreading a group across nodes.
    #[serde(default)]
    pub group: Option<String>,
    /// `creating` until create_vm finished, then `created`.
    #[serde(default)]
    pub state: VmState,
    pub created_at: Timestamp,
    /// Metadata from set_vm_metadata (deployment, job, index, ...).
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
    /// The addresses claimed for the VM on its node (see `cluster::claims`), removed with
    /// the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<AddressClaim>,
}

/// One address a VM holds on a Docker network of its node, claimed at
/// `<key_prefix>/addresses/<node>/<network>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AddressClaim {
    pub network: String,
    pub ip: Ipv4Addr,
}

/// Lifecycle of a VM record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum VmState {
    /// create_vm has started; the container may or may not exist yet.
    Creating,
    /// create_vm finished.
    #[default]
    Created,
}

/// A persistent disk at `<key_prefix>/disks/<cid>`: a Docker volume named after the cid on
/// `node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DiskRecord {
    pub cid: DiskCid,
    pub node: String,
    /// Requested size in MiB (recorded, not enforced by local volumes).
    pub size_mib: u64,
    /// The VM it is attached to, if any.
    #[serde(default)]
    pub vm: Option<VmCid>,
    /// A node still holding the source volume of a finished move (the move was killed, or
    /// that node was unreachable, after the record switched to the new node); the next
    /// attach, has_disk or delete_disk removes it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub old_copy_on: Option<String>,
    /// A node a move is copying the disk to (set before the target volume is made): if the
    /// move fails or is killed there, the next attach, has_disk or delete_disk removes the
    /// partial copy and its helpers, wherever the disk goes next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub copying_to: Option<String>,
    pub created_at: Timestamp,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A disk snapshot at `<key_prefix>/snapshots/<cid>`: a volume holding a copy of the
/// disk's contents, on the disk's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SnapshotRecord {
    pub cid: SnapshotCid,
    pub disk_cid: DiskCid,
    pub node: String,
    pub created_at: Timestamp,
    #[serde(default)]
    pub metadata: serde_json::Map<String, serde_json::Value>,
}

/// A stemcell at `<key_prefix>/stemcells/<cid>`: an image tagged with the cid on the
/// nodes that imported (or adopted) it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct StemcellRecord {
    pub cid: StemcellCid,
    pub name: String,
    pub version: String,
    #[serde(default)]
    pub operating_system: Option<String>,
    /// Nodes that had the image after create_stemcell.
    #[serde(default)]
    pub nodes: Vec<String>,
    pub created_at: Timestamp,
}
