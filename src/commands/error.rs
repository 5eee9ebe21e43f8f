//! What an operator's command reports when it fails: one plain `error: …` line on stderr
//! and, when there is an obvious next step, a `hint: …` line (never the BOSH wire type
//! names such as `Bosh::Clouds::CpiError`, which only the director reads).

use std::path::{Path, PathBuf};

use crate::boshconfig::BoshConfigError;
use crate::cloud::{CloudContext, ContextError};
use crate::cluster::IndexError;
use crate::config::default_config_path;
use crate::fleetlock::tls::TlsError;
use crate::node_name::BadNodeName;
use crate::nodeprep::NodePrepError;
use crate::reboot::error::{HostError, SemaphoreError};
use crate::reboot::record::{RebootRecord, RecordError};
use crate::reboot::window::WindowError;

/// Why an operator's command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// cpi.json could not be read, or is not valid.
    #[error("{problem}")]
    Config {
        /// The file the command read.
        path: PathBuf,
        /// Whether there is no such file (the usual case: `-c` forgotten off a BOSH VM).
        missing: bool,
        /// What is wrong, naming the key at fault.
        problem: String,
    },
    /// The configuration, etcd or a node's Docker could not be reached (the CPI
    /// context's words).
    #[error(transparent)]
    Cluster(Box<ContextError>),
    /// etcd failed during a request of the command's own.
    #[error(transparent)]
    Index(#[from] IndexError),
    /// A node record could not be read or changed.
    #[error(transparent)]
    NodePrep(#[from] NodePrepError),
    /// A reboot record or request could not be read or changed.
    #[error(transparent)]
    Record(#[from] RecordError),
    /// A reboot semaphore could not be read or changed, or a group name is wrong.
    #[error(transparent)]
    Semaphore(#[from] SemaphoreError),
    /// The reboot window flags do not give a window.
    #[error(transparent)]
    Window(#[from] WindowError),
    /// The host's boot id could not be read.
    #[error(transparent)]
    Host(#[from] HostError),
    /// The FleetLock endpoint's TLS files cannot be used.
    #[error(transparent)]
    Tls(#[from] TlsError),
    /// A generated BOSH config could not be made.
    #[error(transparent)]
    BoshConfig(#[from] BoshConfigError),
    /// A generated BOSH config could not be written as YAML.
    #[error("cannot write the config as YAML: {0}")]
    Yaml(#[source] serde_yaml_ng::Error),
    /// A flag's value cannot be used.
    #[error("{0}")]
    Flag(&'static str),
    /// A node name given on the command line breaks the rules of node names.
    #[error(transparent)]
    NodeName(#[from] BadNodeName),
    /// There is no node of that name.
    #[error("there is no node '{0}'; `cpi nodes` lists the nodes")]
    NoSuchNode(String),
    /// `cpi nodes release` of a node that reports itself draining or rebooting.
    #[error(
        "node {name} reports itself {} since {} ({}); release it with --force only if \
         the host will not come back by itself",
        record.phase, record.since, record.why
    )]
    StillRebooting {
        /// The node.
        name: String,
        /// Its reboot record.
        record: Box<RebootRecord>,
    },
    /// The reboot record changed between its reading and its removal.
    #[error("node {0}'s reboot record changed meanwhile; look again with `cpi nodes`")]
    RecordChanged(String),
    /// The endpoint could not listen on its address.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: std::net::SocketAddr,
        /// Why it could not listen.
        #[source]
        source: std::io::Error,
    },
    /// Standard output or a signal handler failed.
    #[error(transparent)]
    Io(#[from] std::io::Error),
    /// The async runtime could not be started (out of threads or file descriptors).
    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
    /// node-prep failed (it reports as `node-prep: error: …`, with its cause chain).
    #[error("{}", chain(.0))]
    NodePrepCommand(NodePrepCommandError),
}

/// Why `cpi node-prep` failed: its flags, or the preparation itself.
#[derive(Debug, thiserror::Error)]
pub enum NodePrepCommandError {
    /// A key prefix flag is not an etcd key prefix.
    #[error("{flag} '{prefix}' must start with '/' and not end with '/'")]
    Prefix {
        /// The flag.
        flag: &'static str,
        /// What it was given.
        prefix: String,
    },
    /// A PEM file flag names no readable, small, regular file.
    #[error("{flag} must name a regular file of at most {}", crate::bounded_file::human(*limit))]
    PemFile {
        /// The flag.
        flag: &'static str,
        /// The size limit of such a file, in bytes.
        limit: u64,
        /// Why it could not be read.
        source: crate::bounded_file::ReadError,
    },
    /// Only one of the client certificate and key was given.
    #[error("--etcd-cert and --etcd-key must be given together")]
    CertWithoutKey,
    /// `--etcd-user` has no `:`.
    #[error("--etcd-user must be USER:PASSWORD")]
    User,
    /// `--etcd-timeout 0`.
    #[error("--etcd-timeout must be at least 1")]
    Timeout,
    /// The async runtime could not be started.
    #[error("cannot start the async runtime")]
    Runtime(#[source] std::io::Error),
    /// The preparation failed.
    #[error(transparent)]
    NodePrep(#[from] NodePrepError),
    /// A report could not be written as JSON.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// Some disks could not be mounted back into their VMs.
    #[error("{} disk(s) could not be put back in their VMs: {}", .0.len(), .0.join("; "))]
    DisksLeftOut(Vec<String>),
}

impl From<NodePrepCommandError> for CommandError {
    fn from(e: NodePrepCommandError) -> Self {
        CommandError::NodePrepCommand(e)
    }
}

/// The error's message followed by every message of its source chain, each after `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// A failed command: what to report once, and the code the process exits with.
#[derive(Debug)]
pub struct Failure {
    /// What went wrong.
    pub error: CommandError,
    /// The exit code (1 unless the command documents another).
    pub code: i32,
}

impl<E: Into<CommandError>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            error: e.into(),
            code: 1,
        }
    }
}

/// How a command ended: the exit code of a command that ran (a listing exits 1 when a node
/// did not answer), or the failure to report.
pub type Outcome = Result<i32, Failure>;

impl CommandError {
    /// The next step to suggest, when there is one.
    pub(crate) fn hint(&self) -> Option<String> {
        match self {
            CommandError::Config {
                missing: true,
                path,
                ..
            } if *path == default_config_path() => Some(format!(
                "pass -c /path/to/cpi.json (without -c the command reads {})",
                path.display()
            )),
            CommandError::Config { missing: true, .. } => {
                Some("check the path given with -c (the CPI job's cpi.json)".into())
            }
            CommandError::Config { path, .. } => Some(format!(
                "fix the key named above in {} (or pass -c with another cpi.json)",
                path.display()
            )),
            CommandError::Cluster(_) => {
                Some("check that etcd answers at the etcd.endpoints of cpi.json".into())
            }
            _ => None,
        }
    }

    /// The lines printed on stderr: `error: …` then, when there is one, `hint: …`.
    pub(crate) fn lines(&self) -> Vec<String> {
        if let CommandError::NodePrepCommand(_) = self {
            return vec![format!("node-prep: error: {self}")];
        }
        let mut lines = vec![format!("error: {self}")];
        lines.extend(self.hint().map(|h| format!("hint: {h}")));
        lines
    }

    /// Prints [`CommandError::lines`] on stderr.
    pub fn report(&self) {
        for line in self.lines() {
            eprintln!("{line}");
        }
    }
}

impl From<ContextError> for CommandError {
    fn from(e: ContextError) -> Self {
        CommandError::Cluster(Box::new(e))
    }
}

/// Reads and checks the context's cpi.json first, so that a missing or invalid file is
/// reported as such (with its hint) rather than as a cluster error. The context keeps the
/// configuration: later steps do not read the file again.
pub(crate) async fn load_config(ctx: &CloudContext<'_>, path: &Path) -> Result<(), CommandError> {
    match ctx.config().await {
        Ok(_) => Ok(()),
        Err(e) => Err(CommandError::Config {
            path: path.to_path_buf(),
            missing: !path.exists(),
            problem: e.to_string(),
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_config_hints_at_dash_c() {
        let e = CommandError::Config {
            path: default_config_path(),
            missing: true,
            problem: "invalid CPI configuration: /var/vcap/jobs/moltencore_cpi/config/cpi.json: No such file or directory (os error 2)".into(),
        };
        let lines = e.lines();
        assert!(
            lines[0].starts_with("error: invalid CPI configuration"),
            "{lines:?}"
        );
        assert!(!lines[0].contains("Bosh::Clouds"), "{lines:?}");
        assert!(
            lines[1].starts_with("hint: pass -c /path/to/cpi.json"),
            "{lines:?}"
        );
        let given = CommandError::Config {
            path: "/elsewhere/cpi.json".into(),
            missing: true,
            problem: "p".into(),
        };
        assert!(given.lines()[1].contains("path given with -c"));
    }

    #[test]
    fn context_errors_keep_their_words_and_node_prep_keeps_its_chain() {
        let e = CommandError::from(ContextError::NodeNotRegistered { node: "n1".into() });
        assert_eq!(e.lines()[0], "error: node n1 is not registered in etcd");
        let inner = std::io::Error::other("inner");
        let prep = CommandError::from(NodePrepCommandError::Runtime(inner));
        assert_eq!(
            prep.lines(),
            vec!["node-prep: error: cannot start the async runtime: inner".to_string()]
        );
    }
}
