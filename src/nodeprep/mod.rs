//! `cpi node-prep`: turns a Flatcar host with etcd, flannel and Docker into a cluster node,
//! idempotently, at every boot. Every file goes below a root (`/` at boot, a temp dir in
//! tests), every systemd call through one seam, and all checks that can refuse the run
//! come before the first write, so bad input leaves nothing half-written.

pub mod apply;
pub mod ca_store;
pub mod docker_units;
pub mod files;
pub mod flannel;
pub mod identity;
pub mod network;
pub mod pki;
pub mod reboot_unit;
pub mod register;
pub mod report;
pub mod server_cert;
pub mod systemd;

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use ipnet::Ipv4Net;
use time::OffsetDateTime;

use crate::cluster::{Capacity, Etcd, EtcdAccess, Keys, NodeRecord, NodeState};
use ca_store::CaOutcome;
use docker_units as du;
use files::{FileChange, Root};
use flannel::{FlannelFlags, SubnetSource};
use identity::IdentityFlags;
use report::{CertFacts, DockerFacts, Report};
use server_cert::ServerCert;
use systemd::{Recording, Systemctl, Systemd};

/// Everything one node-prep run needs.
#[derive(Debug, Clone)]
pub struct PrepOptions {
    /// Where files go (`/` on a node).
    pub root: PathBuf,
    /// Report only: no etcd write, no file, no systemd call.
    pub dry_run: bool,
    pub identity: IdentityFlags,
    pub etcd: EtcdAccess,
    pub keys: Keys,
    pub flannel: FlannelFlags,
    /// The address flanneld announces as its lease's PublicIP (flanneld's `--public-ip`);
    /// default: the private IP, which flanneld uses unless told otherwise.
    pub flannel_ip: Option<Ipv4Addr>,
    /// Docker's TLS port on the private IP.
    pub docker_port: u16,
    /// docker0's address, off the flannel network.
    pub docker_bip: Ipv4Net,
    /// MTU override; else flannel's subnet.env, else derived from the backend.
    pub mtu: Option<u32>,
    /// The link MTU the flannel MTU is derived from when subnet.env is not there yet.
    pub link_mtu: u32,
    pub network_name: String,
    /// The cpi binary's path on the node (for the network unit).
    pub cpi_path: String,
    /// Validity of a new server certificate.
    pub cert_days: u32,
    /// Re-issue a server certificate this many days before it expires.
    pub renew_before_days: u32,
    /// Capacity override (else this machine's CPUs and memory).
    pub capacity: Option<Capacity>,
    /// Take over a registered name whose private IP differs.
    pub replace: bool,
}

/// Connects to etcd, turning a failure into a message that says what to check.
pub async fn connect(access: &EtcdAccess) -> Result<Etcd> {
    Etcd::connect_with(access)
        .await
        .map_err(|e| unreachable(access, &e))
}

/// An etcd failure while doing `what`, naming the endpoints (without the CPI's error
/// class: node-prep is not answering the director).
pub(crate) fn etcd_failed(etcd: &Etcd, what: &str, e: &etcd_client::Error) -> anyhow::Error {
    anyhow!(etcd.error(what, e).to_string())
}

fn unreachable(access: &EtcdAccess, e: &dyn std::fmt::Display) -> anyhow::Error {
    anyhow!(
        "{e}\ncannot use etcd at {}: check --etcd-endpoints and the client TLS flags (--etcd-ca, --etcd-cert, --etcd-key), and that etcd is running",
        access.endpoints.join(", ")
    )
}

/// Runs node-prep: identity, PKI, flannel, Docker files and units, registration.
pub async fn prepare(opts: &PrepOptions) -> Result<Report> {
    let root = Root::new(&opts.root, opts.dry_run);
    let keys = &opts.keys;
    let id = identity::resolve(&opts.identity, &root)?;
    let mut changes: Vec<String> = Vec::new();
    let mut warnings: Vec<String> = Vec::new();
    // "issued X" after the fact, "would issue X" in a dry run.
    let say = |past: &str, infinitive: &str, rest: &str| {
        if opts.dry_run {
            format!("would {infinitive} {rest}")
        } else {
            format!("{past} {rest}")
        }
    };

    // Reads and checks first: nothing is written before they pass.
    let etcd = connect(&opts.etcd).await?;
    let existing_flannel = flannel::read_config(&etcd, keys)
        .await
        .map_err(|e| unreachable(&opts.etcd, &format!("{e:#}")))?;
    let plan = flannel::plan_config(
        existing_flannel.as_ref(),
        &keys.flannel_config(),
        &opts.flannel,
    )?;
    warnings.extend(plan.warnings.iter().cloned());
    let network = plan.config.network;
    if network.contains(&opts.docker_bip.trunc()) || opts.docker_bip.trunc().contains(&network) {
        bail!(
            "--docker-bip {} overlaps the flannel network {network}: docker0 must stay off it (the default is 10.255.240.1/20)",
            opts.docker_bip
        );
    }
    // Two hosts with one name would share a record, and VM calls would go to the wrong
    // daemon: a registered name with another private IP is refused unless replaced.
    let existing = register::read(&etcd, keys, &id.name).await?;
    if let Some(existing) = &existing
        && existing.private_ip != id.private_ip
        && !opts.replace
    {
        bail!(
            "node name {} is already registered with private IP {} (this host: {}); give this host another --name, or pass --replace if it replaces that host",
            id.name,
            existing.private_ip,
            id.private_ip
        );
    }
    let plain_etcd = opts.etcd.endpoints.iter().any(|e| e.starts_with("http://"));
    if plain_etcd && opts.etcd.auth.is_none() {
        warnings.push(format!(
            "etcd is reached over plain http without auth: the cluster CA key at {} can be read by anyone who reaches etcd; use TLS and etcd auth/RBAC",
            keys.ca_key()
        ));
    }
    if let Some(ca) = ca_store::load(&etcd, keys).await? {
        // A CA that cannot sign would fail later, after files were written.
        pki::issue_client(&ca, "check", 1).with_context(|| {
            format!(
                "the cluster CA at {} / {} is unusable",
                keys.ca_cert(),
                keys.ca_key()
            )
        })?;
    }

    // Cluster PKI.
    let ca = ca_store::ensure(&etcd, keys, opts.dry_run).await?;
    match &ca {
        CaOutcome::Created(_) => changes.push(format!(
            "created the cluster CA (etcd {} and {})",
            keys.ca_cert(),
            keys.ca_key()
        )),
        CaOutcome::WouldCreate => changes.push(format!(
            "would create the cluster CA (etcd {} and {})",
            keys.ca_cert(),
            keys.ca_key()
        )),
        CaOutcome::Existing(_) => {}
    }

    // Flannel.
    let config = if plan.create && opts.dry_run {
        changes.push(format!(
            "would write flannel config {}: {}",
            keys.flannel_config(),
            serde_json::to_string(&plan.config)?
        ));
        plan.config.clone()
    } else {
        let (config, created) = flannel::ensure_config(&etcd, keys, &plan, &opts.flannel).await?;
        if created {
            changes.push(format!(
                "wrote flannel config {}: {}",
                keys.flannel_config(),
                serde_json::to_string(&config)?
            ));
        }
        config
    };
    let flannel_ip = opts.flannel_ip.unwrap_or(id.private_ip);
    let (subnet, source, lease_warnings) = flannel::ensure_subnet(
        &etcd,
        keys,
        &config,
        flannel_ip,
        existing.as_ref().map(|r| r.subnet),
        opts.dry_run,
    )
    .await?;
    warnings.extend(lease_warnings);
    match source {
        SubnetSource::Lease => {}
        SubnetSource::Reserved | SubnetSource::WouldReserve => changes.push(say(
            "reserved",
            "reserve",
            &format!(
                "flannel subnet {subnet} for {flannel_ip} ({}{})",
                keys.flannel_subnets(),
                crate::cluster::SubnetLease::key_name(&subnet)
            ),
        )),
    }
    let gateway = Ipv4Addr::from(u32::from(subnet.network()) + 1);
    // flanneld's own value when it has written it; else what an earlier run settled on for
    // this subnet (at boot subnet.env is not there yet: without this the MTU, and with it
    // Docker's configuration, would flip between boot and a later run); else computed.
    let recorded_mtu = existing
        .as_ref()
        .filter(|r| r.subnet == subnet)
        .map(|r| r.mtu);
    let mtu = match opts.mtu {
        Some(m) => m,
        None => flannel_mtu(&root, subnet)?
            .or(recorded_mtu)
            .unwrap_or_else(|| flannel::mtu_for(config.backend_type(), opts.link_mtu)),
    };

    // Docker server certificate.
    let decision = server_cert::decide(
        &root,
        ca.ca(),
        &id,
        opts.cert_days,
        opts.renew_before_days,
        OffsetDateTime::now_utc(),
    )?;
    match &decision {
        ServerCert::Keep(_) => {}
        ServerCert::Issued { reason: None, .. } => {
            changes.push(say("issued", "issue", "the Docker server certificate"))
        }
        ServerCert::Issued {
            reason: Some(reason),
            ..
        } => changes.push(say(
            "re-issued",
            "re-issue",
            &format!("the Docker server certificate: {reason}"),
        )),
        ServerCert::NoCa => changes.push("would issue the Docker server certificate".into()),
    }
    let server = decision.cert();

    // Files.
    let settings = du::DockerSettings {
        node: id.name.clone(),
        private_ip: id.private_ip,
        port: opts.docker_port,
        bip: opts.docker_bip,
        mtu,
        network_name: opts.network_name.clone(),
        cpi_path: opts.cpi_path.clone(),
    };
    let mut wanted = du::wanted_files(&settings, ca.ca().map(|c| c.cert_pem.as_str()), server);
    wanted.push(reboot_unit::wanted(&id.name, &opts.cpi_path));
    let written = apply::write_files(&root, &wanted)?;
    for (path, change) in &written.files {
        let file = root.join(path).display().to_string();
        changes.push(match change {
            FileChange::Created => say("wrote", "write", &file),
            _ => say("updated", "update", &file),
        });
    }

    // Registration.
    let fingerprint = server
        .as_ref()
        .map(|s| pki::fingerprint(&s.cert_pem))
        .transpose()?;
    let capacity = match opts.capacity {
        Some(c) => c,
        None => register::host_capacity()?,
    };
    let prepared_at = register::now_rfc3339();
    let registration = register::register(
        &etcd,
        keys,
        &id.name,
        |previous| {
            // Checked again here: a host with the same name may have registered since.
            if let Some(p) = previous
                && p.private_ip != id.private_ip
                && !opts.replace
            {
                bail!(
                    "node name {} was just registered by another host (private IP {}; this host: {}); give this host another --name",
                    id.name,
                    p.private_ip,
                    id.private_ip
                );
            }
            Ok(NodeRecord {
            name: id.name.clone(),
            private_ip: id.private_ip,
            public_ip: Some(id.public_ip),
            flannel_ip: (flannel_ip != id.private_ip).then_some(flannel_ip),
            docker_endpoint: settings.endpoint(),
            subnet,
            gateway,
            mtu,
            network_name: opts.network_name.clone(),
            // A cordoned node stays cordoned across preps.
            state: previous.map(|p| p.state).unwrap_or(NodeState::Ready),
            capacity,
            cert_fingerprint: fingerprint.clone(),
            prepared_at: Some(prepared_at.clone()),
        })
        },
        opts.dry_run,
    )
    .await?;
    if registration.changed() {
        let record = format!("node record {}", keys.node(&id.name));
        changes.push(if registration.previous.is_some() {
            say("updated", "update", &record)
        } else {
            say("wrote", "write", &record)
        });
    }

    // systemd, last: Docker restarts only when its configuration changed.
    let mut sd: Box<dyn Systemd> = if root.is_system_root() && !opts.dry_run {
        Box::new(Systemctl::default())
    } else {
        Box::new(Recording::default())
    };
    apply::run_systemd(sd.as_mut(), &root, &written)?;

    let certificate = match server {
        Some(s) => {
            let ca_pem = &ca.ca().map(|c| c.cert_pem.clone()).unwrap_or_default();
            let info = pki::inspect(&s.cert_pem, ca_pem)?;
            Some(CertFacts {
                fingerprint: info.fingerprint,
                not_after: info.not_after.date().to_string(),
                sans: info.sans.into_iter().collect(),
            })
        }
        None => None,
    };
    let here = |p: &str| root.join(p);
    Ok(Report {
        node: id.name.clone(),
        root: opts.root.clone(),
        dry_run: opts.dry_run,
        changed: !changes.is_empty(),
        changes,
        systemd: sd.actions().to_vec(),
        warnings,
        subnet,
        gateway,
        mtu,
        flannel_ip,
        docker: DockerFacts {
            endpoint: settings.endpoint(),
            listen: settings.endpoint(),
            ca_file: here(du::CA_FILE),
            cert_file: here(du::SERVER_CERT_FILE),
            key_file: here(du::SERVER_KEY_FILE),
            env_file: here(du::ENV_FILE),
            dropin_file: here(du::DROPIN_FILE),
            socket_unit_file: here(&du::unit_path(du::TLS_SOCKET_UNIT)),
            network_unit_file: here(&du::unit_path(du::NETWORK_UNIT)),
            dockerd_args: du::dockerd_args(&settings, root.dir()),
            bip: opts.docker_bip,
            network_name: opts.network_name.clone(),
        },
        certificate,
        record: registration.record,
        identity: id,
    })
}

/// FLANNEL_MTU from subnet.env, when flanneld already wrote it for this subnet.
fn flannel_mtu(root: &Root, subnet: Ipv4Net) -> Result<Option<u32>> {
    let Some(text) = root.read(flannel::SUBNET_ENV)? else {
        return Ok(None);
    };
    let origin = root.join(flannel::SUBNET_ENV).display().to_string();
    Ok(flannel::SubnetEnv::parse(&text, &origin)
        .ok()
        .filter(|env| env.subnet == subnet)
        .map(|env| env.mtu))
}

/// Issues a client certificate from the cluster CA into `out` (`ca.pem`, `cert.pem`,
/// `key.pem` with mode 0600). Returns the written paths and the certificate's fingerprint.
pub async fn issue_client(
    access: &EtcdAccess,
    keys: &Keys,
    out: &Path,
    common_name: &str,
    days: u32,
) -> Result<(Vec<PathBuf>, String)> {
    let etcd = connect(access).await?;
    let ca = ca_store::load(&etcd, keys)
        .await
        .map_err(|e| unreachable(access, &format!("{e:#}")))?
        .with_context(|| {
            format!(
                "there is no cluster CA at {} yet: run node-prep on a node first",
                keys.ca_cert()
            )
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
            .with_context(|| format!("cannot put {} in place", path.display()))?;
        written.push(path);
    }
    Ok((written, pki::fingerprint(&client.cert_pem)?))
}
