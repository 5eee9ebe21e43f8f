//! The FleetLock HTTP server (hyper, HTTP/1.1, optional TLS): every connection and every
//! request is bounded (header and body time, body size, connection count and lifetime),
//! so a slow or hostile client gets the protocol's error or a closed socket, never a
//! server that hangs.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;

use super::protocol::{self, HEADER, Operation, Refusal};
use crate::nodeprep::register::now_rfc3339;
use crate::reboot::semaphore::{Group, Holder, HolderKind, Semaphore, SemaphoreError, Take};

/// Largest request body read (a FleetLock body is well under 1 KiB).
pub const MAX_BODY: usize = 16 * 1024;
/// Time a client has to send its request headers.
const HEADER_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to send its body once the headers are in.
const BODY_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a client has to finish the TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest a connection stays open, requests included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// Connections served at once; more are closed at once.
const MAX_CONNECTIONS: usize = 256;

/// What the server answers with: one semaphore per served group.
pub struct FleetLock {
    groups: Vec<Group>,
    semaphores: HashMap<Group, Semaphore>,
}

impl FleetLock {
    /// Serves the groups of `semaphores`.
    pub fn new(semaphores: Vec<Semaphore>) -> FleetLock {
        FleetLock {
            groups: semaphores.iter().map(|s| s.group().clone()).collect(),
            semaphores: semaphores
                .into_iter()
                .map(|s| (s.group().clone(), s))
                .collect(),
        }
    }

    /// Answers one request: 200 with an empty body, or a refusal.
    pub async fn answer(&self, req: Request<Incoming>) -> Result<(), Refusal> {
        let operation = protocol::route(req.method().as_str(), req.uri().path())?;
        let values: Vec<&[u8]> = req
            .headers()
            .get_all(HEADER)
            .iter()
            .map(|v| v.as_bytes())
            .collect();
        protocol::check_header(&values)?;
        let body = read_body(req.into_body()).await?;
        let request = protocol::parse(operation, &body, &self.groups)?;
        let semaphore = &self.semaphores[&request.group];
        let outcome = match operation {
            Operation::PreReboot => lock(semaphore, &request.id).await,
            Operation::SteadyState => unlock(semaphore, &request.id).await,
        };
        tracing::info!(
            operation = ?operation,
            group = %request.group,
            id = %protocol_id(&request.id),
            refused = outcome.as_ref().err().map(|r| r.kind),
            "fleetlock request"
        );
        outcome
    }
}

/// The id as logged: bounded (it was validated, but may be long).
fn protocol_id(id: &str) -> String {
    crate::reboot::semaphore::cut(id, 64)
}

async fn read_body(body: Incoming) -> Result<Bytes, Refusal> {
    match tokio::time::timeout(BODY_TIMEOUT, Limited::new(body, MAX_BODY).collect()).await {
        Err(_) => Err(Refusal::new(
            408,
            "body_timeout",
            format!("the body did not arrive within {}s", BODY_TIMEOUT.as_secs()),
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

/// Serves connections from `listener` until the task is dropped.
pub async fn serve(listener: TcpListener, tls: Option<TlsAcceptor>, service: Arc<FleetLock>) {
    let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Out of file descriptors and the like: wait a moment, keep serving.
                tracing::warn!(error = %e, "accepting a FleetLock connection failed");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = slots.clone().try_acquire_owned() else {
            tracing::warn!(%peer, "too many FleetLock connections; closing this one");
            continue;
        };
        let tls = tls.clone();
        let service = service.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let _ = stream.set_nodelay(true);
            match tls {
                None => connection(stream, service).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => connection(stream, service).await,
                        Ok(Err(e)) => {
                            tracing::warn!(%peer, error = %e, "FleetLock TLS handshake failed")
                        }
                        Err(_) => tracing::warn!(%peer, "FleetLock TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn connection<S>(io: S, service: Arc<FleetLock>)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let svc = service_fn(move |req| {
        let service = service.clone();
        async move { Ok::<_, Infallible>(response(service.answer(req).await)) }
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HEADER_TIMEOUT)
        .max_buf_size(64 * 1024)
        .serve_connection(TokioIo::new(io), svc);
    if let Err(_elapsed) = tokio::time::timeout(CONNECTION_LIFETIME, conn).await {
        tracing::debug!("FleetLock connection closed after its lifetime");
    }
}
