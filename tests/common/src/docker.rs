//! Probes of Docker on the cluster's nodes, through each node's unix socket (the harness's
//! own access, not the CPI's), to check what really happened there: containers, volumes,
//! images, commands and files inside VMs.

use std::collections::{BTreeSet, HashMap};

use bollard::models::ContainerSummary;
use serde_json::Value;

use crate::cluster::{cluster, node_names, runtime};

/// A Docker client for a node through its unix socket.
pub async fn node_socket(name: &str) -> bollard::Docker {
    let c = cluster();
    let node = c["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == name)
        .unwrap_or_else(|| panic!("no node {name} in the cluster"));
    bollard::Docker::connect_with_unix(
        node["docker_socket"].as_str().unwrap(),
        120,
        bollard::API_DEFAULT_VERSION,
    )
    .unwrap()
    .negotiate_version()
    .await
    .unwrap()
}

/// Runs `cmd` in a container on `node` (through the node's socket) and returns the exit
/// code and output.
pub async fn exec_in(node: &str, container: &str, cmd: &str) -> (i64, String) {
    exec_as(node, container, None, cmd).await
}

/// Runs `cmd` in a container on `node` as `user` (a uid, `None` = the image's user) and
/// returns the exit code and output.
pub async fn exec_as(node: &str, container: &str, user: Option<&str>, cmd: &str) -> (i64, String) {
    use bollard::exec::{CreateExecOptions, StartExecResults};
    use futures_util::StreamExt;
    let docker = node_socket(node).await;
    let exec = docker
        .create_exec(
            container,
            CreateExecOptions {
                cmd: Some(vec![
                    "/bin/sh".to_string(),
                    "-c".to_string(),
                    cmd.to_string(),
                ]),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                user: user.map(str::to_string),
                ..Default::default()
            },
        )
        .await
        .unwrap_or_else(|e| panic!("exec in {container} on {node}: {e}"));
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } =
        docker.start_exec(&exec.id, None).await.unwrap()
    {
        while let Some(Ok(chunk)) = output.next().await {
            text.push_str(&chunk.to_string());
        }
    }
    let code = docker
        .inspect_exec(&exec.id)
        .await
        .unwrap()
        .exit_code
        .unwrap_or(-1);
    (code, text)
}

/// Runs `cmd` in `vm` on `node`, which must succeed (exit 0); its output.
pub fn sh(node: &str, vm: &str, cmd: &str) -> String {
    let (code, out) = runtime().block_on(exec_in(node, vm, cmd));
    assert_eq!(code, 0, "`{cmd}` in {vm} on {node}: {out}");
    out
}

/// The loop devices backed by disk `disk`'s image, on any node (`/dev/loopN`), as the
/// kernel lists them: none once no VM has the disk.
pub fn disk_loops(disk: &str) -> Vec<String> {
    let tail = format!("/{disk}/_data/moltencore-disk.img");
    let mut loops: Vec<String> = std::fs::read_dir("/sys/block")
        .expect("/sys/block")
        .filter_map(Result::ok)
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let backing =
                std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
            backing.contains(&tail).then(|| format!("/dev/{name}"))
        })
        .collect();
    loops.sort();
    loops
}

/// Where the tests mount a persistent disk in a VM, as the agent mounts one on the store.
pub fn disk_mount(disk: &str) -> String {
    format!("/mnt/{disk}")
}

/// Mounts the attached disk `disk` (the block device at its hint) at [`disk_mount`]
/// inside `vm` on `node`, unless it is mounted there; the mount point.
pub fn mount_disk_in(node: &str, vm: &str, disk: &str) -> String {
    let at = disk_mount(disk);
    sh(
        node,
        vm,
        &format!(
            "mkdir -p {at} && (grep -q ' {at} ' /proc/self/mountinfo || mount /warden-cpi-dev/{disk} {at})"
        ),
    );
    at
}

/// Writes `kib` KiB of random data to the file `blob` on the persistent disk `disk` inside
/// `vm` on `node` (mounted first); its checksum ([`blob_sum`]).
pub fn write_blob(node: &str, vm: &str, disk: &str, kib: u32) -> String {
    let at = mount_disk_in(node, vm, disk);
    sh(
        node,
        vm,
        &format!("dd if=/dev/urandom of={at}/blob bs=1k count={kib} 2>/dev/null"),
    );
    blob_sum(node, vm, disk)
}

/// The `md5sum` line of the file `blob` on the persistent disk `disk` inside `vm` (mounted
/// first), named as on the disk.
pub fn blob_sum(node: &str, vm: &str, disk: &str) -> String {
    let at = mount_disk_in(node, vm, disk);
    sh(node, vm, &format!("cd {at} && md5sum blob"))
}

/// A file's content inside a container (through the node's socket).
pub async fn read_file_in(node: &str, container: &str, path: &str) -> String {
    use futures_util::StreamExt;
    use std::io::Read;
    let docker = node_socket(node).await;
    let mut stream = docker.download_from_container(
        container,
        Some(
            bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
                .path(path)
                .build(),
        ),
    );
    let mut tar_bytes = Vec::new();
    while let Some(chunk) = stream.next().await {
        tar_bytes
            .extend_from_slice(&chunk.unwrap_or_else(|e| panic!("{path} in {container}: {e}")));
    }
    let mut archive = tar::Archive::new(tar_bytes.as_slice());
    let mut entry = archive.entries().unwrap().next().unwrap().unwrap();
    let mut text = String::new();
    entry.read_to_string(&mut text).unwrap();
    text
}

/// The agent settings the CPI wrote into `vm` on `node`.
pub fn agent_settings(node: &str, vm: &str) -> Value {
    serde_json::from_str(&runtime().block_on(read_file_in(
        node,
        vm,
        "/var/vcap/bosh/warden-cpi-agent-env.json",
    )))
    .unwrap()
}

/// What a VM's container is on its node: what survives an attach or a reboot (id, address,
/// MAC, hostname) and whether it runs.
pub struct VmContainer {
    pub id: String,
    pub running: bool,
    /// The address on the `bosh` network (empty while the container is stopped).
    pub ip: String,
    pub mac: String,
    pub hostname: String,
    /// The host's pid of the container's first process (0 while it is stopped).
    pub pid: i64,
}

/// The container `vm` on `node`, or `None` when the node has none by that name. A
/// container that is on no `bosh` network fails the test.
pub async fn inspect_vm(node: &str, vm: &str) -> Option<VmContainer> {
    let c = node_socket(node)
        .await
        .inspect_container(vm, None)
        .await
        .ok()?;
    let ep = c
        .network_settings
        .and_then(|n| n.networks)
        .and_then(|mut n| n.remove("bosh"))
        .unwrap_or_else(|| panic!("{vm} on {node} is on no `bosh` network"));
    Some(VmContainer {
        id: c.id.unwrap(),
        running: c.state.as_ref().and_then(|s| s.running).unwrap_or(false),
        ip: ep.ip_address.unwrap_or_default(),
        mac: ep.mac_address.unwrap_or_default(),
        hostname: c.config.and_then(|c| c.hostname).unwrap_or_default(),
        pid: c.state.as_ref().and_then(|s| s.pid).unwrap_or(0),
    })
}

/// [`inspect_vm`] for a container that must exist.
pub fn vm_container(node: &str, vm: &str) -> VmContainer {
    runtime()
        .block_on(inspect_vm(node, vm))
        .unwrap_or_else(|| panic!("no container {vm} on {node}"))
}

/// The node whose Docker has a container named `name`, if any.
pub async fn node_of_container(name: &str) -> Option<String> {
    for node in node_names() {
        let docker = node_socket(&node).await;
        if docker.inspect_container(name, None).await.is_ok() {
            return Some(node);
        }
    }
    None
}

/// The volume `name` on `node`, or `None` when the node has no volume by that name.
pub fn volume_on(node: &str, name: &str) -> Option<bollard::models::Volume> {
    runtime().block_on(async { node_socket(node).await.inspect_volume(name).await.ok() })
}

/// Whether `node` has the image `reference` (an id or `name:tag`).
pub fn has_image(node: &str, reference: &str) -> bool {
    runtime().block_on(async {
        node_socket(node)
            .await
            .inspect_image(reference)
            .await
            .is_ok()
    })
}

/// Every container (running or not) on `node` carrying `label` (`key=value`).
pub async fn containers_labelled(node: &str, label: &str) -> Vec<ContainerSummary> {
    containers_where(node, "label", label).await
}

/// Every container (running or not) on `node` matching one Docker list filter
/// (`label`, `volume`, ...).
pub async fn containers_where(node: &str, filter: &str, value: &str) -> Vec<ContainerSummary> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters: HashMap<String, Vec<String>> =
        [(filter.to_string(), vec![value.to_string()])].into();
    node_socket(node)
        .await
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filters)
                .build(),
        ))
        .await
        .unwrap_or_else(|e| panic!("listing containers on {node} ({filter}={value}): {e}"))
}

/// Names of the containers on `node` that mount volume `volume`.
pub fn users_of_volume(node: &str, volume: &str) -> Vec<String> {
    runtime()
        .block_on(containers_where(node, "volume", volume))
        .into_iter()
        .flat_map(|c| c.names.unwrap_or_default())
        .map(|n| n.trim_start_matches('/').to_string())
        .collect()
}

/// The node's VM disk tree on this machine (below the node's prep root).
pub fn disk_tree(node: &str) -> std::path::PathBuf {
    let c = crate::cluster::cluster();
    let nodes = c["nodes"].as_array().expect("nodes in the cluster file");
    let n = nodes
        .iter()
        .find(|n| n["name"] == node)
        .unwrap_or_else(|| panic!("no node {node} in the cluster file"));
    std::path::PathBuf::from(n["prep_root"].as_str().unwrap()).join("var/lib/moltencore/vm-disks")
}

/// The VMs on `node` that have disk `disk` in their folder of the node's disk tree: a
/// block device node of a loop device backed by the disk's image, as the host sees them.
pub fn disk_devices(node: &str, disk: &str) -> Vec<String> {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    let tree = disk_tree(node);
    let entries = std::fs::read_dir(&tree)
        .unwrap_or_else(|e| panic!("the disk tree {} of {node}: {e}", tree.display()));
    let mut vms: Vec<String> = entries
        .filter_map(Result::ok)
        .filter_map(|vm| {
            let meta = std::fs::symlink_metadata(vm.path().join(disk)).ok()?;
            if !meta.file_type().is_block_device() {
                return None;
            }
            let rdev = meta.rdev();
            let (major, minor) = (
                (rdev >> 8) & 0xfff,
                (rdev & 0xff) | ((rdev >> 12) & 0xffff_ff00),
            );
            let backing = std::fs::read_to_string(format!(
                "/sys/dev/block/{major}:{minor}/loop/backing_file"
            ))
            .ok()?;
            backing
                .contains(&format!("/{disk}/_data/moltencore-disk.img"))
                .then(|| vm.file_name().to_str().map(str::to_string))?
        })
        .collect();
    vms.sort();
    vms
}

/// Containers and volumes on any node carrying `moltencore.vm.agent_id=<agent>`.
pub async fn leftovers_of_agent(agent: &str) -> Vec<String> {
    use bollard::query_parameters::ListVolumesOptionsBuilder;
    let label = format!("moltencore.vm.agent_id={agent}");
    let filters: HashMap<String, Vec<String>> = [("label".to_string(), vec![label.clone()])].into();
    let mut found = Vec::new();
    for node in node_names() {
        for c in containers_labelled(&node, &label).await {
            found.push(format!("container {:?} on {node}", c.names));
        }
        let docker = node_socket(&node).await;
        let volumes = docker
            .list_volumes(Some(
                ListVolumesOptionsBuilder::new().filters(&filters).build(),
            ))
            .await
            .unwrap();
        for v in volumes.volumes.unwrap_or_default() {
            found.push(format!("volume {} on {node}", v.name));
        }
    }
    found
}

/// Removes the container `name` on `node`, running or not (`docker rm -f`).
pub async fn remove_container_forced(node: &str, name: &str) {
    node_socket(node)
        .await
        .remove_container(
            name,
            Some(
                bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                    .force(true)
                    .build(),
            ),
        )
        .await
        .unwrap_or_else(|e| panic!("removing container {name} on {node}: {e}"));
}

/// Removes a container (forced) and/or a volume on `node` behind the CPI's back.
pub fn remove_outside_cpi(node: &str, container: Option<&str>, volume: Option<&str>) {
    runtime().block_on(async {
        let docker = node_socket(node).await;
        if let Some(name) = container {
            remove_container_forced(node, name).await;
        }
        if let Some(name) = volume {
            docker
                .remove_volume(name, None::<bollard::query_parameters::RemoveVolumeOptions>)
                .await
                .unwrap();
        }
    });
}

/// Everything on every node: containers (name, id, state), volumes, networks and images
/// (id and tags), so a test can show that a call changed nothing on any node.
pub fn node_state() -> BTreeSet<String> {
    use bollard::query_parameters::{
        ListContainersOptionsBuilder, ListImagesOptionsBuilder, ListNetworksOptions,
        ListVolumesOptions,
    };
    runtime().block_on(async {
        let mut state = BTreeSet::new();
        for node in node_names() {
            let d = node_socket(&node).await;
            for c in d
                .list_containers(Some(ListContainersOptionsBuilder::new().all(true).build()))
                .await
                .unwrap()
            {
                state.insert(format!(
                    "{node} container {:?} {:?} {:?}",
                    c.names, c.id, c.state
                ));
            }
            for v in d
                .list_volumes(None::<ListVolumesOptions>)
                .await
                .unwrap()
                .volumes
                .unwrap_or_default()
            {
                state.insert(format!("{node} volume {}", v.name));
            }
            for n in d.list_networks(None::<ListNetworksOptions>).await.unwrap() {
                state.insert(format!("{node} network {:?} {:?}", n.name, n.id));
            }
            for i in d
                .list_images(Some(ListImagesOptionsBuilder::new().all(true).build()))
                .await
                .unwrap()
            {
                state.insert(format!("{node} image {} {:?}", i.id, i.repo_tags));
            }
        }
        state
    })
}

/// Asserts that every node is as [`node_state`] found it in `before`, naming what was lost
/// and gained.
pub fn assert_nodes_unchanged(before: &BTreeSet<String>) {
    let after = node_state();
    let lost: Vec<_> = before.difference(&after).collect();
    let gained: Vec<_> = after.difference(before).collect();
    assert!(
        lost.is_empty() && gained.is_empty(),
        "nodes changed: lost {lost:#?}, gained {gained:#?}"
    );
}
