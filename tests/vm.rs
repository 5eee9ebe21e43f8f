//! Black-box tests of the VM methods through the built `cpi` binary, checked on the nodes
//! of the local cluster: where the container runs, its labels, the exact agent files, its
//! networking, and that failures leave nothing behind.

use std::collections::HashSet;

use moltencore::ids::VmCid;
use moltencore_testkit::{
    cluster::{
        cluster, cluster_config, cluster_cpi_json, node_prefix, private_cluster, private_config,
        register_nodes, runtime, test_stemcell_dir,
    },
    cpi::{
        assert_schema, call, create_vm_retrying, expect_error, expect_result,
        kill_create_vm_once_its_container_exists, run_cpi,
    },
    docker::{exec_in, leftovers_of_agent, node_of_container, node_socket, read_file_in},
    index::{delete_index_record, index_record, index_records_of_agent, keys_of, put_index_record},
    requests::{
        agent_id, create_vm, create_vm_request, manual_network, shared_stemcell, static_vm,
        static_vm_request,
    },
    wait::wait_until,
};
use serde_json::{Value, json};

fn delete_vm(cid: &str) {
    assert_eq!(call("delete_vm", json!([cid])), Value::Null);
}

/// The container of a new VM: its labels, memory, restart policy and address.
async fn assert_container_as_created(node: &str, cid: &str, agent: &str, ip: &str) {
    let docker = node_socket(node).await;
    let c = docker.inspect_container(cid, None).await.unwrap();
    let labels = c.config.as_ref().unwrap().labels.clone().unwrap();
    assert_eq!(labels["moltencore.vm.cid"], cid);
    assert_eq!(labels["moltencore.vm.agent_id"], agent);
    assert_eq!(labels["moltencore.vm.stemcell"], shared_stemcell());
    assert_eq!(labels["moltencore.vm.group"], "manual-group");
    assert!(labels.contains_key("moltencore.vm.created_at"));
    let hc = c.host_config.unwrap();
    assert_eq!(hc.memory, Some(256 << 20));
    assert_eq!(
        hc.restart_policy.unwrap().name.unwrap().to_string(),
        "always"
    );
    let ip_now = c.network_settings.unwrap().networks.unwrap()["bosh"]
        .ip_address
        .clone();
    assert_eq!(ip_now.as_deref(), Some(ip));
}

/// The gateway of a node's subnet: the first address of the /24 that holds `ip`.
fn gateway_of(ip: &str) -> String {
    let (prefix, _) = ip.rsplit_once('.').unwrap();
    format!("{prefix}.1")
}

/// The agent's files in a new VM with a manual network: its settings exactly, user data
/// and metadata, and resolv.conf, hostname and ephemeral mount.
async fn assert_exact_agent_files(node: &str, cid: &str, agent: &str, ip: &str, env: &Value) {
    let settings: Value = serde_json::from_str(
        &read_file_in(node, cid, "/var/vcap/bosh/warden-cpi-agent-env.json").await,
    )
    .unwrap();
    let (mbus, blobstore) = {
        let c: Value = cluster_cpi_json();
        (c["agent"]["mbus"].clone(), c["agent"]["blobstore"].clone())
    };
    assert!(
        blobstore.is_object(),
        "the cluster's cpi.json has a blobstore"
    );
    let gw = gateway_of(ip);
    assert_eq!(
        settings,
        json!({
            "agent_id": agent,
            "vm": {"name": cid},
            "mbus": mbus,
            "ntp": [],
            "blobstore": blobstore,
            "networks": {"default": {"type": "manual", "ip": ip, "netmask": "255.255.255.0",
                "gateway": gw, "dns": [gw], "default": ["dns", "gateway"],
                "cloud_properties": {}, "mac": "", "preconfigured": true}},
            "disks": {"system": "", "ephemeral": null, "persistent": {}},
            "env": env,
        })
    );
    assert_eq!(
        read_file_in(node, cid, "/var/vcap/bosh/warden-cpi-user-data.json").await,
        r#"{"Registry":{"Endpoint":"/var/vcap/bosh/warden-cpi-agent-env.json"}}"#
    );
    assert_eq!(
        read_file_in(node, cid, "/var/vcap/bosh/warden-cpi-metadata.json").await,
        format!(r#"{{"instance-id":"{cid}"}}"#)
    );
    let (code, out) = exec_in(
        node,
        cid,
        "cat /etc/resolv.conf /etc/hostname; grep -c vcap/data /proc/mounts",
    )
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&format!("nameserver {gw}")), "{out}");
    assert!(out.contains(cid), "{out}");
}

#[test]
fn a_manual_vm_runs_on_the_node_of_its_ip_with_the_exact_agent_files() {
    let (node, prefix) = node_prefix(1);
    let ip = format!("{prefix}.30");
    let agent = agent_id("manual");
    let env = json!({"bosh": {"group": "manual-group", "password": "hash"}, "persistent_disk": 0});
    let (cid, networks) = create_vm(
        &agent,
        json!({"ram": 256}),
        manual_network(&ip),
        env.clone(),
    );
    assert_eq!(networks["default"]["ip"], ip.as_str());

    runtime().block_on(async {
        assert_eq!(
            node_of_container(&cid).await.as_deref(),
            Some(node.as_str())
        );
        assert_container_as_created(&node, &cid, &agent, &ip).await;
        assert_exact_agent_files(&node, &cid, &agent, &ip, &env).await;
    });
    // has_vm, then delete_vm removes container, ephemeral volume and index record.
    assert_eq!(call("has_vm", json!([cid])), Value::Bool(true));
    delete_vm(&cid);
    assert_eq!(call("has_vm", json!([cid])), Value::Bool(false));
    runtime().block_on(async {
        assert_eq!(node_of_container(&cid).await, None);
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
    assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
    delete_vm(&cid); // idempotent
}

#[test]
fn api_v1_answers_a_bare_cid() {
    let (_, prefix) = node_prefix(0);
    let agent = agent_id("v1");
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({}),
        manual_network(&format!("{prefix}.31")),
        json!({}),
        1,
    );
    let result = expect_result(&req, Some(&cluster_config()));
    let cid = result.as_str().expect("v1 create_vm answers the bare cid");
    delete_vm(cid);
}

#[test]
fn a_dynamic_vm_reports_the_address_it_really_has() {
    let agent = agent_id("dynamic");
    let networks =
        json!({"dyn": {"type": "dynamic", "dns": ["10.1.1.1"], "default": ["dns", "gateway"]}});
    let (cid, result) = create_vm(
        &agent,
        json!({}),
        networks,
        json!({"bosh": {"group": "dyn"}}),
    );
    let ip = result["dyn"]["ip"]
        .as_str()
        .expect("dynamic ip reported")
        .to_string();
    runtime().block_on(async {
        let node = node_of_container(&cid).await.expect("container exists");
        let docker = node_socket(&node).await;
        let c = docker.inspect_container(&cid, None).await.unwrap();
        let real = c.network_settings.unwrap().networks.unwrap()["bosh"]
            .ip_address
            .clone()
            .unwrap();
        assert_eq!(real, ip);
        let settings: Value = serde_json::from_str(
            &read_file_in(&node, &cid, "/var/vcap/bosh/warden-cpi-agent-env.json").await,
        )
        .unwrap();
        assert_eq!(settings["networks"]["dyn"]["ip"], ip.as_str());
        assert_eq!(settings["networks"]["dyn"]["preconfigured"], true);
    });
    let subnet_of_ip = format!("{}.0/24", ip.rsplit_once('.').unwrap().0);
    assert!(
        cluster()["nodes"]
            .as_array()
            .unwrap()
            .iter()
            .any(|n| n["subnet"] == subnet_of_ip.as_str()),
        "{ip} is in a node subnet"
    );
    delete_vm(&cid);
}

#[test]
fn vms_on_different_nodes_reach_each_other_over_their_static_ips() {
    let (node_a, prefix_a) = node_prefix(0);
    let (node_b, prefix_b) = node_prefix(2);
    let (ip_a, ip_b) = (format!("{prefix_a}.32"), format!("{prefix_b}.33"));
    let (a, _) = create_vm(
        &agent_id("cross-a"),
        json!({}),
        manual_network(&ip_a),
        json!({}),
    );
    let (b, _) = create_vm(
        &agent_id("cross-b"),
        json!({}),
        manual_network(&ip_b),
        json!({}),
    );
    runtime().block_on(async {
        assert_eq!(node_of_container(&a).await.as_deref(), Some(node_a.as_str()));
        assert_eq!(node_of_container(&b).await.as_deref(), Some(node_b.as_str()));
        // The test stemcell serves "<hostname> <ip>" on port 8080.
        let cmd = format!(
            "for i in $(seq 1 20); do out=$(printf 'GET / HTTP/1.0\\r\\n\\r\\n' | nc -w 2 {ip_a} 8080) \
             && echo \"$out\" | grep -q {a} && echo \"$out\" && exit 0; sleep 0.5; done; exit 1"
        );
        let (code, out) = exec_in(&node_b, &b, &cmd).await;
        assert_eq!(code, 0, "{b} on {node_b} could not reach {a} at {ip_a}: {out}");
        assert!(out.contains(&format!("{a} {ip_a}")), "{out}");
    });
    // The root namespace (where the BOSH CLI would run) reaches the VM too.
    let out = std::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 20); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {ip_b} 8080 && exit 0; sleep 0.5; done; exit 1"
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(&b),
        "root namespace cannot reach {ip_b}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    delete_vm(&a);
    delete_vm(&b);
}

#[test]
fn reboot_vm_restarts_the_container_with_the_same_ip() {
    let (node, prefix) = node_prefix(1);
    let ip = format!("{prefix}.34");
    let (cid, _) = create_vm(
        &agent_id("reboot"),
        json!({}),
        manual_network(&ip),
        json!({}),
    );
    let started = |cid: &str| {
        runtime().block_on(async {
            let c = node_socket(&node)
                .await
                .inspect_container(cid, None)
                .await
                .unwrap();
            let state = c.state.unwrap();
            let ip_now = c.network_settings.unwrap().networks.unwrap()["bosh"]
                .ip_address
                .clone()
                .unwrap();
            (state.started_at.unwrap(), state.running.unwrap(), ip_now)
        })
    };
    let before = started(&cid);
    std::thread::sleep(std::time::Duration::from_millis(1100));
    assert_eq!(call("reboot_vm", json!([cid])), Value::Null);
    let after = started(&cid);
    assert_ne!(before.0, after.0, "the container was not restarted");
    assert!(after.1, "running after reboot");
    assert_eq!(after.2, ip);
    delete_vm(&cid);
}

#[test]
fn unknown_vms() {
    let cid = "vm-00000000-0000-0000-0000-000000000000";
    assert_eq!(call("has_vm", json!([cid])), Value::Bool(false));
    delete_vm(cid);
    let (kind, message, _) = expect_error(
        &json!({"method":"reboot_vm","arguments":[cid]}).to_string(),
        Some(&cluster_config()),
    );
    assert_eq!(kind, "Bosh::Clouds::VMNotFound");
    assert!(message.contains(cid), "{message}");
    let (kind, _, _) = expect_error(
        &json!({"method":"set_vm_metadata","arguments":[cid, {"job": "x"}]}).to_string(),
        Some(&cluster_config()),
    );
    assert_eq!(kind, "Bosh::Clouds::VMNotFound");
}

#[test]
fn set_vm_metadata_is_kept_in_the_index() {
    let agent = agent_id("metadata");
    let (cid, _) = create_vm(
        &agent,
        json!({}),
        json!({"d": {"type": "dynamic"}}),
        json!({}),
    );
    let metadata = json!({"director": "bosh", "deployment": "cf", "job": "router",
                          "index": "0", "name": "router/abc", "created_at": "2026-11-25T00:00:00Z",
                          "custom_tag": 7});
    assert_eq!(call("set_vm_metadata", json!([cid, metadata])), Value::Null);
    let records = index_records_of_agent(&cluster_config(), &agent);
    assert_eq!(records.len(), 1);
    assert_eq!(records[0]["metadata"], metadata);
    assert_eq!(records[0]["cid"], cid.as_str());
    delete_vm(&cid);
}

#[test]
fn an_ip_in_use_fails_clearly_and_leaves_the_first_vm_alone() {
    let (node, prefix) = node_prefix(2);
    let ip = format!("{prefix}.35");
    let (first, _) = create_vm(
        &agent_id("ip-first"),
        json!({}),
        manual_network(&ip),
        json!({}),
    );
    let second_agent = agent_id("ip-second");
    let req = static_vm_request(&second_agent, &shared_stemcell(), &ip);
    let (kind, message, run) = expect_error(&req, Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::VMCreationFailed");
    assert!(
        message.contains(&ip) && message.contains(&first),
        "{message}"
    );
    assert_eq!(run.response["error"]["ok_to_retry"], false);
    runtime().block_on(async {
        assert_eq!(
            leftovers_of_agent(&second_agent).await,
            Vec::<String>::new()
        );
        let c = node_socket(&node)
            .await
            .inspect_container(&first, None)
            .await
            .unwrap();
        assert!(c.state.unwrap().running.unwrap());
    });
    assert!(index_records_of_agent(&cluster_config(), &second_agent).is_empty());
    delete_vm(&first);
}

#[test]
fn impossible_placements_name_the_reason_and_create_nothing() {
    for (networks, props, needle) in [
        (
            manual_network("10.1.9.5"),
            json!({}),
            "10.1.9.5 is in no node's subnet",
        ),
        (
            json!({"d": {"type": "dynamic"}}),
            json!({"node": "no-such-node"}),
            "'no-such-node'",
        ),
    ] {
        let agent = agent_id("impossible");
        let req = create_vm_request(&agent, &shared_stemcell(), props, networks, json!({}), 2);
        let (kind, message, run) = expect_error(&req, Some(&cluster_config()));
        assert_eq!(kind, "Bosh::Clouds::VMCreationFailed");
        assert!(message.contains(needle), "{message}");
        assert_eq!(run.response["error"]["ok_to_retry"], false);
        assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
    }
}

#[test]
fn failures_after_the_first_side_effect_are_undone() {
    // Docker refuses a 1 KiB memory limit at create (after the volume exists), and a
    // missing device at start (after the container exists).
    for (props, needle) in [
        (json!({"Memory": 1024}), "emory"),
        (
            json!({"Devices": [{"PathOnHost": "/dev/moltencore-nonexistent",
                                "PathInContainer": "/dev/x", "CgroupPermissions": "rwm"}]}),
            "moltencore-nonexistent",
        ),
    ] {
        let agent = agent_id("undo");
        let req = create_vm_request(
            &agent,
            &shared_stemcell(),
            props,
            json!({"d": {"type": "dynamic"}}),
            json!({}),
            2,
        );
        let (kind, message, _) = expect_error(&req, Some(&cluster_config()));
        assert!(kind.starts_with("Bosh::Clouds::"), "{kind}");
        assert!(message.contains(needle), "{message}");
        runtime().block_on(async {
            assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
        });
        assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
    }
}

#[test]
fn bad_cloud_properties_are_refused_before_anything_is_made() {
    let agent = agent_id("badprops");
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({"ram": "lots"}),
        json!({"d": {"type": "dynamic"}}),
        json!({}),
        2,
    );
    let (kind, message, _) = expect_error(&req, Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("cloud_properties.ram"), "{message}");
    assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
}

#[test]
fn ten_concurrent_creates_all_succeed_with_distinct_ips() {
    let (node, prefix) = node_prefix(0);
    let stemcell = shared_stemcell();
    let config = cluster_config();
    let mut handles = Vec::new();
    for i in 0..10 {
        let stemcell = stemcell.clone();
        let config = config.clone();
        let networks = if i < 5 {
            manual_network(&format!("{prefix}.{}", 40 + i))
        } else {
            json!({"d": {"type": "dynamic"}})
        };
        handles.push(std::thread::spawn(move || {
            let agent = agent_id("parallel");
            let req = create_vm_request(
                &agent,
                &stemcell,
                json!({}),
                networks,
                json!({"bosh": {"group": "par"}}),
                2,
            );
            let run = run_cpi(&req, Some(&config), &[]);
            assert_schema(&run);
            assert!(
                run.response["error"].is_null(),
                "create {i} failed: {}",
                run.stdout
            );
            let r = &run.response["result"];
            let net = r[1].as_object().unwrap().values().next().unwrap().clone();
            (
                r[0].as_str().unwrap().to_string(),
                net["ip"].as_str().unwrap().to_string(),
            )
        }));
    }
    let created: Vec<(String, String)> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    let ips: HashSet<&String> = created.iter().map(|(_, ip)| ip).collect();
    assert_eq!(ips.len(), 10, "IPs are not distinct: {created:?}");
    runtime().block_on(async {
        for (cid, ip) in &created {
            let n = node_of_container(cid).await.expect("container exists");
            let c = node_socket(&n)
                .await
                .inspect_container(cid, None)
                .await
                .unwrap();
            let real = c.network_settings.unwrap().networks.unwrap()["bosh"]
                .ip_address
                .clone()
                .unwrap();
            assert_eq!(&real, ip, "{cid}");
            if ip.starts_with(&format!("{prefix}.4")) {
                assert_eq!(n, node, "static IP {ip} on its node");
            }
        }
    });
    for (cid, _) in &created {
        delete_vm(cid);
    }
}

#[test]
fn a_stemcell_missing_on_a_node_is_copied_there_for_a_vm() {
    let (node, prefix) = node_prefix(2);
    // A stemcell of its own, removed from one node by hand (as on a node that joined later).
    let image = test_stemcell_dir().join("image");
    let stemcell = expect_result(
        &json!({"method":"create_stemcell","arguments":[image.to_str().unwrap(), {}]}).to_string(),
        Some(&cluster_config()),
    )
    .as_str()
    .unwrap()
    .to_string();
    let reference = format!("moltencore-stemcell:{stemcell}");
    runtime().block_on(async {
        node_socket(&node)
            .await
            .remove_image(
                &reference,
                None::<bollard::query_parameters::RemoveImageOptions>,
                None,
            )
            .await
            .unwrap();
    });
    let req = static_vm_request(&agent_id("replicate"), &stemcell, &format!("{prefix}.36"));
    let result = expect_result(&req, Some(&cluster_config()));
    let cid = result[0].as_str().unwrap().to_string();
    runtime().block_on(async {
        let i = node_socket(&node)
            .await
            .inspect_image(&reference)
            .await
            .unwrap();
        assert_eq!(
            i.config.unwrap().labels.unwrap()["moltencore.stemcell.cid"],
            stemcell
        );
    });
    delete_vm(&cid);
    call("delete_stemcell", json!([stemcell]));
}

#[test]
fn secrets_in_env_and_config_never_reach_stderr_or_the_log_of_a_real_create() {
    let agent = agent_id("secrets");
    let env = json!({"bosh": {
        "password": "SECRET-VCAP-HASH-9",
        "mbus": {"cert": {"private_key": "SECRET-MBUS-KEY-9", "ca": "c"}},
        "blobstores": [{"provider": "dav", "options": {
            "endpoint": "http://u:SECRET-BLOB-PW-9@blob:25250", "password": "SECRET-BLOB-PW2-9"}}]
    }});
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({}),
        json!({"d": {"type": "dynamic"}}),
        env,
        2,
    );
    let mbus_password = {
        let c: Value = cluster_cpi_json();
        let mbus = c["agent"]["mbus"].as_str().unwrap().to_string();
        mbus.split(':')
            .nth(2)
            .unwrap()
            .split('@')
            .next()
            .unwrap()
            .to_string()
    };
    let run = run_cpi(
        &req,
        Some(&cluster_config()),
        &[("MOLTENCORE_LOG", "trace")],
    );
    assert_schema(&run);
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    let cid = run.response["result"][0].as_str().unwrap().to_string();
    let logs = format!("{}\n{}", run.stderr, run.response["log"]);
    assert!(logs.contains(&cid), "the trace log is really there: {logs}");
    for secret in [
        "SECRET-VCAP-HASH-9",
        "SECRET-MBUS-KEY-9",
        "SECRET-BLOB-PW-9",
        "SECRET-BLOB-PW2-9",
        mbus_password.as_str(),
    ] {
        assert!(!logs.contains(secret), "{secret} leaked:\n{logs}");
    }
    delete_vm(&cid);
}

#[test]
fn a_killed_create_vm_does_not_block_its_ip_for_the_retry() {
    let (node, prefix) = node_prefix(1);
    let ip = format!("{prefix}.38");
    let agent = agent_id("killed-create");
    let req = static_vm_request(&agent, &shared_stemcell(), &ip);
    // Kill the cpi once its container exists on the node.
    kill_create_vm_once_its_container_exists(&req, &cluster_config(), &agent);
    // The director retries with a new agent id and the same IP. While the dead process's
    // lease lives, the answer is a retriable VMCreationFailed; then the abandoned VM is
    // removed and the create succeeds.
    let retry_agent = agent_id("killed-create-retry");
    let retry = static_vm_request(&retry_agent, &shared_stemcell(), &ip);
    let cid = create_vm_retrying(&retry, &cluster_config(), |_| {});
    runtime().block_on(async {
        assert_eq!(
            leftovers_of_agent(&agent).await,
            Vec::<String>::new(),
            "abandoned VM removed"
        );
        assert_eq!(
            node_of_container(&cid).await.as_deref(),
            Some(node.as_str())
        );
    });
    delete_vm(&cid);
}

#[test]
fn an_unreadable_vm_record_is_an_error_and_nothing_is_forgotten() {
    let dir = tempfile::tempdir().unwrap();
    let (config, prefix) = private_config(dir.path());
    register_nodes(&config, &prefix, &[]);
    let cid = "vm-00000000-0000-0000-0000-0000000000ff";
    put_index_record(&config, &format!("vms/{cid}"), &json!("{not a record"));
    for method in ["has_vm", "delete_vm", "reboot_vm"] {
        let (kind, message, run) = expect_error(
            &json!({"method": method, "arguments": [cid]}).to_string(),
            Some(&config),
        );
        assert_eq!(kind, "Bosh::Clouds::CloudError", "{method}: {message}");
        assert_eq!(run.response["error"]["ok_to_retry"], false);
        assert!(
            message.contains(&keys_of(&config).vm(&VmCid::parse(cid).unwrap()))
                && message.contains("unreadable"),
            "{method} names the record: {message}"
        );
    }
    assert!(
        index_record(&config, &format!("vms/{cid}")).is_some(),
        "the record is kept for the operator to look at"
    );
}

#[test]
fn create_vm_with_an_unknown_disk_fails_and_creates_nothing() {
    let agent = agent_id("unknown-disk");
    let req = json!({"method": "create_vm",
        "arguments": [agent, shared_stemcell(), {}, {"d": {"type": "dynamic"}},
                      ["disk-00000000-0000-0000-0000-000000000000"], {}],
        "api_version": 2})
    .to_string();
    let (kind, message, _) = expect_error(&req, Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::DiskNotFound");
    assert!(
        message.contains("disk-00000000-0000-0000-0000-000000000000"),
        "{message}"
    );
    assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
}

#[test]
fn a_vm_whose_node_was_unregistered_is_an_error_for_has_vm_and_forgotten_by_delete_vm() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[]);
    let (node, p) = node_prefix(0);
    let vm = static_vm(
        &config,
        &shared_stemcell(),
        "unregistered",
        &format!("{p}.104"),
    );
    let request = |method: &str| json!({"method": method, "arguments": [vm]}).to_string();
    // A node record that cannot be read is not "unregistered": nothing is forgotten.
    put_index_record(&config, &format!("nodes/{node}"), &json!("{garbled"));
    for method in ["has_vm", "delete_vm"] {
        let (kind, message, _) = expect_error(&request(method), Some(&config));
        assert_eq!(kind, "Bosh::Clouds::CloudError", "{method}");
        assert!(
            message.contains(&format!("nodes/{node}")) && message.contains("unreadable"),
            "{method}: {message}"
        );
    }
    assert!(index_record(&config, &format!("vms/{vm}")).is_some());
    delete_index_record(&config, &format!("nodes/{node}"));

    let (kind, message, run) = expect_error(&request("has_vm"), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert_eq!(run.response["error"]["ok_to_retry"], false);
    assert!(
        message.contains(&vm)
            && message.contains(&node)
            && message.contains("no longer registered"),
        "{message}"
    );
    // delete_vm forgets it without reaching for a node the cluster no longer knows.
    assert_eq!(
        expect_result(&request("delete_vm"), Some(&config)),
        Value::Null
    );
    assert!(index_record(&config, &format!("vms/{vm}")).is_none());
    assert_eq!(
        expect_result(&request("has_vm"), Some(&config)),
        Value::Bool(false)
    );
    let left = runtime().block_on(async {
        let docker = node_socket(&node).await;
        let left = docker.inspect_container(&vm, None).await.is_ok();
        let _ = docker
            .remove_container(
                &vm,
                Some(
                    bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                        .force(true)
                        .build(),
                ),
            )
            .await;
        let _ = docker
            .remove_volume(
                &format!("{vm}-ephemeral"),
                None::<bollard::query_parameters::RemoveVolumeOptions>,
            )
            .await;
        left
    });
    assert!(left, "the container on the unregistered node was touched");
}

#[test]
fn a_missing_docker_network_or_stemcell_is_named_and_nothing_is_made() {
    let cases = [
        (
            shared_stemcell(),
            json!({"d": {"type": "dynamic", "cloud_properties": {"name": "no-such-docker-net"}}}),
            "Bosh::Clouds::NetworkNotFound",
            "no-such-docker-net".to_string(),
        ),
        (
            "sc-00000000-0000-0000-0000-000000000000".to_string(),
            json!({"d": {"type": "dynamic"}}),
            "Bosh::Clouds::CpiError",
            "stemcell sc-00000000-0000-0000-0000-000000000000 is on no node".to_string(),
        ),
    ];
    for (stemcell, networks, want_kind, needle) in cases {
        let agent = agent_id("missing-on-node");
        let req = create_vm_request(&agent, &stemcell, json!({}), networks, json!({}), 2);
        let (kind, message, run) = expect_error(&req, Some(&cluster_config()));
        assert_eq!(kind, want_kind, "{message}");
        assert!(message.contains(&needle), "{message}");
        assert_eq!(run.response["error"]["ok_to_retry"], false);
        runtime().block_on(async {
            assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
        });
        assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
    }
}

#[test]
fn a_vm_abandoned_by_a_killed_create_vm_is_removed_by_the_next_create_on_its_node() {
    use std::time::Duration;
    let (node, _) = node_prefix(2);
    let dynamic = json!({"d": {"type": "dynamic"}});
    let agent = agent_id("abandoned");
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({"node": node}),
        dynamic.clone(),
        json!({}),
        2,
    );
    kill_create_vm_once_its_container_exists(&req, &cluster_config(), &agent);
    // The dead call's record expires with its lease; the director never learned the VM.
    wait_until(
        "the record expires with its lease",
        Duration::from_secs(60),
        Duration::from_secs(1),
        || index_records_of_agent(&cluster_config(), &agent).is_empty(),
    );
    // No IP or disk conflict: the next create on that node removes it all the same.
    let (next, _) = create_vm(
        &agent_id("abandoned-next"),
        json!({"node": node}),
        dynamic,
        json!({}),
    );
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
    delete_vm(&next);
}

#[test]
fn an_address_docker_chooses_on_a_foreign_network_is_read_back_into_the_answer() {
    // The one case where create_vm reads the container after its start: a dynamic network
    // on a Docker network the CPI does not manage, whose address Docker picks.
    let (node, _) = node_prefix(0);
    let net = "mc-test-foreign";
    runtime().block_on(async {
        let docker = node_socket(&node).await;
        let _ = docker.remove_network(net).await;
        docker
            .create_network(bollard::models::NetworkCreateRequest {
                name: net.to_string(),
                driver: Some("bridge".into()),
                ipam: Some(bollard::models::Ipam {
                    config: Some(vec![bollard::models::IpamConfig {
                        subnet: Some("10.250.7.0/24".into()),
                        ..Default::default()
                    }]),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let req = create_vm_request(
        &agent_id("foreign-net"),
        &shared_stemcell(),
        json!({"node": node}),
        json!({"d": {"type": "dynamic", "cloud_properties": {"name": net}}}),
        json!({}),
        2,
    );
    let result = expect_result(&req, Some(&cluster_config()));
    let vm = result[0].as_str().unwrap().to_string();
    let answered = result[1]["d"]["ip"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    let actual = runtime().block_on(async {
        let c = node_socket(&node)
            .await
            .inspect_container(&vm, None)
            .await
            .unwrap();
        c.network_settings
            .and_then(|n| n.networks)
            .and_then(|mut n| n.remove(net))
            .and_then(|ep| ep.ip_address)
            .unwrap_or_default()
    });
    assert!(actual.starts_with("10.250.7."), "{actual}");
    assert_eq!(answered, actual, "{result}");
    call("delete_vm", json!([vm]));
    runtime().block_on(async {
        node_socket(&node).await.remove_network(net).await.unwrap();
    });
}
