//! The local cluster brought up by `ci/cluster`: its file (`MC_CLUSTER_FILE`), config,
//! nodes and test stemcell, and private key prefixes on its etcd for tests that must not
//! disturb the shared cluster.

use std::path::{Path, PathBuf};

use moltencore::cluster::Keys;
use serde_json::Value;

use crate::index::etcd;

/// The running local cluster, from `MC_CLUSTER_FILE`. Fails loudly when absent: these
/// tests need the real daemons and must never pass without them.
pub fn cluster() -> Value {
    let path = std::env::var("MC_CLUSTER_FILE").unwrap_or_else(|_| {
        panic!(
            "MC_CLUSTER_FILE is not set: this test needs the local cluster. \
             Run the tests with ci/test, or `ci/cluster up` and `eval \"$(ci/cluster env)\"`."
        )
    });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read MC_CLUSTER_FILE {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The cluster's generated cpi.json.
pub fn cluster_config() -> PathBuf {
    PathBuf::from(
        cluster()["cpi_config_file"]
            .as_str()
            .expect("cluster.json has cpi_config_file"),
    )
}

/// The cluster's generated cpi.json, as JSON (to read a setting or patch a copy).
pub fn cluster_cpi_json() -> Value {
    serde_json::from_str(&std::fs::read_to_string(cluster_config()).unwrap()).unwrap()
}

/// A cpi.json loaded with the CPI's own loader.
pub fn load_config(config: &Path) -> moltencore::config::Config {
    moltencore::config::Config::from_value(
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()))
}

/// The test stemcell folder built by ci/build-test-stemcell (MC_TEST_STEMCELL_DIR); fails
/// loudly when it is not there.
pub fn test_stemcell_dir() -> PathBuf {
    let dir = std::env::var("MC_TEST_STEMCELL_DIR").unwrap_or_else(|_| {
        panic!(
            "MC_TEST_STEMCELL_DIR is not set: build it with ci/build-test-stemcell (ci/test does)"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("image").is_file() && dir.join("stemcell.MF").is_file(),
        "{} holds no test stemcell",
        dir.display()
    );
    dir
}

/// Node names of the running cluster, in order.
pub fn node_names() -> Vec<String> {
    cluster()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

/// The name and subnet prefix (`10.1.2`) of the node at `index` (0-based) in cluster.json.
pub fn node_prefix(index: usize) -> (String, String) {
    let c = cluster();
    let node = &c["nodes"][index];
    let subnet = node["subnet"].as_str().unwrap();
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string();
    (node["name"].as_str().unwrap().to_string(), prefix)
}

/// A tokio runtime for tests that talk to the nodes.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a copy of the cluster's cpi.json with another etcd key prefix, so a test can
/// register its own (possibly broken) nodes without disturbing the shared cluster. Returns
/// the config path and the prefix.
pub fn private_config(dir: &Path) -> (PathBuf, String) {
    let mut config: Value = cluster_cpi_json();
    let prefix = format!("/moltencore-test-{}", uuid::Uuid::new_v4().simple());
    config["etcd"]["key_prefix"] = Value::String(prefix.clone());
    let path = dir.join("cpi.json");
    std::fs::write(&path, config.to_string()).unwrap();
    (path, prefix)
}

/// A private prefix ([`private_config`]) holding the cluster's nodes and CA, and the
/// `extra` node records given as (name, JSON); its config.
pub fn private_cluster(dir: &Path, extra: &[(&str, Value)]) -> PathBuf {
    let (config, prefix) = private_config(dir);
    register_nodes(&config, &prefix, extra);
    config
}

/// Copies the cluster's node records (and the CA) under `prefix`, and adds the extra
/// records given as (name, JSON).
pub fn register_nodes(config: &Path, prefix: &str, extra: &[(&str, Value)]) {
    let base = cluster()["key_prefix"].as_str().unwrap().to_string();
    let flannel = load_config(config).etcd.flannel_prefix;
    let (from, to) = (
        Keys::with_prefixes(&base, &flannel),
        Keys::with_prefixes(prefix, &flannel),
    );
    runtime().block_on(async {
        let kv = etcd(config).await.client();
        let src = kv
            .get(
                format!("{base}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        for item in src.kvs() {
            let key = item.key_str().unwrap();
            let copy = match key.strip_prefix(&from.nodes()) {
                Some(name) => Some(to.node(name)),
                None => (key == from.ca_cert()).then(|| to.ca_cert()),
            };
            if let Some(copy) = copy {
                kv.put(copy, item.value(), None).await.unwrap();
            }
        }
        for (name, record) in extra {
            kv.put(to.node(name), record.to_string(), None)
                .await
                .unwrap();
        }
    });
}

/// A node record whose Docker endpoint refuses connections at once.
pub fn dead_node_record(name: &str) -> Value {
    serde_json::json!({"name": name, "private_ip": "192.0.2.250",
        "docker_endpoint": "tcp://127.0.0.1:9", "subnet": "10.1.200.0/24",
        "gateway": "10.1.200.1", "state": "ready"})
}
