//! Bounds how long a node may stay silent. Imports, image copies and disk moves run for as
//! long as their data needs (the request timeout is long), so a node that stops reading or
//! sending mid-transfer (frozen daemon, dead link) is caught by the idle timeout, and one
//! that works silently before or after a transfer must keep answering pings; a frozen node
//! never hangs the CPI: BOSH callers have no timeout of their own.

use std::future::Future;

use futures_util::{Stream, StreamExt};
use tokio::sync::mpsc;

use super::NodeDocker;
use super::error::DockerError;

/// The retriable error for a node that stayed silent for its idle timeout.
pub(crate) fn silent(node: &NodeDocker, doing: &str) -> DockerError {
    DockerError::Stalled {
        at: node.doing(doing),
        secs: node.idle_timeout.as_secs(),
    }
}

/// The next item of a node's stream; an error when the node sent nothing for its idle
/// timeout. `Ok(None)` is the end of the stream.
pub(crate) async fn next_within<S, T>(
    stream: &mut S,
    node: &NodeDocker,
    doing: &str,
) -> Result<Option<T>, DockerError>
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
pub(crate) async fn send_within<T>(
    tx: &mpsc::Sender<T>,
    item: T,
    node: &NodeDocker,
    doing: &str,
) -> Result<bool, DockerError> {
    match tokio::time::timeout(node.idle_timeout, tx.send(item)).await {
        Ok(Ok(())) => Ok(true),
        Ok(Err(_)) => Ok(false),
        Err(_) => Err(silent(node, doing)),
    }
}

/// Waits for `answer` for as long as the node needs, while it proves it is alive: each
/// time its idle timeout passes without the answer, the node must answer a ping. For answers
/// Docker gives only after silent work (unpacking an image after its body, staging a
/// `docker save` before the first byte), which may take longer than the idle timeout on a
/// healthy node; the request's own timeout still bounds the whole wait.
pub(crate) async fn wait_alive<F: Future>(
    answer: F,
    node: &NodeDocker,
    doing: &str,
) -> Result<F::Output, DockerError> {
    tokio::pin!(answer);
    loop {
        if let Ok(out) = tokio::time::timeout(node.idle_timeout, &mut answer).await {
            return Ok(out);
        }
        if let Err(e) = node.docker.ping().await {
            return Err(DockerError::Unanswered {
                at: node.doing(doing),
                secs: node.idle_timeout.as_secs(),
                detail: super::error::describe(&e),
            });
        }
    }
}
