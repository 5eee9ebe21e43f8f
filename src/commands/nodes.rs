//! `cpi nodes`: the operator's view of the cluster, read from etcd, with a live check of
//! every node's Docker daemon over mutual TLS.

use std::path::PathBuf;

use futures_util::future::join_all;
use serde::Serialize;

use crate::cloud::CloudContext;
use crate::cluster::NodeRecord;
use crate::protocol::CpiError;

/// One row of the listing.
#[derive(Debug, Serialize)]
pub struct NodeStatus {
    pub name: String,
    pub docker_endpoint: String,
    pub subnet: String,
    pub state: String,
    pub lease: String,
    /// `Ok(version)` when Docker answered, else why not.
    pub docker: Result<String, String>,
}

/// Lists the nodes; exit code 0 when every node answered, 1 otherwise (2 when the cluster
/// could not be read at all).
pub fn run(config_path: PathBuf, json: bool) -> i32 {
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cannot start the async runtime: {e}");
            return 2;
        }
    };
    match rt.block_on(collect(config_path)) {
        Ok((rows, problems)) => {
            if json {
                let doc = serde_json::json!({"nodes": rows, "problems": problems});
                println!("{doc:#}");
            } else {
                print_table(&rows, &problems);
            }
            if rows.is_empty() || rows.iter().any(|r| r.docker.is_err()) {
                1
            } else {
                0
            }
        }
        Err(e) => {
            eprintln!("{e}");
            2
        }
    }
}

/// Reads the view and asks every node's Docker for its version, all nodes at once.
pub async fn collect(config_path: PathBuf) -> Result<(Vec<NodeStatus>, Vec<String>), CpiError> {
    let ctx = CloudContext::new(config_path, Default::default(), None);
    let view = ctx.view().await?;
    let access = ctx.docker_access(&view).await?;
    let checks = view.nodes.iter().map(|node| {
        let access = access.clone();
        async move {
            let client = access.connect(&node.name, &node.docker_endpoint).await;
            match client {
                Ok(c) => c.version().await.map_err(|e| e.message),
                Err(e) => Err(e.message),
            }
        }
    });
    let results = join_all(checks).await;
    let rows = view
        .nodes
        .iter()
        .zip(results)
        .map(|(node, docker)| status(node, view.lease_of(node).is_some(), docker))
        .collect();
    Ok((rows, view.problems))
}

fn status(node: &NodeRecord, leased: bool, docker: Result<String, String>) -> NodeStatus {
    NodeStatus {
        name: node.name.clone(),
        docker_endpoint: node.docker_endpoint.clone(),
        subnet: node.subnet.to_string(),
        state: node.state.to_string(),
        lease: if leased { "ok" } else { "missing" }.to_string(),
        docker,
    }
}

fn print_table(rows: &[NodeStatus], problems: &[String]) {
    let header = ["NAME", "ENDPOINT", "SUBNET", "STATE", "LEASE", "DOCKER"];
    let cells: Vec<[String; 6]> = rows
        .iter()
        .map(|r| {
            [
                r.name.clone(),
                r.docker_endpoint.clone(),
                r.subnet.clone(),
                r.state.clone(),
                r.lease.clone(),
                match &r.docker {
                    Ok(v) => format!("ok ({v})"),
                    Err(e) => format!("UNREACHABLE: {e}"),
                },
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
}
