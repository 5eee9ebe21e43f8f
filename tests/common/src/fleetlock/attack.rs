//! Clients that try to take `cpi fleetlock` from others: many connections from one
//! loopback address that send nothing, or a request (or a TLS handshake) one byte a
//! second, each reconnecting as soon as the server closes it. And what a genuine client
//! needs meanwhile: a request under a deadline, over plain HTTP or mutual TLS.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::{fleetlock_body, parse_answer};

/// What a slow attacker sends over plain HTTP: a request head that never ends.
const SLOW_HTTP: &[u8] = b"POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nX-Pad: a";
/// What a slow attacker sends to a TLS server: a handshake record of 512 bytes holding a
/// ClientHello of 508 (TLS 1.2), then zeros (its random, and so on).
const SLOW_TLS: &[u8] = &[
    0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0x00,
];

/// Attackers running on a runtime of their own; stopped (their sockets closed) on drop.
pub struct Attack {
    runtime: Option<tokio::runtime::Runtime>,
    connections: Arc<AtomicU64>,
}

impl Drop for Attack {
    fn drop(&mut self) {
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

impl Attack {
    /// `idle` connections from `idle_from` that send nothing and `slow` ones from
    /// `slow_from` that send one byte a second (a TLS handshake record when `tls`).
    pub fn start(
        target: SocketAddr,
        (idle_from, idle): (Ipv4Addr, usize),
        (slow_from, slow): (Ipv4Addr, usize),
        tls: bool,
    ) -> Attack {
        // One thread: the attackers run on the server's machine and should not starve it
        // of the CPU (an attacker elsewhere would not).
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let connections = Arc::new(AtomicU64::new(0));
        let slow_bytes = if tls { SLOW_TLS } else { SLOW_HTTP };
        for (from, n, bytes) in [(idle_from, idle, None), (slow_from, slow, Some(slow_bytes))] {
            for _ in 0..n {
                runtime.spawn(attacker(target, from, bytes, connections.clone()));
            }
        }
        Attack {
            runtime: Some(runtime),
            connections,
        }
    }

    /// Connections the attackers opened so far (reconnections included).
    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Waits until the attackers opened `n` connections; panics after `within`.
    pub fn wait_for_connections(&self, n: u64, within: Duration) {
        let start = Instant::now();
        while self.connections() < n {
            assert!(
                start.elapsed() < within,
                "the attackers opened only {} of {n} connections in {within:?}",
                self.connections()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

async fn attacker(
    target: SocketAddr,
    from: Ipv4Addr,
    slow: Option<&'static [u8]>,
    connections: Arc<AtomicU64>,
) {
    loop {
        match connect_from(from, target).await {
            Ok(mut stream) => {
                connections.fetch_add(1, Ordering::Relaxed);
                hold(&mut stream, slow).await;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
        }
    }
}

async fn connect_from(
    from: Ipv4Addr,
    target: SocketAddr,
) -> std::io::Result<tokio::net::TcpStream> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.bind(SocketAddr::from((from, 0)))?;
    tokio::time::timeout(Duration::from_secs(2), socket.connect(target))
        .await
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::TimedOut))?
}

/// Keeps the connection until the server closes it, sending `slow` (its last byte
/// repeated) a byte a second.
async fn hold(stream: &mut tokio::net::TcpStream, slow: Option<&[u8]>) {
    let mut buf = [0u8; 1024];
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    let mut sent = 0;
    loop {
        tokio::select! {
            read = stream.read(&mut buf) => {
                if matches!(read, Ok(0) | Err(_)) {
                    return;
                }
            }
            _ = ticks.tick(), if slow.is_some() => {
                let bytes = slow.unwrap_or_default();
                let byte = bytes[sent.min(bytes.len() - 1)];
                sent += 1;
                if stream.write_all(&[byte]).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Where a genuine client sends its requests.
pub enum Endpoint {
    /// Plain HTTP to `host:port`.
    Plain(String),
    /// HTTPS to `host:port` with a client certificate.
    Tls {
        address: String,
        config: Arc<rustls::ClientConfig>,
    },
}

impl Endpoint {
    /// Mutual TLS to `address`, trusting `ca` and presenting `cert` and `key` (PEM files).
    pub fn tls(address: &str, ca: &Path, cert: &Path, key: &Path) -> Endpoint {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let mut roots = rustls::RootCertStore::empty();
        for c in CertificateDer::pem_file_iter(ca).unwrap() {
            roots.add(c.unwrap()).unwrap();
        }
        let chain: Vec<_> = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .map(Result::unwrap)
            .collect();
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, PrivateKeyDer::from_pem_file(key).unwrap())
            .unwrap();
        Endpoint::Tls {
            address: address.to_string(),
            config: Arc::new(config),
        }
    }

    fn address(&self) -> &str {
        match self {
            Endpoint::Plain(a) | Endpoint::Tls { address: a, .. } => a,
        }
    }
}

/// A FleetLock request (as [`super::fleetlock_request`]) that must be answered within
/// `within`: the status and body, or what went wrong.
pub fn timed_request(
    endpoint: &Endpoint,
    path: &str,
    group: &str,
    id: &str,
    within: Duration,
) -> Result<(u16, Value), String> {
    let start = Instant::now();
    let body = fleetlock_body(group, id);
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\nfleet-lock-protocol: true\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let address: SocketAddr = endpoint.address().parse().map_err(|e| format!("{e}"))?;
    let tcp = TcpStream::connect_timeout(&address, within).map_err(|e| format!("connect: {e}"))?;
    let left = within
        .saturating_sub(start.elapsed())
        .max(Duration::from_millis(1));
    tcp.set_read_timeout(Some(left)).unwrap();
    tcp.set_write_timeout(Some(left)).unwrap();
    let answer = match endpoint {
        Endpoint::Plain(_) => exchange_on(tcp, &request),
        Endpoint::Tls { config, .. } => {
            let name = ServerName::try_from(address.ip().to_string()).unwrap();
            let conn = rustls::ClientConnection::new(config.clone(), name)
                .map_err(|e| format!("TLS: {e}"))?;
            exchange_on(rustls::StreamOwned::new(conn, tcp), &request)
        }
    }?;
    if start.elapsed() > within {
        return Err(format!("answered after {:?}", start.elapsed()));
    }
    if answer.is_empty() {
        return Err("closed without an answer".into());
    }
    Ok(parse_answer(&answer))
}

/// Writes `request` and reads until the server closes (an unannounced close after a
/// complete answer included).
fn exchange_on(mut stream: impl Read + Write, request: &[u8]) -> Result<Vec<u8>, String> {
    stream
        .write_all(request)
        .and_then(|()| stream.flush())
        .map_err(|e| format!("write: {e}"))?;
    let mut answer = Vec::new();
    match stream.read_to_end(&mut answer) {
        Ok(_) => Ok(answer),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !answer.is_empty() => Ok(answer),
        Err(e) => Err(format!("read: {e} (after {} bytes)", answer.len())),
    }
}

/// The resident memory of process `pid` in KiB (`VmRSS` of `/proc/PID/status`).
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("no VmRSS in /proc/{pid}/status"))
}

/// Raises this process's limit of open files to at least `n` (panics when the hard limit
/// is lower: the test could not open its connections).
pub fn raise_open_files(n: u64) {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        assert_eq!(libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit), 0);
        if limit.rlim_cur < n {
            assert!(
                limit.rlim_max >= n,
                "the hard limit of open files is {}, below the {n} this test needs",
                limit.rlim_max
            );
            limit.rlim_cur = n;
            assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &limit), 0);
        }
    }
}
