//! The FleetLock endpoint's server TLS: its certificate and key, and (mutual TLS) the CA
//! whose client certificates it accepts. All from PEM files read once at start.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;

/// Why the endpoint's TLS cannot be set up; each names the file at fault.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read.
    #[error("{}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds something else than PEM certificates.
    #[error("{}: not PEM certificates: {source}", path.display())]
    NotCertificates {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// The file holds no certificate at all.
    #[error("{}: holds no certificate", path.display())]
    NoCertificate { path: PathBuf },
    /// The key file holds no PEM private key.
    #[error("{}: not a PEM private key: {source}", path.display())]
    NotAKey {
        path: PathBuf,
        #[source]
        source: rustls::pki_types::pem::Error,
    },
    /// rustls refused its own defaults.
    #[error("TLS setup failed: {0}")]
    Setup(#[source] rustls::Error),
    /// A CA certificate cannot be trusted.
    #[error("{}: unusable CA certificate: {source}", path.display())]
    UnusableCa {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
    /// No client verifier can be made from the CA file.
    #[error("{}: {source}", path.display())]
    Verifier {
        path: PathBuf,
        #[source]
        source: rustls::server::VerifierBuilderError,
    },
    /// The certificate and the key are no pair.
    #[error("{}: certificate and key do not fit: {source}", path.display())]
    Mismatch {
        path: PathBuf,
        #[source]
        source: rustls::Error,
    },
}

/// Builds the server config; with `client_ca`, clients must present a certificate it
/// signed. Errors name the file at fault.
pub(crate) fn server_config(
    cert: &Path,
    key: &Path,
    client_ca: Option<&Path>,
) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = certificates(cert)?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::NotAKey {
        path: key.to_path_buf(),
        source,
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Setup)?;
    let builder = match client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = rustls::RootCertStore::empty();
            for c in certificates(ca)? {
                roots.add(c).map_err(|source| TlsError::UnusableCa {
                    path: ca.to_path_buf(),
                    source,
                })?;
            }
            let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider)
                .build()
                .map_err(|source| TlsError::Verifier {
                    path: ca.to_path_buf(),
                    source,
                })?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let mut config = builder
        .with_single_cert(chain, key)
        .map_err(|source| TlsError::Mismatch {
            path: cert.to_path_buf(),
            source,
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

fn certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|source| TlsError::Unreadable {
            path: path.to_path_buf(),
            source,
        })?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|source| TlsError::NotCertificates {
            path: path.to_path_buf(),
            source,
        })?;
    if certs.is_empty() {
        return Err(TlsError::NoCertificate {
            path: path.to_path_buf(),
        });
    }
    Ok(certs)
}
