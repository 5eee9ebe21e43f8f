//! `ci/cluster up` twice is harmless and `ci/cluster down` leaves no namespace, process,
//! mount, link, route or firewall rule behind. Runs a second, small cluster with its own
//! name and address ranges beside the main one.

use std::path::PathBuf;
use std::process::Command;

const NAME: &str = "mct";
const UNDERLAY: &str = "192.168.211";
const FLANNEL: &str = "10.2.0.0/16";

fn harness(args: &[&str]) -> std::process::Output {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("ci/cluster");
    Command::new(&script)
        .args(args)
        .env("MC_CLUSTER_NAME", NAME)
        .env("MC_UNDERLAY", UNDERLAY)
        .env("MC_FLANNEL_NETWORK", FLANNEL)
        .env("MC_ETCD_PORT", "23791")
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
    let routes = sh("ip route show");
    for r in routes
        .lines()
        .filter(|r| r.starts_with("10.2.") || r.contains(UNDERLAY))
    {
        found.push(format!("route: {r}"));
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
