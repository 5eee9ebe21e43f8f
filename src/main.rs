//! The `cpi` binary: the BOSH CPI (no subcommand, or `rpc`) and the operator's commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use moltencore::commands;
use moltencore::config::default_config_path;
use moltencore::logging::Logging;

/// MoltenCore: BOSH VMs as containers across a cluster of Docker hosts.
#[derive(Parser)]
#[command(name = "cpi", version, about)]
struct Cli {
    /// Path of cpi.json (default: $BOSH_JOBS_DIR or /var/vcap/jobs, then
    /// moltencore_cpi/config/cpi.json).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one BOSH CPI request: JSON on stdin, JSON on stdout (the default).
    Rpc,
    /// List the cluster's nodes from etcd and check each node's Docker over mutual TLS.
    Nodes {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
}

fn main() {
    let cli = Cli::parse();
    let logging = Logging::init();
    let config = cli.config.unwrap_or_else(default_config_path);
    let code = match cli.command.unwrap_or(Command::Rpc) {
        Command::Rpc => commands::rpc::run(config, &logging),
        Command::Nodes { json } => commands::nodes::run(config, json),
    };
    std::process::exit(code);
}
