//! The one JSON document a CPI call writes to stdout, with the result shapes of API v1
//! and v2.

use serde::Serialize;
use serde_json::Value;

use super::error::CpiError;
use super::request::ApiVersion;

/// What a successful call produced, before it is shaped for the caller's API version.
#[derive(Debug, Clone, PartialEq)]
pub enum CallResult {
    /// A result whose shape is the same in every API version.
    Plain(Value),
    /// `create_vm`: v2 answers `[vm_cid, networks]`, v1 the bare cid.
    VmCreated { vm_cid: String, networks: Value },
    /// `attach_disk`: v2 answers the disk hint, v1 null.
    DiskAttached { hint: Value },
}

impl CallResult {
    /// The `result` value for `api`.
    pub fn shape(self, api: ApiVersion) -> Value {
        match (self, api) {
            (CallResult::Plain(v), _) => v,
            (CallResult::VmCreated { vm_cid, .. }, ApiVersion::V1) => Value::String(vm_cid),
            (CallResult::VmCreated { vm_cid, networks }, ApiVersion::V2) => {
                Value::Array(vec![Value::String(vm_cid), networks])
            }
            (CallResult::DiskAttached { .. }, ApiVersion::V1) => Value::Null,
            (CallResult::DiskAttached { hint }, ApiVersion::V2) => hint,
        }
    }
}

/// The `error` object of a failed call.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorBody {
    #[serde(rename = "type")]
    pub kind: &'static str,
    pub message: String,
    pub ok_to_retry: bool,
}

/// The longest error message answered (characters); every value in it is cut already,
/// this bounds a message that echoes many (one per node).
pub const MAX_MESSAGE_CHARS: usize = 8 * 1024;

/// The longest `log` answered (bytes).
pub const MAX_LOG_BYTES: usize = 64 * 1024;

fn safe_log(log: &str) -> String {
    crate::echo::truncate(&crate::redact::redact_str(log), MAX_LOG_BYTES)
}

/// The response document. All three keys are always present; `log` is always a string.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Response {
    pub result: Value,
    pub error: Option<ErrorBody>,
    pub log: String,
}

impl Response {
    /// A success response.
    pub fn ok(result: CallResult, api: ApiVersion, log: String) -> Response {
        Response {
            result: result.shape(api),
            error: None,
            log: safe_log(&log),
        }
    }

    /// An error response. The message passes through the redactor as a last line of
    /// defence (URL credentials or key material that reached an error text never leave),
    /// has its control characters escaped and is cut to [`MAX_MESSAGE_CHARS`].
    pub fn error(err: &CpiError, log: String) -> Response {
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
    pub fn to_line(&self) -> String {
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
        let r = CallResult::VmCreated {
            vm_cid: "c-1".into(),
            networks: json!({"a": {}}),
        };
        assert_eq!(r.clone().shape(ApiVersion::V1), json!("c-1"));
        assert_eq!(r.shape(ApiVersion::V2), json!(["c-1", {"a": {}}]));
    }

    #[test]
    fn attach_disk_shapes() {
        let r = CallResult::DiskAttached {
            hint: json!("/warden-cpi-dev/d-1"),
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
