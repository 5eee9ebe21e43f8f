//! The reboot manager's heartbeat in etcd, so that `cpi nodes` can tell a reboot that
//! moves on from one whose manager is gone.
//!
//! A running manager keeps two keys, both holding [`ManagerInfo`]:
//! - `<prefix>/reboot/managers/<node>` on a lease of [`ALIVE_TTL`] seconds: it vanishes
//!   at most that long after the manager dies, and at once when it stops cleanly;
//! - `<prefix>/reboot/last-seen/<node>` on a lease of [`SEEN_TTL`] (weeks), kept alive by
//!   the same heartbeat: once the manager is gone, the lease's granted minus remaining
//!   time is how long ago it was last heard of. No periodic writes are made (a lease
//!   keep-alive is not a revision), so etcd's history does not grow with the heartbeat.
//!   etcd starts a lease's countdown again when it restarts (unless lease checkpoints
//!   are on), so that time is a lower bound.
//!
//! A manager whose lease is lost (an etcd outage longer than [`ALIVE_TTL`]) grants a new
//! one and writes its heartbeat again; it keeps running meanwhile.

use crate::node_name::NodeName;
use crate::timestamp::Timestamp;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use etcd_client::{PutOptions, Txn, TxnOp};
use serde::{Deserialize, Serialize};

use super::error::{HeartbeatLost, RenewError};
use super::keys::RebootKeys;
use crate::cluster::{Etcd, IndexError};

/// Seconds a dead manager's heartbeat outlives it.
pub(crate) const ALIVE_TTL: i64 = 15;
/// Seconds the last seen record outlives its manager (30 days).
pub(crate) const SEEN_TTL: i64 = 30 * 24 * 3600;
/// How often the leases are kept alive.
const BEAT: Duration = Duration::from_secs(ALIVE_TTL as u64 / 3);
/// How soon an interrupted keep-alive is restored.
const RETRY: Duration = Duration::from_millis(500);

/// Who the manager of a node is, as its heartbeat says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct ManagerInfo {
    pub(crate) node: NodeName,
    /// The boot the manager started in.
    pub(crate) boot_id: String,
    pub(crate) pid: u32,
    /// When it started (RFC 3339).
    pub(crate) started_at: String,
    /// The `cpi` version it runs.
    pub(crate) version: String,
    /// When it stopped on a signal (RFC 3339); absent while it runs or when it died.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) stopped_at: Option<String>,
}

/// What is known of a node's manager.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
pub(crate) enum ManagerStatus {
    /// Its heartbeat is there.
    Up { manager: ManagerInfo },
    /// No heartbeat: it died (or lost etcd); it was last heard of that many seconds ago
    /// (its death came up to one keep-alive period later).
    Gone {
        last_seen_seconds_ago: u64,
        manager: ManagerInfo,
    },
    /// No heartbeat: it stopped on a signal; last heard of that many seconds ago.
    Stopped {
        last_seen_seconds_ago: u64,
        manager: ManagerInfo,
    },
    /// The node has a reboot under way or asked for, and no manager was heard of in the
    /// last [`SEEN_TTL`] seconds.
    NotSeen,
}

/// The leases a heartbeat holds.
#[derive(Debug, Clone, Copy)]
struct Leases {
    alive: i64,
    seen: i64,
}

/// A running heartbeat; [`Heartbeat::stop`] takes it down on a clean stop.
pub(crate) struct Heartbeat {
    etcd: Etcd,
    keys: RebootKeys,
    info: ManagerInfo,
    leases: Arc<Mutex<Option<Leases>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Heartbeat {
    /// Starts beating in the background for `info.node`; failures are logged and retried.
    pub(crate) fn start(etcd: Etcd, keys: RebootKeys, info: ManagerInfo) -> Heartbeat {
        let leases = Arc::new(Mutex::new(None));
        let task = tokio::spawn(beat(
            etcd.clone(),
            keys.clone(),
            info.clone(),
            leases.clone(),
        ));
        Heartbeat {
            etcd,
            keys,
            info,
            leases,
            task,
        }
    }

    /// Records the stop in the last seen record and revokes the heartbeat's lease.
    pub(crate) async fn stop(self) {
        self.task.abort();
        let leases = *self.leases.lock().unwrap_or_else(|e| e.into_inner());
        let Some(leases) = leases else { return };
        let mut info = self.info.clone();
        info.stopped_at = Some(Timestamp::now().to_string());
        let client = self.etcd.client();
        let _ = client
            .put(
                self.keys.last_seen(&info.node),
                serde_json::to_string(&info).expect("manager info serializes"),
                Some(PutOptions::new().with_lease(leases.seen)),
            )
            .await;
        // Its countdown starts now: "stopped ... ago" counts from the stop.
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(leases.seen).await
            && keeper.keep_alive().await.is_ok()
        {
            let _ = tokio::time::timeout(BEAT, stream.message()).await;
        }
        let _ = client.lease_revoke(leases.alive).await;
    }
}

async fn beat(etcd: Etcd, keys: RebootKeys, info: ManagerInfo, shared: Arc<Mutex<Option<Leases>>>) {
    let key = keys.manager(&info.node);
    let mut held: Option<Leases> = None;
    loop {
        let leases = match held {
            // A keep-alive stream that failed (its etcd member went, say) while the
            // heartbeat stands is opened again without writing anything.
            Some(l) if still_held(&etcd, &key, l).await => Ok(l),
            _ => establish(&etcd, &keys, &info, held.map(|l| l.seen)).await,
        };
        match leases {
            Ok(leases) => {
                match held {
                    None => {
                        tracing::info!(node = %info.node, lease = leases.alive, "heartbeat written")
                    }
                    Some(h) if h.alive != leases.alive => tracing::warn!(node = %info.node,
                        lease = leases.alive, "heartbeat was lost; written again on a new lease"),
                    Some(_) => {}
                }
                held = Some(leases);
                *shared.lock().unwrap_or_else(|e| e.into_inner()) = Some(leases);
                let why = keep_alive(&etcd, &key, leases).await;
                tracing::info!(node = %info.node, why = %why, "heartbeat keep-alive interrupted; restoring it");
                // Soon: the lease may have only a few seconds left.
                tokio::time::sleep(RETRY).await;
            }
            Err(e) => {
                tracing::warn!(node = %info.node, error = %e, "cannot write the heartbeat; trying again");
                tokio::time::sleep(BEAT).await;
            }
        }
    }
}

/// Whether the heartbeat at `key` still stands on `leases`, both alive.
async fn still_held(etcd: &Etcd, key: &str, leases: Leases) -> bool {
    let keys_only = Some(etcd_client::GetOptions::new().with_keys_only());
    let on_lease = etcd
        .client()
        .get(key, keys_only)
        .await
        .is_ok_and(|r| r.kvs().first().is_some_and(|kv| kv.lease() == leases.alive));
    on_lease && lease_alive(etcd, leases.alive).await && lease_alive(etcd, leases.seen).await
}

/// Whether lease `id` is still alive.
async fn lease_alive(etcd: &Etcd, id: i64) -> bool {
    let answer = etcd.client().lease_time_to_live(id, None).await;
    answer.is_ok_and(|r| r.ttl() > 0)
}

/// Grants a heartbeat lease and writes both keys; the last seen lease is reused when it
/// lives (this process's, else the one a previous manager left), so none is left over.
async fn establish(
    etcd: &Etcd,
    keys: &RebootKeys,
    info: &ManagerInfo,
    seen: Option<i64>,
) -> Result<Leases, IndexError> {
    let err = |what: &str, e: &etcd_client::Error| etcd.error(what, e);
    let client = etcd.client();
    let seen_key = keys.last_seen(&info.node);
    // First the lease that expires by itself, should a later step fail.
    let alive = client
        .lease_grant(ALIVE_TTL, None)
        .await
        .map_err(|e| err("granting the heartbeat lease", &e))?
        .id();
    let candidate = match seen {
        Some(id) => Some(id),
        None => client
            .get(seen_key.as_str(), None)
            .await
            .map_err(|e| err("reading the last seen manager", &e))?
            .kvs()
            .first()
            .map(|kv| kv.lease())
            .filter(|id| *id != 0),
    };
    let (seen, granted) = match candidate {
        Some(id) if lease_alive(etcd, id).await => (id, false),
        _ => {
            let id = client
                .lease_grant(SEEN_TTL, None)
                .await
                .map_err(|e| err("granting the last seen lease", &e))?
                .id();
            (id, true)
        }
    };
    let value = serde_json::to_string(info).expect("manager info serializes");
    let txn = Txn::new().and_then(vec![
        TxnOp::put(
            keys.manager(&info.node),
            value.as_str(),
            Some(PutOptions::new().with_lease(alive)),
        ),
        TxnOp::put(
            seen_key,
            value.as_str(),
            Some(PutOptions::new().with_lease(seen)),
        ),
    ]);
    if let Err(e) = client.txn(txn).await {
        // Not left over for weeks (the heartbeat lease expires by itself).
        if granted {
            let _ = client.lease_revoke(seen).await;
        }
        return Err(err("writing the heartbeat", &e));
    }
    Ok(Leases { alive, seen })
}

/// Keeps both leases alive every [`BEAT`] while the heartbeat at `key` is there; returns
/// why it could not.
async fn keep_alive(etcd: &Etcd, key: &str, leases: Leases) -> HeartbeatLost {
    let client = etcd.client();
    let mut streams = Vec::new();
    for id in [leases.alive, leases.seen] {
        match client.lease_keep_alive(id).await {
            Ok(s) => streams.push((id, s)),
            Err(source) => return HeartbeatLost::NoKeepAlive { id, source },
        }
    }
    let mut shared_warned = false;
    loop {
        tokio::time::sleep(BEAT).await;
        for (id, (keeper, stream)) in &mut streams {
            match tokio::time::timeout(BEAT, renew(keeper, stream)).await {
                Ok(Ok(())) => {}
                Ok(Err(source)) => return HeartbeatLost::Renew { id: *id, source },
                Err(_) => return HeartbeatLost::RenewTimeout { id: *id },
            }
        }
        // A read (no revision): the heartbeat may have been deleted by hand.
        let keys_only = Some(etcd_client::GetOptions::new().with_keys_only());
        match tokio::time::timeout(BEAT, client.get(key, keys_only)).await {
            Err(_) => return HeartbeatLost::ReadTimeout { key: key.into() },
            Ok(Err(source)) => {
                return HeartbeatLost::Read {
                    key: key.into(),
                    source,
                };
            }
            Ok(Ok(r)) => match r.kvs().first().map(|kv| kv.lease()) {
                None => return HeartbeatLost::Deleted { key: key.into() },
                Some(l) if l != leases.alive && !shared_warned => {
                    shared_warned = true;
                    tracing::warn!(
                        key,
                        "another reboot manager of this node writes its heartbeat too"
                    );
                }
                Some(_) => {}
            },
        }
    }
}

/// One keep-alive of one lease.
async fn renew(
    keeper: &mut etcd_client::LeaseKeeper,
    stream: &mut etcd_client::LeaseKeepAliveStream,
) -> Result<(), RenewError> {
    keeper.keep_alive().await?;
    match stream.message().await? {
        Some(r) if r.ttl() > 0 => Ok(()),
        Some(_) => Err(RenewError::Expired),
        None => Err(RenewError::Closed),
    }
}

/// What is known of each node's manager (nodes with neither a heartbeat nor a last seen
/// record are left out).
pub(crate) async fn statuses(
    etcd: &Etcd,
    keys: &RebootKeys,
) -> Result<BTreeMap<NodeName, ManagerStatus>, IndexError> {
    let client = etcd.client();
    let prefixed = || Some(etcd_client::GetOptions::new().with_prefix());
    let mut out = BTreeMap::new();
    let up = client
        .get(keys.managers(), prefixed())
        .await
        .map_err(|e| etcd.error("reading the reboot managers' heartbeats", &e))?;
    for kv in up.kvs() {
        if let Ok(manager) = serde_json::from_slice::<ManagerInfo>(kv.value()) {
            out.insert(manager.node.clone(), ManagerStatus::Up { manager });
        }
    }
    let seen = client
        .get(keys.last_seens(), prefixed())
        .await
        .map_err(|e| etcd.error("reading the last seen reboot managers", &e))?;
    for kv in seen.kvs() {
        let Ok(manager) = serde_json::from_slice::<ManagerInfo>(kv.value()) else {
            continue;
        };
        if out.contains_key(&manager.node) || kv.lease() == 0 {
            continue;
        }
        let Ok(ttl) = client.lease_time_to_live(kv.lease(), None).await else {
            continue;
        };
        if ttl.ttl() <= 0 {
            continue;
        }
        let seconds = u64::try_from(ttl.granted_ttl() - ttl.ttl()).unwrap_or(0);
        let node = manager.node.clone();
        let status = if manager.stopped_at.is_some() {
            ManagerStatus::Stopped {
                last_seen_seconds_ago: seconds,
                manager,
            }
        } else {
            ManagerStatus::Gone {
                last_seen_seconds_ago: seconds,
                manager,
            }
        };
        out.insert(node, status);
    }
    Ok(out)
}

/// A span of seconds as an operator reads it: `45s`, `2m 10s`, `3h 4m`, `2d 3h`.
pub(crate) fn span(seconds: u64) -> String {
    let (d, h, m, s) = (
        seconds / 86400,
        seconds / 3600 % 24,
        seconds / 60 % 60,
        seconds % 60,
    );
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m {s}s"),
        (0, _, _) => format!("{h}h {m}m"),
        _ => format!("{d}d {h}h"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_read_as_the_two_largest_units() {
        assert_eq!(span(0), "0s");
        assert_eq!(span(45), "45s");
        assert_eq!(span(130), "2m 10s");
        assert_eq!(span(3600 * 3 + 240 + 5), "3h 4m");
        assert_eq!(span(86400 * 2 + 3600 * 3 + 1), "2d 3h");
    }

    #[test]
    fn manager_status_reads_as_state_and_fields() {
        let manager = ManagerInfo {
            node: "n1".into(),
            boot_id: "b1".into(),
            pid: 42,
            started_at: "2026-01-01T00:00:00Z".into(),
            version: "0.1.0".into(),
            stopped_at: None,
        };
        let text = serde_json::to_value(ManagerStatus::Gone {
            last_seen_seconds_ago: 130,
            manager: manager.clone(),
        })
        .unwrap();
        assert_eq!(text["state"], "gone");
        assert_eq!(text["last_seen_seconds_ago"], 130);
        assert_eq!(text["manager"]["pid"], 42);
        assert!(text["manager"].get("stopped_at").is_none());
        let text = serde_json::to_value(ManagerStatus::NotSeen).unwrap();
        assert_eq!(text, serde_json::json!({"state": "not_seen"}));
        let back: ManagerInfo =
            serde_json::from_str(&serde_json::to_string(&manager).unwrap()).unwrap();
        assert_eq!(back, manager);
    }
}
