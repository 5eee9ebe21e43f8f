//! Bounds how long a node may stay silent in the middle of a stream. Imports, image copies
//! and disk moves run for as long as their data needs (the request timeout is long), so a
//! node that stops reading or sending mid-transfer (frozen daemon, dead link) is caught by
//! the idle timeout instead of hanging the CPI: BOSH callers have no timeout of their own.

use std::future::Future;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::NodeDocker;
use crate::protocol::CpiError;

/// The retriable error for a node that stayed silent for its idle timeout.
pub fn silent(node: &NodeDocker, doing: &str) -> CpiError {
    CpiError::cloud(
        format!(
            "node {} ({}): {doing}: nothing moved for {} s",
            node.name,
            node.endpoint,
            node.idle_timeout.as_secs()
        ),
        true,
    )
}

/// The next item of a node's stream; an error when the node sent nothing for its idle
/// timeout. `Ok(None)` is the end of the stream.
pub async fn next_within<S, T>(
    stream: &mut S,
    node: &NodeDocker,
    doing: &str,
) -> Result<Option<T>, CpiError>
where
    S: Stream<Item = Result<T, bollard::errors::Error>> + Unpin,
{
    match tokio::time::timeout(node.idle_timeout, stream.next()).await {
        Ok(Some(Ok(item))) => Ok(Some(item)),
        Ok(Some(Err(e))) => Err(node.error(doing, &e)),
        Ok(None) => Ok(None),
        Err(_) => Err(silent(node, doing)),
    }
}

/// Hands `item` to the body of a request streaming into `node`. `Ok(true)`: taken;
/// `Ok(false)`: that request already ended (its own result says why); an error when the
/// node took nothing for its idle timeout (its queue stayed full).
pub async fn send_within<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    node: &NodeDocker,
    doing: &str,
) -> Result<bool, CpiError> {
    match tokio::time::timeout(node.idle_timeout, tx.send(item)).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(_)) => Ok(false),
        Err(_) => Err(silent(node, doing)),
    }
}

/// Waits for `node` to answer a request whose body has been sent completely; an error
/// when it has not answered within its idle timeout.
pub async fn answer_within<F: Future>(
    answer: F,
    node: &NodeDocker,
    doing: &str,
) -> Result<F::Output, CpiError> {
    tokio::time::timeout(node.idle_timeout, answer)
        .await
        .map_err(|_| silent(node, doing))
}
