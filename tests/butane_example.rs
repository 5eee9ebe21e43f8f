//! The Flatcar Butane example (`examples/flatcar/moltencore-node.bu`): it installs the
//! binary, runs node-prep at every boot before flanneld and the BOSH network unit, and
//! its units pass `systemd-analyze verify` in a Flatcar-like root.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use moltencore_testkit::tools::systemd_verify;
use serde_yaml_ng::Value;

fn example() -> Value {
    let path =
        PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("examples/flatcar/moltencore-node.bu");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{} is not YAML: {e}", path.display()))
}

fn unit<'a>(doc: &'a Value, name: &str) -> &'a Value {
    doc["systemd"]["units"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|u| u["name"].as_str() == Some(name))
        .unwrap_or_else(|| panic!("no unit {name} in the example"))
}

fn line_values<'a>(contents: &'a str, key: &str) -> Vec<&'a str> {
    contents
        .lines()
        .filter_map(|l| l.strip_prefix(&format!("{key}=")))
        .flat_map(|v| v.split_whitespace())
        .collect()
}

#[test]
fn installs_the_binary_and_orders_node_prep_before_flanneld_and_the_network_unit() {
    let doc = example();
    assert_eq!(doc["variant"].as_str(), Some("flatcar"));
    let files = doc["storage"]["files"].as_sequence().unwrap();
    let cpi = files
        .iter()
        .find(|f| f["path"].as_str() == Some("/opt/bin/cpi"))
        .expect("the example installs /opt/bin/cpi");
    // Butane reads `0755` as octal (YAML 1.1); a YAML 1.2 reader sees the string "0755".
    let mode = match &cpi["mode"] {
        Value::String(s) if s.starts_with('0') => u32::from_str_radix(s, 8).ok(),
        other => other.as_u64().and_then(|m| u32::try_from(m).ok()),
    };
    assert_eq!(mode, Some(0o755), "mode {:?}", cpi["mode"]);
    let prep = unit(&doc, "moltencore-node-prep.service");
    assert_eq!(prep["enabled"].as_bool(), Some(true));
    let contents = prep["contents"].as_str().unwrap();
    let before = line_values(contents, "Before");
    assert!(before.contains(&"flanneld.service"), "{contents}");
    assert!(before.contains(&"moltencore-network.service"), "{contents}");
    let after = line_values(contents, "After");
    assert!(after.contains(&"etcd-member.service") && after.contains(&"docker.service"));
    assert!(
        contents.contains("ExecStart=/opt/bin/cpi node-prep"),
        "{contents}"
    );
    let env_file = line_values(contents, "EnvironmentFile")[0];
    assert!(
        files.iter().any(|f| f["path"].as_str() == Some(env_file)),
        "{env_file} is not written by the example"
    );
    let dropin = unit(&doc, "flanneld.service")["dropins"][0]["contents"]
        .as_str()
        .unwrap();
    assert!(line_values(dropin, "After").contains(&"moltencore-node-prep.service"));
}

#[test]
fn host_updates_go_through_the_reboot_manager_with_locksmithd_off() {
    let doc = example();
    let files = doc["storage"]["files"].as_sequence().unwrap();
    let update = files
        .iter()
        .find(|f| f["path"].as_str() == Some("/etc/flatcar/update.conf"))
        .expect("the example writes /etc/flatcar/update.conf");
    let text = update["contents"]["inline"].as_str().unwrap();
    assert_eq!(line_values(text, "REBOOT_STRATEGY"), ["off"], "{text}");
    let manager = unit(&doc, moltencore::nodeprep::reboot_unit::REBOOT_MANAGER_UNIT);
    assert_eq!(manager["enabled"].as_bool(), Some(true));
    assert_eq!(
        unit(&doc, "locksmithd.service")["mask"].as_bool(),
        Some(true)
    );
    // The unit's configuration is provided.
    for path in [
        moltencore::nodeprep::reboot_unit::CONFIG_FILE,
        moltencore::nodeprep::reboot_unit::ENV_FILE,
    ] {
        assert!(
            files.iter().any(|f| f["path"].as_str() == Some(path)),
            "{path} is not written by the example"
        );
    }
}

fn write(root: &Path, path: &str, contents: &str, mode: u32) {
    let p = root.join(path.trim_start_matches('/'));
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, contents).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode)).unwrap();
}

/// Flatcar's units under `r`, as stand-ins, the standard targets (from this machine's
/// systemd) and the programs the units run.
fn write_flatcar_stand_ins(r: &Path) {
    let lib = "/usr/lib/systemd/system";
    for entry in std::fs::read_dir(lib).expect("systemd's units (Debian package systemd)") {
        let path = entry.unwrap().path();
        if path.extension().is_some_and(|e| e == "target") {
            let name = path.file_name().unwrap().to_string_lossy().to_string();
            write(
                r,
                &format!("{lib}/{name}"),
                &std::fs::read_to_string(&path).unwrap(),
                0o644,
            );
        }
    }
    for (name, exec) in [
        ("etcd-member.service", "/usr/bin/docker run etcd"),
        ("flanneld.service", "/usr/bin/docker run flannel"),
        ("coreos-metadata.service", "/usr/bin/coreos-metadata"),
        (
            "docker.service",
            "/usr/bin/dockerd --host=fd:// $DOCKER_OPTS",
        ),
        (
            "moltencore-network.service",
            "/opt/bin/cpi node-prep network",
        ),
    ] {
        write(
            r,
            &format!("{lib}/{name}"),
            &format!(
                "[Unit]\nDescription={name}\n[Service]\nExecStart={exec}\n[Install]\nWantedBy=multi-user.target\n"
            ),
            0o644,
        );
    }
    for exe in [
        "/usr/bin/docker",
        "/usr/bin/dockerd",
        "/usr/bin/coreos-metadata",
        "/opt/bin/cpi",
    ] {
        write(r, exe, "#!/bin/sh\n", 0o755);
    }
}

/// The example's files, its node-prep unit and flanneld drop-in, and the reboot manager's
/// unit as node-prep writes it, under `r`.
fn write_example_files_and_units(r: &Path, doc: &Value) {
    for file in doc["storage"]["files"].as_sequence().unwrap() {
        let path = file["path"].as_str().unwrap();
        let inline = file["contents"]["inline"].as_str().unwrap_or("#!/bin/sh\n");
        if !r.join(path.trim_start_matches('/')).exists() {
            write(r, path, inline, 0o600);
        }
    }
    let prep = unit(doc, "moltencore-node-prep.service")["contents"]
        .as_str()
        .unwrap();
    write(
        r,
        "/etc/systemd/system/moltencore-node-prep.service",
        prep,
        0o644,
    );
    let dropin = unit(doc, "flanneld.service")["dropins"][0]["contents"]
        .as_str()
        .unwrap();
    write(
        r,
        "/etc/systemd/system/flanneld.service.d/50-moltencore.conf",
        dropin,
        0o644,
    );

    // The reboot manager's unit, as node-prep writes it.
    write(
        r,
        "/etc/systemd/system/moltencore-reboot-manager.service",
        &moltencore::nodeprep::reboot_unit::unit("n1", "/opt/bin/cpi"),
        0o644,
    );
}

#[test]
fn the_examples_units_pass_systemd_analyze_verify() {
    let doc = example();
    let root = tempfile::tempdir().unwrap();
    let r = root.path();
    write_flatcar_stand_ins(r);
    write_example_files_and_units(r, &doc);

    let out = systemd_verify(
        r,
        &[
            "/etc/systemd/system/moltencore-node-prep.service",
            "/etc/systemd/system/moltencore-reboot-manager.service",
            "flanneld.service",
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
}
