//! Methods the CPI refuses whatever the request: director-managed networks and methods
//! BOSH deprecated are `NotImplemented`; update_disk is `NotSupported`, so the director
//! copies the data to a new disk instead. None is worth a retry.

use crate::cloud::Unsupported;
use crate::protocol::{CpiError, ErrorKind};

impl From<Unsupported> for CpiError {
    fn from(e: Unsupported) -> CpiError {
        let kind = match e {
            Unsupported::Networks | Unsupported::Deprecated => ErrorKind::NotImplemented,
            Unsupported::UpdateDisk => ErrorKind::NotSupported,
        };
        CpiError::new(kind, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_keep_their_class_and_words() {
        let e = CpiError::from(Unsupported::UpdateDisk);
        assert_eq!((e.kind, e.ok_to_retry), (ErrorKind::NotSupported, false));
        assert_eq!(
            e.message,
            "update_disk is not supported: the director copies the data to a new disk instead"
        );
        assert_eq!(
            CpiError::from(Unsupported::Deprecated),
            CpiError::not_implemented("this method is deprecated by BOSH and not implemented")
        );
        assert_eq!(
            CpiError::from(Unsupported::Networks),
            CpiError::not_implemented(
                "director-managed networks are not supported: declare manual or dynamic networks in the cloud-config"
            )
        );
    }
}
