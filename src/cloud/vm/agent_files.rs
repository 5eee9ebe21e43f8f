//! The files the bosh-agent of a container stemcell reads at start: its settings (File
//! settings source), the user data pointing at them, and the instance metadata; packed
//! as a tar archive so they are in the container before it starts.

use std::collections::BTreeMap;

use serde_json::{Map, Value, json};

use super::network_plan::{PlannedNetwork, resolved_json};
use crate::config::{AgentConfig, BlobstoreSettings};
use crate::protocol::Object;

/// Where the warden stemcell's agent.json looks for its settings.
pub const SETTINGS_PATH: &str = "/var/vcap/bosh/warden-cpi-agent-env.json";
/// User data naming the settings file as the registry endpoint.
pub const USER_DATA_PATH: &str = "/var/vcap/bosh/warden-cpi-user-data.json";
/// Instance metadata (`instance-id` = vm cid).
pub const METADATA_PATH: &str = "/var/vcap/bosh/warden-cpi-metadata.json";
/// Where a persistent disk appears inside the VM; the agent bind-mounts it.
pub const DISK_MOUNT_ROOT: &str = "/warden-cpi-dev";
/// The agent's own configuration, as the stemcell brings it.
pub const AGENT_CONFIG_PATH: &str = "/var/vcap/bosh/agent.json";

/// The stemcell's agent configuration set to mount persistent disks as the block devices
/// they are here: `BindMountPersistentDisk` off (a warden stemcell has it on, for disks
/// that are folders) and `UsePreformattedPersistentDisk` on (the CPI has the disk
/// formatted; the agent mounts the device itself, as the agent's `migrate_disk` remounts
/// it). `None` when the file is no JSON object with a `Platform.Linux` object or none.
pub fn block_disk_agent_config(config: &[u8]) -> Option<Vec<u8>> {
    let mut config: Value = serde_json::from_slice(config).ok()?;
    let platform = config
        .as_object_mut()?
        .entry("Platform")
        .or_insert(json!({}));
    let linux = platform
        .as_object_mut()?
        .entry("Linux")
        .or_insert(json!({}));
    let linux = linux.as_object_mut()?;
    linux.insert("BindMountPersistentDisk".into(), Value::Bool(false));
    linux.insert("UsePreformattedPersistentDisk".into(), Value::Bool(true));
    serde_json::to_vec_pretty(&config).ok()
}

/// The agent settings document; `blobstore` is the one [`super::blobstore::for_agent`]
/// chose for its top level (none when `env` brings the agent's blobstores).
pub fn settings(
    agent_id: &str,
    vm_cid: &str,
    agent: &AgentConfig,
    blobstore: Option<&BlobstoreSettings>,
    networks: &[PlannedNetwork],
    persistent_disks: &BTreeMap<String, String>,
    env: &Object,
) -> Value {
    let mut nets = resolved_json(networks);
    for v in nets.values_mut() {
        if let Value::Object(o) = v {
            o.entry("mac")
                .or_insert_with(|| Value::String(String::new()));
            o.insert("preconfigured".into(), Value::Bool(true));
            if !o.contains_key("default") {
                o.insert("default".into(), json!([]));
            }
        }
    }
    let persistent: Map<String, Value> = persistent_disks
        .iter()
        .map(|(cid, path)| (cid.clone(), Value::String(path.clone())))
        .collect();
    let mut doc = json!({
        "agent_id": agent_id,
        "vm": {"name": vm_cid},
        "mbus": agent.mbus.expose(),
        "ntp": agent.ntp,
        "networks": nets,
        "disks": {"system": "", "ephemeral": null, "persistent": persistent},
        "env": Value::Object(env.clone()),
    });
    if let Some(blobstore) = blobstore {
        doc["blobstore"] = json!({"provider": blobstore.provider, "options": blobstore.options});
    }
    doc
}

/// The hint of a persistent disk: its path inside the VM.
pub fn disk_hint(disk_cid: &str) -> String {
    format!("{DISK_MOUNT_ROOT}/{disk_cid}")
}

/// Adds (or, with `attached` false, removes) disk `disk_cid`'s hint in the settings'
/// `disks.persistent`, as attach_disk and detach_disk change a running VM's disks. A
/// document of another shape is made to have that map.
pub fn set_disk_hint(settings: &mut Value, disk_cid: &str, attached: bool) {
    if !settings.is_object() {
        *settings = json!({});
    }
    let disks = &mut settings["disks"];
    if !disks.is_object() {
        *disks = json!({"system": "", "ephemeral": null});
    }
    let persistent = &mut disks["persistent"];
    if !persistent.is_object() {
        *persistent = json!({});
    }
    if let Value::Object(map) = persistent {
        if attached {
            map.insert(disk_cid.to_string(), Value::String(disk_hint(disk_cid)));
        } else {
            map.remove(disk_cid);
        }
    }
}

/// A tar archive (to extract at `/`) of the settings file alone (root, 0600).
pub fn settings_archive(settings: &Value) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    let owner = FileOwner {
        mode: 0o600,
        uid: 0,
        gid: 0,
    };
    append_file(
        &mut builder,
        SETTINGS_PATH,
        &serde_json::to_vec(settings)?,
        owner,
    )?;
    builder.into_inner()
}

/// A tar archive (to extract at `/`) holding the three agent files, owned by root; the
/// settings (mbus credentials, certificates) 0600. It holds no folder entries: Docker
/// would apply their modes to the image's folders, and `/var/vcap/bosh` must keep the
/// stemcell's 0700 (the agent's own `settings.json` there is not 0600). A folder the
/// image lacks is made by Docker (0755, root).
/// `agent_config`, when given, replaces the stemcell's agent.json (same owner, 0644).
pub fn archive(
    vm_cid: &str,
    settings: &Value,
    agent_config: Option<Vec<u8>>,
) -> std::io::Result<Vec<u8>> {
    let mut files = vec![
        (SETTINGS_PATH, serde_json::to_vec(settings)?, 0o600),
        (
            USER_DATA_PATH,
            serde_json::to_vec(&json!({"Registry": {"Endpoint": SETTINGS_PATH}}))?,
            0o644,
        ),
        (
            METADATA_PATH,
            serde_json::to_vec(&json!({"instance-id": vm_cid}))?,
            0o644,
        ),
    ];
    if let Some(config) = agent_config {
        files.push((AGENT_CONFIG_PATH, config, 0o644));
    }
    let mut builder = tar::Builder::new(Vec::new());
    for (path, data, mode) in files {
        append_file(
            &mut builder,
            path,
            &data,
            FileOwner {
                mode,
                uid: 0,
                gid: 0,
            },
        )?;
    }
    builder.into_inner()
}

/// Mode and numeric owner of a file written into a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileOwner {
    /// Permission bits.
    pub mode: u32,
    /// Numeric user id.
    pub uid: u64,
    /// Numeric group id.
    pub gid: u64,
}

/// Appends one regular file at the absolute `path` to `builder`.
pub fn append_file(
    builder: &mut tar::Builder<Vec<u8>>,
    path: &str,
    data: &[u8],
    owner: FileOwner,
) -> std::io::Result<()> {
    let mut h = tar::Header::new_gnu();
    h.set_size(data.len() as u64);
    h.set_mode(owner.mode);
    h.set_uid(owner.uid);
    h.set_gid(owner.gid);
    h.set_mtime(0);
    h.set_cksum();
    builder.append_data(&mut h, path.trim_start_matches('/'), data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::vm::network_plan::plan;

    #[test]
    fn agent_config_mounts_block_devices_and_keeps_the_rest() {
        let warden = br#"{"Platform":{"Linux":{"UseDefaultTmpDir":true,"BindMountPersistentDisk":true,"SkipDiskSetup":true}},"Infrastructure":{"Settings":{"Sources":[{"Type":"File"}]}}}"#;
        let c: Value = serde_json::from_slice(&block_disk_agent_config(warden).unwrap()).unwrap();
        let linux = &c["Platform"]["Linux"];
        assert_eq!(linux["BindMountPersistentDisk"], false);
        assert_eq!(linux["UsePreformattedPersistentDisk"], true);
        assert_eq!(linux["SkipDiskSetup"], true);
        assert_eq!(
            c["Infrastructure"]["Settings"]["Sources"][0]["Type"],
            "File"
        );
        let bare: Value = serde_json::from_slice(&block_disk_agent_config(b"{}").unwrap()).unwrap();
        assert_eq!(bare["Platform"]["Linux"]["BindMountPersistentDisk"], false);
        for bad in [&b"[]"[..], b"not json", br#"{"Platform":[]}"#] {
            assert!(block_disk_agent_config(bad).is_none());
        }
    }
    use crate::config::Secret;
    use std::io::Read;

    fn agent() -> AgentConfig {
        AgentConfig {
            mbus: Secret::new("https://mbus:pw@0.0.0.0:6868"),
            ntp: vec!["ntp.example".into()],
            blobstore: None,
        }
    }

    fn planned() -> Vec<PlannedNetwork> {
        let node = serde_json::from_value(json!({"name":"n1","private_ip":"192.0.2.1",
            "docker_endpoint":"tcp://192.0.2.1:2376","subnet":"10.1.2.0/24","gateway":"10.1.2.1"}))
        .unwrap();
        let nets = serde_json::from_value(json!({"default": {"type": "manual",
            "ip": "10.1.2.11", "netmask": "255.255.255.0", "gateway": "10.1.2.1",
            "dns": ["10.1.2.1"], "default": ["dns", "gateway"], "cloud_properties": {}}}))
        .unwrap();
        plan(&nets, &node).unwrap()
    }

    #[test]
    fn settings_have_the_contract_shape() {
        let disks: BTreeMap<String, String> = [("disk-1".to_string(), disk_hint("disk-1"))].into();
        let env = json!({"bosh": {"group": "g", "password": "x"}});
        let s = settings(
            "agent-1",
            "vm-1",
            &agent(),
            None,
            &planned(),
            &disks,
            env.as_object().unwrap(),
        );
        assert_eq!(s["agent_id"], "agent-1");
        assert_eq!(s["vm"]["name"], "vm-1");
        assert_eq!(s["mbus"], "https://mbus:pw@0.0.0.0:6868");
        assert_eq!(s["disks"]["system"], "");
        assert_eq!(s["disks"]["ephemeral"], Value::Null);
        assert_eq!(s["disks"]["persistent"]["disk-1"], "/warden-cpi-dev/disk-1");
        let net = &s["networks"]["default"];
        assert_eq!(net["ip"], "10.1.2.11");
        assert_eq!(net["preconfigured"], true);
        assert_eq!(net["mac"], "");
        assert_eq!(net["type"], "manual");
        assert_eq!(s["env"], env);
        assert!(s.get("blobstore").is_none(), "none chosen, none written");
        let local: BlobstoreSettings = serde_json::from_value(
            json!({"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}}),
        )
        .unwrap();
        let s = settings(
            "a",
            "vm-1",
            &agent(),
            Some(&local),
            &planned(),
            &disks,
            &Map::new(),
        );
        assert_eq!(
            s["blobstore"],
            json!({"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}})
        );
    }

    #[test]
    fn disk_hints_come_and_go_and_the_rest_stays() {
        let mut s = json!({"agent_id": "a", "disks": {"system": "", "persistent": {"disk-1": "/warden-cpi-dev/disk-1"}}});
        set_disk_hint(&mut s, "disk-2", true);
        assert_eq!(s["disks"]["persistent"]["disk-2"], "/warden-cpi-dev/disk-2");
        assert_eq!(s["disks"]["persistent"]["disk-1"], "/warden-cpi-dev/disk-1");
        set_disk_hint(&mut s, "disk-1", false);
        assert_eq!(
            s["disks"]["persistent"],
            json!({"disk-2": "/warden-cpi-dev/disk-2"})
        );
        assert_eq!(s["agent_id"], "a");
        let mut odd = json!({"disks": []});
        set_disk_hint(&mut odd, "disk-3", true);
        assert_eq!(
            odd["disks"]["persistent"]["disk-3"],
            "/warden-cpi-dev/disk-3"
        );
        assert_eq!(odd["disks"]["system"], "");
    }

    #[test]
    fn archive_holds_the_three_files() {
        let s = json!({"agent_id": "a"});
        let tar_bytes = archive("vm-1", &s, None).unwrap();
        let mut a = tar::Archive::new(tar_bytes.as_slice());
        let mut found = BTreeMap::new();
        for e in a.entries().unwrap() {
            let mut e = e.unwrap();
            let path = e.path().unwrap().to_string_lossy().to_string();
            assert!(e.header().entry_type().is_file(), "{path}: files only");
            assert_eq!(
                (e.header().uid().unwrap(), e.header().gid().unwrap()),
                (0, 0)
            );
            let mode = e.header().mode().unwrap();
            if path.ends_with("agent-env.json") {
                assert_eq!(mode, 0o600, "the settings hold secrets");
            }
            let mut text = String::new();
            e.read_to_string(&mut text).unwrap();
            found.insert(path, text);
        }
        assert_eq!(
            found["var/vcap/bosh/warden-cpi-agent-env.json"],
            s.to_string()
        );
        assert_eq!(
            found["var/vcap/bosh/warden-cpi-user-data.json"],
            r#"{"Registry":{"Endpoint":"/var/vcap/bosh/warden-cpi-agent-env.json"}}"#
        );
        assert_eq!(
            found["var/vcap/bosh/warden-cpi-metadata.json"],
            r#"{"instance-id":"vm-1"}"#
        );
    }
}
