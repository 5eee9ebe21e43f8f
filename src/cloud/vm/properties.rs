//! A VM's cloud_properties (AZ + vm_type + vm_extensions merged by the director): the keys
//! this CPI understands, typed and checked, plus Docker HostConfig fields passed through
//! (the Go docker CPI's `Memory`, `NanoCpus`, `RestartPolicy`, `PortBindings`, `Mounts`,
//! `CapAdd`, ... keep working).

use serde::Deserialize;
use serde_json::{Map, Value};

use std::num::NonZeroU16;

use crate::config::{RestartPolicy, StartMode, UnknownRestartPolicy, VmDefaults};
use crate::echo::{printable, printable_detail};
use crate::mib::Mib;
use crate::protocol::{Object, plain_serde_message};

/// A VM's cloud_properties as this CPI reads them: the lower-case keys typed (unknown
/// ones are ignored; the dispatcher names them in a warning: other CPIs' settings travel
/// in the same hash, but a typo would otherwise go unseen), upper-case keys kept as
/// Docker HostConfig fields.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct VmProperties {
    /// Pin the VM to this node (the generated cloud-config sets it per AZ).
    pub node: Option<String>,
    /// CPUs (may be fractional: 0.5).
    pub cpu: Option<f64>,
    /// Memory limit in MiB.
    pub ram: Option<Mib>,
    /// Ephemeral disk size in MiB: the ephemeral disk holds that much (an image of that
    /// size on the node; see docs/disks.md), recorded as a label of its volume. Given as a
    /// number (this CPI's cloud-config, `calculate_vm_cloud_properties`) or as other
    /// CPIs' vm_types give it, `{size: MiB, ...}`.
    pub ephemeral_disk: Option<Mib>,
    pub privileged: Option<bool>,
    pub cap_add: Option<Vec<String>>,
    pub cap_drop: Option<Vec<String>>,
    pub security_opt: Option<Vec<String>>,
    pub device_cgroup_rules: Option<Vec<String>>,
    pub start_mode: Option<StartMode>,
    pub restart_policy: Option<RestartPolicy>,
    /// Published ports.
    pub ports: Vec<PortBinding>,
    /// Docker HostConfig fields given in Docker's own spelling.
    pub host_config: Map<String, Value>,
}

/// The lower-case keys as they arrive, before the words in them are parsed.
#[derive(Deserialize)]
struct RawProperties {
    #[serde(default)]
    node: Option<String>,
    #[serde(default)]
    cpu: Option<f64>,
    #[serde(default)]
    ram: Option<Mib>,
    #[serde(default, deserialize_with = "ephemeral_mib")]
    ephemeral_disk: Option<Mib>,
    #[serde(default)]
    privileged: Option<bool>,
    #[serde(default)]
    cap_add: Option<Vec<String>>,
    #[serde(default)]
    cap_drop: Option<Vec<String>>,
    #[serde(default)]
    security_opt: Option<Vec<String>>,
    #[serde(default)]
    device_cgroup_rules: Option<Vec<String>>,
    #[serde(default)]
    start_mode: Option<StartMode>,
    #[serde(default)]
    restart_policy: Option<String>,
    /// `"8080"`, `"8080/tcp"`, `"80:8080/tcp"` (host:container).
    #[serde(default)]
    ports: Vec<String>,
}

/// The transport protocol of a published port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Protocol {
    /// `tcp` (the default).
    Tcp,
    /// `udp`.
    Udp,
}

impl Protocol {
    /// The protocol's word, as Docker's port keys spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "tcp",
            Protocol::Udp => "udp",
        }
    }
}

/// A published port: a port of the node forwarded to a port of the VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct PortBinding {
    /// The node's port.
    pub host: NonZeroU16,
    /// The VM's port.
    pub container: NonZeroU16,
    pub protocol: Protocol,
}

impl PortBinding {
    /// Parses `PORT[/tcp|udp]` or `HOST:CONTAINER[/tcp|udp]`.
    pub(crate) fn parse(spec: &str) -> Result<PortBinding, PropertiesError> {
        let bad = || PropertiesError::Port(printable(spec));
        let (ports, protocol) = match spec.split_once('/') {
            Some((p, "tcp")) => (p, Protocol::Tcp),
            Some((p, "udp")) => (p, Protocol::Udp),
            Some(_) => return Err(bad()),
            None => (spec, Protocol::Tcp),
        };
        let (host, container) = ports.split_once(':').unwrap_or((ports, ports));
        Ok(PortBinding {
            host: host.parse().map_err(|_| bad())?,
            container: container.parse().map_err(|_| bad())?,
            protocol,
        })
    }
}

/// Why a VM's cloud_properties cannot be used; every one is the request's fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub(crate) enum PropertiesError {
    /// A known key of the wrong type (`path` and `detail` already printable).
    #[error("create_vm: cloud_properties.{path}: {detail}")]
    Shape { path: String, detail: String },
    #[error("create_vm: cloud_properties.cpu must be a positive number, got {0}")]
    Cpu(f64),
    #[error("create_vm: cloud_properties.ram must be at least 1 MiB")]
    Ram,
    #[error("create_vm: cloud_properties.restart_policy {0}")]
    RestartPolicy(#[from] UnknownRestartPolicy),
    /// The entry, made printable.
    #[error(
        "create_vm: cloud_properties.ports entry '{0}' must be PORT[/tcp|udp] or HOST:CONTAINER[/tcp|udp]"
    )]
    Port(String),
    /// A Docker HostConfig field Docker would not take (`path` and `detail` printable).
    #[error("create_vm: cloud_properties.{path} is not a valid Docker HostConfig field: {detail}")]
    HostConfig { path: String, detail: String },
}

/// The serde error at `path`, in printable words.
fn shape<E: std::fmt::Display>(e: serde_path_to_error::Error<E>) -> (String, String) {
    let path = printable(&e.path().to_string());
    let detail = printable_detail(&plain_serde_message(&e.into_inner().to_string()));
    (path, detail)
}

/// The two spellings of `ephemeral_disk`.
#[derive(Deserialize)]
#[serde(untagged)]
enum EphemeralDisk {
    Mib(u64),
    /// Other keys (a volume `type`, ...) mean nothing here and are ignored.
    Sized {
        size: u64,
    },
}

fn ephemeral_mib<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Mib>, D::Error> {
    Option::<EphemeralDisk>::deserialize(d)?
        .map(|e| match e {
            EphemeralDisk::Mib(mib) | EphemeralDisk::Sized { size: mib } => Mib::new(mib),
        })
        .transpose()
        .map_err(serde::de::Error::custom)
}

/// Container settings after defaults and per-VM overrides.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Effective {
    pub privileged: bool,
    pub cap_add: Vec<String>,
    pub cap_drop: Vec<String>,
    pub security_opt: Vec<String>,
    pub device_cgroup_rules: Vec<String>,
    pub start_mode: StartMode,
    pub restart_policy: RestartPolicy,
}

/// The lower-case cloud_properties keys of create_vm this CPI reads.
pub(crate) const LOWER_KEYS: &[&str] = &[
    "node",
    "cpu",
    "ram",
    "ephemeral_disk",
    "privileged",
    "cap_add",
    "cap_drop",
    "security_opt",
    "device_cgroup_rules",
    "start_mode",
    "restart_policy",
    "ports",
];

impl VmProperties {
    /// Parses create_vm's cloud_properties; a known key of the wrong type, or a word it
    /// does not know, is an error naming it.
    pub(crate) fn parse(cloud_properties: &Object) -> Result<VmProperties, PropertiesError> {
        let mut known = Map::new();
        let mut host_config = Map::new();
        for (k, v) in cloud_properties {
            if LOWER_KEYS.contains(&k.as_str()) {
                if !v.is_null() {
                    known.insert(k.clone(), v.clone());
                }
            } else if k.chars().next().is_some_and(|c| c.is_ascii_uppercase()) {
                host_config.insert(k.clone(), v.clone());
            }
        }
        let raw: RawProperties =
            serde_path_to_error::deserialize(Value::Object(known)).map_err(|e| {
                let (path, detail) = shape(e);
                PropertiesError::Shape { path, detail }
            })?;
        if let Some(cpu) = raw.cpu
            && !(cpu > 0.0 && cpu.is_finite())
        {
            return Err(PropertiesError::Cpu(cpu));
        }
        if raw.ram == Some(Mib::default()) {
            return Err(PropertiesError::Ram);
        }
        let restart_policy = raw
            .restart_policy
            .as_deref()
            .map(RestartPolicy::parse)
            .transpose()?;
        let ports = raw
            .ports
            .iter()
            .map(|p| PortBinding::parse(p))
            .collect::<Result<_, _>>()?;
        // Check the HostConfig passthrough now, naming the field, rather than at create.
        serde_path_to_error::deserialize::<_, bollard::models::HostConfig>(Value::Object(
            host_config.clone(),
        ))
        .map_err(|e| {
            let (path, detail) = shape(e);
            PropertiesError::HostConfig { path, detail }
        })?;
        Ok(VmProperties {
            node: raw.node,
            cpu: raw.cpu,
            ram: raw.ram,
            ephemeral_disk: raw.ephemeral_disk,
            privileged: raw.privileged,
            cap_add: raw.cap_add,
            cap_drop: raw.cap_drop,
            security_opt: raw.security_opt,
            device_cgroup_rules: raw.device_cgroup_rules,
            start_mode: raw.start_mode,
            restart_policy,
            ports,
            host_config,
        })
    }

    /// Defaults overridden by this VM's properties.
    pub(crate) fn effective(&self, defaults: &VmDefaults) -> Effective {
        Effective {
            privileged: self.privileged.unwrap_or(defaults.privileged),
            cap_add: self.cap_add.clone().unwrap_or(defaults.cap_add.clone()),
            cap_drop: self.cap_drop.clone().unwrap_or(defaults.cap_drop.clone()),
            security_opt: self
                .security_opt
                .clone()
                .unwrap_or(defaults.security_opt.clone()),
            device_cgroup_rules: self
                .device_cgroup_rules
                .clone()
                .unwrap_or(defaults.device_cgroup_rules.clone()),
            start_mode: self.start_mode.unwrap_or(defaults.start_mode),
            restart_policy: self.restart_policy.unwrap_or(defaults.restart_policy),
        }
    }

    /// The memory limit in MiB: `ram`, else the passthrough `Memory` (bytes), else none.
    pub(crate) fn memory_mib(&self) -> u64 {
        self.ram.map(Mib::get).unwrap_or_else(|| {
            self.host_config
                .get("Memory")
                .and_then(Value::as_u64)
                .map(|b| b.div_ceil(1 << 20))
                .unwrap_or(0)
        })
    }
}

/// Most unknown keys one warning names.
const UNKNOWN_KEYS_NAMED: usize = 8;

/// The lower-case keys of `cloud_properties` that are not in `known` (upper-case keys
/// are Docker's own HostConfig fields), at most [`UNKNOWN_KEYS_NAMED`], made printable.
pub(crate) fn unknown_keys(cloud_properties: &Object, known: &[&str]) -> Vec<String> {
    cloud_properties
        .keys()
        .filter(|k| !known.contains(&k.as_str()))
        .filter(|k| !k.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
        .take(UNKNOWN_KEYS_NAMED)
        .map(|k| printable(k))
        .collect()
}

/// Warns (into the response's `log`) about keys of `method`'s cloud_properties this CPI
/// does not read. They are not refused: the director passes one hash to every CPI of a
/// multi-CPI setup, and AZs or vm_extensions may carry keys meant for another one.
pub(crate) fn warn_unknown_keys(method: &str, cloud_properties: &Object, known: &[&str]) {
    let unknown = unknown_keys(cloud_properties, known);
    if unknown.is_empty() {
        return;
    }
    tracing::warn!(
        "{method}: cloud_properties {} not read by this CPI and ignored: '{}' (it reads: {})",
        if unknown.len() == 1 {
            "key is"
        } else {
            "keys are"
        },
        unknown.join("', '"),
        known.join(", ")
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::CpiError;
    use serde_json::json;

    fn parse(v: Value) -> Result<VmProperties, CpiError> {
        VmProperties::parse(v.as_object().unwrap()).map_err(CpiError::from)
    }

    #[test]
    fn known_keys_and_passthrough() {
        let p = parse(
            json!({"node": "n2", "ram": 512, "cpu": 0.5, "ports": ["80:8080/tcp"],
            "Memory": 1073741824u64, "RestartPolicy": {"Name": "always"}, "something_else": 1}),
        )
        .unwrap();
        assert_eq!(p.node.as_deref(), Some("n2"));
        assert_eq!(p.memory_mib(), 512);
        assert!(p.host_config.contains_key("RestartPolicy"));
        assert!(!p.host_config.contains_key("something_else"));
        let p = parse(json!({"Memory": 1073741824u64})).unwrap();
        assert_eq!(p.memory_mib(), 1024);
    }

    #[test]
    fn the_ephemeral_disk_size_comes_as_a_number_or_a_size() {
        assert_eq!(
            parse(json!({"ephemeral_disk": 2048}))
                .unwrap()
                .ephemeral_disk
                .map(Mib::get),
            Some(2048)
        );
        let aws = json!({"ephemeral_disk": {"size": 4096, "type": "gp3"}});
        assert_eq!(parse(aws).unwrap().ephemeral_disk.map(Mib::get), Some(4096));
        assert_eq!(parse(json!({})).unwrap().ephemeral_disk, None);
        let e = parse(json!({"ephemeral_disk": "big"})).unwrap_err();
        assert!(
            e.message.contains("cloud_properties.ephemeral_disk"),
            "{}",
            e.message
        );
    }

    #[test]
    fn wrong_types_are_named() {
        let e = parse(json!({"ram": "lots"})).unwrap_err();
        assert!(e.message.contains("cloud_properties.ram"), "{}", e.message);
        let e = parse(json!({"Memory": "lots"})).unwrap_err();
        assert!(e.message.contains("Memory"), "{}", e.message);
        let e = parse(json!({"ports": ["http"]})).unwrap_err();
        assert!(e.message.contains("'http'"), "{}", e.message);
        let e = parse(json!({"restart_policy": "often"})).unwrap_err();
        assert!(e.message.contains("often"), "{}", e.message);
        assert!(parse(json!({"cpu": -1})).is_err());
    }

    #[test]
    fn unknown_lower_case_keys_are_named_and_bounded() {
        let props = json!({"rma": 1024, "ram": 1, "Memory": 1, "cpu": 1})
            .as_object()
            .cloned();
        assert_eq!(unknown_keys(&props.unwrap(), LOWER_KEYS), vec!["rma"]);
        let many: Object = (0..50).map(|i| (format!("k{i}"), json!(1))).collect();
        assert_eq!(unknown_keys(&many, LOWER_KEYS).len(), UNKNOWN_KEYS_NAMED);
        let hostile: Object = [("x\u{1b}[2J".repeat(100), json!(1))].into_iter().collect();
        let named = unknown_keys(&hostile, LOWER_KEYS);
        assert!(
            named[0].len() < 300 && !named[0].contains('\u{1b}'),
            "{named:?}"
        );
    }

    #[test]
    fn defaults_are_overridden_per_vm() {
        let d = VmDefaults::default();
        let e = parse(json!({"privileged": false, "cap_add": ["NET_ADMIN"]}))
            .unwrap()
            .effective(&d);
        assert!(!e.privileged);
        assert_eq!(e.cap_add, vec!["NET_ADMIN"]);
        assert_eq!(e.restart_policy, RestartPolicy::Always);
        let e = parse(json!({"restart_policy": "on-failure"}))
            .unwrap()
            .effective(&d);
        assert_eq!(e.restart_policy, RestartPolicy::OnFailure);
    }

    fn port(host: u16, container: u16, protocol: Protocol) -> PortBinding {
        PortBinding {
            host: NonZeroU16::new(host).unwrap(),
            container: NonZeroU16::new(container).unwrap(),
            protocol,
        }
    }

    #[test]
    fn ports() {
        let p = |s: &str| PortBinding::parse(s);
        assert_eq!(p("8080").unwrap(), port(8080, 8080, Protocol::Tcp));
        assert_eq!(p("53/udp").unwrap(), port(53, 53, Protocol::Udp));
        assert_eq!(p("80:8080/tcp").unwrap(), port(80, 8080, Protocol::Tcp));
        for bad in ["80/sctp", "0", "80:0", "http", "1:2:3", "70000"] {
            assert_eq!(
                p(bad).unwrap_err().to_string(),
                format!(
                    "create_vm: cloud_properties.ports entry '{bad}' must be PORT[/tcp|udp] or HOST:CONTAINER[/tcp|udp]"
                )
            );
        }
    }

    #[test]
    fn messages_and_classes_stay_the_directors() {
        let e = parse(json!({"restart_policy": "often"})).unwrap_err();
        assert_eq!(e.kind, crate::protocol::ErrorKind::CpiError);
        assert_eq!(
            e.message,
            "create_vm: cloud_properties.restart_policy 'often' is not one of no, always, unless-stopped, on-failure"
        );
        let e = parse(json!({"cpu": 0})).unwrap_err();
        assert_eq!(
            e.message,
            "create_vm: cloud_properties.cpu must be a positive number, got 0"
        );
        let e = parse(json!({"ram": 0})).unwrap_err();
        assert_eq!(
            e.message,
            "create_vm: cloud_properties.ram must be at least 1 MiB"
        );
        let e = parse(json!({"ram": "lots"})).unwrap_err();
        assert_eq!(
            e.message,
            "create_vm: cloud_properties.ram: expected a whole number (0 or more), got the string \"lots\""
        );
    }

    #[test]
    fn sizes_whose_bytes_would_wrap_are_refused() {
        let e = parse(json!({"ram": 8_796_093_022_208u64})).unwrap_err();
        assert_eq!(e.kind, crate::protocol::ErrorKind::CpiError);
        assert_eq!(
            e.message,
            "create_vm: cloud_properties.ram: 8796093022208 MiB is more than the largest size, 8796093022207 MiB"
        );
        for big in [json!(u64::MAX), json!({"size": u64::MAX, "type": "gp3"})] {
            let e = parse(json!({"ephemeral_disk": big})).unwrap_err();
            assert_eq!(
                e.message,
                "create_vm: cloud_properties.ephemeral_disk: 18446744073709551615 MiB is more than the largest size, 8796093022207 MiB"
            );
        }
        let p = parse(json!({"ram": 8_796_093_022_207u64})).unwrap();
        assert_eq!(p.ram.map(Mib::bytes), Some(i64::MAX - 0xF_FFFF));
    }
}
