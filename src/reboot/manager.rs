//! The reboot manager's state machine for one node. Every step reads the node's reboot
//! record from etcd, does one idempotent thing and records the next phase, so a manager
//! killed at any point (or taken down with its host) carries on where it was:
//!
//! no record -> (reboot needed, in the window, slot taken together with the record)
//! `draining` (cordon; VMs recorded, then stopped) -> `rebooting` (reboot command) ->
//! (boot id changed) `checking` (health gate for the settle time) -> uncordon (only if
//! the manager cordoned) and give back the slot, deleting the record in the same
//! transaction.

use crate::node_name::NodeName;
use std::path::Path;
use std::time::{Duration, Instant};

use etcd_client::{Compare, CompareOp, TxnOp};

use super::drain;
use super::error::HostError;
use super::health;
use super::host::Host;
use super::keys::RebootKeys;
use super::record::{Phase, RebootRecord, RecordError, Records, Versioned};
use super::semaphore::{
    Group, Holder, HolderKind, Semaphore, SemaphoreDoc, SemaphoreError, Stored, Take,
};
use super::sources::{FlagFile, NEED_REBOOT, UpdateEngine};
use super::window::RebootWindow;
use crate::cloud::CloudContext;
use crate::cluster::{ClusterView, Etcd, Keys, NodeRecord, NodeState};
use crate::docker::NodeDocker;
use crate::ids::VmCid;
use crate::nodeprep::register;
use crate::timestamp::Timestamp;

/// Why one step of the manager failed (it tries again after a poll interval).
#[derive(Debug, thiserror::Error)]
pub(crate) enum StepError {
    #[error(transparent)]
    Semaphore(#[from] SemaphoreError),
    #[error(transparent)]
    Record(#[from] RecordError),
    /// etcd failed or could not be reached.
    #[error(transparent)]
    Index(#[from] crate::cluster::IndexError),
    /// This node has no record in etcd (`key` when it was looked up there).
    #[error("node {node} is not registered{}", key.as_ref().map(|k| format!(" ({k})")).unwrap_or_default())]
    NotRegistered { node: NodeName, key: Option<String> },
    /// This node's record in etcd is not a node record.
    #[error("node record {key} is unreadable: {source}")]
    NodeRecordUnreadable {
        key: String,
        #[source]
        source: serde_json::Error,
    },
    /// The node could not be cordoned or uncordoned.
    #[error(transparent)]
    NodeState(#[from] crate::nodeprep::NodePrepError),
    /// A FleetLock client holds a slot under this node's name.
    #[error("a FleetLock client holds a slot under this node's name '{0}'")]
    NameHeldByFleetlock(String),
    /// Docker access to the nodes could not be set up (the CPI config's words).
    #[error(transparent)]
    DockerAccess(Box<crate::cloud::ContextError>),
    /// The node's Docker failed.
    #[error(transparent)]
    Docker(Box<crate::docker::DockerError>),
    /// Some VMs could not be stopped, one error per VM.
    #[error("{}", .0.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    StopFailed(Vec<crate::docker::DockerError>),
    /// The host seams (boot id) failed.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The health gate does not pass yet.
    #[error(transparent)]
    Health(Box<super::error::HealthError>),
    /// The reboot command failed.
    #[error("the reboot command failed: {0}")]
    RebootFailed(#[source] HostError),
}

impl From<crate::docker::DockerError> for StepError {
    fn from(e: crate::docker::DockerError) -> Self {
        StepError::Docker(Box::new(e))
    }
}

impl From<super::error::HealthError> for StepError {
    fn from(e: super::error::HealthError) -> Self {
        StepError::Health(Box::new(e))
    }
}

/// How the manager behaves (from `cpi reboot-manager`'s flags).
#[derive(Debug, Clone)]
pub(crate) struct ManagerOptions {
    /// This node's name, as registered.
    pub(crate) node: NodeName,
    /// The reboot group whose slots it takes.
    pub(crate) group: Group,
    /// Seconds each VM gets between SIGTERM and SIGKILL.
    pub(crate) grace_seconds: i32,
    /// How long the VMs must stay healthy after boot before the slot is given back.
    pub(crate) settle: Duration,
    /// How often the manager looks again while waiting.
    pub(crate) poll: Duration,
    /// How long after asking for a reboot it asks again if the host is still up.
    pub(crate) reboot_retry: Duration,
    /// When slots may be taken; any time when `None`.
    pub(crate) window: Option<RebootWindow>,
}

/// What to do after a step.
enum Next {
    /// Step again at once (the record moved on).
    Now,
    /// Wait one poll interval.
    Later,
}

/// One node's manager.
pub(crate) struct Manager<'a> {
    ctx: &'a CloudContext<'a>,
    opts: ManagerOptions,
    host: Host,
    engine: UpdateEngine,
    flag: FlagFile,
    etcd: Etcd,
    keys: Keys,
    records: Records,
    semaphore: Semaphore,
    /// When this process last ran the reboot command.
    reboot_asked: Option<Instant>,
    /// Since when the health gate passes without a break.
    healthy_since: Option<Instant>,
    /// The last thing logged while waiting, so waiting is logged once.
    last_wait: Option<String>,
}

impl<'a> Manager<'a> {
    /// A manager for `opts.node` on the cluster `etcd` holds, with the host seams below
    /// `root`; `ctx` gives it Docker access to the node.
    pub(crate) fn new(
        ctx: &'a CloudContext<'a>,
        (etcd, keys): (Etcd, Keys),
        opts: ManagerOptions,
        root: &Path,
        (reboot_command, engine): (Vec<String>, UpdateEngine),
    ) -> Manager<'a> {
        let reboot_keys = RebootKeys::new(&keys);
        Manager {
            ctx,
            host: Host::new(root, reboot_command),
            engine,
            flag: FlagFile::under(root),
            records: Records::new(etcd.clone(), reboot_keys.clone()),
            semaphore: Semaphore::new(etcd.clone(), &reboot_keys, opts.group.clone()),
            etcd,
            keys,
            opts,
            reboot_asked: None,
            healthy_since: None,
            last_wait: None,
        }
    }

    /// Runs until the process ends.
    pub(crate) async fn run(&mut self) {
        let node = self.opts.node.clone();
        tracing::info!(node = %node, group = %self.opts.group, "reboot manager started");
        loop {
            match self.step().await {
                Ok(Next::Now) => {}
                Ok(Next::Later) => tokio::time::sleep(self.opts.poll).await,
                Err(e) => {
                    tracing::warn!(node = %node, error = %e, "reboot manager step failed; trying again");
                    tokio::time::sleep(self.opts.poll).await;
                }
            }
        }
    }

    fn waiting(&mut self, what: String) -> Next {
        if self.last_wait.as_deref() != Some(what.as_str()) {
            tracing::info!(node = %self.opts.node, "{what}");
            self.last_wait = Some(what);
        }
        Next::Later
    }

    async fn step(&mut self) -> Result<Next, StepError> {
        let boot = self.host.boot_id()?;
        let record = self.records.state(&self.opts.node).await?;
        let Some(record) = record else {
            return self.maybe_start(&boot).await;
        };
        if record.value.phase != Phase::Checking && record.value.boot_id != boot {
            tracing::info!(node = %self.opts.node, "the host rebooted; checking its VMs");
            return self.enter(&record, Phase::Checking).await;
        }
        match record.value.phase {
            Phase::Draining => self.drain(&record).await,
            Phase::Rebooting => self.reboot().await,
            Phase::Checking => self.check(&record).await,
        }
    }

    /// Why the node needs a reboot, if it does.
    async fn reboot_needed(&self) -> Result<Option<String>, StepError> {
        if let Some(req) = self.records.request(&self.opts.node).await? {
            return Ok(Some(format!("operator request: {}", req.value.why)));
        }
        if self.flag.is_set() {
            return Ok(Some(format!("{} exists", self.flag.path.display())));
        }
        match self.engine.needs_reboot().await {
            Ok(Some(true)) => Ok(Some(format!("update engine: {NEED_REBOOT}"))),
            Ok(_) => Ok(None),
            Err(e) => {
                tracing::warn!(node = %self.opts.node, error = %e, "cannot ask the update engine");
                Ok(None)
            }
        }
    }

    /// The node's record as stored, with its revision.
    async fn node_record(&self) -> Result<(NodeRecord, i64), StepError> {
        let key = self.keys.node(&self.opts.node);
        let resp = self
            .etcd
            .client()
            .get(key.as_str(), None)
            .await
            .map_err(|e| StepError::Index(self.etcd.error("reading the node record", &e)))?;
        let kv = resp.kvs().first().ok_or_else(|| StepError::NotRegistered {
            node: self.opts.node.clone(),
            key: Some(key.clone()),
        })?;
        let record = serde_json::from_slice(kv.value())
            .map_err(|source| StepError::NodeRecordUnreadable { key, source })?;
        Ok((record, kv.mod_revision()))
    }

    /// With no reboot under way: takes a slot and starts draining when the node needs a
    /// reboot, the window is open and a slot is free.
    async fn maybe_start(&mut self, boot: &str) -> Result<Next, StepError> {
        let Some(why) = self.reboot_needed().await? else {
            self.last_wait = None;
            return Ok(Next::Later);
        };
        if let Some(window) = self.opts.window
            && !window.contains(time::OffsetDateTime::now_utc())
        {
            return Ok(self.waiting(format!(
                "reboot needed ({why}); waiting for the reboot window"
            )));
        }
        let (node, node_rev) = self.node_record().await?;
        let stored = self.semaphore.read().await?;
        let mut doc = stored.doc.clone();
        let now = Timestamp::now().to_string();
        if let Some(wait) = self.claim(&mut doc, boot, &now, &why)? {
            return Ok(self.waiting(wait));
        }
        let record = RebootRecord {
            phase: Phase::Draining,
            since: now.clone(),
            started: now,
            why,
            group: self.opts.group.to_string(),
            boot_id: boot.to_string(),
            operator_cordoned: node.state == NodeState::Cordoned,
            vms: None,
            health: None,
        };
        self.start(&stored, &doc, node_rev, &record).await
    }

    /// Puts this node among the holders of `doc`; what it waits for when all slots are held.
    fn claim(
        &self,
        doc: &mut SemaphoreDoc,
        boot: &str,
        now: &str,
        why: &str,
    ) -> Result<Option<String>, StepError> {
        let holder = Holder {
            id: self.opts.node.to_string(),
            kind: HolderKind::Node,
            node: Some(self.opts.node.clone()),
            boot_id: Some(boot.to_string()),
            since: now.to_string(),
            why: why.to_string(),
        };
        match doc.take(holder) {
            Take::Taken => Ok(None),
            Take::AlreadyHeld(h) if h.kind == HolderKind::Node => {
                tracing::info!(node = %self.opts.node, "this node holds a slot already; using it");
                Ok(None)
            }
            Take::AlreadyHeld(_) => Err(StepError::NameHeldByFleetlock(self.opts.node.to_string())),
            Take::Full(holders) => {
                let ids: Vec<&str> = holders.iter().map(|h| h.id.as_str()).collect();
                Ok(Some(format!(
                    "reboot needed ({why}); waiting for a slot (all {} held by {})",
                    doc.max,
                    ids.join(", ")
                )))
            }
        }
    }

    /// Writes the slot and the `draining` record in one transaction, if neither the
    /// semaphore, the node record (at `node_rev`) nor the absence of a reboot record changed.
    async fn start(
        &mut self,
        stored: &Stored,
        doc: &SemaphoreDoc,
        node_rev: i64,
        record: &RebootRecord,
    ) -> Result<Next, StepError> {
        let node = &self.opts.node;
        let taken = self
            .semaphore
            .commit(
                stored,
                doc,
                vec![
                    self.records.no_state(node),
                    Compare::mod_revision(self.keys.node(node), CompareOp::Equal, node_rev),
                ],
                vec![self.records.put_state(node, record)],
            )
            .await?;
        if taken {
            self.last_wait = None;
            tracing::info!(node = %self.opts.node, why = %record.why, "took a reboot slot; draining");
        }
        Ok(Next::Now)
    }

    /// Moves the record to `phase` (if nobody changed it meanwhile).
    async fn enter(
        &mut self,
        record: &Versioned<RebootRecord>,
        phase: Phase,
    ) -> Result<Next, StepError> {
        let mut next = record.value.clone();
        next.phase = phase;
        next.since = Timestamp::now().to_string();
        next.health = None;
        self.healthy_since = None;
        self.records
            .replace(&self.opts.node, record.mod_revision, &next)
            .await?;
        Ok(Next::Now)
    }

    async fn view(&self) -> Result<ClusterView, StepError> {
        Ok(ClusterView::load(&self.etcd, &self.keys).await?)
    }

    /// A fresh Docker client for this node (the daemon may have restarted since the last).
    async fn docker(&self) -> Result<NodeDocker, StepError> {
        let view = self.view().await?;
        self.docker_in(&view).await
    }

    /// A fresh Docker client for this node, from a view the caller has read.
    async fn docker_in(&self, view: &ClusterView) -> Result<NodeDocker, StepError> {
        let node = view
            .node(&self.opts.node)
            .ok_or_else(|| StepError::NotRegistered {
                node: self.opts.node.clone(),
                key: None,
            })?;
        let access = self
            .ctx
            .docker_access(view)
            .await
            .map_err(|e| StepError::DockerAccess(Box::new(e)))?;
        Ok(access.connect(&node.name, &node.docker_endpoint).await?)
    }

    async fn drain(&mut self, record: &Versioned<RebootRecord>) -> Result<Next, StepError> {
        register::set_state(&self.etcd, &self.keys, &self.opts.node, NodeState::Cordoned).await?;
        let docker = self.docker().await?;
        let Some(vms) = &record.value.vms else {
            let view = self.view().await?;
            let cids: Vec<VmCid> = view
                .vms_on(&self.opts.node)
                .map(|v| v.cid.clone())
                .collect();
            let mut next = record.value.clone();
            next.vms = Some(drain::snapshot(&docker, &cids).await?);
            tracing::info!(node = %self.opts.node, vms = cids.len(), "cordoned; stopping the node's VMs");
            self.records
                .replace(&self.opts.node, record.mod_revision, &next)
                .await?;
            return Ok(Next::Now);
        };
        let errors = drain::stop_all(&docker, vms, self.opts.grace_seconds).await;
        if !errors.is_empty() {
            return Err(StepError::StopFailed(errors));
        }
        self.enter(record, Phase::Rebooting).await
    }

    async fn reboot(&mut self) -> Result<Next, StepError> {
        if self
            .reboot_asked
            .is_some_and(|at| at.elapsed() < self.opts.reboot_retry)
        {
            return Ok(Next::Later);
        }
        tracing::info!(node = %self.opts.node, "VMs stopped; rebooting the host");
        self.reboot_asked = Some(Instant::now());
        if let Err(e) = self.host.reboot().await {
            self.reboot_asked = None;
            return Err(StepError::RebootFailed(e));
        }
        Ok(Next::Later)
    }

    async fn check(&mut self, record: &Versioned<RebootRecord>) -> Result<Next, StepError> {
        // A VM the director deleted meanwhile (its index record is gone) is not waited for.
        let view = self.view().await?;
        let indexed: std::collections::HashSet<&VmCid> =
            view.vms_on(&self.opts.node).map(|v| &v.cid).collect();
        let vms: Vec<_> = record
            .value
            .vms
            .iter()
            .flatten()
            .filter(|v| indexed.contains(&v.cid))
            .cloned()
            .collect();
        let outcome = match self.docker_in(&view).await {
            Ok(docker) => health::check(&docker, &vms).await.map_err(StepError::from),
            Err(e) => Err(e),
        };
        if let Err(problem) = outcome {
            self.healthy_since = None;
            let shown = format!("health gate: {problem}");
            if record.value.health.as_deref() != Some(shown.as_str()) {
                tracing::warn!(node = %self.opts.node, problem = %problem,
                    "health gate does not pass; the node stays cordoned and keeps its slot");
            }
            self.show_health(record, shown).await?;
            return Ok(Next::Later);
        }
        let since = *self.healthy_since.get_or_insert_with(Instant::now);
        if since.elapsed() < self.opts.settle {
            let shown = format!("settling ({}s)", self.opts.settle.as_secs());
            self.show_health(record, shown).await?;
            return Ok(Next::Later);
        }
        self.finish(record).await
    }

    /// Records what the health gate says in the node's reboot record (where `cpi nodes`
    /// shows it), unless the record says it already.
    async fn show_health(
        &self,
        record: &Versioned<RebootRecord>,
        shown: String,
    ) -> Result<(), StepError> {
        if record.value.health.as_deref() == Some(shown.as_str()) {
            return Ok(());
        }
        let mut next = record.value.clone();
        next.health = Some(shown);
        self.records
            .replace(&self.opts.node, record.mod_revision, &next)
            .await?;
        Ok(())
    }

    async fn finish(&mut self, record: &Versioned<RebootRecord>) -> Result<Next, StepError> {
        if !record.value.operator_cordoned {
            register::set_state(&self.etcd, &self.keys, &self.opts.node, NodeState::Ready).await?;
        }
        let stored = self.semaphore.read().await?;
        let mut doc = stored.doc.clone();
        doc.give_back(&self.opts.node);
        let done = self
            .semaphore
            .commit(
                &stored,
                &doc,
                vec![self.records.state_at(&self.opts.node, record.mod_revision)],
                vec![
                    TxnOp::delete(self.records.keys().node_state(&self.opts.node), None),
                    TxnOp::delete(self.records.keys().request(&self.opts.node), None),
                ],
            )
            .await?;
        if done {
            self.healthy_since = None;
            tracing::info!(
                node = %self.opts.node,
                uncordoned = !record.value.operator_cordoned,
                "reboot finished: VMs back; slot given back"
            );
        }
        Ok(Next::Now)
    }
}
