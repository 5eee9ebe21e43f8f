//! create_vm's own refusals as BOSH errors: the request's faults (cloud_properties,
//! networks, env) are the CPI's `CpiError`, never retriable.

use crate::cloud::vm::blobstore::BlobstoreError;
use crate::cloud::vm::block_disks::BlockDiskError;
use crate::cloud::vm::container_spec::SpecError;
use crate::cloud::vm::create::CreateError;
use crate::cloud::vm::network_plan::NetworkPlanError;
use crate::cloud::vm::properties::PropertiesError;
use crate::cloud::vm::requirements::RequirementsError;
use crate::protocol::{CpiError, ErrorKind};

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

/// create_vm's own failures: an address another VM holds is `VMCreationFailed`, retriable
/// while that VM is still being created (or its stale claim was just removed); a network
/// the node lacks is `NetworkNotFound`; the node changing under the call is a retriable
/// `CloudError` (which [`creation_failure`] turns into `VMCreationFailed`).
impl From<CreateError> for CpiError {
    fn from(e: CreateError) -> Self {
        use CreateError as C;
        let message = e.to_string();
        let failed = |retry| CpiError::new(ErrorKind::VmCreationFailed, &message).retriable(retry);
        match e {
            C::NodeVanished(_) | C::Pack(_) => CpiError::cpi(message),
            C::StaleClaim { .. } | C::IpTakenByCreate { .. } => failed(true),
            C::ClaimTaken { on_lease, .. } => failed(on_lease),
            C::PoolExhausted { .. }
            | C::AddressHeldOutside { .. }
            | C::IpHeldByContainer { .. }
            | C::IpUsed { .. } => failed(false),
            C::LostRecord { .. } | C::VanishedAfterStart { .. } | C::WrongAddress { .. } => {
                CpiError::cloud(message, true)
            }
            C::DiskAttached { .. } => CpiError::cloud(message, false),
            C::NoDockerNetwork { .. } => CpiError::new(ErrorKind::NetworkNotFound, message),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::errors::creation_failure;
    use crate::protocol::VmCid;

    fn class(e: CreateError) -> (ErrorKind, bool, String) {
        let cpi = CpiError::from(e);
        (cpi.kind, cpi.ok_to_retry, cpi.message)
    }

    #[test]
    fn an_address_held_by_a_create_still_running_is_worth_a_retry() {
        let taken = |on_lease| CreateError::ClaimTaken {
            ip: "10.1.1.10".parse().unwrap(),
            network: "bosh".into(),
            node: "n1".into(),
            holder: "vm-1".into(),
            on_lease,
        };
        assert_eq!(
            class(taken(true)),
            (
                ErrorKind::VmCreationFailed,
                true,
                "create_vm: IP 10.1.1.10 on docker network bosh of node n1 is taken by VM vm-1 (still being created)".into()
            )
        );
        assert_eq!(
            class(taken(false)),
            (
                ErrorKind::VmCreationFailed,
                false,
                "create_vm: IP 10.1.1.10 on docker network bosh of node n1 is taken by VM vm-1 (already created)".into()
            )
        );
        let (kind, retry, _) = class(CreateError::StaleClaim {
            holder: "vm-2".into(),
        });
        assert_eq!((kind, retry), (ErrorKind::VmCreationFailed, true));
    }

    #[test]
    fn a_missing_network_and_a_node_that_changed_keep_their_classes() {
        let (kind, retry, message) = class(CreateError::NoDockerNetwork {
            network: "private".into(),
            docker_network: "other".into(),
            node: "n1".into(),
        });
        assert_eq!((kind, retry), (ErrorKind::NetworkNotFound, false));
        assert_eq!(
            message,
            "create_vm: network 'private' names docker network other, which does not exist on node n1"
        );
        let lost = CpiError::from(CreateError::LostRecord {
            vm: VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap(),
        });
        assert_eq!((lost.kind, lost.ok_to_retry), (ErrorKind::CloudError, true));
        let answered = creation_failure(lost);
        assert_eq!(
            (answered.kind, answered.ok_to_retry),
            (ErrorKind::VmCreationFailed, true)
        );
        let bad_input = creation_failure(CpiError::cpi("x"));
        assert_eq!(
            bad_input.kind,
            ErrorKind::CpiError,
            "bad input keeps its kind"
        );
    }
}
