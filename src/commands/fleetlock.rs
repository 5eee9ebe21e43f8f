//! `cpi fleetlock`: flags of the FleetLock endpoint (the server is [`crate::fleetlock`]).
//! It prints `listening on ADDR` once it accepts connections, then serves until SIGTERM or
//! SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use clap::Args;

use super::error::{CommandError, Outcome, load_config};
use crate::cloud::CloudContext;
use crate::fleetlock::server::{LISTEN_BACKLOG, MAX_CONNECTIONS, serve};
use crate::fleetlock::service::FleetLock;
use crate::fleetlock::tls::server_config;
use crate::reboot::keys::RebootKeys;
use crate::reboot::semaphore::{Group, Semaphore};

/// `cpi fleetlock --listen ADDR [--tls-cert F --tls-key F [--client-ca F]] [--group G]...`.
#[derive(Debug, Args)]
pub struct FleetLockCommand {
    /// Address to listen on (`192.168.1.10:8443`; port 0 picks a free one). Use the
    /// private network's address, or TLS.
    #[arg(long)]
    listen: SocketAddr,
    /// Server certificate (PEM file): serve HTTPS.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// Server key (PEM file).
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// CA (PEM file) whose client certificates are required (mutual TLS).
    #[arg(long, requires = "tls_cert")]
    client_ca: Option<PathBuf>,
    /// Reboot groups served (repeat the flag); `default` unless given.
    #[arg(long = "group")]
    groups: Vec<String>,
}

/// Runs the endpoint; exit code 1 when it cannot start.
pub fn run(config_path: PathBuf, cmd: FleetLockCommand) -> Outcome {
    super::block_on(serve_until_stopped(config_path, cmd))??;
    Ok(0)
}

async fn serve_until_stopped(
    config_path: PathBuf,
    cmd: FleetLockCommand,
) -> Result<(), CommandError> {
    let mut groups = Vec::new();
    for g in &cmd.groups {
        groups.push(Group::parse(g)?);
    }
    if groups.is_empty() {
        groups.push(Group::default_group());
    }
    let tls = match (&cmd.tls_cert, &cmd.tls_key) {
        (Some(cert), Some(key)) => Some(server_config(cert, key, cmd.client_ca.as_deref())?),
        (None, None) => None,
        _ => return Err(CommandError::Flag("--tls-cert and --tls-key go together")),
    };
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    load_config(&ctx, &config_path).await?;
    let etcd = ctx.etcd().await?;
    let keys = ctx.keys().await?;
    let reboot_keys = RebootKeys::new(&keys);
    let semaphores = groups
        .into_iter()
        .map(|g| Semaphore::new(etcd.clone(), &reboot_keys, g))
        .collect();
    let listener = listen(cmd.listen).map_err(|source| CommandError::Listen {
        address: cmd.listen,
        source,
    })?;
    let bound = listener.local_addr()?;
    println!("listening on {bound}");
    std::io::stdout().flush()?;
    let connections = connection_limit();
    tracing::info!(address = %bound, tls = tls.is_some(), connections, "FleetLock endpoint up");
    let service = Arc::new(FleetLock::new(semaphores, etcd.clone(), keys));
    let server = serve(listener, tls, service, connections);
    tokio::select! {
        () = server => Ok(()),
        stop = stopped() => Ok(stop?),
    }
}

/// A listener on `address` whose accept queue holds [`LISTEN_BACKLOG`] connections
/// (the default, 128, overflows while many clients reconnect at once).
fn listen(address: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = match address {
        SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
        SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
    };
    socket.set_reuseaddr(true)?;
    socket.bind(address)?;
    socket.listen(LISTEN_BACKLOG)
}

/// File descriptors kept for everything but client connections (etcd, stdio, listener).
const RESERVED_FDS: u64 = 64;

/// Raises the soft limit of open files to the hard one, and says how many client
/// connections fit below it ([`MAX_CONNECTIONS`] at most).
fn connection_limit() -> usize {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct they are given.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) != 0 {
            return MAX_CONNECTIONS;
        }
        if limit.rlim_cur < limit.rlim_max {
            let raised = libc::rlimit {
                rlim_cur: limit.rlim_max,
                rlim_max: limit.rlim_max,
            };
            if libc::setrlimit(libc::RLIMIT_NOFILE, &raised) == 0 {
                limit = raised;
            }
        }
    }
    let fit = limit.rlim_cur.saturating_sub(RESERVED_FDS).max(1);
    usize::try_from(fit).map_or(MAX_CONNECTIONS, |fit| fit.min(MAX_CONNECTIONS))
}

/// Resolves on SIGTERM or SIGINT.
pub(crate) async fn stopped() -> std::io::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {},
        _ = int.recv() => {},
    }
    tracing::info!("stopping on a signal");
    Ok(())
}
