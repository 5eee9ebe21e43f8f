//! VMs across a node's Docker daemon going away: a VM comes back with the same IP after
//! its node's dockerd restarts, and create_vm on a node whose dockerd is down fails
//! retriably, leaves nothing anywhere, and succeeds once the node is back. This binary
//! stops and restarts a daemon, so it runs alone (test binaries run one after another).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use moltencore_testkit::{
    cluster::{cluster, cluster_config, node_prefix, runtime},
    cpi::{expect_error, expect_result},
    docker::{VmContainer, leftovers_of_agent, vm_container},
    index::index_records_of_agent,
    requests::{agent_id, shared_stemcell, static_vm, static_vm_request},
    wait::wait_until,
};
use serde_json::{Value, json};

fn node_dir(node: &str) -> PathBuf {
    PathBuf::from(cluster()["dir"].as_str().unwrap()).join(node)
}

/// Stops the node's dockerd (SIGTERM, as a host shutdown would) and waits for it to exit.
fn stop_dockerd(node: &str) {
    let pid: i32 = std::fs::read_to_string(node_dir(node).join("docker.pid"))
        .expect("dockerd pid file")
        .trim()
        .parse()
        .unwrap();
    Command::new("kill").arg(pid.to_string()).status().unwrap();
    wait_until(
        &format!("dockerd {pid} of {node} stops"),
        Duration::from_secs(60),
        Duration::from_millis(200),
        || !std::path::Path::new(&format!("/proc/{pid}")).exists(),
    );
}

/// Brings the stopped daemon back through the harness (`up` repairs what is down).
fn start_dockerd() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/cluster");
    let out = Command::new(script).arg("up").output().unwrap();
    assert!(
        out.status.success(),
        "ci/cluster up failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// has_vm and delete_vm of `vm` while its node's dockerd is down: retriable errors
/// (never "gone"), delete_vm's naming the node.
fn assert_calls_on_vm_are_retriable(config: &Path, node: &str, vm: &str) {
    let (kind, _, run) = expect_error(
        &json!({"method":"has_vm","arguments":[vm]}).to_string(),
        Some(config),
    );
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert_eq!(run.response["error"]["ok_to_retry"], true);
    let (kind, message, run) = expect_error(
        &json!({"method":"delete_vm","arguments":[vm]}).to_string(),
        Some(config),
    );
    assert_eq!(kind, "Bosh::Clouds::CloudError", "{message}");
    assert_eq!(run.response["error"]["ok_to_retry"], true);
    assert!(
        message.contains(node),
        "the message names the node: {message}"
    );
}

/// Waits (60 s at most) until `vm` runs on `node` again with the address `ip`.
fn wait_until_running_on(node: &str, vm: &str, ip: &str) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let VmContainer {
            running,
            ip: now_ip,
            ..
        } = vm_container(node, vm);
        if running && now_ip == ip {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "VM {vm} not back with {ip} (running {running}, ip {now_ip})"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// `vm` answers HTTP on `ip` (port 8080) within 20 s.
fn assert_answers_on(vm: &str, ip: &str) {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "for i in $(seq 1 40); do printf 'GET / HTTP/1.0\\r\\n\\r\\n' | busybox nc -w 2 {ip} 8080 && exit 0; sleep 0.5; done; exit 1"
        ))
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains(vm),
        "{vm} does not answer on {ip} after the restart"
    );
}

#[test]
fn vms_survive_a_dockerd_restart_and_create_vm_fails_retriably_while_it_is_down() {
    let config = cluster_config();
    let (node, prefix) = node_prefix(2);
    let stemcell = shared_stemcell();

    // 1. A running VM comes back after its node's dockerd restarts, with the same IP.
    let ip = format!("{prefix}.50");
    let vm = static_vm(&config, &stemcell, "survivor", &ip);
    let c = vm_container(&node, &vm);
    assert_eq!((c.running, c.ip), (true, ip.clone()));

    stop_dockerd(&node);

    // 2. While it is down, create_vm on that node is a retriable VMCreationFailed and
    //    leaves nothing behind anywhere.
    let agent = agent_id("while-down");
    let req = static_vm_request(&agent, &stemcell, &format!("{prefix}.51"));
    let (kind, message, run) = expect_error(&req, Some(&config));
    assert_eq!(kind, "Bosh::Clouds::VMCreationFailed", "{message}");
    assert_eq!(run.response["error"]["ok_to_retry"], true, "{message}");
    assert!(
        message.contains(&node),
        "the message names the node: {message}"
    );
    assert!(index_records_of_agent(&config, &agent).is_empty());
    // delete_vm and has_vm of a VM on the down node are retriable errors, never "gone".
    assert_calls_on_vm_are_retriable(&config, &node, &vm);

    start_dockerd();
    runtime().block_on(async {
        let others: Vec<String> = leftovers_of_agent(&agent).await;
        assert_eq!(others, Vec::<String>::new());
    });

    // The VM is back, running, same IP, and answers on it.
    wait_until_running_on(&node, &vm, &ip);
    assert_answers_on(&vm, &ip);

    // 3. The same create_vm succeeds now that the node is back.
    let result = expect_result(&req, Some(&config));
    let second = result[0].as_str().unwrap().to_string();
    assert_eq!(result[1]["default"]["ip"], format!("{prefix}.51"));

    for cid in [vm, second] {
        assert_eq!(
            expect_result(
                &json!({"method":"delete_vm","arguments":[cid]}).to_string(),
                Some(&config)
            ),
            Value::Null
        );
    }
}
