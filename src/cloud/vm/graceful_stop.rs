//! A VM's jobs stopped as its agent would stop them, before its container stops: each
//! job's drain script (`job_shutdown`, dynamic drains polled with `job_check_status`),
//! then `monit stop all`, waited for until no process is monitored any more. Docker's
//! SIGTERM alone reaches only the container's first process (runit's `runsvdir`, which
//! exits at once), so without this the kernel kills the jobs mid-write. Used where the
//! director has not stopped the jobs itself: a node's reboot and `reboot_vm`.

use std::time::{Duration, Instant};

use crate::docker::{DockerError, NodeDocker};
use crate::ids::VmCid;

/// The script run in the VM (`/bin/sh -c`). Drain scripts get empty job states, as the
/// agent gives them when the deployment does not change. `monit stop all` leaves every
/// job unmonitored in monit's state file, which a monit restarted later would restore; and
/// monit, still running, saves that file again at every cycle. So the script leaves a mark
/// ([`super::start_script::JOBS_STOPPED`]) and the next start removes the state file before
/// monit runs: monit then starts the jobs, as after an unplanned restart.
const SCRIPT: &str = r#"export BOSH_JOB_STATE='{}' BOSH_JOB_NEXT_STATE='{}'
for d in /var/vcap/jobs/*/bin/drain; do
  [ -x "$d" ] || continue
  n=$("$d" job_shutdown hash_unchanged 2>/dev/null | tail -n 1)
  while [ "$n" -lt 0 ] 2>/dev/null; do
    sleep $((-n))
    n=$("$d" job_check_status hash_unchanged 2>/dev/null | tail -n 1)
  done
  if [ "$n" -gt 0 ] 2>/dev/null; then sleep "$n"; fi
done
m=/var/vcap/bosh/bin/monit
if [ -x "$m" ]; then
  "$m" stop all
  while "$m" summary 2>/dev/null | grep '^Process' | grep -qv 'not monitored'; do sleep 0.5; done
  touch /var/vcap/bosh/moltencore-jobs-stopped
fi
"#;

/// How the jobs of a VM ended up.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stopped {
    /// Drained and stopped by monit.
    Gracefully,
    /// The grace period ended first; the container's stop kills what is left.
    GraceEnded,
    /// The container was not running: nothing to stop.
    NotRunning,
}

/// Drains and stops the jobs of VM `cid` within `grace`.
pub(crate) async fn stop_jobs(
    docker: &NodeDocker,
    cid: &VmCid,
    grace: Duration,
) -> Result<Stopped, DockerError> {
    let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), SCRIPT.to_string()];
    let deadline = Instant::now() + grace;
    match docker
        .exec_until(cid, cmd, deadline, "stopping the VM's jobs")
        .await
    {
        Ok(Some(_)) => Ok(Stopped::Gracefully),
        Ok(None) => Ok(Stopped::GraceEnded),
        // The daemon's 409: the container is not running.
        Err(DockerError::Conflict { .. }) => Ok(Stopped::NotRunning),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_the_stop_leaves_is_the_one_the_start_reads() {
        assert!(SCRIPT.contains(&format!(
            "touch {}",
            super::super::start_script::JOBS_STOPPED
        )));
        let start = super::super::start_script::script(
            "vm-1",
            None,
            &[],
            crate::config::StartMode::Runit,
            None,
        );
        assert!(
            start.contains(super::super::start_script::JOBS_STOPPED),
            "{start}"
        );
    }
}
