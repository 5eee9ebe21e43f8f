//! `cpi node-prep`: flags and output of host preparation (the work is in
//! [`crate::nodeprep`]): the boot-time run, `network` (the BOSH network, run by its own
//! unit after flanneld) and `issue-client` (a client certificate for the CPI).

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::Duration;

use super::error::NodePrepCommandError as Error;
use clap::{Args, Subcommand};
use ipnet::Ipv4Net;

use crate::cluster::{Capacity, EtcdAccess, Keys};
use crate::config::{Secret, TlsMaterial};
use crate::nodeprep::files::Root;
use crate::nodeprep::flannel::FlannelFlags;
use crate::nodeprep::identity::IdentityFlags;
use crate::nodeprep::network::{self, NetworkOptions};
use crate::nodeprep::{self as np, PrepOptions};

/// `cpi node-prep [FLAGS] | network [FLAGS] | issue-client [FLAGS]`.
#[derive(Debug, Args)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct NodePrepCommand {
    #[command(subcommand)]
    action: Option<Action>,
    #[command(flatten)]
    prep: PrepArgs,
}

#[derive(Debug, Subcommand)]
enum Action {
    /// Create (or check) the BOSH bridge network on this node's flannel subnet; run by
    /// moltencore-network.service after flanneld and docker.
    Network(NetworkArgs),
    /// Make the VM disk tree a shared mount and bind again the disks a reboot dropped; run
    /// by moltencore-disk-mounts.service before docker.service.
    DiskMounts(DiskMountsArgs),
    /// Issue a client certificate from the cluster CA (for the CPI's docker.tls).
    IssueClient(IssueClientArgs),
}

/// How to reach etcd: flags, or the environment variables etcdctl also reads.
#[derive(Debug, Args)]
struct EtcdArgs {
    /// etcd client URLs, comma separated.
    #[arg(
        long = "etcd-endpoints",
        env = "ETCDCTL_ENDPOINTS",
        value_delimiter = ',',
        required = true
    )]
    endpoints: Vec<String>,
    /// CA certificate (PEM file) of etcd's server certificate.
    #[arg(long = "etcd-ca", env = "ETCDCTL_CACERT")]
    ca: Option<PathBuf>,
    /// Client certificate (PEM file) for etcd.
    #[arg(long = "etcd-cert", env = "ETCDCTL_CERT")]
    cert: Option<PathBuf>,
    /// Client key (PEM file) for etcd.
    #[arg(long = "etcd-key", env = "ETCDCTL_KEY")]
    key: Option<PathBuf>,
    /// etcd user as USER:PASSWORD, when etcd auth is on.
    #[arg(long = "etcd-user", env = "ETCDCTL_USER", hide_env_values = true)]
    user: Option<String>,
    /// Connect and request timeout in seconds.
    #[arg(long = "etcd-timeout", default_value_t = 5)]
    timeout: u64,
    /// Prefix of MoltenCore's keys.
    #[arg(long, default_value = "/moltencore")]
    key_prefix: String,
    /// Prefix of flannel's keys.
    #[arg(long, default_value = "/coreos.com/network")]
    flannel_prefix: String,
}

impl EtcdArgs {
    fn access(&self) -> Result<(EtcdAccess, Keys), Error> {
        for (flag, prefix) in [
            ("--key-prefix", &self.key_prefix),
            ("--flannel-prefix", &self.flannel_prefix),
        ] {
            if !prefix.starts_with('/') || prefix.ends_with('/') {
                return Err(Error::Prefix {
                    flag,
                    prefix: prefix.clone(),
                });
            }
        }
        let read = |flag: &'static str, path: &Option<PathBuf>| -> Result<Option<String>, Error> {
            path.as_ref()
                .map(|p| {
                    let kind = crate::bounded_file::FileKind::TlsPem;
                    crate::bounded_file::read_to_string(p, kind).map_err(|source| Error::PemFile {
                        flag,
                        limit: kind.limit(),
                        source,
                    })
                })
                .transpose()
        };
        let ca = read("--etcd-ca", &self.ca)?;
        let cert = read("--etcd-cert", &self.cert)?;
        let key = read("--etcd-key", &self.key)?;
        if cert.is_some() != key.is_some() {
            return Err(Error::CertWithoutKey);
        }
        let tls = (ca.is_some() || cert.is_some()).then(|| TlsMaterial {
            ca_cert: ca,
            client_cert: cert,
            client_key: key.map(Secret::new),
        });
        let auth = match &self.user {
            Some(u) => {
                let (user, pw) = u.split_once(':').ok_or(Error::User)?;
                Some((user.to_string(), Secret::new(pw)))
            }
            None => None,
        };
        if self.timeout == 0 {
            return Err(Error::Timeout);
        }
        Ok((
            EtcdAccess {
                endpoints: self.endpoints.clone(),
                tls,
                auth,
                timeout: Duration::from_secs(self.timeout),
            },
            Keys::with_prefixes(&self.key_prefix, &self.flannel_prefix),
        ))
    }
}

#[derive(Debug, Args)]
struct PrepArgs {
    /// Directory treated as `/`: every file goes below it; systemd is only called for `/`.
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Only report what would change.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Node name (default: the short hostname).
    #[arg(long)]
    name: Option<String>,
    /// Hostname for the server certificate (default: metadata, /etc/hostname).
    #[arg(long)]
    hostname: Option<String>,
    /// Private IPv4: Docker listens here (default: from /run/metadata/flatcar).
    #[arg(long)]
    private_ip: Option<Ipv4Addr>,
    /// Public IPv4, for the server certificate (default: metadata, else the private IP).
    #[arg(long)]
    public_ip: Option<Ipv4Addr>,
    /// The PublicIP flanneld announces (its --public-ip): this node's lease is found and
    /// reserved by it (default: the private IP, as flanneld does).
    #[arg(long)]
    flannel_ip: Option<Ipv4Addr>,
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Flannel network, to create a missing flannel config (checked against an existing one).
    #[arg(long)]
    flannel_network: Option<Ipv4Net>,
    /// Flannel SubnetLen for a new config (default 24).
    #[arg(long)]
    flannel_subnet_len: Option<u8>,
    /// Flannel Backend.Type for a new config (default vxlan).
    #[arg(long)]
    flannel_backend: Option<String>,
    /// Docker's TLS port on the private IP.
    #[arg(long, default_value_t = 2376)]
    docker_port: u16,
    /// docker0's address, off the flannel network.
    #[arg(long, default_value = "10.255.240.1/20")]
    docker_bip: Ipv4Net,
    /// MTU for docker0 and the record (default: flannel's).
    #[arg(long)]
    mtu: Option<u32>,
    /// Link MTU that flannel's MTU is derived from before flanneld ran.
    #[arg(long, default_value_t = 1500)]
    link_mtu: u32,
    /// Name of the BOSH bridge network.
    #[arg(long, default_value = "bosh")]
    network_name: String,
    /// Path of this binary on the node, for the network unit.
    #[arg(long, default_value = "/opt/bin/cpi")]
    cpi_path: String,
    /// Validity of a new Docker server certificate, in days.
    #[arg(long, default_value_t = 365)]
    cert_days: u32,
    /// Re-issue the server certificate when it expires within this many days.
    #[arg(long, default_value_t = 30)]
    renew_before_days: u32,
    /// CPUs to register (default: this machine's).
    #[arg(long)]
    cpus: Option<u32>,
    /// Memory in MiB to register (default: this machine's).
    #[arg(long)]
    memory_mib: Option<u64>,
    /// Take over the name of a registered node whose private IP differs (a host that was
    /// replaced); without it, such a name clash is refused.
    #[arg(long)]
    replace: bool,
}

#[derive(Debug, Args)]
struct NetworkArgs {
    /// Directory treated as `/` (where subnet.env is read).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Docker's unix socket.
    #[arg(long, default_value = "unix:///var/run/docker.sock")]
    docker_host: String,
    /// flanneld's subnet.env.
    #[arg(long, default_value = "/run/flannel/subnet.env")]
    subnet_env: String,
    /// Name of the BOSH bridge network.
    #[arg(long, default_value = "bosh")]
    network_name: String,
    /// Do not add the masquerade rule for traffic leaving the flannel network.
    #[arg(long)]
    no_masquerade: bool,
    /// Only report what would change.
    #[arg(long)]
    dry_run: bool,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct DiskMountsArgs {
    /// Directory treated as `/` (where the tree is).
    #[arg(long, default_value = "/")]
    root: PathBuf,
    /// Docker's data root (`--data-root` of dockerd), where the disks' volumes are;
    /// default: `data-root` of /etc/docker/daemon.json below the root, else
    /// /var/lib/docker.
    #[arg(long)]
    docker_data_root: Option<PathBuf>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(Debug, Args)]
struct IssueClientArgs {
    #[command(flatten)]
    etcd: EtcdArgs,
    /// Directory for ca.pem, cert.pem and key.pem (0600).
    #[arg(long)]
    out: PathBuf,
    /// Common name of the certificate.
    #[arg(long, default_value = "moltencore-cpi")]
    common_name: String,
    /// Validity in days.
    #[arg(long, default_value_t = 365)]
    days: u32,
}

/// Runs the command; exit code 0, or 1 when it failed (reported as `node-prep: error: …`).
pub fn run(cmd: NodePrepCommand) -> super::error::Outcome {
    run_action(cmd)?;
    Ok(0)
}

fn run_action(cmd: NodePrepCommand) -> Result<(), Error> {
    let rt = super::runtime().map_err(Error::Runtime)?;
    match cmd.action {
        None => rt.block_on(prep(cmd.prep)),
        Some(Action::Network(args)) => rt.block_on(network(args)),
        Some(Action::DiskMounts(args)) => disk_mounts(args),
        Some(Action::IssueClient(args)) => rt.block_on(issue_client(args)),
    }
}

async fn prep(a: PrepArgs) -> Result<(), Error> {
    let (etcd, keys) = a.etcd.access()?;
    let capacity = match (a.cpus, a.memory_mib) {
        (None, None) => None,
        (cpus, mem) => {
            let host = np::register::host_capacity()?;
            Some(Capacity {
                cpus: cpus.unwrap_or(host.cpus),
                memory_mib: mem.unwrap_or(host.memory_mib),
            })
        }
    };
    let opts = PrepOptions {
        root: a.root,
        dry_run: a.dry_run,
        identity: IdentityFlags {
            name: a.name,
            hostname: a.hostname,
            private_ip: a.private_ip,
            public_ip: a.public_ip,
        },
        etcd,
        keys,
        flannel: FlannelFlags {
            network: a.flannel_network,
            subnet_len: a.flannel_subnet_len,
            backend: a.flannel_backend,
        },
        flannel_ip: a.flannel_ip,
        docker_port: a.docker_port,
        docker_bip: a.docker_bip,
        mtu: a.mtu,
        link_mtu: a.link_mtu,
        network_name: a.network_name,
        cpi_path: a.cpi_path,
        cert_days: a.cert_days,
        renew_before_days: a.renew_before_days,
        replace: a.replace,
        capacity,
    };
    let report = np::prepare(&opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print!("{}", report.human());
    }
    Ok(())
}

fn disk_mounts(a: DiskMountsArgs) -> Result<(), Error> {
    let data_root = a
        .docker_data_root
        .unwrap_or_else(|| np::disk_mounts::docker_data_root(&a.root));
    let report = np::disk_mounts::run(&a.root, &data_root)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        print_disk_mounts(&report);
    }
    if !report.failed.is_empty() {
        return Err(Error::DisksLeftOut(report.failed));
    }
    Ok(())
}

fn print_disk_mounts(report: &np::disk_mounts::DiskMountsReport) {
    let shared = if report.bound_onto_itself {
        "bound onto itself and made shared"
    } else {
        "shared"
    };
    println!("{}: {shared}", crate::echo::printable_path(&report.dir));
    for d in &report.remounted {
        println!("back in its VM: {d}");
    }
    for d in &report.missing {
        println!("warning: {d}: the disk's volume or image is gone; left out of its VM");
    }
}

async fn network(a: NetworkArgs) -> Result<(), Error> {
    let opts = NetworkOptions {
        root: Root::new(&a.root, a.dry_run),
        docker_host: a.docker_host,
        subnet_env: a.subnet_env,
        network_name: a.network_name,
        masquerade: !a.no_masquerade,
    };
    let report = network::run(&opts).await?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    println!(
        "network {} ({}, gateway {}, MTU {}){}",
        report.network_name,
        report.subnet,
        report.gateway,
        report.mtu,
        if a.dry_run { " [dry run]" } else { "" }
    );
    if report.changes.is_empty() {
        println!("no change");
    }
    for c in &report.changes {
        println!("  - {}{c}", if a.dry_run { "would: " } else { "" });
    }
    for w in &report.warnings {
        println!("warning: {w}");
    }
    Ok(())
}

async fn issue_client(a: IssueClientArgs) -> Result<(), Error> {
    let (etcd, keys) = a.etcd.access()?;
    let (files, fingerprint) =
        np::issue_client(&etcd, &keys, &a.out, &a.common_name, a.days).await?;
    println!(
        "issued client certificate '{}' (sha256 {fingerprint}), valid {} days:",
        a.common_name, a.days
    );
    for f in files {
        println!("  {}", f.display());
    }
    Ok(())
}
