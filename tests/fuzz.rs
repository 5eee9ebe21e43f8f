//! A fuzz suite through the built binary: a corpus generated here from a fixed seed (the
//! same cases on every run, so a failure can be replayed) puts hostile values into every
//! argument position of every method, and into the envelope (method, context,
//! api_version): traversal cids, `?`/`#`, NUL, newlines, 4 MiB strings, deep nesting, wrong
//! types. Every case must get a valid response (exit 0, `result`/`error`/`log`, a known
//! error type, never retriable), a bounded response and stderr, no configured secret in
//! either; and no node may change (containers, volumes, networks, images compared before
//! and after). [`CASES`] cases run, a few minutes in CI.

use std::process::{Command, Stdio};

use moltencore_testkit::{
    cluster::{cluster_config, cluster_cpi_json},
    cpi::{call, cpi_bin},
    docker::{assert_nodes_unchanged, node_state},
    requests::{Canaries, canaries},
};
use serde_json::{Value, json};

/// Cases of the hostile-argument corpus.
const CASES: usize = 400;
/// Seed of the corpus.
const SEED: u64 = 0x9e37_79b9_7f4a_7c15;
/// Largest response (stdout) accepted, in bytes.
const MAX_RESPONSE: usize = 16 * 1024;
/// Largest stderr accepted, in bytes.
const MAX_STDERR: usize = 64 * 1024;
/// Address space each cpi run may use: a call that reads without bound fails instead of
/// taking the machine's memory.
const MEMORY_LIMIT_BYTES: u64 = 2 << 30;

/// The known-good error types of the contract.
const ERROR_TYPES: &[&str] = &[
    "Bosh::Clouds::CpiError",
    "Bosh::Clouds::CloudError",
    "Bosh::Clouds::NotSupported",
    "Bosh::Clouds::NotImplemented",
    "Bosh::Clouds::VMNotFound",
    "Bosh::Clouds::NetworkNotFound",
    "Bosh::Clouds::NoDiskSpace",
    "Bosh::Clouds::DiskNotAttached",
    "Bosh::Clouds::DiskNotFound",
    "Bosh::Clouds::VMCreationFailed",
];

/// A small deterministic generator (xorshift64*), so the corpus is the same on every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        usize::try_from(self.next() % n as u64).unwrap()
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
}

/// Pieces of the configured secrets (the longest line of each private key, the mbus
/// password) that must never appear in a response or on stderr.
fn secrets() -> Vec<String> {
    let config: Value = cluster_cpi_json();
    let mut found = Vec::new();
    for file in [
        &config["etcd"]["tls"]["client_key_file"],
        &config["docker"]["tls"]["client_key_file"],
    ] {
        let path = file.as_str().expect("the cluster config names key files");
        let pem = std::fs::read_to_string(path).unwrap();
        let line = pem
            .lines()
            .filter(|l| !l.starts_with("-----"))
            .max_by_key(|l| l.len())
            .expect("a PEM body")
            .to_string();
        found.push(line);
    }
    let mbus = url::Url::parse(config["agent"]["mbus"].as_str().unwrap()).unwrap();
    found.push(
        mbus.password()
            .expect("the mbus URL has a password")
            .to_string(),
    );
    found
}

/// A hostile value, as raw JSON text (deep nesting is built as text: no JSON library
/// needs to hold it).
fn hostile(rng: &mut Rng, c: &Canaries) -> String {
    let nil = "00000000-0000-0000-0000-000000000000";
    let targets = [
        format!("containers/{}?force=true&v=true", c.vm),
        format!("volumes/{}", c.disk),
        format!("volumes/{}", c.snapshot),
        "networks/bosh".to_string(),
        format!("images/moltencore-stemcell:{}?force=true", c.stemcell),
    ];
    let target = rng.pick(&targets).clone();
    let valid = rng
        .pick(&[&c.vm, &c.disk, &c.snapshot, &c.stemcell])
        .to_string();
    let text = |s: String| Value::String(s).to_string();
    match rng.below(30) {
        0 => text(format!("x/../../{target}")),
        1 => text(format!("{valid}/../../{target}")),
        2 => text(format!("x%2f%2e%2e%2f{target}")),
        3 => text(format!("x/%2e%2e/%2e%2e/{target}#frag")),
        4 => text(format!("x/../../{target}\u{0}")),
        5 => text(format!(
            "{valid}\n2026-01-01T00:00:00Z ERROR cpi{{method=x}}: forged"
        )),
        6 => text(format!("{valid}?force=true&v=true")),
        7 => text(format!("{valid}#")),
        8 => text(valid.to_uppercase()),
        9 => text(format!(" {valid}")),
        10 => text(format!("vm-{nil}")),
        11 => text(format!("disk-{nil}")),
        12 => text(format!("snap-{nil}")),
        13 => text(format!("sc-{nil}")),
        14 => text(format!("vm-{}", "a".repeat(4 << 20))),
        15 => text("\u{202e}\u{0}\r\n\t\u{1b}[31m".to_string()),
        16 => text(String::new()),
        17 => "null".to_string(),
        18 => "true".to_string(),
        19 => "-1".to_string(),
        20 => "18446744073709551616".to_string(),
        21 => "1.5e300".to_string(),
        22 => "[]".to_string(),
        23 => "{}".to_string(),
        24 => {
            let depth = *rng.pick(&[64usize, 127, 200, 100_000]);
            format!("{}{}", "[".repeat(depth), "]".repeat(depth))
        }
        25 => {
            let depth = *rng.pick(&[64usize, 200, 50_000]);
            format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth))
        }
        26 => json!({"node": format!("../{target}"), "name": format!("x/../../{target}"),
                     "ports": [format!("{target}")], "restart_policy": "x\ny",
                     "image_reference": format!("x/../../{target}"), "digest": "sha256:../x"})
        .to_string(),
        27 => json!({"n": {"type": "manual", "ip": format!("10.0.0.1/../{target}"),
                           "cloud_properties": {"name": format!("x/../../{target}")}}})
        .to_string(),
        28 => json!({"n": {"type": "dynamic", "cloud_properties": {"name": "bosh?x=1#y"}},
                     format!("x\n{}", "y".repeat(1000)): {"type": "vip"}})
        .to_string(),
        _ => Value::Array(
            (0..1000)
                .map(|i| Value::String(format!("disk-{i}/../../{target}")))
                .collect(),
        )
        .to_string(),
    }
}

/// Base arguments of each method: real canaries where the call then cannot change a node
/// (it fails or only reads), unknown but well-formed cids where success would create or
/// remove something.
fn base_arguments(c: &Canaries) -> Vec<(&'static str, Vec<Value>)> {
    let nil = "00000000-0000-0000-0000-000000000000";
    let unknown_sc = format!("sc-{nil}");
    let unknown_disk = format!("disk-{nil}");
    let unknown_vm = format!("vm-{nil}");
    let dynamic = json!({"d": {"type": "dynamic"}});
    vec![
        ("info", vec![]),
        (
            "create_stemcell",
            vec![json!("/nonexistent/image"), json!({})],
        ),
        ("delete_stemcell", vec![json!(unknown_sc)]),
        (
            "create_vm",
            vec![
                json!("agent-fuzz"),
                json!(unknown_sc),
                json!({}),
                dynamic,
                json!([]),
                json!({}),
            ],
        ),
        ("delete_vm", vec![json!(unknown_vm)]),
        ("has_vm", vec![json!(c.vm)]),
        ("reboot_vm", vec![json!(unknown_vm)]),
        ("set_vm_metadata", vec![json!(c.vm), json!({"job": "fuzz"})]),
        (
            "calculate_vm_cloud_properties",
            vec![json!({"cpu": 1, "ram": 512, "ephemeral_disk_size": 1024})],
        ),
        (
            "create_disk",
            vec![json!(16), json!({"node": "no-such-node"}), json!(null)],
        ),
        ("delete_disk", vec![json!(unknown_disk)]),
        ("has_disk", vec![json!(c.disk)]),
        ("attach_disk", vec![json!(unknown_vm), json!(c.disk)]),
        ("detach_disk", vec![json!(c.vm), json!(unknown_disk)]),
        ("get_disks", vec![json!(c.vm)]),
        ("set_disk_metadata", vec![json!(c.disk), json!({"x": "y"})]),
        ("resize_disk", vec![json!(unknown_disk), json!(32)]),
        ("update_disk", vec![json!(c.disk), json!(32), json!({})]),
        ("snapshot_disk", vec![json!(unknown_disk), json!({})]),
        ("delete_snapshot", vec![json!(format!("snap-{nil}"))]),
        ("create_network", vec![json!({})]),
        ("delete_network", vec![json!("x")]),
        ("current_vm_id", vec![]),
        ("configure_networks", vec![json!(c.vm), json!({})]),
    ]
}

/// Runs one raw request under the memory limit; (exit status, stdout, stderr).
fn run_limited(request: &str, env: &[(&str, &str)]) -> (std::process::ExitStatus, String, String) {
    let mut cmd = Command::new("prlimit");
    cmd.arg(format!("--as={MEMORY_LIMIT_BYTES}"))
        .arg("--")
        .arg(cpi_bin())
        .arg("-c")
        .arg(cluster_config())
        .env_remove("MOLTENCORE_LOG")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("prlimit (util-linux) is needed: {e}"));
    let mut stdin = child.stdin.take().unwrap();
    let body = request.to_string();
    // Written from another thread: a cpi that stops reading must not block the test.
    let writer = std::thread::spawn(move || {
        use std::io::Write;
        let _ = stdin.write_all(body.as_bytes());
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    (
        out.status,
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The checks every case must pass; `what` names the case in failures. Returns the
/// outcome (`ok` or the error type) and the error message.
fn check(
    what: &str,
    request_len: usize,
    run: (std::process::ExitStatus, String, String),
    secrets: &[String],
) -> (String, String) {
    let (status, stdout, stderr) = run;
    let shown: String = stderr.chars().take(2000).collect();
    assert!(status.success(), "{what}: exit {status:?}, stderr: {shown}");
    assert!(
        stdout.len() <= MAX_RESPONSE,
        "{what} ({request_len} bytes of request): {} bytes of response",
        stdout.len()
    );
    assert!(
        stderr.len() <= MAX_STDERR,
        "{what}: {} bytes of stderr",
        stderr.len()
    );
    assert_eq!(stdout.trim().lines().count(), 1, "{what}: {stdout}");
    let response: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("{what}: not JSON ({e}): {stdout}"));
    let r = response.as_object().expect("an object");
    assert_eq!(r.len(), 3, "{what}: {stdout}");
    assert!(
        r.contains_key("result") && r["log"].is_string(),
        "{what}: {stdout}"
    );
    let outcome = match &r["error"] {
        Value::Null => ("ok".to_string(), String::new()),
        Value::Object(e) => {
            let t = e["type"].as_str().unwrap_or_default();
            assert!(ERROR_TYPES.contains(&t), "{what}: type {t}");
            assert!(e["message"].is_string(), "{what}: {stdout}");
            assert_eq!(
                e["ok_to_retry"], false,
                "{what}: hostile input is never retriable: {stdout}"
            );
            assert!(r["result"].is_null(), "{what}: {stdout}");
            (t.to_string(), e["message"].as_str().unwrap().to_string())
        }
        other => panic!("{what}: error is {other}"),
    };
    for s in secrets {
        assert!(
            !stdout.contains(s.as_str()),
            "{what}: a secret in the response"
        );
        assert!(!stderr.contains(s.as_str()), "{what}: a secret on stderr");
    }
    outcome
}

#[test]
fn hostile_values_in_every_position_get_valid_answers_and_change_no_node() {
    let c = canaries("fuzz-canary", 2);
    let secrets = secrets();
    let bases = base_arguments(&c);
    let mut rng = Rng(SEED);
    let before = node_state();
    let mut outcomes: std::collections::BTreeMap<String, usize> = Default::default();
    for case in 0..CASES {
        let (method, base) = &bases[case % bases.len()];
        let value = hostile(&mut rng, &c);
        // Every argument position in turn, then one past the end (a wrong count), then
        // the envelope: the method name, the context, the api_version.
        let slot = rng.below(base.len() + 4);
        let mut args: Vec<String> = base.iter().map(Value::to_string).collect();
        let mut method_text = Value::String(method.to_string()).to_string();
        let mut context = if *method == "create_disk" {
            // A disk create that got past its hostile value would make a volume.
            json!({"request_id": "cpi-fuzz", "placement": {"node": "no-such-node"}})
        } else {
            json!({"director_uuid": "d", "request_id": "cpi-fuzz"})
        }
        .to_string();
        let mut api = "2".to_string();
        let position = if slot < base.len() {
            args[slot] = value.clone();
            format!("argument {}", slot + 1)
        } else {
            match slot - base.len() {
                0 => {
                    args.push(value.clone());
                    "an extra argument".to_string()
                }
                1 => {
                    method_text = value.clone();
                    "the method".to_string()
                }
                2 => {
                    context = format!(r#"{{"request_id":{value},"vm":{value},"x":{value}}}"#);
                    "the context".to_string()
                }
                _ => {
                    api = value.clone();
                    "api_version".to_string()
                }
            }
        };
        let request = format!(
            r#"{{"method":{method_text},"arguments":[{}],"context":{context},"api_version":{api}}}"#,
            args.join(",")
        );
        let shown: String = value.chars().take(80).collect();
        let what = format!("case {case}: {method}, {position} = {shown:?}");
        let env: &[(&str, &str)] = if case % 4 == 0 {
            &[("MOLTENCORE_LOG", "debug")]
        } else {
            &[]
        };
        let (outcome, _) = check(&what, request.len(), run_limited(&request, env), &secrets);
        *outcomes.entry(outcome).or_default() += 1;
    }
    eprintln!("{CASES} cases: {outcomes:?}");
    // The corpus must reach past the parser: answers from the cluster, not only CpiErrors.
    for kind in [
        "ok",
        "Bosh::Clouds::CpiError",
        "Bosh::Clouds::VMNotFound",
        "Bosh::Clouds::DiskNotFound",
    ] {
        assert!(
            outcomes.contains_key(kind),
            "no case answered {kind}: {outcomes:?}"
        );
    }
    assert_nodes_unchanged(&before);
    assert_eq!(call("has_vm", json!([c.vm])), true);
    assert_eq!(call("has_disk", json!([c.disk])), true);
    assert_eq!(call("delete_snapshot", json!([c.snapshot])), Value::Null);
    assert_eq!(call("delete_disk", json!([c.disk])), Value::Null);
    assert_eq!(call("delete_vm", json!([c.vm])), Value::Null);
}

/// Files in `context` that never end or are no files at all: a clear error naming the key,
/// from the CPI's own bound on reads (not from running into the memory limit), for every
/// `*_file` key, on a method that needs etcd.
#[test]
fn endless_and_special_files_in_the_context_get_valid_answers() {
    let secrets = secrets();
    let keys = [
        ("etcd", "ca_cert_file"),
        ("etcd", "client_cert_file"),
        ("etcd", "client_key_file"),
        ("docker", "client_cert_file"),
        ("docker", "client_key_file"),
    ];
    let mut case = 0;
    for path in [
        "/dev/zero",
        "/dev/urandom",
        "/dev/null",
        "/proc/self/mem",
        "/",
    ] {
        for (section, key) in keys {
            let request = json!({"method": "has_vm",
                "arguments": ["vm-00000000-0000-0000-0000-000000000000"],
                "context": {section: {"tls": {key: path}}}})
            .to_string();
            let what = format!("case {case}: {section}.tls.{key} = {path}");
            let (kind, message) = check(&what, request.len(), run_limited(&request, &[]), &secrets);
            // The CPI itself bounds the read: running into the memory limit is a failure.
            assert_eq!(kind, "Bosh::Clouds::CpiError", "{what}: {message}");
            assert!(
                message.contains(key) && !message.contains("out of memory"),
                "{what}: the error names the key and the CPI's own limit: {message}"
            );
            case += 1;
        }
    }
}
