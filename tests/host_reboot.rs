//! Reboots played by the harness (`ci/cluster reboot I`: the node's manager and dockerd
//! stop, a new boot id, node-prep, dockerd started from its report, the manager started
//! again), driven by the reboot managers the harness runs (`ci/cluster manager I start`):
//! a VM with a disk survives its node's reboot with its IP and data; three flagged nodes
//! reboot one at a time; a manager SIGKILLed mid-drain and after the reboot is finished by
//! the next. These tests restart daemons of the shared cluster, so they take
//! turns and this binary runs alone (test binaries run one after another).

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use moltencore_testkit::reboots::{Managers, boot_id, dockerd_pid, flag, start_managers};
use moltencore_testkit::{
    cluster::{cluster, cluster_config, node_names, node_prefix, runtime},
    cpi::call,
    docker::{blob_sum, disk_loops, exec_in, sh, vm_container},
    index::{node_record_state, reboot_holders, reboot_record},
    requests::{agent_id, create_vm, manual_network, shared_stemcell, static_vm, vm_with_disk},
    wait::wait_until,
};
use serde_json::json;

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// After a reboot: `node` is ready again, no slot is held, and `vm` runs on `ip`.
fn assert_back(node: &str, vm: &str, ip: &str) {
    assert_eq!(node_record_state(&cluster_config(), node), "ready");
    assert_eq!(reboot_holders(&cluster_config()).len(), 0);
    let c = vm_container(node, vm);
    assert!(c.running, "the VM does not run after the reboot");
    assert_eq!(c.ip, ip, "the VM is not back on {ip}");
}

#[test]
fn a_vm_with_a_disk_survives_its_node_s_reboot() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (vm, node, ip, disk, sum) = vm_with_disk(&cluster_config(), 0, 71, "host-reboot");
    let (boot, dockerd) = (boot_id(1), dockerd_pid(1));

    let _managers = Managers::start(&[1]);
    flag(1);
    wait_until(
        "n1 rebooted and finished",
        Duration::from_secs(240),
        Duration::from_millis(200),
        || boot_id(1) != boot && reboot_record(&cluster_config(), &node).is_none(),
    );
    assert_ne!(dockerd_pid(1), dockerd, "dockerd was not restarted");
    assert_back(&node, &vm, &ip);
    assert_eq!(blob_sum(&node, &vm, &disk), sum);
    let page = Command::new("curl")
        .args(["-sf", "--max-time", "10", &format!("http://{ip}:8080/")])
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&page.stdout).contains(&ip),
        "the VM does not answer on {ip}:8080"
    );
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn three_flagged_nodes_reboot_one_at_a_time() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let names = node_names();
    let count = names.len();
    assert!(count >= 2, "needs at least two nodes");
    let indices: Vec<usize> = (1..=count).collect();
    let boots: Vec<String> = indices.iter().map(|&i| boot_id(i)).collect();
    let pids: Vec<u64> = indices.iter().map(|&i| dockerd_pid(i)).collect();
    let _managers = Managers::start(&indices);
    for &i in &indices {
        flag(i);
    }
    // Sampled timeline: the nodes in a reboot (record present) or whose dockerd is gone.
    let mut timeline: Vec<Vec<String>> = Vec::new();
    wait_until(
        "every node rebooted",
        Duration::from_secs(600),
        Duration::from_millis(200),
        || {
            let down: Vec<String> = names
                .iter()
                .filter(|n| reboot_record(&cluster_config(), n).is_some())
                .cloned()
                .collect();
            timeline.push(down);
            indices.iter().all(|&i| {
                boot_id(i) != boots[i - 1]
                    && reboot_record(&cluster_config(), &names[i - 1]).is_none()
            })
        },
    );
    for down in &timeline {
        assert!(down.len() <= 1, "nodes down together: {down:?}");
    }
    assert!(
        timeline.iter().any(|d| !d.is_empty()),
        "no sample saw a reboot"
    );
    for &i in &indices {
        assert_ne!(
            dockerd_pid(i),
            pids[i - 1],
            "n{i}'s dockerd was not restarted"
        );
        assert_eq!(node_record_state(&cluster_config(), &names[i - 1]), "ready");
    }
    assert_eq!(reboot_holders(&cluster_config()).len(), 0);
}

/// SIGKILLs node i's harness-run manager (as a crash would) and starts it again.
fn kill_and_restart_manager(i: usize) {
    let pidfile =
        PathBuf::from(cluster()["dir"].as_str().unwrap()).join(format!("n{i}/reboot-manager.pid"));
    let pid = std::fs::read_to_string(&pidfile).unwrap();
    let killed = Command::new("kill")
        .args(["-9", pid.trim()])
        .status()
        .unwrap();
    assert!(killed.success(), "the manager of n{i} was not running");
    start_managers(&[i]);
}

#[test]
fn a_manager_killed_mid_drain_and_after_the_reboot_is_finished_by_the_next() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (node, prefix) = node_prefix(1);
    let ip = format!("{prefix}.72");
    let vm = static_vm(
        &cluster_config(),
        &shared_stemcell(),
        "host-reboot-kill",
        &ip,
    );
    // The VM takes 5 s to stop (the test stemcell's slow-stop hook, within the 10 s
    // grace period), so the drain lasts long enough to be caught.
    sh(&node, &vm, "echo 5 > /var/vcap/data/slow-stop");
    let boot = boot_id(2);
    let _managers = Managers::start(&[2]);
    flag(2);
    // Killed while draining: cordoned, the VM not yet (or not all) stopped.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let rec = reboot_record(&cluster_config(), &node);
        if rec.is_some_and(|r| r["phase"] == "draining")
            && node_record_state(&cluster_config(), &node) == "cordoned"
        {
            break;
        }
        assert_eq!(
            boot_id(2),
            boot,
            "the drain went by before it could be caught"
        );
        assert!(Instant::now() < deadline, "the drain never began");
        std::thread::sleep(Duration::from_millis(2));
    }
    kill_and_restart_manager(2);
    // Killed again after the reboot, while the health gate settles.
    wait_until(
        "n2 rebooted and checking",
        Duration::from_secs(240),
        Duration::from_millis(200),
        || {
            boot_id(2) != boot
                && reboot_record(&cluster_config(), &node).is_some_and(|r| r["phase"] == "checking")
        },
    );
    kill_and_restart_manager(2);
    wait_until(
        "the reboot finishes",
        Duration::from_secs(240),
        Duration::from_millis(200),
        || reboot_record(&cluster_config(), &node).is_none(),
    );
    assert_back(&node, &vm, &ip);
    call("delete_vm", json!([vm]));
}

/// The size in MiB of `/var/vcap/data` in `vm`, and whether `keep.txt` there says `kept`.
fn ephemeral_state(node: &str, vm: &str) -> Option<(u64, bool)> {
    let (code, out) = runtime().block_on(exec_in(
        node,
        vm,
        "grep -q ' /var/vcap/data ' /proc/self/mountinfo && df -Pm /var/vcap/data | tail -1 && cat /var/vcap/data/keep.txt",
    ));
    if code != 0 {
        return None;
    }
    let size = out
        .lines()
        .next()?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()?;
    Some((size, out.contains("kept")))
}

#[test]
fn a_sized_ephemeral_disk_is_back_with_its_data_after_a_host_reboot() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (node, prefix) = node_prefix(1);
    let (vm, _) = create_vm(
        &agent_id("reboot-ephemeral"),
        json!({"ephemeral_disk": 96}),
        manual_network(&format!("{prefix}.138")),
        json!({}),
    );
    // The start script mounts it before the stemcell's init (the agent, which the director
    // waits for), not before create_vm answers.
    wait_until(
        "the VM's ephemeral disk mounted",
        Duration::from_secs(60),
        Duration::from_millis(100),
        || {
            runtime()
                .block_on(exec_in(
                    &node,
                    &vm,
                    "grep -q ' /var/vcap/data ' /proc/self/mountinfo",
                ))
                .0
                == 0
        },
    );
    sh(&node, &vm, "echo kept > /var/vcap/data/keep.txt && sync");
    let (size, kept) = ephemeral_state(&node, &vm).expect("the ephemeral disk is mounted");
    assert!(kept && (80..=96).contains(&size), "{size} MiB");
    let boot = boot_id(2);
    moltencore_testkit::reboots::harness(&["reboot", "2"]);
    assert_ne!(boot_id(2), boot, "no new boot");
    let mut back = None;
    wait_until(
        "the VM's ephemeral disk mounted again",
        Duration::from_secs(120),
        Duration::from_millis(300),
        || {
            back = ephemeral_state(&node, &vm);
            back.is_some()
        },
    );
    assert_eq!(back, Some((size, true)), "size and data after the reboot");
    assert_eq!(disk_loops(&format!("{vm}-ephemeral")).len(), 1);
    call("delete_vm", json!([vm]));
    assert!(
        disk_loops(&format!("{vm}-ephemeral")).is_empty(),
        "loop device left"
    );
}
