//! Certificate work as pure functions (no etcd, no files): the cluster CA, Docker server
//! certificates with the node's SANs, client certificates for the CPI, and the checks
//! that decide whether an existing server certificate can stay.

use std::collections::BTreeSet;
use std::net::{IpAddr, Ipv4Addr};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType, SerialNumber,
};
use ring::rand::SecureRandom;
use time::{Duration, OffsetDateTime};

use super::error::{MakeError, PkiError};
use super::identity::Identity;
use crate::config::Secret;

type Result<T, E = PkiError> = std::result::Result<T, E>;

/// A failure to make `what`.
fn making(what: String) -> impl FnOnce(MakeError) -> PkiError {
    move |cause| PkiError::Make { what, cause }
}

/// Lifetime of the cluster CA.
pub(crate) const CA_VALID_DAYS: i64 = 3650;

/// A certificate and its private key, PEM. The key never reaches a log.
#[derive(Debug, Clone)]
pub(crate) struct CertAndKey {
    pub(crate) cert_pem: String,
    pub(crate) key_pem: Secret,
}

/// Makes a new cluster CA (ECDSA P-256, self-signed, path length 0).
pub(crate) fn new_ca(common_name: &str) -> Result<CertAndKey> {
    let make = || -> Result<CertAndKey, MakeError> {
        let key = KeyPair::generate().map_err(MakeError::CaKey)?;
        let mut params = base_params(common_name, CA_VALID_DAYS)?;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let cert = params.self_signed(&key).map_err(MakeError::SelfSign)?;
        Ok(CertAndKey {
            cert_pem: cert.pem(),
            key_pem: Secret::new(key.serialize_pem()),
        })
    };
    make().map_err(making(format!("cannot make the CA '{common_name}'")))
}

/// The SANs a node's Docker server certificate must carry, in `IP:`/`DNS:` form.
pub(crate) fn server_sans(id: &Identity) -> BTreeSet<String> {
    let mut sans: BTreeSet<String> = [id.private_ip, id.public_ip, Ipv4Addr::LOCALHOST]
        .iter()
        .map(|ip| format!("IP:{ip}"))
        .collect();
    sans.insert(format!("DNS:{}", id.hostname.to_ascii_lowercase()));
    sans
}

/// Issues a Docker server certificate for the node, signed by the CA.
pub(crate) fn issue_server(ca: &CertAndKey, id: &Identity, days: u32) -> Result<CertAndKey> {
    let make = || -> Result<CertAndKey, MakeError> {
        let mut params = base_params(&format!("{} docker", id.name), i64::from(days))?;
        params.subject_alt_names = server_sans(id)
            .iter()
            .map(|s| to_san(s))
            .collect::<Result<_, MakeError>>()?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        sign_leaf(ca, params)
    };
    make().map_err(making(format!(
        "cannot issue the Docker server certificate for {}",
        id.name
    )))
}

/// Issues a client certificate (for the CPI) signed by the CA.
pub(crate) fn issue_client(ca: &CertAndKey, common_name: &str, days: u32) -> Result<CertAndKey> {
    let make = || -> Result<CertAndKey, MakeError> {
        let mut params = base_params(common_name, i64::from(days))?;
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        sign_leaf(ca, params)
    };
    make().map_err(making(format!(
        "cannot issue the client certificate '{common_name}'"
    )))
}

fn base_params(common_name: &str, days: i64) -> Result<CertificateParams, MakeError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "MoltenCore");
    dn.push(DnType::CommonName, common_name);
    params.distinguished_name = dn;
    let now = OffsetDateTime::now_utc();
    // An hour of slack for clocks that are a little behind.
    params.not_before = now - Duration::hours(1);
    params.not_after = now + Duration::days(days);
    let mut serial = [0u8; 16];
    ring::rand::SystemRandom::new()
        .fill(&mut serial)
        .map_err(|_| MakeError::NoRandomness)?;
    serial[0] &= 0x7f;
    params.serial_number = Some(SerialNumber::from_slice(&serial));
    Ok(params)
}

fn sign_leaf(ca: &CertAndKey, mut params: CertificateParams) -> Result<CertAndKey, MakeError> {
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.use_authority_key_identifier_extension = true;
    let ca_key = KeyPair::from_pem(ca.key_pem.expose()).map_err(MakeError::CaKeyUnusable)?;
    let issuer =
        Issuer::from_ca_cert_pem(&ca.cert_pem, ca_key).map_err(MakeError::CaCertUnusable)?;
    let key = KeyPair::generate().map_err(MakeError::Key)?;
    let cert = params.signed_by(&key, &issuer).map_err(MakeError::Sign)?;
    Ok(CertAndKey {
        cert_pem: cert.pem(),
        key_pem: Secret::new(key.serialize_pem()),
    })
}

fn to_san(s: &str) -> Result<SanType, MakeError> {
    if let Some(ip) = s.strip_prefix("IP:") {
        let parsed = ip.parse().map_err(|source| MakeError::BadIp {
            ip: ip.to_string(),
            source,
        })?;
        return Ok(SanType::IpAddress(parsed));
    }
    let dns = s.strip_prefix("DNS:").unwrap_or(s);
    Ok(SanType::DnsName(dns.try_into().map_err(|source| {
        MakeError::BadDns {
            dns: dns.to_string(),
            source,
        }
    })?))
}

/// What node-prep needs to know about an existing certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CertInfo {
    /// SANs in `IP:`/`DNS:` form.
    pub sans: BTreeSet<String>,
    /// When the certificate expires.
    pub(crate) not_after: OffsetDateTime,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
    /// Whether `ca_pem`'s key signed it.
    pub signed_by_ca: bool,
    /// The DER of its SubjectPublicKeyInfo, to match it with a key.
    spki: Vec<u8>,
}

/// Reads a PEM certificate and checks its signature against the CA certificate.
pub fn inspect(cert_pem: &str, ca_pem: &str) -> Result<CertInfo> {
    let pem = parse_pem(cert_pem, "")?;
    let cert = parse_x509(&pem, "")?;
    let ca_pem_parsed = parse_pem(ca_pem, "the CA is ")?;
    let ca = parse_x509(&ca_pem_parsed, "the CA is ")?;
    let signed_by_ca =
        cert.issuer() == ca.subject() && cert.verify_signature(Some(ca.public_key())).is_ok();
    let mut sans = BTreeSet::new();
    if let Ok(Some(ext)) = cert.subject_alternative_name() {
        for name in &ext.value.general_names {
            match name {
                x509_parser::extensions::GeneralName::DNSName(d) => {
                    sans.insert(format!("DNS:{}", d.to_ascii_lowercase()));
                }
                x509_parser::extensions::GeneralName::IPAddress(b) => {
                    let ip = match b.len() {
                        4 => IpAddr::from(<[u8; 4]>::try_from(*b).unwrap_or_default()),
                        16 => IpAddr::from(<[u8; 16]>::try_from(*b).unwrap_or_default()),
                        _ => continue,
                    };
                    sans.insert(format!("IP:{ip}"));
                }
                _ => {}
            }
        }
    }
    Ok(CertInfo {
        sans,
        not_after: cert.validity().not_after.to_datetime(),
        fingerprint: fingerprint_der(&pem.contents),
        signed_by_ca,
        spki: cert.public_key().raw.to_vec(),
    })
}

/// SHA-256 fingerprint of a PEM certificate (lower-case hex of the DER).
pub(crate) fn fingerprint(cert_pem: &str) -> Result<String> {
    Ok(fingerprint_der(&parse_pem(cert_pem, "")?.contents))
}

/// The PEM block of `text` (`whose` prefixes the error: "" or "the CA is ").
fn parse_pem(text: &str, whose: &'static str) -> Result<x509_parser::pem::Pem> {
    let (_, pem) = x509_parser::pem::parse_x509_pem(text.as_bytes())
        .map_err(|source| PkiError::NotPem { whose, source })?;
    Ok(pem)
}

/// The certificate in `pem` (`whose` prefixes the error: "" or "the CA is ").
fn parse_x509<'p>(
    pem: &'p x509_parser::pem::Pem,
    whose: &'static str,
) -> Result<x509_parser::certificate::X509Certificate<'p>> {
    pem.parse_x509()
        .map_err(|source| PkiError::NotX509 { whose, source })
}

fn fingerprint_der(der: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, der)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// Whether `key_pem` is the private key of the certificate described by `info`.
pub(crate) fn key_matches(info: &CertInfo, key_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    KeyPair::from_pem(key_pem)
        .map(|k| k.subject_public_key_info() == info.spki)
        .unwrap_or(false)
}

/// Why a server certificate must be re-issued, or `None` when it can stay: not signed by
/// the cluster CA, key does not fit, SANs differ, or it expires within `renew_before`.
pub(crate) fn renewal_reason(
    info: &CertInfo,
    key_fits: bool,
    wanted_sans: &BTreeSet<String>,
    now: OffsetDateTime,
    renew_before: Duration,
) -> Option<String> {
    if !info.signed_by_ca {
        return Some("it is not signed by the cluster CA".into());
    }
    if !key_fits {
        return Some("its key file does not match it".into());
    }
    if &info.sans != wanted_sans {
        let join = |s: &BTreeSet<String>| s.iter().cloned().collect::<Vec<_>>().join(", ");
        return Some(format!(
            "its SANs changed (has {}; wants {})",
            join(&info.sans),
            join(wanted_sans)
        ));
    }
    if info.not_after - now < renew_before {
        return Some(format!(
            "it expires {} (renewal {} days before expiry)",
            info.not_after.date(),
            renew_before.whole_days()
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id() -> Identity {
        Identity {
            name: "n1".into(),
            hostname: "N1.example".into(),
            private_ip: Ipv4Addr::new(192, 0, 2, 11),
            public_ip: Ipv4Addr::new(198, 51, 100, 11),
        }
    }

    #[test]
    fn server_certificate_carries_the_sans_and_verifies() {
        let ca = new_ca("test CA").unwrap();
        let server = issue_server(&ca, &id(), 365).unwrap();
        let info = inspect(&server.cert_pem, &ca.cert_pem).unwrap();
        assert!(info.signed_by_ca);
        assert_eq!(info.sans, server_sans(&id()));
        assert!(info.sans.contains("IP:127.0.0.1"));
        assert!(info.sans.contains("DNS:n1.example"));
        assert!(key_matches(&info, server.key_pem.expose()));
        assert_eq!(info.fingerprint, fingerprint(&server.cert_pem).unwrap());
        assert_eq!(info.fingerprint.len(), 64);
        let now = OffsetDateTime::now_utc();
        assert_eq!(
            renewal_reason(&info, true, &server_sans(&id()), now, Duration::days(30)),
            None
        );
    }

    #[test]
    fn renewal_reasons() {
        let ca = new_ca("test CA").unwrap();
        let other = new_ca("other CA").unwrap();
        let now = OffsetDateTime::now_utc();
        let short = issue_server(&ca, &id(), 10).unwrap();
        let info = inspect(&short.cert_pem, &ca.cert_pem).unwrap();
        let r = renewal_reason(&info, true, &server_sans(&id()), now, Duration::days(30));
        assert!(r.unwrap().contains("expires"));

        let mut moved = id();
        moved.private_ip = Ipv4Addr::new(192, 0, 2, 99);
        let r = renewal_reason(&info, true, &server_sans(&moved), now, Duration::days(1));
        assert!(r.unwrap().contains("192.0.2.99"));

        let foreign = inspect(&short.cert_pem, &other.cert_pem).unwrap();
        assert!(!foreign.signed_by_ca);
        assert!(!key_matches(&info, other.key_pem.expose()));
        let r = renewal_reason(&info, false, &server_sans(&id()), now, Duration::days(1));
        assert!(r.unwrap().contains("key"));
    }

    #[test]
    fn client_certificate_is_signed_by_the_ca() {
        let ca = new_ca("test CA").unwrap();
        let client = issue_client(&ca, "cpi", 30).unwrap();
        let info = inspect(&client.cert_pem, &ca.cert_pem).unwrap();
        assert!(info.signed_by_ca);
        assert!(info.sans.is_empty());
        assert!(inspect("nope", &ca.cert_pem).is_err());
    }
}
