//! Black-box tests of what a VM's agent finds, through the built `cpi` binary on the local
//! cluster: the blobstore in its settings (the configured one, or the director's from
//! `env.bosh.blobstores`), a clear error and nothing made when there is none, and the
//! agent's files keeping the stemcell's modes and owners, unreadable to `vcap`, also
//! after attach_disk and detach_disk rewrote the settings in the running VM.

use moltencore_testkit::{
    cluster::{cluster_config, cluster_cpi_json, node_prefix, runtime},
    cpi::{call_on, expect_error},
    docker::{exec_as, exec_in, leftovers_of_agent, read_file_in},
    index::index_records_of_agent,
    requests::{agent_id, create_vm, create_vm_request, manual_network, shared_stemcell},
};
use serde_json::{Value, json};

fn settings_in(node: &str, cid: &str) -> Value {
    let text = runtime().block_on(read_file_in(
        node,
        cid,
        "/var/vcap/bosh/warden-cpi-agent-env.json",
    ));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("settings of {cid}: {e}: {text}"))
}

fn configured_blobstore() -> Value {
    let c: Value = cluster_cpi_json();
    let b = c["agent"]["blobstore"].clone();
    assert_eq!(b["provider"], "local", "the cluster's cpi.json: {c}");
    b
}

#[test]
fn the_configured_blobstore_reaches_the_agent_settings_in_the_vm() {
    let (node, prefix) = node_prefix(0);
    let agent = agent_id("blobstore-config");
    let env = json!({"bosh": {"group": "g"}});
    let (cid, _) = create_vm(
        &agent,
        json!({}),
        manual_network(&format!("{prefix}.61")),
        env.clone(),
    );
    let settings = settings_in(&node, &cid);
    assert_eq!(settings["blobstore"], configured_blobstore());
    assert_eq!(settings["env"], env);
    call_on(&cluster_config(), "delete_vm", json!([cid]));
}

#[test]
fn blobstores_in_env_win_and_the_configured_one_stays_out_of_the_vm() {
    let (node, prefix) = node_prefix(1);
    let agent = agent_id("blobstore-env");
    let blobstores = json!([{"provider": "dav", "options": {
        "endpoint": "https://10.1.1.6:25250", "user": "agent", "password": "agent-pw"}}]);
    let env = json!({"bosh": {"blobstores": blobstores, "group": "g"}});
    let (cid, _) = create_vm(
        &agent,
        json!({}),
        manual_network(&format!("{prefix}.62")),
        env.clone(),
    );
    let settings = settings_in(&node, &cid);
    // The agent takes env.bosh.blobstores[0] first; the CPI's own is not written at all.
    assert_eq!(settings["env"]["bosh"]["blobstores"], blobstores);
    assert!(
        settings.get("blobstore").is_none(),
        "the configured blobstore must not reach a VM that has the director's: {settings}"
    );
    call_on(&cluster_config(), "delete_vm", json!([cid]));
}

#[test]
fn no_blobstore_anywhere_is_a_cpi_error_and_nothing_is_made_on_any_node() {
    let dir = tempfile::tempdir().unwrap();
    let mut config: Value = cluster_cpi_json();
    config["agent"]
        .as_object_mut()
        .unwrap()
        .remove("blobstore")
        .expect("the cluster's cpi.json has a blobstore to take away");
    let config_path = dir.path().join("cpi.json");
    std::fs::write(&config_path, config.to_string()).unwrap();

    let (_, prefix) = node_prefix(2);
    let agent = agent_id("no-blobstore");
    for env in [json!({}), json!({"bosh": {"blobstores": [], "group": "g"}})] {
        let req = create_vm_request(
            &agent,
            &shared_stemcell(),
            json!({}),
            manual_network(&format!("{prefix}.63")),
            env.clone(),
            2,
        );
        let (kind, message, run) = expect_error(&req, Some(&config_path));
        assert_eq!(kind, "Bosh::Clouds::CpiError", "{env}: {}", run.stdout);
        assert_eq!(run.response["error"]["ok_to_retry"], false);
        for name in [
            "blobstore",
            "moltencore_cpi.agent.blobstore",
            "env.bosh.blobstores",
        ] {
            assert!(message.contains(name), "{name}: {message}");
        }
        runtime().block_on(async {
            assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
        });
        assert!(index_records_of_agent(&config_path, &agent).is_empty());
    }

    // A director's unusable blobstore is refused too, naming the entry, not its secret.
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({}),
        json!({"d": {"type": "dynamic"}}),
        json!({"bosh": {"blobstores": [{"provider": "local", "options": {"password": "SECRET-NB"}}]}}),
        2,
    );
    let (kind, message, run) = expect_error(&req, Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::CpiError", "{}", run.stdout);
    assert!(
        message.contains("env.bosh.blobstores[0].options.blobstore_path"),
        "{message}"
    );
    assert!(!run.stdout.contains("SECRET-NB") && !run.stderr.contains("SECRET-NB"));
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
    assert!(index_records_of_agent(&cluster_config(), &agent).is_empty());
}

/// `stat` of the agent's folder and files inside the VM, as root: "mode uid gid" each.
fn modes(node: &str, cid: &str, paths: &[&str]) -> Vec<String> {
    let cmd = format!("stat -c '%a %u %g' {}", paths.join(" "));
    let (code, out) = runtime().block_on(exec_in(node, cid, &cmd));
    assert_eq!(code, 0, "{cmd}: {out}");
    out.lines().map(str::to_string).collect()
}

/// What `vcap` (uid 1000) gets when it reads `path` in the VM: exit code and output.
fn read_as_vcap(node: &str, cid: &str, path: &str) -> (i64, String) {
    runtime().block_on(exec_as(
        node,
        cid,
        Some("1000"),
        &format!("id -u; cat {path} 2>&1"),
    ))
}

const BOSH_DIR: &str = "/var/vcap/bosh";
const SETTINGS: &str = "/var/vcap/bosh/warden-cpi-agent-env.json";
const UPDATE_SETTINGS: &str = "/var/vcap/bosh/update_settings.json";

fn assert_private(node: &str, cid: &str, when: &str) {
    assert_eq!(
        modes(node, cid, &[BOSH_DIR, SETTINGS]),
        vec!["700 0 0", "600 0 0"],
        "{when}: the agent's folder keeps the stemcell's 0700 root, the settings are 0600 root"
    );
    for path in [SETTINGS, "/var/vcap/bosh/warden-cpi-user-data.json"] {
        let (code, out) = read_as_vcap(node, cid, path);
        assert!(
            out.starts_with("1000\n"),
            "{when}: really ran as vcap: {out}"
        );
        assert_ne!(code, 0, "{when}: vcap read {path}: {out}");
        assert!(out.contains("Permission denied"), "{when}: {out}");
        assert!(!out.contains("mbus"), "{when}: {out}");
    }
}

#[test]
fn agent_files_keep_the_stemcells_modes_and_vcap_cannot_read_them_also_after_attach_and_detach() {
    let (node, prefix) = node_prefix(0);
    let agent = agent_id("vcap");
    let (cid, _) = create_vm(
        &agent,
        json!({}),
        manual_network(&format!("{prefix}.64")),
        json!({}),
    );

    // The stemcell's own folder, as a container of the image without the CPI shows it.
    let (code, out) = runtime().block_on(exec_in(&node, &cid, "id vcap"));
    assert_eq!(code, 0, "the stemcell has a vcap user: {out}");
    assert_private(&node, &cid, "after create_vm");
    let (code, out) = read_as_vcap(&node, &cid, "/etc/hostname");
    assert_eq!(code, 0, "vcap can read what is not the agent's: {out}");

    // The agent's own update_settings.json (credentials), 0600, stays as it was when
    // attach_disk writes the settings into the running VM, and the folder stays 0700.
    let (code, out) = runtime().block_on(exec_in(
        &node,
        &cid,
        &format!("umask 077; echo '{{\"trusted_certs\":\"x\"}}' > {UPDATE_SETTINGS}"),
    ));
    assert_eq!(code, 0, "{out}");
    let disk = call_on(&cluster_config(), "create_disk", json!([64, {}, cid]))
        .as_str()
        .unwrap()
        .to_string();
    call_on(&cluster_config(), "attach_disk", json!([cid, disk]));
    assert_private(&node, &cid, "after attach_disk");
    assert_eq!(modes(&node, &cid, &[UPDATE_SETTINGS]), vec!["600 0 0"]);
    let (code, out) = read_as_vcap(&node, &cid, UPDATE_SETTINGS);
    assert_ne!(code, 0, "vcap read update_settings.json: {out}");
    assert_eq!(
        runtime().block_on(read_file_in(&node, &cid, UPDATE_SETTINGS)),
        "{\"trusted_certs\":\"x\"}\n"
    );

    call_on(&cluster_config(), "detach_disk", json!([cid, disk]));
    assert_private(&node, &cid, "after detach_disk");
    call_on(&cluster_config(), "delete_vm", json!([cid]));
    call_on(&cluster_config(), "delete_disk", json!([disk]));
}
