//! A BOSH VM as its agent and its jobs see it, with the real bosh-agent (the agent
//! stemcell of `ci/build-agent-stemcell`), spoken to over its HTTPS mbus as `bosh
//! create-env` does:
//! - a second disk attached to the running VM beside the one the agent mounted, mounted by
//!   the agent too, then detached: the agent never restarts;
//! - after every restart nobody drove (reboot_vm, a dockerd restart, PID 1 killed and
//!   revived by the restart policy, the node rebooted by its reboot manager), the store is
//!   a mount of the disk before the job starts again, the data is there, nothing went
//!   into the container's own `/var/vcap/store`, and where the restart was planned the
//!   job's drain and stop ran first;
//! - reboot_vm alone: the job's drain script and stop ran before the restart (read from
//!   the disk itself, whatever became of the store).
//!
//! Every check is made inside the VM. These tests restart daemons of the shared cluster,
//! so they take turns (and this binary runs alone, as test binaries run one by one).

use std::time::Duration;

use moltencore_testkit::agent::{AgentVm, mount, wait_for};
use moltencore_testkit::cluster::cluster_config;
use moltencore_testkit::cpi::call;
use moltencore_testkit::index::reboot_record;
use moltencore_testkit::reboots::{Managers, boot_id, flag, harness};
use moltencore_testkit::requests::create_disk;
use serde_json::{Value, json};

static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[test]
fn a_second_disk_attaches_live_beside_the_mounted_first() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let vm = AgentVm::create(0, 81, "live-attach");
    let first = create_disk(json!([64, {}, vm.cid]));
    let hint = call("attach_disk", json!([vm.cid, first]));
    assert_eq!(hint, json!(format!("/warden-cpi-dev/{first}")));
    mount(&vm, &first, &hint);
    assert!(
        vm.store_source().is_some_and(|s| s.contains(&first)),
        "the agent did not mount {first} on the store: {:?}",
        vm.store_source()
    );
    vm.shell("echo written-before > /var/vcap/store/kept");
    let agent = vm.agent_pid();

    // The director's disk change begins so: the new disk beside the old one, mounted by
    // the agent next to the store.
    let second = create_disk(json!([128, {}, vm.cid]));
    let hint = call("attach_disk", json!([vm.cid, second]));
    assert_eq!(
        vm.agent_pid(),
        agent,
        "attaching a disk restarted the agent"
    );
    let settings: Value =
        serde_json::from_str(&vm.shell("cat /var/vcap/bosh/warden-cpi-agent-env.json")).unwrap();
    assert_eq!(
        settings["disks"]["persistent"],
        json!({first.as_str(): format!("/warden-cpi-dev/{first}"), second.as_str(): format!("/warden-cpi-dev/{second}")})
    );
    mount(&vm, &second, &hint);
    let mounts = vm.shell("cat /proc/self/mountinfo");
    let target = mounts
        .lines()
        .find(|l| l.split(' ').nth(4) == Some("/var/vcap/store_migration_target"))
        .unwrap_or_else(|| panic!("the agent did not mount {second} beside the store: {mounts}"));
    assert!(target.contains(&second), "{target}");
    vm.shell("echo on-the-second > /var/vcap/store_migration_target/mark");
    assert_eq!(vm.read_on_disk(&second, "mark").trim(), "on-the-second");
    let mut both = vec![first.clone(), second.clone()];
    both.sort();
    assert_eq!(call("get_disks", json!([vm.cid])), json!(both));

    // And it leaves live: the agent unmounts it, the CPI detaches it.
    vm.call("unmount_disk", json!([second]));
    call("detach_disk", json!([vm.cid, second]));
    vm.call("remove_persistent_disk", json!([second]));
    assert_eq!(vm.agent_pid(), agent, "the agent restarted");
    assert_eq!(
        vm.try_shell(&format!("test -e /warden-cpi-dev/{second}")).0,
        1,
        "the detached disk is still in the VM"
    );
    assert!(
        vm.store_source().is_some_and(|s| s.contains(&first)),
        "the store is no longer the first disk: {:?}",
        vm.store_source()
    );
    assert_eq!(
        vm.shell("cat /var/vcap/store/kept").trim(),
        "written-before"
    );
    assert_eq!(call("get_disks", json!([vm.cid])), json!([first]));
    call("delete_disk", json!([second]));
    call("delete_vm", json!([vm.cid]));
    call("delete_disk", json!([first]));
}

#[test]
fn the_agent_migrates_the_store_to_a_new_disk_live() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let vm = AgentVm::create(0, 82, "migrate");
    let old = create_disk(json!([64, {}, vm.cid]));
    let hint = call("attach_disk", json!([vm.cid, old]));
    mount(&vm, &old, &hint);
    vm.shell(
        "mkdir -p /var/vcap/store/job/data && echo kept > /var/vcap/store/job/data/file && \
         chown 1000:1000 /var/vcap/store/job/data/file && chmod 0640 /var/vcap/store/job/data/file && \
         ln -s data/file /var/vcap/store/job/link",
    );
    let agent = vm.agent_pid();

    // A persistent disk change as the director makes it: the new disk beside the old,
    // mounted by the agent, the data migrated by the agent, the old disk unmounted,
    // detached and deleted.
    let new = create_disk(json!([128, {}, vm.cid]));
    let hint = call("attach_disk", json!([vm.cid, new]));
    mount(&vm, &new, &hint);
    vm.call("migrate_disk", json!([old, new]));
    vm.call("unmount_disk", json!([old]));
    call("detach_disk", json!([vm.cid, old]));
    vm.call("remove_persistent_disk", json!([old]));
    call("delete_disk", json!([old]));

    assert_eq!(vm.agent_pid(), agent, "the agent restarted");
    assert_eq!(
        vm.store_source().as_deref(),
        Some(format!("/warden-cpi-dev/{new}").as_str()),
        "the store is not the new disk"
    );
    assert_eq!(
        vm.shell("stat -c '%u %a' /var/vcap/store/job/data/file && cat /var/vcap/store/job/link")
            .split_whitespace()
            .collect::<Vec<_>>(),
        ["1000", "640", "kept"],
        "the data did not reach the new disk as it was"
    );
    assert_eq!(vm.read_on_disk(&new, "job/data/file").trim(), "kept");
    // The store has the new disk's size: 128 MiB, not the node's.
    let kib: u64 = vm
        .shell("df -k /var/vcap/store | awk 'NR == 2 { print $2 }'")
        .trim()
        .parse()
        .unwrap();
    assert!((100_000..=131_072).contains(&kib), "store of {kib} KiB");
    assert_eq!(
        vm.try_shell(&format!("test -e /warden-cpi-dev/{old}")).0,
        1,
        "the old disk is still in the VM"
    );
    assert_eq!(call("get_disks", json!([vm.cid])), json!([new]));
    let settings: Value =
        serde_json::from_str(&vm.shell("cat /var/vcap/bosh/warden-cpi-agent-env.json")).unwrap();
    assert_eq!(
        settings["disks"]["persistent"],
        json!({new.as_str(): format!("/warden-cpi-dev/{new}")})
    );

    // And the agent takes the new disk as its store after a restart.
    call("reboot_vm", json!([vm.cid]));
    vm.wait_ready(Duration::from_secs(120));
    assert_eq!(
        vm.store_source().as_deref(),
        Some(format!("/warden-cpi-dev/{new}").as_str())
    );
    assert_eq!(vm.shell("cat /var/vcap/store/job/data/file").trim(), "kept");
    call("delete_vm", json!([vm.cid]));
    call("delete_disk", json!([new]));
}

/// A job under monit that writes into the store: `start` and `stop` lines in
/// `probe/log` at each start and stop, a heartbeat in `probe/beat`, and a drain script
/// that leaves `drained` in the log.
const PROBE_JOB: &str = r#"set -e
mkdir -p /var/vcap/jobs/probe/bin /var/vcap/sys/run/probe
cat > /var/vcap/jobs/probe/bin/ctl <<'EOF'
#!/bin/bash
case $1 in
  start)
    mkdir -p /var/vcap/store/probe /var/vcap/sys/run/probe
    echo start >> /var/vcap/store/probe/log
    (while true; do date +%s > /var/vcap/store/probe/beat; sleep 1; done) </dev/null >/dev/null 2>&1 &
    echo $! > /var/vcap/sys/run/probe/probe.pid ;;
  stop)
    echo stop >> /var/vcap/store/probe/log
    kill "$(cat /var/vcap/sys/run/probe/probe.pid)"
    rm -f /var/vcap/sys/run/probe/probe.pid ;;
esac
EOF
cat > /var/vcap/jobs/probe/bin/drain <<'EOF'
#!/bin/bash
echo drained >> /var/vcap/store/probe/log
echo 0
EOF
chmod 755 /var/vcap/jobs/probe/bin/ctl /var/vcap/jobs/probe/bin/drain
cat > /var/vcap/monit/job/0000_probe.monitrc <<'EOF'
check process probe with pidfile /var/vcap/sys/run/probe/probe.pid
  start program "/var/vcap/jobs/probe/bin/ctl start"
  stop program "/var/vcap/jobs/probe/bin/ctl stop"
  group vcap
EOF
/var/vcap/bosh/bin/monit reload
"#;

/// Whether monit shows the probe job running.
fn probe_running(vm: &AgentVm) -> bool {
    let (_, summary) = vm.try_shell("/var/vcap/bosh/bin/monit summary");
    summary
        .lines()
        .any(|l| l.contains("'probe'") && l.trim_end().ends_with("running"))
}

/// The probe's log lines, read from the disk itself (its hint), so also while the store
/// is not mounted.
fn probe_log(vm: &AgentVm, disk: &str) -> Vec<String> {
    vm.read_on_disk(disk, "probe/log")
        .lines()
        .map(str::to_string)
        .collect()
}

/// After a restart: the agent answers, the store is a mount of `disk` again, the job runs
/// and beats on it, and the container's own store stayed empty.
fn assert_store_back(vm: &AgentVm, disk: &str, what: &str) {
    vm.wait_ready(Duration::from_secs(120));
    assert!(
        vm.store_source().is_some_and(|s| s.contains(disk)),
        "after {what}: the store is not a mount of {disk}: {:?}",
        vm.store_source()
    );
    assert_eq!(
        vm.shell("cat /var/vcap/store/kept").trim(),
        "written-before",
        "after {what}: the data written before is not on the store"
    );
    wait_for(
        &format!("after {what}: the job runs"),
        Duration::from_secs(90),
        || probe_running(vm),
    );
    let beat = vm.shell("cat /var/vcap/store/probe/beat");
    wait_for(
        &format!("after {what}: the job beats on the disk"),
        Duration::from_secs(10),
        || vm.shell("cat /var/vcap/store/probe/beat") != beat,
    );
    assert_eq!(
        vm.store_underneath().trim(),
        "",
        "after {what}: something was written into the container's own /var/vcap/store"
    );
}

/// The log lines added since `before` lines.
fn new_lines(vm: &AgentVm, disk: &str, before: usize) -> Vec<String> {
    probe_log(vm, disk).split_off(before)
}

/// A VM of the agent stemcell on the node at `index` with a disk the agent mounted, data
/// written on it and the probe job running; (VM, disk).
fn vm_with_probe(index: usize, host: u8, test: &str) -> (AgentVm, String) {
    let vm = AgentVm::create(index, host, test);
    let disk = create_disk(json!([64, {}, vm.cid]));
    let hint = call("attach_disk", json!([vm.cid, disk]));
    mount(&vm, &disk, &hint);
    vm.shell("echo written-before > /var/vcap/store/kept");
    vm.shell(PROBE_JOB);
    // monit reloads in the background; it starts the new job on one of its next cycles.
    wait_for("the probe job runs", Duration::from_secs(60), || {
        vm.try_shell("/var/vcap/bosh/bin/monit start probe");
        probe_running(&vm)
    });
    (vm, disk)
}

#[test]
fn reboot_vm_drains_and_stops_the_jobs_before_the_restart() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (vm, disk) = vm_with_probe(1, 83, "graceful");
    let before = probe_log(&vm, &disk).len();
    call("reboot_vm", json!([vm.cid]));
    vm.wait_ready(Duration::from_secs(120));
    wait_for("the job starts again", Duration::from_secs(90), || {
        probe_log(&vm, &disk).len() > before + 2 || probe_running(&vm)
    });
    let lines = new_lines(&vm, &disk, before);
    assert_eq!(
        lines.iter().take(2).map(String::as_str).collect::<Vec<_>>(),
        ["drained", "stop"],
        "the job's drain script and stop did not run before the restart: {lines:?}"
    );
    call("detach_disk", json!([vm.cid, disk]));
    call("delete_vm", json!([vm.cid]));
    call("delete_disk", json!([disk]));
}

#[test]
fn the_store_is_mounted_again_after_every_restart_nobody_drove() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (vm, disk) = vm_with_probe(0, 82, "restarts");

    // reboot_vm (bosh cck): planned, so the job drains and stops first.
    let before = probe_log(&vm, &disk).len();
    call("reboot_vm", json!([vm.cid]));
    assert_store_back(&vm, &disk, "reboot_vm");
    assert_eq!(
        new_lines(&vm, &disk, before),
        ["drained", "stop", "start"],
        "reboot_vm"
    );

    // dockerd restarted: Docker stops the container (SIGTERM to runit) and starts it.
    let before = probe_log(&vm, &disk).len();
    harness(&["restart-dockerd", "1"]);
    assert_store_back(&vm, &disk, "a dockerd restart");
    assert_eq!(
        new_lines(&vm, &disk, before).last().map(String::as_str),
        Some("start")
    );

    // PID 1 killed: the restart policy brings the container back.
    let before = probe_log(&vm, &disk).len();
    let pid = moltencore_testkit::docker::vm_container(&vm.node, &vm.cid).pid;
    let killed = std::process::Command::new("kill")
        .args(["-9", &pid.to_string()])
        .status();
    assert!(
        killed.unwrap().success(),
        "cannot kill the VM's first process {pid}"
    );
    wait_for(
        "the VM has a new first process",
        Duration::from_secs(60),
        || moltencore_testkit::docker::vm_container(&vm.node, &vm.cid).pid != pid,
    );
    assert_store_back(&vm, &disk, "a killed PID 1");
    assert_eq!(
        new_lines(&vm, &disk, before).last().map(String::as_str),
        Some("start")
    );

    // The node rebooted by its reboot manager: drained and stopped before, mounts gone
    // with the reboot and made again by node-prep.
    let before = probe_log(&vm, &disk).len();
    let boot = boot_id(1);
    {
        let _managers = Managers::start(&[1]);
        flag(1);
        wait_for("n1 rebooted and finished", Duration::from_secs(300), || {
            boot_id(1) != boot && reboot_record(&cluster_config(), &vm.node).is_none()
        });
    }
    assert_store_back(&vm, &disk, "the node's reboot");
    assert_eq!(
        new_lines(&vm, &disk, before),
        ["drained", "stop", "start"],
        "the node's reboot"
    );

    call("detach_disk", json!([vm.cid, disk]));
    call("delete_vm", json!([vm.cid]));
    call("delete_disk", json!([disk]));
}
