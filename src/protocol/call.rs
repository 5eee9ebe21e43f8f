//! Typed CPI calls: every method of the contract, with its positional arguments parsed
//! and checked, so the layers below never see raw JSON.
//!
//! [`cpi_methods!`] below is the one list of methods: each entry gives the `Call`
//! variant, the wire name, the positional arguments and how they are typed. The enum,
//! [`method_names`], [`Call::parse`] and [`Call::method`] all follow from it; the handler
//! of each variant is the exhaustive match in `cloud::handle`.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::de::DeserializeOwned;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::{Map, Value};

use super::error::CpiError;
use super::ids::{DiskCid, MalformedCid, SnapshotCid, StemcellCid, VmCid};
use super::request::{json_type, plain_serde_message};
use super::response::CallResult;
use crate::mib::Mib;

/// A JSON object, as cloud_properties, env and metadata arrive.
pub(crate) type Object = Map<String, Value>;

/// Declares every method of the contract once. An entry reads
/// `Variant { fields } = "wire_name" (arg, arg; optional_arg) => |a| <typed call>`;
/// `(..)` accepts any arguments (deprecated or unsupported methods).
macro_rules! cpi_methods {
    ($(
        $(#[$doc:meta])*
        $variant:ident $({ $($field:ident : $fty:ty),* $(,)? })? $(( $tty:ty ))?
            = $name:literal ( $($args:tt)* ) => |$a:ident| $parse:expr;
    )*) => {
        /// One CPI call with typed arguments.
        #[derive(Debug, Clone, PartialEq)]
        pub enum Call {
            $(
                $(#[$doc])*
                $variant $({ $($field: $fty),* })? $(($tty))?,
            )*
            /// A `delete_*` or `has_*` call about a cid of a shape this CPI never issues:
            /// no such object can exist, so the call is answered as for an unknown one
            /// (`answer`: null for deletes, false for `has_*`) without reading the cluster.
            NoSuchObject {
                method: &'static str,
                answer: CallResult,
                reason: MalformedCid,
            },
        }

        impl Call {
            /// The wire name of the method this call answers, for messages.
            pub(crate) fn method(&self) -> &'static str {
                match self {
                    $(Call::$variant { .. } => $name,)*
                    Call::NoSuchObject { method, .. } => method,
                }
            }
        }

        /// Every method of the CPI contract (API v2): its argument list and its parser.
        const METHODS: &[Method] = &[$(
            Method {
                spec: cpi_methods!(@spec $name ($($args)*)),
                parse: |$a: &mut Args| -> Result<Call, CpiError> { Ok($parse) },
            },
        )*];
    };
    (@spec $name:literal (..)) => {
        MethodSpec { name: $name, args: &[], optional: 0, any_args: true }
    };
    (@spec $name:literal ($($arg:ident),* $(; $($opt:ident),+)?)) => {
        MethodSpec {
            name: $name,
            args: &[$(stringify!($arg),)* $($(stringify!($opt),)+)?],
            optional: <[&str]>::len(&[$($(stringify!($opt)),+)?]),
            any_args: false,
        }
    };
}

cpi_methods! {
    /// Versions and stemcell formats; no side effects.
    Info = "info" () => |_a| Call::Info;
    /// Import a stemcell's rootfs.
    CreateStemcell { image_path: String, cloud_properties: Object }
        = "create_stemcell" (image_path, cloud_properties; env)
        => |a| Call::CreateStemcell {
            image_path: a.cid(0)?,
            cloud_properties: a.object(1)?,
        };
    /// Remove a stemcell image.
    DeleteStemcell { stemcell_cid: StemcellCid } = "delete_stemcell" (stemcell_cid)
        => |a| match a.lenient(0, StemcellCid::parse)? {
            Ok(stemcell_cid) => Call::DeleteStemcell { stemcell_cid },
            Err(reason) => a.no_such_object(CallResult::Done, reason),
        };
    /// Create and start a VM (container).
    CreateVm(Box<CreateVm>)
        = "create_vm" (agent_id, stemcell_cid, cloud_properties, networks, disk_cids, env)
        => |a| Call::CreateVm(Box::new(CreateVm {
            agent_id: a.cid(0)?,
            stemcell_cid: a.strict(1, StemcellCid::parse)?,
            cloud_properties: a.object(2)?,
            networks: a.typed(3, "an object of network name to network settings")?,
            disk_cids: a.cid_list(4, DiskCid::parse)?,
            env: a.object(5)?,
        }));
    /// Remove a VM; persistent disks survive.
    DeleteVm { vm_cid: VmCid } = "delete_vm" (vm_cid)
        => |a| match a.lenient(0, VmCid::parse)? {
            Ok(vm_cid) => Call::DeleteVm { vm_cid },
            Err(reason) => a.no_such_object(CallResult::Done, reason),
        };
    /// Whether a VM exists.
    HasVm { vm_cid: VmCid } = "has_vm" (vm_cid)
        => |a| match a.lenient(0, VmCid::parse)? {
            Ok(vm_cid) => Call::HasVm { vm_cid },
            Err(reason) => a.no_such_object(CallResult::Exists(false), reason),
        };
    /// Restart a VM.
    RebootVm { vm_cid: VmCid } = "reboot_vm" (vm_cid)
        => |a| Call::RebootVm { vm_cid: a.strict(0, VmCid::parse)? };
    /// Record deployment metadata on a VM.
    SetVmMetadata { vm_cid: VmCid, metadata: Object } = "set_vm_metadata" (vm_cid, metadata)
        => |a| Call::SetVmMetadata {
            vm_cid: a.strict(0, VmCid::parse)?,
            metadata: a.object(1)?,
        };
    /// Translate cpu/ram/disk requirements into cloud_properties.
    CalculateVmCloudProperties(VmRequirements)
        = "calculate_vm_cloud_properties" (vm_resources)
        => |a| Call::CalculateVmCloudProperties(a.typed(
            0,
            "an object with integer cpu, ram (MiB) and ephemeral_disk_size (MiB)",
        )?);
    /// Create a persistent disk, optionally near a VM.
    CreateDisk { size_mib: u64, cloud_properties: Object, vm_cid: Option<VmCid> }
        = "create_disk" (size, cloud_properties; vm_cid)
        => |a| Call::CreateDisk {
            size_mib: a.size(0)?,
            cloud_properties: a.object(1)?,
            vm_cid: a
                .optional_cid(2)?
                .map(|s| VmCid::parse(&s).map_err(|e| a.malformed(2, e)))
                .transpose()?,
        };
    /// Remove a persistent disk.
    DeleteDisk { disk_cid: DiskCid } = "delete_disk" (disk_cid)
        => |a| match a.lenient(0, DiskCid::parse)? {
            Ok(disk_cid) => Call::DeleteDisk { disk_cid },
            Err(reason) => a.no_such_object(CallResult::Done, reason),
        };
    /// Whether a disk exists.
    HasDisk { disk_cid: DiskCid } = "has_disk" (disk_cid)
        => |a| match a.lenient(0, DiskCid::parse)? {
            Ok(disk_cid) => Call::HasDisk { disk_cid },
            Err(reason) => a.no_such_object(CallResult::Exists(false), reason),
        };
    /// Attach a disk to a VM.
    AttachDisk { vm_cid: VmCid, disk_cid: DiskCid } = "attach_disk" (vm_cid, disk_cid)
        => |a| Call::AttachDisk {
            vm_cid: a.strict(0, VmCid::parse)?,
            disk_cid: a.strict(1, DiskCid::parse)?,
        };
    /// Detach a disk from a VM.
    DetachDisk { vm_cid: VmCid, disk_cid: DiskCid } = "detach_disk" (vm_cid, disk_cid)
        => |a| Call::DetachDisk {
            vm_cid: a.strict(0, VmCid::parse)?,
            disk_cid: a.strict(1, DiskCid::parse)?,
        };
    /// The disks attached to a VM.
    GetDisks { vm_cid: VmCid } = "get_disks" (vm_cid)
        => |a| Call::GetDisks { vm_cid: a.strict(0, VmCid::parse)? };
    /// Record metadata on a disk.
    SetDiskMetadata { disk_cid: DiskCid, metadata: Object }
        = "set_disk_metadata" (disk_cid, metadata)
        => |a| Call::SetDiskMetadata {
            disk_cid: a.strict(0, DiskCid::parse)?,
            metadata: a.object(1)?,
        };
    /// Grow a detached disk.
    ResizeDisk { disk_cid: DiskCid, new_size_mib: u64 } = "resize_disk" (disk_cid, new_size)
        => |a| Call::ResizeDisk {
            disk_cid: a.strict(0, DiskCid::parse)?,
            new_size_mib: a.size(1)?,
        };
    /// Change a disk's size or type.
    UpdateDisk { disk_cid: DiskCid, new_size_mib: u64, cloud_properties: Object }
        = "update_disk" (disk_cid, new_size, cloud_properties)
        => |a| Call::UpdateDisk {
            disk_cid: a.strict(0, DiskCid::parse)?,
            new_size_mib: a.size(1)?,
            cloud_properties: a.object(2)?,
        };
    /// Copy a disk's contents into a snapshot.
    SnapshotDisk { disk_cid: DiskCid, metadata: Object } = "snapshot_disk" (disk_cid, metadata)
        => |a| Call::SnapshotDisk {
            disk_cid: a.strict(0, DiskCid::parse)?,
            metadata: a.object(1)?,
        };
    /// Remove a snapshot.
    DeleteSnapshot { snapshot_cid: SnapshotCid } = "delete_snapshot" (snapshot_cid)
        => |a| match a.lenient(0, SnapshotCid::parse)? {
            Ok(snapshot_cid) => Call::DeleteSnapshot { snapshot_cid },
            Err(reason) => a.no_such_object(CallResult::Done, reason),
        };
    /// Director-managed networks (not supported by this CPI).
    CreateNetwork = "create_network" (..) => |_a| Call::CreateNetwork;
    /// Director-managed networks (not supported by this CPI).
    DeleteNetwork = "delete_network" (..) => |_a| Call::DeleteNetwork;
    /// Deprecated by BOSH.
    CurrentVmId = "current_vm_id" (..) => |_a| Call::CurrentVmId;
    /// Deprecated by BOSH.
    ConfigureNetworks = "configure_networks" (..) => |_a| Call::ConfigureNetworks;
}

/// The arguments of `create_vm`.
#[derive(Debug, Clone, PartialEq)]
pub struct CreateVm {
    pub(crate) agent_id: String,
    pub(crate) stemcell_cid: StemcellCid,
    pub(crate) cloud_properties: Object,
    pub(crate) networks: BTreeMap<String, NetworkSpec>,
    pub(crate) disk_cids: Vec<DiskCid>,
    pub(crate) env: Object,
}

/// The kind of a BOSH network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub(crate) enum NetworkType {
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
pub(crate) struct NetworkSpec {
    #[serde(rename = "type", default, deserialize_with = "null_as_default")]
    pub(crate) kind: NetworkType,
    #[serde(default, deserialize_with = "optional_ip")]
    pub(crate) ip: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "optional_ip")]
    pub(crate) netmask: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "optional_ip")]
    pub(crate) gateway: Option<Ipv4Addr>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) dns: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) default: Vec<String>,
    #[serde(default, deserialize_with = "null_as_default")]
    pub(crate) cloud_properties: Object,
    #[serde(flatten)]
    pub(crate) extra: Object,
}

/// The argument of `calculate_vm_cloud_properties` (ram and disk in MiB).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub struct VmRequirements {
    pub(crate) cpu: u64,
    pub(crate) ram: Mib,
    pub(crate) ephemeral_disk_size: Mib,
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
    pub(crate) fn parse(method: &str, arguments: Vec<Value>) -> Result<Call, CpiError> {
        let found = METHODS
            .iter()
            .find(|m| m.spec.name == method)
            .ok_or_else(|| {
                CpiError::not_implemented(format!("unknown CPI method '{}'", printable(method)))
            })?;
        let mut a = Args::new(found.spec, arguments)?;
        (found.parse)(&mut a)
    }
}

/// One entry of [`METHODS`]: the argument list and the function that types the arguments.
struct Method {
    spec: MethodSpec,
    parse: fn(&mut Args) -> Result<Call, CpiError>,
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

/// All method names this CPI dispatches, for documentation and tests.
#[cfg(test)]
fn method_names() -> impl Iterator<Item = &'static str> {
    METHODS.iter().map(|m| m.spec.name)
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

    /// A cid of the exact shape `parse` accepts; anything else is a `CpiError` naming the
    /// argument, the expected shape and the value (cut short).
    fn strict<T>(
        &self,
        i: usize,
        parse: impl Fn(&str) -> Result<T, MalformedCid>,
    ) -> Result<T, CpiError> {
        self.lenient(i, parse)?.map_err(|e| self.malformed(i, e))
    }

    /// A string argument parsed by `parse`: a wrong JSON type is a `CpiError`, a string of
    /// the wrong shape is returned as such for the caller to decide.
    fn lenient<T>(
        &self,
        i: usize,
        parse: impl Fn(&str) -> Result<T, MalformedCid>,
    ) -> Result<Result<T, MalformedCid>, CpiError> {
        match self.value(i) {
            Value::String(s) => Ok(parse(s)),
            other => Err(self.wrong(
                i,
                "a non-empty string",
                format_args!("got {}", json_type(other)),
            )),
        }
    }

    fn malformed(&self, i: usize, e: MalformedCid) -> CpiError {
        self.wrong(i, e.expected, format_args!("got '{}'", e.shown))
    }

    /// The answer to a `delete_*`/`has_*` about a cid that cannot exist.
    fn no_such_object(&self, answer: CallResult, reason: MalformedCid) -> Call {
        Call::NoSuchObject {
            method: self.spec.name,
            answer,
            reason,
        }
    }

    /// A list of cids of the shape `parse` accepts; null means empty.
    fn cid_list<T>(
        &self,
        i: usize,
        parse: impl Fn(&str) -> Result<T, MalformedCid>,
    ) -> Result<Vec<T>, CpiError> {
        self.string_list(i)?
            .iter()
            .enumerate()
            .map(|(n, s)| {
                parse(s).map_err(|e| {
                    self.wrong(i, e.expected, format_args!("item {n} is '{}'", e.shown))
                })
            })
            .collect()
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

    /// A disk size: a positive whole number of MiB whose bytes fit a file's length.
    fn size(&self, i: usize) -> Result<u64, CpiError> {
        match self.value(i) {
            Value::Number(n) => match n.as_u64().filter(|v| *v > 0).map(Mib::new) {
                Some(Ok(v)) => Ok(v.get()),
                Some(Err(_)) => Err(self.wrong(
                    i,
                    &format!("a positive integer (MiB) of at most {}", Mib::MAX.get()),
                    format_args!("got {n}"),
                )),
                None => Err(self.wrong(i, "a positive integer (MiB)", format_args!("got {n}"))),
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
            let inner = plain_serde_message(&e.into_inner().to_string());
            if path == "." {
                // The argument as a whole has the wrong type: "must be <expected>, got ...".
                match inner.split_once(", got ") {
                    Some((_, got)) if inner.starts_with("expected ") => {
                        self.wrong(i, expected, format_args!("got {got}"))
                    }
                    _ => self.wrong(i, expected, format_args!("but {inner}")),
                }
            } else {
                self.wrong(i, expected, format_args!("but at '{path}': {inner}"))
            }
        })
    }
}

/// A value safe to echo (bounded length, control characters escaped); shared by every
/// error message that quotes a request value.
pub(crate) use crate::echo::printable;

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn args(v: Value) -> Vec<Value> {
        v.as_array().unwrap().clone()
    }

    const SC: &str = "sc-00000000-0000-0000-0000-000000000001";
    const VM: &str = "vm-00000000-0000-0000-0000-000000000001";
    const DISK: &str = "disk-00000000-0000-0000-0000-000000000001";

    #[test]
    fn malformed_cids_of_deletes_and_has_are_unknown_objects() {
        let hostile = "x/../../containers/vm-1?force=true";
        for (method, answer) in [
            ("delete_vm", CallResult::Done),
            ("delete_stemcell", CallResult::Done),
            ("delete_disk", CallResult::Done),
            ("delete_snapshot", CallResult::Done),
            ("has_vm", CallResult::Exists(false)),
            ("has_disk", CallResult::Exists(false)),
        ] {
            match Call::parse(method, args(json!([hostile]))).unwrap() {
                Call::NoSuchObject {
                    method: m,
                    answer: a,
                    ..
                } => {
                    assert_eq!((m, a), (method, answer));
                }
                other => panic!("{method}: {other:?}"),
            }
        }
        // A wrong JSON type stays a malformed request.
        assert!(Call::parse("delete_vm", args(json!([5]))).is_err());
    }

    #[test]
    fn malformed_cids_elsewhere_are_cpi_errors_naming_the_value_cut_short() {
        let huge = format!("vm-{}", "a".repeat(1 << 20));
        for (method, a) in [
            ("reboot_vm", json!([huge])),
            ("set_vm_metadata", json!([huge, {}])),
            ("attach_disk", json!([VM, huge])),
            ("attach_disk", json!([huge, DISK])),
            ("detach_disk", json!([VM, "x/../y"])),
            ("get_disks", json!([DISK])),
            ("create_disk", json!([1, {}, huge])),
            ("snapshot_disk", json!([VM, {}])),
            ("resize_disk", json!([huge, 2])),
            ("create_vm", json!(["a", huge, {}, {}, [], {}])),
            ("create_vm", json!(["a", SC, {}, {}, [DISK, huge], {}])),
        ] {
            let e = Call::parse(method, args(a)).unwrap_err();
            assert_eq!(e.kind, super::super::error::ErrorKind::CpiError, "{method}");
            assert!(!e.ok_to_retry);
            assert!(e.message.len() < 300, "{method}: {}", e.message);
            assert!(e.message.contains("cid ("), "{method}: {}", e.message);
        }
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
    fn method_names_are_unique_and_name_their_calls() {
        let names: Vec<_> = method_names().collect();
        let unique: std::collections::BTreeSet<_> = names.iter().collect();
        assert_eq!((names.len(), unique.len()), (24, 24));
        assert_eq!(Call::Info.method(), "info");
        let call = Call::parse("attach_disk", args(json!([VM, DISK]))).unwrap();
        assert_eq!(call.method(), "attach_disk");
        let call = Call::parse("has_disk", args(json!(["x/y"]))).unwrap();
        assert_eq!(call.method(), "has_disk");
    }

    #[test]
    fn create_vm_is_typed() {
        let call = Call::parse(
            "create_vm",
            args(json!([
                "agent-1",
                "sc-00000000-0000-0000-0000-000000000001",
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
            args(json!(["a", SC, {}, {"n": {"ip": "10.1.2.300"}}, [], {}])),
        )
        .unwrap_err();
        assert!(e.message.contains("argument 4 (networks)"), "{}", e.message);
        assert!(e.message.contains("n.ip"), "{}", e.message);
        assert!(e.message.contains("10.1.2.300"), "{}", e.message);
    }

    #[test]
    fn sizes_whose_bytes_would_wrap_are_refused() {
        let e =
            Call::parse("create_disk", args(json!([8_796_093_022_208u64, {}, null]))).unwrap_err();
        assert_eq!(
            e.message,
            "create_disk: argument 1 (size) must be a positive integer (MiB) of at most 8796093022207, got 8796093022208"
        );
        assert!(!e.ok_to_retry);
        let e = Call::parse("resize_disk", args(json!([DISK, u64::MAX]))).unwrap_err();
        assert!(e.message.contains("argument 2 (new_size)"), "{}", e.message);
        assert!(e.message.contains("18446744073709551615"), "{}", e.message);
        assert!(Call::parse("create_disk", args(json!([8_796_093_022_207u64, {}, null]))).is_ok());
        let e = Call::parse(
            "calculate_vm_cloud_properties",
            args(json!([{"cpu": 1, "ram": u64::MAX, "ephemeral_disk_size": 1}])),
        )
        .unwrap_err();
        assert!(e.message.contains("ram"), "{}", e.message);
        assert!(
            e.message.contains("more than the largest size"),
            "{}",
            e.message
        );
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
