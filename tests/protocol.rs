//! Black-box tests of the CPI protocol through the built `cpi` binary: envelope errors,
//! argument checks, result schema, exit status, and secrets kept out of every log.

use moltencore_testkit::cpi::{assert_schema, expect_error, expect_result, run_cpi};
use serde_json::json;

#[test]
fn info_answers_v2_without_config_or_network() {
    for api in ["", r#","api_version":1"#, r#","api_version":2"#] {
        let req = format!(r#"{{"method":"info","arguments":[],"context":{{}}{api}}}"#);
        let result = expect_result(&req, None);
        assert_eq!(result["api_version"], 2);
        let formats: Vec<&str> = result["stemcell_formats"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        assert!(formats.contains(&"warden-tar"), "{formats:?}");
    }
}

#[test]
fn malformed_envelopes_are_cpi_errors() {
    let cases = [
        ("", "empty request"),
        ("{not json", "not valid JSON"),
        ("[]", "must be a JSON object"),
        (r#"{"arguments":[]}"#, "no 'method'"),
        (r#"{"method":"info"}"#, "no 'arguments'"),
        (
            r#"{"method":"info","arguments":"x"}"#,
            "'arguments' must be an array",
        ),
        (
            r#"{"method":["info"],"arguments":[]}"#,
            "'method' must be a string",
        ),
    ];
    for (req, needle) in cases {
        let (kind, message, _) = expect_error(req, None);
        assert_eq!(kind, "Bosh::Clouds::CpiError", "for {req:?}");
        assert!(message.contains(needle), "for {req:?}: {message}");
    }
}

#[test]
fn unknown_method_is_not_implemented() {
    let (kind, message, _) =
        expect_error(r#"{"method":"reticulate_splines","arguments":[]}"#, None);
    assert_eq!(kind, "Bosh::Clouds::NotImplemented");
    assert!(message.contains("reticulate_splines"), "{message}");
}

#[test]
fn wrong_arguments_name_the_argument_and_expectation() {
    let cases = [
        (
            json!({"method":"delete_vm","arguments":[]}),
            "delete_vm: expected 1 argument(s) (vm_cid), got 0",
        ),
        (
            json!({"method":"has_vm","arguments":[42]}),
            "has_vm: argument 1 (vm_cid) must be a non-empty string, got a number",
        ),
        (
            json!({"method":"create_disk","arguments":["big", {}, null]}),
            "create_disk: argument 1 (size) must be a positive integer (MiB), got a string",
        ),
        (
            json!({"method":"set_vm_metadata","arguments":["vm-00000000-0000-0000-0000-000000000001", ["x"]]}),
            "set_vm_metadata: argument 2 (metadata) must be an object or null, got an array",
        ),
        (
            json!({"method":"create_vm","arguments":["a","sc-00000000-0000-0000-0000-000000000001",{},{"default":{"ip":"10.1.1.999"}},[],{}]}),
            "create_vm: argument 4 (networks)",
        ),
        (
            json!({"method":"create_vm","arguments":["a","sc-00000000-0000-0000-0000-000000000001",{},{},"disk-1",{}]}),
            "create_vm: argument 5 (disk_cids) must be an array of strings or null, got a string",
        ),
        (
            json!({"method":"attach_disk","arguments":["vm-00000000-0000-0000-0000-000000000001", ""]}),
            "attach_disk: argument 2 (disk_cid) must be a disk cid (disk-<uuid>), got ''",
        ),
    ];
    for (req, needle) in cases {
        let (kind, message, _) = expect_error(&req.to_string(), None);
        assert_eq!(kind, "Bosh::Clouds::CpiError", "for {req}");
        assert!(message.contains(needle), "for {req}: {message}");
    }
}

#[test]
fn a_bad_config_is_a_cpi_error_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpi.json");
    std::fs::write(
        &path,
        json!({"etcd": {"endpoints": ["https://127.0.0.1:1"], "key_prefix": "no-slash"},
               "docker": {"tls": {"client_cert": "x", "client_key": "y"}},
               "agent": {"mbus": "https://mbus:pw@0.0.0.0:6868"}})
        .to_string(),
    )
    .unwrap();
    let req = json!({"method":"calculate_vm_cloud_properties",
                     "arguments":[{"cpu":1,"ram":512,"ephemeral_disk_size":1024}]});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&path));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("etcd.key_prefix"), "{message}");
}

#[test]
fn unreachable_etcd_is_a_retriable_cloud_error_naming_the_endpoint() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpi.json");
    // Port 9 on loopback: nothing listens there, the connection is refused at once.
    std::fs::write(
        &path,
        json!({"etcd": {"endpoints": ["http://127.0.0.1:9"], "timeout_seconds": 2},
               "docker": {"tls": {"client_cert": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----",
                                  "client_key": "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----"}},
               "agent": {"mbus": "https://mbus:pw@0.0.0.0:6868"}})
        .to_string(),
    )
    .unwrap();
    let req = json!({"method":"calculate_vm_cloud_properties",
                     "arguments":[{"cpu":1,"ram":512,"ephemeral_disk_size":1024}]});
    let (kind, message, run) = expect_error(&req.to_string(), Some(&path));
    assert_eq!(kind, "Bosh::Clouds::CloudError", "{message}");
    assert!(message.contains("http://127.0.0.1:9"), "{message}");
    assert_eq!(run.response["error"]["ok_to_retry"], true);
}

#[test]
fn secrets_never_reach_stderr_or_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cpi.json");
    std::fs::write(
        &path,
        json!({"etcd": {"endpoints": ["http://127.0.0.1:9"], "timeout_seconds": 1,
                        "username": "root", "password": "SECRET-ETCD-PW"},
               "docker": {"tls": {"client_cert": "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----",
                                  "client_key": "-----BEGIN PRIVATE KEY-----\nSECRETDOCKERKEY\n-----END PRIVATE KEY-----"}},
               "agent": {"mbus": "https://mbus:SECRET-MBUS-PW@0.0.0.0:6868"}})
        .to_string(),
    )
    .unwrap();
    let env = json!({"bosh": {
        "password": "SECRET-VCAP-HASH",
        "group": "visible-group",
        "mbus": {"cert": {"private_key": "SECRET-MBUS-KEY", "ca": "c"}},
        "blobstores": [{"provider": "dav", "options": {"endpoint": "https://u:SECRET-BLOB-PW@blob:25250",
                         "password": "SECRET-BLOB-PW2"}}]
    }});
    let requests = [
        json!({"method":"create_vm","arguments":["agent-1","sc-00000000-0000-0000-0000-000000000001",{},{"default":{"type":"dynamic"}},[],env],
               "context":{"request_id":"cpi-4242"},"api_version":2}),
        json!({"method":"calculate_vm_cloud_properties",
               "arguments":[{"cpu":1,"ram":512,"ephemeral_disk_size":1024}],
               "context":{"request_id":"cpi-4243"}}),
        json!({"method":"create_vm","arguments":["agent-1","sc-00000000-0000-0000-0000-000000000001",{},{"n":{"ip":"bad"}},[],env]}),
    ];
    for req in requests {
        for level in ["trace", "debug,moltencore=trace"] {
            let run = run_cpi(&req.to_string(), Some(&path), &[("MOLTENCORE_LOG", level)]);
            assert_schema(&run);
            let everything = format!("{}\n{}", run.stderr, run.stdout);
            for secret in [
                "SECRET-ETCD-PW",
                "SECRETDOCKERKEY",
                "SECRET-MBUS-PW",
                "SECRET-VCAP-HASH",
                "SECRET-MBUS-KEY",
                "SECRET-BLOB-PW",
            ] {
                assert!(
                    !everything.contains(secret),
                    "{secret} leaked at level {level}:\n{everything}"
                );
            }
            if req["method"] == "create_vm" && req["context"]["request_id"] == "cpi-4242" {
                // The debug line with the (redacted) arguments is really there.
                assert!(run.stderr.contains("visible-group"), "{}", run.stderr);
                assert!(run.stderr.contains("cpi-4242"), "{}", run.stderr);
            }
        }
    }
}

#[test]
fn log_lines_carry_method_and_request_id() {
    let run = run_cpi(
        r#"{"method":"info","arguments":[],"context":{"request_id":"cpi-777"}}"#,
        None,
        &[],
    );
    assert_schema(&run);
    assert!(run.stderr.contains("method=info"), "{}", run.stderr);
    assert!(run.stderr.contains("cpi-777"), "{}", run.stderr);
}

#[test]
fn deprecated_and_director_network_methods_are_not_implemented() {
    for m in [
        "current_vm_id",
        "configure_networks",
        "create_network",
        "delete_network",
    ] {
        let (kind, _, _) = expect_error(&format!(r#"{{"method":"{m}","arguments":[]}}"#), None);
        assert_eq!(kind, "Bosh::Clouds::NotImplemented", "{m}");
    }
}
