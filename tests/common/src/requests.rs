//! Request builders, and the objects the tests make with one request each (the shared
//! stemcell, a VM on a static IP, a disk).

use std::path::Path;

use serde_json::{Value, json};

use crate::cluster::{cluster_config, node_prefix, test_stemcell_dir};
use crate::cpi::{call, expect_result};

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

/// Creates a VM (API v2) from `stemcell` with the static `ip` through `config`; its cid.
pub fn static_vm(config: &Path, stemcell: &str, test: &str, ip: &str) -> String {
    let req = create_vm_request(
        &agent_id(test),
        stemcell,
        json!({}),
        manual_network(ip),
        json!({}),
        2,
    );
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
