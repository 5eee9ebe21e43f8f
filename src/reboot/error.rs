//! Why the reboot semaphore could not be read or changed, apart from the semaphore so
//! that the group names and keys it is made of can name it too.

use crate::cluster::IndexError;

/// Why the semaphore could not be read or changed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SemaphoreError {
    /// etcd failed or could not be reached.
    #[error(transparent)]
    Etcd(#[from] IndexError),
    /// The document in etcd is not a semaphore.
    #[error("reboot semaphore {key} is unreadable: {reason}")]
    Corrupt { key: String, reason: String },
    /// Others kept changing the document.
    #[error("reboot semaphore {key} kept changing; try again")]
    Busy { key: String },
    /// A group name outside `^[a-zA-Z0-9.-]+$`.
    #[error("reboot group '{0}' is not a group name (letters, digits, '.', '-'; at most 64)")]
    BadGroup(String),
}

/// Why the host seams (the boot id, the reboot command) failed.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// The boot id file could not be read.
    #[error("cannot read the boot id {}: {source}", path.display())]
    BootIdUnreadable {
        path: std::path::PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// The boot id file holds nothing like a boot id.
    #[error("{} holds no boot id", path.display())]
    NoBootId { path: std::path::PathBuf },
    /// No reboot command was given.
    #[error("the reboot command is empty")]
    EmptyCommand,
    /// The reboot command did not return in time or could not be started.
    #[error(transparent)]
    Run(#[from] CommandRunError),
    /// The reboot command ran and failed.
    #[error("{program} failed: {status}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
    },
}

/// Why a host command the manager runs (the reboot command, the update engine's status)
/// gave no exit status; each command adds its own ways to fail.
#[derive(Debug, thiserror::Error)]
pub enum CommandRunError {
    /// The command did not return in time (it was killed).
    #[error("{program} did not return in {timeout:?}")]
    Timeout {
        program: String,
        timeout: std::time::Duration,
    },
    /// The command could not be started.
    #[error("{program}: {source}")]
    NotRun {
        program: String,
        #[source]
        source: std::io::Error,
    },
}

/// Why the update engine could not say whether the node needs a reboot.
#[derive(Debug, thiserror::Error)]
pub(crate) enum UpdateEngineError {
    /// The status command did not return in time or could not be started.
    #[error(transparent)]
    Run(#[from] CommandRunError),
    /// The status command ran and failed; `stderr` is cut short.
    #[error("{program} failed ({status}): {stderr}")]
    Failed {
        program: String,
        status: std::process::ExitStatus,
        stderr: String,
    },
}

/// Why the health gate after a reboot does not pass yet.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HealthError {
    /// The node's Docker does not answer.
    #[error("Docker does not answer: {0}")]
    DockerDown(#[source] Box<crate::docker::DockerError>),
    /// A VM's container could not be inspected.
    #[error(transparent)]
    Inspect(Box<crate::docker::DockerError>),
    /// Some VMs are not back as they were; one line per VM.
    #[error("{}", .0.join("; "))]
    NotBack(Vec<String>),
}

/// Why a heartbeat lease could not be kept alive.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RenewError {
    /// The keep-alive request or its answer failed.
    #[error(transparent)]
    Etcd(#[from] etcd_client::Error),
    /// etcd answered that the lease is gone.
    #[error("it expired")]
    Expired,
    /// etcd closed the stream of answers.
    #[error("etcd closed the keep-alive stream")]
    Closed,
}

/// Why the heartbeat's keep-alive stopped (it is written again on new leases).
#[derive(Debug, thiserror::Error)]
pub(crate) enum HeartbeatLost {
    /// No keep-alive stream could be opened for a lease.
    #[error("cannot keep lease {id} alive: {source}")]
    NoKeepAlive {
        id: i64,
        #[source]
        source: etcd_client::Error,
    },
    /// A lease could not be renewed.
    #[error("lease {id}: {source}")]
    Renew {
        id: i64,
        #[source]
        source: RenewError,
    },
    /// etcd did not answer a renewal in time.
    #[error("lease {id}: etcd did not answer the keep-alive")]
    RenewTimeout { id: i64 },
    /// etcd did not answer the read of the heartbeat in time.
    #[error("reading {key}: etcd did not answer")]
    ReadTimeout { key: String },
    /// The heartbeat could not be read.
    #[error("reading {key}: {source}")]
    Read {
        key: String,
        #[source]
        source: etcd_client::Error,
    },
    /// Someone deleted the heartbeat.
    #[error("{key} was deleted")]
    Deleted { key: String },
}
