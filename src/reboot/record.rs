//! What the reboot manager records about its node at `<prefix>/reboot/nodes/<name>`, so
//! that a manager killed at any step (or the host going down under it) carries on from
//! there, and what `cpi nodes` shows; and the operator's reboot request.

use std::collections::BTreeMap;

use etcd_client::{Compare, CompareOp, TxnOp};
use serde::{Deserialize, Serialize};

use crate::cloud::vm::inside::Inside;
use crate::node_name::NodeName;

use super::keys::RebootKeys;
use crate::cluster::{Etcd, IndexError};
use crate::ids::VmCid;

/// Where a node is in its reboot. No record: nothing is going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Phase {
    /// The slot is taken: cordon, then stop the node's VMs.
    Draining,
    /// The VMs are stopped; the host reboots (asked again if the boot does not change).
    Rebooting,
    /// The host is back (its boot id changed): the VMs must run again with their IPs and
    /// disks for the settle time before the node is uncordoned and the slot given back.
    Checking,
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Phase::Draining => "draining",
            Phase::Rebooting => "rebooting",
            Phase::Checking => "checking",
        })
    }
}

/// One VM as it was before the node was emptied: what the health gate expects back.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct VmSnapshot {
    pub(crate) cid: VmCid,
    /// Whether it ran (a stopped VM is not expected to run afterwards).
    pub(crate) running: bool,
    /// Network name -> IP address the container had.
    #[serde(default)]
    pub(crate) ips: BTreeMap<String, String>,
    /// Names of the Docker volumes it mounted (its ephemeral disk; the persistent disks of
    /// VMs made before disks attached live).
    #[serde(default)]
    pub(crate) volumes: Vec<String>,
    /// What its own processes saw: the store's disk and the agent (absent for a VM that
    /// did not run, or when nobody could look).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) inside: Option<Inside>,
}

/// The manager's record of one node's reboot.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RebootRecord {
    pub(crate) phase: Phase,
    /// When the current phase began (RFC 3339).
    pub(crate) since: String,
    /// When the reboot began (the slot was taken).
    pub(crate) started: String,
    /// Why the node reboots.
    pub(crate) why: String,
    /// The reboot group whose slot the node holds.
    pub(crate) group: String,
    /// The boot the reboot began in: a different boot id means the host rebooted.
    pub(crate) boot_id: String,
    /// The node was cordoned by an operator before: its cordon stays afterwards.
    pub(crate) operator_cordoned: bool,
    /// The VMs as they were before they were stopped (set once, before stopping any).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) vms: Option<Vec<VmSnapshot>>,
    /// Why the health gate does not pass yet, after the reboot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) health: Option<String>,
}

/// An operator's request to reboot a node (`cpi nodes reboot NAME`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub(crate) struct RebootRequest {
    pub(crate) since: String,
    pub(crate) why: String,
}

/// A value as read, with the revision a transaction compares.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Versioned<T> {
    pub(crate) value: T,
    pub(crate) mod_revision: i64,
}

/// Why a record could not be read or written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum RecordError {
    /// etcd failed or could not be reached.
    #[error(transparent)]
    Etcd(#[from] IndexError),
    /// A record is not a reboot record.
    #[error("{key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
}

/// The reboot records of one cluster.
#[derive(Clone)]
pub(crate) struct Records {
    etcd: Etcd,
    keys: RebootKeys,
}

impl Records {
    /// Records under `keys`.
    pub(crate) fn new(etcd: Etcd, keys: RebootKeys) -> Records {
        Records { etcd, keys }
    }

    /// The keys.
    pub(crate) fn keys(&self) -> &RebootKeys {
        &self.keys
    }

    async fn get<T: serde::de::DeserializeOwned>(
        &self,
        key: &str,
    ) -> Result<Option<Versioned<T>>, RecordError> {
        let resp = self
            .etcd
            .client()
            .get(key, None)
            .await
            .map_err(|e| RecordError::Etcd(self.etcd.error(&format!("reading {key}"), &e)))?;
        let Some(kv) = resp.kvs().first() else {
            return Ok(None);
        };
        let value = serde_json::from_slice(kv.value()).map_err(|e| RecordError::Corrupt {
            key: key.to_string(),
            reason: super::semaphore::cut(&e.to_string(), 200),
        })?;
        Ok(Some(Versioned {
            value,
            mod_revision: kv.mod_revision(),
        }))
    }

    /// Node `name`'s reboot record.
    pub(crate) async fn state(
        &self,
        name: &NodeName,
    ) -> Result<Option<Versioned<RebootRecord>>, RecordError> {
        self.get(&self.keys.node_state(name)).await
    }

    /// Every node's reboot record (node name, record or why it is unreadable).
    pub(crate) async fn states(
        &self,
    ) -> Result<Vec<(NodeName, Result<RebootRecord, serde_json::Error>)>, RecordError> {
        let found = self
            .under(&self.keys.node_states(), "reading reboot records")
            .await?;
        Ok(found
            .into_iter()
            .map(|(name, value)| (name, serde_json::from_slice(&value)))
            .collect())
    }

    /// The operator's request for node `name`.
    pub(crate) async fn request(
        &self,
        name: &NodeName,
    ) -> Result<Option<Versioned<RebootRequest>>, RecordError> {
        self.get(&self.keys.request(name)).await
    }

    /// The nodes with an operator's request recorded.
    pub(crate) async fn requested(&self) -> Result<Vec<NodeName>, RecordError> {
        let found = self
            .under(&self.keys.request(""), "reading reboot requests")
            .await?;
        Ok(found.into_iter().map(|(name, _)| name).collect())
    }

    /// The nodes named by the keys under `prefix` with their values, in one read. A key's
    /// name is read as found, like a record's (see `NodeName`).
    async fn under(
        &self,
        prefix: &str,
        during: &str,
    ) -> Result<Vec<(NodeName, Vec<u8>)>, RecordError> {
        let found = crate::cluster::index::under(&self.etcd, prefix, during).await?;
        Ok(found
            .iter()
            .map(|kv| {
                let key = String::from_utf8_lossy(kv.key());
                let name = NodeName::from_record(key.trim_start_matches(prefix));
                (name, kv.value().to_vec())
            })
            .collect())
    }

    /// Removes the operator's request for node `name`, if there is one.
    pub(crate) async fn withdraw_request(&self, name: &NodeName) -> Result<(), RecordError> {
        self.etcd
            .client()
            .delete(self.keys.request(name), None)
            .await
            .map_err(|e| self.etcd.error("removing the reboot request", &e))?;
        Ok(())
    }

    /// Deletes node `name`'s record if it is still at `mod_revision`; false otherwise.
    pub(crate) async fn forget(
        &self,
        name: &NodeName,
        mod_revision: i64,
    ) -> Result<bool, RecordError> {
        let txn = etcd_client::Txn::new()
            .when(vec![self.state_at(name, mod_revision)])
            .and_then(vec![TxnOp::delete(self.keys.node_state(name), None)]);
        let resp = self
            .etcd
            .client()
            .txn(txn)
            .await
            .map_err(|e| self.etcd.error("removing the reboot record", &e))?;
        Ok(resp.succeeded())
    }

    /// Records (or keeps) an operator's request; false when one was there already.
    pub(crate) async fn put_request(
        &self,
        name: &NodeName,
        request: &RebootRequest,
    ) -> Result<bool, RecordError> {
        let key = self.keys.request(name);
        let txn = etcd_client::Txn::new()
            .when(vec![Compare::create_revision(
                key.as_str(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.as_str(),
                serde_json::to_string(request).expect("a request serializes"),
                None,
            )]);
        let resp =
            self.etcd.client().txn(txn).await.map_err(|e| {
                RecordError::Etcd(self.etcd.error("recording the reboot request", &e))
            })?;
        Ok(resp.succeeded())
    }

    /// Replaces node `name`'s record if it is still at `mod_revision`; false otherwise.
    pub(crate) async fn replace(
        &self,
        name: &NodeName,
        mod_revision: i64,
        record: &RebootRecord,
    ) -> Result<bool, RecordError> {
        let key = self.keys.node_state(name);
        let txn = etcd_client::Txn::new()
            .when(vec![Compare::mod_revision(
                key.as_str(),
                CompareOp::Equal,
                mod_revision,
            )])
            .and_then(vec![self.put_state(name, record)]);
        let resp = self
            .etcd
            .client()
            .txn(txn)
            .await
            .map_err(|e| RecordError::Etcd(self.etcd.error("writing the reboot record", &e)))?;
        Ok(resp.succeeded())
    }

    /// The write of node `name`'s record, for a transaction.
    pub(crate) fn put_state(&self, name: &NodeName, record: &RebootRecord) -> TxnOp {
        TxnOp::put(
            self.keys.node_state(name),
            serde_json::to_string(record).expect("a record serializes"),
            None,
        )
    }

    /// The comparison that holds while node `name` has no record.
    pub(crate) fn no_state(&self, name: &NodeName) -> Compare {
        Compare::create_revision(self.keys.node_state(name), CompareOp::Equal, 0)
    }

    /// The comparison that holds while node `name`'s record is still at `mod_revision`.
    pub(crate) fn state_at(&self, name: &NodeName, mod_revision: i64) -> Compare {
        Compare::mod_revision(self.keys.node_state(name), CompareOp::Equal, mod_revision)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_round_trips_and_phases_read_as_words() {
        let r = RebootRecord {
            phase: Phase::Checking,
            since: "2026-01-01T00:00:00Z".into(),
            started: "2026-01-01T00:00:00Z".into(),
            why: "update engine: UPDATE_STATUS_UPDATED_NEED_REBOOT".into(),
            group: "default".into(),
            boot_id: "b1".into(),
            operator_cordoned: false,
            vms: Some(vec![VmSnapshot {
                cid: VmCid::generate(),
                running: true,
                ips: [("bosh".to_string(), "10.1.1.30".to_string())].into(),
                volumes: vec!["vm-1-ephemeral".into()],
                inside: Some(Inside {
                    store: Some("/var/lib/docker/volumes/disk-1/_data".into()),
                    agent: true,
                }),
            }]),
            health: Some("VM vm-1 is not running".into()),
        };
        let text = serde_json::to_string(&r).unwrap();
        assert!(text.contains(r#""phase":"checking""#), "{text}");
        assert_eq!(serde_json::from_str::<RebootRecord>(&text).unwrap(), r);
    }
}
