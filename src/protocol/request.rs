//! The envelope of one CPI request: method, positional arguments, context, api_version.

use serde_json::{Map, Value};

use super::error::CpiError;

/// Which result shapes the caller expects (`create_vm` and `attach_disk` differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ApiVersion {
    /// No `api_version`, or 1: bare cids and null results.
    V1,
    /// 2 or higher: `[vm_cid, networks]` from create_vm, a disk hint from attach_disk.
    V2,
}

/// A parsed request envelope. Arguments are still raw JSON; [`super::call::Call`] types them.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The method name as sent.
    pub method: String,
    /// The positional arguments.
    pub arguments: Vec<Value>,
    /// The director's context, with cpi-config properties merged in at the top level.
    pub context: Map<String, Value>,
    /// Result shapes to answer with.
    pub api_version: ApiVersion,
}

impl Request {
    /// Parses the raw stdin text. Unknown keys are ignored; a missing or mistyped
    /// `method`/`arguments` is a `CpiError` that says so.
    pub(crate) fn parse(raw: &str) -> Result<Request, CpiError> {
        if raw.trim().is_empty() {
            return Err(CpiError::cpi(
                "empty request: expected one JSON object on stdin",
            ));
        }
        let value: Value = serde_json::from_str(raw)
            .map_err(|e| CpiError::cpi(format!("request is not valid JSON: {e}")))?;
        let Value::Object(mut object) = value else {
            return Err(CpiError::cpi(format!(
                "request must be a JSON object, got {}",
                json_type(&value)
            )));
        };
        let method = match object.remove("method") {
            Some(Value::String(m)) if !m.is_empty() => m,
            Some(Value::String(_)) => return Err(CpiError::cpi("request key 'method' is empty")),
            Some(other) => {
                return Err(CpiError::cpi(format!(
                    "request key 'method' must be a string, got {}",
                    json_type(&other)
                )));
            }
            None => return Err(CpiError::cpi("request has no 'method' key")),
        };
        let arguments = match object.remove("arguments") {
            Some(Value::Array(a)) => a,
            Some(other) => {
                return Err(CpiError::cpi(format!(
                    "request key 'arguments' must be an array, got {}",
                    json_type(&other)
                )));
            }
            None => return Err(CpiError::cpi("request has no 'arguments' key")),
        };
        let context = match object.remove("context") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(c)) => c,
            Some(other) => {
                return Err(CpiError::cpi(format!(
                    "request key 'context' must be an object, got {}",
                    json_type(&other)
                )));
            }
        };
        let api_version = match object.remove("api_version") {
            None | Some(Value::Null) => ApiVersion::V1,
            Some(Value::Number(n)) => match n.as_u64() {
                Some(0 | 1) => ApiVersion::V1,
                Some(_) => ApiVersion::V2,
                None => {
                    return Err(CpiError::cpi(format!(
                        "request key 'api_version' must be a positive integer, got {n}"
                    )));
                }
            },
            Some(other) => {
                return Err(CpiError::cpi(format!(
                    "request key 'api_version' must be an integer, got {}",
                    json_type(&other)
                )));
            }
        };
        Ok(Request {
            method,
            arguments,
            context,
            api_version,
        })
    }

    /// The director's request id (`cpi-123456`), when it sent one; tags every log line.
    pub(crate) fn request_id(&self) -> Option<&str> {
        self.context.get("request_id").and_then(Value::as_str)
    }
}

/// A short name for a JSON value's type, for error messages that must not echo values.
pub(crate) fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Serde's words made plain live in [`crate::serde_words`]; re-exported for the parsers here.
pub(crate) use crate::serde_words::plain as plain_serde_message;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_full_request() {
        let r = Request::parse(
            r#"{"method":"info","arguments":[],"context":{"request_id":"cpi-1"},"api_version":2,"extra":1}"#,
        )
        .unwrap();
        assert_eq!(r.method, "info");
        assert_eq!(r.api_version, ApiVersion::V2);
        assert_eq!(r.request_id(), Some("cpi-1"));
    }

    #[test]
    fn absent_or_one_api_version_is_v1_and_three_is_v2() {
        let v = |s: &str| Request::parse(s).unwrap().api_version;
        assert_eq!(v(r#"{"method":"m","arguments":[]}"#), ApiVersion::V1);
        assert_eq!(
            v(r#"{"method":"m","arguments":[],"api_version":1}"#),
            ApiVersion::V1
        );
        assert_eq!(
            v(r#"{"method":"m","arguments":[],"api_version":3}"#),
            ApiVersion::V2
        );
    }

    #[test]
    fn malformed_envelopes_say_what_is_wrong() {
        let msg = |s: &str| Request::parse(s).unwrap_err().message;
        assert!(msg("").contains("empty request"));
        assert!(msg("{").contains("not valid JSON"));
        assert!(msg("[1]").contains("must be a JSON object, got an array"));
        assert!(msg(r#"{"arguments":[]}"#).contains("no 'method'"));
        assert!(msg(r#"{"method":"info"}"#).contains("no 'arguments'"));
        assert!(msg(r#"{"method":5,"arguments":[]}"#).contains("'method' must be a string"));
        assert!(
            msg(r#"{"method":"info","arguments":{}}"#)
                .contains("'arguments' must be an array, got an object")
        );
        assert!(msg(r#"{"method":"info","arguments":[],"context":"x"}"#).contains("'context'"));
        assert!(
            msg(r#"{"method":"info","arguments":[],"api_version":"2"}"#).contains("api_version")
        );
    }
}
