//! What node-prep did, for people (a short summary; "no change" on an unchanged host) and
//! for programs (`--json`, which the local cluster harness reads to start each dockerd
//! exactly as node-prep configured it).

use std::net::Ipv4Addr;
use std::path::PathBuf;

use ipnet::Ipv4Net;
use serde::Serialize;

use super::identity::Identity;
use crate::cluster::NodeRecord;
use crate::node_name::NodeName;

/// The outcome of one node-prep run.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub(crate) node: NodeName,
    pub(crate) root: PathBuf,
    pub(crate) dry_run: bool,
    /// Whether anything changed (or, in a dry run, would change).
    pub(crate) changed: bool,
    /// One line per change, in the order made.
    pub(crate) changes: Vec<String>,
    /// systemd calls made (or recorded, for a root other than `/` or a dry run).
    pub(crate) systemd: Vec<String>,
    pub(crate) warnings: Vec<String>,
    pub(crate) identity: Identity,
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
    /// The PublicIP of this node's flannel lease.
    pub(crate) flannel_ip: Ipv4Addr,
    pub(crate) docker: DockerFacts,
    pub(crate) certificate: Option<CertFacts>,
    /// The node record as written to etcd.
    pub(crate) record: NodeRecord,
}

/// How this node's Docker is set up; file paths as they are from here (below the root).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct DockerFacts {
    /// Where the CPI reaches Docker.
    pub(crate) endpoint: String,
    /// The address the TLS socket unit listens on.
    pub(crate) listen: String,
    pub(crate) ca_file: PathBuf,
    pub(crate) cert_file: PathBuf,
    pub(crate) key_file: PathBuf,
    pub(crate) env_file: PathBuf,
    pub(crate) dropin_file: PathBuf,
    pub(crate) socket_unit_file: PathBuf,
    pub(crate) network_unit_file: PathBuf,
    /// dockerd's options as configured (paths below the root).
    pub(crate) dockerd_args: Vec<String>,
    pub(crate) bip: Ipv4Net,
    pub(crate) network_name: String,
}

/// The Docker server certificate in force.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct CertFacts {
    pub(crate) fingerprint: String,
    pub(crate) not_after: String,
    pub(crate) sans: Vec<String>,
}

impl Report {
    /// The human summary.
    pub(crate) fn human(&self) -> String {
        let mut out = format!(
            "node-prep {} ({}, subnet {}, {}){}\n",
            self.node,
            self.identity.private_ip,
            self.subnet,
            self.docker.endpoint,
            if self.dry_run { " [dry run]" } else { "" }
        );
        if self.changes.is_empty() {
            out.push_str("no change\n");
        } else {
            out.push_str("changes:\n");
            for c in &self.changes {
                out.push_str(&format!("  - {c}\n"));
            }
        }
        if !self.systemd.is_empty() {
            let label = if self.dry_run {
                "systemd (not run)"
            } else {
                "systemd"
            };
            out.push_str(&format!("{label}: {}\n", self.systemd.join("; ")));
        }
        for w in &self.warnings {
            out.push_str(&format!("warning: {w}\n"));
        }
        out
    }
}
