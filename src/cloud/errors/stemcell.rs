//! Stemcell failures as BOSH errors: what the request or the stemcell's files get wrong
//! is the CPI's own `CpiError` (a retry reads the same); a cluster with no node to take
//! the stemcell is a `CloudError`, retriable when nodes may answer again.

use crate::cloud::stemcell::error::StemcellError;
use crate::cloud::stemcell::manifest::ManifestError;
use crate::cloud::stemcell::source::SourceError;
use crate::protocol::CpiError;

/// Files that cannot be read as a stemcell: as the stemcell error they are.
impl From<SourceError> for CpiError {
    fn from(e: SourceError) -> CpiError {
        StemcellError::from(e).into()
    }
}

/// A manifest this CPI does not take: as the stemcell error it is.
impl From<ManifestError> for CpiError {
    fn from(e: ManifestError) -> CpiError {
        StemcellError::from(e).into()
    }
}

impl From<StemcellError> for CpiError {
    fn from(e: StemcellError) -> CpiError {
        use StemcellError as S;
        let message = e.to_string();
        match e {
            S::Source(_)
            | S::Manifest(_)
            | S::DigestMismatch { .. }
            | S::ReferenceMissing
            | S::BadDigest { .. }
            | S::LightDigest { .. }
            | S::PinnedUnknown { .. }
            | S::Unknown { .. }
            | S::Nowhere { .. } => CpiError::cpi(message),
            S::MissingAfterPull { .. } | S::NoReadyNode | S::NoReachableNode => {
                CpiError::cloud(message, true)
            }
            S::NoNodeImported { retry, .. } => CpiError::cloud(message, retry),
            S::LightNowhere { .. } | S::NotDeleted { .. } => CpiError::cloud(message, false),
            // The node's failure decides the class; the message says what was asked.
            S::Reference(source) => CpiError {
                message,
                ..CpiError::from(source)
            },
            S::Import { source, .. } => CpiError {
                message,
                ..CpiError::from(*source)
            },
            S::Docker(e) => e.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::DockerError;
    use crate::protocol::ErrorKind;

    fn class(e: StemcellError) -> (ErrorKind, bool) {
        let text = e.to_string();
        let c = CpiError::from(e);
        assert_eq!(c.message, text, "the message is the error's own text");
        (c.kind, c.ok_to_retry)
    }

    #[test]
    fn what_the_request_gets_wrong_is_the_cpis_own() {
        for e in [
            StemcellError::ReferenceMissing,
            StemcellError::BadDigest { shown: "x".into() },
            StemcellError::Unknown {
                shown: "sc-x".into(),
            },
            StemcellError::PinnedUnknown { node: "n9".into() },
        ] {
            assert_eq!(class(e), (ErrorKind::CpiError, false));
        }
    }

    #[test]
    fn no_node_to_take_it_is_the_clouds() {
        assert_eq!(
            class(StemcellError::NoReadyNode),
            (ErrorKind::CloudError, true)
        );
        let none = |retry| StemcellError::NoNodeImported {
            reasons: "x".into(),
            retry,
        };
        assert_eq!(class(none(true)), (ErrorKind::CloudError, true));
        assert_eq!(class(none(false)), (ErrorKind::CloudError, false));
    }

    #[test]
    fn a_bad_reference_is_said_as_the_request_field() {
        let e = StemcellError::Reference(DockerError::InvalidReference { shown: "UP".into() });
        let c = CpiError::from(e);
        assert_eq!(c.kind, ErrorKind::CpiError);
        assert!(
            c.message
                .starts_with("create_stemcell: cloud_properties.image_reference: "),
            "{}",
            c.message
        );
    }
}
