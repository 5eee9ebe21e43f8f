//! The steps of one node-prep run, in the order [`super::prepare`] lists them. Each step
//! returns what it settled and the lines it adds to the report: what it wrote, reserved
//! or issued ("would ..." in a dry run) and what it warns about.

use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use time::OffsetDateTime;

use super::apply::{self, Written};
use super::ca_store::{self, CaOutcome};
use super::docker_units::{self as du, DockerSettings, WantedFile};
use super::error::{NodePrepError, Result, to_json};
use super::files::{FileChange, Root};
use super::flannel::{self, ConfigPlan, SubnetSource};
use super::identity::Identity;
use super::pki::{self, CertAndKey};
use super::register::{self, Registration};
use super::report::{CertFacts, DockerFacts, Report};
use super::server_cert::{self, ServerCert};
use super::systemd::{Recording, Systemctl, Systemd};
use super::{PrepOptions, reboot_unit};
use crate::cluster::{Etcd, FlannelConfig, NodeRecord, NodeState, SubnetLease};
use crate::node_name::NodeName;
use crate::timestamp::Timestamp;

/// The report lines of one or more steps, in the order made.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// What was (or would be) written, reserved, issued or restarted.
    pub(crate) lines: Vec<String>,
    pub(crate) warnings: Vec<String>,
}

/// What a step settled, and its report lines.
#[derive(Debug)]
pub(crate) struct Step<T> {
    pub(crate) value: T,
    pub(crate) changes: Changes,
}

impl Changes {
    /// Adds a step's lines after those before it and hands back what it settled.
    pub(crate) fn take<T>(&mut self, step: Step<T>) -> T {
        self.lines.extend(step.changes.lines);
        self.warnings.extend(step.changes.warnings);
        step.value
    }
}

impl<T> Step<T> {
    fn new(value: T) -> Step<T> {
        Step {
            value,
            changes: Changes::default(),
        }
    }

    fn change(mut self, line: String) -> Step<T> {
        self.changes.lines.push(line);
        self
    }

    fn warn(mut self, warnings: impl IntoIterator<Item = String>) -> Step<T> {
        self.changes.warnings.extend(warnings);
        self
    }
}

/// What every step reads: the options, the root and etcd.
pub(crate) struct Prep<'a> {
    pub(crate) opts: &'a PrepOptions,
    pub(crate) root: Root,
    pub(crate) etcd: Etcd,
}

/// What the checks read, for the steps after them.
pub(crate) struct Checked {
    /// The flannel config in force or to create.
    pub(crate) plan: ConfigPlan,
    /// This node's record as registered before this run.
    pub(crate) existing: Option<NodeRecord>,
    /// The cluster CA, when the cluster has one (checked usable).
    pub(crate) ca: Option<CertAndKey>,
}

/// This node's place on the flannel network.
#[derive(Debug, Clone, Copy)]
pub(crate) struct FlannelFacts {
    pub(crate) subnet: Ipv4Net,
    pub(crate) gateway: Ipv4Addr,
    pub(crate) mtu: u32,
    /// The PublicIP of the node's lease.
    pub(crate) flannel_ip: Ipv4Addr,
}

/// "issued X" after the fact, "would issue X" in a dry run.
fn say(dry_run: bool, past: &str, infinitive: &str, rest: &str) -> String {
    if dry_run {
        format!("would {infinitive} {rest}")
    } else {
        format!("{past} {rest}")
    }
}

impl Prep<'_> {
    fn say(&self, past: &str, infinitive: &str, rest: &str) -> String {
        say(self.opts.dry_run, past, infinitive, rest)
    }

    /// Reads and checks: the flannel config against the flags, docker0 off the flannel
    /// network, the node name not another host's, the cluster CA usable. Nothing is
    /// written before they pass.
    pub(crate) async fn check(&self, id: &Identity) -> Result<Step<Checked>> {
        let (opts, etcd, keys) = (self.opts, &self.etcd, &self.opts.keys);
        // The first request: failing here most likely means etcd is out of reach.
        let existing_flannel = flannel::read_config(etcd, keys)
            .await
            .map_err(|e| super::first_request_failed(&opts.etcd, e))?;
        let plan = flannel::plan_config(
            existing_flannel.as_ref(),
            &keys.flannel_config(),
            &opts.flannel,
        )?;
        let network = plan.config.network;
        let bip = opts.docker_bip;
        if network.contains(&bip.trunc()) || bip.trunc().contains(&network) {
            return Err(NodePrepError::BipOverlap { bip, network });
        }
        // Two hosts with one name would share a record, and VM calls would go to the wrong
        // daemon: a registered name with another private IP is refused unless replaced.
        let existing = register::read(etcd, keys, &id.name).await?;
        if let Some(existing) = &existing
            && existing.private_ip != id.private_ip
            && !opts.replace
        {
            return Err(NodePrepError::NameTaken {
                name: id.name.to_string(),
                registered: existing.private_ip,
                this_host: id.private_ip,
                just_now: false,
            });
        }
        let mut warnings = plan.warnings.clone();
        let plain_etcd = opts.etcd.endpoints.iter().any(|e| e.starts_with("http://"));
        if plain_etcd && opts.etcd.auth.is_none() {
            warnings.push(format!(
                "etcd is reached over plain http without auth: the cluster CA key at {} can be read by anyone who reaches etcd; use TLS and etcd auth/RBAC",
                keys.ca_key()
            ));
        }
        let ca = ca_store::load(etcd, keys).await?;
        if let Some(ca) = &ca {
            // A CA that cannot sign would fail later, after files were written.
            pki::issue_client(ca, "check", 1).map_err(|cause| NodePrepError::UnusableCa {
                at: format!("{} / {}", keys.ca_cert(), keys.ca_key()),
                cause,
            })?;
        }
        Ok(Step::new(Checked { plan, existing, ca }).warn(warnings))
    }

    /// The cluster CA in etcd (as the checks read it), created by the first node that
    /// finds none.
    pub(crate) async fn cluster_ca(&self, checked: &Checked) -> Result<Step<CaOutcome>> {
        let keys = &self.opts.keys;
        let ca = match &checked.ca {
            Some(ca) => CaOutcome::Existing(ca.clone()),
            None if self.opts.dry_run => CaOutcome::WouldCreate,
            None => ca_store::create(&self.etcd, keys).await?,
        };
        let stored = format!(
            "the cluster CA (etcd {} and {})",
            keys.ca_cert(),
            keys.ca_key()
        );
        Ok(match &ca {
            CaOutcome::Created(_) => Step::new(ca).change(format!("created {stored}")),
            CaOutcome::WouldCreate => Step::new(ca).change(format!("would create {stored}")),
            CaOutcome::Existing(_) => Step::new(ca),
        })
    }

    /// The flannel config in force, written when the cluster has none.
    pub(crate) async fn flannel_config(&self, checked: &Checked) -> Result<Step<FlannelConfig>> {
        let (opts, keys, plan) = (self.opts, &self.opts.keys, &checked.plan);
        let (config, written) = if plan.create && opts.dry_run {
            (plan.config.clone(), true)
        } else {
            flannel::ensure_config(&self.etcd, keys, plan, &opts.flannel).await?
        };
        if !written {
            return Ok(Step::new(config));
        }
        let line = format!(
            "flannel config {}: {}",
            keys.flannel_config(),
            to_json(&config, "the flannel config")?
        );
        Ok(Step::new(config).change(self.say("wrote", "write", &line)))
    }

    /// This node's subnet (its lease, or a reservation made before flanneld starts) and
    /// the MTU.
    pub(crate) async fn subnet(
        &self,
        config: &FlannelConfig,
        checked: &Checked,
        id: &Identity,
    ) -> Result<Step<FlannelFacts>> {
        let (opts, keys) = (self.opts, &self.opts.keys);
        let flannel_ip = opts.flannel_ip.unwrap_or(id.private_ip);
        let existing = checked.existing.as_ref();
        let (subnet, source, lease_warnings) = flannel::ensure_subnet(
            &self.etcd,
            keys,
            config,
            flannel_ip,
            existing.map(|r| r.subnet),
            opts.dry_run,
        )
        .await?;
        // flanneld's own value when it has written it; else what an earlier run settled on
        // for this subnet (at boot subnet.env is not there yet: without this the MTU, and
        // with it Docker's configuration, would flip between boot and a later run); else
        // computed.
        let recorded_mtu = existing.filter(|r| r.subnet == subnet).map(|r| r.mtu);
        let mtu = match opts.mtu {
            Some(m) => m,
            None => flannel_mtu(&self.root, subnet)?
                .or(recorded_mtu)
                .unwrap_or_else(|| flannel::mtu_for(config.backend_type(), opts.link_mtu)),
        };
        let step = Step::new(FlannelFacts {
            subnet,
            gateway: Ipv4Addr::from(u32::from(subnet.network()) + 1),
            mtu,
            flannel_ip,
        })
        .warn(lease_warnings);
        if source == SubnetSource::Lease {
            return Ok(step);
        }
        let lease = format!(
            "flannel subnet {subnet} for {flannel_ip} ({}{})",
            keys.flannel_subnets(),
            SubnetLease::key_name(&subnet)
        );
        Ok(step.change(self.say("reserved", "reserve", &lease)))
    }

    /// The Docker server certificate: kept when it still fits, else (re-)issued.
    pub(crate) fn server_cert(&self, ca: &CaOutcome, id: &Identity) -> Result<Step<ServerCert>> {
        let decision = server_cert::decide(
            &self.root,
            ca.ca(),
            id,
            self.opts.cert_days,
            self.opts.renew_before_days,
            OffsetDateTime::now_utc(),
        )?;
        let line = match &decision {
            ServerCert::Keep(_) => None,
            ServerCert::Issued { reason: None, .. } => {
                Some(self.say("issued", "issue", "the Docker server certificate"))
            }
            ServerCert::Issued {
                reason: Some(reason),
                ..
            } => Some(self.say(
                "re-issued",
                "re-issue",
                &format!("the Docker server certificate: {reason}"),
            )),
            ServerCert::NoCa => Some("would issue the Docker server certificate".into()),
        };
        let step = Step::new(decision);
        Ok(match line {
            Some(line) => step.change(line),
            None => step,
        })
    }

    /// What Docker's files are made from.
    pub(crate) fn docker_settings(&self, id: &Identity, mtu: u32) -> DockerSettings {
        DockerSettings {
            node: id.name.clone(),
            private_ip: id.private_ip,
            port: self.opts.docker_port,
            bip: self.opts.docker_bip,
            mtu,
            network_name: self.opts.network_name.clone(),
            cpi_path: self.opts.cpi_path.clone(),
        }
    }

    /// Docker's files: the cluster CA and server certificate (when known), its options,
    /// drop-in, TLS socket and the BOSH network's unit.
    pub(crate) fn docker_files(
        &self,
        settings: &DockerSettings,
        ca: &CaOutcome,
        server: Option<&CertAndKey>,
    ) -> Vec<WantedFile> {
        du::wanted_files(settings, ca.ca().map(|c| c.cert_pem.as_str()), server)
    }

    /// The reboot manager's unit.
    pub(crate) fn reboot_unit(&self, id: &Identity) -> WantedFile {
        reboot_unit::wanted(&id.name, &self.opts.cpi_path)
    }

    /// Puts the files that differ in place (the restart marker first).
    pub(crate) fn write_files(&self, wanted: &[WantedFile]) -> Result<Step<Written>> {
        let written = apply::write_files(&self.root, wanted)?;
        let lines = written
            .files
            .iter()
            .map(|(path, change)| {
                let file = self.root.join(path).display().to_string();
                match change {
                    FileChange::Created => self.say("wrote", "write", &file),
                    _ => self.say("updated", "update", &file),
                }
            })
            .collect();
        Ok(Step {
            value: written,
            changes: Changes {
                lines,
                warnings: Vec::new(),
            },
        })
    }

    /// Writes the node record (compare-and-swap, keeping a cordon), refusing a name
    /// another host registered since the check.
    pub(crate) async fn register(
        &self,
        id: &Identity,
        settings: &DockerSettings,
        net: FlannelFacts,
        server: Option<&CertAndKey>,
    ) -> Result<Step<Registration>> {
        let (opts, keys) = (self.opts, &self.opts.keys);
        let fingerprint = server.map(|s| pki::fingerprint(&s.cert_pem)).transpose()?;
        let capacity = match opts.capacity {
            Some(c) => c,
            None => register::host_capacity()?,
        };
        let prepared_at = Timestamp::now();
        let make = |previous: Option<&NodeRecord>| {
            // Checked again here: a host with the same name may have registered since.
            name_still_free(id, previous, opts.replace)?;
            Ok(NodeRecord {
                name: id.name.clone(),
                private_ip: id.private_ip,
                public_ip: Some(id.public_ip),
                flannel_ip: (net.flannel_ip != id.private_ip).then_some(net.flannel_ip),
                docker_endpoint: settings.endpoint(),
                subnet: net.subnet,
                gateway: net.gateway,
                mtu: net.mtu,
                network_name: opts.network_name.clone(),
                // A cordoned node stays cordoned across preps.
                state: previous.map(|p| p.state).unwrap_or(NodeState::Ready),
                capacity,
                cert_fingerprint: fingerprint.clone(),
                prepared_at: Some(prepared_at.clone()),
                disks_dir: Some(
                    super::disk_mounts::disks_dir(&opts.root)
                        .display()
                        .to_string(),
                ),
            })
        };
        let registration =
            register::register(&self.etcd, keys, &id.name, make, opts.dry_run).await?;
        Ok(self.announce(registration, &id.name))
    }

    /// The registration as a step: a change line when the record was written.
    fn announce(&self, registration: Registration, name: &NodeName) -> Step<Registration> {
        if !registration.changed() {
            return Step::new(registration);
        }
        let record = format!("node record {}", self.opts.keys.node(name));
        let line = if registration.previous.is_some() {
            self.say("updated", "update", &record)
        } else {
            self.say("wrote", "write", &record)
        };
        Step::new(registration).change(line)
    }

    /// systemd, last: units reloaded and started, Docker restarted only when its
    /// configuration changed. Returns the calls made (or recorded).
    pub(crate) fn systemd(&self, written: &Written) -> Result<Vec<String>> {
        let mut sd: Box<dyn Systemd> = if self.root.is_system_root() && !self.opts.dry_run {
            Box::new(Systemctl::default())
        } else {
            Box::new(Recording::default())
        };
        apply::run_systemd(sd.as_mut(), &self.root, written)?;
        Ok(sd.actions().to_vec())
    }
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

/// Everything the run settled, for the report.
pub(crate) struct Outcome {
    pub(crate) id: Identity,
    pub(crate) ca: CaOutcome,
    pub(crate) net: FlannelFacts,
    pub(crate) cert: ServerCert,
    pub(crate) settings: DockerSettings,
    pub(crate) registration: Registration,
    pub(crate) systemd: Vec<String>,
    pub(crate) changes: Changes,
}

impl Prep<'_> {
    /// The report of the run.
    pub(crate) fn report(&self, o: Outcome) -> Result<Report> {
        let opts = self.opts;
        let root = &self.root;
        let certificate = match o.cert.cert() {
            Some(s) => {
                let ca_pem = &o.ca.ca().map(|c| c.cert_pem.clone()).unwrap_or_default();
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
        let settings = &o.settings;
        Ok(Report {
            node: o.id.name.clone(),
            root: opts.root.clone(),
            dry_run: opts.dry_run,
            changed: !o.changes.lines.is_empty(),
            changes: o.changes.lines,
            systemd: o.systemd,
            warnings: o.changes.warnings,
            subnet: o.net.subnet,
            gateway: o.net.gateway,
            mtu: o.net.mtu,
            flannel_ip: o.net.flannel_ip,
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
                dockerd_args: du::dockerd_args(settings, root.dir()),
                bip: opts.docker_bip,
                network_name: opts.network_name.clone(),
            },
            certificate,
            record: o.registration.record,
            identity: o.id,
        })
    }
}

/// Refuses the name when `previous` (its record in etcd) is another host's (another
/// private IP), unless this host replaces it.
fn name_still_free(id: &Identity, previous: Option<&NodeRecord>, replace: bool) -> Result<()> {
    match previous {
        Some(p) if p.private_ip != id.private_ip && !replace => Err(NodePrepError::NameTaken {
            name: id.name.to_string(),
            registered: p.private_ip,
            this_host: id.private_ip,
            just_now: true,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn steps_add_their_lines_in_order_and_a_dry_run_says_would() {
        let mut changes = Changes::default();
        let first = Step::new(1)
            .change(say(false, "wrote", "write", "a"))
            .warn(["w1".to_string()]);
        let second = Step::new(2).change(say(true, "reserved", "reserve", "b"));
        assert_eq!(changes.take(first) + changes.take(second), 3);
        assert_eq!(changes.lines, ["wrote a", "would reserve b"]);
        assert_eq!(changes.warnings, ["w1"]);
        assert_eq!(changes.take(Step::new(())), ());
        assert_eq!(
            changes.lines.len(),
            2,
            "a step without changes adds no line"
        );
    }
}
