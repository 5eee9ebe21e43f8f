//! Why node-prep stopped, by cause, each variant carrying what was being done. Every
//! message is whole on its own (the cause's text included), so the error has no
//! `source()`: a printer that walks a chain would only repeat it.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;

use crate::bounded_file::ReadError;
use crate::node_name::BadNodeName;

/// A node-prep failure; nothing after the step that failed has run.
#[derive(Debug, thiserror::Error)]
pub enum NodePrepError {
    /// etcd could not be reached at all.
    #[error(
        "{detail}\ncannot use etcd at {endpoints}: check --etcd-endpoints and the client TLS flags (--etcd-ca, --etcd-cert, --etcd-key), and that etcd is running"
    )]
    EtcdUnreachable {
        /// The endpoints tried, comma separated.
        endpoints: String,
        detail: String,
    },
    /// An etcd request failed; the message names the request and the endpoints.
    #[error("{message}")]
    Etcd { message: String },
    /// A flag's value cannot be used.
    #[error("{0}")]
    Flag(String),
    /// Who this node is could not be settled (name, private IP).
    #[error("{0}")]
    Identity(String),
    /// The node name breaks the rules of node names.
    #[error("{0}; set it with --name")]
    BadName(BadNodeName),
    /// `--docker-bip` would put docker0 on the flannel network.
    #[error(
        "--docker-bip {bip} overlaps the flannel network {network}: docker0 must stay off it (the default is 10.255.240.1/20)"
    )]
    BipOverlap { bip: Ipv4Net, network: Ipv4Net },
    /// Another host holds this node name.
    #[error("{}", name_taken(name, *registered, *this_host, *just_now))]
    NameTaken {
        name: String,
        registered: Ipv4Addr,
        this_host: Ipv4Addr,
        /// Found at the write, after the check before the first write had passed.
        just_now: bool,
    },
    /// A node record could not be used or written.
    #[error("{0}")]
    NodeRecord(String),
    /// The cluster CA in etcd is incomplete or missing.
    #[error("{0}")]
    ClusterCa(String),
    /// A certificate could not be made or read (kept typed, not as a `source()`: the
    /// message includes it).
    #[error("{0}")]
    Certificate(PkiError),
    /// The cluster CA in etcd (at `at`, its two keys) cannot sign.
    #[error("the cluster CA at {at} is unusable: {cause}")]
    UnusableCa { at: String, cause: PkiError },
    /// The flannel config, a subnet lease or `subnet.env` does not allow going on.
    #[error("{0}")]
    Flannel(String),
    /// A Docker API call failed.
    #[error("docker at {host}: {doing}: {detail}")]
    Docker {
        host: String,
        doing: String,
        detail: String,
    },
    /// A Docker network on the node is in the way of the BOSH network.
    #[error("{0}")]
    DockerNetwork(String),
    /// A file below the root could not be written, inspected or removed.
    #[error("cannot {action} {}: {error}", crate::echo::printable_path(path))]
    File {
        action: &'static str,
        path: PathBuf,
        error: std::io::Error,
    },
    /// A file below the root could not be read.
    #[error("{0}")]
    Read(ReadError),
    /// A command (systemctl, iptables) could not be started.
    #[error(
        "cannot run {command}: {error}{}",
        if .error.kind() == std::io::ErrorKind::NotFound { " (is it installed?)" } else { "" }
    )]
    CommandNotRun {
        command: String,
        error: std::io::Error,
    },
    /// A command ran and failed.
    #[error("{doing} failed ({status}): {stderr}")]
    CommandFailed {
        doing: String,
        status: String,
        stderr: String,
    },
    /// This machine's CPUs could not be counted.
    #[error("cannot count this machine's CPUs: {error}")]
    CpuCount { error: std::io::Error },
    /// `/proc/meminfo` could not be read.
    #[error("cannot read /proc/meminfo: {error}")]
    Meminfo { error: ReadError },
    /// `/proc/meminfo` does not say how much memory there is.
    #[error("/proc/meminfo has no MemTotal")]
    NoMemTotal,
    /// A node record in etcd cannot be used (`problem`: "not JSON", "unreadable").
    #[error("node record {key} is {problem}; run node-prep on that node: {error}")]
    NodeRecordUnusable {
        key: String,
        problem: &'static str,
        error: serde_json::Error,
    },
    /// A node state could not be encoded as JSON for its record.
    #[error("cannot encode state {state} as JSON: {error}")]
    EncodeState {
        state: crate::cluster::NodeState,
        error: serde_json::Error,
    },
    /// A value could not be encoded as JSON (for etcd or the report).
    #[error("cannot encode {what} as JSON: {error}")]
    Encode {
        what: String,
        error: serde_json::Error,
    },
}

/// Why a certificate could not be made or read.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// A certificate (`what` names it) could not be made.
    #[error("{what}: {cause}")]
    Make {
        what: String,
        #[source]
        cause: MakeError,
    },
    /// The text is not a PEM certificate (`whose`: "" or "the CA is ").
    #[error("{whose}not a PEM certificate: {source}")]
    NotPem {
        whose: &'static str,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::PEMError>,
    },
    /// The PEM block is not an X.509 certificate (`whose`: "" or "the CA is ").
    #[error("{whose}not an X.509 certificate: {source}")]
    NotX509 {
        whose: &'static str,
        #[source]
        source: x509_parser::nom::Err<x509_parser::error::X509Error>,
    },
}

/// The step of making a certificate that failed.
#[derive(Debug, thiserror::Error)]
pub enum MakeError {
    /// No key for the CA.
    #[error("cannot generate the CA key: {0}")]
    CaKey(#[source] rcgen::Error),
    /// The CA certificate could not be signed by its own key.
    #[error("cannot self-sign the CA certificate: {0}")]
    SelfSign(#[source] rcgen::Error),
    /// The system gave no random bytes.
    #[error("no randomness for a certificate serial")]
    NoRandomness,
    /// The CA key cannot sign.
    #[error("the CA key is not usable: {0}")]
    CaKeyUnusable(#[source] rcgen::Error),
    /// The CA certificate cannot be an issuer.
    #[error("the CA certificate is not usable: {0}")]
    CaCertUnusable(#[source] rcgen::Error),
    /// No key for the new certificate.
    #[error("cannot generate a key: {0}")]
    Key(#[source] rcgen::Error),
    /// The CA could not sign the new certificate.
    #[error("cannot sign: {0}")]
    Sign(#[source] rcgen::Error),
    /// A SAN is no IP address.
    #[error("'{ip}' is not a usable IP address: {source}")]
    BadIp {
        ip: String,
        #[source]
        source: std::net::AddrParseError,
    },
    /// A SAN is no DNS name.
    #[error("'{dns}' is not a usable DNS name: {source}")]
    BadDns {
        dns: String,
        #[source]
        source: rcgen::Error,
    },
}

fn name_taken(name: &str, registered: Ipv4Addr, this_host: Ipv4Addr, just_now: bool) -> String {
    if just_now {
        format!(
            "node name {name} was just registered by another host (private IP {registered}; this host: {this_host}); give this host another --name"
        )
    } else {
        format!(
            "node name {name} is already registered with private IP {registered} (this host: {this_host}); give this host another --name, or pass --replace if it replaces that host"
        )
    }
}

impl From<PkiError> for NodePrepError {
    fn from(e: PkiError) -> NodePrepError {
        NodePrepError::Certificate(e)
    }
}

impl From<ReadError> for NodePrepError {
    fn from(e: ReadError) -> NodePrepError {
        NodePrepError::Read(e)
    }
}

impl NodePrepError {
    /// A failed write, stat or removal of `path`.
    pub(crate) fn file(
        action: &'static str,
        path: impl Into<PathBuf>,
        error: std::io::Error,
    ) -> Self {
        NodePrepError::File {
            action,
            path: path.into(),
            error,
        }
    }

    /// A JSON encoding failure of `what`.
    pub(crate) fn encode(what: impl Into<String>, error: serde_json::Error) -> Self {
        NodePrepError::Encode {
            what: what.into(),
            error,
        }
    }
}

/// The results of node-prep's functions.
pub(crate) type Result<T, E = NodePrepError> = std::result::Result<T, E>;

/// `serde_json::to_string`, failing as [`NodePrepError::Encode`] naming `what`.
pub(crate) fn to_json<T: serde::Serialize + ?Sized>(value: &T, what: &str) -> Result<String> {
    serde_json::to_string(value).map_err(|e| NodePrepError::encode(what, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_name_clash_says_what_to_do() {
        let e = NodePrepError::NameTaken {
            name: "n1".into(),
            registered: Ipv4Addr::new(192, 0, 2, 1),
            this_host: Ipv4Addr::new(192, 0, 2, 2),
            just_now: false,
        };
        assert_eq!(
            e.to_string(),
            "node name n1 is already registered with private IP 192.0.2.1 (this host: 192.0.2.2); give this host another --name, or pass --replace if it replaces that host"
        );
        let e = NodePrepError::NameTaken {
            name: "n1".into(),
            registered: Ipv4Addr::new(192, 0, 2, 1),
            this_host: Ipv4Addr::new(192, 0, 2, 2),
            just_now: true,
        };
        assert_eq!(
            e.to_string(),
            "node name n1 was just registered by another host (private IP 192.0.2.1; this host: 192.0.2.2); give this host another --name"
        );
    }

    #[test]
    fn a_missing_command_hints_at_installing_it() {
        let e = NodePrepError::CommandNotRun {
            command: "iptables".into(),
            error: std::io::Error::from(std::io::ErrorKind::NotFound),
        };
        assert!(e.to_string().ends_with("(is it installed?)"), "{e}");
    }
}
