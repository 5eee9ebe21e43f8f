//! The files the bosh-agent of a container stemcell reads at start: its settings (File
//! settings source), the user data pointing at them, and the instance metadata; packed
//! as a tar archive so they are in the container before it starts.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;
use serde_json::{Value, json};

use super::network_plan::PlannedNetwork;
use crate::config::{AgentConfig, BlobstoreSettings};
use crate::protocol::{DiskCid, NetworkType, Object, VmCid};

/// Where the warden stemcell's agent.json looks for its settings.
pub(crate) const SETTINGS_PATH: &str = "/var/vcap/bosh/warden-cpi-agent-env.json";
/// User data naming the settings file as the registry endpoint.
pub(crate) const USER_DATA_PATH: &str = "/var/vcap/bosh/warden-cpi-user-data.json";
/// Instance metadata (`instance-id` = vm cid).
pub(crate) const METADATA_PATH: &str = "/var/vcap/bosh/warden-cpi-metadata.json";
/// Where a persistent disk appears inside the VM; the agent bind-mounts it.
pub(crate) const DISK_MOUNT_ROOT: &str = "/warden-cpi-dev";
/// The agent's own configuration, as the stemcell brings it.
pub(crate) const AGENT_CONFIG_PATH: &str = "/var/vcap/bosh/agent.json";

/// The stemcell's agent configuration set to mount persistent disks as the block devices
/// they are here: `BindMountPersistentDisk` off (a warden stemcell has it on, for disks
/// that are folders) and `UsePreformattedPersistentDisk` on (the CPI has the disk
/// formatted; the agent mounts the device itself, as the agent's `migrate_disk` remounts
/// it). `None` when the file is no JSON object with a `Platform.Linux` object or none.
pub(crate) fn block_disk_agent_config(config: &[u8]) -> Option<Vec<u8>> {
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

/// The settings document the bosh-agent reads at start (its File settings source), in
/// the agent's own key names (bosh-cpi-go's `apiv1.AgentEnv`); built once, serialized
/// once into the VM.
#[derive(Debug, Serialize)]
pub(crate) struct AgentSettings<'a> {
    agent_id: &'a str,
    /// The one [`super::blobstore::for_agent`] chose for the top level (none when `env`
    /// brings the agent's blobstores).
    #[serde(skip_serializing_if = "Option::is_none")]
    blobstore: Option<&'a BlobstoreSettings>,
    disks: AgentDisks,
    env: &'a Object,
    mbus: &'a str,
    networks: BTreeMap<&'a str, AgentNetwork<'a>>,
    ntp: &'a [String],
    vm: AgentVm<'a>,
}

/// `vm`: the VM's cid as its name.
#[derive(Debug, Serialize)]
struct AgentVm<'a> {
    name: &'a str,
}

/// `disks`: no system or ephemeral device to name (the container has its root, the
/// start script or Docker mounts the ephemeral disk), the persistent disks' hints.
#[derive(Debug, Serialize)]
struct AgentDisks {
    ephemeral: Option<String>,
    persistent: BTreeMap<String, String>,
    system: &'static str,
}

/// One network as the agent takes it: the request's spec with the addresses resolved
/// on the node, preconfigured (Docker set the interface up), its unknown keys kept.
#[derive(Debug, Serialize)]
struct AgentNetwork<'a> {
    cloud_properties: &'a Object,
    default: &'a [String],
    dns: &'a [String],
    #[serde(skip_serializing_if = "Option::is_none")]
    gateway: Option<Ipv4Addr>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ip: Option<Ipv4Addr>,
    /// The request's `mac` when it has one, else empty.
    mac: Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    netmask: Option<Ipv4Addr>,
    preconfigured: bool,
    #[serde(rename = "type")]
    kind: NetworkType,
    /// The request's other keys, as given.
    #[serde(flatten)]
    extra: Object,
}

impl<'a> AgentNetwork<'a> {
    fn of(p: &'a PlannedNetwork) -> AgentNetwork<'a> {
        let mut extra = p.spec.extra.clone();
        let mac = extra
            .remove("mac")
            .unwrap_or_else(|| Value::String(String::new()));
        extra.remove("preconfigured");
        AgentNetwork {
            cloud_properties: &p.spec.cloud_properties,
            default: &p.spec.default,
            dns: &p.spec.dns,
            gateway: p.gateway,
            ip: p.ip,
            mac,
            netmask: p.netmask,
            preconfigured: true,
            kind: p.spec.kind,
            extra,
        }
    }
}

/// Who the agent is and how it reaches the director: the VM's identity and the CPI's
/// agent configuration.
pub(crate) struct AgentIdentity<'a> {
    pub(crate) agent_id: &'a str,
    pub(crate) vm_cid: &'a VmCid,
    pub(crate) agent: &'a AgentConfig,
    pub(crate) blobstore: Option<&'a BlobstoreSettings>,
}

impl<'a> AgentSettings<'a> {
    /// The settings of a new VM: its networks as planned, its persistent disks' hints,
    /// and the request's `env` as given.
    pub(crate) fn new(
        who: AgentIdentity<'a>,
        networks: &'a [PlannedNetwork],
        persistent_disks: &[DiskCid],
        env: &'a Object,
    ) -> AgentSettings<'a> {
        AgentSettings {
            agent_id: who.agent_id,
            blobstore: who.blobstore,
            disks: AgentDisks {
                ephemeral: None,
                persistent: persistent_disks
                    .iter()
                    .map(|cid| (cid.to_string(), disk_hint(cid)))
                    .collect(),
                system: "",
            },
            env,
            mbus: who.agent.mbus.expose(),
            networks: networks
                .iter()
                .map(|p| (p.name.as_str(), AgentNetwork::of(p)))
                .collect(),
            ntp: &who.agent.ntp,
            vm: AgentVm {
                name: who.vm_cid.as_str(),
            },
        }
    }
}

/// The hint of a persistent disk: its path inside the VM.
pub(crate) fn disk_hint(disk_cid: &DiskCid) -> String {
    format!("{DISK_MOUNT_ROOT}/{disk_cid}")
}

/// Adds (or, with `attached` false, removes) disk `disk_cid`'s hint in the settings'
/// `disks.persistent`, as attach_disk and detach_disk change a running VM's disks. A
/// document of another shape is made to have that map.
pub(crate) fn set_disk_hint(settings: &mut Value, disk_cid: &DiskCid, attached: bool) {
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
            map.remove(disk_cid.as_str());
        }
    }
}

/// A tar archive (to extract at `/`) of the settings file alone (root, 0600).
pub(crate) fn settings_archive(settings: &Value) -> std::io::Result<Vec<u8>> {
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
pub(crate) fn archive(
    vm_cid: &VmCid,
    settings: &impl Serialize,
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
pub(crate) struct FileOwner {
    /// Permission bits.
    pub mode: u32,
    /// Numeric user id.
    pub uid: u64,
    /// Numeric group id.
    pub gid: u64,
}

/// Appends one regular file at the absolute `path` to `builder`.
pub(crate) fn append_file(
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
    use serde_json::Map;

    /// The settings document as it was built before [`AgentSettings`] (a `json!` of the
    /// resolved networks), kept to show the typed one says the same.
    fn legacy_settings(
        agent_id: &str,
        vm_cid: &str,
        agent: &AgentConfig,
        blobstore: Option<&BlobstoreSettings>,
        networks: &[PlannedNetwork],
        persistent_disks: &BTreeMap<String, String>,
        env: &Object,
    ) -> Value {
        let mut nets = crate::cloud::vm::network_plan::resolved_json(networks);
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
            doc["blobstore"] =
                json!({"provider": blobstore.provider, "options": blobstore.options});
        }
        doc
    }

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

    fn typed(
        agent_id: &str,
        vm: &VmCid,
        agent: &AgentConfig,
        blobstore: Option<&BlobstoreSettings>,
        networks: &[PlannedNetwork],
        disks: &[DiskCid],
        env: &Object,
    ) -> Value {
        let who = AgentIdentity {
            agent_id,
            vm_cid: vm,
            agent,
            blobstore,
        };
        serde_json::to_value(AgentSettings::new(who, networks, disks, env)).unwrap()
    }

    fn local() -> BlobstoreSettings {
        serde_json::from_value(
            json!({"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}}),
        )
        .unwrap()
    }

    #[test]
    fn settings_have_the_contract_shape() {
        let disks = [DiskCid::parse("disk-00000000-0000-0000-0000-000000000001").unwrap()];
        let vm = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        let env = json!({"bosh": {"group": "g", "password": "x"}});
        let s = typed(
            "agent-1",
            &vm,
            &agent(),
            None,
            &planned(),
            &disks,
            env.as_object().unwrap(),
        );
        assert_eq!(s["agent_id"], "agent-1");
        assert_eq!(s["vm"]["name"], "vm-00000000-0000-0000-0000-000000000001");
        assert_eq!(s["mbus"], "https://mbus:pw@0.0.0.0:6868");
        assert_eq!(s["disks"]["system"], "");
        assert_eq!(s["disks"]["ephemeral"], Value::Null);
        assert_eq!(
            s["disks"]["persistent"]["disk-00000000-0000-0000-0000-000000000001"],
            "/warden-cpi-dev/disk-00000000-0000-0000-0000-000000000001"
        );
        let net = &s["networks"]["default"];
        assert_eq!(net["ip"], "10.1.2.11");
        assert_eq!(net["preconfigured"], true);
        assert_eq!(net["mac"], "");
        assert_eq!(net["type"], "manual");
        assert_eq!(s["env"], env);
        assert!(s.get("blobstore").is_none(), "none chosen, none written");
        let s = typed(
            "a",
            &vm,
            &agent(),
            Some(&local()),
            &planned(),
            &disks,
            &Object::new(),
        );
        assert_eq!(
            s["blobstore"],
            json!({"provider": "local", "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}})
        );
    }

    #[test]
    fn the_typed_settings_say_what_the_json_document_said() {
        let node = serde_json::from_value(json!({"name":"n1","private_ip":"192.0.2.1",
            "docker_endpoint":"tcp://192.0.2.1:2376","subnet":"10.1.2.0/24","gateway":"10.1.2.1"}))
        .unwrap();
        let nets = serde_json::from_value(json!({
            "default": {"type": "manual", "ip": "10.1.2.11", "dns": ["10.1.2.1"],
                "default": ["dns", "gateway"], "cloud_properties": {"k": [1, {"x": null}]},
                "mac": "02:42:0a:01:02:0b", "alias": "web", "preconfigured": false},
            "dyn": {"type": "dynamic", "cloud_properties": {"name": "other"}, "extra": {"a": 1}},
            "pub": {"type": "vip", "ip": "203.0.113.7", "netmask": null}}))
        .unwrap();
        let mut networks = plan(&nets, &node).unwrap();
        networks[1].ip = Some("172.18.0.5".parse().unwrap());
        let disks = [
            DiskCid::parse("disk-00000000-0000-0000-0000-000000000001").unwrap(),
            DiskCid::parse("disk-00000000-0000-0000-0000-000000000002").unwrap(),
        ];
        let hints: BTreeMap<String, String> = disks
            .iter()
            .map(|d| (d.to_string(), disk_hint(d)))
            .collect();
        let vm = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        let env = json!({"bosh": {"group": "g", "blobstores": [], "mbus": {"cert": {"ca": "x"}}},
            "persistent_disk_fs": "ext4"});
        let env = env.as_object().unwrap();
        for blobstore in [None, Some(&local())] {
            let old = legacy_settings(
                "agent-1",
                vm.as_str(),
                &agent(),
                blobstore,
                &networks,
                &hints,
                env,
            );
            let new = typed("agent-1", &vm, &agent(), blobstore, &networks, &disks, env);
            assert_eq!(new, old);
            assert_eq!(new.to_string(), old.to_string(), "same text, key for key");
        }
    }

    #[test]
    fn disk_hints_come_and_go_and_the_rest_stays() {
        let d = |n: u8| {
            DiskCid::parse(&format!("disk-00000000-0000-0000-0000-00000000000{n}")).unwrap()
        };
        let hint = |n: u8| format!("/warden-cpi-dev/{}", d(n));
        let mut s = json!({"agent_id": "a", "disks": {"system": "", "persistent": {d(1).as_str(): hint(1)}}});
        set_disk_hint(&mut s, &d(2), true);
        assert_eq!(s["disks"]["persistent"][d(2).as_str()], hint(2));
        assert_eq!(s["disks"]["persistent"][d(1).as_str()], hint(1));
        set_disk_hint(&mut s, &d(1), false);
        assert_eq!(s["disks"]["persistent"], json!({d(2).as_str(): hint(2)}));
        assert_eq!(s["agent_id"], "a");
        let mut odd = json!({"disks": []});
        set_disk_hint(&mut odd, &d(3), true);
        assert_eq!(odd["disks"]["persistent"][d(3).as_str()], hint(3));
        assert_eq!(odd["disks"]["system"], "");
    }

    #[test]
    fn archive_holds_the_three_files() {
        let s = json!({"agent_id": "a"});
        let vm = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        let tar_bytes = archive(&vm, &s, None).unwrap();
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
            r#"{"instance-id":"vm-00000000-0000-0000-0000-000000000001"}"#
        );
    }
}
