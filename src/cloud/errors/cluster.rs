//! etcd, configuration and placement failures as BOSH errors, each with its `ok_to_retry`.

use crate::cluster::IndexError;
use crate::config::ConfigError;
use crate::placement::PlacementError;
use crate::protocol::{CpiError, ErrorKind};

/// A configuration problem is the CPI's own (`CpiError`), never retriable: the same
/// configuration fails the same way.
impl From<ConfigError> for CpiError {
    fn from(e: ConfigError) -> Self {
        CpiError::cpi(e.to_string())
    }
}

/// An etcd failure is the infrastructure's (`CloudError`), retriable only when etcd was
/// unreachable or busy; a record that cannot be encoded is a defect of the CPI
/// (`CpiError`); a configuration that cannot reach etcd is a configuration problem.
impl From<IndexError> for CpiError {
    fn from(e: IndexError) -> Self {
        match e {
            IndexError::Config(c) => c.into(),
            encode @ IndexError::Encode { .. } => CpiError::cpi(encode.to_string()),
            other => {
                let retry = other.is_retriable();
                CpiError::cloud(other.to_string(), retry)
            }
        }
    }
}

/// No node can take a new VM: `VMCreationFailed`, not retriable (the same cluster gives
/// the same answer). create_disk answers a placement failure as a `CloudError` and
/// calculate_vm_cloud_properties as a `CpiError`, each with its own words.
impl From<PlacementError> for CpiError {
    fn from(e: PlacementError) -> Self {
        CpiError::new(ErrorKind::VmCreationFailed, e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::EtcdFailure;

    fn failure(during: Option<&str>) -> EtcdFailure {
        EtcdFailure {
            during: during.map(str::to_string),
            endpoints: "https://192.0.2.1:2379".into(),
            detail: "Unavailable: connection refused".into(),
        }
    }

    #[test]
    fn etcd_failures_are_cloud_errors_retriable_only_when_unreachable() {
        for (e, retry) in [
            (
                IndexError::Unreachable(failure(Some("reading /mc/vms/x"))),
                true,
            ),
            (IndexError::TooLarge(failure(None)), false),
            (IndexError::Refused(failure(None)), false),
            (
                IndexError::Malformed("VM record /mc/vms/x is unreadable".into()),
                false,
            ),
        ] {
            let text = e.to_string();
            let cpi = CpiError::from(e);
            assert_eq!(cpi.kind, ErrorKind::CloudError, "{text}");
            assert_eq!(cpi.ok_to_retry, retry, "{text}");
            assert_eq!(cpi.message, text);
        }
    }

    #[test]
    fn the_message_names_what_and_where() {
        let cpi = CpiError::from(IndexError::Unreachable(failure(Some("reading /mc/vms/x"))));
        assert_eq!(
            cpi.message,
            "reading /mc/vms/x: etcd at https://192.0.2.1:2379 failed: Unavailable: connection refused"
        );
        let cpi = CpiError::from(IndexError::Refused(failure(None)));
        assert_eq!(
            cpi.message,
            "etcd at https://192.0.2.1:2379 failed: Unavailable: connection refused"
        );
    }

    #[test]
    fn encoding_and_configuration_are_the_cpis_own() {
        let json = serde_json::from_str::<u8>("x").unwrap_err();
        let cpi = CpiError::from(IndexError::encode("index record k", json));
        assert!(
            cpi.message.starts_with("cannot encode index record k: "),
            "{cpi:?}"
        );
        assert_eq!(cpi.kind, ErrorKind::CpiError);
        assert!(!cpi.ok_to_retry);
        let config = ConfigError::invalid("etcd.tls", "https endpoints need etcd.tls");
        let cpi = CpiError::from(IndexError::from(config.clone()));
        assert_eq!(cpi, CpiError::from(config));
        assert_eq!(cpi.kind, ErrorKind::CpiError);
        assert_eq!(
            cpi.message,
            "invalid CPI configuration: etcd.tls: https endpoints need etcd.tls"
        );
        assert!(!cpi.ok_to_retry);
    }

    #[test]
    fn no_node_for_a_vm_is_a_vm_creation_failure_not_retried() {
        let cpi =
            CpiError::from(PlacementError::Cordoned { node: "n1".into() }).context("create_vm");
        assert_eq!(cpi.kind, ErrorKind::VmCreationFailed);
        assert!(!cpi.ok_to_retry);
        assert_eq!(
            cpi.message,
            "create_vm: node n1 is cordoned (takes no new VMs); uncordon it or use an IP of another node"
        );
    }
}
