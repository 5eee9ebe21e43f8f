//! The reboot semaphore: a counting semaphore per reboot group, kept as one JSON document
//! in etcd v3 (`{"max": 1, "holders": [...]}`) and changed only by transactions that
//! compare the document's revision, so two takers can never both get the last slot.
//! Reboot managers and FleetLock clients share it: a holder is known by its id.

use crate::node_name::NodeName;
use etcd_client::{Compare, CompareOp, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::keys::RebootKeys;
use crate::cluster::Etcd;

/// Most attempts at one change while others keep changing the document.
const ATTEMPTS: usize = 20;

pub(crate) use super::error::SemaphoreError;
pub use super::group::Group;

/// `s` cut to at most `max` characters, marked when cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        format!("{}...", s.chars().take(max).collect::<String>())
    }
}

/// Who holds a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HolderKind {
    /// A MoltenCore node's reboot manager.
    Node,
    /// A FleetLock client (Zincati, airlock-style setups) through `cpi fleetlock`.
    Fleetlock,
}

/// One slot holder.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Holder {
    /// The holder's identity: a node name, or a FleetLock client id.
    pub id: String,
    /// Whether a node or a FleetLock client holds the slot.
    pub kind: HolderKind,
    /// The node's name, when a node holds the slot.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeName>,
    /// The boot the slot was taken in: after a reboot the node knows the hold is its own
    /// and that the reboot happened.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_id: Option<String>,
    /// When the slot was taken (RFC 3339).
    pub since: String,
    /// Why the holder reboots.
    pub why: String,
}

/// A group's semaphore document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SemaphoreDoc {
    /// How many holders at once (`max_unavailable`).
    #[serde(default = "default_max")]
    pub max: u32,
    /// Who holds a slot now.
    #[serde(default)]
    pub holders: Vec<Holder>,
}

fn default_max() -> u32 {
    1
}

impl Default for SemaphoreDoc {
    fn default() -> Self {
        SemaphoreDoc {
            max: default_max(),
            holders: Vec::new(),
        }
    }
}

/// The outcome of asking for a slot.
#[derive(Debug, Clone, PartialEq)]
pub enum Take {
    /// The slot is now the holder's.
    Taken,
    /// The holder had it already (FleetLock's locks are recursive).
    AlreadyHeld(Holder),
    /// Every slot is taken: the holders, for the message.
    Full(Vec<Holder>),
}

impl SemaphoreDoc {
    /// The holder with `id`, if it holds a slot.
    pub(crate) fn holder(&self, id: &str) -> Option<&Holder> {
        self.holders.iter().find(|h| h.id == id)
    }

    /// Gives `holder` a slot when one is free (or it holds one already).
    pub(crate) fn take(&mut self, holder: Holder) -> Take {
        if let Some(h) = self.holder(&holder.id) {
            return Take::AlreadyHeld(h.clone());
        }
        if self.holders.len() >= self.max as usize {
            return Take::Full(self.holders.clone());
        }
        self.holders.push(holder);
        Take::Taken
    }

    /// Frees the slot of `id`; the holder when it held one.
    pub(crate) fn give_back(&mut self, id: &str) -> Option<Holder> {
        let at = self.holders.iter().position(|h| h.id == id)?;
        Some(self.holders.remove(at))
    }
}

/// The document as read, with the revision the transaction that changes it compares.
#[derive(Debug, Clone, PartialEq)]
pub struct Stored {
    /// The document (defaults when the key is absent).
    pub doc: SemaphoreDoc,
    /// The key's mod revision; `None` while the key does not exist (defaults apply).
    pub mod_revision: Option<i64>,
}

/// One group's semaphore in etcd.
#[derive(Clone)]
pub struct Semaphore {
    etcd: Etcd,
    key: String,
    group: Group,
}

impl Semaphore {
    /// The semaphore of `group` under the cluster's reboot keys.
    pub fn new(etcd: Etcd, keys: &RebootKeys, group: Group) -> Semaphore {
        Semaphore {
            etcd,
            key: keys.semaphore(&group),
            group,
        }
    }

    /// The group.
    pub(crate) fn group(&self) -> &Group {
        &self.group
    }

    /// Reads the document (defaults when absent).
    pub async fn read(&self) -> Result<Stored, SemaphoreError> {
        let resp = self
            .etcd
            .client()
            .get(self.key.as_str(), None)
            .await
            .map_err(|e| self.etcd_error("reading the reboot semaphore", &e))?;
        match resp.kvs().first() {
            None => Ok(Stored {
                doc: SemaphoreDoc::default(),
                mod_revision: None,
            }),
            Some(kv) => {
                let doc =
                    serde_json::from_slice(kv.value()).map_err(|e| SemaphoreError::Corrupt {
                        key: self.key.clone(),
                        reason: cut(&e.to_string(), 200),
                    })?;
                Ok(Stored {
                    doc,
                    mod_revision: Some(kv.mod_revision()),
                })
            }
        }
    }

    /// The comparison that holds while the document is still as `stored` was read.
    pub(crate) fn unchanged(&self, stored: &Stored) -> Compare {
        match stored.mod_revision {
            Some(rev) => Compare::mod_revision(self.key.as_str(), CompareOp::Equal, rev),
            None => Compare::create_revision(self.key.as_str(), CompareOp::Equal, 0),
        }
    }

    /// The write of `doc`.
    pub(crate) fn put(&self, doc: &SemaphoreDoc) -> TxnOp {
        let value = serde_json::to_string(doc).expect("a semaphore document serializes");
        TxnOp::put(self.key.as_str(), value, None)
    }

    /// Writes `doc` in one transaction with `ops`, if the document and everything `compares`
    /// checks are still as read; false when something changed in between.
    pub(crate) async fn commit(
        &self,
        stored: &Stored,
        doc: &SemaphoreDoc,
        mut compares: Vec<Compare>,
        mut ops: Vec<TxnOp>,
    ) -> Result<bool, SemaphoreError> {
        compares.push(self.unchanged(stored));
        ops.push(self.put(doc));
        let txn = Txn::new().when(compares).and_then(ops);
        let resp = self
            .etcd
            .client()
            .txn(txn)
            .await
            .map_err(|e| self.etcd_error("changing the reboot semaphore", &e))?;
        Ok(resp.succeeded())
    }

    /// Applies `change` to the document and writes it, retrying from a fresh read when it
    /// changed in between; `change` says what it did and whether to write at all.
    pub(crate) async fn update<R>(
        &self,
        mut change: impl FnMut(&mut SemaphoreDoc) -> (R, bool),
    ) -> Result<R, SemaphoreError> {
        for _ in 0..ATTEMPTS {
            let stored = self.read().await?;
            let mut doc = stored.doc.clone();
            let (outcome, write) = change(&mut doc);
            if !write || self.commit(&stored, &doc, vec![], vec![]).await? {
                return Ok(outcome);
            }
        }
        Err(SemaphoreError::Busy {
            key: self.key.clone(),
        })
    }

    /// Asks for a slot for `holder`.
    pub async fn take(&self, holder: Holder) -> Result<Take, SemaphoreError> {
        self.update(|doc| {
            let outcome = doc.take(holder.clone());
            let write = outcome == Take::Taken;
            (outcome, write)
        })
        .await
    }

    /// Frees the slot of `id`, if held; the holder it was.
    pub async fn give_back(&self, id: &str) -> Result<Option<Holder>, SemaphoreError> {
        self.update(|doc| {
            let was = doc.give_back(id);
            let write = was.is_some();
            (was, write)
        })
        .await
    }

    /// Sets `max`; the value before.
    pub async fn set_max(&self, max: u32) -> Result<u32, SemaphoreError> {
        self.update(|doc| {
            let before = doc.max;
            doc.max = max;
            (before, before != max)
        })
        .await
    }

    fn etcd_error(&self, what: &str, e: &etcd_client::Error) -> SemaphoreError {
        SemaphoreError::Etcd(self.etcd.error(what, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn holder(id: &str) -> Holder {
        Holder {
            id: id.into(),
            kind: HolderKind::Fleetlock,
            node: None,
            boot_id: None,
            since: "2026-01-01T00:00:00Z".into(),
            why: "test".into(),
        }
    }

    #[test]
    fn slots_are_counted_recursive_and_owned() {
        let mut doc = SemaphoreDoc::default();
        assert_eq!(doc.take(holder("a")), Take::Taken);
        assert!(matches!(doc.take(holder("a")), Take::AlreadyHeld(h) if h.id == "a"));
        assert!(matches!(doc.take(holder("b")), Take::Full(hs) if hs.len() == 1));
        assert_eq!(doc.give_back("b"), None);
        assert_eq!(doc.give_back("a").map(|h| h.id), Some("a".into()));
        assert_eq!(doc.take(holder("b")), Take::Taken);
        doc.max = 2;
        assert_eq!(doc.take(holder("c")), Take::Taken);
        assert!(matches!(doc.take(holder("d")), Take::Full(_)));
    }

    #[test]
    fn a_document_without_max_allows_one() {
        let doc: SemaphoreDoc = serde_json::from_str("{}").unwrap();
        assert_eq!(doc.max, 1);
        assert!(doc.holders.is_empty());
    }

    #[test]
    fn group_names_follow_fleetlock() {
        assert_eq!(Group::parse("workers-1.a").unwrap().as_str(), "workers-1.a");
        for bad in ["", "a b", "a/b", "ä", &"x".repeat(65)] {
            let e = Group::parse(bad).unwrap_err();
            assert!(matches!(e, SemaphoreError::BadGroup(_)), "{bad}");
        }
        let long = Group::parse(&"y".repeat(500)).unwrap_err().to_string();
        assert!(long.len() < 200, "{long}");
    }
}
