//! `cpi node-prep network`: the BOSH bridge network on this node's flannel subnet, run by
//! its own oneshot unit after flanneld and docker. Reads `subnet.env`, creates the network
//! (network address, explicit gateway, flannel MTU, no Docker masquerading) or checks an
//! existing one, and masquerades only traffic that leaves the flannel network.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::process::Command;

use bollard::Docker;
use bollard::models::{Ipam, IpamConfig, NetworkCreateRequest, NetworkInspect};
use ipnet::Ipv4Net;
use serde::Serialize;

use super::error::{NodePrepError, Result};
use super::files::Root;
use super::flannel::SubnetEnv;
use crate::docker::node::describe;

/// Options of the network step.
#[derive(Debug, Clone)]
pub(crate) struct NetworkOptions {
    pub(crate) root: Root,
    /// `unix:///path/to/docker.sock`.
    pub(crate) docker_host: String,
    /// flanneld's subnet.env, as a path on the node (below the root).
    pub(crate) subnet_env: String,
    pub(crate) network_name: String,
    /// Add the masquerade rule for traffic leaving the flannel network.
    pub(crate) masquerade: bool,
}

/// What the network step did (or would do).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct NetworkReport {
    pub(crate) network_name: String,
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
    pub(crate) flannel_network: Ipv4Net,
    pub(crate) changes: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// Label put on the networks node-prep creates.
pub(crate) const LABEL: &str = crate::labels::NETWORK;

/// Runs the network step: subnet.env, docker0 off the flannel network, the BOSH network,
/// the masquerade rule.
pub(crate) async fn run(opts: &NetworkOptions) -> Result<NetworkReport> {
    let env = read_subnet_env(opts)?;
    let docker = connect(&opts.docker_host).await?;
    let mut report = NetworkReport {
        network_name: opts.network_name.clone(),
        subnet: env.subnet,
        gateway: env.gateway,
        mtu: env.mtu,
        flannel_network: env.network,
        changes: Vec::new(),
        warnings: Vec::new(),
    };
    check_docker0(&docker, &opts.docker_host, &env).await?;
    match ensure_network(&docker, opts, &env).await? {
        NetworkOutcome::Checked(warnings) => report.warnings.extend(warnings),
        NetworkOutcome::Created => report.changes.push(format!(
            "created Docker network {} ({}, gateway {}, MTU {})",
            opts.network_name, env.subnet, env.gateway, env.mtu
        )),
    }
    if opts.masquerade && ensure_masquerade(&opts.network_name, &env, opts.root.dry_run())? {
        report.changes.push(format!(
            "added NAT rule: masquerade {} only when leaving {}",
            env.subnet, env.network
        ));
    }
    Ok(report)
}

/// flanneld's subnet.env, which must be there: this step runs after flanneld.
fn read_subnet_env(opts: &NetworkOptions) -> Result<SubnetEnv> {
    let env_path = opts.root.join(&opts.subnet_env);
    let text = opts.root.read(&opts.subnet_env)?.ok_or_else(|| {
        NodePrepError::Flannel(format!(
            "{} does not exist: flanneld writes it once it has the node's subnet; run this after flanneld.service",
            env_path.display()
        ))
    })?;
    SubnetEnv::parse(&text, &env_path.display().to_string())
}

/// A Docker API failure at `host` while doing `doing`.
fn docker_failed(host: &str, doing: String, e: &bollard::errors::Error) -> NodePrepError {
    NodePrepError::Docker {
        host: host.to_string(),
        doing,
        detail: describe(e),
    }
}

/// docker0 must be off the flannel network, or the BOSH network's routes would clash.
async fn check_docker0(docker: &Docker, host: &str, env: &SubnetEnv) -> Result<()> {
    let bridge = docker.inspect_network("bridge", None).await.map_err(|e| {
        docker_failed(
            host,
            "inspecting docker0's network 'bridge' failed".into(),
            &e,
        )
    })?;
    for (subnet, _) in ipam(&bridge) {
        if subnet.contains(&env.network) || env.network.contains(&subnet) {
            return Err(NodePrepError::DockerNetwork(format!(
                "docker0 (network 'bridge' at {host}) uses {subnet}, which overlaps the flannel network {}: move it off with dockerd's --bip (node-prep sets DOCKER_OPT_BIP) and restart docker",
                env.network
            )));
        }
    }
    Ok(())
}

/// What became of the BOSH network.
enum NetworkOutcome {
    /// It existed and fits; these warnings are about it.
    Checked(Vec<String>),
    /// It was (or, in a dry run, would be) created.
    Created,
}

/// Checks the BOSH network, or creates it when Docker has none of that name.
async fn ensure_network(
    docker: &Docker,
    opts: &NetworkOptions,
    env: &SubnetEnv,
) -> Result<NetworkOutcome> {
    let host = &opts.docker_host;
    let name = &opts.network_name;
    match docker.inspect_network(name, None).await {
        Ok(existing) => Ok(NetworkOutcome::Checked(check_existing(
            name, host, &existing, env,
        )?)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => {
            if !opts.root.dry_run() {
                docker
                    .create_network(create_request(name, env))
                    .await
                    .map_err(|e| {
                        let doing = format!(
                            "creating network {name} ({}, gateway {}) failed",
                            env.subnet, env.gateway
                        );
                        docker_failed(host, doing, &e)
                    })?;
            }
            Ok(NetworkOutcome::Created)
        }
        Err(e) => Err(docker_failed(
            host,
            format!("inspecting network {name} failed"),
            &e,
        )),
    }
}

async fn connect(host: &str) -> Result<Docker> {
    let Some(path) = host.strip_prefix("unix://") else {
        return Err(NodePrepError::Flag(format!(
            "--docker-host '{host}' must be unix:///path/to/docker.sock"
        )));
    };
    let docker = Docker::connect_with_unix(path, 120, bollard::API_DEFAULT_VERSION)
        .map_err(|e| docker_failed(host, "setting up a client failed".into(), &e))?;
    docker
        .negotiate_version()
        .await
        .map_err(|e| docker_failed(host, "does not answer".into(), &e))
}

fn ipam(n: &NetworkInspect) -> Vec<(Ipv4Net, Option<Ipv4Addr>)> {
    n.ipam
        .as_ref()
        .and_then(|i| i.config.as_ref())
        .map(|cfgs| {
            cfgs.iter()
                .filter_map(|c| {
                    let subnet = c.subnet.as_deref()?.parse::<Ipv4Net>().ok()?;
                    let gw = c.gateway.as_deref().and_then(|g| g.parse().ok());
                    Some((subnet, gw))
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Checks an existing network against the flannel subnet: a different subnet, gateway or
/// driver is an error naming both values; a different MTU only a warning.
pub(crate) fn check_existing(
    name: &str,
    docker_host: &str,
    n: &NetworkInspect,
    env: &SubnetEnv,
) -> Result<Vec<String>> {
    let found = ipam(n);
    let have = found
        .iter()
        .map(|(s, g)| {
            format!(
                "{s} gateway {}",
                g.map(|g| g.to_string()).unwrap_or("none".into())
            )
        })
        .collect::<Vec<_>>()
        .join(", ");
    let fix = format!(
        "move its containers off and remove it (docker network rm {name}) so node-prep can create it, or fix the node's flannel subnet"
    );
    if n.driver.as_deref() != Some("bridge") {
        return Err(NodePrepError::DockerNetwork(format!(
            "Docker network {name} at {docker_host} has driver {}, but a bridge network is needed; {fix}",
            n.driver.as_deref().unwrap_or("(none)")
        )));
    }
    if found != [(env.subnet, Some(env.gateway))] {
        return Err(NodePrepError::DockerNetwork(format!(
            "Docker network {name} at {docker_host} has subnet {}, but this node's flannel subnet is {} gateway {}; {fix}",
            if have.is_empty() {
                "(none)".to_string()
            } else {
                have
            },
            env.subnet,
            env.gateway
        )));
    }
    let mtu = n
        .options
        .as_ref()
        .and_then(|o| o.get("com.docker.network.driver.mtu"))
        .and_then(|m| m.parse::<u32>().ok());
    Ok(match mtu {
        Some(m) if m == env.mtu => Vec::new(),
        other => vec![format!(
            "Docker network {name} has MTU {}, flannel's is {}; recreate the network to change it",
            other.map(|m| m.to_string()).unwrap_or("(default)".into()),
            env.mtu
        )],
    })
}

fn create_request(name: &str, env: &SubnetEnv) -> NetworkCreateRequest {
    let options: HashMap<String, String> = [
        (
            "com.docker.network.bridge.enable_ip_masquerade",
            "false".to_string(),
        ),
        ("com.docker.network.driver.mtu", env.mtu.to_string()),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    NetworkCreateRequest {
        name: name.to_string(),
        driver: Some("bridge".into()),
        ipam: Some(Ipam {
            driver: Some("default".into()),
            config: Some(vec![IpamConfig {
                subnet: Some(env.subnet.to_string()),
                gateway: Some(env.gateway.to_string()),
                ..Default::default()
            }]),
            options: None,
        }),
        options: Some(options),
        labels: Some([(LABEL.to_string(), "node-prep".to_string())].into()),
        ..Default::default()
    }
}

/// Ensures `nat POSTROUTING -s <subnet> ! -d <flannel network> -j MASQUERADE` exists:
/// VMs reach the outside through the node's address but keep their real IPs towards other
/// nodes. Returns whether the rule was (or would be) added.
fn ensure_masquerade(name: &str, env: &SubnetEnv, dry_run: bool) -> Result<bool> {
    let comment = format!("moltencore network {name}");
    let subnet = env.subnet.to_string();
    let network = env.network.to_string();
    let rule = |op: &str| -> Vec<String> {
        [
            "-w",
            "-t",
            "nat",
            op,
            "POSTROUTING",
            "-s",
            &subnet,
            "!",
            "-d",
            &network,
            "-m",
            "comment",
            "--comment",
            &comment,
            "-j",
            "MASQUERADE",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect()
    };
    let not_run = |error| NodePrepError::CommandNotRun {
        command: "iptables".into(),
        error,
    };
    let check = Command::new("iptables")
        .args(rule("-C"))
        .output()
        .map_err(not_run)?;
    if check.status.success() {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    let add = Command::new("iptables")
        .args(rule("-A"))
        .output()
        .map_err(not_run)?;
    if !add.status.success() {
        return Err(NodePrepError::CommandFailed {
            doing: format!("iptables adding the masquerade rule for {subnet}"),
            status: add.status.to_string(),
            stderr: String::from_utf8_lossy(&add.stderr).trim().to_string(),
        });
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env() -> SubnetEnv {
        SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\n",
            "t",
        )
        .unwrap()
    }

    fn net(subnet: &str, gw: &str, mtu: &str) -> NetworkInspect {
        NetworkInspect {
            driver: Some("bridge".into()),
            ipam: Some(Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.into()),
                    gateway: Some(gw.into()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            options: Some([("com.docker.network.driver.mtu".to_string(), mtu.to_string())].into()),
            ..Default::default()
        }
    }

    #[test]
    fn a_matching_network_passes() {
        assert!(
            check_existing(
                "bosh",
                "unix:///s",
                &net("10.1.2.0/24", "10.1.2.1", "1450"),
                &env()
            )
            .unwrap()
            .is_empty()
        );
        let w = check_existing(
            "bosh",
            "unix:///s",
            &net("10.1.2.0/24", "10.1.2.1", "1500"),
            &env(),
        )
        .unwrap();
        assert!(w[0].contains("1500"));
    }

    #[test]
    fn a_wrong_subnet_names_both_values() {
        let e = check_existing(
            "bosh",
            "unix:///s",
            &net("10.1.9.0/24", "10.1.9.1", "1450"),
            &env(),
        )
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("10.1.9.0/24") && e.contains("10.1.2.0/24"),
            "{e}"
        );
        assert!(e.contains("docker network rm bosh"), "{e}");
    }

    #[test]
    fn the_request_uses_the_network_address_and_explicit_gateway() {
        let r = create_request("bosh", &env());
        let cfg = &r.ipam.unwrap().config.unwrap()[0];
        assert_eq!(cfg.subnet.as_deref(), Some("10.1.2.0/24"));
        assert_eq!(cfg.gateway.as_deref(), Some("10.1.2.1"));
        let o = r.options.unwrap();
        assert_eq!(o["com.docker.network.bridge.enable_ip_masquerade"], "false");
        assert_eq!(o["com.docker.network.driver.mtu"], "1450");
    }
}
