//! Black-box tests of the persistent disk methods through the built `cpi` binary, checked
//! on the nodes: data survives detach/attach, VM re-creation and moves between nodes; the
//! VM runs on across attach and detach (same container, same first process), the disk a
//! block device in its folder of the node's disk tree (formatted on its first attach, and
//! mounted in the VM to read and write it); bad attaches leave the VM untouched; snapshots
//! hold the contents of their time.

use moltencore_testkit::{
    cluster::{cluster_config, node_names, node_prefix, private_cluster, runtime},
    cpi::{
        answer_on, call, call_error, call_on, create_vm_retrying, expect_result, kill_cpi_when,
        kill_create_vm_once_its_container_exists, run_cpi,
    },
    docker::{
        VmContainer, agent_settings, containers_labelled, disk_devices, disk_loops, disk_tree,
        exec_in, leftovers_of_agent, mount_disk_in, node_of_container, node_socket,
        remove_outside_cpi, sh, users_of_volume, vm_container, volume_on, write_blob,
    },
    index::{
        index_record, index_records_of_agent, make_node_unreachable, put_index_record,
        put_node_record,
    },
    requests::{
        agent_id, create_disk, manual_network, request, shared_stemcell, static_vm_request, vm_on,
    },
};
use serde_json::{Value, json};

/// Cids of the issued shape that no object has.
const UNKNOWN_DISK: &str = "disk-00000000-0000-0000-0000-000000000000";
const UNKNOWN_VM: &str = "vm-00000000-0000-0000-0000-000000000000";

/// Writes random data and a few files into the disk inside the VM (mounted first);
/// returns their checksum.
fn fill_disk(node: &str, vm: &str, disk: &str) -> String {
    let d = mount_disk_in(node, vm, disk);
    sh(
        node,
        vm,
        &format!(
            "dd if=/dev/urandom of={d}/blob bs=64k count=40 2>/dev/null && mkdir -p {d}/sub && \
             echo hello > {d}/sub/hello.txt && ln -sf sub/hello.txt {d}/link"
        ),
    );
    checksum(node, vm, disk)
}

/// The checksum of what [`fill_disk`] wrote, read on the disk inside the VM (mounted
/// first: a detach unmounts it). The count of the disk's root entries takes in the
/// filesystem's `lost+found`.
fn checksum(node: &str, vm: &str, disk: &str) -> String {
    let d = mount_disk_in(node, vm, disk);
    sh(
        node,
        vm,
        &format!("cd {d} && md5sum blob sub/hello.txt && readlink link && ls | wc -l"),
    )
}

/// Root-filesystem files the agent keeps, and ephemeral data, written in the VM: an
/// attach or detach must leave them as they are.
fn write_kept_files(node: &str, vm: &str) {
    sh(
        node,
        vm,
        "mkdir -p /var/vcap/instance/dns && echo '{\"trusted_certs\":\"x\"}' > /var/vcap/bosh/update_settings.json && \
         echo '{\"records\":[[\"10.0.0.1\",\"a.b\"]]}' > /var/vcap/instance/dns/records.json && \
         echo ephemeral > /var/vcap/data/keep.txt",
    );
}

/// After attach_disk: the same container and first process with the same address, the
/// disk a block device in the VM's folder and in the agent settings, the kept files there.
fn assert_attached_in_place(
    node: &str,
    vm: &str,
    disk: &str,
    before: &VmContainer,
    ip: &str,
) -> VmContainer {
    let after = vm_container(node, vm);
    assert_eq!(
        (&before.id, before.pid),
        (&after.id, after.pid),
        "attaching restarted the VM"
    );
    assert_eq!(disk_devices(node, disk), vec![vm.to_string()]);
    sh(node, vm, &format!("test -b /warden-cpi-dev/{disk}"));
    assert_eq!(
        (
            after.ip.as_str(),
            after.mac.as_str(),
            after.hostname.as_str()
        ),
        (
            before.ip.as_str(),
            before.mac.as_str(),
            before.hostname.as_str()
        )
    );
    assert_eq!(after.ip, ip);
    let settings = agent_settings(node, vm);
    assert_eq!(
        settings["disks"]["persistent"][disk],
        format!("/warden-cpi-dev/{disk}")
    );
    assert_eq!(settings["networks"]["default"]["ip"], ip);
    let kept = sh(
        node,
        vm,
        "cat /var/vcap/bosh/update_settings.json /var/vcap/instance/dns/records.json /var/vcap/data/keep.txt",
    );
    assert!(
        kept.contains("trusted_certs") && kept.contains("a.b") && kept.contains("ephemeral"),
        "{kept}"
    );
    assert_eq!(call("get_disks", json!([vm])), json!([disk]));
    after
}

/// After detach_disk: no device in the VM's folder nor loop device, nothing in the agent
/// settings, the VM's first process (`pid`) and the kept files as they were.
fn assert_detached_in_place(node: &str, vm: &str, disk: &str, pid: i64) {
    assert_eq!(call("get_disks", json!([vm])), json!([]));
    assert!(
        disk_devices(node, disk).is_empty(),
        "still a device in the VM's folder after detach"
    );
    assert_eq!(
        disk_loops(disk),
        Vec::<String>::new(),
        "loop device left after detach"
    );
    sh(node, vm, &format!("test ! -e /warden-cpi-dev/{disk}"));
    assert_eq!(
        vm_container(node, vm).pid,
        pid,
        "detaching restarted the VM"
    );
    assert_eq!(agent_settings(node, vm)["disks"]["persistent"], json!({}));
    let kept = sh(
        node,
        vm,
        "cat /var/vcap/bosh/update_settings.json /var/vcap/data/keep.txt",
    );
    assert!(
        kept.contains("trusted_certs") && kept.contains("ephemeral"),
        "{kept}"
    );
}

/// delete_vm with the disk attached: the disk survives, detached, and the VM's folder of
/// the disk tree is gone.
fn assert_delete_vm_leaves_the_disk_detached(node: &str, vm: &str, disk: &str) {
    call("delete_vm", json!([vm]));
    assert_eq!(call("has_disk", json!([disk])), Value::Bool(true));
    assert!(
        disk_devices(node, disk).is_empty(),
        "still a device in the VM's folder after delete_vm"
    );
    assert_eq!(
        disk_loops(disk),
        Vec::<String>::new(),
        "loop device left after delete_vm"
    );
    assert!(
        !disk_tree(node).join(vm).exists(),
        "the VM's folder of the tree is left"
    );
}

#[test]
fn data_and_identity_survive_detach_and_attach() {
    let (vm, node, ip) = vm_on(0, 60, "attach");
    let disk = create_disk(json!([64, {}, vm]));
    assert_eq!(call("has_disk", json!([disk])), Value::Bool(true));
    write_kept_files(&node, &vm);
    let before = vm_container(&node, &vm);

    let hint = call("attach_disk", json!([vm, disk]));
    assert_eq!(hint, json!(format!("/warden-cpi-dev/{disk}")));
    let after = assert_attached_in_place(&node, &vm, &disk, &before, &ip);

    // Attaching again changes nothing and answers the same hint.
    assert_eq!(call("attach_disk", json!([vm, disk])), hint);
    assert_eq!(vm_container(&node, &vm).id, after.id);

    let sum = fill_disk(&node, &vm, &disk);
    assert_eq!(call("detach_disk", json!([vm, disk])), Value::Null);
    assert_detached_in_place(&node, &vm, &disk, after.pid);
    // Detaching a detached disk, or an unknown one, is fine.
    assert_eq!(call("detach_disk", json!([vm, disk])), Value::Null);
    assert_eq!(call("detach_disk", json!([vm, UNKNOWN_DISK])), Value::Null);

    call("attach_disk", json!([vm, disk]));
    assert_eq!(checksum(&node, &vm, &disk), sum);
    assert_eq!(vm_container(&node, &vm).ip, ip);

    // delete_disk of an attached disk is refused, naming the VM.
    let (kind, message, _) = call_error("delete_disk", json!([disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(message.contains(&vm), "{message}");

    // delete_vm with the disk attached: the disk survives and is detached.
    assert_delete_vm_leaves_the_disk_detached(&node, &vm, &disk);
    let (vm2, node2, _) = vm_on(0, 61, "attach-again");
    assert_eq!(node2, node);
    call("attach_disk", json!([vm2, disk]));
    assert_eq!(checksum(&node, &vm2, &disk), sum);
    call("delete_vm", json!([vm2]));
    assert_eq!(call("delete_disk", json!([disk])), Value::Null);
    assert_eq!(call("has_disk", json!([disk])), Value::Bool(false));
    assert!(volume_on(&node, &disk).is_none(), "volume gone");
    assert_eq!(call("delete_disk", json!([disk])), Value::Null);
}

#[test]
fn create_vm_with_disk_cids_mounts_them_and_data_survives() {
    let (vm, node, _) = vm_on(1, 60, "recreate");
    let disk = create_disk(json!([64, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let sum = fill_disk(&node, &vm, &disk);
    call("delete_vm", json!([vm]));
    // As create-env does on re-creation: create_vm with disk_cids, then attach again.
    let agent = agent_id("recreate-2");
    let req = serde_json::json!({"method": "create_vm",
        "arguments": [agent, shared_stemcell(), {}, {"d": {"type": "dynamic"}}, [disk], {}],
        "api_version": 2})
    .to_string();
    let result = expect_result(&req, Some(&cluster_config()));
    let vm2 = result[0].as_str().unwrap().to_string();
    let node2 = runtime().block_on(node_of_container(&vm2)).unwrap();
    assert_eq!(node2, node, "the VM went to its disk's node");
    assert_eq!(
        agent_settings(&node2, &vm2)["disks"]["persistent"][&disk],
        format!("/warden-cpi-dev/{disk}")
    );
    assert_eq!(checksum(&node2, &vm2, &disk), sum);
    assert_eq!(
        call("attach_disk", json!([vm2, disk])),
        json!(format!("/warden-cpi-dev/{disk}"))
    );
    call("delete_vm", json!([vm2]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_disk_moves_to_a_vm_on_another_node_with_its_data() {
    let (vm1, node1, _) = vm_on(0, 62, "move-src");
    let (vm2, node2, _) = vm_on(2, 62, "move-dst");
    assert_ne!(node1, node2);
    let disk = create_disk(json!([64, {}, vm1]));
    call("attach_disk", json!([vm1, disk]));
    let sum = fill_disk(&node1, &vm1, &disk);
    call("detach_disk", json!([vm1, disk]));
    // Attached elsewhere is refused while attached; after detach it moves.
    call("attach_disk", json!([vm2, disk]));
    assert_eq!(checksum(&node2, &vm2, &disk), sum);
    assert!(volume_on(&node1, &disk).is_none(), "source removed");
    let v = volume_on(&node2, &disk).expect("the disk on the target node");
    assert_eq!(v.labels["moltencore.disk.cid"], disk);
    let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    assert_eq!(record["node"], node2.as_str());
    assert!(record.get("old_copy_on").is_none(), "{record}");
    let (kind, message, _) = call_error("attach_disk", json!([vm1, disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(
        message.contains(&vm2),
        "attached elsewhere names the VM: {message}"
    );
    for vm in [&vm1, &vm2] {
        call("delete_vm", json!([vm]));
    }
    call("delete_disk", json!([disk]));
}

#[test]
fn attaching_an_unknown_disk_leaves_the_vm_running_and_unchanged() {
    let (vm, node, _) = vm_on(1, 63, "unknown-disk");
    let before = vm_container(&node, &vm);
    let (kind, message, _) = call_error("attach_disk", json!([vm, UNKNOWN_DISK]));
    assert_eq!(kind, "Bosh::Clouds::DiskNotFound");
    assert!(message.contains(UNKNOWN_DISK), "{message}");
    assert_eq!(
        vm_container(&node, &vm).id,
        before.id,
        "the container was not touched"
    );
    let (kind, _, _) = call_error("attach_disk", json!([UNKNOWN_VM, UNKNOWN_DISK]));
    assert_eq!(kind, "Bosh::Clouds::VMNotFound");
    call("delete_vm", json!([vm]));
}

#[test]
fn metadata_resize_update_and_placement_of_disks() {
    let (vm, node, _) = vm_on(2, 64, "disk-misc");
    let disk = create_disk(json!([100, {}, vm]));
    let v = volume_on(&node, &disk).expect("the disk's volume");
    assert_eq!(v.labels["moltencore.disk.size_mib"], "100");
    call(
        "set_disk_metadata",
        json!([disk, {"deployment": "cf", "instance_index": 0}]),
    );
    let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    assert_eq!(
        record["metadata"],
        json!({"deployment": "cf", "instance_index": 0})
    );
    assert_eq!(record["node"], node.as_str());
    assert_eq!(call("resize_disk", json!([disk, 200])), Value::Null);
    assert_eq!(
        index_record(&cluster_config(), &format!("disks/{disk}")).unwrap()["size_mib"],
        200
    );
    let (kind, _, _) = call_error("resize_disk", json!([disk, 50]));
    assert_eq!(kind, "Bosh::Clouds::NotSupported");
    // Once it holds its image, the image grows (its filesystem at the next attach; see
    // tests/disk_sizes.rs); attached, it is refused.
    call("attach_disk", json!([vm, disk]));
    let (kind, message, retry) = call_error("resize_disk", json!([disk, 300]));
    assert_eq!(kind, "Bosh::Clouds::NotSupported", "{message}");
    assert!(message.contains(&vm) && !retry, "{message}");
    call("detach_disk", json!([vm, disk]));
    assert_eq!(call("resize_disk", json!([disk, 300])), Value::Null);
    assert_eq!(
        index_record(&cluster_config(), &format!("disks/{disk}")).unwrap()["size_mib"],
        300
    );
    let (kind, _, _) = call_error("update_disk", json!([disk, 300, {}]));
    assert_eq!(kind, "Bosh::Clouds::NotSupported");
    // Pinned by cloud_properties.node, without a VM.
    let other = node_names().into_iter().find(|n| *n != node).unwrap();
    let pinned = create_disk(json!([10, {"node": other}, null]));
    assert!(volume_on(&other, &pinned).is_some());
    let floating = create_disk(json!([10, {}, ""]));
    assert_eq!(call("has_disk", json!([floating])), Value::Bool(true));
    for d in [&disk, &pinned, &floating] {
        call("delete_disk", json!([d]));
    }
    call("delete_vm", json!([vm]));
}

#[test]
fn a_snapshot_holds_the_contents_of_its_time() {
    let (vm, node, _) = vm_on(0, 65, "snapshot");
    let disk = create_disk(json!([100, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let d = mount_disk_in(&node, &vm, &disk);
    // Synced, as the snapshot copies the disk's image: what is written on the device,
    // not what the VM's page cache still holds (as a snapshot of any IaaS's volume).
    sh(&node, &vm, &format!("echo version-1 > {d}/state && sync"));
    let snap = call(
        "snapshot_disk",
        json!([disk, {"deployment": "cf", "index": 3, "director_name": "d"}]),
    )
    .as_str()
    .unwrap()
    .to_string();
    sh(&node, &vm, &format!("echo version-2 > {d}/state && sync"));
    let content = runtime().block_on(async {
        let docker = node_socket(&node).await;
        let v = docker.inspect_volume(&snap).await.unwrap();
        assert_eq!(v.labels["moltencore.snapshot.disk"], disk);
        assert_eq!(v.labels["moltencore.snapshot.meta.index"], "3");
        // Copied hole for hole: the image of a 100 MiB disk that holds a file system and
        // one file takes a few MiB, not 100.
        let image = std::path::Path::new(&v.mountpoint).join(moltencore::disk_mounts::IMAGE_FILE);
        let m = std::fs::metadata(&image).unwrap();
        assert_eq!(
            m.len(),
            100 << 20,
            "the snapshot's image is not the disk's size"
        );
        let allocated = std::os::unix::fs::MetadataExt::blocks(&m) * 512;
        assert!(
            allocated < 40 << 20,
            "the snapshot's image allocates {allocated} bytes"
        );
        read_in_snapshot(&node, &snap, "state").await
    });
    assert_eq!(content, "version-1\n");
    assert_eq!(sh(&node, &vm, &format!("cat {d}/state")), "version-2\n");
    assert_eq!(call("delete_snapshot", json!([snap])), Value::Null);
    assert!(volume_on(&node, &snap).is_none());
    assert_eq!(call("delete_snapshot", json!([snap])), Value::Null);
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

/// The content of the file `path` on the disk a snapshot holds: the snapshot's volume
/// `snap` on `node` holds a copy of the disk's image, which the test mounts read-only on
/// the host (through a loop device) to read it.
async fn read_in_snapshot(node: &str, snap: &str, path: &str) -> String {
    let volume = node_socket(node).await.inspect_volume(snap).await.unwrap();
    let image = std::path::Path::new(&volume.mountpoint).join(moltencore::disk_mounts::IMAGE_FILE);
    let at = tempfile::tempdir().unwrap();
    let mounted = std::process::Command::new("mount")
        .args(["-o", "loop,ro"])
        .arg(&image)
        .arg(at.path())
        .output()
        .unwrap();
    assert!(
        mounted.status.success(),
        "mount {}: {}",
        image.display(),
        String::from_utf8_lossy(&mounted.stderr)
    );
    let content = std::fs::read_to_string(at.path().join(path));
    let unmounted = std::process::Command::new("umount").arg(at.path()).status();
    assert!(
        unmounted.is_ok_and(|s| s.success()),
        "umount {}",
        at.path().display()
    );
    content.unwrap_or_else(|e| panic!("{path} in snapshot {snap}: {e}"))
}

/// A container of the test stemcell with one volume `bind` (`volume:path[:ro]`), no
/// network, and `labels`, that runs `true`.
fn plain_container(bind: &str, labels: &[(&str, &str)]) -> bollard::models::ContainerCreateBody {
    bollard::models::ContainerCreateBody {
        image: Some(format!("moltencore-stemcell:{}", shared_stemcell())),
        cmd: Some(vec!["true".into()]),
        labels: Some(
            labels
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        ),
        host_config: Some(bollard::models::HostConfig {
            binds: Some(vec![bind.to_string()]),
            network_mode: Some("none".into()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Creates (does not start) the container `name` on `node` of `body`.
async fn create_container(node: &str, name: &str, body: bollard::models::ContainerCreateBody) {
    node_socket(node)
        .await
        .create_container(
            Some(
                bollard::query_parameters::CreateContainerOptionsBuilder::new()
                    .name(name)
                    .build(),
            ),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("creating container {name} on {node}: {e}"));
}

/// Creates (does not start) a container of the test stemcell on `node` with one volume
/// `bind` (`volume:path[:ro]`), no network, and `labels`.
async fn create_plain_container(node: &str, name: &str, bind: &str, labels: &[(&str, &str)]) {
    create_container(node, name, plain_container(bind, labels)).await;
}

#[test]
fn an_attach_that_put_the_disk_in_the_vm_but_wrote_no_record_is_finished_by_its_retry() {
    let (vm, node, _) = vm_on(1, 66, "half-attach");
    let disk = create_disk(json!([10, {}, vm]));
    let hint = call("attach_disk", json!([vm, disk]));
    // As a process killed right after making the disk's device in the VM's folder leaves
    // it: the record names no VM.
    let key = format!("disks/{disk}");
    let mut record = index_record(&cluster_config(), &key).unwrap();
    record["vm"] = Value::Null;
    put_index_record(&cluster_config(), &key, &record);
    // The node says who holds the disk: another VM is refused, naming the holder.
    let (other, _, _) = vm_on(1, 67, "half-attach-other");
    let (kind, message, retry) = call_error("attach_disk", json!([other, disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(!retry);
    assert!(
        message.contains(&disk) && message.contains(&vm),
        "{message}"
    );
    assert_eq!(disk_devices(&node, &disk), vec![vm.clone()]);
    // So is a VM on another node, which would get a copy while the holder writes on.
    let (far, _, _) = vm_on(2, 68, "half-attach-far");
    let (kind, message, _) = call_error("attach_disk", json!([far, disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(
        message.contains(&disk) && message.contains(&vm),
        "{message}"
    );
    assert_eq!(
        index_record(&cluster_config(), &key).unwrap()["node"],
        node.as_str()
    );
    // The director's retry of the same attach finishes it.
    assert_eq!(call("attach_disk", json!([vm, disk])), hint);
    assert_eq!(
        index_record(&cluster_config(), &key).unwrap()["vm"],
        vm.as_str()
    );
    assert_eq!(
        agent_settings(&node, &vm)["disks"]["persistent"][&disk],
        format!("/warden-cpi-dev/{disk}")
    );
    call("delete_vm", json!([vm]));
    call("delete_vm", json!([other]));
    call("delete_vm", json!([far]));
    call("delete_disk", json!([disk]));
}

#[test]
fn detach_takes_the_disk_from_every_mount_the_vm_made_of_it() {
    let (vm, node, _) = vm_on(1, 69, "still-mounted");
    let disk = create_disk(json!([10, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    // What the agent's mount_disk does, and a second mount of the same device; the agent's
    // unmount_disk may fail or not be asked before the detach, so the VM would go on
    // writing on a disk that looks free.
    sh(
        &node,
        &vm,
        &format!("mkdir -p /var/vcap/store && mount /warden-cpi-dev/{disk} /var/vcap/store"),
    );
    let second = mount_disk_in(&node, &vm, &disk);
    sh(
        &node,
        &vm,
        &format!(
            "grep -q ' {second} ' /proc/mounts && test $(grep -c '^/warden-cpi-dev/{disk} ' /proc/mounts) -eq 2"
        ),
    );
    assert_eq!(call("detach_disk", json!([vm, disk])), Value::Null);
    let (code, mounts) = runtime().block_on(exec_in(&node, &vm, "cat /proc/self/mountinfo"));
    assert_eq!(code, 0);
    assert!(
        !mounts.contains(&disk),
        "the VM still mounts the disk: {mounts}"
    );
    sh(&node, &vm, &format!("test ! -e /warden-cpi-dev/{disk}"));
    assert!(disk_devices(&node, &disk).is_empty());
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn delete_vm_removes_every_container_of_the_vm_and_its_disk_devices() {
    let (vm, node, _) = vm_on(1, 72, "delete-all");
    let disk = create_disk(json!([10, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    // A container a killed call's last request made (another name, the VM's label and its
    // ephemeral volume) goes too, so the volume is not left "in use".
    let stray = format!("{vm}-in-flight");
    runtime().block_on(create_plain_container(
        &node,
        &stray,
        &format!("{vm}-ephemeral:/var/vcap/data"),
        &[("moltencore.vm.cid", &vm)],
    ));
    assert_eq!(call("delete_vm", json!([vm])), Value::Null);
    assert!(volume_on(&node, &format!("{vm}-ephemeral")).is_none());
    runtime().block_on(async {
        let docker = node_socket(&node).await;
        for name in [vm.clone(), stray.clone()] {
            assert!(
                docker.inspect_container(&name, None).await.is_err(),
                "{name} left behind"
            );
        }
    });
    assert!(volume_on(&node, &disk).is_some(), "the disk survives");
    assert!(
        disk_devices(&node, &disk).is_empty(),
        "the disk is still a device in the VM's folder"
    );
    assert!(
        !disk_tree(&node).join(&vm).exists(),
        "the VM's folder of the tree is left"
    );
    assert_eq!(call("has_vm", json!([vm])), Value::Bool(false));
    call("delete_disk", json!([disk]));
}

/// Under the cluster of `config`: a 10 MiB disk on n1 and a VM on n3 (agent `agent`,
/// static address `.host` of n3's subnet), so that attaching moves the disk. (disk, vm)
fn disk_on_n1_vm_on_n3(config: &std::path::Path, agent: &str, host: u8) -> (String, String) {
    let (n1, _) = node_prefix(0);
    let (_, p3) = node_prefix(2);
    let disk = call_on(config, "create_disk", json!([10, {"node": n1}, null]))
        .as_str()
        .unwrap()
        .to_string();
    let req = static_vm_request(
        &agent_id(agent),
        &shared_stemcell(),
        &format!("{p3}.{host}"),
    );
    let vm = run_cpi(&req, Some(config), &[]).response["result"][0]
        .as_str()
        .unwrap()
        .to_string();
    (disk, vm)
}

#[test]
fn an_unreachable_source_node_is_a_retriable_error_and_loses_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[]);
    let (n1, _) = node_prefix(0);
    let (disk, vm) = disk_on_n1_vm_on_n3(&config, "unreachable", 70);
    // n1 becomes unreachable for this CPI: its record points at a closed port.
    let original = make_node_unreachable(&config, &n1);
    let r = answer_on(&config, "attach_disk", json!([vm, disk]));
    assert_eq!(
        r.response["error"]["type"], "Bosh::Clouds::CloudError",
        "{}",
        r.stdout
    );
    assert_eq!(r.response["error"]["ok_to_retry"], true);
    let message = r.response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&n1) && message.contains(&disk),
        "{message}"
    );
    assert_eq!(
        index_record(&config, &format!("disks/{disk}")).unwrap()["node"],
        n1.as_str()
    );
    put_node_record(&config, &n1, &original);
    assert!(
        volume_on(&n1, &disk).is_some(),
        "the disk is intact on its node"
    );
    // Once the node is back, the attach moves it.
    let r = answer_on(&config, "attach_disk", json!([vm, disk]));
    assert!(r.response["error"].is_null(), "{}", r.stdout);
    answer_on(&config, "delete_vm", json!([vm]));
    answer_on(&config, "delete_disk", json!([disk]));
}

#[test]
fn a_move_waits_while_a_copy_on_an_unreachable_third_node_keeps_its_mark() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[]);
    let (n1, _) = node_prefix(0);
    let (n2, _) = node_prefix(1);
    let (n3, _) = node_prefix(2);
    let (disk, vm) = disk_on_n1_vm_on_n3(&config, "third-node", 71);
    // An old copy on n2 that a call could not remove, and n2 unreachable now.
    plant_old_copy(&config, &disk, &n2);
    let original = make_node_unreachable(&config, &n2);
    let r = answer_on(&config, "attach_disk", json!([vm, disk]));
    assert_eq!(
        r.response["error"]["type"], "Bosh::Clouds::CloudError",
        "{}",
        r.stdout
    );
    assert_eq!(r.response["error"]["ok_to_retry"], true);
    let message = r.response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&n2) && message.contains(&disk),
        "{message}"
    );
    // Nothing moved, and the mark still leads to the copy on n2.
    let record = index_record(&config, &format!("disks/{disk}")).unwrap();
    assert_eq!(record["node"], n1.as_str(), "{record}");
    assert_eq!(record["old_copy_on"], n2.as_str(), "{record}");
    assert!(record.get("copying_to").is_none(), "{record}");
    assert!(
        volume_on(&n3, &disk).is_none(),
        "a copy was started on {n3}"
    );
    // Once n2 answers, the same attach removes its copy and moves the disk.
    put_node_record(&config, &n2, &original);
    let r = answer_on(&config, "attach_disk", json!([vm, disk]));
    assert!(r.response["error"].is_null(), "{}", r.stdout);
    assert!(
        volume_on(&n2, &disk).is_none(),
        "the old copy on {n2} is left"
    );
    assert!(
        volume_on(&n1, &disk).is_none(),
        "the source on {n1} is left"
    );
    assert!(volume_on(&n3, &disk).is_some());
    answer_on(&config, "delete_vm", json!([vm]));
    answer_on(&config, "delete_disk", json!([disk]));
}

/// A 128 MiB disk on n1 holding `big_mib` MiB of random data plus [`fill_disk`]'s files,
/// written through a VM at `.host` (agent `agent`, the disk mounted there) that is
/// deleted after the detach: (disk, node, checksum). The disk's size is real: its
/// filesystem takes somewhat less than 128 MiB.
fn detached_disk_with_data(host: u8, agent: &str, big_mib: u32) -> (String, String, String) {
    assert!(big_mib <= 100, "{big_mib} MiB do not fit on a 128 MiB disk");
    let (vm, node, _) = vm_on(0, host, agent);
    let disk = create_disk(json!([128, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let d = mount_disk_in(&node, &vm, &disk);
    sh(
        &node,
        &vm,
        &format!("dd if=/dev/urandom of={d}/big bs=1M count={big_mib} 2>/dev/null"),
    );
    let sum = fill_disk(&node, &vm, &disk);
    call("detach_disk", json!([vm, disk]));
    call("delete_vm", json!([vm]));
    (disk, node, sum)
}

/// Whether a copy helper of `volume` exists on `node` (a move is streaming into it).
async fn copying_into(node: &str, volume: &str) -> bool {
    !containers_labelled(node, &format!("moltencore.helper={volume}"))
        .await
        .is_empty()
}

#[test]
fn a_move_killed_mid_copy_is_finished_by_the_next_attach_with_the_data_intact() {
    let (vm2, node2, _) = vm_on(2, 90, "kill-move-dst");
    for attempt in 0..5u8 {
        // Enough data that the copy is still streaming when the helper shows up.
        let (disk, node1, sum) = detached_disk_with_data(91 + attempt, "kill-move-src", 96);

        let request = json!({"method":"attach_disk","arguments":[vm2, disk]}).to_string();
        let caught = kill_cpi_when(&request, &cluster_config(), || {
            let (node2, disk) = (node2.clone(), disk.clone());
            async move { copying_into(&node2, &disk).await }
        });
        if !caught {
            call("detach_disk", json!([vm2, disk]));
            call("delete_disk", json!([disk]));
            continue;
        }
        // The disk still belongs to its source node, whole; the record leads to the copy;
        // the VM never saw the unchecked copy.
        let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
        assert_eq!(record["node"], node1.as_str());
        assert_eq!(record["copying_to"], node2.as_str());
        assert!(
            disk_devices(&node2, &disk).is_empty(),
            "an unchecked copy was put in the VM"
        );
        // Any next call on the disk removes the partial copy and its helpers.
        assert_eq!(call("has_disk", json!([disk])), Value::Bool(true));
        assert!(volume_on(&node2, &disk).is_none(), "partial copy left");
        assert!(
            !runtime().block_on(copying_into(&node2, &disk)),
            "copy helpers left on {node2}"
        );
        let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
        assert!(record.get("copying_to").is_none(), "{record}");
        // The next attach moves the disk.
        assert_eq!(
            call("attach_disk", json!([vm2, disk])),
            json!(format!("/warden-cpi-dev/{disk}"))
        );
        assert_eq!(checksum(&node2, &vm2, &disk), sum);
        assert!(
            volume_on(&node1, &disk).is_none(),
            "source removed after the move"
        );
        runtime().block_on(async {
            for node in [&node1, &node2] {
                assert!(
                    !copying_into(node, &disk).await,
                    "copy helpers left on {node}"
                );
            }
        });
        call("delete_vm", json!([vm2]));
        call("delete_disk", json!([disk]));
        return;
    }
    panic!("in 5 attempts the move always finished before it could be killed mid-copy");
}

/// What a move killed right after switching the record leaves: a volume of `disk` on
/// `node` and the disk's record (under `config`'s prefix) naming it as the old copy.
fn plant_old_copy(config: &std::path::Path, disk: &str, node: &str) {
    runtime().block_on(async {
        node_socket(node)
            .await
            .create_volume(bollard::models::VolumeCreateRequest {
                name: Some(disk.to_string()),
                ..Default::default()
            })
            .await
            .unwrap();
    });
    let mut record = index_record(config, &format!("disks/{disk}")).unwrap();
    record["old_copy_on"] = json!(node);
    put_index_record(config, &format!("disks/{disk}"), &record);
}

#[test]
fn the_old_copy_a_move_left_behind_is_removed_by_the_next_call() {
    let (n1, _) = node_prefix(0);
    let (n2, _) = node_prefix(1);
    let has_volume = |node: &str, cid: &str| volume_on(node, cid).is_some();
    for call_next in ["has_disk", "attach_disk", "delete_disk"] {
        let disk = create_disk(json!([10, {"node": n1}, null]));
        // What a move killed right after switching the record leaves: the record on n1
        // naming n2 as still holding the source volume, and that volume on n2.
        plant_old_copy(&cluster_config(), &disk, &n2);

        let vm = (call_next == "attach_disk").then(|| vm_on(0, 96, "old-copy").0);
        match call_next {
            "has_disk" => assert_eq!(call("has_disk", json!([disk])), Value::Bool(true)),
            "attach_disk" => {
                call("attach_disk", json!([vm.as_ref().unwrap(), disk]));
            }
            _ => assert_eq!(call("delete_disk", json!([disk])), Value::Null),
        }
        assert!(
            !has_volume(&n2, &disk),
            "{call_next} left the old copy on {n2}"
        );
        if call_next == "delete_disk" {
            assert!(
                !has_volume(&n1, &disk),
                "delete_disk removes the disk itself"
            );
            assert!(index_record(&cluster_config(), &format!("disks/{disk}")).is_none());
            continue;
        }
        assert!(has_volume(&n1, &disk), "{call_next} kept the disk itself");
        let record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
        assert!(record.get("old_copy_on").is_none(), "{record}");
        if let Some(vm) = vm {
            call("delete_vm", json!([vm]));
        }
        call("delete_disk", json!([disk]));
    }
}

/// The `create_vm` arguments for `agent` on `networks` with the persistent disk `disk`.
fn create_vm_args(agent: &str, networks: Value, disk: &str) -> Value {
    json!([agent, shared_stemcell(), {}, networks, [disk], {}])
}

#[test]
fn a_vm_container_removed_outside_the_cpi_is_forgotten_and_its_disk_kept() {
    let (vm, node, _) = vm_on(1, 100, "gone-container");
    let disk = create_disk(json!([10, {}, vm]));
    call("attach_disk", json!([vm, disk]));
    let sum = fill_disk(&node, &vm, &disk);
    remove_outside_cpi(&node, Some(&vm), None);

    assert_eq!(call("has_vm", json!([vm])), Value::Bool(false));
    assert!(
        index_record(&cluster_config(), &format!("vms/{vm}")).is_none(),
        "the VM's record stays"
    );
    assert!(volume_on(&node, &format!("{vm}-ephemeral")).is_none());
    assert_eq!(
        index_record(&cluster_config(), &format!("disks/{disk}")).unwrap()["vm"],
        Value::Null,
        "the disk still counts as attached"
    );
    assert_eq!(call("delete_vm", json!([vm])), Value::Null);
    // The disk and its data serve the VM the director makes next.
    let (node_name, prefix) = node_prefix(1);
    let args = create_vm_args(
        &agent_id("gone-container-next"),
        manual_network(&format!("{prefix}.101")),
        &disk,
    );
    let next = call("create_vm", args)[0].as_str().unwrap().to_string();
    assert_eq!(checksum(&node_name, &next, &disk), sum);
    call("delete_vm", json!([next]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_disk_volume_removed_outside_the_cpi_is_refused_and_the_vm_untouched() {
    let (vm, node, _) = vm_on(2, 102, "gone-volume");
    let disk = create_disk(json!([10, {}, vm]));
    remove_outside_cpi(&node, None, Some(&disk));
    let before = vm_container(&node, &vm);

    let (kind, message, retry) = call_error("attach_disk", json!([vm, disk]));
    assert_eq!(kind, "Bosh::Clouds::DiskNotFound");
    assert!(!retry);
    assert!(
        message.contains(&disk) && message.contains(&node),
        "{message}"
    );
    let after = vm_container(&node, &vm);
    assert_eq!(after.id, before.id, "the VM was re-created");
    assert!(
        volume_on(&node, &disk).is_none(),
        "an empty volume was made"
    );

    // create_vm with it is refused too, before anything is made (Docker would otherwise
    // mount a new, empty volume under the disk's name).
    let (_, prefix) = node_prefix(2);
    let agent = agent_id("gone-volume-next");
    let args = create_vm_args(&agent, manual_network(&format!("{prefix}.103")), &disk);
    let (kind, message, _) = call_error("create_vm", args);
    assert_eq!(kind, "Bosh::Clouds::DiskNotFound", "{message}");
    assert!(message.contains(&disk), "{message}");
    assert!(
        volume_on(&node, &disk).is_none(),
        "an empty volume was made"
    );
    assert!(
        runtime()
            .block_on(containers_labelled(
                &node,
                &format!("moltencore.vm.agent_id={agent}")
            ))
            .is_empty(),
        "a container was left"
    );
    assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());

    // A disk on another node whose volume is gone is not "moved" as an empty one.
    let (n1, _) = node_prefix(0);
    let far = create_disk(json!([10, {"node": n1}, null]));
    remove_outside_cpi(&n1, None, Some(&far));
    let (kind, message, _) = call_error("attach_disk", json!([vm, far]));
    assert_eq!(kind, "Bosh::Clouds::DiskNotFound", "{message}");
    assert!(message.contains(&far) && message.contains(&n1), "{message}");
    assert!(volume_on(&node, &far).is_none(), "a copy was made");
    assert!(volume_on(&n1, &far).is_none(), "an empty source was made");
    assert_eq!(
        index_record(&cluster_config(), &format!("disks/{far}")).unwrap()["node"],
        n1.as_str()
    );
    assert_eq!(
        vm_container(&node, &vm).id,
        before.id,
        "the VM was re-created"
    );

    assert_eq!(call("delete_disk", json!([far])), Value::Null);
    assert_eq!(call("delete_disk", json!([disk])), Value::Null);
    call("delete_vm", json!([vm]));
}

#[test]
fn a_killed_create_vm_with_a_disk_never_leaves_two_vms_on_it() {
    let (node, _) = node_prefix(2);
    let disk = create_disk(json!([10, {"node": node}, null]));
    let request = |agent: &str| {
        let args = create_vm_args(agent, json!({"d": {"type": "dynamic"}}), &disk);
        json!({"method": "create_vm", "arguments": args, "api_version": 2}).to_string()
    };
    // Killed once its container (mounting the disk) exists: the director never learns it.
    let agent = agent_id("killed-create-disk");
    kill_create_vm_once_its_container_exists(&request(&agent), &cluster_config(), &agent);
    // The director's retry: refused (retriable) while the dead call's record lives, then
    // the abandoned VM is removed and the disk goes to the new VM alone.
    let retry = request(&agent_id("killed-create-disk-retry"));
    let vm = create_vm_retrying(&retry, &cluster_config(), |run| {
        let message = run.response["error"]["message"].as_str().unwrap();
        assert!(message.contains(&disk), "{message}");
    });
    assert_eq!(disk_devices(&node, &disk), vec![vm.clone()]);
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_disk_attaches_to_a_stopped_vm_which_comes_back_with_its_address() {
    let (vm, node, ip) = vm_on(1, 107, "stopped");
    let disk = create_disk(json!([10, {}, vm]));
    runtime().block_on(async {
        node_socket(&node)
            .await
            .stop_container(&vm, None::<bollard::query_parameters::StopContainerOptions>)
            .await
            .unwrap();
    });
    assert_eq!(
        call("attach_disk", json!([vm, disk])),
        json!(format!("/warden-cpi-dev/{disk}"))
    );
    assert!(
        !vm_container(&node, &vm).running,
        "attach_disk started the VM"
    );
    assert_eq!(call("get_disks", json!([vm])), json!([disk]));
    runtime().block_on(async {
        node_socket(&node)
            .await
            .start_container(
                &vm,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .unwrap();
    });
    assert_eq!(vm_container(&node, &vm).ip, ip);
    // Started, the VM has the disk's device, formatted: it mounts and takes data.
    sh(&node, &vm, &format!("test -b /warden-cpi-dev/{disk}"));
    write_blob(&node, &vm, &disk, 64);
    sh(
        &node,
        &vm,
        &format!("grep -q '^/warden-cpi-dev/{disk} ' /proc/mounts"),
    );
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn delete_disk_keeps_its_record_while_an_old_copy_cannot_be_removed() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[]);
    let (n1, _) = node_prefix(0);
    let (n2, _) = node_prefix(1);
    let disk = call_on(&config, "create_disk", json!([10, {"node": n1}, null]))
        .as_str()
        .unwrap()
        .to_string();
    // The old copy a move left on n2, and n2 unreachable for this CPI.
    plant_old_copy(&config, &disk, &n2);
    let original = make_node_unreachable(&config, &n2);

    let response = answer_on(&config, "delete_disk", json!([disk])).response;
    assert_eq!(response["error"]["type"], "Bosh::Clouds::CloudError");
    assert_eq!(response["error"]["ok_to_retry"], true);
    let message = response["error"]["message"].as_str().unwrap();
    assert!(
        message.contains(&disk) && message.contains(&n2),
        "{message}"
    );
    assert!(index_record(&config, &format!("disks/{disk}")).is_some());
    assert!(volume_on(&n1, &disk).is_some(), "the disk went first");
    assert!(volume_on(&n2, &disk).is_some());

    put_node_record(&config, &n2, &original);
    assert_eq!(
        answer_on(&config, "delete_disk", json!([disk])).response["error"],
        Value::Null
    );
    assert!(volume_on(&n1, &disk).is_none());
    assert!(volume_on(&n2, &disk).is_none());
    assert!(index_record(&config, &format!("disks/{disk}")).is_none());
}

#[test]
fn a_disk_another_container_really_mounts_is_refused_whatever_the_index_says() {
    let (holder, node, _) = vm_on(0, 108, "holder");
    let (vm, _, _) = vm_on(0, 109, "taker");
    let disk = create_disk(json!([10, {}, holder]));
    call("attach_disk", json!([holder, disk]));
    // The index forgets the attachment (an interrupted write, an operator's edit).
    let mut record = index_record(&cluster_config(), &format!("disks/{disk}")).unwrap();
    record["vm"] = Value::Null;
    put_index_record(&cluster_config(), &format!("disks/{disk}"), &record);
    let before = vm_container(&node, &vm);

    for (method, args) in [
        ("attach_disk", json!([vm, disk])),
        ("delete_disk", json!([disk])),
    ] {
        let (kind, message, retry) = call_error(method, args);
        assert_eq!(kind, "Bosh::Clouds::CloudError", "{method}");
        assert!(!retry, "{method}");
        assert!(
            message.contains(&disk) && message.contains(&holder),
            "{method}: {message}"
        );
    }
    assert_eq!(
        vm_container(&node, &vm).id,
        before.id,
        "the VM was re-created"
    );
    assert_eq!(disk_devices(&node, &disk), vec![holder.clone()]);
    assert!(volume_on(&node, &disk).is_some(), "the disk went");

    // A holder that is no VM of this CPI is named as a container.
    call("delete_vm", json!([holder]));
    let outsider = format!("outsider-{disk}");
    runtime().block_on(create_plain_container(
        &node,
        &outsider,
        &format!("{disk}:/data"),
        &[],
    ));
    let (kind, message, _) = call_error("attach_disk", json!([vm, disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(
        message.contains(&outsider) && message.contains("not a VM"),
        "{message}"
    );
    assert_eq!(
        vm_container(&node, &vm).id,
        before.id,
        "the VM was re-created"
    );
    remove_outside_cpi(&node, Some(&outsider), None);

    // A copy helper a killed move left holding the disk is removed, and the attach goes on.
    let helper = format!("mc-copy-left-{disk}");
    runtime().block_on(create_plain_container(
        &node,
        &helper,
        &format!("{disk}:/data"),
        &[("moltencore.helper", &disk)],
    ));
    assert_eq!(
        call("attach_disk", json!([vm, disk])),
        json!(format!("/warden-cpi-dev/{disk}"))
    );
    assert_eq!(disk_devices(&node, &disk), vec![vm.clone()]);
    assert!(
        users_of_volume(&node, &disk).is_empty(),
        "the helper is left"
    );
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn calls_side_by_side_make_the_node_s_mounter_once_and_all_succeed() {
    // Six VMs with a disk each on one node, then its mounter gone (as on a node no call
    // used yet): six get_disks at once must all find their disk.
    let vms: Vec<(String, String, String)> = (0..6u8)
        .map(|i| {
            let (vm, node, _) = vm_on(2, 120 + i, "mounter-race");
            let disk = create_disk(json!([10, {}, vm]));
            call("attach_disk", json!([vm, disk]));
            (vm, node, disk)
        })
        .collect();
    let node = vms[0].1.clone();
    remove_outside_cpi(&node, Some("mc-mounter"), None);
    let answers: Vec<(Value, String)> = std::thread::scope(|scope| {
        let runs: Vec<_> = vms
            .iter()
            .map(|(vm, _, disk)| {
                scope.spawn(move || (answer(&request("get_disks", json!([vm]))), disk.clone()))
            })
            .collect();
        runs.into_iter().map(|r| r.join().unwrap()).collect()
    });
    for (response, disk) in &answers {
        assert_eq!(response["error"], Value::Null, "{response}");
        assert_eq!(response["result"], json!([disk]), "{response}");
    }
    for (vm, _, disk) in &vms {
        call("delete_vm", json!([vm]));
        call("delete_disk", json!([disk]));
    }
}

/// The response of one request on the shared cluster.
fn answer(request: &str) -> Value {
    run_cpi(request, Some(&cluster_config()), &[]).response
}

#[test]
fn a_disk_kept_as_a_folder_becomes_an_image_with_its_files_on_attach() {
    use std::os::unix::fs::PermissionsExt;
    let (vm, node, _) = vm_on(0, 118, "folder-disk");
    let disk = create_disk(json!([16, {}, vm]));
    // As a version that kept disks as folders left it: the files in the volume's folder.
    let folder = std::path::PathBuf::from(volume_on(&node, &disk).unwrap().mountpoint);
    std::fs::create_dir(folder.join("job")).unwrap();
    std::fs::write(folder.join("job/data"), "kept\n").unwrap();
    std::os::unix::fs::chown(folder.join("job/data"), Some(1000), Some(1000)).unwrap();
    std::fs::set_permissions(
        folder.join("job/data"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink("job/data", folder.join("link")).unwrap();

    call("attach_disk", json!([vm, disk]));
    let at = mount_disk_in(&node, &vm, &disk);
    assert_eq!(
        sh(
            &node,
            &vm,
            &format!("stat -c '%u %a' {at}/job/data && cat {at}/link")
        ),
        "1000 640\nkept\n",
        "the folder's files are not on the disk as they were"
    );
    let mut left: Vec<String> = std::fs::read_dir(&folder)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    left.sort();
    assert_eq!(
        left,
        [moltencore::disk_mounts::IMAGE_FILE],
        "the volume holds the image alone"
    );
    assert_eq!(
        sh(&node, &vm, "ls -A /warden-cpi-dev"),
        format!("{disk}\n"),
        "the folder is still in the VM"
    );
    assert_eq!(disk_devices(&node, &disk), vec![vm.clone()]);

    // The image is the disk from now on: detached and attached again, the files are there.
    call("detach_disk", json!([vm, disk]));
    call("attach_disk", json!([vm, disk]));
    let at = mount_disk_in(&node, &vm, &disk);
    assert_eq!(sh(&node, &vm, &format!("cat {at}/job/data")), "kept\n");
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_folder_copy_cut_short_keeps_the_folder_and_the_vm_can_go() {
    let (vm, node, _) = vm_on(0, 119, "folder-too-big");
    // The copy into the image fails (ENOSPC).
    let (disk, folder, big) = folder_disk_too_big(&vm, &node);

    let (kind, message, retry) = call_error("attach_disk", json!([vm, disk]));
    assert_eq!(kind, "Bosh::Clouds::CloudError", "{message}");
    assert!(message.contains("cp -a") && !retry, "{message}");
    // The folder is still the disk's data, whole.
    let staged = folder.join(".moltencore-folder/big");
    assert_eq!(
        std::fs::read(&staged).unwrap(),
        big,
        "the staged folder lost data"
    );
    // The VM goes with its view of the folder; the folder stays.
    call("delete_vm", json!([vm]));
    assert!(
        !disk_tree(&node).join(&vm).exists(),
        "the VM's folder is left"
    );
    assert_eq!(disk_loops(&disk), Vec::<String>::new(), "loop device left");
    assert_eq!(std::fs::read(&staged).unwrap(), big, "delete_vm lost data");
    call("delete_disk", json!([disk]));
}

/// An 8 MiB disk for `vm` on `node` kept as a folder (as an earlier version left it) that
/// holds a 12 MiB file `big`: its copy into the image runs out of space. The disk, its
/// volume's folder and the file's bytes.
fn folder_disk_too_big(vm: &str, node: &str) -> (String, std::path::PathBuf, Vec<u8>) {
    let disk = create_disk(json!([8, {}, vm]));
    let folder = std::path::PathBuf::from(volume_on(node, &disk).unwrap().mountpoint);
    let big: Vec<u8> = (0..12 << 20).map(|i: u32| (i % 251) as u8).collect();
    std::fs::write(folder.join("big"), &big).unwrap();
    (disk, folder, big)
}

/// The files of snapshot `snap`'s volume on `node`, by path below it.
fn snapshot_file(node: &str, snap: &str, path: &str) -> Vec<u8> {
    let volume = volume_on(node, snap).expect("the snapshot has no volume");
    std::fs::read(std::path::Path::new(&volume.mountpoint).join(path))
        .unwrap_or_else(|e| panic!("{path} in snapshot {snap}: {e}"))
}

#[test]
fn a_snapshot_of_a_disk_kept_as_a_folder_holds_its_files() {
    let (vm, node, _) = vm_on(0, 120, "folder-snapshot");
    let disk = create_disk(json!([16, {}, vm]));
    // As a version that kept disks as folders left it: files, no image.
    let folder = std::path::PathBuf::from(volume_on(&node, &disk).unwrap().mountpoint);
    std::fs::create_dir(folder.join("job")).unwrap();
    std::fs::write(folder.join("job/data"), "kept\n").unwrap();

    let snap = call("snapshot_disk", json!([disk, {}]));
    let snap = snap.as_str().unwrap();
    assert_eq!(snapshot_file(&node, snap, "job/data"), b"kept\n");
    assert_eq!(call("delete_snapshot", json!([snap])), Value::Null);
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}

#[test]
fn a_snapshot_of_a_disk_whose_folder_copy_was_cut_short_holds_the_folder() {
    let (vm, node, _) = vm_on(0, 121, "cut-short-snapshot");
    // The attach leaves an image beside the staged folder, which still holds the data.
    let (disk, _, big) = folder_disk_too_big(&vm, &node);
    call_error("attach_disk", json!([vm, disk]));

    let snap = call("snapshot_disk", json!([disk, {}]));
    let snap = snap.as_str().unwrap();
    assert_eq!(
        snapshot_file(&node, snap, ".moltencore-folder/big"),
        big,
        "the snapshot lost the folder's data"
    );
    assert_eq!(call("delete_snapshot", json!([snap])), Value::Null);
    call("delete_vm", json!([vm]));
    call("delete_disk", json!([disk]));
}
