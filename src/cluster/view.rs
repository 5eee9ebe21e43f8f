//! The cluster as one etcd read: node records, Flannel config and leases, the cluster CA
//! certificate and the VM index, fetched in a single transaction (one round trip).

use etcd_client::{GetOptions, Txn, TxnOp, TxnOpResponse};

use super::error::IndexError;
use super::etcd::Etcd;
use super::model::{FlannelConfig, NodeRecord, SubnetLease, VmRecord};
use crate::config::EtcdConfig;
use crate::ids::{DiskCid, SnapshotCid, StemcellCid, VmCid};
use crate::node_name::NodeName;

/// The etcd keys of the cluster, derived from the two configured prefixes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Keys {
    /// Prefix of MoltenCore's keys (`/moltencore`).
    pub(crate) key_prefix: String,
    /// Prefix of Flannel's keys (`/coreos.com/network`).
    pub(crate) flannel_prefix: String,
}

impl Keys {
    /// Keys for the configured prefixes.
    pub fn new(cfg: &EtcdConfig) -> Keys {
        Keys::with_prefixes(&cfg.key_prefix, &cfg.flannel_prefix)
    }
    /// Keys for explicit prefixes (node-prep takes them from flags, not from cpi.json).
    pub fn with_prefixes(key_prefix: &str, flannel_prefix: &str) -> Keys {
        Keys {
            key_prefix: key_prefix.to_string(),
            flannel_prefix: flannel_prefix.to_string(),
        }
    }
    /// Prefix of all node records.
    pub fn nodes(&self) -> String {
        format!("{}/nodes/", self.key_prefix)
    }
    /// One node's record.
    pub fn node(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.key_prefix)
    }
    /// The cluster CA certificate (public; Docker servers are signed by it).
    pub fn ca_cert(&self) -> String {
        format!("{}/pki/ca.crt", self.key_prefix)
    }
    /// The cluster CA private key: readable by anyone with etcd read access to this key.
    pub fn ca_key(&self) -> String {
        format!("{}/pki/ca.key", self.key_prefix)
    }
    /// One stemcell's index record.
    pub(crate) fn stemcell(&self, cid: &StemcellCid) -> String {
        format!("{}/stemcells/{cid}", self.key_prefix)
    }
    /// Prefix of the VM index.
    pub(crate) fn vms(&self) -> String {
        format!("{}/vms/", self.key_prefix)
    }
    /// One VM's index record.
    pub fn vm(&self, cid: &VmCid) -> String {
        format!("{}/vms/{cid}", self.key_prefix)
    }
    /// Prefix of the address claims (see `cluster::claims`).
    pub(crate) fn addresses(&self) -> String {
        format!("{}/addresses/", self.key_prefix)
    }
    /// The claim of `ip` on the Docker network `network` of node `node`.
    pub(crate) fn address(&self, node: &NodeName, network: &str, ip: std::net::Ipv4Addr) -> String {
        format!("{}/addresses/{node}/{network}/{ip}", self.key_prefix)
    }
    /// Prefix of the disk index.
    pub(crate) fn disks(&self) -> String {
        format!("{}/disks/", self.key_prefix)
    }
    /// One disk's index record.
    pub(crate) fn disk(&self, cid: &DiskCid) -> String {
        format!("{}/disks/{cid}", self.key_prefix)
    }
    /// One snapshot's index record.
    pub(crate) fn snapshot(&self, cid: &SnapshotCid) -> String {
        format!("{}/snapshots/{cid}", self.key_prefix)
    }
    /// Flannel's network config.
    pub fn flannel_config(&self) -> String {
        format!("{}/config", self.flannel_prefix)
    }
    /// Prefix of Flannel's subnet leases.
    pub fn flannel_subnets(&self) -> String {
        format!("{}/subnets/", self.flannel_prefix)
    }
}

/// A consistent snapshot of the cluster (all keys read at one etcd revision).
#[derive(Debug, Clone, Default)]
pub struct ClusterView {
    /// Node records, sorted by name.
    pub nodes: Vec<NodeRecord>,
    /// Flannel's network config, if written.
    pub flannel: Option<FlannelConfig>,
    /// Flannel subnet leases.
    pub leases: Vec<SubnetLease>,
    /// The cluster CA certificate (PEM), if published.
    pub ca_cert: Option<String>,
    /// The VM index (which node holds which VM), for placement and the operator's view.
    pub vms: Vec<VmRecord>,
    /// Node records that could not be read: node name and reason (also in `problems`).
    pub unreadable_nodes: Vec<(String, String)>,
    /// VM records that could not be read: cid and reason (also in `problems`).
    pub unreadable_vms: Vec<(String, String)>,
    /// The address claim keys present (see `cluster::claims`): addresses a new VM need
    /// not try.
    pub claimed_addresses: std::collections::HashSet<String>,
    /// Records that could not be read, with the reason; reported, never fatal.
    pub problems: Vec<String>,
    /// The etcd revision the snapshot was read at.
    pub revision: i64,
}

/// What the VM index says runs on one node.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub(crate) struct NodeUsage {
    /// Number of VMs in the index on this node.
    pub(crate) vms: u32,
    /// Sum of their `memory_mib`.
    pub(crate) memory_mib: u64,
}

/// One key and its value, as etcd returned them.
type Kv<'a> = (&'a [u8], &'a [u8]);

/// The keys and values of a get's answer.
fn pairs(kvs: &[etcd_client::KeyValue]) -> impl Iterator<Item = Kv<'_>> {
    kvs.iter().map(|kv| (kv.key(), kv.value()))
}

impl ClusterView {
    /// Reads the whole view in one transaction.
    pub(crate) async fn load(etcd: &Etcd, keys: &Keys) -> Result<ClusterView, IndexError> {
        let txn = Txn::new().and_then(vec![
            TxnOp::get(keys.nodes(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(keys.flannel_config(), None),
            TxnOp::get(
                keys.flannel_subnets(),
                Some(GetOptions::new().with_prefix()),
            ),
            TxnOp::get(keys.ca_cert(), None),
            TxnOp::get(keys.vms(), Some(GetOptions::new().with_prefix())),
            TxnOp::get(
                keys.addresses(),
                Some(GetOptions::new().with_prefix().with_keys_only()),
            ),
        ]);
        let response = etcd
            .client()
            .repeatable_txn(txn)
            .await
            .map_err(|e| etcd.error("reading the cluster view", &e))?;
        let revision = response.header().map(|h| h.revision()).unwrap_or(0);
        let mut gets = response.op_responses().into_iter().map(|r| match r {
            TxnOpResponse::Get(g) => g.kvs().to_vec(),
            _ => Vec::new(),
        });
        let mut next = || gets.next().unwrap_or_default();
        let (node_kvs, config_kvs, lease_kvs, ca_kvs, vm_kvs, claim_kvs) =
            (next(), next(), next(), next(), next(), next());
        let mut view = ClusterView {
            revision,
            claimed_addresses: claim_kvs
                .iter()
                .map(|kv| String::from_utf8_lossy(kv.key()).to_string())
                .collect(),
            ca_cert: ca_kvs
                .first()
                .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
            ..ClusterView::default()
        };
        view.add_nodes(keys, pairs(&node_kvs));
        view.add_flannel_config(keys, config_kvs.first().map(|kv| kv.value()));
        view.add_leases(keys, pairs(&lease_kvs));
        view.add_vms(keys, pairs(&vm_kvs));
        Ok(view)
    }

    /// The node records read under `keys.nodes()`, sorted by name; an unreadable one is
    /// noted by its name, never fatal.
    fn add_nodes<'a>(&mut self, keys: &Keys, kvs: impl Iterator<Item = Kv<'a>>) {
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(key).to_string();
            match serde_json::from_slice::<NodeRecord>(value) {
                Ok(node) => self.nodes.push(node),
                Err(e) => {
                    let problem = format!("node record {key} is unreadable: {e}");
                    let name = key.strip_prefix(&keys.node("")).unwrap_or(&key).to_string();
                    self.unreadable_nodes.push((name, problem.clone()));
                    self.problems.push(problem);
                }
            }
        }
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
    }

    /// Flannel's network config, when written and readable.
    fn add_flannel_config(&mut self, keys: &Keys, value: Option<&[u8]>) {
        if let Some(value) = value {
            match serde_json::from_slice::<FlannelConfig>(value) {
                Ok(c) => self.flannel = Some(c),
                Err(e) => self.problems.push(format!(
                    "flannel config {} is unreadable: {e}",
                    keys.flannel_config()
                )),
            }
        }
    }

    /// The Flannel subnet leases read under `keys.flannel_subnets()`.
    fn add_leases<'a>(&mut self, keys: &Keys, kvs: impl Iterator<Item = Kv<'a>>) {
        let subnets = keys.flannel_subnets();
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(key).to_string();
            let name = key.strip_prefix(&subnets).unwrap_or(&key);
            match SubnetLease::parse(name, value) {
                Ok(lease) => self.leases.push(lease),
                Err(e) => self.problems.push(e.to_string()),
            }
        }
    }

    /// The VM index records read under `keys.vms()`; an unreadable one is noted by its
    /// cid, never fatal.
    fn add_vms<'a>(&mut self, keys: &Keys, kvs: impl Iterator<Item = Kv<'a>>) {
        for (key, value) in kvs {
            let key = String::from_utf8_lossy(key).to_string();
            match serde_json::from_slice::<VmRecord>(value) {
                Ok(vm) => self.vms.push(vm),
                Err(e) => {
                    let problem = format!("VM record {key} is unreadable: {e}");
                    let cid = key.strip_prefix(&keys.vms()).unwrap_or(&key).to_string();
                    self.unreadable_vms.push((cid, problem.clone()));
                    self.problems.push(problem);
                }
            }
        }
    }

    /// The node named `name`.
    pub(crate) fn node(&self, name: &NodeName) -> Option<&NodeRecord> {
        self.nodes.iter().find(|n| n.name == *name)
    }

    /// Whether node `name` is registered, for calls that would otherwise forget what lives
    /// on an unregistered node: a record that exists but cannot be read is an error, never
    /// "not registered".
    pub(crate) fn registered(&self, name: &NodeName) -> Result<Option<&NodeRecord>, IndexError> {
        if let Some((_, problem)) = self
            .unreadable_nodes
            .iter()
            .find(|(n, _)| n == name.as_str())
        {
            return Err(IndexError::Malformed(problem.clone()));
        }
        Ok(self.node(name))
    }

    /// The index record of VM `cid`, read in the same transaction as the nodes, so finding
    /// a VM and its node's endpoint costs one etcd round trip. A record that exists but
    /// cannot be read is an error, never "no such VM".
    pub(crate) fn vm(&self, cid: &VmCid) -> Result<Option<&VmRecord>, IndexError> {
        if let Some((_, problem)) = self.unreadable_vms.iter().find(|(c, _)| c == cid.as_str()) {
            return Err(IndexError::Malformed(problem.clone()));
        }
        Ok(self.vms.iter().find(|v| v.cid == *cid))
    }

    /// The VMs the index places on `node`.
    pub(crate) fn vms_on<'a>(
        &'a self,
        node: &'a NodeName,
    ) -> impl Iterator<Item = &'a VmRecord> + 'a {
        self.vms.iter().filter(move |v| v.node == *node)
    }

    /// VMs and memory in use on the node `name`, from the VM index (zero when it has none).
    pub(crate) fn usage_of(&self, name: &NodeName) -> NodeUsage {
        self.vms_on(name)
            .fold(NodeUsage::default(), |u, vm| NodeUsage {
                vms: u.vms + 1,
                memory_mib: u.memory_mib.saturating_add(vm.memory_mib),
            })
    }

    /// The Flannel lease covering a node's subnet, if any.
    pub(crate) fn lease_of(&self, node: &NodeRecord) -> Option<&SubnetLease> {
        self.leases.iter().find(|l| l.subnet == node.subnet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_follow_prefixes() {
        let k = Keys {
            key_prefix: "/moltencore".into(),
            flannel_prefix: "/coreos.com/network".into(),
        };
        assert_eq!(k.node("n1"), "/moltencore/nodes/n1");
        assert_eq!(k.ca_cert(), "/moltencore/pki/ca.crt");
        assert_eq!(k.flannel_subnets(), "/coreos.com/network/subnets/");
        assert_eq!(k.ca_key(), "/moltencore/pki/ca.key");
        assert_eq!(k.vms(), "/moltencore/vms/");
        assert_eq!(Keys::with_prefixes("/moltencore", "/coreos.com/network"), k);
    }

    fn cid(n: u8) -> String {
        format!("vm-00000000-0000-0000-0000-0000000000{n:02}")
    }

    fn vm(n: u8, node: &str, memory_mib: u64) -> VmRecord {
        serde_json::from_value(serde_json::json!({"cid": cid(n), "node": node,
            "agent_id": "a", "stemcell_cid": "sc-00000000-0000-0000-0000-00000000000c", "memory_mib": memory_mib,
            "created_at": "2026-01-01T00:00:00Z"}))
        .unwrap()
    }

    #[test]
    fn a_vm_is_found_by_cid_and_an_unreadable_record_is_an_error() {
        let view = ClusterView {
            vms: vec![vm(1, "n1", 512)],
            unreadable_vms: vec![(cid(2), "VM record /p/vms/b is unreadable".into())],
            ..ClusterView::default()
        };
        let parsed = |n| VmCid::parse(&cid(n)).unwrap();
        assert_eq!(
            view.vm(&parsed(1)).unwrap().map(|v| v.node.as_str()),
            Some("n1")
        );
        assert!(view.vm(&parsed(3)).unwrap().is_none());
        let e = view.vm(&parsed(2)).unwrap_err();
        assert!(
            matches!(&e, IndexError::Malformed(m) if m.contains("/p/vms/b")),
            "{e}"
        );
    }

    fn kv<'a>(key: &'a str, value: &'a str) -> Kv<'a> {
        (key.as_bytes(), value.as_bytes())
    }

    #[test]
    fn unreadable_records_are_noted_by_name_and_the_readable_ones_kept() {
        let keys = Keys::with_prefixes("/p", "/f");
        let mut view = ClusterView::default();
        let good = serde_json::to_string(&vm(1, "n1", 512)).unwrap();
        let good_key = format!("/p/vms/{}", cid(1));
        view.add_vms(
            &keys,
            [kv(&good_key, &good), kv("/p/vms/b", "{")].into_iter(),
        );
        view.add_nodes(&keys, [kv("/p/nodes/n2", "not json")].into_iter());
        view.add_flannel_config(&keys, Some(b"[]"));
        assert_eq!(view.vms.len(), 1);
        assert_eq!(view.unreadable_vms[0].0, "b");
        assert!(
            view.unreadable_vms[0]
                .1
                .starts_with("VM record /p/vms/b is unreadable: ")
        );
        assert_eq!(view.unreadable_nodes[0].0, "n2");
        assert!(view.problems[2].starts_with("flannel config /f/config is unreadable: "));
        assert_eq!(view.problems.len(), 3);
        assert!(view.flannel.is_none());
    }

    #[test]
    fn usage_counts_the_index_records_of_a_node() {
        let view = ClusterView {
            vms: vec![vm(1, "n1", 512), vm(2, "n1", 256), vm(3, "n2", 1024)],
            ..ClusterView::default()
        };
        assert_eq!(
            view.usage_of(&"n1".into()),
            NodeUsage {
                vms: 2,
                memory_mib: 768
            }
        );
        assert_eq!(view.usage_of(&"n3".into()), NodeUsage::default());
    }
}
