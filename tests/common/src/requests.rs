//! Request builders, and the objects the tests make with one request each (the shared
//! stemcell, a VM on a static IP, a disk).

use std::path::Path;

use serde_json::{Value, json};

use crate::cluster::{cluster_config, node_prefix, test_stemcell_dir};
use crate::cpi::{call, call_on, expect_result};
use crate::docker::write_blob;

/// The request document of `method` with `args`, as the director sends it (API v2).
pub fn request(method: &str, args: Value) -> String {
    json!({"method": method, "arguments": args, "api_version": 2}).to_string()
}

/// A unique agent id, so a test can find everything its VM left on any node.
pub fn agent_id(test: &str) -> String {
    format!("agent-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A create_vm request.
pub fn create_vm_request(
    agent: &str,
    stemcell: &str,
    cloud_properties: Value,
    networks: Value,
    env: Value,
    api_version: u32,
) -> String {
    json!({"method": "create_vm",
        "arguments": [agent, stemcell, cloud_properties, networks, [], env],
        "context": {"director_uuid": "d", "request_id": "cpi-test"},
        "api_version": api_version})
    .to_string()
}

/// A manual network on `ip` of the node subnet `a.b.c.0/24`.
pub fn manual_network(ip: &str) -> Value {
    let gw = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    json!({"default": {"type": "manual", "ip": ip, "netmask": "255.255.255.0",
        "gateway": gw, "dns": [gw], "default": ["dns", "gateway"], "cloud_properties": {}}})
}

/// A stemcell imported once per test binary (tests of one binary share it).
pub fn shared_stemcell() -> String {
    static CID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CID.get_or_init(|| {
        let image = test_stemcell_dir().join("image");
        let req = json!({"method":"create_stemcell",
            "arguments":[image.to_str().unwrap(), {}]});
        expect_result(&req.to_string(), Some(&cluster_config()))
            .as_str()
            .expect("stemcell cid")
            .to_string()
    })
    .clone()
}

/// Creates a VM (API v2) of the shared stemcell on the shared cluster: (cid, the networks
/// the CPI answered).
pub fn create_vm(agent: &str, props: Value, networks: Value, env: Value) -> (String, Value) {
    let req = create_vm_request(agent, &shared_stemcell(), props, networks, env, 2);
    let result = expect_result(&req, Some(&cluster_config()));
    let arr = result
        .as_array()
        .expect("v2 create_vm answers [cid, networks]");
    assert_eq!(arr.len(), 2, "{result}");
    (arr[0].as_str().unwrap().to_string(), arr[1].clone())
}

/// The create_vm request (API v2) of `agent` from `stemcell` with the static `ip` and no
/// cloud_properties or env.
pub fn static_vm_request(agent: &str, stemcell: &str, ip: &str) -> String {
    create_vm_request(agent, stemcell, json!({}), manual_network(ip), json!({}), 2)
}

/// Creates a VM (API v2) from `stemcell` with the static `ip` through `config`; its cid.
pub fn static_vm(config: &Path, stemcell: &str, test: &str, ip: &str) -> String {
    let req = static_vm_request(&agent_id(test), stemcell, ip);
    expect_result(&req, Some(config))[0]
        .as_str()
        .expect("create_vm answers [cid, networks]")
        .to_string()
}

/// A VM of the shared stemcell with a static IP on the node at `index` (0-based; `host` =
/// last octet) of the shared cluster: (cid, node, ip).
pub fn vm_on(index: usize, host: u8, test: &str) -> (String, String, String) {
    let (node, prefix) = node_prefix(index);
    let ip = format!("{prefix}.{host}");
    let cid = static_vm(&cluster_config(), &shared_stemcell(), test, &ip);
    (cid, node, ip)
}

/// `create_disk` with `args` on the shared cluster; the new disk's cid.
pub fn create_disk(args: Value) -> String {
    call("create_disk", args)
        .as_str()
        .expect("disk cid is a string")
        .to_string()
}

/// Objects a test keeps an eye on while it sends hostile requests: a running VM, a disk
/// (attached to nothing), a snapshot of it, and the shared stemcell.
pub struct Canaries {
    pub vm: String,
    pub disk: String,
    pub snapshot: String,
    pub stemcell: String,
}

/// Makes the [`Canaries`] of `test` on the node at `node_index` (0-based) of the shared
/// cluster, the VM on a dynamic network.
pub fn canaries(test: &str, node_index: usize) -> Canaries {
    let stemcell = shared_stemcell();
    let (node, _) = node_prefix(node_index);
    let req = create_vm_request(
        &agent_id(test),
        &stemcell,
        json!({"node": node}),
        json!({"d": {"type": "dynamic"}}),
        json!({}),
        2,
    );
    let vm = expect_result(&req, Some(&cluster_config()))[0]
        .as_str()
        .unwrap()
        .to_string();
    let disk = create_disk(json!([16, {}, vm]));
    let snapshot = call("snapshot_disk", json!([disk, {}]))
        .as_str()
        .unwrap()
        .to_string();
    Canaries {
        vm,
        disk,
        snapshot,
        stemcell,
    }
}

/// Deletes the canaries' snapshot, disk and VM, each of which must succeed.
pub fn remove_canaries(vm: &str, disk: &str, snapshot: &str) {
    assert_eq!(call("delete_snapshot", json!([snapshot])), Value::Null);
    assert_eq!(call("delete_disk", json!([disk])), Value::Null);
    assert_eq!(call("delete_vm", json!([vm])), Value::Null);
}

/// A VM of the shared stemcell through `config` with a static IP on the node at `index`
/// (0-based; `host` = last octet) and an attached disk holding 1 MiB of random data: (cid,
/// node, ip, disk, the data's checksum).
pub fn vm_with_disk(
    config: &Path,
    index: usize,
    host: u8,
    test: &str,
) -> (String, String, String, String, String) {
    let (node, prefix) = node_prefix(index);
    let ip = format!("{prefix}.{host}");
    let vm = static_vm(config, &shared_stemcell(), test, &ip);
    let disk = call_on(config, "create_disk", json!([1024, {}, vm]))
        .as_str()
        .expect("disk cid is a string")
        .to_string();
    call_on(config, "attach_disk", json!([vm, disk]));
    let sum = write_blob(&node, &vm, &disk, 1024);
    (vm, node, ip, disk, sum)
}
