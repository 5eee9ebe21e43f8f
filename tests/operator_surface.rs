//! Black-box tests of what a person sees, through the built `cpi` binary: the operator
//! commands fail with a plain `error:` line and a hint, `cpi` at a terminal says what it
//! waits for, node-prep offers no `-c`, request errors speak JSON words, unknown
//! cloud_properties keys are named in the response log, and create_stemcell reports its
//! progress per node.

mod common;

use std::path::Path;
use std::process::{Command, Output, Stdio};

use common::{
    cluster_config, cpi_bin, create_vm_request, expect_error, manual_network, node_names,
    node_prefix, run_cpi, shared_stemcell, test_stemcell_dir,
};
use serde_json::{Value, json};

fn cpi(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(cpi_bin());
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run cpi")
}

/// Asserts `out` failed with `error: …` (no BOSH wire type) and a `hint: …` containing
/// `hint`; returns stderr.
fn assert_error_with_hint(out: &Output, hint: &str) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "expected a failure:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().collect();
    assert!(
        lines.first().is_some_and(|l| l.starts_with("error: ")),
        "{stderr}"
    );
    assert!(!stderr.contains("Bosh::Clouds"), "{stderr}");
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("hint: ") && l.contains(hint)),
        "no hint containing {hint:?}:\n{stderr}"
    );
    stderr
}

#[test]
fn operator_commands_without_a_config_say_error_and_hint_at_dash_c() {
    let jobs = tempfile::tempdir().unwrap();
    let jobs_dir = jobs.path().to_str().unwrap();
    for args in [
        &["nodes"][..],
        &["nodes", "--json"],
        &["nodes", "cordon", "n1"],
        &["nodes", "drain", "n1"],
        &["nodes", "max-unavailable", "2"],
        &["bosh-config", "cloud-config"],
        &["bosh-config", "cpi-config"],
    ] {
        let out = cpi(args, &[("BOSH_JOBS_DIR", jobs_dir)]);
        let stderr = assert_error_with_hint(&out, "pass -c /path/to/cpi.json");
        assert!(stderr.contains("No such file"), "{args:?}: {stderr}");
        assert!(stderr.contains(jobs_dir), "{args:?}: {stderr}");
    }
}

#[test]
fn a_wrong_dash_c_is_named_before_or_after_the_subcommand() {
    for args in [
        &["nodes", "-c", "/missing/cpi.json"][..],
        &["-c", "/missing/cpi.json", "nodes"],
        &["nodes", "cordon", "n1", "-c", "/missing/cpi.json"],
        &["bosh-config", "cloud-config", "-c", "/missing/cpi.json"],
    ] {
        let out = cpi(args, &[]);
        let stderr = assert_error_with_hint(&out, "-c");
        assert!(stderr.contains("/missing/cpi.json"), "{args:?}: {stderr}");
    }
}

#[test]
fn an_invalid_config_names_the_key_and_hints_at_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpi.json");
    std::fs::write(&path, r#"{"etcd": 1}"#).unwrap();
    let out = cpi(&["nodes", "-c", path.to_str().unwrap()], &[]);
    let stderr = assert_error_with_hint(&out, path.to_str().unwrap());
    assert!(stderr.contains("etcd"), "{stderr}");
}

#[test]
fn node_prep_help_offers_no_config_flag_and_nodes_help_does() {
    let help = |args: &[&str]| String::from_utf8(cpi(args, &[]).stdout).unwrap();
    let prep = help(&["node-prep", "--help"]);
    assert!(prep.contains("Usage"), "{prep}");
    assert!(!prep.contains("--config"), "{prep}");
    assert!(!prep.contains("-c,"), "{prep}");
    for args in [
        &["nodes", "--help"][..],
        &["nodes", "cordon", "--help"],
        &["bosh-config", "cloud-config", "--help"],
        &["rpc", "--help"],
        &["--help"],
    ] {
        assert!(help(args).contains("--config"), "{args:?}");
    }
}

/// Runs `cpi` under `script`, so that its stdin is a terminal; stdin of `script` is empty,
/// so the request read ends at once.
#[test]
fn cpi_at_a_terminal_says_it_reads_a_json_request_on_stdin() {
    let command = format!("{} -c /nonexistent/cpi.json", cpi_bin().display());
    let out = Command::new("script")
        .args(["-qec", &command, "/dev/null"])
        .stdin(Stdio::null())
        .output()
        .expect("util-linux `script` is needed to give cpi a terminal");
    let seen = String::from_utf8_lossy(&out.stdout);
    assert!(
        seen.contains("reading one BOSH CPI request (a JSON object) on stdin"),
        "{seen}"
    );
    assert!(seen.contains("cpi --help"), "{seen}");
    // With a pipe (as the director runs it) nothing is said.
    let piped = run_cpi(r#"{"method":"info","arguments":[]}"#, None, &[]);
    assert!(!piped.stderr.contains("on stdin"), "{}", piped.stderr);
}

#[test]
fn request_errors_speak_json_words_not_rust_types() {
    let (kind, message, _) = expect_error(
        &json!({"method":"calculate_vm_cloud_properties",
                "arguments":[{"cpu":"x","ram":1,"ephemeral_disk_size":1}]})
        .to_string(),
        None,
    );
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("'cpu'"), "{message}");
    assert!(message.contains("a whole number"), "{message}");
    assert!(!message.contains("u64"), "{message}");
    let (_, message, _) = expect_error(
        &json!({"method":"create_vm","arguments":["a","sc-00000000-0000-0000-0000-000000000001",
                {},{"n":5},[],{}]})
        .to_string(),
        None,
    );
    assert!(message.contains("argument 4 (networks)"), "{message}");
    assert!(message.contains("an object"), "{message}");
    assert!(!message.contains("struct"), "{message}");
}

fn log_of(response: &Value) -> &str {
    response["log"].as_str().expect("log is a string")
}

#[test]
fn an_unknown_create_disk_property_is_named_in_the_response_log() {
    let config = cluster_config();
    let run = run_cpi(
        &json!({"method":"create_disk","arguments":[16,{"sise":5,"Other":1},null]}).to_string(),
        Some(&config),
        &[],
    );
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    let disk = run.response["result"].as_str().unwrap().to_string();
    let log = log_of(&run.response);
    assert!(
        log.contains("create_disk") && log.contains("'sise'"),
        "{log}"
    );
    assert!(
        !log.contains("Other"),
        "upper-case keys are not ours to judge: {log}"
    );
    delete(&config, "delete_disk", &disk);
}

#[test]
fn an_unknown_create_vm_property_is_named_in_the_response_log_and_the_vm_is_made() {
    let config = cluster_config();
    let (_, prefix) = node_prefix(0);
    let agent = common::agent_id("typo");
    let request = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({"rma": 1024, "ram": 256}),
        manual_network(&format!("{prefix}.97")),
        json!({}),
        2,
    );
    let run = run_cpi(&request, Some(&config), &[]);
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    let vm = run.response["result"][0].as_str().unwrap().to_string();
    let log = log_of(&run.response);
    assert!(log.contains("create_vm") && log.contains("'rma'"), "{log}");
    assert!(!log.contains("'ram'"), "{log}");
    delete(&config, "delete_vm", &vm);
}

#[test]
fn create_stemcell_reports_bytes_sent_per_node() {
    let config = cluster_config();
    let image = test_stemcell_dir().join("image");
    let run = run_cpi(
        &json!({"method":"create_stemcell","arguments":[image.to_str().unwrap(), {}]}).to_string(),
        Some(&config),
        &[],
    );
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    let cid = run.response["result"].as_str().unwrap().to_string();
    let importing = run
        .stderr
        .find("importing stemcell")
        .expect("importing line");
    let done = run.stderr.rfind(" done").expect("done line");
    for node in node_names() {
        let line = run
            .stderr
            .lines()
            .find(|l| l.contains("MiB sent") && l.contains(&format!("node={node}")))
            .unwrap_or_else(|| panic!("no progress line for {node}:\n{}", run.stderr));
        assert!(line.contains("MiB/s"), "{line}");
        let at = run.stderr.find(line).unwrap();
        assert!(importing < at && at < done, "{}", run.stderr);
    }
    delete(&config, "delete_stemcell", &cid);
}

fn delete(config: &Path, method: &str, cid: &str) {
    let run = run_cpi(
        &json!({"method": method, "arguments": [cid]}).to_string(),
        Some(config),
        &[],
    );
    assert!(run.response["error"].is_null(), "{}", run.stdout);
}
