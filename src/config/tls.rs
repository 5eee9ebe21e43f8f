//! TLS material given inline (PEM text, as BOSH job properties carry it) or as file paths.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::ConfigError;
use crate::bounded_file::{self, FileKind};

fn limit() -> String {
    bounded_file::human(FileKind::TlsPem.limit())
}
use super::secret::Secret;

/// How cpi.json names TLS material: each item either inline PEM or a `_file` path.
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TlsSource {
    pub(crate) ca_cert: Option<String>,
    pub(crate) ca_cert_file: Option<PathBuf>,
    pub(crate) client_cert: Option<String>,
    pub(crate) client_cert_file: Option<PathBuf>,
    pub(crate) client_key: Option<Secret>,
    pub(crate) client_key_file: Option<PathBuf>,
}

/// TLS material loaded into memory. The CA may be absent when it is read elsewhere (the
/// Docker CA comes from etcd when cpi.json does not give one).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TlsMaterial {
    /// The CA certificate (PEM) the peer's certificate must chain to.
    pub ca_cert: Option<String>,
    /// The client certificate (PEM).
    pub client_cert: Option<String>,
    /// The client certificate's key (PEM).
    pub client_key: Option<Secret>,
}

impl TlsSource {
    /// Reads the files and checks that each item is given once and looks like PEM.
    /// `section` names the config key in errors (e.g. `etcd.tls`).
    pub(crate) fn load(&self, section: &str) -> Result<TlsMaterial, ConfigError> {
        let ca_cert = pick(
            section,
            "ca_cert",
            self.ca_cert.clone(),
            self.ca_cert_file.as_deref(),
        )?;
        let client_cert = pick(
            section,
            "client_cert",
            self.client_cert.clone(),
            self.client_cert_file.as_deref(),
        )?;
        let client_key = pick(
            section,
            "client_key",
            self.client_key.as_ref().map(|s| s.expose().to_string()),
            self.client_key_file.as_deref(),
        )?
        .map(Secret::new);
        if client_cert.is_some() != client_key.is_some() {
            return Err(ConfigError::invalid(
                section,
                "client_cert and client_key must be given together",
            ));
        }
        for (key, pem, marker) in [
            ("ca_cert", ca_cert.as_deref(), "CERTIFICATE"),
            ("client_cert", client_cert.as_deref(), "CERTIFICATE"),
            (
                "client_key",
                client_key.as_ref().map(Secret::expose),
                "PRIVATE KEY",
            ),
        ] {
            if let Some(pem) = pem
                && !(pem.contains("-----BEGIN") && pem.contains(marker))
            {
                return Err(ConfigError::invalid(
                    &format!("{section}.{key}"),
                    &format!("is not PEM text containing a {marker} block"),
                ));
            }
        }
        Ok(TlsMaterial {
            ca_cert,
            client_cert,
            client_key,
        })
    }
}

fn pick(
    section: &str,
    key: &str,
    inline: Option<String>,
    file: Option<&Path>,
) -> Result<Option<String>, ConfigError> {
    match (inline.filter(|s| !s.trim().is_empty()), file) {
        (Some(_), Some(_)) => Err(ConfigError::invalid(
            &format!("{section}.{key}"),
            &format!("give either {key} or {key}_file, not both"),
        )),
        (Some(pem), None) => Ok(Some(pem)),
        (None, Some(path)) => bounded_file::read_to_string(path, FileKind::TlsPem)
            .map(Some)
            .map_err(|e| {
                ConfigError::invalid(
                    &format!("{section}.{key}_file"),
                    &format!("must name a regular file of at most {}: {e}", limit()),
                )
            }),
        (None, None) => Ok(None),
    }
}
