//! Flannel's side of a node: the network config (written only when absent, never
//! changed), this node's subnet (its lease, found by public IP, or a reservation made
//! before flanneld starts), the MTU, and `/run/flannel/subnet.env`.

use std::net::Ipv4Addr;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use ipnet::Ipv4Net;

use super::error::{NodePrepError, Result, to_json};
use crate::cluster::model::FlannelBackend;
use crate::cluster::{Etcd, FlannelConfig, Keys, SubnetLease};

/// Where flanneld writes the node's subnet, MTU and network.
pub(crate) const SUBNET_ENV: &str = "/run/flannel/subnet.env";

/// What the operator asked for; used to create a missing config and to check an existing
/// one.
#[derive(Debug, Clone, Default)]
pub(crate) struct FlannelFlags {
    pub(crate) network: Option<Ipv4Net>,
    pub(crate) subnet_len: Option<u8>,
    pub(crate) backend: Option<String>,
}

/// Backend used for a new config when `--flannel-backend` is not given.
pub(crate) const DEFAULT_BACKEND: &str = "vxlan";

/// The config to use, and whether it still has to be written.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ConfigPlan {
    pub(crate) config: FlannelConfig,
    pub(crate) create: bool,
    pub(crate) warnings: Vec<String>,
}

/// Checks the flags against an existing config (a conflict is an error: node-prep never
/// changes an existing config), or builds the config to create.
pub(crate) fn plan_config(
    existing: Option<&FlannelConfig>,
    key: &str,
    flags: &FlannelFlags,
) -> Result<ConfigPlan> {
    if let Some(cfg) = existing {
        check_flags(cfg, key, flags)?;
        let mut warnings = Vec::new();
        if cfg.backend.is_none() {
            warnings.push(format!(
                "flannel config {key} sets no Backend.Type, so flannel falls back to udp; set it explicitly"
            ));
        }
        check_shape(&cfg.network, cfg.subnet_len, key)?;
        return Ok(ConfigPlan {
            config: cfg.clone(),
            create: false,
            warnings,
        });
    }
    let Some(network) = flags.network else {
        return Err(NodePrepError::Flannel(format!(
            "there is no flannel config at {key} and no --flannel-network to create it from: give --flannel-network (e.g. 10.1.0.0/16)"
        )));
    };
    let subnet_len = flags.subnet_len.unwrap_or(24);
    check_shape(&network, subnet_len, key)?;
    Ok(ConfigPlan {
        config: FlannelConfig {
            network: network.trunc(),
            subnet_len,
            backend: Some(FlannelBackend {
                kind: flags
                    .backend
                    .clone()
                    .unwrap_or_else(|| DEFAULT_BACKEND.to_string()),
            }),
            subnet_min: None,
            subnet_max: None,
        },
        create: true,
        warnings: Vec::new(),
    })
}

/// Refuses a flag that differs from the existing config: node-prep never changes it.
fn check_flags(cfg: &FlannelConfig, key: &str, flags: &FlannelFlags) -> Result<()> {
    let conflict = |field: &str,
                    has: &dyn std::fmt::Display,
                    flag: &str,
                    given: &dyn std::fmt::Display| {
        NodePrepError::Flannel(format!(
            "flannel config {key} has {field} {has}, but {flag} is {given}; node-prep never changes an existing flannel config: fix or drop the flag, or change the key yourself (and restart flanneld on every node)"
        ))
    };
    // Compared as networks: `10.1.0.5/16` names the same network as `10.1.0.0/16`.
    if let Some(n) = flags.network
        && n.trunc() != cfg.network.trunc()
    {
        return Err(conflict("Network", &cfg.network, "--flannel-network", &n));
    }
    if let Some(l) = flags.subnet_len
        && l != cfg.subnet_len
    {
        return Err(conflict(
            "SubnetLen",
            &cfg.subnet_len,
            "--flannel-subnet-len",
            &l,
        ));
    }
    if let Some(b) = &flags.backend
        && Some(b.as_str()) != cfg.backend_type()
    {
        let has = cfg.backend_type().unwrap_or("(none: flannel uses udp)");
        return Err(conflict("Backend.Type", &has, "--flannel-backend", b));
    }
    Ok(())
}

fn check_shape(network: &Ipv4Net, subnet_len: u8, key: &str) -> Result<()> {
    if subnet_len <= network.prefix_len() || subnet_len > 30 {
        return Err(NodePrepError::Flannel(format!(
            "flannel config {key}: SubnetLen {subnet_len} must be longer than the network's /{} and at most 30",
            network.prefix_len()
        )));
    }
    Ok(())
}

/// The lease flannel (or a reservation) holds for `public_ip`.
pub(crate) fn lease_of(leases: &[SubnetLease], public_ip: Ipv4Addr) -> Option<&SubnetLease> {
    leases.iter().find(|l| l.public_ip == Some(public_ip))
}

/// Subnets flannel may hand out that no lease holds, lowest first. As flannel does, the
/// first and the last subnet of the network are left out unless SubnetMin/SubnetMax say
/// otherwise.
pub(crate) fn free_subnets(config: &FlannelConfig, leases: &[SubnetLease]) -> Vec<Ipv4Net> {
    let Ok(all) = config.network.subnets(config.subnet_len) else {
        return Vec::new();
    };
    let all: Vec<Ipv4Net> = all.collect();
    let (Some(first), Some(last)) = (
        all.get(1),
        all.len().checked_sub(2).and_then(|i| all.get(i)),
    ) else {
        return Vec::new();
    };
    let min = config.subnet_min.unwrap_or(first.network());
    let max = config.subnet_max.unwrap_or(last.network());
    all.into_iter()
        .filter(|s| s.network() >= min && s.network() <= max)
        .filter(|s| {
            !leases
                .iter()
                .any(|l| l.subnet.contains(s) || s.contains(&l.subnet))
        })
        .collect()
}

/// MTU flannel gives its network: the link MTU less the backend's encapsulation.
pub(crate) fn mtu_for(backend: Option<&str>, link_mtu: u32) -> u32 {
    let overhead = match backend.unwrap_or("udp") {
        "host-gw" | "alloc" => 0,
        "vxlan" => 50,
        "ipip" => 20,
        "udp" => 28,
        "wireguard" => 80,
        _ => 50,
    };
    link_mtu.saturating_sub(overhead)
}

/// Stores the config if it is still absent. Returns the config in force and whether this
/// run wrote it; another node that won the race must have written a compatible one.
pub(crate) async fn ensure_config(
    etcd: &Etcd,
    keys: &Keys,
    plan: &ConfigPlan,
    flags: &FlannelFlags,
) -> Result<(FlannelConfig, bool)> {
    if !plan.create {
        return Ok((plan.config.clone(), false));
    }
    let key = keys.flannel_config();
    let value = to_json(&plan.config, &format!("the flannel config {key}"))?;
    let txn = Txn::new()
        .when(vec![Compare::create_revision(
            key.clone(),
            CompareOp::Equal,
            0,
        )])
        .and_then(vec![TxnOp::put(key.clone(), value, None)])
        .or_else(vec![TxnOp::get(key.clone(), None)]);
    let response =
        etcd.client().txn(txn).await.map_err(|e| {
            super::etcd_failed(etcd, &format!("writing the flannel config {key}"), &e)
        })?;
    if response.succeeded() {
        return Ok((plan.config.clone(), true));
    }
    let existing = read_config(etcd, keys).await?.ok_or_else(|| {
        NodePrepError::Flannel(format!(
            "the flannel config {key} appeared and vanished while this node wrote its own"
        ))
    })?;
    let again = plan_config(Some(&existing), &key, flags)?;
    Ok((again.config, false))
}

/// Reads `<flannel_prefix>/config`; an unreadable value is an error naming the key.
pub(crate) async fn read_config(etcd: &Etcd, keys: &Keys) -> Result<Option<FlannelConfig>> {
    let key = keys.flannel_config();
    let response =
        etcd.client().get(key.clone(), None).await.map_err(|e| {
            super::etcd_failed(etcd, &format!("reading the flannel config {key}"), &e)
        })?;
    response
        .kvs()
        .first()
        .map(|kv| {
            serde_json::from_slice::<FlannelConfig>(kv.value()).map_err(|e| {
                NodePrepError::Flannel(format!(
                    "the flannel config {key} is not valid flannel JSON ({}): fix it: {e}",
                    String::from_utf8_lossy(kv.value())
                ))
            })
        })
        .transpose()
}

/// Reads all leases under `<flannel_prefix>/subnets/`. Unreadable leases are skipped and
/// returned as warnings (their subnets still count as taken when their key parses).
pub(crate) async fn read_leases(
    etcd: &Etcd,
    keys: &Keys,
) -> Result<(Vec<SubnetLease>, Vec<String>)> {
    let prefix = keys.flannel_subnets();
    let response = etcd
        .client()
        .get(prefix.clone(), Some(GetOptions::new().with_prefix()))
        .await
        .map_err(|e| {
            super::etcd_failed(etcd, &format!("reading the flannel leases {prefix}*"), &e)
        })?;
    let mut leases = Vec::new();
    let mut warnings = Vec::new();
    for kv in response.kvs() {
        let key = String::from_utf8_lossy(kv.key()).to_string();
        let name = key.strip_prefix(&prefix).unwrap_or(&key);
        match SubnetLease::parse(name, kv.value()) {
            Ok(l) => leases.push(l),
            Err(e) => {
                warnings.push(e.to_string());
                if let Ok(l) = SubnetLease::parse(name, b"{}") {
                    leases.push(l);
                }
            }
        }
    }
    Ok((leases, warnings))
}

/// How the node got its subnet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SubnetSource {
    /// A lease (flanneld's, or an earlier reservation) names this node's public IP.
    Lease,
    /// This run reserved it.
    Reserved,
    /// Dry run: this subnet would be reserved.
    WouldReserve,
}

/// Finds this node's subnet by its public IP, or reserves one (a lease key without an etcd
/// lease, created only if absent; retried when another node took it): the subnet the node
/// had before (`previous`, from its record) when it is still free, so a node whose lease
/// expired while it was down comes back on the subnet its VMs and BOSH's IPs are on; else
/// the lowest free one.
pub(crate) async fn ensure_subnet(
    etcd: &Etcd,
    keys: &Keys,
    config: &FlannelConfig,
    public_ip: Ipv4Addr,
    previous: Option<Ipv4Net>,
    dry_run: bool,
) -> Result<(Ipv4Net, SubnetSource, Vec<String>)> {
    for _ in 0..20 {
        let (leases, warnings) = read_leases(etcd, keys).await?;
        if let Some(l) = lease_of(&leases, public_ip) {
            return Ok((l.subnet, SubnetSource::Lease, warnings));
        }
        let free = free_subnets(config, &leases);
        let chosen = previous
            .filter(|p| free.contains(p))
            .or_else(|| free.first().copied());
        let Some(subnet) = chosen else {
            return Err(NodePrepError::Flannel(format!(
                "no free /{} left in flannel network {} for {public_ip} ({} leases under {})",
                config.subnet_len,
                config.network,
                leases.len(),
                keys.flannel_subnets()
            )));
        };
        if dry_run {
            return Ok((subnet, SubnetSource::WouldReserve, warnings));
        }
        let key = format!(
            "{}{}",
            keys.flannel_subnets(),
            SubnetLease::key_name(&subnet)
        );
        let backend = config.backend_type().unwrap_or("udp");
        let txn = Txn::new()
            .when(vec![Compare::create_revision(
                key.clone(),
                CompareOp::Equal,
                0,
            )])
            .and_then(vec![TxnOp::put(
                key.clone(),
                SubnetLease::reservation_value(public_ip, backend),
                None,
            )]);
        let response = etcd.client().txn(txn).await.map_err(|e| {
            super::etcd_failed(etcd, &format!("reserving flannel subnet {key}"), &e)
        })?;
        if response.succeeded() {
            return Ok((subnet, SubnetSource::Reserved, warnings));
        }
    }
    Err(NodePrepError::Flannel(format!(
        "could not reserve a flannel subnet for {public_ip}: other nodes kept taking the free ones; run node-prep again"
    )))
}

/// The values of flanneld's `subnet.env`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct SubnetEnv {
    /// FLANNEL_NETWORK.
    pub(crate) network: Ipv4Net,
    /// FLANNEL_SUBNET as a network (`10.1.2.0/24`).
    pub(crate) subnet: Ipv4Net,
    /// FLANNEL_SUBNET's address, the bridge gateway (`10.1.2.1`).
    pub(crate) gateway: Ipv4Addr,
    /// FLANNEL_MTU.
    pub(crate) mtu: u32,
}

impl SubnetEnv {
    /// Parses `subnet.env` text; `origin` names the file in errors.
    pub(crate) fn parse(text: &str, origin: &str) -> Result<SubnetEnv> {
        let get = |name: &str| {
            text.lines()
                .filter_map(|l| l.trim().split_once('='))
                .find(|(k, _)| k.trim() == name)
                .map(|(_, v)| v.trim().trim_matches('"').to_string())
                .ok_or_else(|| NodePrepError::Flannel(format!("{origin} has no {name}")))
        };
        let bad = |what: &str, e: &dyn std::fmt::Display| {
            NodePrepError::Flannel(format!("{origin}: {what}: {e}"))
        };
        let network: Ipv4Net = get("FLANNEL_NETWORK")?
            .parse()
            .map_err(|e| bad("FLANNEL_NETWORK is not an IPv4 network", &e))?;
        let with_host: Ipv4Net = get("FLANNEL_SUBNET")?
            .parse()
            .map_err(|e| bad("FLANNEL_SUBNET is not address/length", &e))?;
        let mtu: u32 = get("FLANNEL_MTU")?
            .parse()
            .map_err(|e| bad("FLANNEL_MTU is not a number", &e))?;
        let subnet = with_host.trunc();
        // flanneld writes the first host address; a bare network address means .1.
        let gateway = if with_host.addr() == subnet.network() {
            Ipv4Addr::from(u32::from(subnet.network()) + 1)
        } else {
            with_host.addr()
        };
        if !network.contains(&subnet) {
            return Err(NodePrepError::Flannel(format!(
                "{origin}: FLANNEL_SUBNET {subnet} is not inside FLANNEL_NETWORK {network}"
            )));
        }
        Ok(SubnetEnv {
            network: network.trunc(),
            subnet,
            gateway,
            mtu,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(network: &str) -> FlannelConfig {
        serde_json::from_str(&format!(
            r#"{{"Network":"{network}","SubnetLen":24,"Backend":{{"Type":"vxlan"}}}}"#
        ))
        .unwrap()
    }

    fn lease(subnet: &str, ip: [u8; 4]) -> SubnetLease {
        SubnetLease {
            subnet: subnet.parse().unwrap(),
            public_ip: Some(Ipv4Addr::from(ip)),
            backend_type: Some("vxlan".into()),
        }
    }

    #[test]
    fn existing_config_is_kept_and_conflicts_are_named() {
        let existing = cfg("10.1.0.0/16");
        let same = FlannelFlags {
            network: Some("10.1.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        let p = plan_config(Some(&existing), "/f/config", &same).unwrap();
        assert!(!p.create);
        // The flag that created the config, host bits and all, still matches it.
        let with_host_bits = FlannelFlags {
            network: Some("10.1.0.5/16".parse().unwrap()),
            ..Default::default()
        };
        assert!(plan_config(Some(&existing), "/f/config", &with_host_bits).is_ok());
        let other = FlannelFlags {
            network: Some("10.9.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        let e = plan_config(Some(&existing), "/f/config", &other)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("10.1.0.0/16") && e.contains("10.9.0.0/16") && e.contains("/f/config"),
            "{e}"
        );
        let backend = FlannelFlags {
            backend: Some("host-gw".into()),
            ..Default::default()
        };
        assert!(plan_config(Some(&existing), "/f/config", &backend).is_err());
        let mut no_backend = existing.clone();
        no_backend.backend = None;
        let p = plan_config(Some(&no_backend), "/f/config", &FlannelFlags::default()).unwrap();
        assert!(p.warnings[0].contains("udp"));
    }

    #[test]
    fn a_new_config_sets_everything_explicitly() {
        let e = plan_config(None, "/f/config", &FlannelFlags::default()).unwrap_err();
        assert!(e.to_string().contains("--flannel-network"));
        let flags = FlannelFlags {
            network: Some("10.4.0.0/16".parse().unwrap()),
            ..Default::default()
        };
        let p = plan_config(None, "/f/config", &flags).unwrap();
        assert!(p.create);
        assert_eq!(
            serde_json::to_string(&p.config).unwrap(),
            r#"{"Network":"10.4.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}"#
        );
        let bad = FlannelFlags {
            network: Some("10.4.0.0/16".parse().unwrap()),
            subnet_len: Some(16),
            ..Default::default()
        };
        assert!(plan_config(None, "/f/config", &bad).is_err());
    }

    #[test]
    fn free_subnets_skip_leases_and_the_ends() {
        let c = cfg("10.1.0.0/16");
        let leases = [
            lease("10.1.1.0/24", [192, 0, 2, 1]),
            lease("10.1.3.0/24", [192, 0, 2, 3]),
        ];
        let free = free_subnets(&c, &leases);
        assert_eq!(free[0], "10.1.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(free[1], "10.1.4.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(
            free.last().unwrap(),
            &"10.1.254.0/24".parse::<Ipv4Net>().unwrap()
        );
        assert_eq!(free.len(), 254 - 2);
        let mut bounded = c.clone();
        bounded.subnet_min = Some(Ipv4Addr::new(10, 1, 10, 0));
        bounded.subnet_max = Some(Ipv4Addr::new(10, 1, 11, 0));
        assert_eq!(free_subnets(&bounded, &leases).len(), 2);
        assert_eq!(
            lease_of(&leases, Ipv4Addr::new(192, 0, 2, 3))
                .unwrap()
                .subnet,
            "10.1.3.0/24".parse::<Ipv4Net>().unwrap()
        );
    }

    #[test]
    fn subnet_env_and_mtu() {
        let env = SubnetEnv::parse(
            "FLANNEL_NETWORK=10.1.0.0/16\nFLANNEL_SUBNET=10.1.2.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
            "subnet.env",
        )
        .unwrap();
        assert_eq!(env.subnet, "10.1.2.0/24".parse::<Ipv4Net>().unwrap());
        assert_eq!(env.gateway, Ipv4Addr::new(10, 1, 2, 1));
        assert_eq!(env.mtu, 1450);
        let e = SubnetEnv::parse("FLANNEL_NETWORK=10.1.0.0/16\n", "/run/x").unwrap_err();
        assert!(
            e.to_string().contains("/run/x has no FLANNEL_SUBNET"),
            "{e}"
        );
        assert_eq!(mtu_for(Some("vxlan"), 1500), 1450);
        assert_eq!(mtu_for(Some("host-gw"), 1500), 1500);
    }
}
