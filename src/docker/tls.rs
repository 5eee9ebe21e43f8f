//! rustls client configuration for a node's Docker daemon: trust only the cluster CA and
//! present the CPI's client certificate (mutual TLS), all from PEM text in memory.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::{DockerError, TlsError};

/// Builds the client config. Errors name which piece of PEM is unusable.
pub(crate) fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, DockerError> {
    Ok(build(ca_pem, cert_pem, key_pem)?)
}

fn build(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, TlsError> {
    let roots = ca_roots(ca_pem)?;
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::ClientCertPem)?;
    if chain.is_empty() {
        return Err(TlsError::NoClientCert);
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes()).map_err(TlsError::ClientKeyPem)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Protocol)?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(TlsError::CertKeyMismatch)?;
    Ok(Arc::new(config))
}

/// The trust store: every certificate of the cluster CA's PEM, at least one.
fn ca_roots(ca_pem: &str) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(TlsError::CaPem)?;
    if ca_certs.is_empty() {
        return Err(TlsError::NoCaCert);
    }
    for cert in ca_certs {
        roots.add(cert).map_err(TlsError::CaUnusable)?;
    }
    Ok(roots)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_pem_names_the_piece_that_holds_nothing() {
        let e = build("", "", "").unwrap_err();
        assert!(matches!(e, TlsError::NoCaCert));
        assert_eq!(
            DockerError::from(e).to_string(),
            "Docker CA certificate PEM holds no certificate"
        );
    }
}
