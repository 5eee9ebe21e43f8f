//! What makes a disk that the node's mounter just put in a VM ready for its agent, for
//! attach_disk and create_vm alike: a new disk formatted, a grown one's filesystem grown,
//! the files of a disk kept as a folder copied into its new image; and the refusal of a
//! volume that holds more than its image.

use super::inside;
use crate::docker::mounter::{self, BlockDisk};
use crate::docker::{DockerError, NodeDocker};
use crate::protocol::{DiskCid, VmCid};

/// Why a disk could not be put in a VM as a block device.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BlockDiskError {
    /// The disk's volume holds something besides its image (and no staged folder).
    #[error(
        "disk {0}: its volume holds files besides its disk image, which this CPI did not put there; move them away or copy the data to a new disk"
    )]
    NotAnImage(DiskCid),
    #[error(transparent)]
    Docker(#[from] DockerError),
}

/// A mounter's refusal of a disk whose volume holds something besides its image (and no
/// staged folder), said so; other errors as they are.
pub(crate) fn not_an_image(e: DockerError, disk: &DiskCid) -> BlockDiskError {
    match e {
        DockerError::Mount { code, .. } if code == mounter::NOT_AN_IMAGE => {
            BlockDiskError::NotAnImage(disk.clone())
        }
        e => e.into(),
    }
}

/// A disk just put in the VM as a block device made ready for its agent: a new one
/// formatted, one grown by resize_disk has its filesystem grown, the files of one kept as
/// a folder copied into its new filesystem (the folder then goes).
pub(crate) async fn prepare_block_disk(
    docker: &NodeDocker,
    disks_dir: &str,
    vm: &VmCid,
    disk: &DiskCid,
    found: BlockDisk,
) -> Result<(), DockerError> {
    if !found.formatted {
        inside::format_disk(docker, vm, disk).await?;
    } else if found.grow {
        inside::grow_disk(docker, vm, disk).await?;
        tracing::info!(
            vm = vm.as_str(),
            disk = disk.as_str(),
            "the disk's filesystem was grown to its new size"
        );
    }
    if found.folder {
        inside::copy_folder(docker, vm, disk).await?;
        docker.settle_disk(disks_dir, vm, disk).await?;
        tracing::info!(
            vm = vm.as_str(),
            disk = disk.as_str(),
            "the disk's folder was copied into its new image"
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(code: i64) -> DockerError {
        DockerError::Mount {
            node: "n1".into(),
            command: "attach".into(),
            code,
            detail: "refused".into(),
        }
    }

    #[test]
    fn the_mounters_not_an_image_refusal_names_the_disk() {
        let disk = DiskCid::parse("disk-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31").unwrap();
        let e = not_an_image(refusal(mounter::NOT_AN_IMAGE), &disk);
        assert!(
            matches!(&e, BlockDiskError::NotAnImage(d) if *d == disk),
            "{e}"
        );
        assert!(e.to_string().contains("holds files besides its disk image"));
        let other = not_an_image(refusal(mounter::NOT_AN_IMAGE + 1), &disk);
        assert!(matches!(
            other,
            BlockDiskError::Docker(DockerError::Mount { .. })
        ));
    }
}
