//! `cpi bosh-config` against the local cluster: the generated cloud-config and cpi-config
//! match what etcd holds (every node, each subnet on that node's Flannel lease, no overlap,
//! the gateway and the CPI's dynamic pool reserved), a VM placed the way the director would
//! place it from the generated AZs lands on the AZ's node, and a per-node CPI's
//! `placement.node` arriving in `context` pins VMs and disks.

use std::collections::{BTreeMap, BTreeSet};
use std::net::Ipv4Addr;
use std::process::Command;

use ipnet::Ipv4Net;
use moltencore_testkit::{
    cluster::{cluster, cluster_config, cluster_cpi_json, node_names, runtime},
    cpi::{cpi_bin, expect_error, expect_result},
    docker::{leftovers_of_agent, node_of_container, node_socket, volume_on},
    index::index_record,
    requests::{agent_id, shared_stemcell},
};
use serde_json::{Value, json};

/// Runs `cpi bosh-config ARGS` with the cluster's config; returns the parsed YAML.
fn bosh_config(args: &[&str]) -> Value {
    let out = Command::new(cpi_bin())
        .arg("-c")
        .arg(cluster_config())
        .arg("bosh-config")
        .args(args)
        .output()
        .expect("run cpi bosh-config");
    let stdout = String::from_utf8(out.stdout).expect("UTF-8 output");
    assert!(
        out.status.success(),
        "cpi bosh-config {args:?} failed ({:?}):\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_yaml_ng::from_str(&stdout)
        .unwrap_or_else(|e| panic!("bosh-config {args:?} printed no YAML ({e}):\n{stdout}"))
}

/// Flannel's leases as etcd holds them: PublicIP -> subnet, read with etcd's own client.
fn leases_by_public_ip() -> BTreeMap<Ipv4Addr, Ipv4Net> {
    let cfg = moltencore::config::Config::from_value(cluster_cpi_json()).unwrap();
    let prefix = format!("{}/subnets/", cluster()["flannel_prefix"].as_str().unwrap());
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        let resp = etcd
            .client()
            .get(
                prefix.clone(),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| {
                let name = kv.key_str().unwrap().strip_prefix(&prefix).unwrap();
                let subnet: Ipv4Net = name.replacen('-', "/", 1).parse().unwrap();
                let v: Value = serde_json::from_slice(kv.value()).unwrap();
                (v["PublicIP"].as_str().unwrap().parse().unwrap(), subnet)
            })
            .collect()
    })
}

/// Every address of a BOSH range list (`a.b.c.d` or `a.b.c.d-e.f.g.h`).
fn addresses(ranges: &Value) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    for r in ranges.as_array().map(Vec::as_slice).unwrap_or_default() {
        let r = r.as_str().expect("a range is a string");
        let (first, last) = r.split_once('-').unwrap_or((r, r));
        let (first, last): (Ipv4Addr, Ipv4Addr) = (first.parse().unwrap(), last.parse().unwrap());
        assert!(first <= last, "{r}");
        out.extend((u32::from(first)..=u32::from(last)).map(Ipv4Addr::from));
    }
    out
}

/// The CPI's dynamic pool of a subnet, computed here from its definition: the top quarter
/// without the broadcast address.
fn top_quarter(subnet: Ipv4Net) -> BTreeSet<Ipv4Addr> {
    let size = 1u32 << (32 - subnet.prefix_len());
    let start = u32::from(subnet.network()) + size - size / 4;
    (start..u32::from(subnet.broadcast()))
        .map(Ipv4Addr::from)
        .collect()
}

#[test]
fn the_cloud_config_has_every_node_on_its_flannel_lease() {
    let config = bosh_config(&["cloud-config"]);
    let leases = leases_by_public_ip();
    let nodes = cluster()["nodes"].as_array().unwrap().clone();
    assert!(nodes.len() >= 2, "the harness runs several nodes");

    let azs = config["azs"].as_array().expect("azs");
    let az_names: BTreeSet<&str> = azs.iter().map(|a| a["name"].as_str().unwrap()).collect();
    let node_names: BTreeSet<&str> = nodes.iter().map(|n| n["name"].as_str().unwrap()).collect();
    assert_eq!(az_names, node_names, "one AZ per node");
    for az in azs {
        assert_eq!(az["cloud_properties"], json!({"node": az["name"]}));
    }

    let networks = config["networks"].as_array().unwrap();
    assert_eq!(networks.len(), 1);
    assert_eq!(networks[0]["type"], "manual");
    let subnets = networks[0]["subnets"].as_array().unwrap();
    assert_eq!(subnets.len(), nodes.len(), "one subnet per node");
    let mut ranges: Vec<Ipv4Net> = Vec::new();
    for node in &nodes {
        let name = node["name"].as_str().unwrap();
        let ip: Ipv4Addr = node["ip"].as_str().unwrap().parse().unwrap();
        let lease = leases
            .get(&ip)
            .unwrap_or_else(|| panic!("no Flannel lease announces {ip} ({name})"));
        let subnet = subnets
            .iter()
            .find(|s| s["az"] == name)
            .unwrap_or_else(|| panic!("no subnet for AZ {name}"));
        let range: Ipv4Net = subnet["range"].as_str().unwrap().parse().unwrap();
        assert_eq!(range, *lease, "{name}: the subnet is the node's lease");
        let gateway: Ipv4Addr = subnet["gateway"].as_str().unwrap().parse().unwrap();
        assert_eq!(gateway.to_string(), node["gateway"].as_str().unwrap());
        assert_eq!(subnet["dns"], json!([gateway.to_string()]));
        let reserved = addresses(&subnet["reserved"]);
        assert!(reserved.contains(&gateway), "{name}: gateway reserved");
        let pool = top_quarter(range);
        assert!(pool.is_subset(&reserved), "{name}: dynamic pool reserved");
        let statics = addresses(&subnet["static"]);
        assert!(!statics.is_empty(), "{name}: a static block");
        assert!(statics.is_disjoint(&reserved), "{name}: static vs reserved");
        for a in reserved.iter().chain(&statics) {
            assert!(range.contains(a), "{name}: {a} outside {range}");
        }
        ranges.push(range);
    }
    for (i, a) in ranges.iter().enumerate() {
        for b in &ranges[i + 1..] {
            assert!(
                !a.contains(&b.network()) && !b.contains(&a.network()),
                "{a} overlaps {b}"
            );
        }
    }

    let compilation = &config["compilation"];
    assert!(az_names.contains(compilation["az"].as_str().unwrap()));
    assert_eq!(compilation["network"], networks[0]["name"]);
    let vm_types: BTreeSet<&str> = config["vm_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert!(vm_types.contains(compilation["vm_type"].as_str().unwrap()));
    assert!(!config["disk_types"].as_array().unwrap().is_empty());
}

#[test]
fn the_cpi_config_has_one_entry_per_node_and_the_azs_name_them() {
    let cpis = bosh_config(&["cpi-config"]);
    let entries = cpis["cpis"].as_array().expect("cpis");
    let node_names: BTreeSet<String> = node_names().into_iter().collect();
    assert_eq!(entries.len(), node_names.len());
    let mut pinned = BTreeSet::new();
    let mut by_name = BTreeMap::new();
    for e in entries {
        assert_eq!(e["type"], "moltencore", "{e}");
        let node = e["properties"]["placement"]["node"].as_str().unwrap();
        assert!(pinned.insert(node.to_string()), "{node} twice");
        assert!(
            by_name
                .insert(e["name"].as_str().unwrap().to_string(), node.to_string())
                .is_none(),
            "duplicate CPI name {}",
            e["name"]
        );
    }
    assert_eq!(pinned, node_names);

    let config = bosh_config(&["cloud-config", "--per-node-cpis", "--reserved", "10"]);
    for az in config["azs"].as_array().unwrap() {
        let cpi = az["cpi"].as_str().expect("each AZ names a CPI");
        assert_eq!(by_name[cpi], az["name"].as_str().unwrap());
    }
    let first = &config["networks"][0]["subnets"][0];
    let range: Ipv4Net = first["range"].as_str().unwrap().parse().unwrap();
    let head: BTreeSet<Ipv4Addr> = range.hosts().take(10).collect();
    assert!(head.is_subset(&addresses(&first["reserved"])));
    assert!(!addresses(&first["reserved"]).contains(&range.hosts().nth(10).unwrap()));
}

/// A create_vm request as the director sends it for a VM of `az` with `vm_type`: the AZ's
/// cloud_properties merged with the vm_type's, `context` with the cpi-config's properties.
fn director_request(
    agent: &str,
    cloud_properties: Value,
    networks: Value,
    context: Value,
) -> String {
    json!({"method": "create_vm",
        "arguments": [agent, shared_stemcell(), cloud_properties, networks, [], {}],
        "context": context, "api_version": 2})
    .to_string()
}

fn merged(a: &Value, b: &Value) -> Value {
    let mut out = a.as_object().unwrap().clone();
    out.extend(b.as_object().unwrap().clone());
    Value::Object(out)
}

fn delete_vm(cid: &str) {
    let req = json!({"method": "delete_vm", "arguments": [cid]}).to_string();
    assert_eq!(expect_result(&req, Some(&cluster_config())), Value::Null);
}

#[test]
fn vms_of_the_generated_azs_land_on_their_nodes() {
    let config = bosh_config(&["cloud-config"]);
    let small = config["vm_types"]
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["name"] == "small")
        .expect("a small vm_type")["cloud_properties"]
        .clone();
    let azs = config["azs"].as_array().unwrap();
    let subnets = config["networks"][0]["subnets"].as_array().unwrap();

    // A static IP: the first of the last AZ's static block.
    let az = azs.last().unwrap();
    let subnet = subnets.iter().find(|s| s["az"] == az["name"]).unwrap();
    let ip = *addresses(&subnet["static"]).first().unwrap();
    let networks = json!({"default": {"type": "manual", "ip": ip.to_string(),
        "netmask": "255.255.255.0", "gateway": subnet["gateway"], "dns": subnet["dns"],
        "default": ["dns", "gateway"], "cloud_properties": subnet["cloud_properties"]}});
    let agent = agent_id("generated-static");
    let result = expect_result(
        &director_request(
            &agent,
            merged(&az["cloud_properties"], &small),
            networks,
            json!({"director_uuid": "d", "request_id": "cpi-gen-1"}),
        ),
        Some(&cluster_config()),
    );
    let cid = result[0].as_str().unwrap().to_string();
    assert_eq!(result[1]["default"]["ip"], ip.to_string());

    // No IP: the AZ's node alone decides (the director's dynamic network).
    let az2 = &azs[1];
    let agent2 = agent_id("generated-dynamic");
    let dynamic = json!({"dyn": {"type": "dynamic", "dns": ["192.0.2.53"],
        "default": ["dns", "gateway"], "cloud_properties": {}}});
    let result2 = expect_result(
        &director_request(
            &agent2,
            merged(&az2["cloud_properties"], &small),
            dynamic,
            json!({"director_uuid": "d", "request_id": "cpi-gen-2"}),
        ),
        Some(&cluster_config()),
    );
    let cid2 = result2[0].as_str().unwrap().to_string();
    let subnet2 = subnets.iter().find(|s| s["az"] == az2["name"]).unwrap();
    let dyn_ip: Ipv4Addr = result2[1]["dyn"]["ip"].as_str().unwrap().parse().unwrap();
    assert!(
        addresses(&subnet2["reserved"]).contains(&dyn_ip),
        "the CPI's dynamic address {dyn_ip} is one BOSH never hands out"
    );

    runtime().block_on(async {
        assert_eq!(
            node_of_container(&cid).await,
            az["name"].as_str().map(String::from)
        );
        assert_eq!(
            node_of_container(&cid2).await,
            az2["name"].as_str().map(String::from)
        );
        let docker = node_socket(az["name"].as_str().unwrap()).await;
        let c = docker.inspect_container(&cid, None).await.unwrap();
        assert_eq!(c.host_config.unwrap().memory, Some(1024 << 20));
    });
    delete_vm(&cid);
    delete_vm(&cid2);
    runtime().block_on(async {
        assert!(leftovers_of_agent(&agent).await.is_empty());
        assert!(leftovers_of_agent(&agent2).await.is_empty());
    });
}

/// The context the director sends to the per-node CPI of `node` (from the generated
/// cpi-config): it merges the CPI's properties into the top level of context.
fn context_of_node_cpi(node: &str) -> Value {
    let cpis = bosh_config(&["cpi-config"]);
    let entry = cpis["cpis"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["properties"]["placement"]["node"] == node)
        .unwrap()
        .clone();
    merged(
        &json!({"director_uuid": "d", "request_id": "cpi-ctx-1"}),
        &entry["properties"],
    )
}

/// create_vm as the director sends it with `context`; the VM's cid.
fn create_vm_in_context(
    agent: &str,
    cloud_properties: Value,
    networks: &Value,
    context: &Value,
) -> String {
    let r = expect_result(
        &director_request(agent, cloud_properties, networks.clone(), context.clone()),
        Some(&cluster_config()),
    );
    r[0].as_str().unwrap().to_string()
}

/// create_disk (64 MiB, for no VM) with `context`; the disk's cid.
fn create_disk_in_context(context: &Value) -> String {
    let disk_req = json!({"method": "create_disk", "arguments": [64, {}, null],
        "context": context, "api_version": 2});
    expect_result(&disk_req.to_string(), Some(&cluster_config()))
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn a_per_node_cpi_pins_vms_and_disks_through_context() {
    let names = node_names();
    let (first, last) = (names[0].clone(), names.last().unwrap().clone());
    let context = context_of_node_cpi(&last);
    let dynamic = json!({"dyn": {"type": "dynamic", "dns": ["192.0.2.53"],
        "default": ["dns", "gateway"], "cloud_properties": {}}});

    // Several VMs, so that spreading alone would not put them all on one node.
    let agents: Vec<String> = (0..2).map(|i| agent_id(&format!("ctx-{i}"))).collect();
    let cids: Vec<String> = agents
        .iter()
        .map(|agent| create_vm_in_context(agent, json!({}), &dynamic, &context))
        .collect();
    // cloud_properties.node wins over the CPI's placement.node.
    let agent_pinned = agent_id("ctx-pinned");
    let pinned_cid =
        create_vm_in_context(&agent_pinned, json!({"node": first}), &dynamic, &context);
    runtime().block_on(async {
        for cid in &cids {
            assert_eq!(node_of_container(cid).await.as_deref(), Some(last.as_str()));
        }
        assert_eq!(
            node_of_container(&pinned_cid).await.as_deref(),
            Some(first.as_str())
        );
    });

    // create_disk without a VM goes to the CPI's node too.
    let disk = create_disk_in_context(&context);
    assert!(
        volume_on(&last, &disk).is_some(),
        "disk {disk} is not on {last}"
    );
    let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    assert_eq!(record["node"], last.as_str());

    // A placement.node that names no node is refused, naming it.
    let bad = merged(
        &json!({"request_id": "cpi-ctx-2"}),
        &json!({"placement": {"node": "no-such-node"}}),
    );
    let (kind, message, _) = expect_error(
        &director_request(&agent_id("ctx-bad"), json!({}), dynamic, bad),
        Some(&cluster_config()),
    );
    assert_eq!(kind, "Bosh::Clouds::VMCreationFailed");
    assert!(message.contains("no-such-node"), "{message}");

    for cid in cids.iter().chain([&pinned_cid]) {
        delete_vm(cid);
    }
    let del = json!({"method": "delete_disk", "arguments": [disk]}).to_string();
    assert_eq!(expect_result(&del, Some(&cluster_config())), Value::Null);
    runtime().block_on(async {
        for agent in agents.iter().chain([&agent_pinned]) {
            assert!(leftovers_of_agent(agent).await.is_empty());
        }
    });
}
