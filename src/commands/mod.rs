//! The `cpi` binary's subcommands.

pub mod bosh_config;
pub mod drain;
pub mod error;
pub mod fleetlock;
pub mod node_prep;
pub mod node_reboot;
pub mod nodes;
pub mod reboot_manager;
pub mod rpc;

/// The async runtime every subcommand runs on: two workers (fan-out to nodes, streams).
pub(crate) fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Runs `work` to completion on [`runtime`]; a runtime that cannot start is
/// [`error::CommandError::Runtime`].
pub(crate) fn block_on<F: std::future::Future>(work: F) -> Result<F::Output, error::CommandError> {
    Ok(runtime()
        .map_err(error::CommandError::Runtime)?
        .block_on(work))
}
