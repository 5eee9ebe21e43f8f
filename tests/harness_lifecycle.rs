//! `ci/cluster up` twice is harmless and `ci/cluster down` leaves no namespace, process,
//! mount, link, route, firewall rule or cgroup behind. Runs a second, small cluster with
//! its own name and address ranges beside the main one, and looks only at what is its
//! own: other clusters on the machine neither disturb it nor count as its leftovers.

use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;

const NAME: &str = "mct";

/// The test cluster's underlay (first three octets) and flannel /16: ranges no address
/// or route of this machine uses yet, so the cluster never meets another one.
fn ranges() -> &'static (String, String) {
    static RANGES: OnceLock<(String, String)> = OnceLock::new();
    RANGES.get_or_init(|| {
        let used = format!("{}\n{}", sh("ip -4 -o addr show"), sh("ip route show"));
        let underlay = (230..=254)
            .map(|c| format!("192.168.{c}"))
            .find(|u| !used.contains(&format!("{u}.")))
            .expect("a free 192.168.x.0/24 for the test cluster's underlay");
        let flannel = (200..=250)
            .find(|b| !used.contains(&format!("10.{b}.")))
            .map(|b| format!("10.{b}.0.0/16"))
            .expect("a free 10.x.0.0/16 for the test cluster's flannel network");
        (underlay, flannel)
    })
}

fn harness(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/cluster");
    let (underlay, flannel) = ranges();
    Command::new(&script)
        .args(args)
        .env("MC_CLUSTER_NAME", NAME)
        .env("MC_UNDERLAY", underlay)
        .env("MC_FLANNEL_NETWORK", flannel)
        .env("MC_CLUSTER_DIR", dir())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", script.display()))
}

fn dir() -> PathBuf {
    PathBuf::from("/var/lib/moltencore-cluster").join(NAME)
}

fn sh(cmd: &str) -> String {
    let out = Command::new("sh").arg("-c").arg(cmd).output().unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn assert_ok(what: &str, out: &std::process::Output) {
    assert!(
        out.status.success(),
        "{what} failed ({:?}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Everything of this cluster that is visible from the root namespace.
fn leftovers() -> Vec<String> {
    let d = dir().display().to_string();
    let mut found = Vec::new();
    let netns = sh("ip netns list");
    if netns.lines().any(|l| l.starts_with(&format!("{NAME}-"))) {
        found.push(format!("netns: {netns}"));
    }
    let links = sh("ip -o link show");
    for l in links.lines().filter(|l| l.contains(&format!(" {NAME}-"))) {
        found.push(format!("link: {l}"));
    }
    let procs = sh(&format!("pgrep -af '{d}' | grep -v pgrep || true"));
    if !procs.trim().is_empty() {
        found.push(format!("processes: {procs}"));
    }
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap();
    for m in mounts
        .lines()
        .filter(|m| m.contains(&d) || m.contains(&format!("/run/netns/{NAME}-")))
    {
        found.push(format!("mount: {m}"));
    }
    // Routes of this cluster: over its bridge, via its nodes, or its flannel fence.
    let (underlay, flannel) = ranges();
    let routes = sh("ip route show");
    for r in routes.lines().filter(|r| {
        r.contains(&format!(" dev {NAME}-br"))
            || r.contains(&format!(" via {underlay}."))
            || r.starts_with(&format!("unreachable {flannel}"))
    }) {
        found.push(format!("route: {r}"));
    }
    let cgroups = sh(&format!(
        "ls -d /sys/fs/cgroup/moltencore-{NAME}-n* /sys/fs/cgroup/*/moltencore-{NAME}-n* 2>/dev/null || true"
    ));
    for c in cgroups.lines().filter(|c| !c.trim().is_empty()) {
        found.push(format!("cgroup: {c}"));
    }
    for table in ["filter", "nat"] {
        let rules = sh(&format!("iptables -t {table} -S"));
        for r in rules
            .lines()
            .filter(|r| r.contains(&format!("moltencore-harness-{NAME}")))
        {
            found.push(format!("iptables {table}: {r}"));
        }
    }
    if dir().exists() {
        found.push(format!("directory {d}"));
    }
    found
}

#[test]
fn up_twice_then_down_leaves_nothing_behind() {
    // A leftover from an earlier crashed run is cleaned first, and must be cleanable.
    assert_ok("initial down", &harness(&["down"]));
    assert_eq!(leftovers(), Vec::<String>::new(), "dirty before the test");

    assert_ok("up", &harness(&["up", "--nodes", "2"]));
    assert!(!leftovers().is_empty(), "up made nothing visible");
    assert!(
        dir().join("cluster.json").exists(),
        "up wrote no cluster.json"
    );
    assert_ok("second up", &harness(&["up", "--nodes", "2"]));
    assert_ok("status", &harness(&["status"]));

    // Leave a running container behind, as a crashed test would: down must still clean.
    let stemcell = std::env::var("MC_TEST_STEMCELL_DIR").unwrap_or_else(|_| {
        panic!(
            "MC_TEST_STEMCELL_DIR is not set: build it with ci/build-test-stemcell (ci/test does)"
        )
    });
    let socket = dir().join("n1/docker.sock");
    let run = format!(
        "set -e; export DOCKER_HOST=unix://{}; docker import {stemcell}/image leftover:1 >/dev/null; \
         docker run -d --network bosh --name leftover leftover:1 /bin/sh -c 'trap \"\" TERM; while :; do sleep 1; done' >/dev/null; \
         docker ps --format '{{{{.Names}}}}'",
        socket.display()
    );
    let out = Command::new("sh").arg("-c").arg(&run).output().unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("leftover"),
        "could not start a container on n1: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    assert_ok("down", &harness(&["down"]));
    assert_eq!(leftovers(), Vec::<String>::new());
    assert_ok("second down", &harness(&["down"]));
}
