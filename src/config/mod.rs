//! `cpi.json`: the CPI's configuration, its defaults and validation, and the merge of
//! cpi-config properties that arrive in a request's `context`.

pub(crate) mod secret;
pub(crate) mod tls;

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{Map, Value};

use crate::bounded_file::{self, FileKind};
use crate::echo::printable;
use crate::node_name::NodeName;
pub use secret::Secret;
pub use tls::TlsMaterial;
pub(crate) use tls::TlsSource;

/// The job's config path when no `-c` is given; `BOSH_JOBS_DIR` (set by create-env) wins
/// over `/var/vcap/jobs`.
pub fn default_config_path() -> PathBuf {
    let jobs = std::env::var_os("BOSH_JOBS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/vcap/jobs"));
    jobs.join("moltencore_cpi/config/cpi.json")
}

/// A configuration problem, naming the key at fault.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid CPI configuration: {key}: {problem}")]
pub struct ConfigError {
    /// Dotted path of the offending key (`etcd.endpoints[0]`).
    pub(crate) key: String,
    /// What is wrong, and what is expected.
    pub(crate) problem: String,
}

impl ConfigError {
    /// A problem at `key`.
    pub(crate) fn invalid(key: &str, problem: &str) -> Self {
        ConfigError {
            key: key.to_string(),
            problem: problem.to_string(),
        }
    }
}

/// The whole configuration, validated.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Where the cluster state lives.
    pub etcd: EtcdConfig,
    /// How to reach the nodes' Docker daemons.
    #[serde(default)]
    pub docker: DockerConfig,
    /// What every agent is told (mbus, ntp, blobstore).
    pub agent: AgentConfig,
    /// Container settings for every VM; cloud_properties may override per VM.
    #[serde(default)]
    pub vm_defaults: VmDefaults,
    /// Where this CPI puts VMs and disks that name no node themselves; a cpi-config with
    /// one CPI per node sets it through `context`.
    #[serde(default)]
    pub(crate) placement: PlacementConfig,
    /// tracing filter (`info`, `debug`, `moltencore=debug`); `MOLTENCORE_LOG` wins.
    #[serde(default = "default_log_level")]
    pub log_level: String,
    /// The TLS material, read once while validating (files included).
    #[serde(skip)]
    loaded_tls: LoadedTls,
}

/// TLS material read from the config's inline PEM and `*_file` keys during validation,
/// so each file is read once per call.
#[derive(Debug, Clone, Default, PartialEq)]
struct LoadedTls {
    etcd: Option<TlsMaterial>,
    docker: TlsMaterial,
}

/// A node every VM and disk of this CPI goes to, unless its `cloud_properties.node` names
/// another: how a cpi-config with one CPI per node (the original MoltenCore layout) keeps
/// each AZ's VMs on its node.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PlacementConfig {
    /// Name of the node (as registered by node-prep). Read as found, like the records
    /// (see `NodeName`): a name no node can have matches no node when a VM or disk is
    /// placed, which reports it.
    #[serde(default)]
    pub(crate) node: Option<NodeName>,
}

/// etcd access.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct EtcdConfig {
    /// `https://host:port` (or `http://`) client URLs.
    pub endpoints: Vec<String>,
    /// Client TLS (CA and client certificate).
    #[serde(default)]
    pub tls: Option<TlsSource>,
    /// etcd user, when etcd auth is on.
    #[serde(default)]
    pub username: Option<String>,
    /// etcd password, when etcd auth is on.
    #[serde(default)]
    pub(crate) password: Option<Secret>,
    /// Prefix of all MoltenCore keys.
    #[serde(default = "default_key_prefix")]
    pub key_prefix: String,
    /// Prefix of Flannel's keys (`<prefix>/config`, `<prefix>/subnets/`).
    #[serde(default = "default_flannel_prefix")]
    pub flannel_prefix: String,
    /// Connect and request timeout.
    #[serde(default = "default_etcd_timeout")]
    pub timeout_seconds: u64,
}

/// Docker access on every node.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct DockerConfig {
    /// Client certificate and key; CA optional (read from etcd `<key_prefix>/pki/ca.crt`).
    #[serde(default)]
    pub(crate) tls: TlsSource,
    /// Docker API version to speak (`"1.41"`), or `"auto"` to negotiate with each node.
    #[serde(default = "default_docker_api")]
    pub api_version: String,
    /// Seconds to wait for a TCP+TLS connection to a node.
    #[serde(default = "default_docker_connect_timeout")]
    pub(crate) connect_timeout_seconds: u64,
    /// Seconds a single Docker request may take, body included (stemcell imports and disk
    /// moves stream for long; a silent node is caught sooner by the idle timeout).
    #[serde(default = "default_docker_request_timeout")]
    pub(crate) request_timeout_seconds: u64,
    /// Seconds a node may stay silent in the middle of a stream (a stemcell import, an
    /// image or disk copy) before it counts as gone and the call fails or drops it.
    #[serde(default = "default_docker_idle_timeout")]
    pub idle_timeout_seconds: u64,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            tls: TlsSource::default(),
            api_version: default_docker_api(),
            connect_timeout_seconds: default_docker_connect_timeout(),
            request_timeout_seconds: default_docker_request_timeout(),
            idle_timeout_seconds: default_docker_idle_timeout(),
        }
    }
}

/// Settings handed to every agent.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct AgentConfig {
    /// The agent's mbus URL, `https://mbus:<password>@0.0.0.0:6868` for create-env or
    /// `nats://...` behind a director.
    pub mbus: Secret,
    /// NTP servers.
    #[serde(default)]
    pub ntp: Vec<String>,
    /// The blobstore the agents get when `create_vm`'s `env.bosh.blobstores` has none
    /// (create-env's local cache); the agent exits at start without one.
    #[serde(default)]
    pub blobstore: Option<BlobstoreSettings>,
}

/// One blobstore as the agent reads it (`provider` names its client
/// `bosh-blobstore-<provider>`, or the built-in `local`; `options` are the client's).
#[derive(Debug, Clone, Deserialize, serde::Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct BlobstoreSettings {
    /// `local`, `dav`, `s3`, `gcs`, ...
    pub provider: String,
    /// The provider's options (`blobstore_path` for `local`, `endpoint` for `dav`, ...).
    #[serde(default)]
    pub options: Map<String, Value>,
}

impl BlobstoreSettings {
    /// Why an agent could not use this blobstore, naming the key below `key` (the
    /// options' values are never echoed: they hold credentials).
    pub(crate) fn problem(&self, key: &str) -> Option<ConfigError> {
        let provider = self.provider.as_str();
        if provider.is_empty()
            || !provider
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            let shown: String = provider.chars().take(40).collect();
            return Some(ConfigError::invalid(
                &format!("{key}.provider"),
                &format!(
                    "'{shown}' must name a blobstore client (local, dav, s3, gcs, ...): the agent runs bosh-blobstore-<provider>"
                ),
            ));
        }
        if provider == "local"
            && !self
                .options
                .get("blobstore_path")
                .and_then(Value::as_str)
                .is_some_and(|p| p.starts_with('/'))
        {
            return Some(ConfigError::invalid(
                &format!("{key}.options.blobstore_path"),
                "a local blobstore needs an absolute blobstore_path",
            ));
        }
        None
    }
}

/// How the container of a VM is started.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum StartMode {
    /// `/usr/sbin/runsvdir-start` (Jammy stemcells).
    #[default]
    Runit,
    /// `/sbin/init` with host cgroup namespace (Noble stemcells).
    Systemd,
}

/// Container defaults. Privileged unless told otherwise; the unprivileged profile lists
/// capabilities, security options and device rules explicitly.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct VmDefaults {
    /// Whether VMs run privileged.
    #[serde(default = "yes")]
    pub privileged: bool,
    /// Capabilities added to unprivileged VMs.
    #[serde(default)]
    pub cap_add: Vec<String>,
    /// Capabilities dropped from unprivileged VMs.
    #[serde(default)]
    pub cap_drop: Vec<String>,
    /// Docker security options of unprivileged VMs.
    #[serde(default)]
    pub security_opt: Vec<String>,
    /// Device cgroup rules of unprivileged VMs.
    #[serde(default)]
    pub device_cgroup_rules: Vec<String>,
    /// How a VM's container starts its init.
    #[serde(default)]
    pub start_mode: StartMode,
    /// Docker restart policy name: `no`, `always`, `unless-stopped`, `on-failure`.
    #[serde(default)]
    pub(crate) restart_policy: RestartPolicy,
}

/// Docker's restart policy of a VM container, parsed from its word once where the
/// configuration or a VM's cloud_properties is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(try_from = "String")]
pub enum RestartPolicy {
    /// `no`: never restarted by Docker.
    No,
    /// `always` (the default).
    #[default]
    Always,
    /// `unless-stopped`.
    UnlessStopped,
    /// `on-failure`.
    OnFailure,
}

impl RestartPolicy {
    const ALL: [RestartPolicy; 4] = [
        RestartPolicy::No,
        RestartPolicy::Always,
        RestartPolicy::UnlessStopped,
        RestartPolicy::OnFailure,
    ];

    /// The policy's word, as Docker and the configuration spell it.
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            RestartPolicy::No => "no",
            RestartPolicy::Always => "always",
            RestartPolicy::UnlessStopped => "unless-stopped",
            RestartPolicy::OnFailure => "on-failure",
        }
    }

    /// The policy a word names.
    pub(crate) fn parse(word: &str) -> Result<RestartPolicy, UnknownRestartPolicy> {
        Self::ALL
            .into_iter()
            .find(|p| p.as_str() == word)
            .ok_or_else(|| UnknownRestartPolicy(word.to_string()))
    }
}

impl TryFrom<String> for RestartPolicy {
    type Error = UnknownRestartPolicy;

    fn try_from(word: String) -> Result<Self, Self::Error> {
        RestartPolicy::parse(&word)
    }
}

/// A restart policy word Docker does not know; its text names the word (made printable)
/// and the four it may be.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("'{}' is not one of no, always, unless-stopped, on-failure", printable(.0))]
pub struct UnknownRestartPolicy(pub String);

impl Default for VmDefaults {
    fn default() -> Self {
        VmDefaults {
            privileged: true,
            cap_add: Vec::new(),
            cap_drop: Vec::new(),
            security_opt: Vec::new(),
            device_cgroup_rules: Vec::new(),
            start_mode: StartMode::Runit,
            restart_policy: RestartPolicy::Always,
        }
    }
}

fn yes() -> bool {
    true
}
fn default_log_level() -> String {
    "info".into()
}
fn default_key_prefix() -> String {
    "/moltencore".into()
}
fn default_flannel_prefix() -> String {
    "/coreos.com/network".into()
}
fn default_etcd_timeout() -> u64 {
    5
}
fn default_docker_api() -> String {
    "1.41".into()
}
fn default_docker_connect_timeout() -> u64 {
    10
}
fn default_docker_request_timeout() -> u64 {
    3600
}
fn default_docker_idle_timeout() -> u64 {
    120
}

/// The top-level sections a cpi-config's properties (merged into `context`) may override.
const OVERRIDABLE: &[&str] = &[
    "etcd",
    "docker",
    "agent",
    "vm_defaults",
    "placement",
    "log_level",
];

impl Config {
    /// Reads `path`, merges the overridable sections found in `context`, and validates.
    /// The file must be a regular file of at most [`FileKind::Config`]'s limit.
    pub(crate) fn load(path: &Path, context: &Map<String, Value>) -> Result<Config, ConfigError> {
        let shown = crate::echo::printable_path(path);
        let text = bounded_file::read_to_string(path, FileKind::Config).map_err(|e| {
            ConfigError::invalid(
                &format!("config file (-c) {shown}"),
                &format!(
                    "must be a regular file of at most {}: {e}",
                    bounded_file::human(FileKind::Config.limit())
                ),
            )
        })?;
        let mut value: Value = serde_json::from_str(&text).map_err(|e| {
            ConfigError::invalid(
                &format!("config file (-c) {shown}"),
                &format!("not valid JSON: {e}"),
            )
        })?;
        merge_context(&mut value, context);
        Self::from_value(value)
    }

    /// Parses and validates an already merged JSON document.
    pub fn from_value(value: Value) -> Result<Config, ConfigError> {
        let mut config: Config = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            ConfigError::invalid(
                &path,
                &crate::echo::printable_detail(&crate::serde_words::plain(
                    &e.into_inner().to_string(),
                )),
            )
        })?;
        config.loaded_tls = config.validate()?;
        Ok(config)
    }

    /// Every check of a parsed configuration, section by section; the TLS material is
    /// read here, once.
    fn validate(&self) -> Result<LoadedTls, ConfigError> {
        self.etcd.check()?;
        let etcd_tls = self
            .etcd
            .tls
            .as_ref()
            .map(|t| t.load("etcd.tls"))
            .transpose()?;
        let docker_tls = self.docker.check()?;
        self.agent.check()?;
        self.placement.check()?;
        Ok(LoadedTls {
            etcd: etcd_tls,
            docker: docker_tls,
        })
    }

    /// etcd TLS material, as read when the config was loaded.
    pub(crate) fn etcd_tls(&self) -> Result<Option<TlsMaterial>, ConfigError> {
        Ok(self.loaded_tls.etcd.clone())
    }

    /// Docker client TLS material, as read when the config was loaded.
    pub fn docker_tls(&self) -> Result<TlsMaterial, ConfigError> {
        Ok(self.loaded_tls.docker.clone())
    }
}

impl EtcdConfig {
    /// Endpoints are http(s) URLs with a host, prefixes are absolute, credentials come in
    /// pairs, the timeout is positive.
    fn check(&self) -> Result<(), ConfigError> {
        self.check_endpoints()?;
        for (key, prefix) in [
            ("etcd.key_prefix", &self.key_prefix),
            ("etcd.flannel_prefix", &self.flannel_prefix),
        ] {
            check_prefix(key, prefix)?;
        }
        if self.username.is_some() != self.password.is_some() {
            return Err(ConfigError::invalid(
                "etcd.username",
                "username and password must be given together",
            ));
        }
        at_least_one_second("etcd.timeout_seconds", self.timeout_seconds)
    }

    fn check_endpoints(&self) -> Result<(), ConfigError> {
        if self.endpoints.is_empty() {
            return Err(ConfigError::invalid(
                "etcd.endpoints",
                "must list at least one URL",
            ));
        }
        for (i, endpoint) in self.endpoints.iter().enumerate() {
            let key = format!("etcd.endpoints[{i}]");
            let url = url::Url::parse(endpoint).map_err(|e| {
                ConfigError::invalid(
                    &key,
                    &format!("'{}' is not a URL: {e}", printable(endpoint)),
                )
            })?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(ConfigError::invalid(
                    &key,
                    &format!("'{}' must be http(s)://host:port", printable(endpoint)),
                ));
            }
        }
        Ok(())
    }
}

/// A key prefix starts with `/` and does not end with one.
fn check_prefix(key: &str, prefix: &str) -> Result<(), ConfigError> {
    if !prefix.starts_with('/') || prefix.ends_with('/') {
        return Err(ConfigError::invalid(
            key,
            &format!(
                "'{}' must start with '/' and not end with '/'",
                printable(prefix)
            ),
        ));
    }
    Ok(())
}

/// A timeout of zero seconds would fail every request.
fn at_least_one_second(key: &str, seconds: u64) -> Result<(), ConfigError> {
    if seconds == 0 {
        return Err(ConfigError::invalid(key, "must be at least 1"));
    }
    Ok(())
}

impl DockerConfig {
    /// Client TLS is present (nodes accept only mutual TLS), the API version is `auto`
    /// or MAJOR.MINOR, the timeouts are positive; returns the TLS material read.
    fn check(&self) -> Result<TlsMaterial, ConfigError> {
        let tls = self.tls.load("docker.tls")?;
        if tls.client_cert.is_none() {
            return Err(ConfigError::invalid(
                "docker.tls",
                "client_cert(_file) and client_key(_file) are required: nodes accept only mutual TLS",
            ));
        }
        if self.api_version != "auto" && !is_api_version(&self.api_version) {
            return Err(ConfigError::invalid(
                "docker.api_version",
                &format!(
                    "'{}' must be 'auto' or MAJOR.MINOR such as 1.41",
                    printable(&self.api_version)
                ),
            ));
        }
        for (key, seconds) in [
            (
                "docker.connect_timeout_seconds",
                self.connect_timeout_seconds,
            ),
            (
                "docker.request_timeout_seconds",
                self.request_timeout_seconds,
            ),
            ("docker.idle_timeout_seconds", self.idle_timeout_seconds),
        ] {
            at_least_one_second(key, seconds)?;
        }
        Ok(tls)
    }
}

impl AgentConfig {
    /// The mbus is an https, nats or tls URL (its password never echoed); a default
    /// blobstore is one an agent can use.
    fn check(&self) -> Result<(), ConfigError> {
        let mbus = url::Url::parse(self.mbus.expose())
            .map_err(|e| ConfigError::invalid("agent.mbus", &format!("is not a URL: {e}")))?;
        if !matches!(mbus.scheme(), "https" | "nats" | "tls") {
            return Err(ConfigError::invalid(
                "agent.mbus",
                &format!(
                    "scheme '{}' is not one of https, nats, tls",
                    printable(mbus.scheme())
                ),
            ));
        }
        match self
            .blobstore
            .as_ref()
            .and_then(|b| b.problem("agent.blobstore"))
        {
            Some(problem) => Err(problem),
            None => Ok(()),
        }
    }
}

impl PlacementConfig {
    /// A node, when given, is named.
    fn check(&self) -> Result<(), ConfigError> {
        if let Some(node) = &self.node
            && node.trim().is_empty()
        {
            return Err(ConfigError::invalid(
                "placement.node",
                "must name a node (or be left out)",
            ));
        }
        Ok(())
    }
}

fn is_api_version(v: &str) -> bool {
    let mut parts = v.split('.');
    matches!(
        (parts.next(), parts.next(), parts.next()),
        (Some(a), Some(b), None) if a.parse::<u32>().is_ok() && b.parse::<u32>().is_ok()
    )
}

/// Deep-merges the overridable sections of `context` into the config document: a
/// cpi-config's `properties` arrive at the top level of `context` and win over the file.
pub(crate) fn merge_context(config: &mut Value, context: &Map<String, Value>) {
    let Value::Object(target) = config else {
        return;
    };
    for key in OVERRIDABLE {
        if let Some(v) = context.get(*key) {
            merge_value(target.entry(key.to_string()).or_insert(Value::Null), v);
        }
    }
}

fn merge_value(target: &mut Value, source: &Value) {
    match (target, source) {
        (Value::Object(t), Value::Object(s)) => {
            for (k, v) in s {
                merge_value(t.entry(k.clone()).or_insert(Value::Null), v);
            }
        }
        (t, s) => *t = s.clone(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n";

    fn minimal() -> Value {
        json!({
            "etcd": {"endpoints": ["https://127.0.0.1:2379"]},
            "docker": {"tls": {"client_cert": CERT, "client_key": KEY}},
            "agent": {"mbus": "https://mbus:pw@0.0.0.0:6868"}
        })
    }

    #[test]
    fn defaults_apply() {
        let c = Config::from_value(minimal()).unwrap();
        assert_eq!(c.etcd.key_prefix, "/moltencore");
        assert_eq!(c.etcd.flannel_prefix, "/coreos.com/network");
        assert!(c.vm_defaults.privileged);
        assert_eq!(c.vm_defaults.restart_policy, RestartPolicy::Always);
        assert_eq!(c.vm_defaults.start_mode, StartMode::Runit);
        assert_eq!(c.docker.api_version, "1.41");
    }

    #[test]
    fn a_wrong_type_is_named_in_plain_words() {
        let mut v = minimal();
        v["docker"]["connect_timeout_seconds"] = json!("soon");
        let e = Config::from_value(v).unwrap_err();
        assert_eq!(e.key, "docker.connect_timeout_seconds");
        assert_eq!(
            e.problem, r#"expected a whole number (0 or more), got the string "soon""#,
            "{e}"
        );
    }

    #[test]
    fn unknown_key_is_named() {
        let mut v = minimal();
        v["vm_defaults"] = json!({"priviledged": false});
        let e = Config::from_value(v).unwrap_err();
        assert_eq!(e.key, "vm_defaults.priviledged");
        assert!(e.problem.contains("unknown field"), "{e}");
    }

    #[test]
    fn an_unknown_restart_policy_is_named_with_the_four() {
        let mut v = minimal();
        v["vm_defaults"] = json!({"restart_policy": "some\ntimes"});
        let e = Config::from_value(v).unwrap_err();
        assert_eq!(e.key, "vm_defaults.restart_policy");
        assert_eq!(
            e.problem,
            "'some\\ntimes' is not one of no, always, unless-stopped, on-failure"
        );
        for word in ["no", "always", "unless-stopped", "on-failure"] {
            assert_eq!(RestartPolicy::parse(word).unwrap().as_str(), word);
        }
    }

    #[test]
    fn bad_values_are_named() {
        let cases = [
            (json!({"etcd": {"endpoints": []}}), "etcd.endpoints"),
            (
                json!({"etcd": {"endpoints": ["127.0.0.1:2379"]}}),
                "etcd.endpoints[0]",
            ),
            (
                json!({"etcd": {"endpoints": ["https://h:1"], "key_prefix": "mc"}}),
                "etcd.key_prefix",
            ),
            (json!({"agent": {"mbus": "ftp://x"}}), "agent.mbus"),
            (
                json!({"vm_defaults": {"restart_policy": "sometimes"}}),
                "vm_defaults.restart_policy",
            ),
            (
                json!({"docker": {"tls": {"client_cert": null, "client_key": null}}}),
                "docker.tls",
            ),
            (
                json!({"docker": {"api_version": "v1"}}),
                "docker.api_version",
            ),
            (
                json!({"docker": {"tls": {"client_cert": "nope", "client_key": KEY}}}),
                "docker.tls.client_cert",
            ),
            (
                json!({"vm_defaults": {"start_mode": "upstart"}}),
                "vm_defaults.start_mode",
            ),
            (
                json!({"docker": {"idle_timeout_seconds": 0}}),
                "docker.idle_timeout_seconds",
            ),
            (
                json!({"docker": {"request_timeout_seconds": 0}}),
                "docker.request_timeout_seconds",
            ),
            (
                json!({"agent": {"blobstore": {"provider": ""}}}),
                "agent.blobstore.provider",
            ),
            (
                json!({"agent": {"blobstore": {"provider": "dav; rm -rf /"}}}),
                "agent.blobstore.provider",
            ),
            (
                json!({"agent": {"blobstore": {"provider": "local", "options": {}}}}),
                "agent.blobstore.options.blobstore_path",
            ),
            (
                json!({"agent": {"blobstore": {"provider": "local",
                    "options": {"blobstore_path": "cache"}}}}),
                "agent.blobstore.options.blobstore_path",
            ),
            (
                json!({"agent": {"blobstore": {"provider": "local", "path": "/x"}}}),
                "agent.blobstore.path",
            ),
        ];
        for (patch, key) in cases {
            let mut v = minimal();
            merge_value(&mut v, &patch);
            let e = Config::from_value(v).unwrap_err();
            assert_eq!(e.key, key, "{e}");
        }
    }

    #[test]
    fn mbus_password_is_not_echoed() {
        let mut v = minimal();
        v["agent"]["mbus"] = json!("gopher://mbus:SECRETPW@x");
        let e = Config::from_value(v).unwrap_err();
        assert!(!e.to_string().contains("SECRETPW"), "{e}");
    }

    #[test]
    fn a_blobstore_is_checked_without_echoing_its_options() {
        let mut v = minimal();
        v["agent"]["blobstore"] = json!({"provider": "local",
            "options": {"blobstore_path": "/var/vcap/micro_bosh/data/cache"}});
        let c = Config::from_value(v).unwrap();
        let b = c.agent.blobstore.unwrap();
        assert_eq!(b.provider, "local");
        assert_eq!(
            b.options["blobstore_path"],
            "/var/vcap/micro_bosh/data/cache"
        );
        let mut v = minimal();
        v["agent"]["blobstore"] =
            json!({"provider": "local", "options": {"blobstore_path": 7, "password": "SECRET-B"}});
        let e = Config::from_value(v).unwrap_err();
        assert_eq!(e.key, "agent.blobstore.options.blobstore_path");
        assert!(!e.to_string().contains("SECRET-B"), "{e}");
        // A provider the agent finds as a client, without options, is accepted.
        let mut v = minimal();
        v["agent"]["blobstore"] = json!({"provider": "dav"});
        assert!(
            Config::from_value(v)
                .unwrap()
                .agent
                .blobstore
                .unwrap()
                .options
                .is_empty()
        );
    }

    #[test]
    fn context_properties_override_the_file() {
        let mut v = minimal();
        let ctx = json!({
            "director_uuid": "u",
            "etcd": {"key_prefix": "/other"},
            "vm_defaults": {"privileged": false, "cap_add": ["ALL"]}
        });
        merge_context(&mut v, ctx.as_object().unwrap());
        let c = Config::from_value(v).unwrap();
        assert_eq!(c.etcd.key_prefix, "/other");
        assert_eq!(c.etcd.endpoints, vec!["https://127.0.0.1:2379"]);
        assert!(!c.vm_defaults.privileged);
        assert_eq!(c.vm_defaults.cap_add, vec!["ALL"]);
    }

    #[test]
    fn placement_comes_from_the_file_or_the_context() {
        let c = Config::from_value(minimal()).unwrap();
        assert_eq!(c.placement.node, None);
        let mut v = minimal();
        v["placement"] = json!({"node": "n1"});
        let ctx = json!({"placement": {"node": "n2"}});
        merge_context(&mut v, ctx.as_object().unwrap());
        assert_eq!(
            Config::from_value(v).unwrap().placement.node.as_deref(),
            Some("n2")
        );
        for (bad, key) in [
            (json!({"node": ""}), "placement.node"),
            (json!({"nodes": "n1"}), "placement.nodes"),
            (json!({"node": 3}), "placement.node"),
        ] {
            let mut v = minimal();
            v["placement"] = bad;
            assert_eq!(Config::from_value(v).unwrap_err().key, key);
        }
    }

    #[test]
    fn tls_from_files() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("c.pem"), CERT).unwrap();
        std::fs::write(dir.path().join("k.pem"), KEY).unwrap();
        let mut v = minimal();
        v["docker"]["tls"] = json!({
            "client_cert_file": dir.path().join("c.pem"),
            "client_key_file": dir.path().join("k.pem"),
        });
        let c = Config::from_value(v).unwrap();
        let tls = c.docker_tls().unwrap();
        assert_eq!(tls.client_cert.as_deref(), Some(CERT));
        assert_eq!(tls.ca_cert, None);
        v = minimal();
        v["docker"]["tls"] = json!({"client_cert": CERT, "client_key": KEY,
            "ca_cert_file": "/nonexistent/ca.pem"});
        assert_eq!(
            Config::from_value(v).unwrap_err().key,
            "docker.tls.ca_cert_file"
        );
    }
}
