//! What `cpi nodes` shows of the reboots, read from etcd: every node's reboot record, the
//! operator's requests not started yet, every group's semaphore and what each node's
//! manager's heartbeat says. Records that cannot be decoded are named, not fatal.

use std::collections::BTreeMap;

use serde::Serialize;

use super::heartbeat::{self, ManagerStatus};
use super::keys::RebootKeys;
use super::record::{RebootRecord, RecordError, Records};
use super::semaphore::{Group, Holder, SemaphoreDoc};
use crate::cluster::Etcd;
use crate::node_name::NodeName;

/// One group's semaphore, as the listing shows it.
#[derive(Debug, Serialize)]
pub(crate) struct GroupStatus {
    pub(crate) group: String,
    pub(crate) max_unavailable: u32,
    pub(crate) holders: Vec<Holder>,
}

/// The reboot part of the listing.
#[derive(Debug, Default, Serialize)]
pub(crate) struct RebootOverview {
    /// Node name -> its reboot record.
    pub(crate) nodes: Vec<(NodeName, RebootRecord)>,
    /// Nodes an operator asked to reboot that have not started yet.
    pub(crate) requested: Vec<NodeName>,
    pub(crate) groups: Vec<GroupStatus>,
    /// Records that could not be read.
    pub(crate) problems: Vec<String>,
    /// Node name -> what its manager's heartbeat says (nodes never heard of left out).
    pub(crate) managers: BTreeMap<NodeName, ManagerStatus>,
}

impl RebootOverview {
    /// The record of node `name`, if it is rebooting.
    pub(crate) fn of(&self, name: &NodeName) -> Option<&RebootRecord> {
        self.nodes.iter().find(|(n, _)| n == name).map(|(_, r)| r)
    }

    /// What is known of node `name`'s manager; [`ManagerStatus::NotSeen`] for a node with
    /// a reboot under way or asked for and no manager heard of.
    pub(crate) fn manager(&self, name: &NodeName) -> Option<ManagerStatus> {
        match self.managers.get(name) {
            Some(status) => Some(status.clone()),
            None if self.of(name).is_some() || self.requested.iter().any(|n| n == name) => {
                Some(ManagerStatus::NotSeen)
            }
            None => None,
        }
    }
}

/// Reads every reboot record, request, semaphore and heartbeat under `keys`.
pub(crate) async fn read(etcd: &Etcd, keys: &RebootKeys) -> Result<RebootOverview, RecordError> {
    let mut out = RebootOverview {
        managers: heartbeat::statuses(etcd, keys).await?,
        ..Default::default()
    };
    let records = Records::new(etcd.clone(), keys.clone());
    for (name, rec) in records.states().await? {
        match rec {
            Ok(r) => out.nodes.push((name, r)),
            Err(e) => out
                .problems
                .push(format!("reboot record of {name} is unreadable: {e}")),
        }
    }
    read_groups(etcd, keys, &mut out).await?;
    for name in records.requested().await? {
        if out.of(&name).is_none() {
            out.requested.push(name);
        }
    }
    Ok(out)
}

/// Every group's semaphore into `out.groups` (the default group first when it has no
/// document yet), each unreadable one into `out.problems`.
async fn read_groups(
    etcd: &Etcd,
    keys: &RebootKeys,
    out: &mut RebootOverview,
) -> Result<(), RecordError> {
    let found =
        crate::cluster::index::under(etcd, &keys.groups(), "reading the reboot semaphores").await?;
    for kv in &found {
        let key = String::from_utf8_lossy(kv.key()).to_string();
        let group = key
            .trim_start_matches(keys.groups().as_str())
            .trim_end_matches("/semaphore")
            .to_string();
        match serde_json::from_slice::<SemaphoreDoc>(kv.value()) {
            Ok(doc) => out.groups.push(GroupStatus {
                group,
                max_unavailable: doc.max,
                holders: doc.holders,
            }),
            Err(e) => out
                .problems
                .push(format!("reboot semaphore {key} is unreadable: {e}")),
        }
    }
    let default = Group::default_group();
    if !out.groups.iter().any(|g| g.group == default.as_str()) {
        let d = SemaphoreDoc::default();
        out.groups.insert(
            0,
            GroupStatus {
                group: default.to_string(),
                max_unavailable: d.max,
                holders: d.holders,
            },
        );
    }
    Ok(())
}
