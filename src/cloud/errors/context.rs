//! Reaching the configuration, etcd and the nodes' Docker as BOSH errors: each layer's
//! failure keeps the class and retry flag that layer decides; what the CPI itself lacks
//! (a node record, Docker TLS material) is the CPI's `CpiError`, never retriable.

use crate::cloud::ContextError;
use crate::protocol::CpiError;

impl From<ContextError> for CpiError {
    fn from(e: ContextError) -> CpiError {
        match e {
            ContextError::Config(e) => e.into(),
            ContextError::Index(e) => e.into(),
            ContextError::Docker(e) => e.into(),
            own @ (ContextError::NodeNotRegistered { .. }
            | ContextError::NoDockerCa { .. }
            | ContextError::NoClientCert) => CpiError::cpi(own.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;

    #[test]
    fn what_the_cpi_lacks_is_its_own_error_in_the_same_words() {
        let e = CpiError::from(ContextError::NodeNotRegistered { node: "n1".into() });
        assert_eq!((e.kind, e.ok_to_retry), (ErrorKind::CpiError, false));
        assert_eq!(e.message, "node n1 is not registered in etcd");
        let e = CpiError::from(ContextError::NoClientCert);
        assert_eq!(
            e.message,
            "docker.tls client_cert and client_key are required"
        );
        let e = CpiError::from(ContextError::NoDockerCa {
            key: "/mc/ca".into(),
        });
        assert_eq!(
            e.message,
            "no Docker CA certificate: set docker.tls.ca_cert in the CPI config or publish it at /mc/ca"
        );
    }
}
