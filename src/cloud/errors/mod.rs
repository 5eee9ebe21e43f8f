//! What the director is told when a layer below `cloud/` fails: the one place that turns
//! their typed errors into `Bosh::Clouds::*` classes and decides whether a retry can help.
//! One file per layer: the Docker nodes, and the cluster's etcd index, configuration and
//! placement; and per concern of `cloud/`: disks, finding VMs, stemcells and VMs.

mod cluster;
mod context;
mod disk;
mod docker;
mod lookup;
mod stemcell;
mod unsupported;
mod vm;

use crate::protocol::{CpiError, ErrorKind};

/// What create_vm answers: transient infrastructure failures become `VMCreationFailed`
/// with their `ok_to_retry`, so the director retries the whole create; bad input keeps
/// its own kind.
pub(crate) fn creation_failure(e: CpiError) -> CpiError {
    if e.kind == ErrorKind::CloudError {
        CpiError {
            kind: ErrorKind::VmCreationFailed,
            ..e
        }
    } else {
        e
    }
}
