//! Driving the harness's daemons: `ci/cluster` commands (reboots, dockerd restarts), the
//! reboot managers it runs, boot ids and flags. Tests that use these restart daemons of
//! the shared cluster and must take turns within their binary.

use std::path::PathBuf;
use std::process::Command;

use crate::bosh;
use crate::cluster::cluster;
use crate::cpi::cpi_bin;

/// `ci/cluster ARGS` for the running cluster.
pub fn harness(args: &[&str]) {
    let c = cluster();
    let out = Command::new(bosh::repo().join("ci/cluster"))
        .args(args)
        .env("MC_CLUSTER_NAME", c["name"].as_str().unwrap())
        .env("MC_CLUSTER_DIR", c["dir"].as_str().unwrap())
        .env("MC_CPI_BIN", cpi_bin())
        .output()
        .expect("run ci/cluster");
    assert!(
        out.status.success(),
        "ci/cluster {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The reboot managers of the given nodes (1-based), stopped when dropped.
pub struct Managers(Vec<usize>);

impl Managers {
    /// Starts them.
    pub fn start(nodes: &[usize]) -> Managers {
        start_managers(nodes);
        Managers(nodes.to_vec())
    }
}

/// `ci/cluster manager I start` with the tests' flags, for each of `nodes`.
pub fn start_managers(nodes: &[usize]) {
    for i in nodes {
        harness(&[
            "manager",
            &i.to_string(),
            "start",
            "--grace-period",
            "10s",
            "--settle",
            "2s",
            "--poll",
            "300ms",
            "--update-engine-command=",
        ]);
    }
}

impl Drop for Managers {
    fn drop(&mut self) {
        for i in &self.0 {
            harness(&["manager", &i.to_string(), "stop"]);
        }
    }
}

/// What node-prep treats as node i's `/`.
pub fn node_root(i: usize) -> PathBuf {
    PathBuf::from(cluster()["nodes"][i - 1]["prep_root"].as_str().unwrap())
}

/// Node i's boot id (a reboot makes a new one).
pub fn boot_id(i: usize) -> String {
    std::fs::read_to_string(node_root(i).join("proc/sys/kernel/random/boot_id"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The pid of node i's dockerd, as the cluster file has it.
pub fn dockerd_pid(i: usize) -> u64 {
    cluster()["nodes"][i - 1]["dockerd_pid"].as_u64().unwrap()
}

/// Flags node i as needing a reboot (what an update does).
pub fn flag(i: usize) {
    std::fs::write(node_root(i).join("run/reboot-required"), "").unwrap();
}
