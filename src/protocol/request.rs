//! The envelope of one CPI request: method, positional arguments, context, api_version.

use serde_json::{Map, Value};

use super::error::CpiError;

/// Which result shapes the caller expects (`create_vm` and `attach_disk` differ).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ApiVersion {
    /// No `api_version`, or 1: bare cids and null results.
    V1,
    /// 2 or higher: `[vm_cid, networks]` from create_vm, a disk hint from attach_disk.
    V2,
}

/// A parsed request envelope. Arguments are still raw JSON; [`super::call::Call`] types them.
#[derive(Debug, Clone)]
pub(crate) struct Request {
    /// The method name as sent.
    pub(crate) method: String,
    /// The positional arguments.
    pub(crate) arguments: Vec<Value>,
    /// The director's context, with cpi-config properties merged in at the top level.
    pub(crate) context: Map<String, Value>,
    /// Result shapes to answer with.
    pub(crate) api_version: ApiVersion,
}

/// Why a request was refused at the edge, before or around its call: never retriable,
/// since the same request cannot succeed later. Becomes a `Bosh::Clouds::CpiError` with
/// these words (`From<RequestError> for CpiError`).
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequestError {
    /// stdin could not be read.
    #[error("cannot read the request from stdin: {0}")]
    Unreadable(#[source] std::io::Error),
    /// stdin held more than the limit.
    #[error("request is larger than the {} limit", crate::bounded_file::human(*limit))]
    TooLarge {
        /// The limit in bytes.
        limit: u64,
    },
    /// stdin was not UTF-8.
    #[error("request is not UTF-8 text (invalid byte at offset {offset})")]
    NotUtf8 {
        /// Where the first invalid byte is.
        offset: usize,
    },
    /// Nothing but white space.
    #[error("empty request: expected one JSON object on stdin")]
    Empty,
    /// Not JSON at all.
    #[error("request is not valid JSON: {0}")]
    NotJson(#[source] serde_json::Error),
    /// JSON, but not an object.
    #[error("request must be a JSON object, got {0}")]
    NotObject(&'static str),
    /// `method` is the empty string.
    #[error("request key 'method' is empty")]
    EmptyMethod,
    /// A required key is absent.
    #[error("request has no '{0}' key")]
    Missing(&'static str),
    /// A key holds the wrong JSON type.
    #[error("request key '{key}' must be {expected}, got {got}")]
    WrongType {
        /// The key.
        key: &'static str,
        /// The JSON type it must have.
        expected: &'static str,
        /// The JSON type it has.
        got: &'static str,
    },
    /// `api_version` is a negative or fractional number.
    #[error("request key 'api_version' must be a positive integer, got {0}")]
    BadApiVersion(serde_json::Number),
    /// The async runtime could not start, so the call could not run.
    #[error("cannot start the async runtime: {0}")]
    NoRuntime(#[source] std::io::Error),
    /// The call's handler panicked.
    #[error("internal error while running {method}; see the CPI log")]
    Panicked {
        /// The method that was running.
        method: &'static str,
    },
}

impl From<RequestError> for CpiError {
    fn from(e: RequestError) -> CpiError {
        CpiError::cpi(e.to_string())
    }
}

impl Request {
    /// Parses the raw stdin text. Unknown keys are ignored; a missing or mistyped
    /// `method`/`arguments` is an error that says so.
    pub(crate) fn parse(raw: &str) -> Result<Request, RequestError> {
        if raw.trim().is_empty() {
            return Err(RequestError::Empty);
        }
        let value: Value = serde_json::from_str(raw).map_err(RequestError::NotJson)?;
        let Value::Object(mut object) = value else {
            return Err(RequestError::NotObject(json_type(&value)));
        };
        let method = method_of(object.remove("method"))?;
        let arguments = match object.remove("arguments") {
            Some(Value::Array(a)) => a,
            Some(other) => return Err(wrong_type("arguments", "an array", &other)),
            None => return Err(RequestError::Missing("arguments")),
        };
        let context = match object.remove("context") {
            None | Some(Value::Null) => Map::new(),
            Some(Value::Object(c)) => c,
            Some(other) => return Err(wrong_type("context", "an object", &other)),
        };
        let api_version = api_version_of(object.remove("api_version"))?;
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

/// The `method` key: a non-empty string.
fn method_of(value: Option<Value>) -> Result<String, RequestError> {
    match value {
        Some(Value::String(m)) if !m.is_empty() => Ok(m),
        Some(Value::String(_)) => Err(RequestError::EmptyMethod),
        Some(other) => Err(wrong_type("method", "a string", &other)),
        None => Err(RequestError::Missing("method")),
    }
}

/// The `api_version` key: absent, null, 0 and 1 are V1, any higher integer V2.
fn api_version_of(value: Option<Value>) -> Result<ApiVersion, RequestError> {
    match value {
        None | Some(Value::Null) => Ok(ApiVersion::V1),
        Some(Value::Number(n)) => match n.as_u64() {
            Some(0 | 1) => Ok(ApiVersion::V1),
            Some(_) => Ok(ApiVersion::V2),
            None => Err(RequestError::BadApiVersion(n)),
        },
        Some(other) => Err(wrong_type("api_version", "an integer", &other)),
    }
}

fn wrong_type(key: &'static str, expected: &'static str, got: &Value) -> RequestError {
    RequestError::WrongType {
        key,
        expected,
        got: json_type(got),
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
        let msg = |s: &str| CpiError::from(Request::parse(s).unwrap_err()).message;
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
