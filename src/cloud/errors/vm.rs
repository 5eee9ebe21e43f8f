//! create_vm's own refusals as BOSH errors: the request's faults (cloud_properties,
//! networks, env) are the CPI's `CpiError`, never retriable.

use crate::cloud::vm::blobstore::BlobstoreError;
use crate::cloud::vm::block_disks::BlockDiskError;
use crate::cloud::vm::container_spec::SpecError;
use crate::cloud::vm::network_plan::NetworkPlanError;
use crate::cloud::vm::properties::PropertiesError;
use crate::cloud::vm::requirements::RequirementsError;
use crate::protocol::CpiError;

/// Bad cloud_properties: the same request fails the same way.
impl From<PropertiesError> for CpiError {
    fn from(e: PropertiesError) -> Self {
        CpiError::cpi(e.to_string())
    }
}

/// Networks that cannot be laid out on the node: the request's fault.
impl From<NetworkPlanError> for CpiError {
    fn from(e: NetworkPlanError) -> Self {
        CpiError::cpi(e.to_string())
    }
}

/// No usable blobstore for the agent: the request's or the configuration's fault.
impl From<BlobstoreError> for CpiError {
    fn from(e: BlobstoreError) -> Self {
        CpiError::cpi(e.to_string())
    }
}

/// Requirements no node could meet, or zero sizes: calculate_vm_cloud_properties answers
/// both as the CPI's own error (unlike create_vm, which answers a placement failure as
/// `VMCreationFailed`).
impl From<RequirementsError> for CpiError {
    fn from(e: RequirementsError) -> Self {
        CpiError::cpi(e.to_string())
    }
}

/// A volume holding more than its disk image is a `CloudError` a retry repeats; Docker's
/// own failures as Docker's.
impl From<BlockDiskError> for CpiError {
    fn from(e: BlockDiskError) -> Self {
        match e {
            BlockDiskError::NotAnImage(_) => CpiError::cloud(e.to_string(), false),
            BlockDiskError::Docker(e) => e.into(),
        }
    }
}

/// A container body that cannot be made: the request's HostConfig fields at fault.
impl From<SpecError> for CpiError {
    fn from(e: SpecError) -> Self {
        CpiError::cpi(e.to_string())
    }
}
