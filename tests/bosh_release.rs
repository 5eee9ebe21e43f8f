//! The BOSH release: the job's templates rendered with Debian's Ruby through a small
//! BOSH-like harness (`tests/bosh/render_template.rb`) for the default and the full set of
//! properties, the rendered `cpi.json` accepted by the CPI's config loader, the rendered
//! `bin/cpi` running the binary with create-env's folders (and driving the local cluster),
//! and the release's layout as `bosh create-release` reads it.

use std::collections::BTreeSet;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

use moltencore::config::{Config, StartMode};
use moltencore_testkit::bosh::{job_dir, nested, render, render_config, repo, yaml_file};
use moltencore_testkit::{
    cluster::{cluster, node_names},
    cpi::cpi_bin,
};
use serde_json::{Value, json};

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n";
const PREFIX: &str = "moltencore_cpi.";

/// The job's spec.
fn job_spec() -> Value {
    yaml_file(&job_dir().join("spec"))
}

/// The properties without defaults that every deployment sets.
fn required() -> Vec<(&'static str, Value)> {
    vec![
        (
            "moltencore_cpi.etcd.endpoints",
            json!("https://127.0.0.1:2379"),
        ),
        ("moltencore_cpi.docker.tls.client_cert", json!(CERT)),
        ("moltencore_cpi.docker.tls.client_key", json!(KEY)),
        ("moltencore_cpi.agent.mbus", json!("nats://10.1.1.6:4222")),
    ]
}

#[test]
fn defaults_render_the_same_config_as_the_cpis_own_defaults() {
    let rendered = render_config(&nested(&required()));
    let from_template = Config::from_value(rendered.clone())
        .unwrap_or_else(|e| panic!("the CPI refuses the rendered config: {e}\n{rendered:#}"));
    // The spec's defaults must be the CPI's: the same config without any optional key.
    let bare = Config::from_value(json!({
        "etcd": {"endpoints": ["https://127.0.0.1:2379"]},
        "docker": {"tls": {"client_cert": CERT, "client_key": KEY}},
        "agent": {"mbus": "nats://10.1.1.6:4222"}
    }))
    .unwrap();
    assert_eq!(from_template, bare);
    assert!(
        rendered["etcd"].get("tls").is_none(),
        "no etcd TLS unless set"
    );
    assert!(rendered["agent"].get("blobstore").is_none());
}

/// A non-default value for every property of the spec.
fn full() -> Vec<(&'static str, Value)> {
    vec![
        (
            "moltencore_cpi.etcd.endpoints",
            json!(["https://10.0.0.11:2379", "https://10.0.0.12:2379"]),
        ),
        ("moltencore_cpi.etcd.tls.ca_cert", json!(CERT)),
        ("moltencore_cpi.etcd.tls.client_cert", json!(CERT)),
        ("moltencore_cpi.etcd.tls.client_key", json!(KEY)),
        ("moltencore_cpi.etcd.username", json!("moltencore")),
        ("moltencore_cpi.etcd.password", json!("etcd-secret")),
        ("moltencore_cpi.etcd.key_prefix", json!("/mc")),
        ("moltencore_cpi.etcd.flannel_prefix", json!("/flannel")),
        ("moltencore_cpi.etcd.timeout_seconds", json!(9)),
        ("moltencore_cpi.docker.tls.client_cert", json!(CERT)),
        ("moltencore_cpi.docker.tls.client_key", json!(KEY)),
        ("moltencore_cpi.docker.tls.ca_cert", json!(CERT)),
        // Unquoted in a manifest, YAML reads a number: it must still become "1.43".
        ("moltencore_cpi.docker.api_version", json!(1.43)),
        ("moltencore_cpi.docker.connect_timeout_seconds", json!(3)),
        ("moltencore_cpi.docker.request_timeout_seconds", json!(60)),
        ("moltencore_cpi.docker.idle_timeout_seconds", json!(30)),
        (
            "moltencore_cpi.agent.mbus",
            json!("https://mbus:pw@0.0.0.0:6868"),
        ),
        ("moltencore_cpi.agent.ntp", json!(["ntp1.example.org"])),
        (
            "moltencore_cpi.agent.blobstore",
            json!({"provider": "dav", "options": {"endpoint": "https://10.1.1.6:25250"}}),
        ),
        ("moltencore_cpi.vm_defaults.privileged", json!(false)),
        ("moltencore_cpi.vm_defaults.cap_add", json!(["ALL"])),
        (
            "moltencore_cpi.vm_defaults.cap_drop",
            json!(["SYS_RESOURCE"]),
        ),
        (
            "moltencore_cpi.vm_defaults.security_opt",
            json!(["seccomp=unconfined", "apparmor=unconfined"]),
        ),
        (
            "moltencore_cpi.vm_defaults.device_cgroup_rules",
            json!(["a *:* rwm"]),
        ),
        ("moltencore_cpi.vm_defaults.start_mode", json!("systemd")),
        (
            "moltencore_cpi.vm_defaults.restart_policy",
            json!("unless-stopped"),
        ),
        ("moltencore_cpi.log_level", json!("debug")),
    ]
}

#[test]
fn every_property_reaches_its_cpi_json_key() {
    let full = full();
    let declared: BTreeSet<String> = job_spec()["properties"]
        .as_object()
        .expect("the spec declares properties")
        .keys()
        .filter(|k| k.starts_with(PREFIX))
        .cloned()
        .collect();
    let given: BTreeSet<String> = full.iter().map(|(k, _)| k.to_string()).collect();
    assert_eq!(declared, given, "this test sets every declared property");

    let rendered = render_config(&nested(&full));
    for (name, value) in &full {
        let key = name.strip_prefix(PREFIX).expect("namespaced property");
        let pointer = format!("/{}", key.replace('.', "/"));
        let expected = if key == "docker.api_version" {
            json!("1.43")
        } else {
            value.clone()
        };
        assert_eq!(
            rendered.pointer(&pointer),
            Some(&expected),
            "{name} -> cpi.json {key}"
        );
    }
    let c = Config::from_value(rendered.clone())
        .unwrap_or_else(|e| panic!("the CPI refuses the rendered config: {e}\n{rendered:#}"));
    assert_eq!(c.etcd.username.as_deref(), Some("moltencore"));
    assert_eq!(c.etcd.timeout_seconds, 9);
    assert_eq!(c.docker.api_version, "1.43");
    assert_eq!(c.docker.idle_timeout_seconds, 30);
    assert_eq!(c.vm_defaults.start_mode, StartMode::Systemd);
    assert!(!c.vm_defaults.privileged);
    assert_eq!(c.log_level, "debug");
}

/// The standard properties every CPI gets from bosh-deployment's bosh.yml (its
/// `cloud_provider.properties` and the director's job), as dotted names.
const STANDARD: &[&str] = &[
    "agent.mbus",
    "ntp",
    "blobstore.provider",
    "blobstore.path",
    "blobstore.options",
];

/// The required properties without the agent's, which the standard ones give.
fn required_but_agent() -> Vec<(&'static str, Value)> {
    required()
        .into_iter()
        .filter(|(k, _)| !k.starts_with("moltencore_cpi.agent."))
        .collect()
}

#[test]
fn the_standard_cpi_properties_give_the_agent_its_mbus_ntp_and_blobstore() {
    let spec = job_spec();
    for name in STANDARD {
        assert!(
            spec["properties"].get(*name).is_some(),
            "the spec declares {name}, else BOSH hides it from the template"
        );
        assert!(
            spec["properties"][*name].get("default").is_none(),
            "{name} has no default: an unset one must not hide nothing"
        );
    }
    // create-env with bosh-deployment's cloud_provider: a local blobstore with `path`.
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("https://mbus:pw@0.0.0.0:6868")),
        ("ntp", json!(["time1.google.com", "time2.google.com"])),
        ("blobstore.provider", json!("local")),
        ("blobstore.path", json!("/var/vcap/micro_bosh/data/cache")),
    ]);
    let rendered = render_config(&nested(&props));
    assert_eq!(
        rendered["agent"],
        json!({"mbus": "https://mbus:pw@0.0.0.0:6868",
               "ntp": ["time1.google.com", "time2.google.com"],
               "blobstore": {"provider": "local",
                             "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}}})
    );
    let c = Config::from_value(rendered.clone())
        .unwrap_or_else(|e| panic!("the CPI refuses the rendered config: {e}\n{rendered:#}"));
    assert_eq!(c.agent.blobstore.unwrap().provider, "local");

    // `options` are passed as they are.
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("nats://10.1.1.6:4222")),
        ("blobstore.provider", json!("dav")),
        (
            "blobstore.options",
            json!({"endpoint": "https://10.1.1.6:25250", "user": "agent"}),
        ),
    ]);
    let rendered = render_config(&nested(&props));
    assert_eq!(
        rendered["agent"]["blobstore"],
        json!({"provider": "dav", "options": {"endpoint": "https://10.1.1.6:25250", "user": "agent"}})
    );
    assert_eq!(rendered["agent"]["ntp"], json!([]));

    // The director's own blobstore properties (provider, address, port, credentials) make
    // no agent blobstore: behind a director the agents get env.bosh.blobstores.
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("nats://10.1.1.6:4222")),
        ("blobstore.provider", json!("dav")),
        ("blobstore.address", json!("10.1.1.6")),
        ("blobstore.port", json!(25250)),
    ]);
    let rendered = render_config(&nested(&props));
    assert!(rendered["agent"].get("blobstore").is_none(), "{rendered:#}");
    assert_eq!(rendered["agent"]["mbus"], "nats://10.1.1.6:4222");

    // A path is a local blobstore's alone.
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("nats://10.1.1.6:4222")),
        ("blobstore.provider", json!("dav")),
        ("blobstore.path", json!("/x")),
    ]);
    let e = render("cpi.json.erb", &nested(&props)).expect_err("a dav blobstore with a path");
    assert!(e.contains("blobstore.path"), "{e}");
}

#[test]
fn moltencore_cpi_agent_properties_override_the_standard_ones() {
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("nats://10.9.9.9:4222")),
        ("ntp", json!(["standard.ntp"])),
        ("blobstore.provider", json!("local")),
        ("blobstore.path", json!("/var/vcap/micro_bosh/data/cache")),
        (
            "moltencore_cpi.agent.mbus",
            json!("https://mbus:ours@0.0.0.0:6868"),
        ),
        ("moltencore_cpi.agent.ntp", json!(["ours.ntp"])),
        (
            "moltencore_cpi.agent.blobstore",
            json!({"provider": "local", "options": {"blobstore_path": "/ours"}}),
        ),
    ]);
    let rendered = render_config(&nested(&props));
    assert_eq!(
        rendered["agent"],
        json!({"mbus": "https://mbus:ours@0.0.0.0:6868", "ntp": ["ours.ntp"],
               "blobstore": {"provider": "local", "options": {"blobstore_path": "/ours"}}})
    );
    // An empty list of ours still overrides: the operator asked for no NTP servers.
    let mut props = required_but_agent();
    props.extend([
        ("agent.mbus", json!("nats://10.9.9.9:4222")),
        ("ntp", json!(["standard.ntp"])),
        ("moltencore_cpi.agent.ntp", json!([])),
    ]);
    assert_eq!(render_config(&nested(&props))["agent"]["ntp"], json!([]));
    // Neither mbus: rendering fails, naming both.
    let e = render("cpi.json.erb", &nested(&required_but_agent())).expect_err("no mbus");
    assert!(
        e.contains("moltencore_cpi.agent.mbus") && e.contains("'agent.mbus'"),
        "{e}"
    );
}

#[test]
fn a_missing_required_property_fails_rendering_and_names_it() {
    for (missing, _) in required() {
        let props: Vec<(&str, Value)> = required()
            .into_iter()
            .filter(|(k, _)| *k != missing)
            .collect();
        let e = render("cpi.json.erb", &nested(&props)).expect_err(missing);
        assert!(e.contains(missing), "{missing}: {e}");
        let spec = job_spec();
        assert!(
            spec["properties"][missing].get("default").is_none(),
            "{missing} has no default"
        );
    }
    // etcd auth needs both halves; one alone fails the deploy, naming both.
    let mut props = required();
    props.push(("moltencore_cpi.etcd.username", json!("only-user")));
    let e = render("cpi.json.erb", &nested(&props)).expect_err("half of etcd auth");
    assert!(
        e.contains("moltencore_cpi.etcd.username") && e.contains("moltencore_cpi.etcd.password"),
        "{e}"
    );
}

#[test]
fn the_release_has_one_bin_cpi_and_ships_the_binary_the_wrapper_runs() {
    let mut bin_cpi = Vec::new();
    for job in std::fs::read_dir(repo().join("jobs")).unwrap() {
        let job = job.unwrap().path();
        let spec = yaml_file(&job.join("spec"));
        assert!(
            job.join("monit").is_file(),
            "{}: a job needs a monit file",
            job.display()
        );
        let templates = spec["templates"].as_object().unwrap();
        let on_disk: BTreeSet<String> = std::fs::read_dir(job.join("templates"))
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            templates.keys().cloned().collect::<BTreeSet<_>>(),
            on_disk,
            "{}: every template is listed, every listed one exists",
            job.display()
        );
        for (source, target) in templates {
            if target == "bin/cpi" {
                bin_cpi.push(format!("{}/{source}", job.display()));
            }
        }
    }
    assert_eq!(bin_cpi.len(), 1, "exactly one bin/cpi: {bin_cpi:?}");

    let package = repo().join("packages/moltencore_cpi");
    let pkg_spec = yaml_file(&package.join("spec"));
    assert_eq!(pkg_spec["name"], "moltencore_cpi");
    assert_eq!(job_spec()["packages"], json!(["moltencore_cpi"]));
    let files = pkg_spec["files"].as_array().unwrap();
    assert_eq!(files.len(), 1, "{files:?}");
    let source = files[0].as_str().unwrap();
    let packaging = std::fs::read_to_string(package.join("packaging")).unwrap();
    assert!(
        packaging.contains(&format!(
            "install -D -m 0755 {source} \"${{BOSH_INSTALL_TARGET}}/cpi\""
        )),
        "packaging installs {source} as <package>/cpi:\n{packaging}"
    );
    assert!(
        !packaging.contains("bin/cpi"),
        "the package has no bin/cpi of its own"
    );
    let wrapper = std::fs::read_to_string(job_dir().join("templates/cpi.erb")).unwrap();
    assert!(
        wrapper.contains(r#"exec "$pkgs_dir/moltencore_cpi/cpi""#),
        "{wrapper}"
    );

    let final_yml = yaml_file(&repo().join("config/final.yml"));
    assert_eq!(final_yml["name"], "moltencore");
    assert!(yaml_file(&repo().join("config/blobs.yml")).is_object());
    let ignore = std::fs::read_to_string(repo().join(".gitignore")).unwrap();
    for entry in [
        "/blobs/",
        "/dev_releases/",
        "/.dev_builds/",
        "/config/private.yml",
    ] {
        assert!(
            ignore.lines().any(|l| l == entry),
            ".gitignore lacks {entry}"
        );
    }
    assert!(
        ignore
            .lines()
            .any(|l| format!("/src/{source}").starts_with(l) && l.starts_with("/src/")),
        ".gitignore keeps the built binary src/{source} out of git"
    );
}

/// create-env's layout: `<root>/jobs/moltencore_cpi/{bin/cpi,config/cpi.json}` and
/// `<root>/packages/moltencore_cpi/cpi` (the built binary).
struct Installation {
    _dir: tempfile::TempDir,
    root: PathBuf,
}

impl Installation {
    fn new(properties: &Value) -> Installation {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("installation");
        let job = root.join("jobs/moltencore_cpi");
        std::fs::create_dir_all(job.join("bin")).unwrap();
        std::fs::create_dir_all(job.join("config")).unwrap();
        std::fs::create_dir_all(root.join("packages/moltencore_cpi")).unwrap();
        let wrapper = job.join("bin/cpi");
        std::fs::write(&wrapper, render("cpi.erb", properties).unwrap()).unwrap();
        std::fs::set_permissions(&wrapper, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(
            job.join("config/cpi.json"),
            render("cpi.json.erb", properties).unwrap(),
        )
        .unwrap();
        std::os::unix::fs::symlink(cpi_bin(), root.join("packages/moltencore_cpi/cpi")).unwrap();
        Installation { _dir: dir, root }
    }

    /// Runs `bin/cpi ARGS` as create-env does: an isolated environment with the two
    /// folders set, `stdin` as the request.
    fn run(&self, args: &[&str], stdin: &str, bosh_dirs: bool) -> Output {
        let mut cmd = Command::new(self.root.join("jobs/moltencore_cpi/bin/cpi"));
        cmd.args(args)
            .env_clear()
            .env("PATH", "/usr/local/bin:/usr/bin:/bin:/sbin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if bosh_dirs {
            cmd.env("BOSH_JOBS_DIR", self.root.join("jobs"))
                .env("BOSH_PACKAGES_DIR", self.root.join("packages"));
        }
        let mut child = cmd.spawn().expect("run the rendered bin/cpi");
        use std::io::Write;
        // A wrapper that fails before reading its request closes the pipe first: its exit
        // status and stderr are what the caller checks then.
        if let Err(e) = child.stdin.take().unwrap().write_all(stdin.as_bytes()) {
            assert_eq!(
                e.kind(),
                std::io::ErrorKind::BrokenPipe,
                "writing the request: {e}"
            );
        }
        child.wait_with_output().unwrap()
    }
}

const INFO: &str = r#"{"method":"info","arguments":[],"context":{}}"#;

fn one_json_line(out: &Output) -> Value {
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    assert_eq!(
        stdout.lines().count(),
        1,
        "stdout is the response alone:\n{stdout}"
    );
    serde_json::from_str(stdout.trim()).unwrap_or_else(|e| panic!("{e}: {stdout}"))
}

#[test]
fn the_rendered_wrapper_runs_the_cpi_with_create_envs_folders() {
    let mut props = required();
    props.push(("moltencore_cpi.etcd.endpoints", json!("http://127.0.0.1:9")));
    props.push(("moltencore_cpi.etcd.timeout_seconds", json!(1)));
    let install = Installation::new(&nested(&props));

    let out = install.run(&[], INFO, true);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(one_json_line(&out)["result"]["api_version"], 2);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("done"), "the log stays on stderr: {stderr}");

    // With <vcap>/sys/log/moltencore_cpi present (a director), the log is kept there too.
    let log_dir = install.root.join("sys/log/moltencore_cpi");
    std::fs::create_dir_all(&log_dir).unwrap();
    let out = install.run(&[], INFO, true);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(one_json_line(&out)["error"], Value::Null);
    let kept = std::fs::read_to_string(log_dir.join("cpi.log")).expect("cpi.log written");
    assert!(kept.contains("method=info"), "{kept}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("method=info"));

    // Arguments go to the binary with the job's config, and its exit status comes back:
    // `nodes` cannot read this cluster (nothing listens) and exits 2.
    let out = install.run(&["nodes"], "", true);
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("127.0.0.1:9"),
        "the job's config was used: {out:?}"
    );

    // Without create-env's variables it looks below /var/vcap.
    let out = install.run(&[], INFO, false);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/var/vcap/packages/moltencore_cpi/cpi"),
        "{out:?}"
    );
}

/// PEM text of a file named in cluster.json.
fn pem(path: &Value) -> Value {
    let path = path.as_str().expect("a file path");
    json!(std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{path}: {e}")))
}

#[test]
fn a_config_rendered_from_the_clusters_values_drives_the_cluster() {
    let c = cluster();
    let props = nested(&[
        (
            "moltencore_cpi.etcd.endpoints",
            c["etcd"]["endpoints"].clone(),
        ),
        (
            "moltencore_cpi.etcd.tls.ca_cert",
            pem(&c["etcd"]["ca_cert_file"]),
        ),
        (
            "moltencore_cpi.etcd.tls.client_cert",
            pem(&c["etcd"]["client_cert_file"]),
        ),
        (
            "moltencore_cpi.etcd.tls.client_key",
            pem(&c["etcd"]["client_key_file"]),
        ),
        ("moltencore_cpi.etcd.key_prefix", c["key_prefix"].clone()),
        (
            "moltencore_cpi.etcd.flannel_prefix",
            c["flannel_prefix"].clone(),
        ),
        (
            "moltencore_cpi.docker.tls.client_cert",
            pem(&c["docker_tls"]["client_cert_file"]),
        ),
        (
            "moltencore_cpi.docker.tls.client_key",
            pem(&c["docker_tls"]["client_key_file"]),
        ),
        ("moltencore_cpi.agent.mbus", json!("nats://10.1.1.6:4222")),
    ]);
    let install = Installation::new(&props);
    let out = install.run(&["nodes", "--json"], "", true);
    assert!(
        out.status.success(),
        "cpi nodes through the rendered job failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let listing: Value = serde_json::from_slice(&out.stdout).unwrap();
    let listed: BTreeSet<String> = listing["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            assert_eq!(
                n["docker"]["reachable"], true,
                "Docker over mutual TLS: {n}"
            );
            n["name"].as_str().unwrap().to_string()
        })
        .collect();
    assert_eq!(listed, node_names().into_iter().collect());

    let out = install.run(&["bosh-config", "cloud-config"], "", true);
    assert!(out.status.success(), "{out:?}");
    let config: Value = serde_yaml_ng::from_slice(&out.stdout).unwrap();
    assert_eq!(config["azs"].as_array().unwrap().len(), listed.len());
}
