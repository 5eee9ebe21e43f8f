//! Helpers shared by the black-box tests: run the built `cpi` binary, check the response
//! document, and find the local cluster brought up by `ci/cluster`.
#![allow(dead_code)]

pub mod bosh;

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use bollard::models::ContainerSummary;
use serde_json::Value;

/// What one `cpi` run produced.
pub struct CpiRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON (the test fails if it is not).
    pub response: Value,
}

/// Path of the built binary.
pub fn cpi_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cpi"))
}

/// Runs `cpi` with `request` on stdin and the given config and extra environment.
pub fn run_cpi(request: &str, config: Option<&Path>, env: &[(&str, &str)]) -> CpiRun {
    let mut cmd = Command::new(cpi_bin());
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    } else {
        cmd.arg("-c").arg("/nonexistent/cpi.json");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("MOLTENCORE_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = start_with_request(cmd, request)
        .wait_with_output()
        .expect("wait for cpi");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let response: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one response line expected:\n{stdout}"
    );
    CpiRun {
        status: out.status,
        stdout,
        stderr,
        response,
    }
}

/// Asserts the response document has the contract's shape: `result`, `error` and `log`
/// present, `log` a string, and `error` either null or a typed object with a boolean
/// `ok_to_retry`. Also asserts exit status 0.
pub fn assert_schema(run: &CpiRun) {
    assert!(
        run.status.success(),
        "exit status {:?}, stderr:\n{}",
        run.status,
        run.stderr
    );
    let r = run.response.as_object().expect("response is an object");
    assert_eq!(r.len(), 3, "exactly result/error/log: {}", run.stdout);
    assert!(r.contains_key("result"), "no result: {}", run.stdout);
    assert!(r["log"].is_string(), "log must be a string: {}", run.stdout);
    match &r["error"] {
        Value::Null => {}
        Value::Object(e) => {
            let t = e["type"].as_str().expect("error.type is a string");
            assert!(t.starts_with("Bosh::Clouds::"), "error type {t}");
            assert!(e["message"].is_string(), "error.message: {}", run.stdout);
            assert!(e["ok_to_retry"].is_boolean(), "ok_to_retry: {}", run.stdout);
            assert!(r["result"].is_null(), "result must be null on error");
        }
        other => panic!("error must be null or an object, got {other}"),
    }
}

/// Runs and checks the schema, then returns the error (type, message) or panics.
pub fn expect_error(request: &str, config: Option<&Path>) -> (String, String, CpiRun) {
    let run = run_cpi(request, config, &[]);
    assert_schema(&run);
    let e = &run.response["error"];
    assert!(e.is_object(), "expected an error, got {}", run.stdout);
    (
        e["type"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
        run,
    )
}

/// Runs and checks the schema, then returns the result or panics with the error.
pub fn expect_result(request: &str, config: Option<&Path>) -> Value {
    let run = run_cpi(request, config, &[]);
    assert_schema(&run);
    assert!(
        run.response["error"].is_null(),
        "expected success, got {}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run.response["result"].clone()
}

/// The running local cluster, from `MC_CLUSTER_FILE`. Fails loudly when absent: these
/// tests need the real daemons and must never pass without them.
pub fn cluster() -> Value {
    let path = std::env::var("MC_CLUSTER_FILE").unwrap_or_else(|_| {
        panic!(
            "MC_CLUSTER_FILE is not set: this test needs the local cluster. \
             Run the tests with ci/test, or `ci/cluster up` and `eval \"$(ci/cluster env)\"`."
        )
    });
    let text = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("cannot read MC_CLUSTER_FILE {path}: {e}"));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path} is not JSON: {e}"))
}

/// The cluster's generated cpi.json.
pub fn cluster_config() -> PathBuf {
    PathBuf::from(
        cluster()["cpi_config_file"]
            .as_str()
            .expect("cluster.json has cpi_config_file"),
    )
}

/// The test stemcell folder built by ci/build-test-stemcell (MC_TEST_STEMCELL_DIR); fails
/// loudly when it is not there.
pub fn test_stemcell_dir() -> PathBuf {
    let dir = std::env::var("MC_TEST_STEMCELL_DIR").unwrap_or_else(|_| {
        panic!(
            "MC_TEST_STEMCELL_DIR is not set: build it with ci/build-test-stemcell (ci/test does)"
        )
    });
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("image").is_file() && dir.join("stemcell.MF").is_file(),
        "{} holds no test stemcell",
        dir.display()
    );
    dir
}

/// Node names of the running cluster, in order.
pub fn node_names() -> Vec<String> {
    cluster()["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

/// A Docker client for a node through its unix socket (the harness's own access, not the
/// CPI's), to check what really happened on the node.
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

/// A tokio runtime for tests that talk to the nodes.
pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Writes a copy of the cluster's cpi.json with another etcd key prefix, so a test can
/// register its own (possibly broken) nodes without disturbing the shared cluster. Returns
/// the config path and the prefix.
pub fn private_config(dir: &Path) -> (PathBuf, String) {
    let mut config: Value =
        serde_json::from_str(&std::fs::read_to_string(cluster_config()).unwrap()).unwrap();
    let prefix = format!("/moltencore-test-{}", uuid::Uuid::new_v4().simple());
    config["etcd"]["key_prefix"] = Value::String(prefix.clone());
    let path = dir.join("cpi.json");
    std::fs::write(&path, config.to_string()).unwrap();
    (path, prefix)
}

/// Copies the cluster's node records (and the CA) under `prefix`, and adds the extra
/// records given as (name, JSON).
pub fn register_nodes(config: &Path, prefix: &str, extra: &[(&str, Value)]) {
    let cfg = load_config(config);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        let mut kv = etcd.client();
        let base = cluster()["key_prefix"].as_str().unwrap().to_string();
        let src = kv
            .get(
                format!("{base}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        for item in src.kvs() {
            let key = item.key_str().unwrap();
            let rest = key.strip_prefix(&base).unwrap();
            if rest.starts_with("/nodes/") || rest == "/pki/ca.crt" {
                kv.put(format!("{prefix}{rest}"), item.value(), None)
                    .await
                    .unwrap();
            }
        }
        for (name, record) in extra {
            kv.put(format!("{prefix}/nodes/{name}"), record.to_string(), None)
                .await
                .unwrap();
        }
    });
}

/// A node record whose Docker endpoint refuses connections at once.
pub fn dead_node_record(name: &str) -> Value {
    serde_json::json!({"name": name, "private_ip": "192.0.2.250",
        "docker_endpoint": "tcp://127.0.0.1:9", "subnet": "10.1.200.0/24",
        "gateway": "10.1.200.1", "state": "ready"})
}

/// A stemcell imported once per test binary (tests of one binary share it).
pub fn shared_stemcell() -> String {
    static CID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CID.get_or_init(|| {
        let image = test_stemcell_dir().join("image");
        let req = serde_json::json!({"method":"create_stemcell",
            "arguments":[image.to_str().unwrap(), {}]});
        expect_result(&req.to_string(), Some(&cluster_config()))
            .as_str()
            .expect("stemcell cid")
            .to_string()
    })
    .clone()
}

/// A unique agent id, so a test can find everything its VM left on any node.
pub fn agent_id(test: &str) -> String {
    format!("agent-{test}-{}", uuid::Uuid::new_v4().simple())
}

/// A create_vm request.
pub fn create_vm_request(
    agent: &str,
    stemcell: &str,
    cloud_properties: Value,
    networks: Value,
    env: Value,
    api_version: u32,
) -> String {
    serde_json::json!({"method": "create_vm",
        "arguments": [agent, stemcell, cloud_properties, networks, [], env],
        "context": {"director_uuid": "d", "request_id": "cpi-test"},
        "api_version": api_version})
    .to_string()
}

/// A manual network on `ip` of the node subnet `a.b.c.0/24`.
pub fn manual_network(ip: &str) -> Value {
    let gw = format!("{}.1", ip.rsplit_once('.').unwrap().0);
    serde_json::json!({"default": {"type": "manual", "ip": ip, "netmask": "255.255.255.0",
        "gateway": gw, "dns": [gw], "default": ["dns", "gateway"], "cloud_properties": {}}})
}

/// The subnet prefix (`10.1.2`) of the node at `index` (0-based) in cluster.json.
pub fn node_prefix(index: usize) -> (String, String) {
    let c = cluster();
    let node = &c["nodes"][index];
    let subnet = node["subnet"].as_str().unwrap();
    let prefix = subnet.rsplit_once('.').unwrap().0.to_string();
    (node["name"].as_str().unwrap().to_string(), prefix)
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

/// `systemd-analyze verify --root=<root> <units>`, as run on Debian (package systemd).
pub fn systemd_verify(root: &Path, units: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (Debian package systemd): {e}"))
}

/// The volume `name` on `node`, or `None` when the node has no volume by that name.
pub fn volume_on(node: &str, name: &str) -> Option<bollard::models::Volume> {
    runtime().block_on(async { node_socket(node).await.inspect_volume(name).await.ok() })
}

/// Every container (running or not) on `node` carrying `label` (`key=value`).
pub async fn containers_labelled(node: &str, label: &str) -> Vec<ContainerSummary> {
    containers_where(node, "label", label).await
}

/// Every container (running or not) on `node` matching one Docker list filter
/// (`label`, `volume`, ...).
pub async fn containers_where(node: &str, filter: &str, value: &str) -> Vec<ContainerSummary> {
    use bollard::query_parameters::ListContainersOptionsBuilder;
    let filters: std::collections::HashMap<String, Vec<String>> =
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

/// Containers and volumes on any node carrying `moltencore.vm.agent_id=<agent>`.
pub async fn leftovers_of_agent(agent: &str) -> Vec<String> {
    use bollard::query_parameters::ListVolumesOptionsBuilder;
    let label = format!("moltencore.vm.agent_id={agent}");
    let filters: std::collections::HashMap<String, Vec<String>> =
        [("label".to_string(), vec![label.clone()])].into();
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

/// The VM index records (as JSON) whose agent_id is `agent`.
pub fn index_records_of_agent(config: &Path, agent: &str) -> Vec<Value> {
    let cfg = load_config(config);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        let prefix = format!("{}/vms/", cfg.etcd.key_prefix);
        let resp = etcd
            .client()
            .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .filter_map(|kv| serde_json::from_slice::<Value>(kv.value()).ok())
            .filter(|v| v["agent_id"] == agent)
            .collect()
    })
}

/// One index record (JSON) at `<key_prefix>/<suffix>` of the config's prefix.
pub fn index_record(config: &Path, suffix: &str) -> Option<Value> {
    let cfg = load_config(config);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        let key = format!("{}/{suffix}", cfg.etcd.key_prefix);
        let resp = etcd.client().get(key, None).await.unwrap();
        resp.kvs()
            .first()
            .map(|kv| serde_json::from_slice(kv.value()).unwrap())
    })
}

/// Deletes one key of the index (`suffix` under the config's prefix), as an operator
/// with etcdctl would.
pub fn delete_index_record(config: &Path, suffix: &str) {
    let cfg = load_config(config);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        etcd.client()
            .delete(format!("{}/{suffix}", cfg.etcd.key_prefix), None)
            .await
            .unwrap();
    });
}

/// Overwrites one node record under a private prefix (see [`private_config`]).
pub fn put_node_record(config: &Path, name: &str, record: &Value) {
    put_index_record(config, &format!("nodes/{name}"), record);
}

/// Overwrites the record at `<key_prefix>/<suffix>` of the config's prefix.
pub fn put_index_record(config: &Path, suffix: &str, record: &Value) {
    let cfg = load_config(config);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        etcd.client()
            .put(
                format!("{}/{suffix}", cfg.etcd.key_prefix),
                record.to_string(),
                None,
            )
            .await
            .unwrap();
    });
}

/// Starts `cpi` on `config` with `request` written to its stdin (then closed); stderr is
/// dropped, stdout goes to `stdout`.
pub fn spawn_cpi(request: &str, config: &Path, stdout: Stdio) -> std::process::Child {
    let mut cmd = Command::new(cpi_bin());
    cmd.arg("-c")
        .arg(config)
        .stdout(stdout)
        .stderr(Stdio::null());
    start_with_request(cmd, request)
}

/// Spawns `cmd` with `request` written to its stdin, which is then closed.
fn start_with_request(mut cmd: Command, request: &str) -> std::process::Child {
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn cpi");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .expect("write request");
    child
}

/// Runs `cpi` with `request` and kills it (SIGKILL) as soon as `reached().await` is true,
/// polling every few milliseconds. Returns false when the call ended (or 30 s passed)
/// before that point was reached.
pub fn kill_cpi_when<F, Fut>(request: &str, config: &Path, mut reached: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    use std::time::{Duration, Instant};
    let mut child = spawn_cpi(request, config, Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught = runtime().block_on(async {
        loop {
            if reached().await {
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    caught
}

/// Runs the `create_vm` `request` of `agent` and kills it (SIGKILL) once its container
/// exists on a node, as a director restart would; asserts it was caught in time.
pub fn kill_create_vm_once_its_container_exists(request: &str, config: &Path, agent: &str) {
    let caught = kill_cpi_when(request, config, || {
        let agent = agent.to_string();
        async move {
            leftovers_of_agent(&agent)
                .await
                .iter()
                .any(|l| l.starts_with("container"))
        }
    });
    assert!(caught, "create_vm finished before it could be killed");
}

/// Creates a VM (API v2) from `stemcell` with the static `ip` through `config`; its cid.
pub fn static_vm(config: &Path, stemcell: &str, test: &str, ip: &str) -> String {
    let req = create_vm_request(
        &agent_id(test),
        stemcell,
        serde_json::json!({}),
        manual_network(ip),
        serde_json::json!({}),
        2,
    );
    expect_result(&req, Some(config))[0]
        .as_str()
        .expect("create_vm answers [cid, networks]")
        .to_string()
}

/// Runs the `create_vm` `request` as the director retries it, every 2 s for up to 60 s,
/// until it succeeds; every refusal must be retriable and pass `check`. The new VM's cid.
pub fn create_vm_retrying(request: &str, config: &Path, check: impl Fn(&CpiRun)) -> String {
    use std::time::{Duration, Instant};
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = run_cpi(request, Some(config), &[]);
        assert_schema(&run);
        if run.response["error"].is_null() {
            return run.response["result"][0].as_str().unwrap().to_string();
        }
        assert_eq!(run.response["error"]["ok_to_retry"], true, "{}", run.stdout);
        check(&run);
        assert!(Instant::now() < deadline, "still refused: {}", run.stdout);
        std::thread::sleep(Duration::from_secs(2));
    }
}

/// A cpi.json loaded with the CPI's own loader.
pub fn load_config(config: &Path) -> moltencore::config::Config {
    moltencore::config::Config::from_value(
        serde_json::from_str(&std::fs::read_to_string(config).unwrap()).unwrap(),
    )
    .unwrap_or_else(|e| panic!("{}: {e}", config.display()))
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
