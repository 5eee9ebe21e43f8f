//! Finding and clearing a VM as BOSH errors: a VM the index does not know is `VMNotFound`;
//! a node no longer registered is a `CloudError` a retry repeats; a VM whose removal has
//! not finished yet is worth a retry.

use crate::cloud::context::lookup_error::VmLookupError;
use crate::protocol::{CpiError, ErrorKind};

impl From<VmLookupError> for CpiError {
    fn from(e: VmLookupError) -> CpiError {
        let message = e.to_string();
        match e {
            VmLookupError::NotFound { .. } => CpiError::new(ErrorKind::VmNotFound, message),
            VmLookupError::NodeGone { .. } => CpiError::cloud(message, false),
            VmLookupError::NotRemoved { .. } => CpiError::cloud(message, true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::VmCid;

    #[test]
    fn an_unknown_vm_is_vm_not_found_and_a_slow_removal_is_retried() {
        let cid = VmCid::parse("vm-00000000-0000-0000-0000-000000000001").unwrap();
        let e = CpiError::from(VmLookupError::NotFound { cid: cid.clone() });
        assert_eq!(e.kind, ErrorKind::VmNotFound);
        assert_eq!(
            e.message,
            "VM vm-00000000-0000-0000-0000-000000000001 does not exist"
        );
        let e = CpiError::from(VmLookupError::NotRemoved {
            node: "n1".into(),
            cid,
            volume: "v".into(),
            rounds: 10,
        });
        assert_eq!((e.kind, e.ok_to_retry), (ErrorKind::CloudError, true));
    }
}
