//! The error a CPI call answers with, typed by the `Bosh::Clouds::*` classes the
//! director understands.

use std::fmt;

/// The `Bosh::Clouds::*` error classes the BOSH director knows. Any other type string is
/// treated by the director as a fatal "Unknown CPI error", so only these exist here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorKind {
    /// Generic failure of the CPI itself (malformed request, bad configuration).
    CpiError,
    /// The infrastructure failed (etcd or a node unreachable, Docker refused).
    CloudError,
    /// The method exists but this CPI does not support the operation.
    NotSupported,
    /// The method is unknown or not implemented.
    NotImplemented,
    /// The VM does not exist.
    VmNotFound,
    /// A network named in the request does not exist.
    NetworkNotFound,
    /// The disk does not exist.
    DiskNotFound,
    /// The VM could not be created; `ok_to_retry` tells the director whether to retry.
    VmCreationFailed,
}

impl ErrorKind {
    /// The fully qualified type string the director expects in `error.type`.
    pub(crate) fn bosh_type(self) -> &'static str {
        match self {
            ErrorKind::CpiError => "Bosh::Clouds::CpiError",
            ErrorKind::CloudError => "Bosh::Clouds::CloudError",
            ErrorKind::NotSupported => "Bosh::Clouds::NotSupported",
            ErrorKind::NotImplemented => "Bosh::Clouds::NotImplemented",
            ErrorKind::VmNotFound => "Bosh::Clouds::VMNotFound",
            ErrorKind::NetworkNotFound => "Bosh::Clouds::NetworkNotFound",
            ErrorKind::DiskNotFound => "Bosh::Clouds::DiskNotFound",
            ErrorKind::VmCreationFailed => "Bosh::Clouds::VMCreationFailed",
        }
    }
}

/// A failed CPI call: what went wrong, in words an operator can act on, and whether the
/// director may retry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CpiError {
    /// The `Bosh::Clouds::*` class.
    pub(crate) kind: ErrorKind,
    /// Human message naming the offending value (never a secret).
    pub message: String,
    /// Whether a retry of the same call can succeed (honoured by the director for the
    /// retriable classes).
    pub(crate) ok_to_retry: bool,
}

impl CpiError {
    /// An error of `kind` that is not worth retrying.
    pub(crate) fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        CpiError {
            kind,
            message: message.into(),
            ok_to_retry: false,
        }
    }

    /// A malformed request or bad configuration.
    pub(crate) fn cpi(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::CpiError, message)
    }

    /// An infrastructure failure; `retry` says whether trying again can help.
    pub(crate) fn cloud(message: impl Into<String>, retry: bool) -> Self {
        Self::new(ErrorKind::CloudError, message).retriable(retry)
    }

    /// A method this CPI does not (yet) implement.
    pub(crate) fn not_implemented(message: impl Into<String>) -> Self {
        Self::new(ErrorKind::NotImplemented, message)
    }

    /// Sets `ok_to_retry`.
    pub(crate) fn retriable(mut self, retry: bool) -> Self {
        self.ok_to_retry = retry;
        self
    }

    /// Prefixes the message with context (which node, which cid), keeping kind and retry.
    pub(crate) fn context(mut self, context: impl fmt::Display) -> Self {
        self.message = format!("{context}: {}", self.message);
        self
    }
}

impl fmt::Display for CpiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind.bosh_type(), self.message)
    }
}

impl std::error::Error for CpiError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn type_strings_are_the_directors() {
        assert_eq!(
            ErrorKind::VmNotFound.bosh_type(),
            "Bosh::Clouds::VMNotFound"
        );
        assert_eq!(
            ErrorKind::VmCreationFailed.bosh_type(),
            "Bosh::Clouds::VMCreationFailed"
        );
        assert_eq!(ErrorKind::CpiError.bosh_type(), "Bosh::Clouds::CpiError");
    }

    #[test]
    fn context_keeps_kind_and_retry() {
        let e = CpiError::cloud("connection refused", true).context("node n1");
        assert_eq!(e.kind, ErrorKind::CloudError);
        assert!(e.ok_to_retry);
        assert_eq!(e.message, "node n1: connection refused");
    }
}
