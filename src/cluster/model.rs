//! The records the cluster keeps in etcd: node records (written by node-prep), Flannel's
//! network config and subnet leases, and the CPI's VM, disk, snapshot and stemcell records.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::ids::{DiskCid, SnapshotCid, StemcellCid, VmCid};
use crate::node_name::NodeName;
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
    /// The node's name, unique in the cluster.
    pub(crate) name: NodeName,
    /// The address other nodes and the CPI reach the node at.
    pub private_ip: Ipv4Addr,
    /// The node's public address, when it has one.
    #[serde(default)]
    pub(crate) public_ip: Option<Ipv4Addr>,
    /// The address the node's Flannel lease announces, when node-prep was told one other
    /// than the private IP (`--flannel-ip`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) flannel_ip: Option<Ipv4Addr>,
    /// `tcp://<ip>:2376`, served with mutual TLS.
    pub docker_endpoint: String,
    /// The node's Flannel subnet, network address form (`10.1.2.0/24`).
    pub subnet: Ipv4Net,
    /// The gateway of the node's subnet (its Docker bridge).
    pub gateway: Ipv4Addr,
    /// The MTU of the node's VM network.
    #[serde(default = "default_mtu")]
    pub mtu: u32,
    /// The Docker bridge network for BOSH VMs on this node.
    #[serde(default = "default_network_name")]
    pub(crate) network_name: String,
    /// Whether the node takes new VMs.
    #[serde(default)]
    pub state: NodeState,
    /// CPUs and memory the node offers to VMs.
    #[serde(default)]
    pub capacity: Capacity,
    /// SHA-256 of the node's Docker server certificate.
    #[serde(default)]
    pub cert_fingerprint: Option<String>,
    /// When node-prep last prepared the node (RFC 3339).
    #[serde(default)]
    pub prepared_at: Option<Timestamp>,
    /// The node's VM disk tree (a shared mount, see [`crate::disk_mounts`]): where the CPI
    /// binds persistent disks into running VMs. `None` on a node prepared by a node-prep
    /// that had none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) disks_dir: Option<String>,
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
    pub(crate) network: Ipv4Net,
    #[serde(rename = "SubnetLen", default = "default_subnet_len")]
    pub(crate) subnet_len: u8,
    #[serde(rename = "Backend", default, skip_serializing_if = "Option::is_none")]
    pub(crate) backend: Option<FlannelBackend>,
    /// Lowest subnet flannel may lease (aligned to `SubnetLen`).
    #[serde(rename = "SubnetMin", default, skip_serializing_if = "Option::is_none")]
    pub(crate) subnet_min: Option<Ipv4Addr>,
    /// Highest subnet flannel may lease.
    #[serde(rename = "SubnetMax", default, skip_serializing_if = "Option::is_none")]
    pub(crate) subnet_max: Option<Ipv4Addr>,
}

impl FlannelConfig {
    /// The backend type, if the config names one (flannel falls back to udp if not).
    pub(crate) fn backend_type(&self) -> Option<&str> {
        self.backend.as_ref().map(|b| b.kind.as_str())
    }
}

/// Flannel's backend section.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct FlannelBackend {
    #[serde(rename = "Type")]
    pub(crate) kind: String,
}

fn default_subnet_len() -> u8 {
    24
}

/// One Flannel subnet lease `<prefix>/subnets/<a.b.c.d>-<len>`.
#[derive(Debug, Clone, PartialEq)]
pub struct SubnetLease {
    /// The leased subnet.
    pub subnet: Ipv4Net,
    /// The address the lease announces.
    pub public_ip: Option<Ipv4Addr>,
    /// Flannel's backend (`vxlan`, ...).
    pub backend_type: Option<String>,
}

#[derive(Deserialize)]
struct LeaseValue {
    #[serde(rename = "PublicIP", default)]
    public_ip: Option<Ipv4Addr>,
    #[serde(rename = "BackendType", default)]
    backend_type: Option<String>,
}

/// A flannel subnet lease that cannot be read; the text names its key.
#[derive(Debug, thiserror::Error)]
pub(crate) enum LeaseError {
    /// The key's last segment is not `<address>-<length>`.
    #[error("lease key '{key}' is not <address>-<length>")]
    KeyShape { key: String },
    /// The key's address and length are no subnet.
    #[error("lease key '{key}': {source}")]
    KeySubnet {
        key: String,
        #[source]
        source: ipnet::AddrParseError,
    },
    /// The value is not flannel's lease JSON.
    #[error("lease '{key}' value is not flannel JSON: {source}")]
    Value {
        key: String,
        #[source]
        source: serde_json::Error,
    },
}

impl SubnetLease {
    /// The key name of a lease for `subnet` (`10.1.2.0-24`).
    pub(crate) fn key_name(subnet: &Ipv4Net) -> String {
        format!("{}-{}", subnet.network(), subnet.prefix_len())
    }

    /// The JSON value of a reservation for `public_ip`, in flannel's lease format. Written
    /// without an etcd lease it never expires; flanneld adopts it for the same public IP.
    pub(crate) fn reservation_value(public_ip: Ipv4Addr, backend_type: &str) -> String {
        serde_json::json!({
            "PublicIP": public_ip,
            "PublicIPv6": null,
            "BackendType": backend_type,
            "BackendData": null,
        })
        .to_string()
    }

    /// Parses a lease from its key's last segment (`10.1.2.0-24`) and JSON value.
    pub(crate) fn parse(key_name: &str, value: &[u8]) -> Result<SubnetLease, LeaseError> {
        let key = || key_name.to_string();
        let (addr, len) = key_name
            .rsplit_once('-')
            .ok_or_else(|| LeaseError::KeyShape { key: key() })?;
        let subnet = format!("{addr}/{len}")
            .parse::<Ipv4Net>()
            .map_err(|source| LeaseError::KeySubnet { key: key(), source })?;
        let v: LeaseValue = serde_json::from_slice(value)
            .map_err(|source| LeaseError::Value { key: key(), source })?;
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
        assert_eq!(
            SubnetLease::parse("10.1.2.0", b"{}")
                .unwrap_err()
                .to_string(),
            "lease key '10.1.2.0' is not <address>-<length>"
        );
        let e = SubnetLease::parse("10.1.2.0-24", b"nope").unwrap_err();
        assert!(
            e.to_string()
                .starts_with("lease '10.1.2.0-24' value is not flannel JSON: "),
            "{e}"
        );
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
    fn vm_records_read_back_and_write_back_the_same() {
        let text = r#"{"cid":"vm-00000000-0000-0000-0000-000000000001","node":"n1","agent_id":"a1","stemcell_cid":"sc-5f0c1c2e-8d7a-4e0b-9a43-2b1f6c9d0e11","memory_mib":512,"group":"web","state":"created","created_at":"2026-11-25T00:00:00Z","metadata":{"job":"web"}}"#;
        let record: VmRecord = serde_json::from_str(text).unwrap();
        assert_eq!(
            record.stemcell_cid,
            "sc-5f0c1c2e-8d7a-4e0b-9a43-2b1f6c9d0e11"
        );
        assert_eq!(record.node, "n1");
        assert_eq!(serde_json::to_string(&record).unwrap(), text);
        // A record whose stemcell is not a cid of this CPI's shape stays readable.
        let foreign = text.replace("sc-5f0c1c2e-8d7a-4e0b-9a43-2b1f6c9d0e11", "s");
        let record: VmRecord = serde_json::from_str(&foreign).unwrap();
        assert_eq!(serde_json::to_string(&record).unwrap(), foreign);
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
    pub(crate) cid: VmCid,
    pub(crate) node: NodeName,
    pub(crate) agent_id: String,
    /// The stemcell the VM was made from, as the record holds it: kept as text, so a
    /// record written by hand or by an older version (any text here) stays readable; the
    /// CPI writes the `StemcellCid` create_vm was given.
    pub(crate) stemcell_cid: String,
    /// Memory limit in MiB (0: none), for placement's capacity accounting.
    #[serde(default)]
    pub(crate) memory_mib: u64,
    /// `env.bosh.group`, for spreading a group across nodes.
    #[serde(default)]
    pub(crate) group: Option<String>,
    /// `creating` until create_vm finished, then `created`.
    #[serde(default)]
    pub(crate) state: VmState,
    pub(crate) created_at: Timestamp,
    /// Metadata from set_vm_metadata (deployment, job, index, ...).
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
    /// The addresses claimed for the VM on its node (see `cluster::claims`), removed with
    /// the record.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub(crate) addresses: Vec<AddressClaim>,
}

/// One address a VM holds on a Docker network of its node, claimed at
/// `<key_prefix>/addresses/<node>/<network>/<ip>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct AddressClaim {
    pub(crate) network: String,
    pub(crate) ip: Ipv4Addr,
}

/// Lifecycle of a VM record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum VmState {
    /// create_vm has started; the container may or may not exist yet.
    Creating,
    /// create_vm finished.
    #[default]
    Created,
}

/// A persistent disk at `<key_prefix>/disks/<cid>`: a Docker volume named after the cid on
/// `node`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct DiskRecord {
    pub(crate) cid: DiskCid,
    pub(crate) node: NodeName,
    /// Requested size in MiB (recorded, not enforced by local volumes).
    pub(crate) size_mib: u64,
    /// The VM it is attached to, if any.
    #[serde(default)]
    pub(crate) vm: Option<VmCid>,
    /// The copies of the disk a move to another node made or left on other nodes (stored
    /// as the record's `copying_to` and `old_copy_on` fields): the next attach, has_disk or
    /// delete_disk removes them, wherever the disk goes next.
    #[serde(flatten)]
    pub(crate) moving: DiskMove,
    pub(crate) created_at: Timestamp,
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

/// A disk snapshot at `<key_prefix>/snapshots/<cid>`: a volume holding a copy of the
/// disk's contents, on the disk's node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct SnapshotRecord {
    pub(crate) cid: SnapshotCid,
    pub(crate) disk_cid: DiskCid,
    pub(crate) node: NodeName,
    pub(crate) created_at: Timestamp,
    #[serde(default)]
    pub(crate) metadata: serde_json::Map<String, serde_json::Value>,
}

/// A stemcell at `<key_prefix>/stemcells/<cid>`: an image tagged with the cid on the
/// nodes that imported (or adopted) it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct StemcellRecord {
    pub(crate) cid: StemcellCid,
    pub(crate) name: String,
    pub(crate) version: String,
    #[serde(default)]
    pub(crate) operating_system: Option<String>,
    /// Nodes that had the image after create_stemcell.
    #[serde(default)]
    pub(crate) nodes: Vec<NodeName>,
    pub(crate) created_at: Timestamp,
}

/// Where a disk has copies besides its own node, as a move to another node goes
/// (`cloud::context::moving`; drawn in docs/disks.md). Stored as two fields of the disk's
/// record, `copying_to` and `old_copy_on`, each written only when set: every record
/// written before this type reads back, and writes back, the same.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "MoveMarks", into = "MoveMarks")]
pub(crate) enum DiskMove {
    /// No copy of the disk outside its node.
    #[default]
    Settled,
    /// A copy is being made on node `to` (marked before its volume is made): a move that
    /// fails or is killed leaves a partial copy there. `old_copy_on` is the source copy an
    /// earlier move left, still there (on `to` itself: the disk goes back where it was).
    Copying {
        to: NodeName,
        old_copy_on: Option<NodeName>,
    },
    /// A finished move switched the disk to its new node; the source copy stays on node
    /// `on` until it is removed.
    OldCopy { on: NodeName },
}

/// A move that cannot start: a copy an earlier move made or left on another node than the
/// target could not be removed yet, and the record has room for one copy of each kind.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "a copy of it on node {node} ({mark}) could not be removed yet; retry when node {node} answers"
)]
pub(crate) struct MoveBlocked {
    /// The record field that names the copy.
    pub(crate) mark: &'static str,
    /// The node that holds the copy.
    pub(crate) node: NodeName,
}

impl DiskMove {
    /// The node a copy is being made on (`copying_to`).
    pub(crate) fn copying_to(&self) -> Option<&NodeName> {
        match self {
            DiskMove::Copying { to, .. } => Some(to),
            _ => None,
        }
    }

    /// The node holding the source copy of a finished move (`old_copy_on`).
    pub(crate) fn old_copy_on(&self) -> Option<&NodeName> {
        match self {
            DiskMove::OldCopy { on } => Some(on),
            DiskMove::Copying { old_copy_on, .. } => old_copy_on.as_ref(),
            DiskMove::Settled => None,
        }
    }

    /// Some node holding a copy besides the disk's own, if any.
    pub(crate) fn stray_copy(&self) -> Option<&NodeName> {
        self.old_copy_on().or(self.copying_to())
    }

    /// A move to `target` starts (before the target volume is made). Refused while a copy
    /// sits on another node than `target`: its mark would be lost.
    pub(crate) fn begin(&mut self, target: &NodeName) -> Result<(), MoveBlocked> {
        for (mark, node) in [
            ("copying_to", self.copying_to()),
            ("old_copy_on", self.old_copy_on()),
        ] {
            if let Some(node) = node.filter(|n| *n != target) {
                return Err(MoveBlocked {
                    mark,
                    node: node.clone(),
                });
            }
        }
        let old_copy_on = self.old_copy_on().cloned();
        *self = DiskMove::Copying {
            to: target.clone(),
            old_copy_on,
        };
        Ok(())
    }

    /// The copy was made and checked: the disk lives on the target now, and its former
    /// node `source` holds the old copy. Only from `Copying` (a move under way); any other
    /// state is left as it is.
    pub(crate) fn switched(&mut self, source: NodeName) {
        debug_assert!(
            matches!(self, DiskMove::Copying { .. }),
            "a move switched from {self:?}"
        );
        if let DiskMove::Copying { .. } = self {
            *self = DiskMove::OldCopy { on: source };
        }
    }

    /// The source copy of a finished move is gone; the state keeps any copy being made.
    pub(crate) fn old_copy_removed(&mut self) {
        match self {
            DiskMove::OldCopy { .. } => *self = DiskMove::Settled,
            DiskMove::Copying { old_copy_on, .. } => *old_copy_on = None,
            DiskMove::Settled => {}
        }
    }

    /// The partial copy of a move that failed (or was killed) is gone; the state keeps
    /// an old copy an earlier move left.
    pub(crate) fn partial_copy_removed(&mut self) {
        if let DiskMove::Copying { old_copy_on, .. } = self {
            *self = match old_copy_on.take() {
                Some(on) => DiskMove::OldCopy { on },
                None => DiskMove::Settled,
            };
        }
    }
}

/// The fields a `DiskMove` is stored as in the disk's record.
#[derive(Serialize, Deserialize)]
struct MoveMarks {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    old_copy_on: Option<NodeName>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    copying_to: Option<NodeName>,
}

impl From<MoveMarks> for DiskMove {
    fn from(m: MoveMarks) -> DiskMove {
        match (m.old_copy_on, m.copying_to) {
            (None, None) => DiskMove::Settled,
            (Some(on), None) => DiskMove::OldCopy { on },
            (old_copy_on, Some(to)) => DiskMove::Copying { to, old_copy_on },
        }
    }
}

impl From<DiskMove> for MoveMarks {
    fn from(m: DiskMove) -> MoveMarks {
        MoveMarks {
            old_copy_on: m.old_copy_on().cloned(),
            copying_to: m.copying_to().cloned(),
        }
    }
}

#[cfg(test)]
mod disk_move_tests {
    use super::*;

    fn copying(to: &str, old: Option<&str>) -> DiskMove {
        DiskMove::Copying {
            to: to.into(),
            old_copy_on: old.map(NodeName::from),
        }
    }

    #[test]
    fn records_read_back_and_write_back_the_same() {
        for marks in [
            "",
            r#""old_copy_on":"n1","#,
            r#""copying_to":"n2","#,
            r#""old_copy_on":"n2","copying_to":"n2","#,
            r#""old_copy_on":"n1","copying_to":"n2","#,
        ] {
            let text = format!(
                r#"{{"cid":"disk-00000000-0000-0000-0000-000000000001","node":"n3","size_mib":10,"vm":null,{marks}"created_at":"2026-11-25T00:00:00Z","metadata":{{}}}}"#
            );
            let record: DiskRecord = serde_json::from_str(&text).unwrap();
            assert_eq!(serde_json::to_string(&record).unwrap(), text);
        }
    }

    #[test]
    fn the_fields_name_the_state() {
        let read = |json: &str| -> DiskMove {
            let marks: MoveMarks = serde_json::from_str(json).unwrap();
            marks.into()
        };
        assert_eq!(read("{}"), DiskMove::Settled);
        assert_eq!(
            read(r#"{"old_copy_on":"n1"}"#),
            DiskMove::OldCopy { on: "n1".into() }
        );
        assert_eq!(read(r#"{"copying_to":"n2"}"#), copying("n2", None));
        assert_eq!(
            read(r#"{"old_copy_on":"n1","copying_to":"n2"}"#),
            copying("n2", Some("n1"))
        );
    }

    #[test]
    fn a_move_goes_settled_copying_old_copy_settled() {
        let mut m = DiskMove::Settled;
        m.begin(&"n2".into()).unwrap();
        assert_eq!(m, copying("n2", None));
        m.switched("n1".into());
        assert_eq!(m, DiskMove::OldCopy { on: "n1".into() });
        assert_eq!(m.stray_copy().map(NodeName::as_str), Some("n1"));
        m.old_copy_removed();
        assert_eq!(m, DiskMove::Settled);
    }

    #[test]
    fn a_failed_copy_goes_back_keeping_the_old_copy() {
        let mut m = DiskMove::OldCopy { on: "n2".into() };
        m.begin(&"n2".into()).unwrap();
        assert_eq!(m, copying("n2", Some("n2")));
        m.partial_copy_removed();
        assert_eq!(m, DiskMove::OldCopy { on: "n2".into() });
        let mut m = copying("n2", None);
        m.partial_copy_removed();
        assert_eq!(m, DiskMove::Settled);
    }

    #[test]
    fn a_copy_elsewhere_blocks_a_move() {
        let mut m = DiskMove::OldCopy { on: "n1".into() };
        let e = m.begin(&"n2".into()).unwrap_err();
        assert_eq!(e.mark, "old_copy_on");
        assert_eq!(
            e.to_string(),
            "a copy of it on node n1 (old_copy_on) could not be removed yet; retry when node n1 answers"
        );
        assert_eq!(m, DiskMove::OldCopy { on: "n1".into() });
        let mut m = copying("n1", Some("n3"));
        assert_eq!(m.begin(&"n2".into()).unwrap_err().mark, "copying_to");
        let mut m = copying("n2", Some("n3"));
        assert_eq!(m.begin(&"n2".into()).unwrap_err().mark, "old_copy_on");
        let mut m = copying("n2", None);
        m.begin(&"n2".into()).unwrap();
        assert_eq!(m, copying("n2", None));
    }
}
