//! The one JSON document a CPI call writes to stdout, with the result shapes of API v1
//! and v2.

use serde::Serialize;
use serde_json::Value;

use super::error::CpiError;
use super::request::ApiVersion;
use crate::ids::{DiskCid, SnapshotCid, StemcellCid, VmCid};

/// What a successful call produced, typed per method; it becomes JSON only here, shaped
/// for the caller's API version.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// A method that answers `null`: deletes, `reboot_vm`, metadata, `detach_disk`,
    /// `resize_disk`, and `delete_*` about a cid that cannot exist.
    Done,
    /// `has_vm`, `has_disk`.
    Exists(bool),
    /// `info`.
    Info(Info),
    /// `calculate_vm_cloud_properties`.
    VmCloudProperties(VmCloudProperties),
    /// `create_stemcell`.
    StemcellCreated(StemcellCid),
    /// `create_disk`.
    DiskCreated(DiskCid),
    /// `snapshot_disk`.
    SnapshotCreated(SnapshotCid),
    /// `get_disks`.
    Disks(Vec<DiskCid>),
    /// `create_vm`: v2 answers `[vm_cid, networks]`, v1 the bare cid. `networks` is the
    /// director's own networks document, answered back as it came.
    VmCreated { vm_cid: VmCid, networks: Value },
    /// `attach_disk`: v2 answers the disk hint, v1 null.
    DiskAttached { hint: String },
}

/// The `info` answer: what the director asks before anything else.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Info {
    /// The CPI API version spoken.
    pub(crate) api_version: u32,
    /// The stemcell formats `create_stemcell` accepts.
    pub(crate) stemcell_formats: &'static [&'static str],
}

/// The `calculate_vm_cloud_properties` answer: the create_vm cloud_properties that ask
/// for the requested sizes.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct VmCloudProperties {
    /// CPUs.
    pub(crate) cpu: u64,
    /// Memory in MiB.
    pub(crate) ram: u64,
    /// Ephemeral disk in MiB.
    pub(crate) ephemeral_disk: u64,
}

impl CallResult {
    /// The `result` value for `api`.
    pub(crate) fn shape(self, api: ApiVersion) -> Value {
        match (self, api) {
            (CallResult::Done, _) => Value::Null,
            (CallResult::Exists(exists), _) => Value::Bool(exists),
            (CallResult::Info(info), _) => to_value(&info),
            (CallResult::VmCloudProperties(props), _) => to_value(&props),
            (CallResult::StemcellCreated(cid), _) => Value::String(cid.to_string()),
            (CallResult::DiskCreated(cid), _) => Value::String(cid.to_string()),
            (CallResult::SnapshotCreated(cid), _) => Value::String(cid.to_string()),
            (CallResult::Disks(cids), _) => {
                Value::Array(cids.iter().map(|c| Value::String(c.to_string())).collect())
            }
            (CallResult::VmCreated { vm_cid, .. }, ApiVersion::V1) => {
                Value::String(vm_cid.to_string())
            }
            (CallResult::VmCreated { vm_cid, networks }, ApiVersion::V2) => {
                Value::Array(vec![Value::String(vm_cid.to_string()), networks])
            }
            (CallResult::DiskAttached { .. }, ApiVersion::V1) => Value::Null,
            (CallResult::DiskAttached { hint }, ApiVersion::V2) => Value::String(hint),
        }
    }
}

/// A result struct as JSON; its fields are numbers and strings, so this cannot fail.
fn to_value(result: &impl Serialize) -> Value {
    serde_json::to_value(result).unwrap_or(Value::Null)
}

/// The `error` object of a failed call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct ErrorBody {
    #[serde(rename = "type")]
    pub(crate) kind: &'static str,
    pub(crate) message: String,
    pub(crate) ok_to_retry: bool,
}

/// The longest error message answered (characters); every value in it is cut already,
/// this bounds a message that echoes many (one per node).
pub(crate) const MAX_MESSAGE_CHARS: usize = 8 * 1024;

/// The longest `log` answered (bytes).
pub(crate) const MAX_LOG_BYTES: usize = 64 * 1024;

fn safe_log(log: &str) -> String {
    crate::echo::truncate(&crate::redact::redact_str(log), MAX_LOG_BYTES)
}

/// The response document. All three keys are always present; `log` is always a string.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub(crate) struct Response {
    pub(crate) result: Value,
    pub(crate) error: Option<ErrorBody>,
    pub(crate) log: String,
}

impl Response {
    /// A success response.
    pub(crate) fn ok(result: CallResult, api: ApiVersion, log: String) -> Response {
        Response {
            result: result.shape(api),
            error: None,
            log: safe_log(&log),
        }
    }

    /// An error response. The message passes through the redactor as a last line of
    /// defence (URL credentials or key material that reached an error text never leave),
    /// has its control characters escaped and is cut to [`MAX_MESSAGE_CHARS`].
    pub(crate) fn error(err: &CpiError, log: String) -> Response {
        Response {
            result: Value::Null,
            error: Some(ErrorBody {
                kind: err.kind.bosh_type(),
                message: crate::echo::cut(
                    &crate::redact::redact_str(&err.message),
                    MAX_MESSAGE_CHARS,
                ),
                ok_to_retry: err.ok_to_retry,
            }),
            log: safe_log(&log),
        }
    }

    /// The single line written to stdout.
    pub(crate) fn to_line(&self) -> String {
        // Serializing a Value-based struct cannot fail; fall back to a fixed valid document.
        serde_json::to_string(self).unwrap_or_else(|_| {
            r#"{"result":null,"error":{"type":"Bosh::Clouds::CpiError","message":"response could not be serialized","ok_to_retry":false},"log":""}"#.to_string()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn create_vm_shapes() {
        let vm = "vm-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31";
        let r = CallResult::VmCreated {
            vm_cid: VmCid::parse(vm).unwrap(),
            networks: json!({"a": {}}),
        };
        assert_eq!(r.clone().shape(ApiVersion::V1), json!(vm));
        assert_eq!(r.shape(ApiVersion::V2), json!([vm, {"a": {}}]));
    }

    #[test]
    fn typed_results_shape_as_the_director_reads_them() {
        let disk = DiskCid::parse("disk-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31").unwrap();
        for (result, expected) in [
            (CallResult::Done, Value::Null),
            (CallResult::Exists(true), json!(true)),
            (
                CallResult::Info(Info {
                    api_version: 2,
                    stemcell_formats: &["warden-tar"],
                }),
                json!({"api_version": 2, "stemcell_formats": ["warden-tar"]}),
            ),
            (
                CallResult::VmCloudProperties(VmCloudProperties {
                    cpu: 2,
                    ram: 1024,
                    ephemeral_disk: 4096,
                }),
                json!({"cpu": 2, "ram": 1024, "ephemeral_disk": 4096}),
            ),
            (
                CallResult::DiskCreated(disk.clone()),
                json!("disk-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31"),
            ),
            (
                CallResult::Disks(vec![disk]),
                json!(["disk-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31"]),
            ),
        ] {
            assert_eq!(result.clone().shape(ApiVersion::V1), expected);
            assert_eq!(result.shape(ApiVersion::V2), expected);
        }
    }

    #[test]
    fn attach_disk_shapes() {
        let r = CallResult::DiskAttached {
            hint: "/warden-cpi-dev/d-1".to_string(),
        };
        assert_eq!(r.clone().shape(ApiVersion::V1), Value::Null);
        assert_eq!(r.shape(ApiVersion::V2), json!("/warden-cpi-dev/d-1"));
    }

    #[test]
    fn messages_and_logs_are_bounded() {
        let e = CpiError::cpi(format!("node n1: {}", "x".repeat(1 << 20)));
        let r = Response::error(&e, "w\n".repeat(1 << 20));
        let body = r.error.unwrap();
        assert!(body.message.chars().count() <= MAX_MESSAGE_CHARS + 3);
        assert!(r.log.len() <= MAX_LOG_BYTES + 40);
        assert!(r.log.starts_with("w\nw\n"), "log lines keep their newlines");
    }

    #[test]
    fn error_document_has_all_keys() {
        let e = CpiError::cloud("etcd down", true);
        let v: Value = serde_json::from_str(&Response::error(&e, String::new()).to_line()).unwrap();
        assert_eq!(v["result"], Value::Null);
        assert_eq!(v["error"]["type"], "Bosh::Clouds::CloudError");
        assert_eq!(v["error"]["ok_to_retry"], true);
        assert_eq!(v["log"], "");
    }
}
