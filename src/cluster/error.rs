//! What can go wrong reading or writing the cluster's state in etcd, typed so that a caller
//! decides what a failure means; `cloud::errors` says how each answers the director.

use std::fmt;

use crate::config::ConfigError;

/// One etcd request that failed: during what, against which endpoints, in etcd's words
/// (endpoints redacted, words cut short: they may echo a request).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdFailure {
    /// What was being done (`reading /moltencore/vms/vm-...`); none for the connection.
    pub during: Option<String>,
    /// The endpoints, redacted and joined, for the operator to check.
    pub endpoints: String,
    /// etcd's (or the transport's) description with its source chain, printable.
    pub detail: String,
}

impl fmt::Display for EtcdFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(during) = &self.during {
            write!(f, "{during}: ")?;
        }
        write!(f, "etcd at {} failed: {}", self.endpoints, self.detail)
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
    /// A record could not be encoded as JSON (a defect, not the cluster's state).
    #[error("{0}")]
    Encode(String),
    /// The etcd access the configuration describes cannot work.
    #[error(transparent)]
    Config(#[from] ConfigError),
}

impl IndexError {
    /// Whether trying the same request again can succeed.
    pub fn is_retriable(&self) -> bool {
        matches!(self, IndexError::Unreachable(_))
    }
}
