//! A node whose Docker daemon freezes (SIGSTOP: the kernel still accepts its connections,
//! nothing answers) costs a call the configured idle timeout, never a hang: create_stemcell
//! succeeds on the other nodes, has_vm and create_vm there fail retriably, and once thawed
//! the node gets the stemcell copied when a VM lands there. This binary freezes a daemon, so it runs
//! alone (test binaries run one after another).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moltencore_testkit::{
    cluster::{
        cluster, cluster_config, cluster_cpi_json, node_names, node_prefix, runtime,
        test_stemcell_dir,
    },
    cpi::{call, expect_result, spawn_cpi},
    docker::{containers_labelled, has_image, leftovers_of_agent, mount_disk_in, sh, volume_on},
    index::{index_record, index_records_of_agent},
    requests::{agent_id, create_disk, shared_stemcell, static_vm, static_vm_request},
};
use serde_json::{Value, json};

/// Seconds a node may stay silent in these tests' CPI config.
const IDLE_SECONDS: u64 = 3;

/// The tests of this binary freeze the same node, so they take turns.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner())
}

/// A frozen dockerd, thawed (SIGCONT) when dropped, whatever the test's outcome.
struct Frozen {
    pid: String,
}

impl Frozen {
    fn node(node: &str) -> Frozen {
        let dir = PathBuf::from(cluster()["dir"].as_str().unwrap()).join(node);
        let pid = std::fs::read_to_string(dir.join("docker.pid"))
            .expect("dockerd pid file")
            .trim()
            .to_string();
        let status = Command::new("kill").args(["-STOP", &pid]).status().unwrap();
        assert!(status.success(), "SIGSTOP to dockerd {pid} of {node}");
        Frozen { pid }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        let _ = Command::new("kill").args(["-CONT", &self.pid]).status();
    }
}

/// The cluster's CPI config with a short idle timeout.
fn impatient_config(dir: &Path) -> PathBuf {
    let mut config: Value = cluster_cpi_json();
    config["docker"]["idle_timeout_seconds"] = json!(IDLE_SECONDS);
    let path = dir.join("cpi.json");
    std::fs::write(&path, config.to_string()).unwrap();
    path
}

/// A stemcell (folder with `stemcell.MF` and `image`) whose rootfs is the test stemcell's
/// plus `extra_mib` of incompressible data: larger than what the CPI and the kernel buffer
/// for one node, so a node that reads nothing really holds the transfer up.
fn big_stemcell(dir: &Path, extra_mib: usize) -> PathBuf {
    use sha1::Digest;
    let source = test_stemcell_dir();
    let original = std::fs::File::open(source.join("image")).unwrap();
    let mut entries = tar::Archive::new(flate2::read::GzDecoder::new(original));
    let image_path = dir.join("image");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&image_path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut out = tar::Builder::new(gz);
    for entry in entries.entries().unwrap() {
        let mut entry = entry.unwrap();
        let mut header = entry.header().clone();
        let path = entry.path().unwrap().into_owned();
        match header.entry_type() {
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name().unwrap().unwrap().into_owned();
                out.append_link(&mut header, &path, &target).unwrap();
            }
            _ => out.append_data(&mut header, &path, &mut entry).unwrap(),
        }
    }
    let mut noise = vec![0u8; extra_mib << 20];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for chunk in noise.chunks_mut(8) {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        chunk.copy_from_slice(&state.to_le_bytes()[..chunk.len()]);
    }
    let mut header = tar::Header::new_gnu();
    header.set_size(noise.len() as u64);
    header.set_mode(0o644);
    header.set_cksum();
    out.append_data(&mut header, "var/noise.bin", noise.as_slice())
        .unwrap();
    out.into_inner().unwrap().finish().unwrap();

    let sha1 = hex::encode(sha1::Sha1::digest(std::fs::read(&image_path).unwrap()));
    let manifest = std::fs::read_to_string(source.join("stemcell.MF")).unwrap();
    let manifest: String = manifest
        .lines()
        .map(|l| {
            if l.starts_with("sha1:") {
                format!("sha1: {sha1}\n")
            } else {
                format!("{l}\n")
            }
        })
        .collect();
    std::fs::write(dir.join("stemcell.MF"), manifest).unwrap();
    image_path
}

/// `run_cpi`, but a call still running after `limit` is killed and fails the test: a CPI
/// that hangs on a frozen node is exactly the defect under test.
fn run_cpi_within(request: &str, config: &Path, limit: Duration) -> Value {
    let mut child = spawn_cpi(request, config, Stdio::piped());
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cpi still running after {limit:?} with a frozen node: {request}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    serde_json::from_slice(&out.stdout).expect("one JSON response")
}

/// create_stemcell of `image` with `frozen_node` frozen: it succeeds on the other nodes
/// and its log names the frozen one with the reason; the stemcell's cid.
fn create_stemcell_beside(
    frozen_node: &str,
    image: &Path,
    impatient: &Path,
    bound: Duration,
) -> String {
    let req = json!({"method":"create_stemcell","arguments":[image, {}],"api_version":2});
    let response = run_cpi_within(&req.to_string(), impatient, bound);
    let cid = response["result"]
        .as_str()
        .unwrap_or_else(|| panic!("create_stemcell must succeed on the other nodes: {response}"))
        .to_string();
    let log = response["log"].as_str().unwrap();
    assert!(
        log.contains(frozen_node)
            && (log.contains("nothing moved") || log.contains("no answer to a ping")),
        "the frozen node is named with the reason: {log}"
    );
    cid
}

/// has_vm of `before` on the frozen node fails retriably, naming the node, instead of
/// hanging.
fn assert_has_vm_fails_retriably(
    before: &str,
    frozen_node: &str,
    impatient: &Path,
    bound: Duration,
) {
    let req = json!({"method":"has_vm","arguments":[before]});
    let response = run_cpi_within(&req.to_string(), impatient, bound);
    assert_eq!(
        response["error"]["type"], "Bosh::Clouds::CloudError",
        "{response}"
    );
    assert_eq!(response["error"]["ok_to_retry"], true, "{response}");
    assert!(
        response["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains(frozen_node)),
        "{response}"
    );
}

/// The stemcell `cid` is on every node but `frozen_node`, and its record leaves it out.
fn assert_stemcell_only_beside(config: &Path, cid: &str, frozen_node: &str) {
    let reference = format!("moltencore-stemcell:{cid}");
    let nodes = node_names();
    for node in &nodes {
        assert_eq!(
            has_image(node, &reference),
            node != frozen_node,
            "{reference} on {node}"
        );
    }
    let record = index_record(config, &format!("stemcells/{cid}")).expect("stemcell record");
    assert!(
        !record["nodes"]
            .as_array()
            .unwrap()
            .contains(&json!(frozen_node)),
        "{record}"
    );
}

#[test]
fn a_frozen_node_fails_calls_retriably_and_drops_out_of_create_stemcell() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let impatient = impatient_config(dir.path());
    let config = cluster_config();
    let image = big_stemcell(dir.path(), 48);
    let (frozen_node, prefix) = node_prefix(2);
    let bound = Duration::from_secs(120);

    // A VM on the node before it freezes.
    let before = static_vm(
        &config,
        &shared_stemcell(),
        "before-freeze",
        &format!("{prefix}.71"),
    );

    let frozen = Frozen::node(&frozen_node);

    // 1. The upload goes to the other nodes; the frozen one is named with the reason.
    let cid = create_stemcell_beside(&frozen_node, &image, &impatient, bound);

    // 2. Control requests to the frozen node fail retriably instead of hanging.
    assert_has_vm_fails_retriably(&before, &frozen_node, &impatient, bound);
    let agent = agent_id("while-frozen");
    let req = static_vm_request(&agent, &cid, &format!("{prefix}.72"));
    let response = run_cpi_within(&req, &impatient, bound);
    assert_eq!(
        response["error"]["type"], "Bosh::Clouds::VMCreationFailed",
        "{response}"
    );
    assert_eq!(response["error"]["ok_to_retry"], true, "{response}");
    assert!(index_records_of_agent(&config, &agent).is_empty());

    drop(frozen);

    let reference = format!("moltencore-stemcell:{cid}");
    assert_stemcell_only_beside(&config, &cid, &frozen_node);
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });

    // 3. Thawed, the node gets the stemcell copied when a VM is placed there.
    let vm = expect_result(&req, Some(&config))[0]
        .as_str()
        .unwrap()
        .to_string();
    assert!(has_image(&frozen_node, &reference));
    for req in [
        json!({"method":"delete_vm","arguments":[vm]}),
        json!({"method":"delete_vm","arguments":[before]}),
        json!({"method":"delete_stemcell","arguments":[cid]}),
    ] {
        assert_eq!(expect_result(&req.to_string(), Some(&config)), Value::Null);
    }
}

/// A disk made on a VM on `source` (at `<source_prefix>.<host>`), 96 MiB of random data
/// written on it, then detached and its VM deleted; the disk and the data's checksum.
fn disk_with_96_mib_on(
    config: &Path,
    source: &str,
    source_prefix: &str,
    host: u8,
) -> (String, String) {
    let writer = static_vm(
        config,
        &shared_stemcell(),
        "freeze-move-src",
        &format!("{source_prefix}.{host}"),
    );
    let disk = create_disk(json!([128, {}, writer]));
    call("attach_disk", json!([writer, disk]));
    // 96 MiB on the 128 MiB disk, mounted in the VM (the detach unmounts it).
    let path = mount_disk_in(source, &writer, &disk);
    sh(
        source,
        &writer,
        &format!("dd if=/dev/urandom of={path}/big bs=1M count=96 2>/dev/null"),
    );
    let sum = sh(source, &writer, &format!("cd {path} && md5sum big"));
    call("detach_disk", json!([writer, disk]));
    call("delete_vm", json!([writer]));
    (disk, sum)
}

/// Runs `request` (an attach that moves a disk into `target`) and freezes `target` as soon
/// as the copy's helper (labelled `helper`) is there; the freeze (none when the move
/// finished first) and the CPI's answer, which must come within 120 s.
fn attach_freezing_target(
    request: &str,
    impatient: &Path,
    target: &str,
    helper: &str,
) -> (Option<Frozen>, Value) {
    let mut child = spawn_cpi(request, impatient, Stdio::piped());
    let frozen = runtime().block_on(async {
        loop {
            if !containers_labelled(target, helper).await.is_empty() {
                return Some(Frozen::node(target));
            }
            if child.try_wait().unwrap().is_some() {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("attach_disk still running after 120 s with {target} frozen");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let out = child.wait_with_output().unwrap();
    let response: Value = serde_json::from_slice(&out.stdout).expect("one JSON response");
    (frozen, response)
}

/// Thawed, the same attach of `disk` to `vm` finishes the move from `source` to `target`
/// with the data intact (`sum`), and leaves no copy helper and no source volume.
fn assert_the_move_finishes(vm: &str, disk: &str, (source, target): (&str, &str), sum: &str) {
    let helper = format!("moltencore.helper={disk}");
    assert_eq!(
        call("attach_disk", json!([vm, disk])),
        json!(format!("/warden-cpi-dev/{disk}"))
    );
    let path = mount_disk_in(target, vm, disk);
    assert_eq!(sh(target, vm, &format!("cd {path} && md5sum big")), sum);
    runtime().block_on(async {
        for node in [source, target] {
            assert!(
                containers_labelled(node, &helper).await.is_empty(),
                "copy helpers left on {node}"
            );
        }
    });
    assert!(
        volume_on(source, disk).is_none(),
        "source removed after the move"
    );
}

#[test]
fn a_disk_move_into_a_node_that_freezes_fails_retriably_and_the_next_attach_finishes_it() {
    let _turn = take_turn();
    let dir = tempfile::tempdir().unwrap();
    let impatient = impatient_config(dir.path());
    let config = cluster_config();
    let (source, source_prefix) = node_prefix(0);
    let (target, target_prefix) = node_prefix(2);
    let vm = static_vm(
        &config,
        &shared_stemcell(),
        "freeze-move-dst",
        &format!("{target_prefix}.73"),
    );

    for attempt in 0..5u8 {
        // A disk with enough data that the copy is still streaming when the node freezes.
        let (disk, sum) = disk_with_96_mib_on(&config, &source, &source_prefix, 73 + attempt);

        let request = json!({"method":"attach_disk","arguments":[vm, disk]}).to_string();
        let helper = format!("moltencore.helper={disk}");
        let (frozen, response) = attach_freezing_target(&request, &impatient, &target, &helper);
        let Some(frozen) = frozen else {
            // The move finished before the node could be frozen: try again with a new disk.
            assert!(response["error"].is_null(), "{response}");
            call("detach_disk", json!([vm, disk]));
            call("delete_disk", json!([disk]));
            continue;
        };
        drop(frozen);

        assert_eq!(response["error"]["ok_to_retry"], true, "{response}");
        let message = response["error"]["message"].as_str().unwrap();
        assert!(
            message.contains(&target) && message.contains(&disk),
            "{message}"
        );
        assert_eq!(
            index_record(&config, &format!("disks/{disk}")).unwrap()["node"],
            source.as_str(),
            "the disk still belongs to its source node"
        );
        // Thawed, the same attach finishes the move, with the data intact.
        assert_the_move_finishes(&vm, &disk, (&source, &target), &sum);
        call("delete_vm", json!([vm]));
        call("delete_disk", json!([disk]));
        return;
    }
    panic!("in 5 attempts the move always finished before the node could be frozen");
}
