//! `cpi node-prep`: turns a Flatcar host with etcd, flannel and Docker into a cluster node,
//! idempotently, at every boot. Every file goes below a root (`/` at boot, a temp dir in
//! tests), every systemd call through one seam, and all checks that can refuse the run
//! come before the first write, so bad input leaves nothing half-written.

pub(crate) mod apply;
pub(crate) mod ca_store;
pub(crate) mod disk_mounts;
pub(crate) mod docker_units;
pub(crate) mod error;
pub(crate) mod files;
pub(crate) mod flannel;
pub(crate) mod identity;
pub(crate) mod network;
pub mod pki;
pub mod reboot_unit;
pub(crate) mod register;
pub(crate) mod report;
pub(crate) mod server_cert;
pub(crate) mod steps;
pub(crate) mod systemd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;

use crate::cluster::{Capacity, Etcd, EtcdAccess, Keys};
pub(crate) use error::NodePrepError;
use error::Result;
use files::Root;
use flannel::FlannelFlags;
use identity::IdentityFlags;
use report::Report;
use steps::{Changes, Outcome, Prep};

/// Everything one node-prep run needs.
#[derive(Debug, Clone)]
pub(crate) struct PrepOptions {
    /// Where files go (`/` on a node).
    pub(crate) root: PathBuf,
    /// Report only: no etcd write, no file, no systemd call.
    pub(crate) dry_run: bool,
    pub(crate) identity: IdentityFlags,
    pub(crate) etcd: EtcdAccess,
    pub(crate) keys: Keys,
    pub(crate) flannel: FlannelFlags,
    /// The address flanneld announces as its lease's PublicIP (flanneld's `--public-ip`);
    /// default: the private IP, which flanneld uses unless told otherwise.
    pub(crate) flannel_ip: Option<Ipv4Addr>,
    /// Docker's TLS port on the private IP.
    pub(crate) docker_port: u16,
    /// docker0's address, off the flannel network.
    pub(crate) docker_bip: Ipv4Net,
    /// MTU override; else flannel's subnet.env, else derived from the backend.
    pub(crate) mtu: Option<u32>,
    /// The link MTU the flannel MTU is derived from when subnet.env is not there yet.
    pub(crate) link_mtu: u32,
    pub(crate) network_name: String,
    /// The cpi binary's path on the node (for the network unit).
    pub(crate) cpi_path: String,
    /// Validity of a new server certificate.
    pub(crate) cert_days: u32,
    /// Re-issue a server certificate this many days before it expires.
    pub(crate) renew_before_days: u32,
    /// Capacity override (else this machine's CPUs and memory).
    pub(crate) capacity: Option<Capacity>,
    /// Take over a registered name whose private IP differs.
    pub(crate) replace: bool,
}

/// Connects to etcd, turning a failure into a message that says what to check.
pub(crate) async fn connect(access: &EtcdAccess) -> Result<Etcd> {
    Etcd::connect_with(access)
        .await
        .map_err(|e| unreachable(access, &e.to_string()))
}

/// An etcd failure while doing `what`, naming the endpoints (without the CPI's error
/// class: node-prep is not answering the director).
pub(crate) fn etcd_failed(etcd: &Etcd, what: &str, e: &etcd_client::Error) -> NodePrepError {
    NodePrepError::Etcd {
        message: etcd.error(what, e).to_string(),
    }
}

fn unreachable(access: &EtcdAccess, detail: &str) -> NodePrepError {
    NodePrepError::EtcdUnreachable {
        endpoints: access.endpoints.join(", "),
        detail: detail.to_string(),
    }
}

/// The first request of a run failed: an etcd failure there most likely means etcd is out
/// of reach, so it says what to check; any other failure stays as it is.
pub(crate) fn first_request_failed(access: &EtcdAccess, e: NodePrepError) -> NodePrepError {
    match e {
        NodePrepError::Etcd { message } => unreachable(access, &message),
        other => other,
    }
}

/// Runs node-prep, step by step; every check that can refuse the run comes before the
/// first write.
pub(crate) async fn prepare(opts: &PrepOptions) -> Result<Report> {
    let root = Root::new(&opts.root, opts.dry_run);
    let id = identity::resolve(&opts.identity, &root)?;
    let etcd = connect(&opts.etcd).await?;
    let prep = Prep { opts, root, etcd };
    let mut changes = Changes::default();
    let checked = changes.take(prep.check(&id).await?);
    let ca = changes.take(prep.cluster_ca(&checked).await?);
    let flannel = changes.take(prep.flannel_config(&checked).await?);
    let net = changes.take(prep.subnet(&flannel, &checked, &id).await?);
    let cert = changes.take(prep.server_cert(&ca, &id)?);
    let settings = prep.docker_settings(&id, net.mtu);
    let mut wanted = prep.docker_files(&settings, &ca, cert.cert());
    wanted.push(prep.reboot_unit(&id));
    let written = changes.take(prep.write_files(&wanted)?);
    let registration = changes.take(prep.register(&id, &settings, net, cert.cert()).await?);
    let systemd = prep.systemd(&written)?;
    prep.report(Outcome {
        id,
        ca,
        net,
        cert,
        settings,
        registration,
        systemd,
        changes,
    })
}

/// Issues a client certificate from the cluster CA into `out` (`ca.pem`, `cert.pem`,
/// `key.pem` with mode 0600). Returns the written paths and the certificate's fingerprint.
pub(crate) async fn issue_client(
    access: &EtcdAccess,
    keys: &Keys,
    out: &Path,
    common_name: &str,
    days: u32,
) -> Result<(Vec<PathBuf>, String)> {
    let etcd = connect(access).await?;
    let ca = ca_store::load(&etcd, keys)
        .await
        .map_err(|e| first_request_failed(access, e))?
        .ok_or_else(|| {
            NodePrepError::ClusterCa(format!(
                "there is no cluster CA at {} yet: run node-prep on a node first",
                keys.ca_cert()
            ))
        })?;
    let client = pki::issue_client(&ca, common_name, days)?;
    let files = [
        ("ca.pem", ca.cert_pem.as_str(), 0o644),
        ("cert.pem", client.cert_pem.as_str(), 0o644),
        ("key.pem", client.key_pem.expose(), 0o600),
    ];
    // All three are written aside first and only then put in place, so a failure never
    // leaves a certificate next to a key it does not belong to.
    let mut staged = Vec::new();
    for (name, content, mode) in files {
        let aside = out.join(format!(".{name}.new"));
        if let Err(e) = files::write_atomic(&aside, content.as_bytes(), mode) {
            for (a, _) in &staged {
                let _ = std::fs::remove_file(a);
            }
            return Err(e);
        }
        staged.push((aside, out.join(name)));
    }
    let mut written = Vec::new();
    for (aside, path) in staged {
        std::fs::rename(&aside, &path)
            .map_err(|e| NodePrepError::file("put in place", &path, e))?;
        written.push(path);
    }
    Ok((written, pki::fingerprint(&client.cert_pem)?))
}
