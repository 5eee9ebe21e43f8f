//! The index in etcd: which node holds which VM, which stemcells exist. The truth about a
//! resource is on its node (Docker labels); the index makes finding it O(1).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::error::IndexError;
use super::etcd::Etcd;

/// Reads and parses one JSON record; `None` when the key is absent.
pub(crate) async fn get<T: DeserializeOwned>(
    etcd: &Etcd,
    key: &str,
) -> Result<Option<T>, IndexError> {
    let resp = etcd
        .client()
        .get(key, None)
        .await
        .map_err(|e| etcd.error(&format!("reading {key}"), &e))?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| IndexError::unreadable(key, e)),
    }
}

/// Every key and value under `prefix`, in one read; `doing` names the read in an error.
pub(crate) async fn under(
    etcd: &Etcd,
    prefix: &str,
    doing: &str,
) -> Result<Vec<etcd_client::KeyValue>, IndexError> {
    let mut resp = etcd
        .client()
        .get(prefix, Some(etcd_client::GetOptions::new().with_prefix()))
        .await
        .map_err(|e| etcd.error(doing, &e))?;
    Ok(resp.take_kvs())
}

/// The JSON text of `value`; failing, an [`IndexError::Encode`] naming `what` it is.
pub(crate) fn encode<T: Serialize + ?Sized>(
    value: &T,
    what: impl FnOnce() -> String,
) -> Result<String, IndexError> {
    serde_json::to_string(value).map_err(|e| IndexError::encode(what(), e))
}

/// Writes one JSON record.
pub(crate) async fn put<T: Serialize>(etcd: &Etcd, key: &str, value: &T) -> Result<(), IndexError> {
    let text = encode(value, || format!("index record {key}"))?;
    etcd.client()
        .put(key, text, None)
        .await
        .map_err(|e| etcd.error(&format!("writing {key}"), &e))?;
    Ok(())
}

/// Deletes one record; an absent key is success.
pub(crate) async fn delete(etcd: &Etcd, key: &str) -> Result<(), IndexError> {
    etcd.client()
        .delete(key, None)
        .await
        .map_err(|e| etcd.error(&format!("deleting {key}"), &e))?;
    Ok(())
}

/// A lease that keeps "work in progress" records alive only while this process lives: a
/// killed process's records vanish when the lease expires, so the next call can tell an
/// abandoned half-done resource from one still being made.
pub(crate) struct ProgressLease {
    etcd: Etcd,
    id: i64,
    keeper: tokio::task::JoinHandle<()>,
}

/// Keeps lease `id` alive until the task is aborted or the lease has expired.
async fn keep_alive(client: super::etcd::Kv, id: i64) {
    let period = std::time::Duration::from_secs(PROGRESS_TTL as u64 / 3);
    let mut renewed = tokio::time::Instant::now();
    while renewed.elapsed() < std::time::Duration::from_secs(PROGRESS_TTL as u64) {
        if let Ok((mut keeper, mut stream)) = client.lease_keep_alive(id).await {
            loop {
                tokio::time::sleep(period).await;
                if keeper.keep_alive().await.is_err() {
                    break;
                }
                match stream.message().await {
                    Ok(Some(answer)) if answer.ttl() > 0 => renewed = tokio::time::Instant::now(),
                    Ok(Some(_)) => return, // expired or revoked: nothing left to keep
                    _ => break,
                }
            }
        }
        tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    }
    tracing::warn!("lease {id} could not be kept alive; it expires");
}

/// Seconds a [`ProgressLease`] outlives its process.
pub const PROGRESS_TTL: i64 = 20;

impl ProgressLease {
    /// Grants the lease (one round trip) and keeps it alive in the background until
    /// [`Self::end`].
    pub(crate) async fn start(etcd: &Etcd) -> Result<ProgressLease, IndexError> {
        let client = etcd.client();
        let id = client
            .lease_grant(PROGRESS_TTL, None)
            .await
            .map_err(|e| etcd.error("granting a lease", &e))?
            .id();
        // The keep-alive stream is opened in the background: its first answer is not
        // waited for (the lease lives PROGRESS_TTL without it). A stream that fails (its
        // etcd member went) is opened again on another member; should that keep failing,
        // the lease simply expires, as when this process dies.
        let keeper = tokio::spawn(keep_alive(client, id));
        Ok(ProgressLease {
            etcd: etcd.clone(),
            id,
            keeper,
        })
    }

    /// The lease's id, for records and claims written in transactions.
    pub(crate) fn id(&self) -> i64 {
        self.id
    }

    /// Stops keeping the lease alive and revokes it (records written with a plain
    /// [`put`] since are not affected).
    pub(crate) async fn end(self) {
        self.keeper.abort();
        let _ = self.etcd.client().lease_revoke(self.id).await;
    }
}
