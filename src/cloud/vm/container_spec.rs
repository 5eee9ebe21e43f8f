//! The Docker container of a VM, as a pure function of the VM's plan: image, labels,
//! start command, mounts, networking and HostConfig (defaults, per-VM overrides and Docker
//! HostConfig fields passed through from cloud_properties, which win).

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig,
    HostConfigCgroupnsModeEnum, Mount, MountType, NetworkingConfig, PortBinding, RestartPolicy,
    RestartPolicyNameEnum,
};
use serde_json::Value;

use super::agent_files::DISK_MOUNT_ROOT;
use super::network_plan::PlannedNetwork;
use super::properties::{Effective, VmProperties};
use crate::config::{RestartPolicy as Policy, StartMode};
use crate::mib::Mib;

/// Mount point of the ephemeral volume.
pub(crate) const EPHEMERAL_MOUNT: &str = "/var/vcap/data";

/// Everything the container is made from.
pub(crate) struct ContainerPlan<'a> {
    pub image: &'a str,
    pub hostname: &'a str,
    pub labels: HashMap<String, String>,
    pub props: &'a VmProperties,
    pub effective: &'a Effective,
    pub networks: &'a [PlannedNetwork],
    /// The ephemeral volume Docker mounts at `/var/vcap/data`; `None` when the ephemeral
    /// disk is sized: then it is a block device of the disk tree that the start script
    /// mounts there.
    pub ephemeral_volume: Option<&'a str>,
    /// The VM's directory of its node's disk tree (see [`crate::disk_mounts`]), seen at
    /// `/warden-cpi-dev`: disks put there later (block device nodes) appear in the VM.
    /// `None` on a node prepared before it had a tree: the VM can take no disk then.
    pub disk_tree: Option<&'a str>,
    pub start_script: String,
}

/// Lets an unprivileged VM use loop devices, the block devices its persistent disks are
/// (a privileged one may use every device).
const LOOP_DEVICES: &str = "b 7:* rwm";

/// The device rules of the profile, and the loop devices' for an unprivileged VM with
/// disks.
fn device_rules(e: &Effective, with_disks: bool) -> Option<Vec<String>> {
    let mut rules = e.device_cgroup_rules.clone();
    if with_disks && !e.privileged && !rules.iter().any(|r| r == LOOP_DEVICES) {
        rules.push(LOOP_DEVICES.to_string());
    }
    (!rules.is_empty()).then_some(rules)
}

/// The endpoint settings of one planned network (static IP when known).
pub(crate) fn endpoint(p: &PlannedNetwork) -> EndpointSettings {
    EndpointSettings {
        ipam_config: p.ip.map(|ip| EndpointIpamConfig {
            ipv4_address: Some(ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Why a container body cannot be made from the plan; each is the request's fault.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SpecError {
    #[error("create_vm: no network can carry the default gateway")]
    NoPrimaryNetwork,
    #[error("cannot encode HostConfig: {0}")]
    Encode(serde_json::Error),
    /// A HostConfig field the CPI owns, named in cloud_properties.
    #[error(
        "create_vm: cloud_properties.{0} cannot be set: the CPI attaches the VM to its BOSH networks"
    )]
    Owned(String),
    #[error("create_vm: cloud_properties HostConfig fields: {0}")]
    Decode(serde_json::Error),
}

/// What systemd needs of its container (nothing for runit): the host's cgroups, tmpfs
/// at `/run`, its own stop signal.
#[derive(Default)]
struct InitNeeds {
    mounts: Vec<Mount>,
    tmpfs: HashMap<String, String>,
    cgroupns: Option<HostConfigCgroupnsModeEnum>,
    stop_signal: Option<String>,
}

fn init_needs(mode: StartMode) -> InitNeeds {
    match mode {
        StartMode::Runit => InitNeeds::default(),
        StartMode::Systemd => InitNeeds {
            mounts: vec![Mount {
                target: Some("/sys/fs/cgroup".into()),
                source: Some("/sys/fs/cgroup".into()),
                typ: Some(MountType::BIND),
                read_only: Some(false),
                ..Default::default()
            }],
            tmpfs: HashMap::from([
                ("/run".to_string(), "rw,exec".to_string()),
                ("/run/lock".to_string(), "rw".to_string()),
            ]),
            cgroupns: Some(HostConfigCgroupnsModeEnum::HOST),
            stop_signal: Some("SIGRTMIN+3".to_string()),
        },
    }
}

/// The exposed ports (`8080/tcp`) and their bindings to the node's ports.
type Ports = (Vec<String>, HashMap<String, Option<Vec<PortBinding>>>);

fn published(ports: &[super::properties::PortBinding]) -> Ports {
    let mut exposed = Vec::new();
    let mut bindings: HashMap<String, Option<Vec<PortBinding>>> = HashMap::new();
    for port in ports {
        let key = format!("{}/{}", port.container, port.protocol.as_str());
        // A container port bound to several host ports is exposed once.
        if !exposed.contains(&key) {
            exposed.push(key.clone());
        }
        bindings
            .entry(key)
            .or_insert_with(|| Some(Vec::new()))
            .get_or_insert_with(Vec::new)
            .push(PortBinding {
                host_ip: None,
                host_port: Some(port.host.to_string()),
            });
    }
    (exposed, bindings)
}

fn restart_policy(policy: Policy) -> RestartPolicy {
    let name = match policy {
        Policy::No => RestartPolicyNameEnum::NO,
        Policy::UnlessStopped => RestartPolicyNameEnum::UNLESS_STOPPED,
        Policy::OnFailure => RestartPolicyNameEnum::ON_FAILURE,
        Policy::Always => RestartPolicyNameEnum::ALWAYS,
    };
    RestartPolicy {
        name: Some(name),
        maximum_retry_count: None,
    }
}

/// The security options Docker's API takes, and whether masked and read-only paths are
/// off: `systempaths=unconfined` is the docker CLI's spelling of "no masked and no
/// read-only paths"; the API takes the two lists instead.
fn security(e: &Effective) -> (Vec<String>, bool) {
    let unconfined_paths = e.security_opt.iter().any(|o| o == "systempaths=unconfined");
    let security_opt = e
        .security_opt
        .iter()
        .filter(|o| *o != "systempaths=unconfined")
        .cloned()
        .collect();
    (security_opt, unconfined_paths)
}

/// The HostConfig of the plan, before the passthrough fields: the profile, limits,
/// mounts, the primary network and published ports.
fn host_config(
    plan: &ContainerPlan<'_>,
    primary_name: &str,
    init: InitNeeds,
    bindings: HashMap<String, Option<Vec<PortBinding>>>,
) -> HostConfig {
    let e = plan.effective;
    let mut mounts: Vec<Mount> = plan
        .ephemeral_volume
        .iter()
        .map(|volume| Mount {
            target: Some(EPHEMERAL_MOUNT.into()),
            source: Some(volume.to_string()),
            typ: Some(MountType::VOLUME),
            ..Default::default()
        })
        .collect();
    mounts.extend(init.mounts);
    // A bind, not a mount: Docker makes a missing source directory only for binds (and
    // the API of the daemons served has no CreateMountpoint).
    let binds: Vec<String> = plan
        .disk_tree
        .iter()
        .map(|tree| format!("{tree}:{DISK_MOUNT_ROOT}:rslave"))
        .collect();
    let (security_opt, unconfined_paths) = security(e);
    HostConfig {
        privileged: Some(e.privileged),
        cap_add: (!e.cap_add.is_empty()).then(|| e.cap_add.clone()),
        cap_drop: (!e.cap_drop.is_empty()).then(|| e.cap_drop.clone()),
        security_opt: (!security_opt.is_empty()).then_some(security_opt),
        masked_paths: unconfined_paths.then(Vec::new),
        readonly_paths: unconfined_paths.then(Vec::new),
        device_cgroup_rules: device_rules(e, plan.disk_tree.is_some()),
        restart_policy: Some(restart_policy(e.restart_policy)),
        memory: plan.props.ram.map(Mib::bytes),
        nano_cpus: plan.props.cpu.map(nano_cpus),
        mounts: Some(mounts),
        binds: (!binds.is_empty()).then_some(binds),
        tmpfs: (!init.tmpfs.is_empty()).then_some(init.tmpfs),
        cgroupns_mode: init.cgroupns,
        network_mode: Some(primary_name.to_string()),
        port_bindings: (!bindings.is_empty()).then_some(bindings),
        ..Default::default()
    }
}

/// Builds the create body. Only the primary network is attached at create; the others
/// are connected before start.
pub(crate) fn build(plan: &ContainerPlan<'_>) -> Result<ContainerCreateBody, SpecError> {
    let primary = plan
        .networks
        .iter()
        .find(|n| n.primary && n.docker_network.is_some())
        .ok_or(SpecError::NoPrimaryNetwork)?;
    let primary_name = primary.docker_network.clone().unwrap_or_default();
    let init = init_needs(plan.effective.start_mode);
    let stop_signal = init.stop_signal.clone();
    let (exposed, bindings) = published(&plan.props.ports);
    let ours = host_config(plan, &primary_name, init, bindings);
    let host_config = overlay(ours, &plan.props.host_config)?;
    Ok(ContainerCreateBody {
        image: Some(plan.image.to_string()),
        hostname: Some(plan.hostname.to_string()),
        labels: Some(plan.labels.clone()),
        entrypoint: Some(Vec::new()),
        cmd: Some(vec![
            "/bin/sh".into(),
            "-c".into(),
            plan.start_script.clone(),
        ]),
        stop_signal,
        exposed_ports: (!exposed.is_empty()).then_some(exposed),
        host_config: Some(host_config),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some([(primary_name, endpoint(primary))].into()),
        }),
        ..Default::default()
    })
}

/// HostConfig fields the CPI owns: a VM's networking is its BOSH networks.
const OWNED_FIELDS: &[&str] = &["NetworkMode"];
/// HostConfig fields whose entries are added to the CPI's own (the ephemeral volume and
/// disk mounts, systemd's tmpfs) instead of replacing them.
const MERGED_FIELDS: &[&str] = &["Mounts", "Tmpfs", "Binds"];

/// Docker HostConfig fields from cloud_properties, in Docker's spelling, override ours;
/// list and map fields in [`MERGED_FIELDS`] are added to ours.
fn overlay(
    ours: HostConfig,
    theirs: &serde_json::Map<String, Value>,
) -> Result<HostConfig, SpecError> {
    if theirs.is_empty() {
        return Ok(ours);
    }
    let mut merged = serde_json::to_value(&ours).map_err(SpecError::Encode)?;
    if let Value::Object(o) = &mut merged {
        for (k, v) in theirs {
            if OWNED_FIELDS.contains(&k.as_str()) {
                return Err(SpecError::Owned(k.clone()));
            }
            match (o.get_mut(k), v, MERGED_FIELDS.contains(&k.as_str())) {
                (Some(Value::Array(mine)), Value::Array(more), true) => {
                    mine.extend(more.iter().cloned())
                }
                (Some(Value::Object(mine)), Value::Object(more), true) => {
                    mine.extend(more.iter().map(|(a, b)| (a.clone(), b.clone())))
                }
                _ => {
                    o.insert(k.clone(), v.clone());
                }
            }
        }
    }
    serde_json::from_value(merged).map_err(SpecError::Decode)
}

/// Docker's CPU limit in billionths of a CPU for `cpus` CPUs.
#[expect(
    clippy::cast_possible_truncation,
    reason = "`as` saturates: a limit beyond i64 is i64::MAX, a fraction of a billionth is dropped"
)]
fn nano_cpus(cpus: f64) -> i64 {
    (cpus * 1e9) as i64
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::vm::network_plan::plan;
    use crate::config::VmDefaults;
    use serde_json::json;

    fn networks() -> Vec<PlannedNetwork> {
        let node = serde_json::from_value(json!({"name":"n1","private_ip":"192.0.2.1",
            "docker_endpoint":"tcp://192.0.2.1:2376","subnet":"10.1.2.0/24","gateway":"10.1.2.1"}))
        .unwrap();
        let nets = serde_json::from_value(
            json!({"default": {"type": "manual", "ip": "10.1.2.11", "default": ["gateway"]}}),
        )
        .unwrap();
        plan(&nets, &node).unwrap()
    }

    fn body(props: serde_json::Value, defaults: VmDefaults) -> ContainerCreateBody {
        let props = VmProperties::parse(props.as_object().unwrap()).unwrap();
        let effective = props.effective(&defaults);
        let nets = networks();
        build(&ContainerPlan {
            image: "moltencore-stemcell:sc-1",
            hostname: "vm-1",
            labels: HashMap::new(),
            props: &props,
            effective: &effective,
            networks: &nets,
            ephemeral_volume: Some("vm-1-ephemeral"),
            disk_tree: Some("/var/lib/moltencore/vm-disks/vm-1"),
            start_script: "exec /usr/sbin/runsvdir-start".into(),
        })
        .unwrap()
    }

    #[test]
    fn static_ip_restart_policy_and_ephemeral_volume() {
        let b = body(json!({"ram": 512, "cpu": 2}), VmDefaults::default());
        let hc = b.host_config.unwrap();
        assert_eq!(hc.privileged, Some(true));
        assert_eq!(hc.device_cgroup_rules, None, "privileged: every device");
        assert_eq!(hc.memory, Some(512 << 20));
        assert_eq!(hc.nano_cpus, Some(2_000_000_000));
        assert_eq!(hc.network_mode.as_deref(), Some("bosh"));
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::ALWAYS)
        );
        assert_eq!(
            hc.binds,
            Some(vec![
                "/var/lib/moltencore/vm-disks/vm-1:/warden-cpi-dev:rslave".to_string()
            ]),
            "the VM's disk tree, as a slave"
        );
        let m = &hc.mounts.unwrap()[0];
        assert_eq!(m.target.as_deref(), Some(EPHEMERAL_MOUNT));
        assert_eq!(m.source.as_deref(), Some("vm-1-ephemeral"));
        let ep = &b.networking_config.unwrap().endpoints_config.unwrap()["bosh"];
        assert_eq!(
            ep.ipam_config.as_ref().unwrap().ipv4_address.as_deref(),
            Some("10.1.2.11")
        );
    }

    #[test]
    fn passthrough_mounts_are_added_and_network_mode_is_refused() {
        let b = body(
            json!({"Mounts": [{"Type": "bind", "Source": "/srv", "Target": "/srv"}]}),
            VmDefaults::default(),
        );
        let mounts = b.host_config.unwrap().mounts.unwrap();
        assert_eq!(mounts.len(), 2, "ephemeral volume kept: {mounts:?}");
        assert_eq!(mounts[0].target.as_deref(), Some(EPHEMERAL_MOUNT));
        let props =
            VmProperties::parse(json!({"NetworkMode": "host"}).as_object().unwrap()).unwrap();
        let effective = props.effective(&VmDefaults::default());
        let nets = networks();
        let e = build(&ContainerPlan {
            image: "i",
            hostname: "h",
            labels: HashMap::new(),
            props: &props,
            effective: &effective,
            networks: &nets,
            ephemeral_volume: Some("v"),
            disk_tree: Some("/var/lib/moltencore/vm-disks/vm-1"),
            start_script: String::new(),
        })
        .unwrap_err();
        assert_eq!(
            e.to_string(),
            "create_vm: cloud_properties.NetworkMode cannot be set: the CPI attaches the VM to its BOSH networks"
        );
    }

    #[test]
    fn ports_and_restart_policy_come_from_their_types() {
        let b = body(
            json!({"ports": ["53/udp", "8080", "81:8080"], "restart_policy": "unless-stopped"}),
            VmDefaults::default(),
        );
        assert_eq!(
            b.exposed_ports,
            Some(vec!["53/udp".into(), "8080/tcp".into()])
        );
        let hc = b.host_config.unwrap();
        let pb = hc.port_bindings.unwrap();
        let hosts = |key: &str| -> Vec<String> {
            pb[key]
                .as_ref()
                .unwrap()
                .iter()
                .filter_map(|b| b.host_port.clone())
                .collect()
        };
        assert_eq!(hosts("53/udp"), ["53"]);
        assert_eq!(hosts("8080/tcp"), ["8080", "81"]);
        assert_eq!(
            hc.restart_policy.unwrap().name,
            Some(RestartPolicyNameEnum::UNLESS_STOPPED)
        );
        for (policy, name) in [
            (Policy::No, RestartPolicyNameEnum::NO),
            (Policy::Always, RestartPolicyNameEnum::ALWAYS),
            (Policy::OnFailure, RestartPolicyNameEnum::ON_FAILURE),
        ] {
            assert_eq!(restart_policy(policy).name, Some(name));
        }
        let runit = init_needs(StartMode::Runit);
        assert!(runit.mounts.is_empty() && runit.tmpfs.is_empty() && runit.stop_signal.is_none());
    }

    #[test]
    fn unprivileged_profile_systemd_mode_and_passthrough() {
        let defaults = VmDefaults {
            privileged: false,
            cap_add: vec!["ALL".into()],
            cap_drop: vec!["SYS_RESOURCE".into()],
            security_opt: vec!["seccomp=unconfined".into(), "systempaths=unconfined".into()],
            device_cgroup_rules: vec!["a *:* rwm".into()],
            ..VmDefaults::default()
        };
        let b = body(
            json!({"start_mode": "systemd", "ports": ["80:8080"],
                   "Memory": 268435456, "CapAdd": ["NET_ADMIN"]}),
            defaults,
        );
        let hc = b.host_config.unwrap();
        assert_eq!(hc.privileged, Some(false));
        assert_eq!(
            hc.cap_add,
            Some(vec!["NET_ADMIN".to_string()]),
            "passthrough wins"
        );
        assert_eq!(hc.cap_drop, Some(vec!["SYS_RESOURCE".to_string()]));
        assert_eq!(hc.memory, Some(268435456));
        assert_eq!(hc.cgroupns_mode, Some(HostConfigCgroupnsModeEnum::HOST));
        assert_eq!(
            hc.security_opt,
            Some(vec!["seccomp=unconfined".to_string()])
        );
        assert_eq!(hc.masked_paths, Some(vec![]));
        assert_eq!(hc.readonly_paths, Some(vec![]));
        assert_eq!(
            hc.device_cgroup_rules,
            Some(vec!["a *:* rwm".to_string(), LOOP_DEVICES.to_string()]),
            "its disks are loop devices"
        );
        assert!(hc.tmpfs.unwrap().contains_key("/run"));
        assert_eq!(b.stop_signal.as_deref(), Some("SIGRTMIN+3"));
        let pb = hc.port_bindings.clone().unwrap();
        assert_eq!(
            pb["8080/tcp"].as_ref().unwrap()[0].host_port.as_deref(),
            Some("80")
        );
    }
}
