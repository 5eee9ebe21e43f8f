//! Typed CPI calls: every method of the contract, with its positional arguments parsed
//! and checked, so the layers below never see raw JSON.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::error::CpiError;
use super::request::json_type;

/// A JSON object, as cloud_properties, env and metadata arrive.
pub type Object = Map<String, Value>;

/// One CPI call with typed arguments.
#[derive(Debug, Clone, PartialEq)]
pub enum Call {
    /// Versions and stemcell formats; no side effects.
    Info,
    /// Import a stemcell's rootfs.
    CreateStemcell {
        image_path: String,
        cloud_properties: Object,
    },
    /// Remove a stemcell image.
    DeleteStemcell { stemcell_cid: String },
    /// Create and start a VM (container).
    CreateVm(Box<CreateVm>),
    /// Remove a VM; persistent disks survive.
    DeleteVm { vm_cid: String },
    /// Whether a VM exists.
    HasVm { vm_cid: String },
    /// Restart a VM.
    RebootVm { vm_cid: String },
    /// Record deployment metadata on a VM.
    SetVmMetadata { vm_cid: String, metadata: Object },
    /// Translate cpu/ram/disk requirements into cloud_properties.
    CalculateVmCloudProperties(VmRequirements),
    /// Create a persistent disk, optionally near a VM.
    CreateDisk {
        size_mib: u64,
        cloud_properties: Object,
        vm_cid: Option<String>,
    },
    /// Remove a persistent disk.
    DeleteDisk { disk_cid: String },
    /// Whether a disk exists.
    HasDisk { disk_cid: String },
    /// Attach a disk to a VM.
    AttachDisk { vm_cid: String, disk_cid: String },
    /// Detach a disk from a VM.
    DetachDisk { vm_cid: String, disk_cid: String },
    /// The disks attached to a VM.
    GetDisks { vm_cid: String },
    /// Record metadata on a disk.
    SetDiskMetadata { disk_cid: String, metadata: Object },
    /// Grow a detached disk.
    ResizeDisk { disk_cid: String, new_size_mib: u64 },
    /// Change a disk's size or type.
    UpdateDisk {
        disk_cid: String,
        new_size_mib: u64,
        cloud_properties: Object,
    },
    /// Copy a disk's contents into a snapshot.
    SnapshotDisk { disk_cid: String, metadata: Object },
    /// Remove a snapshot.
    DeleteSnapshot { snapshot_cid: String },
    /// Director-managed networks (not supported by this CPI).
    CreateNetwork,
    /// Director-managed networks (not supported by this CPI).
    DeleteNetwork,
    /// Deprecated by BOSH.
    CurrentVmId,
    /// Deprecated by BOSH.
    ConfigureNetworks,
}

/// The arguments of `create_vm`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateVm {
    pub agent_id: String,
    pub stemcell_cid: String,
    pub cloud_properties: Object,
    pub networks: BTreeMap<String, NetworkSpec>,
    pub disk_cids: Vec<String>,
    pub env: Object,
}

/// The kind of a BOSH network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum NetworkType {
    /// Static IP chosen by the director (the default when `type` is absent).
    #[default]
    Manual,
    /// IP chosen by the infrastructure.
    Dynamic,
    /// A public IP handled outside the VM.
    Vip,
}

/// One network of `create_vm`, keyed by name. Unknown keys are kept so that they reach
/// the agent settings verbatim.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NetworkSpec {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub kind: NetworkType,
    #[serde(default, deserialize_with = "optional_ip")]
    pub ip: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "optional_ip")]
    pub netmask: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "optional_ip")]
    pub gateway: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub dns: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub default: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub cloud_properties: Object,
    #[serde(flatten)]
    pub extra: Object,
}

/// The argument of `calculate_vm_cloud_properties` (ram and disk in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VmRequirements {
    pub cpu: u64,
    pub ram: u64,
    pub ephemeral_disk_size: u64,
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: Deserialize<'de> + Default,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

fn optional_ip<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Ipv4Addr>, D::Error> {
    match Option::<String>::deserialize(d)? {
        None => Ok(None),
        Some(s) if s.trim().is_empty() => Ok(None),
        Some(s) => s.trim().parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!("'{}' is not an IPv4 address", printable(&s)))
        }),
    }
}

impl Call {
    /// Types the positional `arguments` of `method`. Unknown methods are `NotImplemented`;
    /// a wrong count or type is a `CpiError` naming the argument and what was expected.
    pub fn parse(method: &str, arguments: Vec<Value>) -> Result<Call, CpiError> {
        let spec = MethodSpec::find(method).ok_or_else(|| {
            CpiError::not_implemented(format!("unknown CPI method '{}'", printable(method)))
        })?;
        let mut a = Args::new(spec, arguments)?;
        let call = match spec.name {
            "info" => Call::Info,
            "create_stemcell" => Call::CreateStemcell {
                image_path: a.cid(0)?,
                cloud_properties: a.object(1)?,
            },
            "delete_stemcell" => Call::DeleteStemcell {
                stemcell_cid: a.cid(0)?,
            },
            "create_vm" => Call::CreateVm(Box::new(CreateVm {
                agent_id: a.cid(0)?,
                stemcell_cid: a.cid(1)?,
                cloud_properties: a.object(2)?,
                networks: a.typed(3, "an object of network name to network settings")?,
                disk_cids: a.string_list(4)?,
                env: a.object(5)?,
            })),
            "delete_vm" => Call::DeleteVm { vm_cid: a.cid(0)? },
            "has_vm" => Call::HasVm { vm_cid: a.cid(0)? },
            "reboot_vm" => Call::RebootVm { vm_cid: a.cid(0)? },
            "set_vm_metadata" => Call::SetVmMetadata {
                vm_cid: a.cid(0)?,
                metadata: a.object(1)?,
            },
            "calculate_vm_cloud_properties" => Call::CalculateVmCloudProperties(a.typed(
                0,
                "an object with integer cpu, ram (MiB) and ephemeral_disk_size (MiB)",
            )?),
            "create_disk" => Call::CreateDisk {
                size_mib: a.size(0)?,
                cloud_properties: a.object(1)?,
                vm_cid: a.optional_cid(2)?,
            },
            "delete_disk" => Call::DeleteDisk {
                disk_cid: a.cid(0)?,
            },
            "has_disk" => Call::HasDisk {
                disk_cid: a.cid(0)?,
            },
            "attach_disk" => Call::AttachDisk {
                vm_cid: a.cid(0)?,
                disk_cid: a.cid(1)?,
            },
            "detach_disk" => Call::DetachDisk {
                vm_cid: a.cid(0)?,
                disk_cid: a.cid(1)?,
            },
            "get_disks" => Call::GetDisks { vm_cid: a.cid(0)? },
            "set_disk_metadata" => Call::SetDiskMetadata {
                disk_cid: a.cid(0)?,
                metadata: a.object(1)?,
            },
            "resize_disk" => Call::ResizeDisk {
                disk_cid: a.cid(0)?,
                new_size_mib: a.size(1)?,
            },
            "update_disk" => Call::UpdateDisk {
                disk_cid: a.cid(0)?,
                new_size_mib: a.size(1)?,
                cloud_properties: a.object(2)?,
            },
            "snapshot_disk" => Call::SnapshotDisk {
                disk_cid: a.cid(0)?,
                metadata: a.object(1)?,
            },
            "delete_snapshot" => Call::DeleteSnapshot {
                snapshot_cid: a.cid(0)?,
            },
            "create_network" => Call::CreateNetwork,
            "delete_network" => Call::DeleteNetwork,
            "current_vm_id" => Call::CurrentVmId,
            "configure_networks" => Call::ConfigureNetworks,
            other => unreachable_method(other)?,
        };
        Ok(call)
    }
}

fn unreachable_method(name: &str) -> Result<Call, CpiError> {
    Err(CpiError::cpi(format!(
        "method '{name}' has an argument list but no parser"
    )))
}

/// A method name with its argument names; the last `optional` ones may be omitted.
#[derive(Debug, Clone, Copy)]
struct MethodSpec {
    name: &'static str,
    args: &'static [&'static str],
    optional: usize,
    /// Deprecated or director-managed methods: any arguments are accepted.
    any_args: bool,
}

const fn m(name: &'static str, args: &'static [&'static str]) -> MethodSpec {
    MethodSpec {
        name,
        args,
        optional: 0,
        any_args: false,
    }
}

/// Every method of the CPI contract (API v2), with its positional arguments.
const METHODS: &[MethodSpec] = &[
    m("info", &[]),
    MethodSpec {
        optional: 1,
        ..m(
            "create_stemcell",
            &["image_path", "cloud_properties", "env"],
        )
    },
    m("delete_stemcell", &["stemcell_cid"]),
    m(
        "create_vm",
        &[
            "agent_id",
            "stemcell_cid",
            "cloud_properties",
            "networks",
            "disk_cids",
            "env",
        ],
    ),
    m("delete_vm", &["vm_cid"]),
    m("has_vm", &["vm_cid"]),
    m("reboot_vm", &["vm_cid"]),
    m("set_vm_metadata", &["vm_cid", "metadata"]),
    m("calculate_vm_cloud_properties", &["vm_resources"]),
    MethodSpec {
        optional: 1,
        ..m("create_disk", &["size", "cloud_properties", "vm_cid"])
    },
    m("delete_disk", &["disk_cid"]),
    m("has_disk", &["disk_cid"]),
    m("attach_disk", &["vm_cid", "disk_cid"]),
    m("detach_disk", &["vm_cid", "disk_cid"]),
    m("get_disks", &["vm_cid"]),
    m("set_disk_metadata", &["disk_cid", "metadata"]),
    m("resize_disk", &["disk_cid", "new_size"]),
    m("update_disk", &["disk_cid", "new_size", "cloud_properties"]),
    m("snapshot_disk", &["disk_cid", "metadata"]),
    m("delete_snapshot", &["snapshot_cid"]),
    MethodSpec {
        any_args: true,
        ..m("create_network", &[])
    },
    MethodSpec {
        any_args: true,
        ..m("delete_network", &[])
    },
    MethodSpec {
        any_args: true,
        ..m("current_vm_id", &[])
    },
    MethodSpec {
        any_args: true,
        ..m("configure_networks", &[])
    },
];

impl MethodSpec {
    fn find(name: &str) -> Option<MethodSpec> {
        METHODS.iter().find(|s| s.name == name).copied()
    }
}

/// All method names this CPI dispatches, for documentation and tests.
pub fn method_names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|s| s.name)
}

/// Positional arguments of one method, taken one by one with typed checks.
struct Args {
    spec: MethodSpec,
    values: Vec<Value>,
}

impl Args {
    fn new(spec: MethodSpec, values: Vec<Value>) -> Result<Args, CpiError> {
        let max = spec.args.len();
        let min = max - spec.optional;
        if !spec.any_args && (values.len() < min || values.len() > max) {
            let expected = if min == max {
                format!("{max}")
            } else {
                format!("{min} to {max}")
            };
            let names = if spec.args.is_empty() {
                "none".to_string()
            } else {
                spec.args.join(", ")
            };
            return Err(CpiError::cpi(format!(
                "{}: expected {expected} argument(s) ({names}), got {}",
                spec.name,
                values.len()
            )));
        }
        Ok(Args { spec, values })
    }

    fn value(&self, i: usize) -> &Value {
        self.values.get(i).unwrap_or(&Value::Null)
    }

    fn wrong(&self, i: usize, expected: &str, detail: impl std::fmt::Display) -> CpiError {
        CpiError::cpi(format!(
            "{}: argument {} ({}) must be {expected}, {detail}",
            self.spec.name,
            i + 1,
            self.spec.args[i]
        ))
    }

    /// A non-empty string (cids, ids, paths).
    fn cid(&self, i: usize) -> Result<String, CpiError> {
        match self.value(i) {
            Value::String(s) if !s.trim().is_empty() => Ok(s.clone()),
            Value::String(_) => Err(self.wrong(i, "a non-empty string", "got an empty string")),
            other => Err(self.wrong(
                i,
                "a non-empty string",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    /// A cid, or null / "" / absent meaning "none".
    fn optional_cid(&self, i: usize) -> Result<Option<String>, CpiError> {
        match self.value(i) {
            Value::Null => Ok(None),
            Value::String(s) if s.trim().is_empty() => Ok(None),
            Value::String(s) => Ok(Some(s.clone())),
            other => Err(self.wrong(
                i,
                "a string or null",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    /// An object; null means empty.
    fn object(&self, i: usize) -> Result<Object, CpiError> {
        match self.value(i) {
            Value::Null => Ok(Object::new()),
            Value::Object(o) => Ok(o.clone()),
            other => Err(self.wrong(
                i,
                "an object or null",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    /// A list of strings; null means empty.
    fn string_list(&self, i: usize) -> Result<Vec<String>, CpiError> {
        match self.value(i) {
            Value::Null => Ok(Vec::new()),
            Value::Array(items) => items
                .iter()
                .enumerate()
                .map(|(n, v)| match v {
                    Value::String(s) if !s.is_empty() => Ok(s.clone()),
                    other => Err(self.wrong(
                        i,
                        "an array of non-empty strings",
                        format_args!("item {n} is {}", json_type(other)),
                    )),
                })
                .collect(),
            other => Err(self.wrong(
                i,
                "an array of strings or null",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    /// A positive size in MiB.
    fn size(&self, i: usize) -> Result<u64, CpiError> {
        match self.value(i) {
            Value::Number(n) => match n.as_u64() {
                Some(v) if v > 0 => Ok(v),
                _ => Err(self.wrong(i, "a positive integer (MiB)", format_args!("got {n}"))),
            },
            other => Err(self.wrong(
                i,
                "a positive integer (MiB)",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    /// Any deserializable shape; the error names the path inside the argument.
    fn typed<T: DeserializeOwned>(&mut self, i: usize, expected: &str) -> Result<T, CpiError> {
        let value = std::mem::take(&mut self.values[i]);
        serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            let inner = e.into_inner();
            if path == "." {
                self.wrong(i, expected, format_args!("but {inner}"))
            } else {
                self.wrong(i, expected, format_args!("but at '{path}': {inner}"))
            }
        })
    }
}

/// A value safe to echo (bounded length, control characters escaped); shared by every
/// error message that quotes a request value.
pub use crate::echo::printable;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Vec<Value> {
        v.as_array().unwrap().clone()
    }

    #[test]
    fn every_contract_method_is_known() {
        for name in [
            "info",
            "create_stemcell",
            "delete_stemcell",
            "create_vm",
            "delete_vm",
            "has_vm",
            "reboot_vm",
            "set_vm_metadata",
            "calculate_vm_cloud_properties",
            "create_disk",
            "delete_disk",
            "has_disk",
            "attach_disk",
            "detach_disk",
            "get_disks",
            "set_disk_metadata",
            "resize_disk",
            "update_disk",
            "snapshot_disk",
            "delete_snapshot",
            "create_network",
            "delete_network",
            "current_vm_id",
            "configure_networks",
        ] {
            assert!(method_names().any(|n| n == name), "{name} missing");
        }
    }

    #[test]
    fn create_vm_is_typed() {
        let call = Call::parse(
            "create_vm",
            args(json!([
                "agent-1",
                "img-1",
                {"ram": 512},
                {"default": {"type": "manual", "ip": "10.1.2.11", "netmask": "255.255.255.0",
                  "gateway": "10.1.2.1", "dns": null, "default": ["dns", "gateway"], "mac": "x"},
                 "dyn": {"type": "dynamic", "ip": ""}},
                null,
                {"bosh": {"group": "g"}}
            ])),
        )
        .unwrap();
        let Call::CreateVm(vm) = call else {
            panic!("not create_vm")
        };
        let net = &vm.networks["default"];
        assert_eq!(net.kind, NetworkType::Manual);
        assert_eq!(net.ip, Some(Ipv4Addr::new(10, 1, 2, 11)));
        assert!(net.dns.is_empty());
        assert_eq!(net.extra["mac"], json!("x"));
        assert_eq!(vm.networks["dyn"].ip, None);
        assert!(vm.disk_cids.is_empty());
    }

    #[test]
    fn wrong_count_names_expected_arguments() {
        let e = Call::parse("delete_vm", vec![]).unwrap_err();
        assert_eq!(
            e.message,
            "delete_vm: expected 1 argument(s) (vm_cid), got 0"
        );
        let e = Call::parse("create_stemcell", args(json!(["a"]))).unwrap_err();
        assert!(e.message.contains("expected 2 to 3"), "{}", e.message);
        assert!(Call::parse("create_stemcell", args(json!(["/i", null, {}]))).is_ok());
    }

    #[test]
    fn wrong_types_name_the_argument() {
        let e = Call::parse("has_vm", args(json!([5]))).unwrap_err();
        assert_eq!(
            e.message,
            "has_vm: argument 1 (vm_cid) must be a non-empty string, got a number"
        );
        let e = Call::parse("create_disk", args(json!([-1, {}, null]))).unwrap_err();
        assert!(e.message.contains("argument 1 (size)"), "{}", e.message);
        let e = Call::parse(
            "create_vm",
            args(json!(["a", "s", {}, {"n": {"ip": "10.1.2.300"}}, [], {}])),
        )
        .unwrap_err();
        assert!(e.message.contains("argument 4 (networks)"), "{}", e.message);
        assert!(e.message.contains("n.ip"), "{}", e.message);
        assert!(e.message.contains("10.1.2.300"), "{}", e.message);
    }

    #[test]
    fn unknown_method_is_not_implemented() {
        let e = Call::parse("frobnicate", vec![]).unwrap_err();
        assert_eq!(e.kind, super::super::error::ErrorKind::NotImplemented);
        assert!(e.message.contains("frobnicate"));
    }

    #[test]
    fn create_disk_vm_hint_may_be_null_empty_or_absent() {
        for a in [json!([1, {}, null]), json!([1, {}, ""]), json!([1, {}])] {
            let Call::CreateDisk { vm_cid, .. } = Call::parse("create_disk", args(a)).unwrap()
            else {
                panic!()
            };
            assert_eq!(vm_cid, None);
        }
    }
}
