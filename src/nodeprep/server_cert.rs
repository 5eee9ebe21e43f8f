//! Decides, from the files on the node and the cluster CA, whether the node's Docker server
//! certificate stays or is (re-)issued, and says why.

use time::{Duration, OffsetDateTime};

use super::docker_units as du;
use super::error::Result;
use super::files::Root;
use super::identity::Identity;
use super::pki::{self, CertAndKey};
use crate::config::Secret;

/// The outcome for the server certificate.
pub(crate) enum ServerCert {
    /// The certificate on disk fits: kept as it is.
    Keep(CertAndKey),
    /// A new one; `reason` says why the old one could not stay (`None`: there was none).
    Issued {
        cert: CertAndKey,
        reason: Option<String>,
    },
    /// Dry run on a cluster without a CA: nothing to sign with yet.
    NoCa,
}

impl ServerCert {
    /// The certificate in force afterwards, if any.
    pub(crate) fn cert(&self) -> Option<&CertAndKey> {
        match self {
            ServerCert::Keep(c) | ServerCert::Issued { cert: c, .. } => Some(c),
            ServerCert::NoCa => None,
        }
    }
}

/// Keeps the certificate below `root` unless it is missing, unreadable, signed by another
/// CA, paired with another key, carries other SANs than `id` needs, or expires within
/// `renew_before_days` of `now`.
pub(crate) fn decide(
    root: &Root,
    ca: Option<&CertAndKey>,
    id: &Identity,
    cert_days: u32,
    renew_before_days: u32,
    now: OffsetDateTime,
) -> Result<ServerCert> {
    let Some(ca) = ca else {
        return Ok(ServerCert::NoCa);
    };
    let (Some(cert), Some(key)) = (
        root.read(du::SERVER_CERT_FILE)?,
        root.read(du::SERVER_KEY_FILE)?,
    ) else {
        return Ok(ServerCert::Issued {
            cert: pki::issue_server(ca, id, cert_days)?,
            reason: None,
        });
    };
    let reason = match pki::inspect(&cert, &ca.cert_pem) {
        Ok(info) => pki::renewal_reason(
            &info,
            pki::key_matches(&info, &key),
            &pki::server_sans(id),
            now,
            Duration::days(i64::from(renew_before_days)),
        ),
        Err(e) => Some(format!("it is unreadable ({e})")),
    };
    Ok(match reason {
        None => ServerCert::Keep(CertAndKey {
            cert_pem: cert,
            key_pem: Secret::new(key),
        }),
        Some(reason) => ServerCert::Issued {
            cert: pki::issue_server(ca, id, cert_days)?,
            reason: Some(reason),
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn id() -> Identity {
        Identity {
            name: "n1".into(),
            hostname: "n1".into(),
            private_ip: Ipv4Addr::new(192, 0, 2, 1),
            public_ip: Ipv4Addr::new(192, 0, 2, 1),
        }
    }

    fn store(root: &Root, c: &CertAndKey) {
        root.write(du::SERVER_CERT_FILE, &c.cert_pem, 0o644)
            .unwrap();
        root.write(du::SERVER_KEY_FILE, c.key_pem.expose(), 0o600)
            .unwrap();
    }

    #[test]
    fn missing_fresh_expiring_and_foreign() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        let ca = pki::new_ca("ca").unwrap();
        let now = OffsetDateTime::now_utc();
        let first = decide(&root, Some(&ca), &id(), 365, 30, now).unwrap();
        assert!(matches!(first, ServerCert::Issued { reason: None, .. }));
        store(&root, first.cert().unwrap());
        assert!(matches!(
            decide(&root, Some(&ca), &id(), 365, 30, now).unwrap(),
            ServerCert::Keep(_)
        ));
        let later = now + Duration::days(340);
        let ServerCert::Issued { reason, .. } =
            decide(&root, Some(&ca), &id(), 365, 30, later).unwrap()
        else {
            panic!("a certificate 25 days from expiry must be renewed");
        };
        assert!(reason.unwrap().contains("expires"));
        let other = pki::new_ca("other").unwrap();
        let ServerCert::Issued { reason, .. } =
            decide(&root, Some(&other), &id(), 365, 30, now).unwrap()
        else {
            panic!("a certificate of another CA must be replaced");
        };
        assert!(reason.unwrap().contains("not signed by the cluster CA"));
        assert!(matches!(
            decide(&root, None, &id(), 365, 30, now).unwrap(),
            ServerCert::NoCa
        ));
    }
}
