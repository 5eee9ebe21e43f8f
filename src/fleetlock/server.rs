//! The FleetLock HTTP server (hyper, HTTP/1.1, optional TLS): every request is bounded
//! (one deadline for handshake, headers and body; body size; header buffer) and so is the
//! number of connections, of which those that have not completed a request are shed
//! oldest first (see [`super::registry`]), so a slow or hostile client gets the
//! protocol's error or a closed socket, and never keeps others from being answered.

use std::collections::HashMap;
use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use etcd_client::GetOptions;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use super::protocol::{self, HEADER, Operation, Refusal};
use super::registry::{Admission, Closed, Limits, Registry, Ticket};
use crate::cluster::{Etcd, Keys};
use crate::nodeprep::register::now_rfc3339;
use crate::reboot::semaphore::{Group, Holder, HolderKind, Semaphore, SemaphoreError, Take};

/// Largest request body read (a FleetLock body is well under 1 KiB).
pub const MAX_BODY: usize = 16 * 1024;
/// Largest buffer of request headers (hyper's minimum; FleetLock headers are a few lines).
const MAX_HEADER_BUFFER: usize = 8 * 1024;
/// Time a connection has to complete one request: TLS handshake, headers and body
/// together, from its accept (or, kept alive, from its previous answer).
pub const REQUEST_DEADLINE: Duration = Duration::from_secs(10);
/// Connections open at once (each holds a file descriptor and at most
/// [`MAX_HEADER_BUFFER`] + [`MAX_BODY`] of buffers).
pub const MAX_CONNECTIONS: usize = 1024;
/// Longest a connection stays open, requests included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How many times an admission lets the other tasks run (so that new connections are
/// read) before one of the connections not yet read is shed.
const ADMISSION_ROUNDS: usize = 32;
/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
pub const LISTEN_BACKLOG: u32 = 4096;
/// How often connections past their deadline are closed.
const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the counts of closed connections are logged (when not zero).
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The limits the server enforces, given the connections it may open.
fn limits(connections: usize) -> Limits {
    Limits {
        connections,
        request_deadline: REQUEST_DEADLINE,
        body_grace: Duration::from_secs(1),
    }
}

/// The node records, read to refuse FleetLock ids that name a node: such a client would
/// hold its slot under the node's name, and that node's manager would take it for its own.
struct NodeNames {
    etcd: Etcd,
    keys: Keys,
}

impl NodeNames {
    async fn names_a_node(&self, id: &str) -> Result<bool, Refusal> {
        let options = GetOptions::new().with_count_only();
        let found = self
            .etcd
            .client()
            .get(self.keys.node(id), Some(options))
            .await
            .map_err(|e| {
                let e = self.etcd.error("reading the node records", &e);
                Refusal::new(503, "semaphore_unavailable", e.to_string())
            })?;
        Ok(found.count() > 0)
    }
}

/// What the server answers with: one semaphore per served group.
pub struct FleetLock {
    groups: Vec<Group>,
    semaphores: HashMap<Group, Semaphore>,
    nodes: NodeNames,
}

impl FleetLock {
    /// Serves the groups of `semaphores`; ids that name a node under `keys` are refused.
    pub fn new(semaphores: Vec<Semaphore>, etcd: Etcd, keys: Keys) -> FleetLock {
        FleetLock {
            groups: semaphores.iter().map(|s| s.group().clone()).collect(),
            semaphores: semaphores
                .into_iter()
                .map(|s| (s.group().clone(), s))
                .collect(),
            nodes: NodeNames { etcd, keys },
        }
    }

    /// Reads and checks one request whose headers are in; the body must be complete by
    /// `deadline`.
    async fn receive(
        &self,
        req: Request<Incoming>,
        deadline: Instant,
    ) -> Result<protocol::Request, Refusal> {
        let operation = protocol::route(req.method().as_str(), req.uri().path())?;
        let values: Vec<&[u8]> = req
            .headers()
            .get_all(HEADER)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        protocol::check_header(&values)?;
        let body = read_body(req.into_body(), deadline).await?;
        protocol::parse(operation, &body, &self.groups)
    }

    /// Answers one complete request: 200 with an empty body, or a refusal.
    async fn act(&self, request: protocol::Request) -> Result<(), Refusal> {
        let outcome = if self.nodes.names_a_node(&request.id).await? {
            Err(names_a_node(&request.id))
        } else {
            let semaphore = &self.semaphores[&request.group];
            match request.operation {
                Operation::PreReboot => lock(semaphore, &request.id).await,
                Operation::SteadyState => unlock(semaphore, &request.id).await,
            }
        };
        tracing::info!(
            operation = ?request.operation,
            group = %request.group,
            id = %protocol_id(&request.id),
            refused = outcome.as_ref().err().map(|r| r.kind),
            "fleetlock request"
        );
        outcome
    }

    /// Answers one request on the connection of `ticket`, which knows its deadline and
    /// learns when the request is complete.
    async fn answer(&self, req: Request<Incoming>, ticket: &Ticket) -> Result<(), Refusal> {
        let deadline = ticket.reading_body().unwrap_or_else(Instant::now);
        let received = self.receive(req, deadline).await;
        ticket.serving();
        self.act(received?).await
    }
}

/// The id as logged: bounded (it was validated, but may be long).
fn protocol_id(id: &str) -> String {
    crate::reboot::semaphore::cut(id, 64)
}

async fn read_body(body: Incoming, deadline: Instant) -> Result<Bytes, Refusal> {
    let collect = Limited::new(body, MAX_BODY).collect();
    match tokio::time::timeout_at(deadline.into(), collect).await {
        Err(_) => Err(Refusal::new(
            408,
            "body_timeout",
            format!(
                "the request was not complete within {}s",
                REQUEST_DEADLINE.as_secs()
            ),
        )),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(Refusal::new(
            413,
            "body_too_large",
            format!("the body is larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(Refusal::new(
            400,
            "bad_request_body",
            format!("the body could not be read: {e}"),
        )),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
    }
}

fn names_a_node(id: &str) -> Refusal {
    Refusal::new(
        409,
        "id_names_a_node",
        format!(
            "'{}' is the name of a MoltenCore node; a FleetLock client must use an id of its \
             own (its machine id). `cpi nodes release` frees a slot taken under it",
            protocol_id(id)
        ),
    )
}

fn unavailable(e: SemaphoreError) -> Refusal {
    match e {
        SemaphoreError::Busy { .. } => Refusal::new(503, "semaphore_busy", e.to_string()),
        other => Refusal::new(503, "semaphore_unavailable", other.to_string()),
    }
}

fn held_by_node(id: &str) -> Refusal {
    Refusal::new(
        409,
        "held_by_node",
        format!(
            "'{}' holds its slot as a MoltenCore node; only its reboot manager or \
             `cpi nodes release` frees it",
            protocol_id(id)
        ),
    )
}

async fn lock(semaphore: &Semaphore, id: &str) -> Result<(), Refusal> {
    let holder = Holder {
        id: id.to_string(),
        kind: HolderKind::Fleetlock,
        node: None,
        boot_id: None,
        since: now_rfc3339(),
        why: "FleetLock pre-reboot".into(),
    };
    match semaphore.take(holder).await.map_err(unavailable)? {
        Take::Taken => Ok(()),
        Take::AlreadyHeld(h) if h.kind == HolderKind::Fleetlock => Ok(()),
        Take::AlreadyHeld(_) => Err(held_by_node(id)),
        Take::Full(holders) => {
            let ids: Vec<String> = holders.iter().map(|h| protocol_id(&h.id)).collect();
            Err(Refusal::new(
                409,
                "failed_lock_semaphore_full",
                format!(
                    "all {} reboot slot(s) of group {} are taken (by {})",
                    holders.len(),
                    semaphore.group(),
                    ids.join(", ")
                ),
            ))
        }
    }
}

async fn unlock(semaphore: &Semaphore, id: &str) -> Result<(), Refusal> {
    let node_holds = semaphore
        .update(|doc| match doc.holder(id) {
            Some(h) if h.kind == HolderKind::Node => (true, false),
            Some(_) => {
                doc.give_back(id);
                (false, true)
            }
            None => (false, false),
        })
        .await
        .map_err(unavailable)?;
    if node_holds {
        Err(held_by_node(id))
    } else {
        Ok(())
    }
}

fn response(outcome: Result<(), Refusal>) -> Response<Full<Bytes>> {
    let (status, body) = match outcome {
        Ok(()) => (StatusCode::OK, Bytes::new()),
        Err(r) => (
            StatusCode::from_u16(r.status).unwrap_or(StatusCode::BAD_REQUEST),
            Bytes::from(r.body()),
        ),
    };
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(body))
        .expect("a response with a valid status and header")
}

/// Serves connections from `listener`, at most `connections` at once (the caller knows
/// how many file descriptors it may open; [`MAX_CONNECTIONS`] unless fewer), until the
/// future is dropped.
pub async fn serve(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    service: Arc<FleetLock>,
    connections: usize,
) {
    let registry = Registry::new(limits(connections.max(1)));
    tokio::select! {
        () = accept_loop(listener, tls, service, registry.clone()) => {}
        () = reap_loop(&registry) => {}
    }
}

async fn accept_loop(
    listener: TcpListener,
    tls: Option<Arc<ServerConfig>>,
    service: Arc<FleetLock>,
    registry: Arc<Registry>,
) {
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                accept_failed(&e, &registry).await;
                continue;
            }
        };
        let Some(ticket) = admit(&registry, peer).await else {
            continue;
        };
        tokio::spawn(connection(
            stream,
            peer,
            tls.clone(),
            service.clone(),
            ticket,
        ));
        // Let the new connection be read before the next accept: a genuine request is
        // then complete, and an attacker's connection known to be waiting, before anyone
        // has to be shed.
        tokio::task::yield_now().await;
    }
}

/// Admits a connection from `peer`; while only connections not yet read could make room,
/// lets them be read first (a few times, then sheds one of them anyway).
async fn admit(registry: &Arc<Registry>, peer: SocketAddr) -> Option<Ticket> {
    let key = peer_key(peer.ip());
    for round in 0..=ADMISSION_ROUNDS {
        match registry.admit(key, Instant::now(), round < ADMISSION_ROUNDS) {
            Admission::Admitted(ticket) => return Some(ticket),
            Admission::Refused => return None,
            Admission::Wait => tokio::task::yield_now().await,
        }
    }
    None
}

/// Out of file descriptors: the oldest incomplete connection gives its own back and the
/// next accept follows at once. Anything else: wait a moment, keep serving.
async fn accept_failed(e: &std::io::Error, registry: &Registry) {
    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_fds && registry.shed_oldest() {
        tracing::debug!(error = %e, "out of file descriptors; shed the oldest connection");
        tokio::time::sleep(Duration::from_millis(5)).await;
    } else {
        tracing::warn!(error = %e, "accepting a FleetLock connection failed");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Closes connections past their deadline and logs, now and then, how many were closed.
async fn reap_loop(registry: &Registry) {
    let mut ticks = tokio::time::interval(REAP_INTERVAL);
    let mut closed = Closed::default();
    let mut reported = Instant::now();
    loop {
        ticks.tick().await;
        let now = Instant::now();
        let more = registry.reap(now);
        closed.shed += more.shed;
        closed.timed_out += more.timed_out;
        closed.refused += more.refused;
        closed.handshake_failed += more.handshake_failed;
        if now.duration_since(reported) >= REPORT_INTERVAL {
            if closed != Closed::default() {
                tracing::warn!(
                    shed = closed.shed,
                    timed_out = closed.timed_out,
                    refused = closed.refused,
                    tls_handshake_failed = closed.handshake_failed,
                    open = registry.open(),
                    limit = registry.limits().connections,
                    "FleetLock connections closed before completing a request"
                );
            }
            closed = Closed::default();
            reported = now;
        }
    }
}

/// The address a peer is counted under: IPv4 as is, IPv6 by its /64 (one host's share).
fn peer_key(ip: IpAddr) -> IpAddr {
    match ip.to_canonical() {
        IpAddr::V6(v6) => {
            let bits = u128::from(v6) & !((1u128 << 64) - 1);
            IpAddr::V6(bits.into())
        }
        v4 => v4,
    }
}

/// One connection, until it ends, its lifetime is over or the registry closes it.
async fn connection(
    stream: TcpStream,
    peer: SocketAddr,
    tls: Option<Arc<ServerConfig>>,
    service: Arc<FleetLock>,
    ticket: Ticket,
) {
    let ticket = Arc::new(ticket);
    let cancel = ticket.cancel.clone();
    let _ = stream.set_nodelay(true);
    let stream = Watched {
        io: stream,
        ticket: ticket.clone(),
        reported: false,
    };
    let work = async {
        let Some(config) = tls else {
            return http(stream, service, ticket).await;
        };
        let acceptor = LazyConfigAcceptor::new(rustls::server::Acceptor::default(), stream);
        let handshake = async {
            let start = acceptor.await?;
            ticket.hello();
            start.into_stream(config).await
        };
        match handshake.await {
            Ok(stream) => http(stream, service, ticket).await,
            Err(e) => {
                ticket.handshake_failed();
                tracing::debug!(%peer, error = %e, "FleetLock TLS handshake failed");
            }
        }
    };
    tokio::select! {
        () = cancel.cancelled() => {}
        () = work => {}
        () = tokio::time::sleep(CONNECTION_LIFETIME) => {
            tracing::debug!(%peer, "FleetLock connection closed after its lifetime");
        }
    }
}

/// A client's socket that tells the registry when a read finds nothing to read: the
/// connection waits for its client, and is shed before those that do not.
struct Watched {
    io: TcpStream,
    ticket: Arc<Ticket>,
    reported: bool,
}

impl AsyncRead for Watched {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = self.get_mut();
        let read = Pin::new(&mut this.io).poll_read(cx, buf);
        if read.is_pending() && !this.reported {
            this.reported = true;
            this.ticket.stalled();
        }
        read
    }
}

impl AsyncWrite for Watched {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
    }
}

async fn http<S>(io: S, service: Arc<FleetLock>, ticket: Arc<Ticket>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let service = service.clone();
        let ticket = ticket.clone();
        async move {
            let outcome = service.answer(req, &ticket).await;
            ticket.answered(Instant::now());
            Ok::<_, Infallible>(response(outcome))
        }
    });
    let _ = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(REQUEST_DEADLINE)
        .max_buf_size(MAX_HEADER_BUFFER)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}
