//! What can go wrong talking to a node's Docker, typed by what the daemon answered (its HTTP
//! status) or by how the transport failed, never by the daemon's words. Each error names the
//! node, what was being done and the daemon's own message; what BOSH makes of it is decided
//! above this layer.

use std::fmt;

/// Which node a request went to and what it was for: the start of every message about it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Doing {
    /// Node name.
    pub(crate) node: String,
    /// The node's Docker endpoint as registered.
    pub(crate) endpoint: String,
    /// What was being done ("starting container vm-…").
    pub(crate) what: String,
}

#[cfg(test)]
impl Doing {
    /// A request to node n1, for the unit tests of the error texts and their mapping.
    pub(crate) fn sample() -> Doing {
        Doing {
            node: "n1".into(),
            endpoint: "tcp://10.0.0.1:2376".into(),
            what: "starting container vm-1".into(),
        }
    }
}

impl fmt::Display for Doing {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "node {} ({}): {}", self.node, self.endpoint, self.what)
    }
}

/// A failure of this layer: a request a daemon refused or never answered, or a check of
/// what it sent back.
#[derive(Debug, thiserror::Error)]
pub enum DockerError {
    /// 404: the object does not exist.
    #[error("{at} failed: Docker responded with status code 404: {message}")]
    NotFound { at: Doing, message: String },
    /// 409: the object's name is taken, or it is in use (a volume mounted by a container).
    #[error("{at} failed: Docker responded with status code 409: {message}")]
    Conflict { at: Doing, message: String },
    /// 403: the daemon refuses in its current state (an address already in use on start).
    #[error("{at} failed: Docker responded with status code 403: {message}")]
    Forbidden { at: Doing, message: String },
    /// Any other answer below 500: the request itself is wrong for this daemon.
    #[error("{at} failed: Docker responded with status code {status}: {message}")]
    BadRequest {
        at: Doing,
        status: u16,
        message: String,
    },
    /// 5xx: the daemon failed. `rejected` when the daemon says the request is invalid or its
    /// OCI runtime refused the container (old daemons answer 500 to invalid requests too): such an answer repeats on every retry.
    #[error("{at} failed: Docker responded with status code {status}: {message}")]
    Daemon {
        at: Doing,
        status: u16,
        message: String,
        rejected: bool,
    },
    /// The node did not answer: connect, TLS or the connection failed.
    #[error("{at} failed: {detail}")]
    Unreachable { at: Doing, detail: String },
    /// The node did not answer a request within its timeout.
    #[error("{at} failed: {detail}")]
    Timeout { at: Doing, detail: String },
    /// The node sent or took nothing for its idle timeout in the middle of a transfer.
    #[error("{at}: nothing moved for {secs} s")]
    Stalled { at: Doing, secs: u64 },
    /// The node left an answer pending past its idle timeout and then missed a ping.
    #[error("{at}: no answer for {secs} s, and no answer to a ping: {detail}")]
    Unanswered {
        at: Doing,
        secs: u64,
        detail: String,
    },
    /// The daemon reported a failure inside a streamed answer (an import or a pull).
    #[error("{at} failed: {detail}")]
    Stream { at: Doing, detail: String },
    /// The client could not build the request or read the answer (bad JSON, bad URL).
    #[error("{at} failed: {detail}")]
    Client { at: Doing, detail: String },
    /// A name this layer would put into an API path is not a Docker object name.
    #[error(
        "'{shown}' is not a Docker object name ([a-zA-Z0-9][a-zA-Z0-9_.-]*, at most {max} characters)"
    )]
    InvalidName { shown: String, max: usize },
    /// A reference this layer would put into an API path is not a Docker image reference.
    #[error("'{shown}' is not a Docker image reference ([host[:port]/]path[:tag][@sha256:hex])")]
    InvalidReference { shown: String },
    /// The TLS material, an endpoint or the client cannot be set up.
    #[error("{message}")]
    Setup { message: String },
    /// The Docker client for a node cannot be made (its endpoint or API version).
    #[error("node {node}: docker client setup failed: {source}")]
    ClientSetup {
        node: String,
        #[source]
        source: bollard::errors::Error,
    },
    /// The TLS material (cluster CA, client certificate and key) cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// The node's network of that name is not on the node's subnet.
    #[error(
        "node {node}: docker network {network} has subnet [{found}] but the node's Flannel subnet is {subnet} gateway {gateway}; remove or fix the network (cpi node-prep recreates it)"
    )]
    NetworkMismatch {
        node: String,
        network: String,
        found: String,
        subnet: String,
        gateway: String,
    },
    /// A file read from a container is larger than this layer reads.
    #[error(
        "node {node}: {path} in container {container} is larger than the {limit} limit for {what}"
    )]
    TooLarge {
        node: String,
        path: String,
        container: String,
        limit: String,
        what: &'static str,
    },
    /// An archive a node sent cannot be read.
    #[error("node {node}: {what}: {source}")]
    Archive {
        node: String,
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A task of a transfer ended without an answer (it panicked or was cancelled).
    #[error("{what} failed: {source}")]
    Task {
        what: String,
        #[source]
        source: tokio::task::JoinError,
    },
    /// A copy finished but its result is not what was sent.
    #[error("{message}")]
    Verify { message: String },
    /// A command the CPI runs in a VM (formatting or copying a disk, unmounting it) failed.
    #[error("node {node}: `{command}` in VM {vm} failed (exit code {code}): {detail}")]
    InVm {
        node: String,
        vm: String,
        command: String,
        code: i64,
        detail: String,
    },
    /// The node's mounter (see [`super::mounter`]) could not do what it was asked.
    #[error("node {node}: mc-mounter {command} failed (exit code {code}): {detail}")]
    Mount {
        node: String,
        command: String,
        code: i64,
        detail: String,
    },
    /// The data to send is bad (a stemcell image unreadable or failing its check).
    #[error("{message}")]
    Source { message: String },
    /// The in-memory root of one of the CPI's own helper images cannot be built.
    #[error("cannot build the image {reference}: {source}")]
    HelperImage {
        reference: String,
        #[source]
        source: std::io::Error,
    },
    /// The source of a fan-out import could not be read or failed its check.
    #[error(transparent)]
    SourceRead(#[from] SourceError),
}

/// Why the source of a fan-out import (a stemcell image) yields no image on any node.
#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// Reading the source failed.
    #[error("reading the stemcell image failed: {0}")]
    Read(#[source] std::io::Error),
    /// The task reading the source ended without finishing (it panicked).
    #[error("reading the stemcell image failed: {0}")]
    Reader(#[source] tokio::task::JoinError),
    /// The stream's check refused the whole source; its words say why.
    #[error("{reason}")]
    Rejected {
        /// The check's own account (a digest mismatch, say).
        reason: String,
    },
}

/// Why the PEM text for the Docker client's mutual TLS cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The cluster CA's PEM does not parse.
    #[error("Docker CA certificate is not valid PEM: {0}")]
    CaPem(#[source] rustls::pki_types::pem::Error),
    /// The cluster CA's PEM holds no certificate.
    #[error("Docker CA certificate PEM holds no certificate")]
    NoCaCert,
    /// A certificate of the cluster CA cannot be a trust anchor.
    #[error("Docker CA certificate is unusable: {0}")]
    CaUnusable(#[source] rustls::Error),
    /// The client certificate's PEM does not parse.
    #[error("Docker client certificate is not valid PEM: {0}")]
    ClientCertPem(#[source] rustls::pki_types::pem::Error),
    /// The client certificate's PEM holds no certificate.
    #[error("Docker client certificate PEM holds no certificate")]
    NoClientCert,
    /// The client key's PEM holds no usable private key.
    #[error("Docker client key is not a valid PEM private key")]
    ClientKeyPem(#[source] rustls::pki_types::pem::Error),
    /// rustls refuses its default protocol versions with this provider.
    #[error("TLS setup failed: {0}")]
    Protocol(#[source] rustls::Error),
    /// The client certificate and key are not a pair.
    #[error("Docker client certificate and key do not fit: {0}")]
    CertKeyMismatch(#[source] rustls::Error),
}

impl DockerError {
    /// The error for `e`, from a request described by `at`: typed by the status the daemon
    /// answered or by how the transport failed.
    pub(crate) fn from_bollard(at: Doing, e: &bollard::errors::Error) -> DockerError {
        use bollard::errors::Error as E;
        match e {
            E::DockerResponseServerError {
                status_code,
                message,
            } => from_status(at, *status_code, message.clone()),
            E::IOError { .. } | E::HyperResponseError { .. } => DockerError::Unreachable {
                at,
                detail: describe(e),
            },
            E::RequestTimeoutError => DockerError::Timeout {
                at,
                detail: describe(e),
            },
            E::DockerStreamError { .. } | E::DockerContainerWaitError { .. } => {
                DockerError::Stream {
                    at,
                    detail: describe(e),
                }
            }
            _ => DockerError::Client {
                at,
                detail: describe(e),
            },
        }
    }

    /// The daemon's own message, for the statuses that carry one.
    #[cfg(test)]
    fn daemon_message(&self) -> Option<&str> {
        match self {
            DockerError::NotFound { message, .. }
            | DockerError::Conflict { message, .. }
            | DockerError::Forbidden { message, .. }
            | DockerError::BadRequest { message, .. }
            | DockerError::Daemon { message, .. } => Some(message),
            _ => None,
        }
    }
}

/// The variant for an HTTP status the daemon answered with.
fn from_status(at: Doing, status: u16, message: String) -> DockerError {
    match status {
        404 => DockerError::NotFound { at, message },
        409 => DockerError::Conflict { at, message },
        403 => DockerError::Forbidden { at, message },
        500.. => {
            let m = message.to_ascii_lowercase();
            let rejected = m.contains("invalid") || m.contains("oci runtime");
            DockerError::Daemon {
                at,
                status,
                message,
                rejected,
            }
        }
        _ => DockerError::BadRequest {
            at,
            status,
            message,
        },
    }
}

/// Whether Docker answered `e` with HTTP status `code` (304: already so, 404: absent).
pub(super) fn is_status(e: &bollard::errors::Error, code: u16) -> bool {
    matches!(e, bollard::errors::Error::DockerResponseServerError { status_code, .. } if *status_code == code)
}

/// An error with its source chain, so "connection refused" or a certificate rejection is
/// visible instead of a bare "client error".
pub(crate) fn describe(e: &bollard::errors::Error) -> String {
    crate::echo::with_sources(e.to_string(), std::error::Error::source(e))
}

#[cfg(test)]
mod tests {
    use super::*;
    use bollard::errors::Error as E;

    fn at() -> Doing {
        Doing::sample()
    }

    fn answered(status_code: u16, message: &str) -> DockerError {
        DockerError::from_bollard(
            at(),
            &E::DockerResponseServerError {
                status_code,
                message: message.into(),
            },
        )
    }

    #[test]
    fn statuses_give_the_variant_whatever_the_message() {
        assert!(matches!(answered(404, "x"), DockerError::NotFound { .. }));
        assert!(matches!(answered(409, "x"), DockerError::Conflict { .. }));
        assert!(matches!(
            answered(403, "Address already in use"),
            DockerError::Forbidden { .. }
        ));
        // The words do not decide: a 400 that says "already in use" is still a 400.
        assert!(matches!(
            answered(400, "already in use"),
            DockerError::BadRequest { status: 400, .. }
        ));
        assert!(matches!(
            answered(401, "x"),
            DockerError::BadRequest { status: 401, .. }
        ));
        assert!(matches!(
            answered(500, "disk full"),
            DockerError::Daemon {
                status: 500,
                rejected: false,
                ..
            }
        ));
        assert!(matches!(
            answered(503, "x"),
            DockerError::Daemon { status: 503, .. }
        ));
    }

    #[test]
    fn an_old_daemons_500_for_an_invalid_request_is_rejected() {
        for m in ["invalid mount config", "OCI runtime create failed"] {
            assert!(
                matches!(answered(500, m), DockerError::Daemon { rejected: true, .. }),
                "{m}"
            );
        }
    }

    #[test]
    fn transport_failures_are_unreachable_or_timeout() {
        let io = E::from(std::io::Error::other("connection refused"));
        let e = DockerError::from_bollard(at(), &io);
        assert!(matches!(e, DockerError::Unreachable { .. }));
        assert!(e.to_string().contains("connection refused"), "{e}");
        assert!(matches!(
            DockerError::from_bollard(at(), &E::RequestTimeoutError),
            DockerError::Timeout { .. }
        ));
        assert!(matches!(
            DockerError::from_bollard(
                at(),
                &E::DockerStreamError {
                    error: "no space".into()
                }
            ),
            DockerError::Stream { .. }
        ));
        assert!(matches!(
            DockerError::from_bollard(at(), &E::APIVersionParseError {}),
            DockerError::Client { .. }
        ));
    }

    #[test]
    fn messages_name_the_node_the_action_and_the_daemons_words() {
        let e = answered(409, "name in use");
        assert_eq!(
            e.to_string(),
            "node n1 (tcp://10.0.0.1:2376): starting container vm-1 failed: Docker responded with status code 409: name in use"
        );
        assert_eq!(e.daemon_message(), Some("name in use"));
        let stalled = DockerError::Stalled { at: at(), secs: 30 };
        assert_eq!(
            stalled.to_string(),
            "node n1 (tcp://10.0.0.1:2376): starting container vm-1: nothing moved for 30 s"
        );
        assert_eq!(stalled.daemon_message(), None);
    }
}
