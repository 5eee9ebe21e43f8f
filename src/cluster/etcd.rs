//! The connection to etcd, with client TLS and auth from the configuration, and failover
//! between the members of an etcd cluster.
//!
//! A Flatcar cluster runs one etcd member per node, so one member is down whenever its
//! node reboots. gRPC's own balancing keeps sending requests to a member that refuses
//! connections, so [`Etcd`] keeps one client per endpoint, sends each request to the
//! member that answered last, and moves on to the next member when a request fails for a
//! reason a retry can help with. It retries a request only when that cannot apply it
//! twice: reads, plain puts and deletes (idempotent) always; conditional transactions
//! only when the request never reached a leader (connection refused, "no leader"). Every
//! request asks for a leader, so a member cut off from its peers answers at once instead
//! of waiting for a quorum it cannot reach.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use etcd_client::{
    Certificate, Client, ConnectOptions, DeleteOptions, DeleteResponse, GetOptions, GetResponse,
    Identity, LeaseGrantOptions, LeaseGrantResponse, LeaseKeepAliveStream, LeaseKeeper,
    LeaseRevokeResponse, LeaseTimeToLiveOptions, LeaseTimeToLiveResponse, PutOptions, PutResponse,
    TlsOptions, Txn, TxnResponse,
};
use tokio::sync::OnceCell;

use super::error::{EtcdFailure, IndexError};
use crate::config::{Config, ConfigError, Secret, TlsMaterial};
use crate::echo::with_sources;

/// A connection to an etcd cluster: one client per member, the endpoints it was made
/// for (for error messages), and the member requests go to first. Cheap to clone; the
/// clones share the members and the failover.
#[derive(Clone)]
pub struct Etcd {
    members: Arc<Members>,
    endpoints: Vec<String>,
}

/// The members of the cluster and which one answered last.
struct Members {
    list: Vec<Member>,
    current: AtomicUsize,
    options: ConnectOptions,
    /// How long one request may take in all, retries included.
    deadline: Duration,
}

/// One member's endpoint and its client, made on first use (connecting to a member that
/// is down must not keep a call from the others).
struct Member {
    endpoint: String,
    client: OnceCell<Client>,
}

/// Whether a request may be sent again after a failure whose outcome is unknown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Repeat {
    /// Reads, plain puts and deletes, leases: twice is the same as once.
    Safe,
    /// Conditional transactions: only when the first never reached a leader.
    IfNotApplied,
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
    pub(crate) fn from_config(config: &Config) -> Result<EtcdAccess, ConfigError> {
        let cfg = &config.etcd;
        Ok(EtcdAccess {
            endpoints: cfg.endpoints.clone(),
            tls: config.etcd_tls()?,
            auth: cfg.username.clone().zip(cfg.password.clone()),
            timeout: Duration::from_secs(cfg.timeout_seconds),
        })
    }

    /// The options every member's client is made with.
    fn options(&self) -> Result<ConnectOptions, ConfigError> {
        let mut options = ConnectOptions::new()
            .with_connect_timeout(self.timeout)
            .with_timeout(self.timeout)
            .with_keep_alive(KEEP_ALIVE, KEEP_ALIVE_TIMEOUT)
            .with_require_leader(true);
        if let Some(tls) = &self.tls {
            let mut t = TlsOptions::new();
            if let Some(ca) = &tls.ca_cert {
                t = t.ca_certificate(Certificate::from_pem(ca));
            }
            if let (Some(cert), Some(key)) = (&tls.client_cert, &tls.client_key) {
                t = t.identity(Identity::from_pem(cert, key.expose()));
            }
            options = options.with_tls(t);
        } else if self.endpoints.iter().any(|e| e.starts_with("https://")) {
            return Err(ConfigError::invalid(
                "etcd.tls",
                "https endpoints need etcd.tls (at least ca_cert)",
            ));
        }
        if let Some((user, password)) = &self.auth {
            options = options.with_user(user.clone(), password.expose().to_string());
        }
        Ok(options)
    }
}

/// HTTP/2 ping interval: a member that stopped answering is noticed by long-lived clients
/// (the reboot manager, `cpi fleetlock`) within seconds. etcd closes the connection of a
/// client that pings more often than its `--grpc-keepalive-min-time` (5 s by default).
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// How long a ping may go unanswered before the connection counts as dead.
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(5);

/// Pauses between the tries of one request: short, since the next try goes to the next
/// member; longer once every member has been tried (an election takes about a second).
fn pause(tries: u32, members: usize) -> Duration {
    if (tries as usize) < members {
        Duration::from_millis(20)
    } else {
        Duration::from_millis(250)
    }
}

impl Etcd {
    /// Prepares a client per configured endpoint. Nothing is sent yet; an unreachable
    /// etcd shows in the first request as [`IndexError::Unreachable`], naming the
    /// endpoints.
    pub async fn connect(config: &Config) -> Result<Etcd, IndexError> {
        Etcd::connect_with(&EtcdAccess::from_config(config)?).await
    }

    /// Prepares clients with explicit access material (no CPI config needed).
    pub async fn connect_with(access: &EtcdAccess) -> Result<Etcd, IndexError> {
        let options = access.options()?;
        if access.endpoints.is_empty() {
            return Err(ConfigError::invalid("etcd.endpoints", "no endpoint is configured").into());
        }
        let list = access
            .endpoints
            .iter()
            .map(|endpoint| Member {
                endpoint: endpoint.clone(),
                client: OnceCell::new(),
            })
            .collect();
        Ok(Etcd {
            members: Arc::new(Members {
                list,
                current: AtomicUsize::new(0),
                options,
                deadline: access.timeout * 2,
            }),
            endpoints: access.endpoints.clone(),
        })
    }

    /// The requests of the key-value and lease APIs, with failover between members.
    pub fn client(&self) -> Kv {
        Kv { etcd: self.clone() }
    }

    /// Turns an etcd failure during `what` into an [`IndexError`] naming the endpoints.
    pub(crate) fn error(&self, what: &str, e: &etcd_client::Error) -> IndexError {
        failure(&self.endpoints, Some(what), e)
    }

    /// Sends one request to the current member, and again to the next members while a
    /// retry can help, `repeat` allows it and the deadline is not reached.
    async fn request<T, F, Fut>(&self, repeat: Repeat, send: F) -> Result<T, etcd_client::Error>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let members = &self.members;
        let started = Instant::now();
        let mut tries = 0u32;
        loop {
            let index = members.current.load(Ordering::Relaxed);
            crate::roundtrips::etcd();
            let outcome = match members.list[index].client(&members.options).await {
                Ok(client) => send(client).await,
                Err(e) => Err(e),
            };
            let e = match outcome {
                Ok(answer) => return Ok(answer),
                Err(e) if !is_retriable(&e) => return Err(e),
                Err(e) => e,
            };
            // The next request (this one's retry, or a rollback) goes to the next member.
            let next = (index + 1) % members.list.len();
            let _ =
                members
                    .current
                    .compare_exchange(index, next, Ordering::Relaxed, Ordering::Relaxed);
            tries += 1;
            let wait = pause(tries, members.list.len());
            let allowed = repeat == Repeat::Safe || never_applied(&e);
            if !allowed || started.elapsed() + wait >= members.deadline {
                return Err(e);
            }
            tracing::debug!(
                endpoint = %crate::redact::redact_str(&members.list[index].endpoint),
                error = %crate::echo::printable_detail(&describe(&e)),
                "etcd member failed; trying the next"
            );
            tokio::time::sleep(wait).await;
        }
    }
}

impl Member {
    /// The member's client, made once (no request is sent unless etcd auth is on).
    async fn client(&self, options: &ConnectOptions) -> Result<Client, etcd_client::Error> {
        self.client
            .get_or_try_init(|| Client::connect([self.endpoint.as_str()], Some(options.clone())))
            .await
            .cloned()
    }
}

/// The key-value and lease requests the project makes, with [`etcd_client::Client`]'s
/// signatures, each sent with failover between the members.
#[derive(Clone)]
pub struct Kv {
    etcd: Etcd,
}

impl Kv {
    /// Reads a key or a range.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<GetOptions>,
    ) -> Result<GetResponse, etcd_client::Error> {
        let key = key.into();
        let send = |mut c: Client| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.get(key, options).await }
        };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// Writes a key (the same put twice leaves the same value).
    pub async fn put(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        options: Option<PutOptions>,
    ) -> Result<PutResponse, etcd_client::Error> {
        let (key, value) = (key.into(), value.into());
        let send = |mut c: Client| {
            let (key, value, options) = (key.clone(), value.clone(), options.clone());
            async move { c.put(key, value, options).await }
        };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// Deletes a key or a range.
    pub async fn delete(
        &self,
        key: impl Into<Vec<u8>>,
        options: Option<DeleteOptions>,
    ) -> Result<DeleteResponse, etcd_client::Error> {
        let key = key.into();
        let send = |mut c: Client| {
            let (key, options) = (key.clone(), options.clone());
            async move { c.delete(key, options).await }
        };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// Runs a transaction; sent again only when the first try never reached a leader.
    pub(crate) async fn txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.send_txn(Repeat::IfNotApplied, txn).await
    }

    /// Runs a transaction that does the same when run twice (reads only, plain deletes,
    /// deletes conditioned on the value they remove): sent again like any read.
    pub(crate) async fn repeatable_txn(&self, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        self.send_txn(Repeat::Safe, txn).await
    }

    async fn send_txn(&self, repeat: Repeat, txn: Txn) -> Result<TxnResponse, etcd_client::Error> {
        let send = |mut c: Client| {
            let txn = txn.clone();
            async move { c.txn(txn).await }
        };
        self.etcd.request(repeat, send).await
    }

    /// Grants a lease (a lease granted twice expires unused).
    pub(crate) async fn lease_grant(
        &self,
        ttl: i64,
        options: Option<LeaseGrantOptions>,
    ) -> Result<LeaseGrantResponse, etcd_client::Error> {
        let send = |mut c: Client| {
            let options = options.clone();
            async move { c.lease_grant(ttl, options).await }
        };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// Revokes a lease.
    pub async fn lease_revoke(&self, id: i64) -> Result<LeaseRevokeResponse, etcd_client::Error> {
        let send = |mut c: Client| async move { c.lease_revoke(id).await };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// A lease's remaining and granted time (a read).
    pub(crate) async fn lease_time_to_live(
        &self,
        id: i64,
        options: Option<LeaseTimeToLiveOptions>,
    ) -> Result<LeaseTimeToLiveResponse, etcd_client::Error> {
        let send = |mut c: Client| {
            let options = options.clone();
            async move { c.lease_time_to_live(id, options).await }
        };
        self.etcd.request(Repeat::Safe, send).await
    }

    /// Opens a keep-alive stream for a lease on a member that answers; when that member
    /// goes, the stream fails and the caller opens another.
    pub(crate) async fn lease_keep_alive(
        &self,
        id: i64,
    ) -> Result<(LeaseKeeper, LeaseKeepAliveStream), etcd_client::Error> {
        let send = |mut c: Client| async move { c.lease_keep_alive(id).await };
        self.etcd.request(Repeat::Safe, send).await
    }
}

/// Whether a failed request certainly did not change etcd: it never reached a member
/// (connection refused or unreachable) or the member refused it for want of a leader.
fn never_applied(e: &etcd_client::Error) -> bool {
    let text = describe(e).to_ascii_lowercase();
    [
        "tcp connect error",
        "error trying to connect",
        "connection refused",
        "no route to host",
        "etcdserver: no leader",
    ]
    .iter()
    .any(|m| text.contains(m))
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
pub(crate) fn is_retriable(e: &etcd_client::Error) -> bool {
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
    fn only_a_request_that_never_reached_a_leader_counts_as_not_applied() {
        let never = [
            Status::unavailable("tcp connect error: Connection refused (os error 111)"),
            Status::unavailable("etcdserver: no leader"),
        ];
        for status in never {
            assert!(
                never_applied(&etcd_client::Error::GRpcStatus(status.clone())),
                "{status:?}"
            );
        }
        let unknown = [
            Status::unavailable("etcdserver: leader changed"),
            Status::deadline_exceeded("context deadline exceeded"),
            Status::unknown("h2 protocol error: connection reset"),
            Status::cancelled("Timeout expired"),
        ];
        for status in unknown {
            assert!(
                !never_applied(&etcd_client::Error::GRpcStatus(status.clone())),
                "{status:?}"
            );
        }
    }

    #[test]
    fn the_pause_grows_once_every_member_was_tried() {
        assert!(pause(1, 3) < pause(3, 3));
        assert_eq!(pause(2, 3), pause(1, 3));
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
