//! `cpi nodes`: the operator's view of the cluster, read from etcd (with VM count and
//! memory in use from the VM index), with a live check of every node's Docker daemon over
//! mutual TLS, each node's reboot state and whether its reboot manager runs; `cpi nodes
//! cordon|uncordon NAME` flip the state placement honours.

use std::path::PathBuf;

use futures_util::future::join_all;
use serde::Serialize;

use super::error::{CommandError, Failure, Outcome, load_config};
use crate::cloud::CloudContext;
use crate::cluster::{NodeRecord, NodeState, NodeUsage};
use crate::docker::DockerError;
use crate::node_name::NodeName;
use crate::nodeprep::register;
use crate::reboot::heartbeat::ManagerStatus;
use crate::reboot::overview::RebootOverview;

/// One row of the listing.
#[derive(Debug, Serialize)]
pub(crate) struct NodeStatus {
    pub(crate) name: NodeName,
    pub(crate) docker_endpoint: String,
    pub(crate) subnet: String,
    pub(crate) state: String,
    /// VMs the index places on this node.
    pub(crate) vms: u32,
    /// Memory those VMs use, MiB.
    pub(crate) memory_mib_used: u64,
    /// The node's memory, MiB.
    pub(crate) memory_mib: u64,
    pub(crate) lease: String,
    /// Whether the node's Docker answered over mutual TLS.
    pub(crate) docker: DockerStatus,
    /// The reboot manager's record, while the node reboots.
    pub(crate) reboot: Option<crate::reboot::record::RebootRecord>,
    /// What the node's reboot manager's heartbeat says (absent: nothing known).
    pub(crate) manager: Option<ManagerStatus>,
}

/// The live check of one node's Docker daemon, as `cpi nodes --json` prints it:
/// `{"reachable": true, "version": "..."}` or `{"reachable": false, "error": "..."}`.
#[derive(Debug, Serialize)]
pub(crate) struct DockerStatus {
    pub(crate) reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) version: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) error: Option<String>,
}

impl From<Result<String, DockerError>> for DockerStatus {
    fn from(answer: Result<String, DockerError>) -> Self {
        match answer {
            Ok(version) => DockerStatus {
                reachable: true,
                version: Some(version),
                error: None,
            },
            Err(error) => DockerStatus {
                reachable: false,
                version: None,
                error: Some(error.to_string()),
            },
        }
    }
}

/// Lists the nodes; exit code 0 when every node answered, 1 otherwise (2 when the cluster
/// could not be read at all).
pub fn run(config_path: PathBuf, json: bool) -> Outcome {
    let unreadable = |error| Failure { error, code: 2 };
    let (rows, problems, reboots) = super::block_on(collect(config_path))
        .map_err(unreadable)?
        .map_err(unreadable)?;
    if json {
        let doc = serde_json::json!({"nodes": rows, "problems": problems,
            "reboot": {"groups": reboots.groups, "requested": reboots.requested,
                       "problems": reboots.problems}});
        println!("{doc:#}");
    } else {
        print_table(&rows, &problems, &reboots);
    }
    Ok(i32::from(
        rows.is_empty() || rows.iter().any(|r| !r.docker.reachable),
    ))
}

/// What `cpi nodes` lists: a row per node, the problems found, the reboot overview.
pub(crate) type Listing = (Vec<NodeStatus>, Vec<String>, RebootOverview);

/// Reads the view and asks every node's Docker for its version, all nodes at once.
pub(crate) async fn collect(config_path: PathBuf) -> Result<Listing, CommandError> {
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    load_config(&ctx, &config_path).await?;
    let view = ctx.view().await?;
    let access = ctx.docker_access(&view).await?;
    let checks = view.nodes.iter().map(|node| {
        let access = access.clone();
        async move {
            let client = access.connect(&node.name, &node.docker_endpoint).await?;
            client.version().await
        }
    });
    let results = join_all(checks).await;
    let reboots = super::node_reboot::overview(&ctx)
        .await
        .unwrap_or_else(|e| RebootOverview {
            problems: vec![format!("reboot state unreadable: {e}")],
            ..Default::default()
        });
    let rows = view
        .nodes
        .iter()
        .zip(results)
        .map(|(node, docker)| {
            status(
                node,
                view.lease_of(node).is_some(),
                view.usage_of(&node.name),
                docker,
                reboots.of(&node.name).cloned(),
                reboots.manager(&node.name),
            )
        })
        .collect();
    Ok((rows, view.problems, reboots))
}

fn status(
    node: &NodeRecord,
    leased: bool,
    usage: NodeUsage,
    docker: Result<String, DockerError>,
    reboot: Option<crate::reboot::record::RebootRecord>,
    manager: Option<ManagerStatus>,
) -> NodeStatus {
    NodeStatus {
        name: node.name.clone(),
        docker_endpoint: node.docker_endpoint.clone(),
        subnet: node.subnet.to_string(),
        state: node.state.to_string(),
        vms: usage.vms,
        memory_mib_used: usage.memory_mib,
        memory_mib: node.capacity.memory_mib,
        lease: if leased { "ok" } else { "missing" }.to_string(),
        docker: docker.into(),
        reboot,
        manager,
    }
}

fn print_table(rows: &[NodeStatus], problems: &[String], reboots: &RebootOverview) {
    let header = [
        "NAME", "ENDPOINT", "SUBNET", "STATE", "VMS", "MEMORY", "LEASE", "DOCKER", "MANAGER",
        "REBOOT",
    ];
    let cells: Vec<[String; 10]> = rows
        .iter()
        .map(|r| {
            [
                r.name.to_string(),
                r.docker_endpoint.clone(),
                r.subnet.clone(),
                r.state.clone(),
                r.vms.to_string(),
                format!("{}/{} MiB", r.memory_mib_used, r.memory_mib),
                r.lease.clone(),
                match (&r.docker.version, &r.docker.error) {
                    (Some(v), _) => format!("ok ({v})"),
                    (None, e) => format!("UNREACHABLE: {}", e.as_deref().unwrap_or("")),
                },
                reboots.manager_cell(&r.name),
                reboots.cell(&r.name),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for row in &cells {
        for (w, c) in widths.iter_mut().zip(row) {
            *w = (*w).max(c.len());
        }
    }
    let line = |cols: Vec<&str>| {
        cols.iter()
            .zip(widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect::<Vec<_>>()
            .join("  ")
            .trim_end()
            .to_string()
    };
    println!("{}", line(header.to_vec()));
    for row in &cells {
        println!("{}", line(row.iter().map(String::as_str).collect()));
    }
    if rows.is_empty() {
        println!("(no nodes registered)");
    }
    for p in problems {
        println!("warning: {p}");
    }
    super::node_reboot::print(reboots);
}

/// Sets node `name`'s state in its etcd record (compare-and-swap); the state it had before.
pub(crate) async fn change_state(
    ctx: &CloudContext<'_>,
    config_path: &std::path::Path,
    name: &NodeName,
    state: NodeState,
) -> Result<NodeState, CommandError> {
    load_config(ctx, config_path).await?;
    let etcd = ctx.etcd().await?;
    let keys = ctx.keys().await?;
    Ok(register::set_state(etcd, &keys, name, state).await?)
}

/// Sets a node's state (`cpi nodes cordon|uncordon NAME`); exit code 0 when the node has
/// that state afterwards, 1 on error.
pub fn set_state(config_path: PathBuf, name: &str, state: NodeState) -> Outcome {
    let name = &NodeName::parse(name)?;
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    let before = super::block_on(change_state(&ctx, &config_path, name, state))??;
    if before == state {
        println!("node {name} is already {state}");
    } else {
        println!("node {name}: {before} -> {state}");
    }
    Ok(0)
}
