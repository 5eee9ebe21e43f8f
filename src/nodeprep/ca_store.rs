//! The cluster CA in etcd (`<key_prefix>/pki/ca.crt` and `ca.key`), created exactly once:
//! nodes preparing at the same moment race in one etcd transaction and all adopt the
//! winner's CA.

use etcd_client::{Compare, CompareOp, Txn, TxnOp, TxnOpResponse};

use super::error::{NodePrepError, Result};
use super::pki::{self, CertAndKey};
use crate::cluster::{Etcd, Keys};
use crate::config::Secret;

/// How the CA was obtained.
#[derive(Debug, Clone)]
pub(crate) enum CaOutcome {
    /// Already in etcd.
    Existing(CertAndKey),
    /// Made and stored by this run.
    Created(CertAndKey),
    /// Dry run on a cluster without a CA: one would be created.
    WouldCreate,
}

impl CaOutcome {
    /// The CA, unless this is a dry run that would create it.
    pub(crate) fn ca(&self) -> Option<&CertAndKey> {
        match self {
            CaOutcome::Existing(c) | CaOutcome::Created(c) => Some(c),
            CaOutcome::WouldCreate => None,
        }
    }
}

/// Reads the CA; `None` when neither key exists. Half a CA (certificate without key or
/// the other way round) is an error that names the missing key.
pub(crate) async fn load(etcd: &Etcd, keys: &Keys) -> Result<Option<CertAndKey>> {
    let txn = Txn::new().and_then(read_ca(keys));
    let response = etcd
        .client()
        .repeatable_txn(txn)
        .await
        .map_err(|e| super::etcd_failed(etcd, "reading the cluster CA", &e))?;
    from_gets(keys, response.op_responses())
}

/// The reads [`from_gets`] expects: certificate, then key.
fn read_ca(keys: &Keys) -> Vec<TxnOp> {
    vec![
        TxnOp::get(keys.ca_cert(), None),
        TxnOp::get(keys.ca_key(), None),
    ]
}

fn from_gets(keys: &Keys, responses: Vec<TxnOpResponse>) -> Result<Option<CertAndKey>> {
    let mut values = responses.into_iter().map(|r| match r {
        TxnOpResponse::Get(g) => g
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).to_string()),
        _ => None,
    });
    match (values.next().flatten(), values.next().flatten()) {
        (Some(cert_pem), Some(key)) => Ok(Some(CertAndKey {
            cert_pem,
            key_pem: Secret::new(key),
        })),
        (None, None) => Ok(None),
        (Some(_), None) => Err(NodePrepError::ClusterCa(format!(
            "etcd has the cluster CA certificate {} but not its key {}: restore the key, or delete the certificate to start a new CA (every node and the CPI must then get new certificates)",
            keys.ca_cert(),
            keys.ca_key()
        ))),
        (None, Some(_)) => Err(NodePrepError::ClusterCa(format!(
            "etcd has the cluster CA key {} but not its certificate {}: restore the certificate",
            keys.ca_key(),
            keys.ca_cert()
        ))),
    }
}

/// Makes a CA and stores it unless one appeared meanwhile, which is then adopted (call it
/// after [`load`] found none).
pub(crate) async fn create(etcd: &Etcd, keys: &Keys) -> Result<CaOutcome> {
    let candidate = pki::new_ca("MoltenCore cluster CA")?;
    let absent = |key: String| Compare::create_revision(key, CompareOp::Equal, 0);
    let txn = Txn::new()
        .when(vec![absent(keys.ca_cert()), absent(keys.ca_key())])
        .and_then(vec![
            TxnOp::put(keys.ca_cert(), candidate.cert_pem.clone(), None),
            TxnOp::put(keys.ca_key(), candidate.key_pem.expose(), None),
        ])
        .or_else(read_ca(keys));
    let response = etcd
        .client()
        .txn(txn)
        .await
        .map_err(|e| super::etcd_failed(etcd, "storing the new cluster CA", &e))?;
    if response.succeeded() {
        return Ok(CaOutcome::Created(candidate));
    }
    // Another node was faster: use its CA.
    from_gets(keys, response.op_responses())?
        .map(CaOutcome::Existing)
        .ok_or_else(|| {
            NodePrepError::ClusterCa(format!(
                "the cluster CA at {} appeared and vanished while this node stored its own",
                keys.ca_cert()
            ))
        })
}
