//! `cpi reboot-manager` against the harness's real etcd and dockerd: a flagged node is
//! cordoned, its VMs stopped, the host "rebooted" through the reboot-command seam (a
//! script that records the reboot and gives the host a new boot id), its VMs back with
//! their IPs and disk contents, uncordoned, the slot given back; three flagged nodes take
//! turns; a manager killed at any step is finished by the next; a failing health gate
//! keeps slot and cordon; an operator's cordon survives; a FleetLock client and a node
//! share one slot; `cpi nodes` shows a manager that is gone; `cpi nodes release` names a
//! node to uncordon only for a node. Every test has its own key prefix and host root.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use moltencore_testkit::{
    cluster::{cluster_config, node_names, runtime},
    cpi::{call_on, cpi_bin, cpi_command},
    docker::{blob_sum, inspect_vm, remove_container_forced},
    fleetlock::{FleetLockServer, fleetlock_request},
    index::{
        etcd, index_record, node_record_state, put_index_record, reboot_holders, reboot_keys_of,
        reboot_record,
    },
    requests::{shared_stemcell, vm_with_disk},
    wait::poll_until,
};
use serde_json::{Value, json};

/// A private prefix with the cluster's nodes, CA and stemcells.
fn cluster_with_stemcell(dir: &Path) -> PathBuf {
    let stemcell = shared_stemcell();
    let config = moltencore_testkit::cluster::private_cluster(dir, &[]);
    let record = index_record(&cluster_config(), &format!("stemcells/{stemcell}"))
        .expect("the shared stemcell is in the index");
    put_index_record(&config, &format!("stemcells/{stemcell}"), &record);
    config
}

/// The host root of one node for the manager: a boot id, a reboot script that records
/// each reboot (`reboots`), and the flag file below `run/`.
struct HostRoot {
    root: PathBuf,
}

impl HostRoot {
    /// `wait_for_go`: the script waits for `go` before it "reboots"; `new_boot`: it gives
    /// the host a new boot id (else the test plays the host coming back).
    fn new(dir: &Path, name: &str, wait_for_go: bool, new_boot: bool) -> HostRoot {
        let root = dir.join(format!("root-{name}"));
        std::fs::create_dir_all(root.join("proc/sys/kernel/random")).unwrap();
        std::fs::create_dir_all(root.join("run")).unwrap();
        let h = HostRoot { root };
        h.new_boot();
        let r = h.root.display();
        let mut script = format!("#!/bin/sh\necho $$ >> {r}/attempts\n");
        if wait_for_go {
            script.push_str(&format!(
                "n=0; while [ ! -e {r}/go ] && [ $n -lt 3000 ]; do sleep 0.1; n=$((n+1)); done\n"
            ));
        }
        if new_boot {
            script.push_str(&format!(
                "cat /proc/sys/kernel/random/uuid > {r}/proc/sys/kernel/random/boot_id\n\
                 rm -f {r}/run/reboot-required {r}/run/engine-status\n"
            ));
        }
        script.push_str(&format!("echo done >> {r}/reboots\n"));
        let path = h.root.join("reboot.sh");
        std::fs::write(&path, script).unwrap();
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        h
    }

    fn new_boot(&self) {
        let id = uuid::Uuid::new_v4().to_string();
        std::fs::write(self.root.join("proc/sys/kernel/random/boot_id"), id).unwrap();
        let _ = std::fs::remove_file(self.root.join("run/reboot-required"));
    }

    fn flag(&self) {
        std::fs::write(self.root.join("run/reboot-required"), "").unwrap();
    }

    fn go(&self) {
        std::fs::write(self.root.join("go"), "").unwrap();
    }

    fn lines(&self, file: &str) -> Vec<String> {
        std::fs::read_to_string(self.root.join(file))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A running manager, SIGKILLed when dropped.
struct ManagerProc {
    child: Child,
}

impl ManagerProc {
    fn start(config: &Path, node: &str, host: &HostRoot) -> ManagerProc {
        ManagerProc::start_with_engine(config, node, host, "")
    }

    /// With `engine` as the update engine's status command.
    fn start_with_engine(config: &Path, node: &str, host: &HostRoot, engine: &str) -> ManagerProc {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(host.root.join("manager.log"))
            .unwrap();
        let child = Command::new(cpi_bin())
            .arg("-c")
            .arg(config)
            .args(["reboot-manager", "--node", node, "--root"])
            .arg(&host.root)
            .args(["--grace-period", "5s", "--settle", "1s", "--poll", "200ms"])
            .args(["--update-engine-command", engine])
            .arg("--reboot-command")
            .arg(host.root.join("reboot.sh"))
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn cpi reboot-manager");
        ManagerProc { child }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ManagerProc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Polls `cond` every 100 ms; fails the test with `what` (and the manager logs) when it
/// does not hold within `limit` (a bound against hangs, not a timing assertion).
fn wait_until(what: &str, limit: Duration, hosts: &[&HostRoot], cond: impl FnMut() -> bool) {
    if !poll_until(limit, Duration::from_millis(100), cond) {
        for h in hosts {
            let log = std::fs::read_to_string(h.root.join("manager.log")).unwrap_or_default();
            eprintln!("--- {} ---\n{log}", h.root.display());
        }
        panic!("{what}: not reached within {limit:?}");
    }
}

fn answers_on_8080(ip: &str) -> bool {
    Command::new("curl")
        .args(["-sf", "--max-time", "5", &format!("http://{ip}:8080/")])
        .output()
        .map(|o| o.status.success() && String::from_utf8_lossy(&o.stdout).contains(ip))
        .unwrap_or(false)
}

fn assert_finished(config: &Path, node: &str, host: &HostRoot, state: &str) {
    wait_until(
        "the reboot finishes",
        Duration::from_secs(180),
        &[host],
        || reboot_record(config, node).is_none() && host.lines("reboots").len() == 1,
    );
    assert!(
        reboot_holders(config).is_empty(),
        "{:?}",
        reboot_holders(config)
    );
    assert_eq!(node_record_state(config, node), state);
}

/// A reboot under way on the node at `index` of a private prefix: a VM (static IP,
/// last octet `host_octet`) with a disk holding data there, that node's manager running
/// with a host that waits for `go` before it reboots, the reboot asked (`cpi nodes reboot
/// --why WHY`, or the flag file when `why` is `None`) and the reboot command running.
/// Fields drop in order: the manager first, the folder last; a test binds `_manager`
/// and `_dir` (a field a pattern leaves to `..` would be dropped at once).
struct UnderWay {
    _manager: ManagerProc,
    host: HostRoot,
    config: PathBuf,
    vm: String,
    node: String,
    ip: String,
    disk: String,
    /// The checksum of the data on the disk.
    sum: String,
    _dir: tempfile::TempDir,
}

fn reboot_under_way(index: usize, host_octet: u8, why: Option<&str>) -> UnderWay {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let (vm, node, ip, disk, sum) = vm_with_disk(&config, index, host_octet, "reboot");
    let host = HostRoot::new(dir.path(), &node, true, true);
    let manager = ManagerProc::start(&config, &node, &host);
    match why {
        Some(why) => {
            let asked = cpi_command(&config, &["nodes", "reboot", &node, "--why", why]);
            assert!(asked.status.success(), "{asked:?}");
        }
        None => host.flag(),
    }
    wait_until(
        "the reboot command runs",
        Duration::from_secs(120),
        &[&host],
        || !host.lines("attempts").is_empty(),
    );
    UnderWay {
        _manager: manager,
        host,
        config,
        vm,
        node,
        ip,
        disk,
        sum,
        _dir: dir,
    }
}

#[test]
fn a_flagged_node_is_drained_rebooted_and_its_vms_come_back() {
    let UnderWay {
        config,
        vm,
        node,
        ip,
        disk,
        sum,
        host,
        _manager,
        _dir,
        ..
    } = reboot_under_way(0, 41, None);
    // While the host goes down: cordoned, VM stopped, slot held with the boot id.
    assert_eq!(node_record_state(&config, &node), "cordoned");
    let rec = reboot_record(&config, &node).unwrap();
    assert_eq!(rec["phase"], "rebooting", "{rec}");
    assert_eq!(rec["operator_cordoned"], false);
    assert!(
        rec["why"].as_str().unwrap().contains("reboot-required"),
        "{rec}"
    );
    assert!(
        !runtime().block_on(inspect_vm(&node, &vm)).unwrap().running,
        "VM still runs during the reboot"
    );
    assert_eq!(reboot_holders(&config), std::slice::from_ref(&node));
    let listing: Value =
        serde_json::from_slice(&cpi_command(&config, &["nodes", "--json"]).stdout).unwrap();
    let row = listing["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == node.as_str())
        .unwrap();
    assert_eq!(row["reboot"]["phase"], "rebooting", "{row}");
    assert_eq!(listing["reboot"]["groups"][0]["max_unavailable"], 1);
    assert_eq!(
        listing["reboot"]["groups"][0]["holders"][0]["id"],
        node.as_str()
    );
    // Refused while the node reports itself rebooting.
    let refused = cpi_command(&config, &["nodes", "release", &node]);
    assert!(!refused.status.success());
    assert!(String::from_utf8_lossy(&refused.stderr).contains("--force"));

    host.go();
    assert_finished(&config, &node, &host, "ready");
    let after = runtime().block_on(inspect_vm(&node, &vm)).unwrap();
    assert!(after.running);
    assert_eq!(after.ip, ip);
    assert_eq!(blob_sum(&node, &vm, &disk), sum);
    assert!(answers_on_8080(&ip), "the VM does not answer on {ip}:8080");
    call_on(&config, "delete_vm", json!([vm]));
    call_on(&config, "delete_disk", json!([disk]));
}

#[test]
fn three_flagged_nodes_take_turns_with_max_unavailable_one() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let nodes = node_names();
    let hosts: Vec<HostRoot> = nodes
        .iter()
        .map(|n| HostRoot::new(dir.path(), n, false, true))
        .collect();
    let set = cpi_command(&config, &["nodes", "max-unavailable", "1"]);
    assert!(set.status.success(), "{set:?}");
    let _managers: Vec<ManagerProc> = nodes
        .iter()
        .zip(&hosts)
        .map(|(n, h)| ManagerProc::start(&config, n, h))
        .collect();
    for h in &hosts {
        h.flag();
    }
    // The sampled timeline: which nodes are in a reboot, and which are cordoned.
    let mut timeline: Vec<(Vec<String>, Vec<String>)> = Vec::new();
    let refs: Vec<&HostRoot> = hosts.iter().collect();
    wait_until(
        "all three rebooted",
        Duration::from_secs(300),
        &refs,
        || {
            let down: Vec<String> = nodes
                .iter()
                .filter(|n| reboot_record(&config, n).is_some())
                .cloned()
                .collect();
            let cordoned: Vec<String> = nodes
                .iter()
                .filter(|n| node_record_state(&config, n) == "cordoned")
                .cloned()
                .collect();
            timeline.push((down, cordoned));
            hosts.iter().all(|h| h.lines("reboots").len() == 1)
                && nodes.iter().all(|n| reboot_record(&config, n).is_none())
        },
    );
    for (down, cordoned) in &timeline {
        assert!(down.len() <= 1, "two nodes down at once: {down:?}");
        assert!(
            cordoned.len() <= 1,
            "two nodes cordoned at once: {cordoned:?}"
        );
    }
    let seen: std::collections::BTreeSet<&String> = timeline.iter().flat_map(|(d, _)| d).collect();
    assert!(!seen.is_empty(), "no sample saw a reboot under way");
    assert!(reboot_holders(&config).is_empty());
    for n in &nodes {
        assert_eq!(node_record_state(&config, n), "ready");
    }
}

/// Where the manager is SIGKILLed in [`killed_manager_is_finished_by_the_next`].
#[derive(Debug, Clone, Copy)]
enum KillPoint {
    Cordoned,
    VmsStopped,
    Rebooted,
}

fn killed_manager_is_finished_by_the_next(point: KillPoint, host_octet: u8) {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let (vm, node, ip, disk, sum) = vm_with_disk(&config, 1, host_octet, "reboot");
    let host = match point {
        KillPoint::Rebooted => HostRoot::new(dir.path(), &node, false, false),
        _ => HostRoot::new(dir.path(), &node, true, true),
    };
    let mut manager = ManagerProc::start(&config, &node, &host);
    host.flag();
    match point {
        KillPoint::Cordoned => {
            let deadline = Instant::now() + Duration::from_secs(120);
            loop {
                let rec = reboot_record(&config, &node);
                if rec.as_ref().is_some_and(|r| r["phase"] == "draining")
                    && node_record_state(&config, &node) == "cordoned"
                {
                    break;
                }
                assert!(
                    host.lines("attempts").is_empty(),
                    "the manager went past the drain before it could be killed"
                );
                assert!(Instant::now() < deadline, "the drain never began");
                std::thread::sleep(Duration::from_millis(2));
            }
            manager.kill();
        }
        KillPoint::VmsStopped => {
            wait_until(
                "the reboot command runs",
                Duration::from_secs(120),
                &[&host],
                || !host.lines("attempts").is_empty(),
            );
            manager.kill();
            // The host did not go down: the reboot command dies with the manager.
            for pid in host.lines("attempts") {
                let _ = Command::new("kill").args(["-9", &pid]).status();
            }
            assert!(!runtime().block_on(inspect_vm(&node, &vm)).unwrap().running);
        }
        KillPoint::Rebooted => {
            wait_until(
                "the reboot command ran",
                Duration::from_secs(120),
                &[&host],
                || host.lines("reboots").len() == 1,
            );
            manager.kill();
            // The host comes back: a new boot.
            host.new_boot();
            let _ = std::fs::remove_file(host.root.join("reboots"));
            std::fs::write(host.root.join("reboots"), "done\n").unwrap();
        }
    }
    let _restarted = ManagerProc::start(&config, &node, &host);
    host.go();
    assert_finished(&config, &node, &host, "ready");
    let after = runtime().block_on(inspect_vm(&node, &vm)).unwrap();
    assert!(
        after.running && after.ip == ip,
        "{point:?}: VM not back on {ip}"
    );
    assert_eq!(blob_sum(&node, &vm, &disk), sum);
    call_on(&config, "delete_vm", json!([vm]));
    call_on(&config, "delete_disk", json!([disk]));
}

#[test]
fn a_manager_killed_after_cordon_is_finished_by_the_next() {
    killed_manager_is_finished_by_the_next(KillPoint::Cordoned, 51);
}

#[test]
fn a_manager_killed_after_stopping_vms_is_finished_by_the_next() {
    killed_manager_is_finished_by_the_next(KillPoint::VmsStopped, 52);
}

#[test]
fn a_manager_killed_after_the_reboot_is_finished_by_the_next() {
    killed_manager_is_finished_by_the_next(KillPoint::Rebooted, 53);
}

#[test]
fn a_failing_health_gate_keeps_slot_and_cordon_until_released() {
    let UnderWay {
        config,
        vm,
        node,
        disk,
        host,
        _manager,
        _dir,
        ..
    } = reboot_under_way(2, 61, Some("kernel fix"));
    // The VM's container is lost while the host is down.
    runtime().block_on(remove_container_forced(&node, &vm));
    host.go();
    wait_until(
        "the health gate reports",
        Duration::from_secs(120),
        &[&host],
        || {
            reboot_record(&config, &node).is_some_and(|r| {
                r["phase"] == "checking"
                    && r["health"]
                        .as_str()
                        .is_some_and(|h| h.contains("container is gone"))
            })
        },
    );
    assert_eq!(host.lines("reboots").len(), 1);
    assert_eq!(reboot_holders(&config), std::slice::from_ref(&node));
    assert_eq!(node_record_state(&config, &node), "cordoned");
    let table = String::from_utf8_lossy(&cpi_command(&config, &["nodes"]).stdout).to_string();
    assert!(table.contains("container is gone"), "{table}");
    assert!(table.contains("kernel fix"), "{table}");
    let log = std::fs::read_to_string(host.root.join("manager.log")).unwrap();
    assert!(log.contains("health gate does not pass"), "{log}");

    // The operator takes over: the slot is released, the cordon stays.
    let released = cpi_command(&config, &["nodes", "release", &node]);
    assert!(released.status.success(), "{released:?}");
    let said = String::from_utf8_lossy(&released.stdout).to_string();
    assert!(
        said.starts_with(&format!("node {node}: reboot slot")),
        "{said}"
    );
    assert!(
        said.contains(&format!("`cpi nodes uncordon {node}`")),
        "{said}"
    );
    assert!(reboot_holders(&config).is_empty());
    assert!(reboot_record(&config, &node).is_none());
    assert_eq!(node_record_state(&config, &node), "cordoned");
    let _ = cpi_command(&config, &["nodes", "uncordon", &node]);
    call_on(&config, "delete_vm", json!([vm]));
    call_on(&config, "delete_disk", json!([disk]));
}

#[test]
fn a_vm_the_director_deletes_during_the_reboot_does_not_hold_the_gate() {
    let UnderWay {
        config,
        vm,
        node,
        disk,
        host,
        _manager,
        _dir,
        ..
    } = reboot_under_way(2, 64, Some("kernel fix"));
    // The director deletes the VM while its host is down (a deployment deleted, say).
    call_on(&config, "delete_vm", json!([vm]));
    assert!(
        runtime().block_on(inspect_vm(&node, &vm)).is_none(),
        "delete_vm left the container"
    );
    host.go();
    assert_finished(&config, &node, &host, "ready");
    call_on(&config, "delete_disk", json!([disk]));
}

#[test]
fn an_operator_s_cordon_survives_the_reboot() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let node = node_names()[2].clone();
    let host = HostRoot::new(dir.path(), &node, false, true);
    assert!(
        cpi_command(&config, &["nodes", "cordon", &node])
            .status
            .success()
    );
    let _manager = ManagerProc::start(&config, &node, &host);
    host.flag();
    assert_finished(&config, &node, &host, "cordoned");
}

#[test]
fn release_and_max_unavailable_reject_bad_input() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let out = cpi_command(&config, &["nodes", "release", "n1", "--group", "a/b"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("a/b"));
    let out = cpi_command(&config, &["nodes", "reboot", "no-such-node"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no-such-node"));
    assert!(index_record(&config, "reboot/requests/no-such-node").is_none());
    let node = node_names()[0].clone();
    let out = cpi_command(&config, &["nodes", "reboot", &node, "--why", "a\nb"]);
    assert!(!out.status.success());
    assert!(index_record(&config, &format!("reboot/requests/{node}")).is_none());
    let long = "w".repeat(5000);
    assert!(
        cpi_command(&config, &["nodes", "reboot", &node, "--why", &long])
            .status
            .success()
    );
    let why = index_record(&config, &format!("reboot/requests/{node}")).unwrap()["why"].clone();
    assert!(why.as_str().unwrap().len() < 300, "{why}");
    let out = cpi_command(&config, &["nodes", "max-unavailable", "-1"]);
    assert!(!out.status.success());
    let out = cpi_command(&config, &["nodes", "max-unavailable", "2"]);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        index_record(&config, "reboot/groups/default/semaphore").unwrap()["max"],
        2
    );
}

#[test]
fn a_fleetlock_client_and_a_rebooting_node_share_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let node = node_names()[0].clone();
    let host = HostRoot::new(dir.path(), &node, true, true);
    let fleetlock = FleetLockServer::start(&config, &[]);
    assert_eq!(
        fleetlock_request(&fleetlock.address, "/v1/pre-reboot", "default", "zincati-1").0,
        200
    );

    let _manager = ManagerProc::start(&config, &node, &host);
    host.flag();
    wait_until(
        "the manager waits for the slot",
        Duration::from_secs(60),
        &[&host],
        || {
            std::fs::read_to_string(host.root.join("manager.log"))
                .unwrap_or_default()
                .contains("waiting for a slot")
        },
    );
    assert!(reboot_record(&config, &node).is_none());
    assert_eq!(node_record_state(&config, &node), "ready");
    assert_eq!(reboot_holders(&config), ["zincati-1"]);

    assert_eq!(
        fleetlock_request(
            &fleetlock.address,
            "/v1/steady-state",
            "default",
            "zincati-1"
        )
        .0,
        200
    );
    wait_until(
        "the node reboots",
        Duration::from_secs(120),
        &[&host],
        || !host.lines("attempts").is_empty(),
    );
    assert_eq!(reboot_holders(&config), std::slice::from_ref(&node));
    assert_eq!(
        fleetlock_request(&fleetlock.address, "/v1/pre-reboot", "default", "zincati-1").0,
        409
    );
    host.go();
    assert_finished(&config, &node, &host, "ready");
    assert_eq!(
        fleetlock_request(&fleetlock.address, "/v1/pre-reboot", "default", "zincati-1").0,
        200
    );
    assert_eq!(reboot_holders(&config), ["zincati-1"]);
}

#[test]
fn an_update_waiting_for_its_reboot_reboots_the_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = cluster_with_stemcell(dir.path());
    let node = node_names()[1].clone();
    let host = HostRoot::new(dir.path(), &node, false, true);
    // update_engine_client -status as Flatcar prints it, from a file the "reboot" clears.
    let engine = host.root.join("update_engine_client");
    let status = host.root.join("run/engine-status");
    std::fs::write(
        &engine,
        format!(
            "#!/bin/sh\ncat {} 2>/dev/null || printf 'CURRENT_OP=UPDATE_STATUS_IDLE\\n'\n",
            status.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&engine, std::fs::Permissions::from_mode(0o755)).unwrap();
    let _manager = ManagerProc::start_with_engine(&config, &node, &host, engine.to_str().unwrap());
    std::fs::write(
        &status,
        "LAST_CHECKED_TIME=1700000000\nPROGRESS=0.000000\nCURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION=4152.2.0\n",
    )
    .unwrap();
    wait_until(
        "the reboot begins",
        Duration::from_secs(60),
        &[&host],
        || reboot_record(&config, &node).is_some() || !host.lines("reboots").is_empty(),
    );
    assert_finished(&config, &node, &host, "ready");
    let log = std::fs::read_to_string(host.root.join("manager.log")).unwrap();
    assert!(log.contains("UPDATE_STATUS_UPDATED_NEED_REBOOT"), "{log}");
}

/// Node `node`'s row of `cpi nodes --json`.
fn listed_row(config: &Path, node: &str) -> Value {
    let listing: Value =
        serde_json::from_slice(&cpi_command(config, &["nodes", "--json"]).stdout).unwrap();
    listing["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == node)
        .cloned()
        .unwrap_or_else(|| panic!("{node} is not listed: {listing}"))
}

/// Node `node`'s line of the `cpi nodes` table.
fn table_line(config: &Path, node: &str) -> String {
    let table = String::from_utf8_lossy(&cpi_command(config, &["nodes"]).stdout).to_string();
    table
        .lines()
        .find(|l| l.split_whitespace().next() == Some(node))
        .unwrap_or_else(|| panic!("{node} is not in the table:\n{table}"))
        .to_string()
}

/// Waits until `cpi nodes --json` shows the manager of `node` in `state`; its row.
fn wait_for_manager(
    config: &Path,
    node: &str,
    state: &str,
    limit: Duration,
    host: &HostRoot,
) -> Value {
    let mut row = Value::Null;
    wait_until(
        &format!("cpi nodes shows the manager of {node} {state}"),
        limit,
        &[host],
        || {
            row = listed_row(config, node);
            row["manager"]["state"] == state
        },
    );
    row
}

/// The lease of the heartbeat of `node`'s manager (0: no heartbeat).
fn heartbeat_lease(config: &Path, node: &str) -> i64 {
    let key = reboot_keys_of(config).manager(node);
    runtime().block_on(async {
        let resp = etcd(config).await.client().get(key, None).await.unwrap();
        resp.kvs().first().map_or(0, |kv| kv.lease())
    })
}

/// The heartbeat's lease lost (as after an etcd outage longer than the lease): the
/// manager writes the heartbeat again on a new lease and keeps running.
fn assert_heartbeat_comes_back_on_a_new_lease(
    config: &Path,
    node: &str,
    host: &HostRoot,
    manager: &mut ManagerProc,
) {
    let lost = heartbeat_lease(config, node);
    assert_ne!(lost, 0);
    runtime().block_on(async {
        etcd(config)
            .await
            .client()
            .lease_revoke(lost)
            .await
            .unwrap()
    });
    assert_eq!(heartbeat_lease(config, node), 0);
    wait_until(
        "the heartbeat is back on a new lease",
        Duration::from_secs(30),
        &[host],
        || ![0, lost].contains(&heartbeat_lease(config, node)),
    );
    assert!(
        manager.child.try_wait().unwrap().is_none(),
        "the manager exited"
    );
    let log = std::fs::read_to_string(host.root.join("manager.log")).unwrap();
    assert!(log.contains("heartbeat was lost; written again"), "{log}");
    assert_eq!(listed_row(config, node)["manager"]["state"], "up");
}

/// Lets the node's reboot start, then kills its manager and the reboot command
/// (SIGKILL); when the manager was killed.
fn kill_while_rebooting(host: &HostRoot, manager: &mut ManagerProc) -> Instant {
    host.flag();
    wait_until(
        "the reboot command runs",
        Duration::from_secs(120),
        &[host],
        || !host.lines("attempts").is_empty(),
    );
    manager.kill();
    let killed = Instant::now();
    for pid in host.lines("attempts") {
        let _ = Command::new("kill").args(["-9", &pid]).status();
    }
    killed
}

/// `cpi nodes` shows the killed manager gone, last heard of between its start and its
/// kill, and the node's reboot stalled for want of a manager.
fn assert_listed_gone_while_rebooting(
    config: &Path,
    node: &str,
    host: &HostRoot,
    killed: Instant,
    started: Instant,
) {
    let row = wait_for_manager(config, node, "gone", Duration::from_secs(25), host);
    let ago = row["manager"]["last_seen_seconds_ago"].as_u64().unwrap();
    // Last heard of before it was killed, and after it started (etcd counts whole
    // seconds; the listing takes a moment).
    assert!(ago + 2 >= killed.elapsed().as_secs(), "{row}");
    assert!(ago <= started.elapsed().as_secs() + 1, "{row}");
    assert_eq!(row["reboot"]["phase"], "rebooting", "{row}");
    let line = table_line(config, node);
    assert!(line.contains("gone, seen "), "{line}");
    assert!(line.contains("rebooting since"), "{line}");
    assert!(line.contains("· no manager (last seen "), "{line}");
}

/// A clean stop (SIGTERM) takes the heartbeat down at once and says so.
fn assert_a_clean_stop_is_listed_at_once(config: &Path, node: &str, manager: &mut ManagerProc) {
    let term = Command::new("kill")
        .args(["-TERM", &manager.child.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = manager.child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    let row = listed_row(config, node);
    assert_eq!(row["manager"]["state"], "stopped", "{row}");
    assert!(row["manager"]["manager"]["stopped_at"].is_string(), "{row}");
    assert!(table_line(config, node).contains("stopped "));
}

#[test]
fn a_killed_manager_shows_as_gone_in_cpi_nodes_and_up_again_when_restarted() {
    let dir = tempfile::tempdir().unwrap();
    let config = moltencore_testkit::cluster::private_cluster(dir.path(), &[]);
    let node = node_names()[1].clone();
    let host = HostRoot::new(dir.path(), &node, true, true);
    let started = Instant::now();
    let mut manager = ManagerProc::start(&config, &node, &host);
    let row = wait_for_manager(&config, &node, "up", Duration::from_secs(30), &host);
    assert_eq!(
        row["manager"]["manager"]["pid"],
        manager.child.id(),
        "{row}"
    );
    assert!(table_line(&config, &node).contains(" up "));

    // Its lease lost (as after an etcd outage longer than the lease): it writes the
    // heartbeat again on a new lease and keeps running.
    assert_heartbeat_comes_back_on_a_new_lease(&config, &node, &host, &mut manager);

    // Killed while its node reboots: the reboot stalls, and `cpi nodes` says why.
    let killed = kill_while_rebooting(&host, &mut manager);
    // The heartbeat's lease (15 s) runs out; the deadline is that plus a margin.
    assert_listed_gone_while_rebooting(&config, &node, &host, killed, started);

    // Started again: its heartbeat is back, and it finishes the reboot.
    let mut restarted = ManagerProc::start(&config, &node, &host);
    let row = wait_for_manager(&config, &node, "up", Duration::from_secs(30), &host);
    assert_eq!(
        row["manager"]["manager"]["pid"],
        restarted.child.id(),
        "{row}"
    );
    assert!(!table_line(&config, &node).contains("no manager"));
    host.go();
    assert_finished(&config, &node, &host, "ready");

    // A clean stop (SIGTERM) takes the heartbeat down at once and says so.
    assert_a_clean_stop_is_listed_at_once(&config, &node, &mut restarted);
}

#[test]
fn release_names_a_node_to_uncordon_only_when_the_id_is_a_cordoned_node() {
    let dir = tempfile::tempdir().unwrap();
    let config = moltencore_testkit::cluster::private_cluster(dir.path(), &[]);
    let fleetlock = FleetLockServer::start(&config, &[]);
    assert_eq!(
        fleetlock_request(&fleetlock.address, "/v1/pre-reboot", "default", "zincati-3").0,
        200
    );
    let out = cpi_command(&config, &["nodes", "release", "zincati-3"]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(said.contains("FleetLock client zincati-3"), "{said}");
    assert!(said.contains("given back"), "{said}");
    assert!(!said.contains("uncordon"), "{said}");
    assert!(reboot_holders(&config).is_empty());

    let node = node_names()[2].clone();
    assert!(
        cpi_command(&config, &["nodes", "cordon", &node])
            .status
            .success()
    );
    let out = cpi_command(&config, &["nodes", "release", &node]);
    assert!(out.status.success(), "{out:?}");
    let said = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        said.contains(&format!("`cpi nodes uncordon {node}`")),
        "{said}"
    );
}
