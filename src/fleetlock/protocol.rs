//! The FleetLock protocol (as Zincati defines it): which request is which, the body
//! `{"client_params":{"group":...,"id":...}}`, the `fleet-lock-protocol: true` header, and
//! the error body `{"kind":...,"value":...}` every refusal carries. Pure: no I/O here.

use serde::{Deserialize, Serialize};

use crate::reboot::semaphore::{Group, cut};

/// The header every lock and unlock request must carry, with the value `true`.
pub(crate) const HEADER: &str = "fleet-lock-protocol";
/// Longest client id accepted.
const ID_MAX_LEN: usize = 256;
/// How much of a hostile value an error message repeats.
const SHOWN: usize = 64;

/// The two operations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Operation {
    /// `POST /v1/pre-reboot`: take (recursively) a reboot slot.
    PreReboot,
    /// `POST /v1/steady-state`: give back the slot, if held.
    SteadyState,
}

/// A validated request: who asks for what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Request {
    pub(crate) operation: Operation,
    pub(crate) group: Group,
    pub(crate) id: String,
}

/// A refusal: HTTP status and FleetLock's error body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Refusal {
    #[serde(skip)]
    pub(crate) status: u16,
    /// A short, bounded identifier (metrics label on the client side).
    pub(crate) kind: &'static str,
    /// What is wrong, for the administrator.
    pub(crate) value: String,
}

impl Refusal {
    /// A refusal with `status`, `kind` and `value`.
    pub(crate) fn new(status: u16, kind: &'static str, value: impl Into<String>) -> Refusal {
        Refusal {
            status,
            kind,
            value: value.into(),
        }
    }

    /// The JSON body.
    pub(crate) fn body(&self) -> String {
        serde_json::to_string(self).expect("a refusal serializes")
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    client_params: ClientParams,
}

#[derive(Deserialize)]
struct ClientParams {
    group: String,
    id: String,
}

/// Which operation `method` and `path` name.
pub(crate) fn route(method: &str, path: &str) -> Result<Operation, Refusal> {
    let operation = match path {
        "/v1/pre-reboot" => Operation::PreReboot,
        "/v1/steady-state" => Operation::SteadyState,
        other => {
            return Err(Refusal::new(
                404,
                "not_found",
                format!(
                    "no FleetLock endpoint at '{}' (POST /v1/pre-reboot or /v1/steady-state)",
                    cut(other, SHOWN)
                ),
            ));
        }
    };
    if method != "POST" {
        return Err(Refusal::new(
            405,
            "method_not_allowed",
            format!("{path} takes POST, not {}", cut(method, 16)),
        ));
    }
    Ok(operation)
}

/// Checks the protocol header (absent, repeated or not `true` is refused).
pub(crate) fn check_header(values: &[&[u8]]) -> Result<(), Refusal> {
    match values {
        [v] if v.trim_ascii() == b"true" => Ok(()),
        [] => Err(Refusal::new(
            400,
            "missing_fleet_lock_header",
            format!("the request has no '{HEADER}: true' header"),
        )),
        _ => Err(Refusal::new(
            400,
            "bad_fleet_lock_header",
            format!("the '{HEADER}' header must be given once, with the value 'true'"),
        )),
    }
}

/// Why a request body is refused; each becomes a 400 [`Refusal`].
#[derive(Debug, thiserror::Error)]
enum BodyError {
    /// Not the protocol's JSON (the parser's words cut short).
    #[error(
        "the body is not {{\"client_params\":{{\"group\":...,\"id\":...}}}}: {}",
        cut(&.0.to_string(), 120)
    )]
    NotJson(serde_json::Error),
    /// The client id is empty, too long or not printable (cut short).
    #[error("client_params.id '{}' must be 1-{ID_MAX_LEN} printable characters", cut(.0, SHOWN).escape_default())]
    BadId(String),
    /// The group is no group name.
    #[error("client_params.group: {0}")]
    BadGroup(crate::reboot::error::SemaphoreError),
    /// The group is not one this endpoint serves.
    #[error("reboot group '{group}' is not served here (served: {})", served.join(", "))]
    UnknownGroup { group: Group, served: Vec<String> },
}

impl From<BodyError> for Refusal {
    fn from(e: BodyError) -> Refusal {
        let kind = match e {
            BodyError::UnknownGroup { .. } => "unknown_group",
            _ => "bad_request_body",
        };
        Refusal::new(400, kind, e.to_string())
    }
}

/// Parses the body of `operation`: the group must be one of `groups`.
pub(crate) fn parse(
    operation: Operation,
    body: &[u8],
    groups: &[Group],
) -> Result<Request, Refusal> {
    Ok(parse_body(operation, body, groups)?)
}

fn parse_body(operation: Operation, body: &[u8], groups: &[Group]) -> Result<Request, BodyError> {
    let parsed: Body = serde_json::from_slice(body).map_err(BodyError::NotJson)?;
    let ClientParams { group, id } = parsed.client_params;
    if id.is_empty() || id.len() > ID_MAX_LEN || id.chars().any(char::is_control) {
        return Err(BodyError::BadId(id));
    }
    let group = Group::parse(&group).map_err(BodyError::BadGroup)?;
    if !groups.contains(&group) {
        return Err(BodyError::UnknownGroup {
            group,
            served: groups.iter().map(Group::to_string).collect(),
        });
    }
    Ok(Request {
        operation,
        group,
        id,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn groups() -> Vec<Group> {
        vec![Group::default_group()]
    }

    #[test]
    fn the_two_endpoints_take_post_only() {
        assert_eq!(
            route("POST", "/v1/pre-reboot").unwrap(),
            Operation::PreReboot
        );
        assert_eq!(
            route("POST", "/v1/steady-state").unwrap(),
            Operation::SteadyState
        );
        assert_eq!(route("GET", "/v1/pre-reboot").unwrap_err().status, 405);
        let r = route("POST", &format!("/{}", "x".repeat(5000))).unwrap_err();
        assert_eq!((r.status, r.kind), (404, "not_found"));
        assert!(r.value.len() < 200);
    }

    #[test]
    fn the_header_must_say_true_once() {
        assert!(check_header(&[b"true"]).is_ok());
        assert_eq!(
            check_header(&[]).unwrap_err().kind,
            "missing_fleet_lock_header"
        );
        assert_eq!(
            check_header(&[b"false"]).unwrap_err().kind,
            "bad_fleet_lock_header"
        );
        assert_eq!(check_header(&[b"true", b"true"]).unwrap_err().status, 400);
    }

    #[test]
    fn bodies_are_parsed_strictly() {
        let ok = parse(
            Operation::PreReboot,
            br#"{"client_params":{"group":"default","id":"c988d2509fdf"}}"#,
            &groups(),
        )
        .unwrap();
        assert_eq!(ok.id, "c988d2509fdf");
        for (body, kind) in [
            (&b"nope"[..], "bad_request_body"),
            (
                br#"{"client_params":{"group":"default"}}"#,
                "bad_request_body",
            ),
            (
                br#"{"client_params":{"group":"default","id":""}}"#,
                "bad_request_body",
            ),
            (
                br#"{"client_params":{"group":"a b","id":"x"}}"#,
                "bad_request_body",
            ),
            (
                br#"{"client_params":{"group":"other","id":"x"}}"#,
                "unknown_group",
            ),
        ] {
            let r = parse(Operation::PreReboot, body, &groups()).unwrap_err();
            assert_eq!(r.kind, kind, "{}", String::from_utf8_lossy(body));
            assert_eq!(r.status, 400);
            let doc: serde_json::Value = serde_json::from_str(&r.body()).unwrap();
            assert!(doc["kind"].as_str().is_some_and(|k| !k.is_empty()));
            assert!(doc["value"].as_str().is_some_and(|v| !v.is_empty()));
        }
    }
}
