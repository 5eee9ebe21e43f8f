//! `cpi reboot-manager`: flags of the long-running reboot manager of one node (the state
//! machine is [`crate::reboot::manager`]). Runs until SIGTERM or SIGINT; the state it
//! keeps in etcd lets the next start carry on. Its heartbeat
//! ([`crate::reboot::heartbeat`]) tells `cpi nodes` whether it runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

use super::error::{CommandError, Outcome, load_config};
use crate::cloud::CloudContext;
use crate::node_name::NodeName;
use crate::reboot::heartbeat::{Heartbeat, ManagerInfo};
use crate::reboot::host::Host;
use crate::reboot::keys::RebootKeys;
use crate::reboot::manager::{Manager, ManagerOptions};
use crate::reboot::semaphore::Group;
use crate::reboot::sources::UpdateEngine;
use crate::reboot::window::RebootWindow;
use crate::timestamp::Timestamp;

/// `cpi reboot-manager --node NAME [FLAGS]`.
#[derive(Debug, Args)]
pub struct RebootManagerCommand {
    /// This node's name, as node-prep registered it.
    #[arg(long, value_parser = NodeName::parse)]
    node: NodeName,
    /// The host's `/` for the boot id and `/run/reboot-required`.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Reboot group whose slots this node shares.
    #[arg(long, default_value = "default")]
    group: String,
    /// Time each VM gets to drain and stop its jobs (drain scripts, monit) before its
    /// container is stopped.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    grace_period: Duration,
    /// Time the VMs must stay healthy after boot before the node is uncordoned.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    settle: Duration,
    /// How often to look again while waiting.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    poll: Duration,
    /// Time after which the reboot is asked for again when the host stays up.
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    reboot_retry: Duration,
    /// The command that reboots the host.
    #[arg(long, default_value = "systemctl reboot")]
    reboot_command: String,
    /// The update engine's status command; empty switches that source off.
    #[arg(long, default_value = "update_engine_client -status")]
    update_engine_command: String,
    /// Start of the reboot window (`Sun 04:00` or `Sun,04:00`, or `04:00` for every day;
    /// UTC).
    #[arg(long, requires = "window_length")]
    window: Option<String>,
    /// Length of the reboot window (`3h`).
    #[arg(long, requires = "window")]
    window_length: Option<String>,
}

fn words(s: &str) -> Vec<String> {
    s.split_whitespace().map(str::to_string).collect()
}

/// Runs the manager; exit code 1 when it cannot start.
pub fn run(config_path: PathBuf, cmd: RebootManagerCommand) -> Outcome {
    super::block_on(manage(config_path, cmd))??;
    Ok(0)
}

async fn manage(config_path: PathBuf, cmd: RebootManagerCommand) -> Result<(), CommandError> {
    let window = match (&cmd.window, &cmd.window_length) {
        (Some(start), Some(length)) => Some(RebootWindow::parse(start, length)?),
        _ => None,
    };
    let reboot_command = words(&cmd.reboot_command);
    if reboot_command.is_empty() {
        return Err(CommandError::Flag("--reboot-command is empty"));
    }
    let grace_seconds = i32::try_from(cmd.grace_period.as_secs())
        .map_err(|_| CommandError::Flag("--grace-period is too long"))?;
    let engine = UpdateEngine {
        command: Some(words(&cmd.update_engine_command)).filter(|c| !c.is_empty()),
    };
    let opts = ManagerOptions {
        node: cmd.node.clone(),
        group: Group::parse(&cmd.group)?,
        grace_seconds,
        settle: cmd.settle,
        poll: cmd.poll.max(Duration::from_millis(100)),
        reboot_retry: cmd.reboot_retry,
        window,
    };
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    load_config(&ctx, &config_path).await?;
    let etcd = ctx.etcd().await?.clone();
    let keys = ctx.keys().await?;
    let mut manager = Manager::new(
        &ctx,
        (etcd, keys),
        opts,
        &cmd.root,
        (reboot_command, engine),
    );
    let heartbeat = start_heartbeat(&ctx, &cmd).await?;
    let outcome = tokio::select! {
        () = manager.run() => Ok(()),
        stop = super::fleetlock::stopped() => stop,
    };
    heartbeat.stop().await;
    Ok(outcome?)
}

/// Starts this manager's heartbeat (`cpi nodes` shows a node whose manager is gone).
async fn start_heartbeat(
    ctx: &CloudContext<'_>,
    cmd: &RebootManagerCommand,
) -> Result<Heartbeat, CommandError> {
    let etcd = ctx.etcd().await?.clone();
    let keys = RebootKeys::new(&ctx.keys().await?);
    let boot_id = Host::new(&cmd.root, Vec::new()).boot_id()?;
    let info = ManagerInfo {
        node: cmd.node.clone(),
        boot_id,
        pid: std::process::id(),
        started_at: Timestamp::now().to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        stopped_at: None,
    };
    Ok(Heartbeat::start(etcd, keys, info))
}
