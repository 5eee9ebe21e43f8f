//! What can go wrong reading or writing the cluster's state in etcd, typed so that a caller
//! decides what a failure means; `cloud::errors` says how each answers the director.

use std::fmt;
use std::sync::Arc;

use crate::config::ConfigError;

/// One etcd request that failed: during what, against which endpoints, in etcd's words
/// (endpoints redacted, words cut short: they may echo a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFailure {
    /// What was being done (`reading /moltencore/vms/vm-...`); none for the connection.
    pub(crate) during: Option<String>,
    /// The endpoints, redacted and joined, for the operator to check.
    pub(crate) endpoints: String,
    /// etcd's (or the transport's) description with its source chain, printable.
    pub(crate) detail: String,
}

impl fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(during) = &self.during {
            write!(f, "{during}: ")?;
        }
        write!(f, "etcd at {} failed: {}", self.endpoints, self.detail)
    }
}

/// A serde_json error an [`IndexError`] keeps as its source: shared, so the error stays
/// `Clone`, and equal to another that says the same (errors of the reboot layer compare).
#[derive(Debug, Clone)]
pub struct JsonError(Arc<serde_json::Error>);

impl fmt::Display for JsonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for JsonError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

impl PartialEq for JsonError {
    fn eq(&self, other: &JsonError) -> bool {
        self.0.to_string() == other.0.to_string()
    }
}

/// A failure of the cluster index (etcd), by what a caller can do about it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum IndexError {
    /// etcd could not be reached, timed out or was busy (leader change, too many
    /// requests): a retry can help.
    #[error("{0}")]
    Unreachable(EtcdFailure),
    /// The request is larger than etcd or gRPC accept, or etcd's database is full: the
    /// same request fails every time (a full database needs an operator).
    #[error("{0}")]
    TooLarge(EtcdFailure),
    /// etcd refused the request itself (authentication, permission, a bad request).
    #[error("{0}")]
    Refused(EtcdFailure),
    /// A record exists but cannot be parsed; the text names its key. Never "absent".
    #[error("{0}")]
    Malformed(String),
    /// The record at `key` exists but is not the JSON of its kind. Never "absent".
    #[error("index record {key} is unreadable: {source}")]
    Unreadable {
        /// The record's key.
        key: String,
        /// Why its JSON does not parse.
        #[source]
        source: JsonError,
    },
    /// A record could not be encoded as JSON (a defect, not the cluster's state).
    #[error("cannot encode {what}: {source}")]
    Encode {
        /// Which record ("index record /moltencore/vms/vm-…", "an address claim").
        what: String,
        /// Why serde_json refused it.
        #[source]
        source: JsonError,
    },
    /// The etcd access the configuration describes cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl IndexError {
    /// The record at `key` does not parse as JSON of its kind.
    pub(crate) fn unreadable(key: &str, source: serde_json::Error) -> IndexError {
        IndexError::Unreadable {
            key: key.to_string(),
            source: JsonError(Arc::new(source)),
        }
    }

    /// `what` (a record, a claim) cannot be encoded as JSON.
    pub(crate) fn encode(what: impl Into<String>, source: serde_json::Error) -> IndexError {
        IndexError::Encode {
            what: what.into(),
            source: JsonError(Arc::new(source)),
        }
    }

    /// Whether trying the same request again can succeed.
    pub(crate) fn is_retriable(&self) -> bool {
        matches!(self, IndexError::Unreachable(_))
    }
}
