//! Black-box tests of address claims: many concurrent create_vm on one node get distinct
//! dynamic addresses without failures, and of two creates racing for one static IP exactly
//! one wins while the other is told which VM holds the address.

use std::collections::HashSet;
use std::time::Instant;

use moltencore_testkit::{
    cluster::{cluster_config, node_prefix, runtime},
    cpi::{create_vm_retrying, expect_error, expect_result, run_cpi, spawn_cpi},
    docker::{inspect_vm, leftovers_of_agent, node_of_container, remove_outside_cpi},
    index::{delete_index_record, index_record, index_records_of_agent, index_records_under},
    requests::{
        agent_id, create_vm_request, manual_network, shared_stemcell, static_vm, static_vm_request,
    },
};
use serde_json::{Value, json};

/// Deletes every VM it was given when dropped, also when the test fails half-way.
struct Cleanup(std::sync::Mutex<Vec<String>>);

impl Cleanup {
    fn new() -> Cleanup {
        Cleanup(std::sync::Mutex::new(Vec::new()))
    }
    fn add(&self, cid: &str) {
        self.0.lock().unwrap().push(cid.to_string());
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        for cid in self.0.lock().unwrap().drain(..) {
            let req = json!({"method": "delete_vm", "arguments": [cid]}).to_string();
            let run = run_cpi(&req, Some(&cluster_config()), &[]);
            if !run.response["error"].is_null() && !std::thread::panicking() {
                panic!("delete_vm {cid}: {}", run.stdout);
            }
        }
    }
}

/// The address of `cid`'s container on the `bosh` network of `node`, and whether it runs.
async fn address_of(node: &str, cid: &str) -> (String, bool) {
    let c = inspect_vm(node, cid)
        .await
        .unwrap_or_else(|| panic!("no container {cid} on {node}"));
    (c.ip, c.running)
}

#[test]
fn fifty_concurrent_dynamic_creates_on_one_node_all_get_distinct_addresses() {
    const CREATES: usize = 50;
    let (node, prefix) = node_prefix(0);
    let stemcell = shared_stemcell();
    let cleanup = Cleanup::new();
    let started = Instant::now();
    // All at once: 50 cpi processes racing for the same node's dynamic pool.
    let children: Vec<(String, std::process::Child)> = (0..CREATES)
        .map(|_| {
            let agent = agent_id("fifty");
            let req = create_vm_request(
                &agent,
                &stemcell,
                json!({"node": node}),
                json!({"d": {"type": "dynamic", "dns": [format!("{prefix}.1")],
                             "default": ["dns", "gateway"]}}),
                json!({}),
                2,
            );
            let child = spawn_cpi(&req, &cluster_config(), std::process::Stdio::piped());
            (agent, child)
        })
        .collect();
    let mut created = Vec::new();
    let mut failures = Vec::new();
    for (agent, child) in children {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "exit status {:?}", out.status);
        let response: Value = serde_json::from_slice(&out.stdout).expect("one JSON response");
        if response["error"].is_null() {
            let cid = response["result"][0].as_str().unwrap().to_string();
            cleanup.add(&cid);
            let ip = response["result"][1]["d"]["ip"]
                .as_str()
                .unwrap()
                .to_string();
            created.push((cid, ip));
        } else {
            failures.push(format!("{agent}: {}", response["error"]));
        }
    }
    eprintln!(
        "{CREATES} concurrent dynamic creates on {node}: {} failures, {:.1} s wall time",
        failures.len(),
        started.elapsed().as_secs_f64()
    );
    assert!(failures.is_empty(), "failed creates: {failures:#?}");
    let distinct: HashSet<&String> = created.iter().map(|(_, ip)| ip).collect();
    assert_eq!(distinct.len(), CREATES, "addresses repeat: {created:?}");
    let claims = index_records_under(&cluster_config(), "addresses");
    runtime().block_on(async {
        for (cid, ip) in &created {
            assert!(ip.starts_with(&format!("{prefix}.")), "{ip} not on {node}");
            let (real, running) = address_of(&node, cid).await;
            assert_eq!(&real, ip, "{cid} runs with the address it reported");
            assert!(running, "{cid} is not running");
            assert!(
                claims
                    .iter()
                    .any(|(k, v)| k.ends_with(&format!("/{ip}")) && v["vm"] == cid.as_str()),
                "no claim of {ip} by {cid}"
            );
        }
    });
    let cids: Vec<String> = created.iter().map(|(c, _)| c.clone()).collect();
    drop(cleanup);
    let left = index_records_under(&cluster_config(), "addresses");
    for cid in &cids {
        assert!(
            !left.iter().any(|(_, v)| v["vm"] == cid.as_str()),
            "delete_vm left the claim of {cid}"
        );
    }
}

#[test]
fn of_two_creates_racing_for_one_static_ip_exactly_one_wins() {
    const PAIRS: usize = 20;
    let (node, prefix) = node_prefix(1);
    let stemcell = shared_stemcell();
    let cleanup = Cleanup::new();
    // Every pair at once: 40 processes, two per address.
    let mut racers = Vec::new();
    for i in 0..PAIRS {
        let ip = format!("{prefix}.{}", 100 + i);
        for side in ["a", "b"] {
            let agent = agent_id(&format!("race-{i}-{side}"));
            let req = static_vm_request(&agent, &stemcell, &ip);
            let child = spawn_cpi(&req, &cluster_config(), std::process::Stdio::piped());
            racers.push((ip.clone(), agent, child));
        }
    }
    let mut outcomes = Vec::new();
    for (ip, agent, child) in racers {
        let out = child.wait_with_output().unwrap();
        assert!(out.status.success(), "exit status {:?}", out.status);
        let response: Value = serde_json::from_slice(&out.stdout).expect("one JSON response");
        if response["error"].is_null() {
            cleanup.add(response["result"][0].as_str().unwrap());
        }
        outcomes.push((ip, agent, response));
    }
    for pair in outcomes.chunks(2) {
        let ip = &pair[0].0;
        let winners: Vec<_> = pair.iter().filter(|o| o.2["error"].is_null()).collect();
        assert_eq!(
            winners.len(),
            1,
            "{ip}: exactly one create must win: {:?}",
            pair.iter().map(|o| &o.2).collect::<Vec<_>>()
        );
        let winner = winners[0].2["result"][0].as_str().unwrap().to_string();
        let loser = pair.iter().find(|o| !o.2["error"].is_null()).unwrap();
        let error = &loser.2["error"];
        assert_eq!(
            error["type"], "Bosh::Clouds::VMCreationFailed",
            "{ip}: {error}"
        );
        let message = error["message"].as_str().unwrap();
        assert!(
            message.contains(&winner) && message.contains(ip),
            "{ip}: the loser must name the winner {winner}: {message}"
        );
        runtime().block_on(async {
            assert_eq!(
                leftovers_of_agent(&loser.1).await,
                Vec::<String>::new(),
                "{ip}: the loser left something"
            );
            let (real, running) = address_of(&node, &winner).await;
            assert_eq!(&real, ip);
            assert!(running, "{winner} runs");
        });
        assert!(index_records_of_agent(&cluster_config(), &loser.1).is_empty());
    }
}

#[test]
fn has_vm_releases_the_claim_of_a_vm_whose_container_is_gone() {
    let (node, prefix) = node_prefix(2);
    let ip = format!("{prefix}.120");
    let cid = static_vm(&cluster_config(), &shared_stemcell(), "claim-repair", &ip);
    let held = |cid: &str| {
        index_records_under(&cluster_config(), "addresses")
            .iter()
            .any(|(k, v)| k.ends_with(&format!("/{ip}")) && v["vm"] == cid)
    };
    assert!(held(&cid), "{ip} is claimed by {cid}");
    // The container goes away outside the CPI (an operator's docker rm).
    remove_outside_cpi(&node, Some(&cid), None);
    let req = json!({"method": "has_vm", "arguments": [cid]}).to_string();
    assert_eq!(expect_result(&req, Some(&cluster_config())), false);
    assert!(!held(&cid), "has_vm's repair released {ip}");
    // The address is free for the next VM.
    let next = static_vm(
        &cluster_config(),
        &shared_stemcell(),
        "claim-repair-next",
        &ip,
    );
    assert!(held(&next));
    let req = json!({"method": "delete_vm", "arguments": [next]}).to_string();
    assert_eq!(expect_result(&req, Some(&cluster_config())), Value::Null);
    assert!(!held(&next), "delete_vm released {ip}");
}

#[test]
fn a_claim_whose_vm_record_was_removed_by_hand_does_not_block_its_address() {
    let (_, prefix) = node_prefix(2);
    let ip = format!("{prefix}.121");
    let gone = static_vm(&cluster_config(), &shared_stemcell(), "stale-claim", &ip);
    // An operator removes the VM's record with etcdctl; its container and claim stay.
    delete_index_record(&cluster_config(), &format!("vms/{gone}"));
    let agent = agent_id("stale-claim-next");
    let req = static_vm_request(&agent, &shared_stemcell(), &ip);
    // The first try removes the abandoned container and the stale claim, and is refused
    // (retriable, naming the VM the claim named); the retry gets the address.
    let (kind, message, run) = expect_error(&req, Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::VMCreationFailed");
    assert!(
        message.contains(&gone) && message.contains("no record"),
        "{message}"
    );
    assert_eq!(run.response["error"]["ok_to_retry"], true);
    let next = create_vm_retrying(&req, &cluster_config(), |_| {});
    let held: Vec<_> = index_records_under(&cluster_config(), "addresses")
        .into_iter()
        .filter(|(k, _)| k.ends_with(&format!("/{ip}")))
        .collect();
    assert_eq!(held.len(), 1, "{held:?}");
    assert_eq!(held[0].1["vm"], next.as_str());
    runtime().block_on(async {
        assert_eq!(
            node_of_container(&gone).await,
            None,
            "the abandoned VM is gone"
        );
    });
    let req = json!({"method": "delete_vm", "arguments": [next]}).to_string();
    assert_eq!(expect_result(&req, Some(&cluster_config())), Value::Null);
}

/// A finished VM whose container is gone holds nothing: a create_vm forgets its record and
/// address claims when it is on the node the create_vm uses, or an earlier try of the same
/// agent on any node (a create_vm whose last write etcd applied after the call had rolled
/// back, as when its quorum returned, leaves exactly this).
#[test]
fn create_vm_forgets_finished_vms_whose_container_is_gone() {
    let cleanup = Cleanup::new();
    let stemcell = shared_stemcell();
    let (node_a, prefix_a) = node_prefix(0);
    let (node_b, prefix_b) = node_prefix(1);
    let agent = agent_id("vanished");
    let make = |agent: &str, node: &str, ip: &str| {
        let req = create_vm_request(
            agent,
            &stemcell,
            json!({"node": node}),
            manual_network(ip),
            json!({}),
            2,
        );
        expect_result(&req, Some(&cluster_config()))[0]
            .as_str()
            .unwrap()
            .to_string()
    };
    let claimed_by = |cid: &str| {
        index_records_under(&cluster_config(), "addresses")
            .into_iter()
            .filter(|(_, v)| v["vm"] == cid)
            .count()
    };
    // An earlier try of `agent` on node a, and another agent's VM on node b, both without
    // their containers now.
    let earlier = make(&agent, &node_a, &format!("{prefix_a}.130"));
    let other = make(
        &agent_id("vanished-other"),
        &node_b,
        &format!("{prefix_b}.130"),
    );
    for (node, cid) in [(&node_a, &earlier), (&node_b, &other)] {
        remove_outside_cpi(node, Some(cid), None);
        assert!(index_record(&cluster_config(), &format!("vms/{cid}")).is_some());
        assert_eq!(claimed_by(cid), 1, "{cid} holds its address");
    }
    // The next try of `agent`, on node b.
    let next = make(&agent, &node_b, &format!("{prefix_b}.131"));
    cleanup.add(&next);
    for cid in [&earlier, &other] {
        assert_eq!(
            index_record(&cluster_config(), &format!("vms/{cid}")),
            None,
            "{cid}'s record"
        );
        assert_eq!(claimed_by(cid), 0, "{cid}'s address claims");
    }
    let req = json!({"method": "has_vm", "arguments": [next]}).to_string();
    assert_eq!(expect_result(&req, Some(&cluster_config())), true);
}
