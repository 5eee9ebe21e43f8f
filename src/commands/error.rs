//! What an operator's command reports when it fails: one plain `error: …` line on stderr
//! and, when there is an obvious next step, a `hint: …` line (never the BOSH wire type
//! names such as `Bosh::Clouds::CpiError`, which only the director reads).

use std::path::{Path, PathBuf};

use crate::cloud::CloudContext;
use crate::config::default_config_path;
use crate::protocol::CpiError;

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
    /// etcd or a node's Docker could not be read or changed.
    #[error("{0}")]
    Cluster(String),
    /// Anything else the command refused or could not do, with its cause chain.
    #[error("{0}")]
    Failed(String),
    /// The async runtime could not be started (out of threads or file descriptors).
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
}

impl CommandError {
    /// The next step to suggest, when there is one.
    pub fn hint(&self) -> Option<String> {
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
            CommandError::Failed(_) | CommandError::Runtime(_) => None,
        }
    }

    /// The lines printed on stderr: `error: …` then, when there is one, `hint: …`.
    pub fn lines(&self) -> Vec<String> {
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

impl From<CpiError> for CommandError {
    fn from(e: CpiError) -> Self {
        CommandError::Cluster(e.message)
    }
}

impl From<crate::nodeprep::NodePrepError> for CommandError {
    fn from(e: crate::nodeprep::NodePrepError) -> Self {
        CommandError::Failed(format!("{:#}", anyhow::Error::new(e)))
    }
}

impl From<anyhow::Error> for CommandError {
    fn from(e: anyhow::Error) -> Self {
        match e.downcast::<CommandError>() {
            Ok(typed) => typed,
            Err(e) => CommandError::Failed(format!("{e:#}")),
        }
    }
}

/// Reads and checks the context's cpi.json first, so that a missing or invalid file is
/// reported as such (with its hint) rather than as a cluster error. The context keeps the
/// configuration: later steps do not read the file again.
pub async fn load_config(ctx: &CloudContext<'_>, path: &Path) -> Result<(), CommandError> {
    match ctx.config().await {
        Ok(_) => Ok(()),
        Err(e) => Err(CommandError::Config {
            path: path.to_path_buf(),
            missing: !path.exists(),
            problem: e.message,
        }),
    }
}

/// Prints `failure` as [`CommandError::report`] does (an `anyhow` chain that carries a
/// [`CommandError`] keeps its hint).
pub fn report_any(failure: anyhow::Error) {
    CommandError::from(failure).report();
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
    fn wire_errors_lose_their_bosh_type_and_anyhow_keeps_a_typed_cause() {
        let e = CommandError::from(CpiError::cpi("etcd at 10.0.0.1:2379 is unreachable"));
        assert_eq!(e.lines()[0], "error: etcd at 10.0.0.1:2379 is unreachable");
        let typed = anyhow::Error::new(CommandError::Config {
            path: "/x".into(),
            missing: true,
            problem: "p".into(),
        });
        assert!(matches!(
            CommandError::from(typed),
            CommandError::Config { missing: true, .. }
        ));
        let plain = CommandError::from(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(plain.lines(), vec!["error: outer: inner".to_string()]);
    }
}
