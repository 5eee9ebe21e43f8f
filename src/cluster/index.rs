//! The index in etcd: which node holds which VM, which stemcells exist. The truth about a
//! resource is on its node (Docker labels); the index makes finding it O(1).

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::etcd::Etcd;
use crate::protocol::CpiError;

/// Reads and parses one JSON record; `None` when the key is absent.
pub async fn get<T: DeserializeOwned>(etcd: &Etcd, key: &str) -> Result<Option<T>, CpiError> {
    let resp = etcd
        .client()
        .get(key, None)
        .await
        .map_err(|e| etcd.error(&format!("reading {key}"), &e))?;
    match resp.kvs().first() {
        None => Ok(None),
        Some(kv) => serde_json::from_slice(kv.value())
            .map(Some)
            .map_err(|e| CpiError::cloud(format!("index record {key} is unreadable: {e}"), false)),
    }
}

/// Writes one JSON record.
pub async fn put<T: Serialize>(etcd: &Etcd, key: &str, value: &T) -> Result<(), CpiError> {
    let text = serde_json::to_string(value)
        .map_err(|e| CpiError::cpi(format!("cannot encode index record {key}: {e}")))?;
    etcd.client()
        .put(key, text, None)
        .await
        .map_err(|e| etcd.error(&format!("writing {key}"), &e))?;
    Ok(())
}

/// Deletes one record; an absent key is success.
pub async fn delete(etcd: &Etcd, key: &str) -> Result<(), CpiError> {
    etcd.client()
        .delete(key, None)
        .await
        .map_err(|e| etcd.error(&format!("deleting {key}"), &e))?;
    Ok(())
}
