//! The `cpi` binary's subcommands.

pub mod bosh_config;
pub mod node_prep;
pub mod nodes;
pub mod rpc;
