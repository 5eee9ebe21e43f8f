//! rustls client configuration for a node's Docker daemon: trust only the cluster CA and
//! present the CPI's client certificate (mutual TLS), all from PEM text in memory.

use std::sync::Arc;

use rustls::ClientConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::error::DockerError;

/// Builds the client config. Errors name which piece of PEM is unusable.
pub fn client_config(
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Result<Arc<ClientConfig>, DockerError> {
    build(ca_pem, cert_pem, key_pem).map_err(|message| DockerError::Setup { message })
}

fn build(ca_pem: &str, cert_pem: &str, key_pem: &str) -> Result<Arc<ClientConfig>, String> {
    let mut roots = rustls::RootCertStore::empty();
    let ca_certs = CertificateDer::pem_slice_iter(ca_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Docker CA certificate is not valid PEM: {e}"))?;
    if ca_certs.is_empty() {
        return Err("Docker CA certificate PEM holds no certificate".into());
    }
    for cert in ca_certs {
        roots
            .add(cert)
            .map_err(|e| format!("Docker CA certificate is unusable: {e}"))?;
    }
    let chain = CertificateDer::pem_slice_iter(cert_pem.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| format!("Docker client certificate is not valid PEM: {e}"))?;
    if chain.is_empty() {
        return Err("Docker client certificate PEM holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem.as_bytes())
        .map_err(|_| "Docker client key is not a valid PEM private key".to_string())?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS setup failed: {e}"))?
        .with_root_certificates(roots)
        .with_client_auth_cert(chain, key)
        .map_err(|e| format!("Docker client certificate and key do not fit: {e}"))?;
    Ok(Arc::new(config))
}
