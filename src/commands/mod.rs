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
pub fn runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
}

/// Runs `work` to completion on [`runtime`]. When no runtime can be started it says so on
/// stderr and returns `Err(exit_code)`, the code the operator's command exits with.
pub fn block_on<F: std::future::Future>(work: F, exit_code: i32) -> Result<F::Output, i32> {
    match runtime() {
        Ok(rt) => Ok(rt.block_on(work)),
        Err(e) => {
            error::CommandError::Runtime(e).report();
            Err(exit_code)
        }
    }
}
