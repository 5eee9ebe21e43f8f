//! The members of the cluster's etcd (one per node, as on Flatcar) and the faults the
//! harness plays on them: a member killed or started (`ci/cluster etcd K kill|start`),
//! cut from its peers by its node's iptables (`partition`, `heal`). The leader and the
//! members' health come from etcdctl, the operator's own view.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::cluster::{cluster, load_config, runtime};
use crate::index::etcd;
use crate::reboots::harness;
use crate::wait::wait_until;

/// The client endpoints of the members, in member order (member k is on node k).
pub fn member_endpoints() -> Vec<String> {
    cluster()["etcd"]["members"]
        .as_array()
        .expect("cluster.json lists the etcd members")
        .iter()
        .map(|m| {
            m["endpoint"]
                .as_str()
                .expect("a member's endpoint")
                .to_string()
        })
        .collect()
}

/// `etcdctl ARGS` against `endpoints` with the cluster's client certificate; its stdout.
fn etcdctl(endpoints: &[String], args: &[&str]) -> Result<String, String> {
    let c = cluster();
    let file = |k: &str| c["etcd"][k].as_str().expect("etcd TLS file").to_string();
    let out = Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--dial-timeout", "2s", "--command-timeout", "3s"])
        .arg(format!("--endpoints={}", endpoints.join(",")))
        .arg(format!("--cacert={}", file("ca_cert_file")))
        .arg(format!("--cert={}", file("client_cert_file")))
        .arg(format!("--key={}", file("client_key_file")))
        .args(args)
        .output()
        .expect("run etcdctl (ci/install-deps installs it)");
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// The leader as member number (1-based), when every member that answers agrees on one.
pub fn leader() -> Option<usize> {
    let endpoints = member_endpoints();
    let text = etcdctl(&endpoints, &["endpoint", "status", "-w", "json"]).ok()?;
    let statuses: Vec<Value> = serde_json::from_str(&text).ok()?;
    let leaders: BTreeSet<u64> = statuses
        .iter()
        .filter_map(|s| s["Status"]["leader"].as_u64())
        .collect();
    let [leader] = leaders.into_iter().collect::<Vec<_>>()[..] else {
        return None;
    };
    let endpoint = statuses
        .iter()
        .find(|s| s["Status"]["header"]["member_id"].as_u64() == Some(leader))?["Endpoint"]
        .as_str()?
        .to_string();
    endpoints.iter().position(|e| *e == endpoint).map(|i| i + 1)
}

/// Waits until every member answers healthy and they agree on a leader; its number.
pub fn wait_all_healthy(limit: Duration) -> usize {
    let mut found = None;
    wait_until(
        "every etcd member healthy with one leader",
        limit,
        Duration::from_millis(200),
        || {
            found = etcdctl(&member_endpoints(), &["endpoint", "health"])
                .ok()
                .and_then(|_| leader());
            found.is_some()
        },
    );
    found.expect("a leader")
}

/// Plays `action` (`kill`, `stop`, `start`, `partition`, `heal`) on member `k` (1-based).
pub fn member(k: usize, action: &str) {
    harness(&["etcd", &k.to_string(), action]);
}

/// Every key under `config`'s prefix: what a test made and did not remove shows here.
pub fn index_keys(config: &Path) -> BTreeSet<String> {
    let prefix = format!("{}/", load_config(config).etcd.key_prefix);
    runtime().block_on(async {
        etcd(config)
            .await
            .client()
            .get(
                prefix,
                Some(
                    etcd_client::GetOptions::new()
                        .with_prefix()
                        .with_keys_only(),
                ),
            )
            .await
            .expect("listing the index")
            .kvs()
            .iter()
            .map(|kv| String::from_utf8_lossy(kv.key()).into_owned())
            .collect()
    })
}
