//! Where reboot coordination lives in etcd, below the cluster's key prefix. Kept apart
//! from `<prefix>/nodes/`: node-prep rewrites node records at every boot, and those
//! records must stay readable as records.

use super::group::Group;
use crate::cluster::Keys;

/// The reboot keys of one cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RebootKeys {
    prefix: String,
}

impl RebootKeys {
    /// The reboot keys under the cluster's `key_prefix`.
    pub fn new(keys: &Keys) -> RebootKeys {
        RebootKeys {
            prefix: format!("{}/reboot", keys.key_prefix),
        }
    }

    /// The semaphore of `group`: one JSON document with `max` and the holders.
    pub(crate) fn semaphore(&self, group: &Group) -> String {
        format!("{}/groups/{}/semaphore", self.prefix, group.as_str())
    }

    /// Prefix of every group's semaphore.
    pub(crate) fn groups(&self) -> String {
        format!("{}/groups/", self.prefix)
    }

    /// The reboot manager's state for node `name` (absent while nothing is going on).
    pub fn node_state(&self, name: &str) -> String {
        format!("{}/nodes/{name}", self.prefix)
    }

    /// Prefix of every node's reboot state.
    pub(crate) fn node_states(&self) -> String {
        format!("{}/nodes/", self.prefix)
    }

    /// The heartbeat of node `name`'s running manager, on a lease of a few seconds: gone
    /// soon after the manager dies.
    pub fn manager(&self, name: &str) -> String {
        format!("{}/managers/{name}", self.prefix)
    }

    /// Prefix of every running manager's heartbeat.
    pub(crate) fn managers(&self) -> String {
        format!("{}/managers/", self.prefix)
    }

    /// The last manager seen on node `name`, on a lease of weeks that the manager keeps
    /// alive with its heartbeat: the lease's remaining time tells how long ago it was
    /// last heard of.
    pub(crate) fn last_seen(&self, name: &str) -> String {
        format!("{}/last-seen/{name}", self.prefix)
    }

    /// Prefix of every node's last seen manager.
    pub(crate) fn last_seens(&self) -> String {
        format!("{}/last-seen/", self.prefix)
    }

    /// An operator's request to reboot node `name` (`cpi nodes reboot NAME`).
    pub(crate) fn request(&self, name: &str) -> String {
        format!("{}/requests/{name}", self.prefix)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_sit_below_the_prefix_and_outside_the_node_records() {
        let k = RebootKeys::new(&Keys::with_prefixes("/mc", "/coreos.com/network"));
        let g = Group::parse("default").unwrap();
        assert_eq!(k.semaphore(&g), "/mc/reboot/groups/default/semaphore");
        assert_eq!(k.node_state("n1"), "/mc/reboot/nodes/n1");
        assert_eq!(k.request("n1"), "/mc/reboot/requests/n1");
        assert_eq!(k.manager("n1"), "/mc/reboot/managers/n1");
        assert_eq!(k.last_seen("n1"), "/mc/reboot/last-seen/n1");
        assert!(!k.last_seen("n1").starts_with(&k.managers()));
        assert!(
            !k.node_state("n1")
                .starts_with(&Keys::with_prefixes("/mc", "").nodes())
        );
    }
}
