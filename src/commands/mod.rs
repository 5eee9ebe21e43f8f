//! The `cpi` binary's subcommands.

pub mod nodes;
pub mod rpc;
