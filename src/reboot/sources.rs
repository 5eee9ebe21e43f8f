//! The sources of "this node needs a reboot", each one small seam: Flatcar's update
//! engine (`update_engine_client -status`), the `/run/reboot-required` flag file (below a
//! root directory, so tests drive it), and an operator's request recorded in etcd (read by
//! the manager, see [`super::record`]).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{CommandRunError, UpdateEngineError};
use super::host::{command, run_bounded};

/// What the update engine reports once an update waits for its reboot.
pub(crate) const NEED_REBOOT: &str = "UPDATE_STATUS_UPDATED_NEED_REBOOT";
/// Longest the update engine's status command may take.
const STATUS_TIMEOUT: Duration = Duration::from_secs(30);

/// Whether the update engine's status output says an update waits for the reboot
/// (`CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT`).
pub(crate) fn status_needs_reboot(output: &str) -> bool {
    output.lines().any(|line| {
        line.split_once('=')
            .is_some_and(|(k, v)| k.trim() == "CURRENT_OP" && v.trim() == NEED_REBOOT)
    })
}

/// The update engine seam: a command whose output is `update_engine_client -status`'s.
#[derive(Debug, Clone)]
pub(crate) struct UpdateEngine {
    /// Program and arguments; `None` switches the source off.
    pub(crate) command: Option<Vec<String>>,
}

impl UpdateEngine {
    /// Asks the update engine; `Ok(None)` when the command is not installed (not Flatcar),
    /// `Err` when it ran and failed.
    pub(crate) async fn needs_reboot(&self) -> Result<Option<bool>, UpdateEngineError> {
        let Some((program, args)) = self.command.as_ref().and_then(|c| c.split_first()) else {
            return Ok(None);
        };
        let run = command(program, args).output();
        let out = match run_bounded(program, STATUS_TIMEOUT, run).await {
            Err(CommandRunError::NotRun { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound =>
            {
                return Ok(None);
            }
            done => done?,
        };
        if !out.status.success() {
            let err = String::from_utf8_lossy(&out.stderr);
            return Err(UpdateEngineError::Failed {
                program: program.clone(),
                status: out.status,
                stderr: super::semaphore::cut(err.trim(), 200),
            });
        }
        Ok(Some(status_needs_reboot(&String::from_utf8_lossy(
            &out.stdout,
        ))))
    }
}

/// The `/run/reboot-required` flag file (as Debian/Ubuntu packages write it).
#[derive(Debug, Clone)]
pub(crate) struct FlagFile {
    pub(crate) path: PathBuf,
}

impl FlagFile {
    /// The flag file below `root`.
    pub(crate) fn under(root: &Path) -> FlagFile {
        FlagFile {
            path: root.join("run/reboot-required"),
        }
    }

    /// Whether the file exists.
    pub(crate) fn is_set(&self) -> bool {
        self.path.exists()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_update_engine_status_is_read_from_its_current_op() {
        let waiting = "LAST_CHECKED_TIME=1700000000\nPROGRESS=0.000000\n\
                       CURRENT_OP=UPDATE_STATUS_UPDATED_NEED_REBOOT\nNEW_VERSION=0.0.0\n";
        assert!(status_needs_reboot(waiting));
        assert!(!status_needs_reboot("CURRENT_OP=UPDATE_STATUS_IDLE\n"));
        assert!(!status_needs_reboot(
            "NEW_VERSION=UPDATE_STATUS_UPDATED_NEED_REBOOT\n"
        ));
        assert!(!status_needs_reboot(""));
    }

    #[test]
    fn a_missing_update_engine_is_no_source() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let absent = UpdateEngine {
            command: Some(vec!["/nonexistent/update_engine_client".into()]),
        };
        assert!(matches!(rt.block_on(absent.needs_reboot()), Ok(None)));
        let off = UpdateEngine { command: None };
        assert!(matches!(rt.block_on(off.needs_reboot()), Ok(None)));
        let failing = UpdateEngine {
            command: Some(vec!["false".into()]),
        };
        assert!(rt.block_on(failing.needs_reboot()).is_err());
    }
}
