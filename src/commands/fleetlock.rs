//! `cpi fleetlock`: flags of the FleetLock endpoint (the server is [`crate::fleetlock`]).
//! It prints `listening on ADDR` once it accepts connections, then serves until SIGTERM or
//! SIGINT.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;

use crate::cloud::CloudContext;
use crate::fleetlock::server::{FleetLock, serve};
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
pub fn run(config_path: PathBuf, cmd: FleetLockCommand) -> i32 {
    match super::block_on(serve_until_stopped(config_path, cmd), 1) {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            super::error::report_any(e);
            1
        }
        Err(code) => code,
    }
}

async fn serve_until_stopped(config_path: PathBuf, cmd: FleetLockCommand) -> Result<()> {
    let mut groups = Vec::new();
    for g in &cmd.groups {
        groups.push(Group::parse(g)?);
    }
    if groups.is_empty() {
        groups.push(Group::default_group());
    }
    let tls = match (&cmd.tls_cert, &cmd.tls_key) {
        (Some(cert), Some(key)) => Some(tokio_rustls::TlsAcceptor::from(
            server_config(cert, key, cmd.client_ca.as_deref()).map_err(anyhow::Error::msg)?,
        )),
        (None, None) => None,
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    super::error::load_config(&ctx, &config_path).await?;
    let etcd = ctx.etcd().await.map_err(|e| anyhow::anyhow!("{e}"))?;
    let keys = RebootKeys::new(&ctx.keys().await.map_err(|e| anyhow::anyhow!("{e}"))?);
    let semaphores = groups
        .into_iter()
        .map(|g| Semaphore::new(etcd.clone(), &keys, g))
        .collect();
    let listener = tokio::net::TcpListener::bind(cmd.listen)
        .await
        .with_context(|| format!("cannot listen on {}", cmd.listen))?;
    let bound = listener.local_addr()?;
    println!("listening on {bound}");
    std::io::stdout().flush()?;
    tracing::info!(address = %bound, tls = tls.is_some(), "FleetLock endpoint up");
    let server = serve(listener, tls, Arc::new(FleetLock::new(semaphores)));
    tokio::select! {
        () = server => Ok(()),
        stop = stopped() => stop,
    }
}

/// Resolves on SIGTERM or SIGINT.
pub async fn stopped() -> Result<()> {
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
