//! The node record at `<key_prefix>/nodes/<name>`: written by node-prep with
//! compare-and-swap (a concurrent cordon is never lost; node-prep keeps the state it
//! finds), and the state flip behind `cpi nodes cordon|uncordon`.

use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde_json::Value;

use super::error::{NodePrepError, Result, to_json};
use crate::cluster::{Capacity, Etcd, Keys, NodeRecord, NodeState};
use crate::node_name::NodeName;

/// This machine's CPUs and memory, as placement sees them.
pub(crate) fn host_capacity() -> Result<Capacity> {
    let cpus = std::thread::available_parallelism()
        .map(|n| u32::try_from(n.get()).unwrap_or(u32::MAX))
        .map_err(|error| NodePrepError::CpuCount { error })?;
    let meminfo = crate::bounded_file::read_to_string(
        std::path::Path::new("/proc/meminfo"),
        crate::bounded_file::FileKind::HostFile,
    )
    .map_err(|error| NodePrepError::Meminfo { error })?;
    let kib = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .ok_or(NodePrepError::NoMemTotal)?;
    Ok(Capacity {
        cpus,
        memory_mib: kib / 1024,
    })
}

/// Whether two records differ in anything but the time of the last prep.
pub(crate) fn differs(a: &NodeRecord, b: &NodeRecord) -> bool {
    let mut a = a.clone();
    a.prepared_at = b.prepared_at.clone();
    &a != b
}

/// The node record registered under `name`, if any (unreadable counts as none).
pub(crate) async fn read(etcd: &Etcd, keys: &Keys, name: &NodeName) -> Result<Option<NodeRecord>> {
    Ok(read_raw(etcd, &keys.node(name))
        .await?
        .and_then(|(v, _)| serde_json::from_slice(&v).ok()))
}

async fn read_raw(etcd: &Etcd, key: &str) -> Result<Option<(Vec<u8>, i64)>> {
    let response = etcd
        .client()
        .get(key, None)
        .await
        .map_err(|e| super::etcd_failed(etcd, &format!("reading node record {key}"), &e))?;
    Ok(response
        .kvs()
        .first()
        .map(|kv| (kv.value().to_vec(), kv.mod_revision())))
}

async fn swap(etcd: &Etcd, key: &str, value: String, mod_revision: Option<i64>) -> Result<bool> {
    let guard = match mod_revision {
        Some(rev) => Compare::mod_revision(key, CompareOp::Equal, rev),
        None => Compare::create_revision(key, CompareOp::Equal, 0),
    };
    let txn = Txn::new()
        .when(vec![guard])
        .and_then(vec![TxnOp::put(key, value, None)]);
    let response = etcd
        .client()
        .txn(txn)
        .await
        .map_err(|e| super::etcd_failed(etcd, &format!("writing node record {key}"), &e))?;
    Ok(response.succeeded())
}

/// What registration found and did.
#[derive(Debug, Clone)]
pub(crate) struct Registration {
    pub(crate) record: NodeRecord,
    pub(crate) previous: Option<NodeRecord>,
}

impl Registration {
    /// Whether anything but the prep time changed.
    pub(crate) fn changed(&self) -> bool {
        self.previous
            .as_ref()
            .is_none_or(|p| differs(&self.record, p))
    }
}

/// Writes the record `make` builds from the existing one (which may be unreadable: then it
/// is replaced); `make` may refuse the existing one (another host's). Retries when the
/// record changed in between, asking `make` again; in a dry run writes nothing.
pub(crate) async fn register(
    etcd: &Etcd,
    keys: &Keys,
    name: &NodeName,
    make: impl Fn(Option<&NodeRecord>) -> Result<NodeRecord>,
    dry_run: bool,
) -> Result<Registration> {
    let key = keys.node(name);
    for _ in 0..10 {
        let raw = read_raw(etcd, &key).await?;
        let previous = raw
            .as_ref()
            .and_then(|(v, _)| serde_json::from_slice::<NodeRecord>(v).ok());
        let record = make(previous.as_ref())?;
        if dry_run {
            return Ok(Registration { record, previous });
        }
        let value = to_json(&record, &format!("node record {key}"))?;
        if swap(etcd, &key, value, raw.map(|(_, rev)| rev)).await? {
            return Ok(Registration { record, previous });
        }
    }
    Err(NodePrepError::NodeRecord(format!(
        "node record {key} kept changing while node-prep wrote it; run node-prep again"
    )))
}

/// Sets a node's state, keeping every other field of its record as it is. Returns the
/// state it had before.
pub(crate) async fn set_state(
    etcd: &Etcd,
    keys: &Keys,
    name: &NodeName,
    state: NodeState,
) -> Result<NodeState> {
    let key = keys.node(name);
    for _ in 0..10 {
        let Some((raw, rev)) = read_raw(etcd, &key).await? else {
            return Err(NodePrepError::NodeRecord(format!(
                "there is no node '{name}' (no record at {key}); `cpi nodes` lists the nodes"
            )));
        };
        let unusable =
            |problem: &'static str, error: serde_json::Error| NodePrepError::NodeRecordUnusable {
                key: key.clone(),
                problem,
                error,
            };
        let mut doc: Value = serde_json::from_slice(&raw).map_err(|e| unusable("not JSON", e))?;
        let record: NodeRecord =
            serde_json::from_value(doc.clone()).map_err(|e| unusable("unreadable", e))?;
        if record.state == state {
            return Ok(state);
        }
        doc["state"] = serde_json::to_value(state)
            .map_err(|error| NodePrepError::EncodeState { state, error })?;
        if swap(etcd, &key, doc.to_string(), Some(rev)).await? {
            return Ok(record.state);
        }
    }
    Err(NodePrepError::NodeRecord(format!(
        "node record {key} kept changing; try again"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_time() {
        let c = host_capacity().unwrap();
        assert!(c.cpus >= 1 && c.memory_mib > 0);
        let t = crate::timestamp::Timestamp::now().to_string();
        assert!(t.ends_with('Z') && t.len() == 20, "{t}");
    }

    #[test]
    fn prep_time_alone_is_no_change() {
        let a: NodeRecord = serde_json::from_value(serde_json::json!({
            "name": "n1", "private_ip": "192.0.2.1", "docker_endpoint": "tcp://192.0.2.1:2376",
            "subnet": "10.1.1.0/24", "gateway": "10.1.1.1", "prepared_at": "2026-01-01T00:00:00Z"
        }))
        .unwrap();
        let mut b = a.clone();
        b.prepared_at = Some(crate::timestamp::Timestamp::from_text(
            "2026-02-01T00:00:00Z",
        ));
        assert!(!differs(&a, &b));
        b.mtu = 1450;
        assert!(differs(&a, &b));
    }
}
