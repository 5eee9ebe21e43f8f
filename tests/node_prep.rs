//! `cpi node-prep` run for real into temp roots against the harness's etcd (each test
//! under its own key and flannel prefix, so the cluster the other tests use is never
//! touched) and the nodes' real dockerd: idempotence, one CA from concurrent first runs,
//! renewal, the reservation path, dry runs, unit files that systemd accepts, and bad
//! input that fails loudly without leaving anything half-written.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use etcd_client::GetOptions;
use moltencore::cluster::{Etcd, EtcdAccess, Keys, NodeRecord, NodeState};
use moltencore::config::{Secret, TlsMaterial};
use moltencore::ids::VmCid;
use moltencore::nodeprep::pki;
use moltencore_testkit::{cluster::cluster, cpi::cpi_bin, tools::systemd_verify};
use serde_json::{Value, json};

/// A private corner of the harness's etcd.
struct Prefixes {
    key: String,
    flannel: String,
}

impl Prefixes {
    /// The cluster's keys under these prefixes, as the CPI derives them.
    fn keys(&self) -> Keys {
        Keys::with_prefixes(&self.key, &self.flannel)
    }
}

/// A VM cid of the index, for records written by hand.
fn vm_cid(text: &str) -> VmCid {
    VmCid::parse(text).expect("a VM cid")
}

fn prefixes() -> Prefixes {
    let id = uuid::Uuid::new_v4().simple().to_string();
    Prefixes {
        key: format!("/np-test-{id}"),
        flannel: format!("/np-test-{id}/flannel"),
    }
}

fn read(path: &Value) -> String {
    std::fs::read_to_string(path.as_str().expect("path")).expect("read PEM")
}

fn etcd_flags(p: &Prefixes) -> Vec<String> {
    let c = cluster();
    let e = &c["etcd"];
    vec![
        "--etcd-endpoints".into(),
        e["endpoints"][0].as_str().unwrap().into(),
        "--etcd-ca".into(),
        e["ca_cert_file"].as_str().unwrap().into(),
        "--etcd-cert".into(),
        e["client_cert_file"].as_str().unwrap().into(),
        "--etcd-key".into(),
        e["client_key_file"].as_str().unwrap().into(),
        "--key-prefix".into(),
        p.key.clone(),
        "--flannel-prefix".into(),
        p.flannel.clone(),
    ]
}

fn node_prep(args: &[String]) -> Command {
    let mut cmd = Command::new(cpi_bin());
    cmd.arg("node-prep")
        .args(args)
        .env_remove("ETCDCTL_ENDPOINTS")
        .env_remove("ETCDCTL_CACERT")
        .env_remove("ETCDCTL_CERT")
        .env_remove("ETCDCTL_KEY");
    cmd
}

/// Flags for one node `name` at `ip` in `root`.
fn prep_args(root: &Path, name: &str, ip: &str, p: &Prefixes, extra: &[&str]) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--json".into(),
        "--root".into(),
        root.display().to_string(),
        "--name".into(),
        name.into(),
        "--private-ip".into(),
        ip.into(),
    ];
    args.extend(etcd_flags(p));
    args.extend(extra.iter().map(|s| s.to_string()));
    args
}

fn ok_report(out: &Output) -> Value {
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "node-prep failed ({:?}):\n{stdout}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("report is not JSON ({e}):\n{stdout}"))
}

fn prep(root: &Path, name: &str, ip: &str, p: &Prefixes, extra: &[&str]) -> Value {
    ok_report(
        &node_prep(&prep_args(root, name, ip, p, extra))
            .output()
            .unwrap(),
    )
}

fn failed(out: &Output) -> String {
    assert!(
        !out.status.success(),
        "expected a failure, got success:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn changes(report: &Value) -> Vec<String> {
    report["changes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_string())
        .collect()
}

fn has_change(report: &Value, text: &str) -> bool {
    changes(report).iter().any(|c| c.contains(text))
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

async fn etcd() -> Etcd {
    let c = cluster();
    let e = &c["etcd"];
    let access = EtcdAccess {
        endpoints: vec![e["endpoints"][0].as_str().unwrap().into()],
        tls: Some(TlsMaterial {
            ca_cert: Some(read(&e["ca_cert_file"])),
            client_cert: Some(read(&e["client_cert_file"])),
            client_key: Some(Secret::new(read(&e["client_key_file"]))),
        }),
        auth: None,
        timeout: Duration::from_secs(5),
    };
    Etcd::connect_with(&access)
        .await
        .expect("connect to the harness's etcd")
}

fn get(key: &str) -> Option<String> {
    runtime().block_on(async {
        let r = etcd().await.client().get(key, None).await.unwrap();
        r.kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string())
    })
}

fn count_under(prefix: &str) -> usize {
    runtime().block_on(async {
        let r = etcd()
            .await
            .client()
            .get(
                prefix,
                Some(GetOptions::new().with_prefix().with_count_only()),
            )
            .await
            .unwrap();
        usize::try_from(r.count()).unwrap()
    })
}

fn put(key: &str, value: &str) {
    runtime().block_on(async {
        etcd().await.client().put(key, value, None).await.unwrap();
    })
}

fn delete(key: &str) {
    runtime().block_on(async {
        etcd().await.client().delete(key, None).await.unwrap();
    })
}

fn mode(path: &Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

fn file(root: &Path, path: &str) -> PathBuf {
    root.join(path.trim_start_matches('/'))
}

fn is_empty_dir(dir: &Path) -> bool {
    std::fs::read_dir(dir).unwrap().next().is_none()
}

/// The first run's report: changed, the CA created, the Flannel config written and a
/// subnet reserved, and the units (re)started in order.
fn assert_first_run_report(first: &Value) {
    assert_eq!(first["changed"], true);
    assert!(has_change(first, "created the cluster CA"), "{first:#}");
    assert!(has_change(first, "wrote flannel config"), "{first:#}");
    assert!(
        has_change(first, "reserved flannel subnet 10.200.1.0/24"),
        "{first:#}"
    );
    assert_eq!(
        first["systemd"],
        json!([
            "daemon-reload",
            "enable --now moltencore-docker-tls.socket",
            "enable --now moltencore-disk-mounts.service",
            "restart docker.service",
            "enable --now --no-block moltencore-network.service",
            "enable --now --no-block moltencore-reboot-manager.service"
        ])
    );
}

/// etcd after the first run: the CA, Flannel's config with everything explicit, the
/// reservation, and the node's record; the record.
fn assert_etcd_after_first_run(p: &Prefixes) -> NodeRecord {
    assert!(
        get(&p.keys().ca_cert())
            .unwrap()
            .contains("BEGIN CERTIFICATE")
    );
    assert!(get(&p.keys().ca_key()).unwrap().contains("PRIVATE KEY"));
    let config: Value = serde_json::from_str(&get(&p.keys().flannel_config()).unwrap()).unwrap();
    assert_eq!(
        config,
        json!({"Network":"10.200.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}})
    );
    // The lease key as flanneld names it (`<network>-<length>`): written literally, it is
    // Flannel's layout, not the CPI's.
    let lease: Value =
        serde_json::from_str(&get(&format!("{}/subnets/10.200.1.0-24", p.flannel)).unwrap())
            .unwrap();
    assert_eq!(lease["PublicIP"], "192.0.2.11");
    let record: NodeRecord = serde_json::from_str(&get(&p.keys().node("t1")).unwrap()).unwrap();
    assert_eq!(record.docker_endpoint, "tcp://192.0.2.11:2376");
    assert_eq!(record.subnet.to_string(), "10.200.1.0/24");
    assert_eq!(record.gateway.to_string(), "10.200.1.1");
    assert_eq!(record.mtu, 1450, "vxlan: link MTU 1500 - 50");
    assert_eq!(record.state, NodeState::Ready);
    assert!(record.capacity.cpus > 0 && record.capacity.memory_mib > 0);
    assert!(record.prepared_at.is_some());
    record
}

/// The files of the first run: the certificates, the key 0600, Docker's options and the
/// units; the server certificate (PEM).
fn assert_files_after_first_run(root: &Path, p: &Prefixes, record: &NodeRecord) -> String {
    let server = std::fs::read_to_string(file(root, "/etc/moltencore/docker/server.pem")).unwrap();
    let ca = std::fs::read_to_string(file(root, "/etc/moltencore/docker/ca.pem")).unwrap();
    assert_eq!(ca, get(&p.keys().ca_cert()).unwrap());
    let info = pki::inspect(&server, &ca).unwrap();
    assert!(info.signed_by_ca);
    assert_eq!(
        record.cert_fingerprint.as_deref(),
        Some(info.fingerprint.as_str())
    );
    for san in ["IP:192.0.2.11", "IP:127.0.0.1", "DNS:t1"] {
        assert!(info.sans.contains(san), "{san} missing: {:?}", info.sans);
    }
    assert_eq!(
        mode(&file(root, "/etc/moltencore/docker/server-key.pem")),
        0o600
    );
    let env = std::fs::read_to_string(file(root, "/etc/moltencore/docker/docker.env")).unwrap();
    assert!(
        env.contains("DOCKER_OPT_BIP=\"--bip=10.255.240.1/20\""),
        "{env}"
    );
    assert!(env.contains("--tlsverify"), "{env}");
    let socket = std::fs::read_to_string(file(
        root,
        "/etc/systemd/system/moltencore-docker-tls.socket",
    ))
    .unwrap();
    assert!(socket.contains("ListenStream=192.0.2.11:2376"), "{socket}");
    assert!(
        file(
            root,
            "/etc/systemd/system/docker.service.d/50-moltencore.conf"
        )
        .exists()
    );
    assert!(file(root, "/etc/systemd/system/moltencore-network.service").exists());
    assert!(file(root, "/etc/systemd/system/moltencore-disk-mounts.service").exists());
    server
}

/// A second run changes nothing, restarts nothing and keeps the certificate (`server`),
/// and says so to a human too.
fn assert_second_run_changes_nothing(root: &Path, p: &Prefixes, server: &str) {
    let out = node_prep(&prep_args(root, "t1", "192.0.2.11", p, &[]))
        .output()
        .unwrap();
    let second = ok_report(&out);
    assert_eq!(second["changed"], false, "{second:#}");
    assert_eq!(second["systemd"], json!([]));
    assert_eq!(
        std::fs::read_to_string(file(root, "/etc/moltencore/docker/server.pem")).unwrap(),
        *server
    );
    let mut args = prep_args(root, "t1", "192.0.2.11", p, &[]);
    args.retain(|a| a != "--json");
    let human = node_prep(&args).output().unwrap();
    let text = String::from_utf8_lossy(&human.stdout);
    assert!(
        human.status.success() && text.contains("no change"),
        "{text}"
    );
}

#[test]
fn prepares_a_fresh_root_then_a_second_run_changes_nothing() {
    let p = prefixes();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    // No flannel config and no lease yet: node-prep writes the config and reserves.
    let first = prep(
        root,
        "t1",
        "192.0.2.11",
        &p,
        &["--flannel-network", "10.200.0.0/16"],
    );
    assert_first_run_report(&first);

    // etcd: CA, flannel config with everything explicit, the reservation, the record.
    let record = assert_etcd_after_first_run(&p);

    // Files: the certificates, the key 0600, Docker's options and the units.
    let server = assert_files_after_first_run(root, &p, &record);

    // Second run: nothing changes, nothing restarts, the certificate stays.
    assert_second_run_changes_nothing(root, &p, &server);
}

#[test]
fn a_dry_run_reports_and_writes_nothing() {
    let p = prefixes();
    let dir = tempfile::tempdir().unwrap();
    let report = prep(
        dir.path(),
        "t1",
        "192.0.2.21",
        &p,
        &["--dry-run", "--flannel-network", "10.202.0.0/16"],
    );
    assert_eq!(report["dry_run"], true);
    assert!(
        has_change(&report, "would create the cluster CA"),
        "{report:#}"
    );
    assert!(
        has_change(&report, "would reserve flannel subnet"),
        "{report:#}"
    );
    assert!(
        changes(&report).iter().all(|c| c.starts_with("would ")),
        "{report:#}"
    );
    assert!(is_empty_dir(dir.path()), "a dry run wrote files");
    assert_eq!(
        count_under(&format!("{}/", p.key)),
        0,
        "a dry run wrote to etcd"
    );
}

#[test]
fn three_first_runs_at_once_agree_on_one_ca_and_distinct_subnets() {
    let p = prefixes();
    let dirs: Vec<_> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
    let children: Vec<_> = dirs
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let args = prep_args(
                d.path(),
                &format!("c{i}"),
                &format!("192.0.2.{}", 31 + i),
                &p,
                &["--flannel-network", "10.201.0.0/16"],
            );
            node_prep(&args)
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let reports: Vec<Value> = children
        .into_iter()
        .map(|c| ok_report(&c.wait_with_output().unwrap()))
        .collect();
    let ca = get(&p.keys().ca_cert()).expect("a CA in etcd");
    let created = reports
        .iter()
        .filter(|r| has_change(r, "created the cluster CA"))
        .count();
    assert_eq!(created, 1, "exactly one node creates the CA");
    let wrote_config = reports
        .iter()
        .filter(|r| has_change(r, "wrote flannel config"))
        .count();
    assert_eq!(
        wrote_config, 1,
        "exactly one node writes the flannel config"
    );
    let mut subnets = Vec::new();
    for (d, r) in dirs.iter().zip(&reports) {
        let local =
            std::fs::read_to_string(file(d.path(), "/etc/moltencore/docker/ca.pem")).unwrap();
        assert_eq!(local, ca, "{} uses another CA", r["node"]);
        let server =
            std::fs::read_to_string(file(d.path(), "/etc/moltencore/docker/server.pem")).unwrap();
        assert!(pki::inspect(&server, &ca).unwrap().signed_by_ca);
        subnets.push(r["subnet"].as_str().unwrap().to_string());
    }
    subnets.sort();
    subnets.dedup();
    assert_eq!(
        subnets.len(),
        3,
        "each node reserved its own subnet: {subnets:?}"
    );
}

#[test]
fn a_certificate_near_expiry_or_with_other_sans_is_reissued_a_fresh_one_is_kept() {
    let p = prefixes();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    let net = ["--flannel-network", "10.203.0.0/16"];
    let first = prep(
        root,
        "t1",
        "192.0.2.41",
        &p,
        &[&net[..], &["--cert-days", "10"]].concat(),
    );
    let old_fp = first["certificate"]["fingerprint"]
        .as_str()
        .unwrap()
        .to_string();

    // 10 days left, renewal 30 days before expiry: re-issued, Docker restarted.
    let renewed = prep(root, "t1", "192.0.2.41", &p, &[]);
    assert!(
        has_change(
            &renewed,
            "re-issued the Docker server certificate: it expires"
        ),
        "{renewed:#}"
    );
    assert!(
        renewed["systemd"]
            .as_array()
            .unwrap()
            .contains(&json!("restart docker.service"))
    );
    let new_fp = renewed["certificate"]["fingerprint"].as_str().unwrap();
    assert_ne!(new_fp, old_fp);
    let record: NodeRecord = serde_json::from_str(&get(&p.keys().node("t1")).unwrap()).unwrap();
    assert_eq!(record.cert_fingerprint.as_deref(), Some(new_fp));

    // Fresh now: left alone.
    let again = prep(root, "t1", "192.0.2.41", &p, &[]);
    assert_eq!(again["changed"], false, "{again:#}");

    // The public IP changes: new SANs, new certificate.
    let moved = prep(
        root,
        "t1",
        "192.0.2.41",
        &p,
        &["--public-ip", "198.51.100.41"],
    );
    assert!(has_change(&moved, "SANs changed"), "{moved:#}");
    // The lease is flanneld's PublicIP, the private IP by default: the subnet stays.
    assert_eq!(moved["subnet"], first["subnet"]);
    assert!(!has_change(&moved, "reserved"), "{moved:#}");
    assert!(
        moved["certificate"]["sans"]
            .as_array()
            .unwrap()
            .contains(&json!("IP:198.51.100.41"))
    );
}

#[test]
fn an_existing_lease_is_found_by_public_ip_and_a_cordon_survives_prep() {
    let p = prefixes();
    put(
        &p.keys().flannel_config(),
        r#"{"Network":"10.204.0.0/16","SubnetLen":24,"Backend":{"Type":"host-gw"}}"#,
    );
    // Flanneld's lease, with a TTL-less key as written here; flannel renews it in place.
    put(
        &format!("{}/subnets/10.204.7.0-24", p.flannel),
        r#"{"PublicIP":"192.0.2.51","PublicIPv6":null,"BackendType":"host-gw","BackendData":null}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let report = prep(dir.path(), "t1", "192.0.2.51", &p, &[]);
    assert_eq!(report["subnet"], "10.204.7.0/24");
    assert_eq!(report["mtu"], 1500, "host-gw adds no encapsulation");
    assert!(!has_change(&report, "reserved"), "{report:#}");

    // cpi nodes cordon / uncordon through a cpi.json pointing at this prefix.
    let mut config: Value = serde_json::from_str(
        &std::fs::read_to_string(moltencore_testkit::cluster::cluster_config()).unwrap(),
    )
    .unwrap();
    config["etcd"]["key_prefix"] = json!(p.key);
    config["etcd"]["flannel_prefix"] = json!(p.flannel);
    let cfg = dir.path().join("cpi.json");
    std::fs::write(&cfg, config.to_string()).unwrap();
    let nodes = |args: &[&str]| {
        Command::new(cpi_bin())
            .arg("nodes")
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap()
    };
    let out = nodes(&["cordon", "t1"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let state = || {
        serde_json::from_str::<NodeRecord>(&get(&p.keys().node("t1")).unwrap())
            .unwrap()
            .state
    };
    assert_eq!(state(), NodeState::Cordoned);
    let again = prep(dir.path(), "t1", "192.0.2.51", &p, &[]);
    assert_eq!(again["changed"], false, "{again:#}");
    assert_eq!(state(), NodeState::Cordoned, "node-prep must not uncordon");

    // The listing counts the VM index's records per node.
    put(
        &p.keys()
            .vm(&vm_cid("vm-00000000-0000-0000-0000-000000000001")),
        r#"{"cid":"vm-00000000-0000-0000-0000-000000000001","node":"t1","agent_id":"a","stemcell_cid":"s","memory_mib":512,"created_at":"x","metadata":{}}"#,
    );
    put(
        &p.keys()
            .vm(&vm_cid("vm-00000000-0000-0000-0000-000000000002")),
        r#"{"cid":"vm-00000000-0000-0000-0000-000000000002","node":"t1","agent_id":"b","stemcell_cid":"s","memory_mib":256,"created_at":"x","metadata":{}}"#,
    );
    let out = nodes(&["--json"]);
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let row = &doc["nodes"][0];
    assert_eq!(row["state"], "cordoned", "{doc:#}");
    assert_eq!(row["vms"], 2, "{doc:#}");
    assert_eq!(row["memory_mib_used"], 768, "{doc:#}");

    let out = nodes(&["uncordon", "t1"]);
    assert!(out.status.success());
    assert_eq!(state(), NodeState::Ready);
    let out = nodes(&["cordon", "nope"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no node 'nope'"));
}

#[test]
fn generated_units_pass_systemd_analyze_verify() {
    let p = prefixes();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path();
    prep(
        root,
        "t1",
        "192.0.2.61",
        &p,
        &["--flannel-network", "10.205.0.0/16"],
    );
    // A Flatcar-like root: its docker, docker.socket and flanneld units, the standard
    // targets, and executables where the units point.
    let units = root.join("usr/lib/systemd/system");
    std::fs::create_dir_all(&units).unwrap();
    for entry in std::fs::read_dir("/usr/lib/systemd/system")
        .expect("systemd's units (Debian package systemd)")
    {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "target") {
            std::fs::copy(&path, units.join(path.file_name().unwrap())).unwrap();
        }
    }
    std::fs::write(
        units.join("docker.service"),
        "[Unit]\nDescription=Docker\nAfter=containerd.service docker.socket network-online.target\nWants=network-online.target\nRequires=docker.socket\n\
         [Service]\nType=notify\nEnvironmentFile=-/run/flannel/flannel_docker_opts.env\n\
         ExecStart=/usr/bin/dockerd --host=fd:// $DOCKER_SELINUX $DOCKER_OPTS $DOCKER_CGROUPS $DOCKER_OPT_BIP $DOCKER_OPT_MTU $DOCKER_OPT_IPMASQ\n\
         [Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    std::fs::write(
        units.join("docker.socket"),
        "[Unit]\nDescription=Docker Socket\n[Socket]\nListenStream=/var/run/docker.sock\nSocketMode=0660\n[Install]\nWantedBy=sockets.target\n",
    )
    .unwrap();
    std::fs::write(
        units.join("flanneld.service"),
        "[Unit]\nDescription=flannel\nAfter=etcd-member.service docker.service\n[Service]\nType=notify\nExecStart=/usr/bin/docker run flannel\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    for exe in ["usr/bin/dockerd", "usr/bin/docker", "opt/bin/cpi"] {
        let path = root.join(exe);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let out = systemd_verify(
        root,
        &[
            "/etc/systemd/system/moltencore-docker-tls.socket",
            "/etc/systemd/system/moltencore-network.service",
            "/etc/systemd/system/moltencore-reboot-manager.service",
            "/etc/systemd/system/moltencore-disk-mounts.service",
            "docker.service",
        ],
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "systemd-analyze verify failed:\n{stderr}"
    );
    assert!(
        stderr.trim().is_empty(),
        "systemd-analyze complained:\n{stderr}"
    );
    // Broken on purpose, to prove the check bites.
    std::fs::write(
        root.join("etc/systemd/system/moltencore-network.service"),
        "[Service]\nExecStart=/opt/bin/missing\n",
    )
    .unwrap();
    let out = systemd_verify(root, &["/etc/systemd/system/moltencore-network.service"]);
    assert!(
        !out.status.success(),
        "a unit with a missing binary passed verify"
    );
}

#[test]
fn an_unreachable_etcd_fails_naming_it_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = prefixes();
    let mut args = prep_args(dir.path(), "t1", "192.0.2.71", &p, &[]);
    let at = args.iter().position(|a| a == "--etcd-endpoints").unwrap();
    args[at + 1] = "https://127.0.0.1:9".into();
    let stderr = failed(&node_prep(&args).output().unwrap());
    assert!(stderr.contains("https://127.0.0.1:9"), "{stderr}");
    assert!(stderr.contains("--etcd-endpoints"), "{stderr}");
    assert!(
        is_empty_dir(dir.path()),
        "files written although etcd is unreachable"
    );
}

#[test]
fn a_conflicting_flannel_config_fails_before_anything_is_written() {
    let p = prefixes();
    put(
        &p.keys().flannel_config(),
        r#"{"Network":"10.77.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    );
    let dir = tempfile::tempdir().unwrap();
    let args = prep_args(
        dir.path(),
        "t1",
        "192.0.2.81",
        &p,
        &["--flannel-network", "10.78.0.0/16"],
    );
    let stderr = failed(&node_prep(&args).output().unwrap());
    assert!(
        stderr.contains("10.77.0.0/16") && stderr.contains("10.78.0.0/16"),
        "{stderr}"
    );
    assert!(stderr.contains(&p.keys().flannel_config()), "{stderr}");
    assert!(
        is_empty_dir(dir.path()),
        "files written despite the conflict"
    );
    assert_eq!(
        count_under(&format!("{}/", p.key)) - count_under(&format!("{}/", p.flannel)),
        0
    );
    assert_eq!(count_under(&p.keys().flannel_subnets()), 0);
    assert_eq!(
        get(&p.keys().flannel_config()).unwrap(),
        r#"{"Network":"10.77.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
        "the existing config must stay as it was"
    );
}

#[test]
fn issue_client_needs_a_ca_and_its_certificate_is_refused_by_another_clusters_nodes() {
    let p = prefixes();
    let out_dir = tempfile::tempdir().unwrap();
    let mut args = vec![
        "issue-client".to_string(),
        "--out".into(),
        out_dir.path().display().to_string(),
    ];
    args.extend(etcd_flags(&p));
    let stderr = failed(&node_prep(&args).output().unwrap());
    assert!(stderr.contains("run node-prep on a node first"), "{stderr}");
    assert!(is_empty_dir(out_dir.path()));

    let root = tempfile::tempdir().unwrap();
    prep(
        root.path(),
        "t1",
        "192.0.2.91",
        &p,
        &["--flannel-network", "10.206.0.0/16"],
    );
    let out = node_prep(&args).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(mode(&out_dir.path().join("key.pem")), 0o600);
    let ca = std::fs::read_to_string(out_dir.path().join("ca.pem")).unwrap();
    let cert = std::fs::read_to_string(out_dir.path().join("cert.pem")).unwrap();
    let key = std::fs::read_to_string(out_dir.path().join("key.pem")).unwrap();
    assert!(pki::inspect(&cert, &ca).unwrap().signed_by_ca);

    // This CA is not the harness cluster's: its nodes refuse the certificate.
    let c = cluster();
    let access = moltencore::docker::DockerAccess::new(
        &read(&c["docker_tls"]["ca_cert_file"]),
        &cert,
        &key,
        "auto",
        moltencore::docker::DockerTimeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(30),
            idle: Duration::from_secs(30),
        },
    )
    .unwrap();
    let node = &c["nodes"][0];
    let result = runtime().block_on(async {
        match access
            .connect(
                node["name"].as_str().unwrap(),
                node["docker_endpoint"].as_str().unwrap(),
            )
            .await
        {
            Ok(d) => d.version().await,
            Err(e) => Err(e),
        }
    });
    assert!(
        result.is_err(),
        "a node accepted a certificate from another CA"
    );
}

/// The network step against node n1's real dockerd, inside n1's network namespace (where
/// its NAT rule belongs), with a network name and subnets of its own.
struct NetworkCase {
    name: String,
    socket: String,
    netns: String,
    root: tempfile::TempDir,
}

impl NetworkCase {
    fn new(subnet_octet: u8, flannel: &str) -> NetworkCase {
        let c = cluster();
        let node = &c["nodes"][0];
        let root = tempfile::tempdir().unwrap();
        let env = root.path().join("run/flannel/subnet.env");
        std::fs::create_dir_all(env.parent().unwrap()).unwrap();
        let ab = flannel.trim_end_matches(".0.0/16");
        std::fs::write(
            &env,
            format!("FLANNEL_NETWORK={flannel}\nFLANNEL_SUBNET={ab}.{subnet_octet}.1/24\nFLANNEL_MTU=1400\nFLANNEL_IPMASQ=false\n"),
        )
        .unwrap();
        NetworkCase {
            name: format!(
                "np-test-{}",
                &uuid::Uuid::new_v4().simple().to_string()[..8]
            ),
            socket: node["docker_socket"].as_str().unwrap().to_string(),
            netns: node["netns"].as_str().unwrap().to_string(),
            root,
        }
    }

    fn run(&self) -> Output {
        Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .arg(cpi_bin())
            .args(["node-prep", "network", "--json", "--root"])
            .arg(self.root.path())
            .args(["--docker-host", &self.socket, "--network-name", &self.name])
            .output()
            .unwrap()
    }

    fn docker(&self, args: &[&str]) -> Output {
        Command::new("docker")
            .env("DOCKER_HOST", &self.socket)
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for NetworkCase {
    fn drop(&mut self) {
        let _ = self.docker(&["network", "rm", &self.name]);
        // The NAT rule the step may have added, found by its comment.
        let rules = Command::new("nsenter")
            .arg(format!("--net=/run/netns/{}", self.netns))
            .args(["iptables", "-w", "-t", "nat", "-S", "POSTROUTING"])
            .output()
            .unwrap();
        for rule in String::from_utf8_lossy(&rules.stdout).lines() {
            if rule.contains(&format!("moltencore network {}", self.name)) {
                let del = rule.replacen("-A ", "-D ", 1);
                let _ = Command::new("sh")
                    .arg("-c")
                    .arg(format!(
                        "nsenter --net=/run/netns/{} iptables -w -t nat {del}",
                        self.netns
                    ))
                    .output();
            }
        }
    }
}

#[test]
fn the_network_step_creates_the_network_once() {
    let case = NetworkCase::new(5, "10.251.0.0/16");
    let first = ok_report(&case.run());
    assert!(
        first["changes"][0]
            .as_str()
            .unwrap()
            .contains("created Docker network"),
        "{first:#}"
    );
    assert!(
        first["changes"][1]
            .as_str()
            .unwrap()
            .contains("masquerade 10.251.5.0/24"),
        "{first:#}"
    );
    let inspect = case.docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}} {{.Gateway}}{{end}} {{index .Options \"com.docker.network.driver.mtu\"}} {{index .Options \"com.docker.network.bridge.enable_ip_masquerade\"}}",
        &case.name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "10.251.5.0/24 10.251.5.1 1400 false"
    );
    let second = ok_report(&case.run());
    assert_eq!(second["changes"], json!([]), "{second:#}");
}

#[test]
fn a_docker_network_with_the_wrong_subnet_fails_loudly_and_stays() {
    let case = NetworkCase::new(6, "10.252.0.0/16");
    let made = case.docker(&[
        "network",
        "create",
        "--subnet",
        "10.250.9.0/24",
        "--gateway",
        "10.250.9.1",
        &case.name,
    ]);
    assert!(
        made.status.success(),
        "{}",
        String::from_utf8_lossy(&made.stderr)
    );
    let stderr = failed(&case.run());
    assert!(
        stderr.contains("10.250.9.0/24") && stderr.contains("10.252.6.0/24"),
        "{stderr}"
    );
    assert!(
        stderr.contains(&format!("docker network rm {}", case.name)),
        "{stderr}"
    );
    let inspect = case.docker(&[
        "network",
        "inspect",
        "-f",
        "{{range .IPAM.Config}}{{.Subnet}}{{end}}",
        &case.name,
    ]);
    assert_eq!(
        String::from_utf8_lossy(&inspect.stdout).trim(),
        "10.250.9.0/24"
    );
}

#[test]
fn the_network_step_without_subnet_env_says_flanneld_must_run_first() {
    let case = NetworkCase::new(7, "10.253.0.0/16");
    std::fs::remove_file(case.root.path().join("run/flannel/subnet.env")).unwrap();
    let stderr = failed(&case.run());
    assert!(
        stderr.contains("subnet.env") && stderr.contains("flanneld"),
        "{stderr}"
    );
}

#[test]
fn a_name_registered_by_another_host_is_refused_unless_replaced() {
    let p = prefixes();
    let first = tempfile::tempdir().unwrap();
    let net = ["--flannel-network", "10.206.0.0/16"];
    prep(first.path(), "dup", "192.0.2.81", &p, &net);
    // Another host (other private IP) with the same name: refused, nothing written.
    let second = tempfile::tempdir().unwrap();
    let stderr = failed(
        &node_prep(&prep_args(second.path(), "dup", "192.0.2.82", &p, &net))
            .output()
            .unwrap(),
    );
    assert!(
        stderr.contains("already registered") && stderr.contains("192.0.2.81"),
        "{stderr}"
    );
    assert!(
        is_empty_dir(second.path()),
        "files written for a refused name"
    );
    // --replace takes the name over (the host replaced the old one).
    let report = prep(
        second.path(),
        "dup",
        "192.0.2.82",
        &p,
        &["--flannel-network", "10.206.0.0/16", "--replace"],
    );
    assert!(report.is_object());
    let record: Value = serde_json::from_str(&get(&p.keys().node("dup")).unwrap()).unwrap();
    assert_eq!(record["private_ip"], "192.0.2.82");
}

#[test]
fn the_mtu_and_the_subnet_of_a_node_stay_what_they_were_across_reboots_and_expired_leases() {
    let p = prefixes();
    put(
        &p.keys().flannel_config(),
        r#"{"Network":"10.206.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#,
    );
    let (d1, d2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = prep(d1.path(), "s1", "192.0.2.61", &p, &[]);
    let report = prep(d2.path(), "s2", "192.0.2.62", &p, &[]);
    let subnet = report["subnet"].as_str().unwrap().to_string();
    assert_ne!(first["subnet"], report["subnet"]);
    assert_eq!(report["mtu"], 1450, "vxlan on a 1500 link");

    // flanneld, once running, says the link allows more (a 9001 link): taken once...
    let env = d2.path().join("run/flannel/subnet.env");
    std::fs::create_dir_all(env.parent().unwrap()).unwrap();
    let gateway = subnet.replace(".0/24", ".1/24");
    std::fs::write(
        &env,
        format!("FLANNEL_NETWORK=10.206.0.0/16\nFLANNEL_SUBNET={gateway}\nFLANNEL_MTU=8951\nFLANNEL_IPMASQ=false\n"),
    )
    .unwrap();
    let report = prep(d2.path(), "s2", "192.0.2.62", &p, &[]);
    assert_eq!(report["mtu"], 8951);
    // ...and kept at the next boot, before flanneld has written subnet.env again.
    std::fs::remove_file(&env).unwrap();
    let report = prep(d2.path(), "s2", "192.0.2.62", &p, &[]);
    assert_eq!(report["mtu"], 8951, "{report:#}");
    assert_eq!(report["changed"], false, "{report:#}");

    // Both leases expired while the hosts were down: s2 comes back on its own subnet,
    // not on the lowest free one (s1's).
    for r in [&first, &report] {
        let key = r["subnet"].as_str().unwrap().replace('/', "-");
        delete(&format!("{}/subnets/{key}", p.flannel));
    }
    let report = prep(d2.path(), "s2", "192.0.2.62", &p, &[]);
    assert_eq!(report["subnet"], subnet.as_str(), "{report:#}");
    assert!(has_change(&report, "reserved"), "{report:#}");
}

#[test]
fn an_unreadable_flannel_config_is_named_as_such_not_blamed_on_etcd_and_nothing_is_written() {
    let p = prefixes();
    let key = format!("{}/config", p.flannel);
    put(&key, "not json");
    let dir = tempfile::tempdir().unwrap();
    let args = prep_args(dir.path(), "t1", "192.0.2.91", &p, &[]);
    let stderr = failed(&node_prep(&args).output().unwrap());
    assert!(
        stderr.contains(&key) && stderr.contains("is not valid flannel JSON (not json)"),
        "{stderr}"
    );
    // etcd answered: the message must not send the operator to check the etcd flags.
    assert!(!stderr.contains("--etcd-endpoints"), "{stderr}");
    assert!(
        is_empty_dir(dir.path()),
        "files written despite the bad config"
    );
    assert_eq!(count_under(&p.keys().nodes()), 0);
    assert_eq!(count_under(&format!("{}/pki/", p.key)), 0);
    assert_eq!(get(&key).as_deref(), Some("not json"));
}

/// The mount points of this machine below `dir`.
fn mounts_below(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(PathBuf::from)
        .filter(|p| p.starts_with(dir))
        .collect()
}

/// Unmounts everything below `dir`, deepest first.
fn unmount_below(dir: &Path) {
    let mut points = mounts_below(dir);
    points.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    for p in points {
        let ok = Command::new("umount").arg(&p).status().unwrap().success();
        assert!(ok, "cannot unmount {}", p.display());
    }
}

#[test]
fn disk_mounts_makes_the_tree_shared_and_binds_again_what_a_reboot_dropped() {
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().join("root");
    let data = dir.path().join("docker");
    std::fs::create_dir_all(data.join("volumes/disk-1/_data")).unwrap();
    std::fs::write(data.join("volumes/disk-1/_data/kept"), "on the disk").unwrap();
    std::fs::create_dir_all(data.join("volumes/disk-3/_data")).unwrap();
    let tree = root.join("var/lib/moltencore/vm-disks");
    // What a reboot leaves: the folders and the tree's records of what was bound, no
    // mounts. disk-2's volume is gone. disk-3's folder was made by the VM itself (a VM
    // can write its own folder): no record, so it is never bound.
    std::fs::create_dir_all(tree.join("vm-a/disk-1")).unwrap();
    std::fs::create_dir_all(tree.join("vm-a/disk-2")).unwrap();
    std::fs::create_dir_all(tree.join("vm-a/disk-3")).unwrap();
    std::fs::create_dir_all(tree.join(".bound/vm-a")).unwrap();
    std::fs::write(tree.join(".bound/vm-a/disk-1"), "").unwrap();
    std::fs::write(tree.join(".bound/vm-a/disk-2"), "").unwrap();
    let run = || {
        let out = Command::new(cpi_bin())
            .args(["node-prep", "disk-mounts", "--json", "--root"])
            .arg(&root)
            .arg("--docker-data-root")
            .arg(&data)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<Value>(&out.stdout).unwrap()
    };
    let first = run();
    let checked = std::panic::catch_unwind(|| {
        assert_eq!(first["bound_onto_itself"], true, "{first}");
        assert_eq!(first["remounted"], json!(["vm-a/disk-1"]));
        assert_eq!(first["missing"], json!(["vm-a/disk-2"]));
        let shared = std::fs::read_to_string("/proc/self/mountinfo")
            .unwrap()
            .lines()
            .any(|l| l.split(' ').nth(4) == Some(tree.to_str().unwrap()) && l.contains(" shared:"));
        assert!(shared, "the tree is not a shared mount");
        assert_eq!(
            std::fs::read_to_string(tree.join("vm-a/disk-1/kept")).unwrap(),
            "on the disk"
        );
        // At the next start nothing is bound twice.
        let second = run();
        assert_eq!(second["bound_onto_itself"], false, "{second}");
        assert_eq!(second["remounted"], json!([]));
        assert_eq!(mounts_below(&tree).len(), 2, "{:?}", mounts_below(&tree));
    });
    unmount_below(dir.path());
    if let Err(e) = checked {
        std::panic::resume_unwind(e);
    }
}
