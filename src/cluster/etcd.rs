//! The connection to etcd, with client TLS and auth from the configuration.

use std::time::Duration;

use etcd_client::{Certificate, Client, ConnectOptions, Identity, TlsOptions};

use super::error::{EtcdFailure, IndexError};
use crate::config::{Config, ConfigError, Secret, TlsMaterial};
use crate::echo::with_sources;

/// A connected etcd client plus the endpoints it was made for (for error messages).
#[derive(Clone)]
pub struct Etcd {
    client: Client,
    endpoints: Vec<String>,
}

/// Everything needed to reach etcd, independent of cpi.json: node-prep and the operator's
/// commands connect with endpoints and TLS material from flags, without a CPI config.
#[derive(Debug, Clone)]
pub struct EtcdAccess {
    /// `http(s)://host:port` client URLs.
    pub endpoints: Vec<String>,
    /// Client TLS (CA and client certificate), loaded.
    pub tls: Option<TlsMaterial>,
    /// etcd user and password, when etcd auth is on.
    pub auth: Option<(String, Secret)>,
    /// Connect and request timeout.
    pub timeout: Duration,
}

impl EtcdAccess {
    /// The access described by a CPI configuration.
    pub fn from_config(config: &Config) -> Result<EtcdAccess, ConfigError> {
        let cfg = &config.etcd;
        Ok(EtcdAccess {
            endpoints: cfg.endpoints.clone(),
            tls: config.etcd_tls()?,
            auth: cfg.username.clone().zip(cfg.password.clone()),
            timeout: Duration::from_secs(cfg.timeout_seconds),
        })
    }
}

impl Etcd {
    /// Connects to the configured endpoints. An unreachable etcd is
    /// [`IndexError::Unreachable`], naming the endpoints.
    pub async fn connect(config: &Config) -> Result<Etcd, IndexError> {
        Etcd::connect_with(&EtcdAccess::from_config(config)?).await
    }

    /// Connects with explicit access material (no CPI config needed).
    pub async fn connect_with(access: &EtcdAccess) -> Result<Etcd, IndexError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(access.timeout)
            .with_timeout(access.timeout);
        if let Some(tls) = &access.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_cert {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                t = t.identity(Identity::from_pem(cert, key.expose()));
            }
            options = options.with_tls(t);
        } else if access.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "etcd.tls",
                "https endpoints need etcd.tls (at least ca_cert)",
            )
            .into());
        }
        if let Some((user, password)) = &access.auth {
            options = options.with_user(user.clone(), password.expose().to_string());
        }
        let client = Client::connect(&access.endpoints, Some(options))
            .await
            .map_err(|e| failure(&access.endpoints, None, &e))?;
        Ok(Etcd {
            client,
            endpoints: access.endpoints.clone(),
        })
    }

    /// The endpoints this client was made for, for messages.
    pub fn endpoints(&self) -> &[String] {
        &self.endpoints
    }

    /// The underlying client, for the modules that read and write keys.
    pub fn client(&self) -> Client {
        crate::roundtrips::etcd();
        self.client.clone()
    }

    /// Turns an etcd failure during `what` into an [`IndexError`] naming the endpoints.
    pub fn error(&self, what: &str, e: &etcd_client::Error) -> IndexError {
        failure(&self.endpoints, Some(what), e)
    }
}

/// The typed failure: unreachable or busy (retriable), too large, or refused.
fn failure(endpoints: &[String], during: Option<&str>, e: &etcd_client::Error) -> IndexError {
    let shown: Vec<String> = endpoints
        .iter()
        .map(|e| crate::redact::redact_str(e))
        .collect();
    let failure = EtcdFailure {
        during: during.map(str::to_string),
        endpoints: shown.join(", "),
        detail: crate::echo::printable_detail(&describe(e)),
    };
    if is_retriable(e) {
        IndexError::Unreachable(failure)
    } else if is_request_shape(e) {
        IndexError::TooLarge(failure)
    } else {
        IndexError::Refused(failure)
    }
}

/// Whether etcd refused the request for its size (or a full database): the same request
/// fails every time.
fn is_request_shape(e: &etcd_client::Error) -> bool {
    let etcd_client::Error::GRpcStatus(status) = e else {
        return false;
    };
    let message = status.message().to_ascii_lowercase();
    ["larger than max", "too large", "space exceeded"]
        .iter()
        .any(|m| message.contains(m))
}

/// Whether a retry of the same call can help: the cluster could not be reached or was
/// busy. Not when etcd refused the request itself (auth, permission, bad request) or its
/// shape: a request larger than etcd or gRPC accept (`received message larger than max`,
/// `request is too large`) fails the same way every time, and so does a full database,
/// which needs an operator.
pub fn is_retriable(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match e {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(status) => {
            !is_request_shape(e)
                && matches!(
                    status.code(),
                    Code::Unavailable
                        | Code::DeadlineExceeded
                        | Code::ResourceExhausted
                        | Code::Aborted
                        | Code::Internal
                        | Code::Unknown
                        | Code::Cancelled
                )
        }
        _ => false,
    }
}

/// A one-line description of an etcd error including its source chain (tonic hides the
/// useful part, such as "connection refused" or a certificate problem, in sources).
fn describe(e: &etcd_client::Error) -> String {
    match e {
        etcd_client::Error::GRpcStatus(status) => with_sources(
            format!("{:?}: {}", status.code(), status.message()),
            std::error::Error::source(status),
        ),
        other => with_sources(other.to_string(), std::error::Error::source(other)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tonic::Status;

    #[test]
    fn request_shape_failures_are_never_retriable() {
        for status in [
            Status::resource_exhausted(
                "grpc: received message larger than max (4194410 vs. 2097152)",
            ),
            Status::invalid_argument("etcdserver: request is too large"),
            Status::out_of_range(
                "Error, decoded message length too large: found 5 bytes, the limit is: 4 bytes",
            ),
            Status::resource_exhausted("etcdserver: mvcc: database space exceeded"),
            Status::permission_denied("etcdserver: permission denied"),
            Status::invalid_argument("etcdserver: key is not provided"),
        ] {
            let e = etcd_client::Error::GRpcStatus(status.clone());
            assert!(!is_retriable(&e), "{status:?}");
        }
    }

    #[test]
    fn a_busy_or_unreachable_cluster_is_retriable() {
        for status in [
            Status::unavailable("etcdserver: leader changed"),
            Status::resource_exhausted("etcdserver: too many requests"),
            Status::deadline_exceeded("context deadline exceeded"),
        ] {
            let e = etcd_client::Error::GRpcStatus(status.clone());
            assert!(is_retriable(&e), "{status:?}");
        }
    }

    #[test]
    fn an_echoed_failure_is_cut() {
        let e = etcd_client::Error::GRpcStatus(Status::invalid_argument("x".repeat(1 << 20)));
        let err = failure(&["https://127.0.0.1:2379".into()], None, &e);
        assert!(err.to_string().len() < 1024, "{}", err.to_string().len());
        assert!(!err.is_retriable());
    }

    #[test]
    fn failures_are_typed_by_what_a_retry_can_do() {
        let endpoints = ["https://127.0.0.1:2379".to_string()];
        let typed = |status: Status| {
            failure(
                &endpoints,
                Some("reading k"),
                &etcd_client::Error::GRpcStatus(status),
            )
        };
        assert!(matches!(
            typed(Status::unavailable("etcdserver: leader changed")),
            IndexError::Unreachable(_)
        ));
        assert!(matches!(
            typed(Status::invalid_argument("etcdserver: request is too large")),
            IndexError::TooLarge(_)
        ));
        assert!(matches!(
            typed(Status::resource_exhausted(
                "etcdserver: mvcc: database space exceeded"
            )),
            IndexError::TooLarge(_)
        ));
        let refused = typed(Status::permission_denied("etcdserver: permission denied"));
        assert!(matches!(refused, IndexError::Refused(_)), "{refused:?}");
        assert_eq!(
            refused.to_string(),
            "reading k: etcd at https://127.0.0.1:2379 failed: PermissionDenied: etcdserver: permission denied"
        );
    }
}
