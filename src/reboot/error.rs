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
