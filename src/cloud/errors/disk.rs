//! Disk failures as BOSH errors: a disk or volume that is not there is `DiskNotFound`; a
//! holder that lets go by itself (a VM being created, a lazy unmount, a node that may
//! answer again) is worth a retry; a refusal the director can act on (shrink, an attached
//! disk) is `NotSupported` or a `CloudError` a retry repeats.

use crate::cloud::disk::error::DiskError;
use crate::protocol::{CpiError, ErrorKind};

impl From<DiskError> for CpiError {
    fn from(e: DiskError) -> CpiError {
        use DiskError as D;
        let message = e.to_string();
        match e {
            D::NotFound { .. } | D::VolumeGone { .. } => {
                CpiError::new(ErrorKind::DiskNotFound, message)
            }
            D::NoContainer { .. } => CpiError::new(ErrorKind::VmNotFound, message),
            D::Shrink { .. } | D::ResizeAttached { .. } | D::GrowShrinks { .. } => {
                CpiError::new(ErrorKind::NotSupported, message)
            }
            D::LoopStillHeld { .. }
            | D::CopyStillBound { .. }
            | D::MoveBlocked { .. }
            | D::CopyLeft { .. }
            | D::GrowInUse { .. } => CpiError::cloud(message, true),
            D::HeldByVm { creating, .. } => CpiError::cloud(message, creating),
            D::NoDiskTree { .. }
            | D::NodeNotRegistered { .. }
            | D::BoundInForeign { .. }
            | D::MountedByForeign { .. }
            | D::Placement(_)
            | D::AttachedElsewhere { .. }
            | D::MadeEarlier { .. }
            | D::NoAgentSettings { .. }
            | D::SettingsUnreadable { .. }
            | D::DeleteAttached { .. } => CpiError::cloud(message, false),
            D::SettingsPack(_) => CpiError::cpi(message),
            // The node's failure decides the class; the message says which move.
            D::MoveSource { source, .. } | D::MoveCopy { source, .. } => CpiError {
                message,
                ..CpiError::from(source)
            },
            D::Docker(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::model::MoveBlocked;
    use crate::docker::DockerError;
    use crate::protocol::{DiskCid, VmCid};

    fn cid() -> DiskCid {
        DiskCid::parse("disk-00000000-0000-0000-0000-000000000001").unwrap()
    }

    fn vm() -> VmCid {
        VmCid::parse("vm-00000000-0000-0000-0000-000000000002").unwrap()
    }

    fn class(e: DiskError) -> (ErrorKind, bool) {
        let text = e.to_string();
        let c = CpiError::from(e);
        assert_eq!(c.message, text, "the message is the error's own text");
        (c.kind, c.ok_to_retry)
    }

    #[test]
    fn a_missing_disk_or_volume_is_disk_not_found() {
        let e = DiskError::NotFound { cid: cid() };
        assert_eq!(
            e.to_string(),
            "disk disk-00000000-0000-0000-0000-000000000001 does not exist"
        );
        assert_eq!(class(e), (ErrorKind::DiskNotFound, false));
        let e = DiskError::VolumeGone {
            cid: cid(),
            node: "n1".into(),
        };
        assert_eq!(class(e), (ErrorKind::DiskNotFound, false));
    }

    #[test]
    fn a_holder_that_lets_go_by_itself_is_worth_a_retry() {
        let held = |creating| DiskError::HeldByVm {
            cid: cid(),
            how: "bound".into(),
            vm: vm(),
            node: "n1".into(),
            creating,
        };
        assert_eq!(class(held(true)), (ErrorKind::CloudError, true));
        assert_eq!(class(held(false)), (ErrorKind::CloudError, false));
        let blocked = DiskError::MoveBlocked {
            cid: cid(),
            blocked: MoveBlocked {
                mark: "old_copy_on",
                node: "n2".into(),
            },
        };
        assert_eq!(
            blocked.to_string(),
            "moving disk disk-00000000-0000-0000-0000-000000000001: a copy of it on node n2 (old_copy_on) could not be removed yet; retry when node n2 answers"
        );
        assert_eq!(class(blocked), (ErrorKind::CloudError, true));
    }

    #[test]
    fn shrinking_is_not_supported() {
        let e = DiskError::Shrink {
            cid: cid(),
            from: 20,
            to: 10,
        };
        assert_eq!(class(e), (ErrorKind::NotSupported, false));
    }

    #[test]
    fn a_failed_move_keeps_the_nodes_class() {
        let e = DiskError::MoveCopy {
            cid: cid(),
            from: "n1".into(),
            to: "n2".into(),
            source: DockerError::Verify {
                message: "copy check failed".into(),
            },
        };
        assert_eq!(class(e), (ErrorKind::CloudError, true));
    }
}
