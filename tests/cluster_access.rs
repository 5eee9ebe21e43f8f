//! Black-box tests of cluster access through the built `cpi` binary against the local
//! cluster: the cluster view from etcd, the node check over mutual TLS, cpi-config
//! overrides in `context`, clear errors for unreachable nodes, and draining a node.

use std::process::Command;

use moltencore::cluster::{Etcd, Keys};
use moltencore::config::Config;
use moltencore_testkit::cluster::{
    cluster, cluster_config, cluster_cpi_json, node_prefix, private_cluster,
};
use moltencore_testkit::cpi::{cpi_bin, expect_error, expect_result};
use moltencore_testkit::index::index_record;
use moltencore_testkit::requests::{shared_stemcell, static_vm};
use serde_json::{Value, json};

fn calculate(cpu: u64, ram: u64) -> String {
    json!({"method":"calculate_vm_cloud_properties",
           "arguments":[{"cpu":cpu,"ram":ram,"ephemeral_disk_size":2048}],
           "context":{"director_uuid":"d","request_id":"cpi-1"},"api_version":2})
    .to_string()
}

#[test]
fn calculate_vm_cloud_properties_reads_node_capacity_from_etcd() {
    let config = cluster_config();
    let result = expect_result(&calculate(1, 512), Some(&config));
    assert_eq!(
        result,
        json!({"cpu": 1, "ram": 512, "ephemeral_disk": 2048})
    );

    let (kind, message, _) = expect_error(&calculate(4096, 512), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("4096 CPUs"), "{message}");
    let first = cluster()["nodes"][0]["name"].as_str().unwrap().to_string();
    let names: Vec<String> = cluster()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert!(
        names.iter().any(|n| message.contains(&format!("{n} has"))),
        "message names no node ({first}...): {message}"
    );
}

#[test]
fn cpi_config_properties_in_context_override_the_file() {
    let config = cluster_config();
    // A cpi-config pointing this CPI at an empty key prefix: it sees no nodes.
    let req = json!({"method":"calculate_vm_cloud_properties",
        "arguments":[{"cpu":1,"ram":512,"ephemeral_disk_size":2048}],
        "context":{"director_uuid":"d","etcd":{"key_prefix":"/moltencore-empty-test"}}});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("no nodes registered"), "{message}");
}

#[test]
fn cpi_nodes_checks_every_node_over_mutual_tls() {
    let out = Command::new(cpi_bin())
        .args(["nodes", "--json", "-c"])
        .arg(cluster_config())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "cpi nodes failed: {stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let doc: Value = serde_json::from_str(&stdout).unwrap();
    let rows = doc["nodes"].as_array().unwrap();
    let expected = cluster()["nodes"].as_array().unwrap().len();
    assert_eq!(rows.len(), expected, "{stdout}");
    for row in rows {
        assert_eq!(row["docker"]["reachable"], true, "{row}");
        assert!(row["docker"]["version"].is_string(), "{row}");
        assert_eq!(row["state"], "ready");
        assert_eq!(row["lease"], "ok");
    }
}

/// Registers, under a private key prefix, one real node and one whose Docker endpoint does
/// not answer, and returns a config pointing at that prefix.
fn config_with_dead_node(dir: &std::path::Path) -> std::path::PathBuf {
    let base: Value = cluster_cpi_json();
    let prefix = format!("/moltencore-test-{}", uuid::Uuid::new_v4().simple());
    let mut patched = base.clone();
    patched["etcd"]["key_prefix"] = json!(prefix);
    let path = dir.join("cpi.json");
    std::fs::write(&path, patched.to_string()).unwrap();

    let c = cluster();
    let real = &c["nodes"][0];
    let ca = std::fs::read_to_string(c["docker_tls"]["ca_cert_file"].as_str().unwrap()).unwrap();
    let config = Config::from_value(patched).unwrap();
    let keys = Keys::new(&config.etcd);
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let etcd = Etcd::connect(&config).await.unwrap();
        let kv = etcd.client();
        let record = |name: &str, endpoint: &str, subnet: &str, gw: &str| {
            json!({"name": name, "private_ip": "192.0.2.250", "docker_endpoint": endpoint,
                   "subnet": subnet, "gateway": gw, "state": "ready"})
            .to_string()
        };
        kv.put(
            keys.node("alive"),
            record(
                "alive",
                real["docker_endpoint"].as_str().unwrap(),
                real["subnet"].as_str().unwrap(),
                real["gateway"].as_str().unwrap(),
            ),
            None,
        )
        .await
        .unwrap();
        // Loopback port 9: nothing listens there, the connection is refused at once.
        kv.put(
            keys.node("dead"),
            record("dead", "tcp://127.0.0.1:9", "10.1.200.0/24", "10.1.200.1"),
            None,
        )
        .await
        .unwrap();
        kv.put(keys.node("garbled"), "{not json", None)
            .await
            .unwrap();
        kv.put(keys.ca_cert(), ca, None).await.unwrap();
    });
    path
}

#[test]
fn an_unreachable_node_is_named_with_its_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_with_dead_node(dir.path());
    let out = Command::new(cpi_bin())
        .args(["nodes", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "a dead node must fail the check:\n{stdout}"
    );
    let dead = stdout
        .lines()
        .find(|l| l.starts_with("dead "))
        .unwrap_or_else(|| panic!("no row for the dead node:\n{stdout}"));
    assert!(dead.contains("UNREACHABLE"), "{dead}");
    assert!(dead.contains("tcp://127.0.0.1:9"), "{dead}");
    let alive = stdout.lines().find(|l| l.starts_with("alive ")).unwrap();
    assert!(alive.contains("ok ("), "{alive}");
    assert!(
        stdout.contains("warning: node record") && stdout.contains("garbled"),
        "an unreadable record is reported:\n{stdout}"
    );

    let out = Command::new(cpi_bin())
        .args(["nodes", "--json", "-c"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = |name: &str| {
        doc["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|n| n["name"] == name)
            .unwrap_or_else(|| panic!("no {name} in {doc}"))
            .clone()
    };
    let dead = row("dead");
    assert_eq!(dead["docker"]["reachable"], false, "{dead}");
    assert!(
        dead["docker"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("tcp://127.0.0.1:9")),
        "{dead}"
    );
    assert!(dead["docker"].get("version").is_none(), "{dead}");
    assert_eq!(row("alive")["docker"]["reachable"], true);
}

#[test]
fn drain_cordons_the_node_and_names_the_instances_to_recreate() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[]);
    let (node, subnet) = node_prefix(0);
    let vm = static_vm(
        &config,
        &shared_stemcell(),
        "drain",
        &format!("{subnet}.120"),
    );
    let metadata = json!({"director": "d", "deployment": "cf", "instance_group": "web",
                          "id": "0f1e", "index": "0", "name": "web/0f1e"});
    let req = json!({"method":"set_vm_metadata","arguments":[vm, metadata]});
    expect_result(&req.to_string(), Some(&config));

    let out = Command::new(cpi_bin())
        .args(["nodes", "-c"])
        .arg(&config)
        .args(["drain", &node])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    assert!(stdout.contains("ready -> cordoned"), "{stdout}");
    assert!(
        stdout.contains(&format!("{vm}  bosh -d cf recreate web/0f1e")),
        "{stdout}"
    );
    let record = index_record(&config, &format!("nodes/{node}")).unwrap();
    assert_eq!(record["state"], "cordoned", "{record}");

    // Again, as JSON: the node stays cordoned and the VM is still listed.
    let out = Command::new(cpi_bin())
        .args(["nodes", "-c"])
        .arg(&config)
        .args(["drain", &node, "--json"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0));
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(doc["state_before"], "cordoned", "{doc}");
    assert_eq!(doc["vms"][0]["vm_cid"], vm.as_str(), "{doc}");
    assert_eq!(doc["vms"][0]["recreate"], "bosh -d cf recreate web/0f1e");

    // A node that is not registered is an error naming it.
    let out = Command::new(cpi_bin())
        .args(["nodes", "-c"])
        .arg(&config)
        .args(["drain", "zz-nowhere"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("zz-nowhere"));

    let req = json!({"method":"delete_vm","arguments":[vm]});
    assert_eq!(expect_result(&req.to_string(), Some(&config)), Value::Null);
}
