//! Commands run in a running container (`docker exec`): short ones whose output is read
//! ([`NodeDocker::exec`]), and long ones waited for up to a deadline
//! ([`NodeDocker::exec_until`]), as a VM's graceful stop is.

use std::time::{Duration, Instant};

use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::ExecConfig;

use super::error::DockerError;
use super::idle::next_within;
use super::node::NodeDocker;

/// Most output kept of one command (the rest is read and dropped).
const MAX_OUTPUT: usize = 64 * 1024;
/// Pause between two looks at a command that runs detached.
const POLL: Duration = Duration::from_millis(250);

/// What a command answered.
#[derive(Debug)]
pub(crate) struct Done {
    /// Its exit code (-1 when Docker does not say).
    pub(crate) code: i64,
    /// Its output (stdout and stderr), at most [`MAX_OUTPUT`] bytes of it.
    pub(crate) output: String,
}

impl NodeDocker {
    /// Creates the exec of `cmd` in `container`, its output attached or not.
    async fn create_exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        attach: bool,
        doing: &str,
    ) -> Result<bollard::exec::CreateExecResults, DockerError> {
        let container = super::names::object(container)?;
        let config = ExecConfig {
            cmd: Some(cmd),
            attach_stdout: Some(attach),
            attach_stderr: Some(attach),
            ..Default::default()
        };
        self.docker
            .create_exec(container, config)
            .await
            .map_err(|e| self.error(doing, &e))
    }

    /// Runs `cmd` in `container` and waits for it, reading its output; each part of the
    /// answer must come within the node's idle timeout.
    pub(crate) async fn exec(
        &self,
        container: &str,
        cmd: Vec<String>,
        doing: &str,
    ) -> Result<Done, DockerError> {
        let exec = self.create_exec(container, cmd, true, doing).await?;
        let started = self
            .docker
            .start_exec(&exec.id, Some(StartExecOptions::default()))
            .await
            .map_err(|e| self.error(doing, &e))?;
        let mut text = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = started {
            while let Some(chunk) = next_within(&mut output, self, doing).await? {
                let bytes = chunk.into_bytes();
                let room = MAX_OUTPUT.saturating_sub(text.len());
                text.extend_from_slice(&bytes[..bytes.len().min(room)]);
            }
        }
        let code = self.exit_code(&exec.id, doing).await?;
        Ok(Done {
            code: code.unwrap_or(-1),
            output: String::from_utf8_lossy(&text).into_owned(),
        })
    }

    /// Runs `cmd` in `container` detached and waits until it ends or `deadline` passes;
    /// its exit code, `None` when the deadline came first (the command goes on).
    pub(crate) async fn exec_until(
        &self,
        container: &str,
        cmd: Vec<String>,
        deadline: Instant,
        doing: &str,
    ) -> Result<Option<i64>, DockerError> {
        let exec = self.create_exec(container, cmd, false, doing).await?;
        let detached = StartExecOptions {
            detach: true,
            ..Default::default()
        };
        self.docker
            .start_exec(&exec.id, Some(detached))
            .await
            .map_err(|e| self.error(doing, &e))?;
        loop {
            if let Some(code) = self.exit_code(&exec.id, doing).await? {
                return Ok(Some(code));
            }
            if Instant::now() + POLL > deadline {
                return Ok(None);
            }
            tokio::time::sleep(POLL).await;
        }
    }

    /// The exit code of exec `id`, `None` while it runs.
    async fn exit_code(&self, id: &str, doing: &str) -> Result<Option<i64>, DockerError> {
        let inspect = self
            .docker
            .inspect_exec(id)
            .await
            .map_err(|e| self.error(doing, &e))?;
        if inspect.running == Some(true) {
            return Ok(None);
        }
        Ok(Some(inspect.exit_code.unwrap_or(-1)))
    }
}
