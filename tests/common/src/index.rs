//! Reads and writes of the etcd index, under the key prefix of a given cpi.json: the shared
//! cluster's ([`crate::cluster::cluster_config`]) or a private one
//! ([`crate::cluster::private_config`]), so one helper serves both.

use std::path::Path;

use moltencore::cluster::Keys;
use moltencore::reboot::keys::RebootKeys;
use serde_json::Value;

use crate::cluster::{load_config, runtime};

/// A client of the cluster's etcd, as the CPI connects with `config`.
pub async fn etcd(config: &Path) -> moltencore::cluster::Etcd {
    moltencore::cluster::Etcd::connect(&load_config(config))
        .await
        .unwrap_or_else(|e| panic!("connecting to etcd with {}: {e}", config.display()))
}

/// The full key of `suffix` under `config`'s prefix.
fn key(config: &Path, suffix: &str) -> String {
    format!("{}/{suffix}", load_config(config).etcd.key_prefix)
}

/// The cluster's etcd keys under `config`'s prefixes, as the CPI derives them.
pub fn keys_of(config: &Path) -> Keys {
    Keys::new(&load_config(config).etcd)
}

/// The reboot coordination's etcd keys under `config`'s prefix, as the CPI derives them.
pub fn reboot_keys_of(config: &Path) -> RebootKeys {
    RebootKeys::new(&keys_of(config))
}

/// One index record (JSON) at `<key_prefix>/<suffix>` of the config's prefix.
pub fn index_record(config: &Path, suffix: &str) -> Option<Value> {
    record_at(config, key(config, suffix))
}

/// The JSON record at the full key `key`, if any.
fn record_at(config: &Path, key: String) -> Option<Value> {
    runtime().block_on(async {
        let resp = etcd(config).await.client().get(key, None).await.unwrap();
        resp.kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).unwrap())
    })
}

/// Every record below `<key_prefix>/<dir>/`, as (full key, JSON); a value that is no
/// JSON fails the test.
pub fn index_records_under(config: &Path, dir: &str) -> Vec<(String, Value)> {
    raw_records_under(config, dir)
        .into_iter()
        .map(|(k, v)| {
            let value = serde_json::from_slice(&v).unwrap_or_else(|e| panic!("{k}: {e}"));
            (k, value)
        })
        .collect()
}

/// Every value below `<key_prefix>/<dir>/`, as (full key, bytes).
fn raw_records_under(config: &Path, dir: &str) -> Vec<(String, Vec<u8>)> {
    runtime().block_on(async {
        let resp = etcd(config)
            .await
            .client()
            .get(
                key(config, &format!("{dir}/")),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| (kv.key_str().unwrap().to_string(), kv.value().to_vec()))
            .collect()
    })
}

/// The VM index records (as JSON) whose agent_id is `agent` (values that are no JSON are
/// passed over).
pub fn index_records_of_agent(config: &Path, agent: &str) -> Vec<Value> {
    raw_records_under(config, "vms")
        .into_iter()
        .filter_map(|(_, v)| serde_json::from_slice::<Value>(&v).ok())
        .filter(|v| v["agent_id"] == agent)
        .collect()
}

/// Deletes one key of the index (`suffix` under the config's prefix), as an operator
/// with etcdctl would.
pub fn delete_index_record(config: &Path, suffix: &str) {
    runtime().block_on(async {
        etcd(config)
            .await
            .client()
            .delete(key(config, suffix), None)
            .await
            .unwrap();
    });
}

/// Overwrites one node record under a private prefix (see
/// [`crate::cluster::private_config`]).
pub fn put_node_record(config: &Path, name: &str, record: &Value) {
    put_index_record(config, &format!("nodes/{name}"), record);
}

/// Overwrites the record at `<key_prefix>/<suffix>` of the config's prefix.
pub fn put_index_record(config: &Path, suffix: &str, record: &Value) {
    runtime().block_on(async {
        etcd(config)
            .await
            .client()
            .put(key(config, suffix), record.to_string(), None)
            .await
            .unwrap();
    });
}

/// The `state` of node `name`'s record (`ready`, `cordoned`, ...).
pub fn node_record_state(config: &Path, name: &str) -> String {
    index_record(config, &format!("nodes/{name}"))
        .unwrap_or_else(|| panic!("no record of node {name}"))["state"]
        .as_str()
        .unwrap()
        .to_string()
}

/// The reboot record of node `name`: present while the node's reboot is under way.
pub fn reboot_record(config: &Path, name: &str) -> Option<Value> {
    record_at(config, reboot_keys_of(config).node_state(name))
}

/// The ids of the holders of the `default` reboot group's slots (none without a
/// semaphore).
pub fn reboot_holders(config: &Path) -> Vec<String> {
    index_record(config, "reboot/groups/default/semaphore")
        .map(|d| {
            d["holders"]
                .as_array()
                .unwrap()
                .iter()
                .map(|h| h["id"].as_str().unwrap().to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// Points node `name`'s record under `config`'s prefix at a closed port, so the CPI cannot
/// reach the node; the record as it was, to put back with [`put_node_record`].
pub fn make_node_unreachable(config: &Path, name: &str) -> Value {
    let original = index_record(config, &format!("nodes/{name}"))
        .unwrap_or_else(|| panic!("no record of node {name}"));
    let mut dead = original.clone();
    dead["docker_endpoint"] = serde_json::json!("tcp://127.0.0.1:9");
    put_node_record(config, name, &dead);
    original
}

/// The reboot semaphore of `group` under `config`'s prefix, as the CPI's programs open it.
pub async fn semaphore_of(config: &Path, group: &str) -> moltencore::reboot::semaphore::Semaphore {
    let cfg = load_config(config);
    moltencore::reboot::semaphore::Semaphore::new(
        etcd(config).await,
        &RebootKeys::new(&Keys::new(&cfg.etcd)),
        moltencore::reboot::semaphore::Group::parse(group).expect("a group name"),
    )
}
