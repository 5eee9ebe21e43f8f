//! Disk sizes hold, checked inside real VMs on the shared cluster: a persistent disk
//! filled from its VM runs out of space at its size (`ENOSPC`) while a neighbour VM of the
//! same node runs on and writes; `resize_disk` grows a detached disk's image and
//! filesystem with its data kept, and refuses to shrink; the ephemeral disk of a VM
//! created with `ephemeral_disk` holds that size and is cleaned up by `delete_vm`.

use moltencore_testkit::agent::{AgentVm, agent_stemcell, mount};
use moltencore_testkit::{
    cluster::{cluster_config, node_prefix, runtime},
    cpi::{call, call_error},
    docker::{
        blob_sum, disk_loops, disk_mount, disk_tree, exec_in, mount_disk_in, node_socket, sh,
        users_of_volume, vm_container, volume_on, write_blob,
    },
    index::index_record,
    requests::{agent_id, create_disk, create_vm, manual_network, static_vm, vm_on},
};
use serde_json::{Value, json};

/// Writes zeros into `dir` inside `vm` until the filesystem is full; the answer of `dd`
/// (which must fail) and the MiB written.
fn fill(node: &str, vm: &str, dir: &str) -> (String, u64) {
    let (code, out) = runtime().block_on(exec_in(
        node,
        vm,
        &format!("dd if=/dev/zero of={dir}/fill bs=1M 2>&1; sync; du -m {dir}/fill"),
    ));
    assert_eq!(code, 0, "{out}");
    let mib = out
        .lines()
        .last()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no size of the fill: {out}"));
    (out, mib)
}

/// The size in MiB of the filesystem mounted at `dir` inside `vm`, as `df` shows it.
fn df_mib(node: &str, vm: &str, dir: &str) -> u64 {
    let out = sh(node, vm, &format!("df -Pm {dir} | tail -1"));
    out.split_whitespace()
        .nth(1)
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("df of {dir}: {out}"))
}

/// Asserts `vm` on `node` runs and writes a file on its ephemeral disk.
fn runs_and_writes(node: &str, vm: &str) {
    assert!(vm_container(node, vm).running, "{vm} stopped");
    sh(
        node,
        vm,
        "echo alive > /var/vcap/data/alive && sync && cat /var/vcap/data/alive",
    );
}

#[test]
fn a_full_persistent_disk_is_enospc_and_the_neighbour_runs_on() {
    let (vm, node, _) = vm_on(0, 130, "size-full");
    let (neighbour, node2, _) = vm_on(0, 131, "size-neighbour");
    assert_eq!(node, node2);
    let disk = create_disk(json!([64, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let at = mount_disk_in(&node, &vm, &disk);
    let (out, mib) = fill(&node, &vm, &at);
    assert!(out.contains("No space left on device"), "{out}");
    // ext4's own blocks (journal, tables, reserved) take a few MiB of the 64.
    assert!(
        (40..=64).contains(&mib),
        "{mib} MiB written on a 64 MiB disk"
    );
    runs_and_writes(&node, &vm);
    runs_and_writes(&node, &neighbour);
    sh(
        &node,
        &vm,
        &format!("rm {at}/fill && echo after > {at}/after"),
    );
    call("detach_disk", json!([vm, disk]));
    for v in [&vm, &neighbour] {
        call("delete_vm", json!([v]));
    }
    call("delete_disk", json!([disk]));
}

#[test]
fn resize_grows_a_detached_disk_with_its_data_and_never_shrinks_it() {
    // The agent stemcell: its e2fsprogs grow the filesystem, its agent mounts the store.
    let vm = AgentVm::create(1, 132, "size-resize");
    let (cid, node) = (vm.cid.as_str(), vm.node.as_str());
    let store = "/var/vcap/store";
    let disk = create_disk(json!([1024, {}, cid]));
    let hint = call("attach_disk", json!([cid, disk]));
    mount(&vm, &disk, &hint);
    sh(
        node,
        cid,
        &format!("dd if=/dev/urandom of={store}/blob bs=1M count=8 2>/dev/null && sync"),
    );
    let sum = sh(node, cid, &format!("md5sum {store}/blob"));
    let before = df_mib(node, cid, store);
    assert!((900..=1024).contains(&before), "{before} MiB");
    // Attached: the director detaches first.
    let (kind, message, _) = call_error("resize_disk", json!([disk, 2048]));
    assert_eq!(kind, "Bosh::Clouds::NotSupported", "{message}");
    assert!(message.contains(cid), "{message}");
    let detach = |vm: &AgentVm| {
        vm.call("unmount_disk", json!([disk]));
        call("detach_disk", json!([vm.cid, disk]));
        vm.call("remove_persistent_disk", json!([disk]));
    };
    detach(&vm);

    assert_eq!(call("resize_disk", json!([disk, 2048])), Value::Null);
    let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    assert_eq!(record["size_mib"], 2048);
    // Again (a retried call) changes nothing.
    assert_eq!(call("resize_disk", json!([disk, 2048])), Value::Null);
    let hint = call("attach_disk", json!([cid, disk]));
    mount(&vm, &disk, &hint);
    assert_eq!(sh(node, cid, &format!("md5sum {store}/blob")), sum);
    let after = df_mib(node, cid, store);
    assert!(
        after >= before + 900 && after <= 2048,
        "{before} MiB before, {after} MiB after"
    );
    // It holds its new size and no more.
    let (out, mib) = fill(node, cid, store);
    assert!(out.contains("No space left on device"), "{out}");
    assert!((1500..=2048).contains(&mib), "{mib} MiB written on 2 GiB");
    sh(node, cid, &format!("rm {store}/fill"));
    detach(&vm);

    // Shrinking is refused and changes nothing.
    let (kind, message, _) = call_error("resize_disk", json!([disk, 1024]));
    assert_eq!(kind, "Bosh::Clouds::NotSupported", "{message}");
    let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    assert_eq!(record["size_mib"], 2048);
    let hint = call("attach_disk", json!([cid, disk]));
    mount(&vm, &disk, &hint);
    assert_eq!(sh(node, cid, &format!("md5sum {store}/blob")), sum);
    assert_eq!(df_mib(node, cid, store), after);
    detach(&vm);
    call("delete_vm", json!([cid]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_disk_never_attached_takes_its_new_size_at_its_first_attach() {
    let (vm, node, _) = vm_on(1, 133, "size-unattached");
    let disk = create_disk(json!([64, {}, vm]));
    assert_eq!(call("resize_disk", json!([disk, 128])), Value::Null);
    call("attach_disk", json!([vm, disk]));
    let at = mount_disk_in(&node, &vm, &disk);
    let size = df_mib(&node, &vm, &at);
    assert!((100..=128).contains(&size), "{size} MiB");
    call("detach_disk", json!([vm, disk]));
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

/// A VM of the shared stemcell on the node at `index` with the static `host` and an
/// ephemeral disk of `mib`, mounted (the start script mounts it before the stemcell's init,
/// not before create_vm answers): (cid, node).
fn vm_with_ephemeral(index: usize, host: u8, test: &str, mib: u64) -> (String, String) {
    let (node, prefix) = node_prefix(index);
    let ip = format!("{prefix}.{host}");
    let (vm, _) = create_vm(
        &agent_id(test),
        json!({"ephemeral_disk": mib}),
        manual_network(&ip),
        json!({}),
    );
    wait_for_data(&node, &vm, ".");
    (vm, node)
}

#[test]
fn the_ephemeral_disk_holds_its_size_and_goes_with_its_vm() {
    let (vm, node) = vm_with_ephemeral(2, 134, "size-ephemeral", 128);
    let (neighbour, _) = vm_with_ephemeral(2, 135, "size-ephemeral-n", 128);
    let volume = format!("{vm}-ephemeral");
    let size = df_mib(&node, &vm, "/var/vcap/data");
    assert!((100..=128).contains(&size), "{size} MiB");
    let (out, mib) = fill(&node, &vm, "/var/vcap/data");
    assert!(out.contains("No space left on device"), "{out}");
    assert!((90..=128).contains(&mib), "{mib} MiB written on 128 MiB");
    runs_and_writes(&node, &neighbour);
    sh(&node, &vm, "rm /var/vcap/data/fill");
    runs_and_writes(&node, &vm);
    assert!(
        users_of_volume(&node, &volume).is_empty(),
        "Docker mounts it"
    );
    // Not a persistent disk of the VM.
    assert_eq!(call("get_disks", json!([vm])), json!([]));
    assert_eq!(disk_loops(&volume).len(), 1, "one loop device");

    // A restart of the VM mounts it again with its data.
    assert_eq!(call("reboot_vm", json!([vm])), Value::Null);
    wait_for_data(&node, &vm, "alive");
    assert_eq!(df_mib(&node, &vm, "/var/vcap/data"), size);

    call("delete_vm", json!([vm]));
    assert!(disk_loops(&volume).is_empty(), "loop device left");
    assert!(volume_on(&node, &volume).is_none(), "ephemeral volume left");
    assert!(!disk_tree(&node).join(&vm).exists(), "disk folder left");
    assert!(
        !disk_tree(&node).join(".bound").join(&vm).exists(),
        "record left"
    );
    call("delete_vm", json!([neighbour]));
}

#[test]
fn without_a_size_the_ephemeral_disk_is_the_docker_volume_as_before() {
    let (vm, node, _) = vm_on(2, 136, "size-ephemeral-none");
    let volume = format!("{vm}-ephemeral");
    assert_eq!(users_of_volume(&node, &volume), vec![vm.clone()]);
    runs_and_writes(&node, &vm);
    assert!(disk_loops(&volume).is_empty());
    call("delete_vm", json!([vm]));
}

/// Waits (30 s at most) until `/var/vcap/data` is a mount in `vm` and its `<name>` is there.
fn wait_for_data(node: &str, vm: &str, name: &str) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    loop {
        let (code, _) = runtime().block_on(exec_in(
            node,
            vm,
            &format!(
                "grep -q ' /var/vcap/data ' /proc/self/mountinfo && test -e /var/vcap/data/{name}"
            ),
        ));
        if code == 0 {
            return;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "{vm}: /var/vcap/data/{name} not back"
        );
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

#[test]
fn the_agent_sets_up_its_data_on_a_sized_ephemeral_disk() {
    let vm = AgentVm::create_with(
        0,
        137,
        "size-ephemeral-agent",
        json!({"ephemeral_disk": 256}),
    );
    let (cid, node) = (vm.cid.as_str(), vm.node.as_str());
    let size = df_mib(node, cid, "/var/vcap/data");
    assert!((200..=256).contains(&size), "{size} MiB");
    // The agent made its folders there, on the disk's filesystem.
    sh(
        node,
        cid,
        "test -d /var/vcap/data/sys/log && test -d /var/vcap/data/lost+found",
    );
    call("delete_vm", json!([cid]));
    assert!(
        disk_loops(&format!("{cid}-ephemeral")).is_empty(),
        "loop device left"
    );
}

#[test]
fn a_stopped_vm_grows_a_resized_disk_at_its_next_start() {
    let ip = format!("{}.139", node_prefix(2).1);
    let vm = static_vm(&cluster_config(), &agent_stemcell(), "size-stopped", &ip);
    let node = node_prefix(2).0;
    let disk = create_disk(json!([64, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let sum = write_blob(&node, &vm, &disk, 1024);
    call("detach_disk", json!([vm, disk]));
    assert_eq!(call("resize_disk", json!([disk, 256])), Value::Null);
    let docker = |start: bool| {
        runtime().block_on(async {
            let d = node_socket(&node).await;
            if start {
                d.start_container(
                    &vm,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
            } else {
                d.stop_container(&vm, None::<bollard::query_parameters::StopContainerOptions>)
                    .await
            }
            .unwrap()
        })
    };
    docker(false);
    call("attach_disk", json!([vm, disk]));
    assert!(
        !vm_container(&node, &vm).running,
        "attach_disk started the VM"
    );
    docker(true);
    // The start script grows it before the stemcell's init, then drops the list.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    while runtime()
        .block_on(exec_in(
            &node,
            &vm,
            "test -e /var/vcap/bosh/moltencore-grow-disks",
        ))
        .0
        == 0
    {
        assert!(std::time::Instant::now() < deadline, "the grow list stays");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
    assert_eq!(blob_sum(&node, &vm, &disk), sum);
    let size = df_mib(&node, &vm, &disk_mount(&disk));
    assert!((200..=256).contains(&size), "{size} MiB after the start");
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}
