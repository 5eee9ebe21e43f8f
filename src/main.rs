//! The `cpi` binary: the BOSH CPI (no subcommand, or `rpc`) and the operator's commands.

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use moltencore::cluster::NodeState;
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
    /// List the cluster's nodes from etcd and check each node's Docker over mutual TLS;
    /// `cordon`/`uncordon` or `drain` a node.
    Nodes {
        #[command(subcommand)]
        action: Option<NodesAction>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
    },
    /// Prepare this host as a cluster node (run at every boot): PKI, flannel subnet,
    /// Docker with mutual TLS, the BOSH network unit, the node record.
    NodePrep(Box<commands::node_prep::NodePrepCommand>),
    /// Print BOSH configs generated from the cluster: `cloud-config` (one AZ and subnet per
    /// node) or `cpi-config` (one CPI per node).
    BoshConfig(commands::bosh_config::BoshConfigCommand),
    /// Serve the FleetLock protocol (POST /v1/pre-reboot, /v1/steady-state) on the
    /// cluster's reboot semaphore, for hosts with a FleetLock client (Zincati).
    Fleetlock(commands::fleetlock::FleetLockCommand),
}

#[derive(Subcommand)]
enum NodesAction {
    /// Take no new VMs on NAME (its VMs stay).
    Cordon { name: String },
    /// Let NAME take new VMs again.
    Uncordon { name: String },
    /// Cordon NAME and list the BOSH instances still on it, with the `bosh recreate`
    /// that moves each elsewhere.
    Drain { name: String },
}

fn main() {
    let cli = Cli::parse();
    let logging = Logging::init();
    let config = cli.config.unwrap_or_else(default_config_path);
    let code = match cli.command.unwrap_or(Command::Rpc) {
        Command::Rpc => commands::rpc::run(config, &logging),
        Command::Nodes { action: None, json } => commands::nodes::run(config, json),
        Command::Nodes {
            action: Some(NodesAction::Cordon { name }),
            ..
        } => commands::nodes::set_state(config, &name, NodeState::Cordoned),
        Command::Nodes {
            action: Some(NodesAction::Uncordon { name }),
            ..
        } => commands::nodes::set_state(config, &name, NodeState::Ready),
        Command::Nodes {
            action: Some(NodesAction::Drain { name }),
            json,
        } => commands::drain::run(config, &name, json),
        Command::NodePrep(cmd) => commands::node_prep::run(*cmd),
        Command::BoshConfig(cmd) => commands::bosh_config::run(config, cmd),
        Command::Fleetlock(cmd) => commands::fleetlock::run(config, cmd),
    };
    std::process::exit(code);
}
