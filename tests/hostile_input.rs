//! Black-box tests of hostile input through the built `cpi`: file paths that are devices,
//! FIFOs, directories or too large (in cpi.json, in `context`, as `-c`), a request over
//! the stdin limit, oversized values echoed, newlines injected into logged values, and
//! secrets at the most verbose logging during a real create_vm.
//!
//! Each run has a generous timeout (a process that does not answer at all is the failure
//! these tests guard against, not a slow one). `MC_TEST_CPI_BIN` runs them against
//! another build of `cpi`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use moltencore_testkit::{
    cluster::{cluster_config, cluster_cpi_json, node_prefix, runtime},
    cpi::{cpi_bin, expect_result, run_cpi},
    docker::{leftovers_of_agent, node_of_container, read_file_in},
    index::{index_record, index_records_of_agent, index_records_under},
    requests::{agent_id, create_vm_request, manual_network, shared_stemcell},
};
use serde_json::{Value, json};

/// A process that has not answered by then never will: the failure mode, not a speed bound.
const NO_ANSWER: Duration = Duration::from_secs(120);

/// Waits for `child` to end; kills it and fails the test, naming `what`, when it gives no
/// answer within [`NO_ANSWER`] (a bound against hangs, not a timing assertion).
fn wait_bounded(child: &mut std::process::Child, what: &str) -> std::process::ExitStatus {
    let started = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if started.elapsed() > NO_ANSWER {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what}: no answer within {NO_ANSWER:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// What one run produced.
struct Run {
    stdout: String,
    stderr: String,
    response: Value,
}

fn cpi() -> PathBuf {
    std::env::var_os("MC_TEST_CPI_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(cpi_bin)
}

/// Runs `cpi -c config` with `stdin`, killing it when it has not answered in
/// [`NO_ANSWER`]; asserts exit 0 and exactly one valid response document.
fn run(stdin: Vec<u8>, config: &Path, env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(cpi());
    cmd.arg("-c")
        .arg(config)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("MOLTENCORE_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().expect("spawn cpi");
    let mut input = child.stdin.take().unwrap();
    // A CPI that refuses a large request early may close stdin: a broken pipe is fine.
    let writer = std::thread::spawn(move || {
        let _ = input.write_all(&stdin);
    });
    let mut stdout = child.stdout.take().unwrap();
    let mut stderr = child.stderr.take().unwrap();
    let out = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut stdout, &mut s).unwrap();
        s
    });
    let err = std::thread::spawn(move || {
        let mut s = Vec::new();
        std::io::Read::read_to_end(&mut stderr, &mut s).unwrap();
        s
    });
    let status = wait_bounded(&mut child, "cpi");
    writer.join().unwrap();
    let stdout = String::from_utf8_lossy(&out.join().unwrap()).into_owned();
    let stderr = String::from_utf8_lossy(&err.join().unwrap()).into_owned();
    assert!(
        status.success(),
        "exit {status:?}; stdout {}; stderr {}",
        cut(&stdout),
        cut(&stderr)
    );
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "one response line: {}",
        cut(&stdout)
    );
    let response: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("not a JSON response ({e}): {}", cut(&stdout)));
    let r = response.as_object().expect("an object");
    assert_eq!(r.len(), 3, "result, error, log: {}", cut(&stdout));
    assert!(r["log"].is_string());
    Run {
        stdout,
        stderr,
        response,
    }
}

fn cut(s: &str) -> String {
    s.chars().take(2000).collect()
}

/// The error of `run`, which must be a non-retriable `CpiError`; its message.
fn cpi_error(run: &Run) -> String {
    let e = &run.response["error"];
    assert_eq!(e["type"], "Bosh::Clouds::CpiError", "{}", cut(&run.stdout));
    assert_eq!(e["ok_to_retry"], false, "{}", cut(&run.stdout));
    e["message"].as_str().unwrap().to_string()
}

fn has_vm() -> Vec<u8> {
    json!({"method": "has_vm", "arguments": ["vm-00000000-0000-4000-8000-000000000000"]})
        .to_string()
        .into_bytes()
}

/// The paths no `*_file` key may make the CPI read: a character device, a FIFO with no
/// writer, a directory, and a regular file one byte over the 1 MiB limit.
struct BadPaths {
    _dir: tempfile::TempDir,
    paths: Vec<(&'static str, PathBuf)>,
}

fn bad_paths() -> BadPaths {
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("fifo");
    let made = Command::new("mkfifo").arg(&fifo).status().expect("mkfifo");
    assert!(made.success());
    let big = dir.path().join("big.pem");
    let f = std::fs::File::create(&big).unwrap();
    f.set_len((1 << 20) + 1).unwrap();
    let sub = dir.path().join("a-directory");
    std::fs::create_dir(&sub).unwrap();
    BadPaths {
        paths: vec![
            ("/dev/zero", PathBuf::from("/dev/zero")),
            ("a FIFO", fifo),
            ("a directory", sub),
            ("a file over 1 MiB", big),
        ],
        _dir: dir,
    }
}

const FILE_KEYS: &[(&str, &str)] = &[
    ("etcd", "ca_cert_file"),
    ("etcd", "client_cert_file"),
    ("etcd", "client_key_file"),
    ("docker", "ca_cert_file"),
    ("docker", "client_cert_file"),
    ("docker", "client_key_file"),
];

/// Every answer names the key and the limit, and nothing of the CPI's work started.
fn assert_names_key_and_limit(message: &str, key: &str, what: &str) {
    assert!(message.contains(key), "{what}: {message}");
    assert!(
        message.contains("1 MiB"),
        "{what}: the limit is named: {message}"
    );
}

#[test]
fn each_file_key_in_cpi_json_refuses_devices_fifos_directories_and_large_files() {
    let bad = bad_paths();
    let dir = tempfile::tempdir().unwrap();
    for (section, key) in FILE_KEYS {
        for (what, path) in &bad.paths {
            let mut config = cluster_cpi_json();
            let tls = &mut config[section]["tls"];
            tls.as_object_mut()
                .unwrap()
                .remove(key.trim_end_matches("_file"));
            tls[key] = json!(path);
            let file = dir.path().join("cpi.json");
            std::fs::write(&file, config.to_string()).unwrap();
            let run = run(has_vm(), &file, &[]);
            let message = cpi_error(&run);
            assert_names_key_and_limit(&message, &format!("{section}.tls.{key}"), what);
        }
    }
}

#[test]
fn each_file_key_through_context_refuses_devices_fifos_directories_and_large_files() {
    let bad = bad_paths();
    for (section, key) in FILE_KEYS {
        for (what, path) in &bad.paths {
            let request = json!({"method": "has_vm",
                "arguments": ["vm-00000000-0000-4000-8000-000000000000"],
                "context": {"director_uuid": "d", section.to_string(): {"tls": {key.to_string(): path}}}});
            let run = run(request.to_string().into_bytes(), &cluster_config(), &[]);
            let message = cpi_error(&run);
            assert_names_key_and_limit(&message, &format!("{section}.tls.{key}"), what);
        }
    }
}

#[test]
fn a_config_path_that_is_no_regular_file_or_too_large_is_refused() {
    let bad = bad_paths();
    let urandom = ("/dev/urandom", PathBuf::from("/dev/urandom"));
    for (what, path) in bad.paths.iter().chain([&urandom]) {
        let run = run(has_vm(), path, &[]);
        let message = cpi_error(&run);
        assert!(message.contains("config file (-c)"), "{what}: {message}");
        assert!(message.contains("1 MiB"), "{what}: {message}");
    }
}

#[test]
fn node_prep_refuses_tls_flags_naming_no_regular_file_or_a_large_one() {
    let bad = bad_paths();
    let root = tempfile::tempdir().unwrap();
    for flag in ["--etcd-ca", "--etcd-cert", "--etcd-key"] {
        for (what, path) in &bad.paths {
            let mut child = Command::new(cpi())
                .args([
                    "node-prep",
                    "--dry-run",
                    "--etcd-endpoints",
                    "https://127.0.0.1:1",
                ])
                .arg("--root")
                .arg(root.path())
                .arg(flag)
                .arg(path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            let status = wait_bounded(&mut child, &format!("node-prep {flag} {what}"));
            let mut stderr = String::new();
            std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut stderr).unwrap();
            assert!(!status.success(), "{flag} {what}: {stderr}");
            assert!(
                stderr.contains(flag) && stderr.contains("1 MiB"),
                "{flag} {what}: {stderr}"
            );
        }
    }
}

#[test]
fn a_request_over_the_stdin_limit_is_refused_and_never_retriable() {
    // A valid request, padded past 8 MiB: only its size is wrong.
    let padding = "p".repeat(9 << 20);
    let request = json!({"method": "info", "arguments": [], "padding": padding});
    let run = run(request.to_string().into_bytes(), &cluster_config(), &[]);
    let message = cpi_error(&run);
    assert!(message.contains("larger than the 8 MiB limit"), "{message}");
    // Endless stdin gets the same answer.
    let mut cmd = Command::new(cpi());
    let zero = std::fs::File::open("/dev/zero").unwrap();
    let out = cmd
        .arg("-c")
        .arg(cluster_config())
        .stdin(zero)
        .stderr(Stdio::null())
        .output()
        .unwrap();
    let response: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(response["error"]["ok_to_retry"], false, "{response}");
    assert!(out.status.success());
}

/// A create_vm request with `networks` and `cloud_properties`, placed nowhere (it is
/// refused while its arguments are checked).
fn create_vm(cloud_properties: Value, networks: Value) -> Vec<u8> {
    create_vm_request(
        &agent_id("hostile"),
        "sc-00000000-0000-4000-8000-000000000000",
        cloud_properties,
        networks,
        json!({}),
        2,
    )
    .into_bytes()
}

#[test]
fn oversized_values_are_echoed_cut_short() {
    let huge = "A".repeat(4 << 20);
    let (_, prefix) = node_prefix(0);
    let mut huge_ip = manual_network(&format!("{prefix}.30"));
    huge_ip["default"]["ip"] = json!(huge);
    let cases = [
        (
            "ports",
            create_vm(
                json!({"ports": [huge]}),
                manual_network(&format!("{prefix}.30")),
            ),
        ),
        (
            "restart_policy",
            create_vm(
                json!({"restart_policy": huge}),
                manual_network(&format!("{prefix}.30")),
            ),
        ),
        ("network ip", create_vm(json!({}), huge_ip)),
    ];
    for (what, request) in cases {
        let run = run(request, &cluster_config(), &[]);
        let message = cpi_error(&run);
        assert!(
            message.contains("AAAAAAAA"),
            "{what}: the value is still shown: {}",
            cut(&message)
        );
        assert!(
            message.len() < 4096,
            "{what}: {} bytes echoed",
            message.len()
        );
        assert!(
            run.stdout.len() < 16384,
            "{what}: {} bytes answered",
            run.stdout.len()
        );
        assert!(
            run.stderr.len() < 64 * 1024,
            "{what}: {} bytes logged",
            run.stderr.len()
        );
    }
    // A 4 MiB cid: whatever the answer (unknown object or refusal), it is bounded and
    // never retriable.
    for method in ["has_disk", "delete_stemcell", "has_vm"] {
        let request = json!({"method": method, "arguments": [huge]});
        let run = run(request.to_string().into_bytes(), &cluster_config(), &[]);
        assert!(
            run.stdout.len() < 16384,
            "{method}: {} bytes answered",
            run.stdout.len()
        );
        if run.response["error"].is_object() {
            assert_eq!(
                run.response["error"]["ok_to_retry"],
                false,
                "{method}: {}",
                cut(&run.stdout)
            );
        }
    }
}

/// One MiB more than the largest size: its bytes would not fit an `i64` (a file's length,
/// Docker's memory limit) and would wrap.
const TOO_MANY_MIB: u64 = (i64::MAX.cast_unsigned() >> 20) + 1;

#[test]
fn sizes_whose_bytes_would_wrap_are_refused_and_nothing_is_made() {
    let config = cluster_config();
    let (_, prefix) = node_prefix(0);
    let stemcell = shared_stemcell();
    let cases = [
        ("ram", json!({"ram": TOO_MANY_MIB})),
        ("ephemeral_disk", json!({"ephemeral_disk": TOO_MANY_MIB})),
        (
            "ephemeral_disk",
            json!({"ephemeral_disk": {"size": u64::MAX}}),
        ),
    ];
    for (key, cloud_properties) in cases {
        let agent = agent_id("too-large");
        let request = create_vm_request(
            &agent,
            &stemcell,
            cloud_properties,
            manual_network(&format!("{prefix}.31")),
            json!({}),
            2,
        );
        let message = cpi_error(&run(request.into_bytes(), &config, &[]));
        assert!(
            message.contains(&format!("cloud_properties.{key}")),
            "{message}"
        );
        assert!(message.contains("more than the largest size"), "{message}");
        assert_eq!(index_records_of_agent(&config, &agent), Vec::<Value>::new());
        let left = runtime().block_on(leftovers_of_agent(&agent));
        assert!(left.is_empty(), "{key}: {left:?}");
    }
    let request = json!({"method": "create_disk", "arguments": [TOO_MANY_MIB, {}, null]});
    let message = cpi_error(&run(request.to_string().into_bytes(), &config, &[]));
    assert_eq!(
        message,
        format!(
            "create_disk: argument 1 (size) must be a positive integer (MiB) of at most {}, got {TOO_MANY_MIB}",
            TOO_MANY_MIB - 1
        )
    );
    let made: Vec<_> = index_records_under(&config, "disks")
        .into_iter()
        .filter(|(_, r)| r["size_mib"] == TOO_MANY_MIB)
        .collect();
    assert!(made.is_empty(), "{made:?}");
    // A real disk is not touched by a resize to such a size.
    let disk = expect_result(
        &json!({"method": "create_disk", "arguments": [16, {}, null]}).to_string(),
        Some(&config),
    );
    let disk = disk.as_str().expect("a disk cid").to_string();
    let _disk = DeleteOnDrop("delete_disk", disk.clone());
    let request = json!({"method": "resize_disk", "arguments": [disk, TOO_MANY_MIB]});
    let message = cpi_error(&run(request.to_string().into_bytes(), &config, &[]));
    assert!(message.contains("argument 2 (new_size)"), "{message}");
    let record = index_record(&config, &format!("disks/{disk}")).expect("the disk's record");
    assert_eq!(record["size_mib"], 16, "{record}");
    let request = json!({"method": "calculate_vm_cloud_properties",
        "arguments": [{"cpu": 1, "ram": TOO_MANY_MIB, "ephemeral_disk_size": 1024}]});
    let message = cpi_error(&run(request.to_string().into_bytes(), &config, &[]));
    assert!(message.contains("more than the largest size"), "{message}");
}

/// A forged record as an attacker would inject it after a newline.
const FORGED: &str = "1999-01-01T00:00:00.000000Z ERROR cpi{method=forged}: FORGED";

/// Every stderr line is a real record: our timestamp, a level, and no line starts with
/// the forged one; the injected value did reach the log, escaped.
fn assert_no_forged_line(run: &Run, what: &str) {
    assert!(!run.stderr.is_empty(), "{what}: something was logged");
    for line in run.stderr.lines() {
        assert!(
            !line.starts_with("1999-"),
            "{what}: forged line:\n{}",
            run.stderr
        );
        let (stamp, rest) = line.split_once(' ').unwrap_or((line, ""));
        assert!(
            stamp.len() > 20 && stamp.starts_with("20") && stamp.ends_with('Z'),
            "{what}: line without a timestamp: {line:?}"
        );
        let level = rest.trim_start().split(' ').next().unwrap_or("");
        assert!(
            ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"].contains(&level),
            "{what}: line without a level: {line:?}"
        );
    }
    assert!(
        run.stderr.contains("\\n1999-01-01"),
        "{what}: the injected value is logged, escaped:\n{}",
        run.stderr
    );
}

#[test]
fn newlines_in_logged_values_never_start_a_line() {
    let (_, prefix) = node_prefix(0);
    let injected = format!("\n{FORGED}");
    let net = manual_network(&format!("{prefix}.31"));
    let mut bad_ip = net.clone();
    bad_ip["default"]["ip"] = json!(format!("{prefix}.31{injected}"));
    let cases = [
        (
            "method name",
            json!({"method": format!("has_vm{injected}"), "arguments": []})
                .to_string()
                .into_bytes(),
        ),
        ("network ip", create_vm(json!({}), bad_ip)),
        (
            "ports",
            create_vm(json!({"ports": [format!("80{injected}")]}), net.clone()),
        ),
        (
            "restart_policy",
            create_vm(json!({"restart_policy": format!("always{injected}")}), net),
        ),
    ];
    for (what, request) in cases {
        for level in ["info", "debug"] {
            let run = run(
                request.clone(),
                &cluster_config(),
                &[("MOLTENCORE_LOG", level)],
            );
            assert!(
                run.response["error"].is_object(),
                "{what}: {}",
                cut(&run.stdout)
            );
            assert_no_forged_line(&run, &format!("{what} at {level}"));
        }
    }
}

/// Keys that name secrets, each given a value of its own in `cloud_properties` and `env`.
const SECRET_KEYS: &[&str] = &[
    "auth",
    "registry_auth",
    "pass",
    "passphrase",
    "pwd",
    "apikey",
    "authorization",
    "bearer",
    "cookie",
    "session",
    "jwt",
    "sas",
    "signature",
    "otp",
    "pin",
    "keyfile",
    "dockerconfigjson",
    ".dockerconfigjson",
    "token",
    "secret",
    "password",
    "private_key",
    "credential",
    "credentials",
    "signing_key",
    "sshkey",
];

fn secret_value(place: &str, key: &str) -> String {
    format!("LEAK-{place}-{}-7f3a", key.trim_start_matches('.'))
}

/// The body of a private key in the request (and so in the VM's agent settings).
const PEM_BODY: &str = "MIIEvQIBADANBgkqhkiG9w0BAQEFAASCBKcwggSjAgEAAoIBAQC7LEAKPEM";
/// The body of a CA certificate in the request.
const CA_BODY: &str = "MIIDazCCAlOgAwIBAgIUcaLEAKca";

/// The password in the cluster's mbus URL.
fn mbus_password() -> String {
    let mbus = cluster_cpi_json()["agent"]["mbus"]
        .as_str()
        .unwrap()
        .to_string();
    let url = url::Url::parse(&mbus).unwrap();
    url.password()
        .expect("the cluster's mbus has a password")
        .to_string()
}

/// `cloud_properties` and `env` of a create_vm that carry a secret under every key of
/// [`SECRET_KEYS`], and passwords, URLs with passwords and PEM in the agent's env.
fn secret_laden_cloud_properties_and_env() -> (Value, Value) {
    let mut cloud_properties = serde_json::Map::new();
    let mut extra_env = serde_json::Map::new();
    for key in SECRET_KEYS {
        cloud_properties.insert(key.to_string(), json!(secret_value("cp", key)));
        extra_env.insert(key.to_string(), json!(secret_value("env", key)));
    }
    let env = json!({
        "bosh": {
            "password": "LEAK-vcap-password-hash",
            "group": "hostile-secrets",
            "mbus": {
                "urls": ["https://mbus:LEAK-mbus-url-password@0.0.0.0:6868"],
                "cert": {
                    "ca": format!("-----BEGIN CERTIFICATE-----\n{CA_BODY}\n-----END CERTIFICATE-----\n"),
                    "certificate": format!("-----BEGIN CERTIFICATE-----\n{CA_BODY}\n-----END CERTIFICATE-----\n"),
                    "private_key": format!("-----BEGIN RSA PRIVATE KEY-----\n{PEM_BODY}\n-----END RSA PRIVATE KEY-----\n"),
                }
            },
            "blobstores": [{"provider": "dav", "options": {
                "endpoint": "http://blobstore:LEAK-blob-url-password@10.0.0.6:25250",
                "user": "agent", "password": "LEAK-blob-password"}}],
        },
        "extra": extra_env,
    });
    (Value::Object(cloud_properties), env)
}

/// Every secret of [`secret_laden_cloud_properties_and_env`], and the cluster's own mbus
/// password: none may be in a log.
fn all_secrets() -> Vec<String> {
    let mut secrets: Vec<String> = SECRET_KEYS
        .iter()
        .flat_map(|k| [secret_value("cp", k), secret_value("env", k)])
        .collect();
    secrets.extend(
        [
            "LEAK-vcap-password-hash",
            "LEAK-blob-password",
            "LEAK-blob-url-password",
            "LEAK-mbus-url-password",
            PEM_BODY,
            CA_BODY,
            mbus_password().as_str(),
        ]
        .map(String::from),
    );
    secrets
}

#[test]
fn no_secret_reaches_stderr_at_trace_for_every_target_during_a_real_create_vm() {
    let config = cluster_config();
    let (cloud_properties, env) = secret_laden_cloud_properties_and_env();
    let secrets = all_secrets();
    for filter in [
        "trace",
        "trace,bollard=trace,hyper=trace,hyper_util=trace,h2=trace,tonic=trace,tower=trace,rustls=trace,etcd_client=trace",
    ] {
        let agent = agent_id("secrets-trace");
        let request = create_vm_request(
            &agent,
            &shared_stemcell(),
            cloud_properties.clone(),
            json!({"d": {"type": "dynamic", "cloud_properties": {}}}),
            env.clone(),
            2,
        );
        let run = run(request.into_bytes(), &config, &[("MOLTENCORE_LOG", filter)]);
        assert!(
            run.response["error"].is_null(),
            "{filter}: {}",
            cut(&run.stdout)
        );
        let cid = run.response["result"][0].as_str().unwrap().to_string();
        let _vm = DeleteOnDrop("delete_vm", cid.clone());
        // The secrets really went through: the VM's agent settings carry them.
        let node = runtime()
            .block_on(node_of_container(&cid))
            .expect("the VM's container is on a node");
        let settings = runtime().block_on(read_file_in(
            &node,
            &cid,
            "/var/vcap/bosh/warden-cpi-agent-env.json",
        ));
        assert!(settings.contains("LEAK-vcap-password-hash"), "{settings}");
        assert!(settings.contains(PEM_BODY), "{settings}");
        // And the log really was verbose: the request was logged, redacted.
        assert!(
            run.stderr.contains("<redacted>") && run.stderr.contains(&cid),
            "{filter}: the trace log is there:\n{}",
            cut(&run.stderr)
        );
        let logs = format!("{}\n{}", run.stderr, run.response["log"]);
        for secret in &secrets {
            assert!(!logs.contains(secret.as_str()), "{filter}: {secret} leaked");
        }
    }
}

/// Deletes a VM or disk (`delete_vm`/`delete_disk` and the cid) when the test ends,
/// passed or failed.
struct DeleteOnDrop(&'static str, String);

impl Drop for DeleteOnDrop {
    fn drop(&mut self) {
        let deleted = run_cpi(
            &json!({"method": self.0, "arguments": [self.1]}).to_string(),
            Some(&cluster_config()),
            &[],
        );
        if !std::thread::panicking() {
            assert!(deleted.response["error"].is_null(), "{}", deleted.stdout);
        }
    }
}

#[test]
fn a_request_larger_than_etcd_accepts_is_never_retriable_and_changes_nothing() {
    let config = cluster_config();
    let created = expect_result(
        &json!({"method": "create_disk", "arguments": [16, {}, null]}).to_string(),
        Some(&config),
    );
    let disk = created.as_str().expect("a disk cid").to_string();
    let _disk = DeleteOnDrop("delete_disk", disk.clone());
    // 3 MiB of metadata: within the stdin limit, beyond what etcd takes in one request.
    let request = json!({"method": "set_disk_metadata",
        "arguments": [disk, {"note": "m".repeat(3 << 20)}]});
    let run = run(request.to_string().into_bytes(), &config, &[]);
    let e = &run.response["error"];
    assert!(e.is_object(), "{}", cut(&run.stdout));
    assert_eq!(e["ok_to_retry"], false, "{}", cut(&run.stdout));
    assert!(
        run.stdout.len() < 16384,
        "{} bytes answered",
        run.stdout.len()
    );
    let record = index_record(&config, &format!("disks/{disk}")).expect("the disk's record");
    assert!(record["metadata"].get("note").is_none(), "{record}");
}
