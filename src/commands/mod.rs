//! The `cpi` binary's subcommands.

pub mod bosh_config;
pub mod drain;
pub mod node_prep;
pub mod nodes;
pub mod rpc;

/// The async runtime every subcommand runs on: two workers (fan-out to nodes, streams).
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}
