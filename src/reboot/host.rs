//! The host seams of a reboot: the boot id (`/proc/sys/kernel/random/boot_id` below a
//! root directory) that tells one boot from the next, and the command that reboots the
//! host (`systemctl reboot` by default).

use std::path::{Path, PathBuf};
use std::time::Duration;

use super::error::{CommandRunError, HostError};

/// `program` with `args`, reading nothing, killed when its future is dropped.
pub(crate) fn command(program: &str, args: &[String]) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(program);
    command
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true);
    command
}

/// Waits for a command's `run` (its status or output) at most `timeout`; a command that
/// does not return in time is killed.
pub(crate) async fn run_bounded<T>(
    program: &str,
    timeout: Duration,
    run: impl Future<Output = std::io::Result<T>>,
) -> Result<T, CommandRunError> {
    match tokio::time::timeout(timeout, run).await {
        Err(_) => Err(CommandRunError::Timeout {
            program: program.to_string(),
            timeout,
        }),
        Ok(Err(source)) => Err(CommandRunError::NotRun {
            program: program.to_string(),
            source,
        }),
        Ok(Ok(done)) => Ok(done),
    }
}

/// Longest the reboot command may take to return.
const REBOOT_TIMEOUT: Duration = Duration::from_secs(120);

/// The host as the manager sees it.
#[derive(Debug, Clone)]
pub(crate) struct Host {
    boot_id_file: PathBuf,
    reboot_command: Vec<String>,
}

impl Host {
    /// The host below `root`, rebooted by `reboot_command` (program and arguments).
    pub(crate) fn new(root: &Path, reboot_command: Vec<String>) -> Host {
        Host {
            boot_id_file: root.join("proc/sys/kernel/random/boot_id"),
            reboot_command,
        }
    }

    /// The current boot's id.
    pub(crate) fn boot_id(&self) -> Result<String, HostError> {
        let text = std::fs::read_to_string(&self.boot_id_file).map_err(|source| {
            HostError::BootIdUnreadable {
                path: self.boot_id_file.clone(),
                source,
            }
        })?;
        let id = text.trim();
        if id.is_empty() || id.len() > 64 {
            return Err(HostError::NoBootId {
                path: self.boot_id_file.clone(),
            });
        }
        Ok(id.to_string())
    }

    /// Runs the reboot command; `Ok` once it returned success (the host goes down soon).
    pub(crate) async fn reboot(&self) -> Result<(), HostError> {
        let (program, args) = self
            .reboot_command
            .split_first()
            .ok_or(HostError::EmptyCommand)?;
        let status = run_bounded(program, REBOOT_TIMEOUT, command(program, args).status()).await?;
        if status.success() {
            Ok(())
        } else {
            Err(HostError::Failed {
                program: program.clone(),
                status,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_id_is_read_below_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let host = Host::new(dir.path(), vec!["true".into()]);
        assert!(host.boot_id().is_err());
        let file = dir.path().join("proc/sys/kernel/random/boot_id");
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, "5e0c1a4e-7c4b-4d5f-9b0e-0d7b3f6c2a11\n").unwrap();
        assert_eq!(
            host.boot_id().unwrap(),
            "5e0c1a4e-7c4b-4d5f-9b0e-0d7b3f6c2a11"
        );
    }
}
