//! The `cpi` binary: the BOSH CPI (no subcommand, or `rpc`) and the operator's commands.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use moltencore::cluster::NodeState;
use moltencore::commands;
use moltencore::commands::error::Outcome;
use moltencore::config::default_config_path;
use moltencore::logging::Logging;

/// MoltenCore: BOSH VMs as containers across a cluster of Docker hosts.
#[derive(Parser)]
#[command(name = "cpi", version, about)]
struct Cli {
    /// Path of cpi.json (default: $BOSH_JOBS_DIR or /var/vcap/jobs, then
    /// moltencore_cpi/config/cpi.json).
    #[arg(short, long)]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Option<Command>,
}

/// `-c` of the subcommands that read cpi.json (node-prep does not: it has no such flag).
#[derive(Args)]
struct ConfigArg {
    /// Path of cpi.json (default: $BOSH_JOBS_DIR or /var/vcap/jobs, then
    /// moltencore_cpi/config/cpi.json).
    #[arg(short, long, global = true)]
    config: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Answer one BOSH CPI request: JSON on stdin, JSON on stdout (the default).
    Rpc {
        #[command(flatten)]
        config: ConfigArg,
    },
    /// List the cluster's nodes from etcd and check each node's Docker over mutual TLS;
    /// `cordon`/`uncordon` or `drain` a node.
    Nodes {
        #[command(subcommand)]
        action: Option<NodesAction>,
        /// Print JSON instead of a table.
        #[arg(long, global = true)]
        json: bool,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Prepare this host as a cluster node (run at every boot): PKI, flannel subnet,
    /// Docker with mutual TLS, the BOSH network unit, the node record.
    NodePrep(Box<commands::node_prep::NodePrepCommand>),
    /// Print BOSH configs generated from the cluster: `cloud-config` (one AZ and subnet per
    /// node) or `cpi-config` (one CPI per node).
    BoshConfig {
        #[command(flatten)]
        cmd: commands::bosh_config::BoshConfigCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Serve the FleetLock protocol (POST /v1/pre-reboot, /v1/steady-state) on the
    /// cluster's reboot semaphore, for hosts with a FleetLock client (Zincati).
    Fleetlock {
        #[command(flatten)]
        cmd: commands::fleetlock::FleetLockCommand,
        #[command(flatten)]
        config: ConfigArg,
    },
    /// Reboot this node when it needs it (Flatcar's update engine, /run/reboot-required,
    /// `cpi nodes reboot`): take a slot, cordon, stop its VMs, reboot, check they are
    /// back, uncordon, give the slot back.
    RebootManager {
        #[command(flatten)]
        cmd: Box<commands::reboot_manager::RebootManagerCommand>,
        #[command(flatten)]
        config: ConfigArg,
    },
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
    /// Ask NAME's reboot manager to reboot it (takes a slot, stops its VMs, reboots).
    Reboot {
        name: String,
        /// Why, as `cpi nodes` shows it.
        #[arg(long)]
        why: Option<String>,
    },
    /// Give back the reboot slot NAME holds (a host that never came back); refused while
    /// NAME reports itself rebooting unless --force.
    Release {
        name: String,
        #[arg(long)]
        force: bool,
        #[arg(long, default_value = "default")]
        group: String,
    },
    /// How many nodes of a reboot group may be down for a reboot at once (default 1).
    MaxUnavailable {
        max: u32,
        #[arg(long, default_value = "default")]
        group: String,
    },
}

fn main() {
    let cli = Cli::parse();
    let logging = Logging::init();
    let command = cli.command.unwrap_or(Command::Rpc {
        config: ConfigArg { config: None },
    });
    // `-c` before the subcommand (`cpi -c cpi.json nodes`) or after it (`cpi nodes -c ...`).
    let config = |sub: ConfigArg| {
        sub.config
            .or_else(|| cli.config.clone())
            .unwrap_or_else(default_config_path)
    };
    let outcome = match command {
        Command::Rpc { config: c } => Ok(commands::rpc::run(config(c), &logging)),
        Command::Nodes {
            action,
            json,
            config: c,
        } => nodes(config(c), action, json),
        Command::NodePrep(cmd) => commands::node_prep::run(*cmd),
        Command::BoshConfig { cmd, config: c } => commands::bosh_config::run(config(c), cmd),
        Command::Fleetlock { cmd, config: c } => commands::fleetlock::run(config(c), cmd),
        Command::RebootManager { cmd, config: c } => commands::reboot_manager::run(config(c), *cmd),
    };
    // Each command's failure is reported here, once.
    let code = outcome.unwrap_or_else(|failure| {
        failure.error.report();
        failure.code
    });
    std::process::exit(code);
}

/// `cpi nodes [ACTION]`.
fn nodes(config: PathBuf, action: Option<NodesAction>, json: bool) -> Outcome {
    match action {
        None => commands::nodes::run(config, json),
        Some(NodesAction::Cordon { name }) => {
            commands::nodes::set_state(config, &name, NodeState::Cordoned)
        }
        Some(NodesAction::Uncordon { name }) => {
            commands::nodes::set_state(config, &name, NodeState::Ready)
        }
        Some(NodesAction::Drain { name }) => commands::drain::run(config, &name, json),
        Some(NodesAction::Reboot { name, why }) => {
            commands::node_reboot::request(config, &name, why)
        }
        Some(NodesAction::Release { name, force, group }) => {
            commands::node_reboot::release(config, &name, force, &group)
        }
        Some(NodesAction::MaxUnavailable { max, group }) => {
            commands::node_reboot::set_max(config, max, &group)
        }
    }
}
