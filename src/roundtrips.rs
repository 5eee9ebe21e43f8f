//! Counts of the requests one process makes to etcd and to the nodes' Docker daemons, so
//! each CPI call can log what it cost (`round trips: etcd=5 docker=12` at debug level).
//! A CPI call is one process, so process-wide counters are the call's counters.

use std::sync::atomic::{AtomicU64, Ordering};

static ETCD: AtomicU64 = AtomicU64::new(0);
static DOCKER: AtomicU64 = AtomicU64::new(0);

/// Counts one etcd request (called where every request gets its client).
pub(crate) fn etcd() {
    ETCD.fetch_add(1, Ordering::Relaxed);
}

/// Counts one Docker API request (called by every node client's transport).
pub(crate) fn docker() {
    DOCKER.fetch_add(1, Ordering::Relaxed);
}

/// The requests counted so far: (etcd, docker).
pub(crate) fn totals() -> (u64, u64) {
    (ETCD.load(Ordering::Relaxed), DOCKER.load(Ordering::Relaxed))
}
