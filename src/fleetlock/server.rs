//! The FleetLock HTTP server (hyper, HTTP/1.1, optional TLS): every request is bounded
//! (one deadline for handshake, headers and body; body size; header buffer) and so is the
//! number of connections, of which those that have not completed a request are shed
//! oldest first (see [`super::registry`]), so a slow or hostile client gets the
//! protocol's error or a closed socket, and never keeps others from being answered. What
//! a request is answered with is [`super::service`].

use std::convert::Infallible;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::ServerConfig;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::LazyConfigAcceptor;

use super::registry::{Admission, Closed, Limits, Registry, Ticket};
use super::service::{FleetLock, response};

/// Largest buffer of request headers (hyper's minimum; FleetLock headers are a few lines).
const MAX_HEADER_BUFFER: usize = 8 * 1024;
/// Connections open at once (each holds a file descriptor and at most
/// [`MAX_HEADER_BUFFER`] + [`super::service::MAX_BODY`] of buffers).
pub(crate) const MAX_CONNECTIONS: usize = 1024;
/// Longest a connection stays open, requests included.
const CONNECTION_LIFETIME: Duration = Duration::from_secs(300);
/// How many times an admission lets the other tasks run (so that new connections are
/// read) before one of the connections not yet read is shed.
const ADMISSION_ROUNDS: usize = 32;
/// Connections the kernel queues for `accept` (capped by `net.core.somaxconn`).
pub(crate) const LISTEN_BACKLOG: u32 = 4096;
/// How often connections past their deadline are closed.
const REAP_INTERVAL: Duration = Duration::from_millis(250);
/// How often the counts of closed connections are logged (when not zero).
const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// The limits the server enforces, given the connections it may open.
fn limits(connections: usize) -> Limits {
    Limits {
        connections,
        request_deadline: super::service::REQUEST_DEADLINE,
        body_grace: Duration::from_secs(1),
    }
}

/// Serves connections from `listener`, at most `connections` at once (the caller knows
/// how many file descriptors it may open; [`MAX_CONNECTIONS`] unless fewer), until the
/// future is dropped.
pub(crate) async fn serve(
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

/// Out of file descriptors: an incomplete connection is shed (as at the connection limit)
/// and the next accept follows at once. Anything else: wait a moment, keep serving.
async fn accept_failed(e: &std::io::Error, registry: &Registry) {
    let out_of_fds = matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE));
    if out_of_fds && registry.shed_one() {
        tracing::debug!(error = %e, "out of file descriptors; shed a connection");
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
        .header_read_timeout(super::service::REQUEST_DEADLINE)
        .max_buf_size(MAX_HEADER_BUFFER)
        .serve_connection(TokioIo::new(io), svc)
        .await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_counted_by_address_and_ipv6_by_its_64() {
        let v4: IpAddr = "127.0.0.2".parse().unwrap();
        assert_eq!(peer_key(v4), v4);
        let mapped: IpAddr = "::ffff:127.0.0.2".parse().unwrap();
        assert_eq!(peer_key(mapped), v4);
        let a: IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let other: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(peer_key(a), peer_key(b));
        assert_ne!(peer_key(a), peer_key(other));
    }
}
