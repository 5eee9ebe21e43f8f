//! Request bodies streamed into a node from a channel. A body ends cleanly only when the
//! CPI says it is complete ([`BodySender::finish`]); dropped any other way (its node
//! stalled, the source failed, a task was aborted or panicked) it is broken: the node sees
//! an error instead of a clean end, so a partial stream can never be taken for a complete
//! image or archive.

use bytes::Bytes;
use futures_util::Stream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::NodeDocker;
use super::error::DockerError;

/// One item of a body: a chunk, or the reason the body is broken.
pub(crate) type BodyItem = Result<Bytes, std::io::Error>;

/// The CPI's end of a request body.
pub(crate) struct BodySender {
    tx: mpsc::Sender<BodyItem>,
    broken: CancellationToken,
    complete: bool,
}

/// A body with room for `capacity` chunks in flight, and the stream to hand to bollard.
/// [`BodySender::finish`] ends it cleanly; dropping the sender without it breaks it.
pub(crate) fn channel(
    capacity: usize,
) -> (BodySender, impl Stream<Item = BodyItem> + Send + 'static) {
    let (tx, rx) = mpsc::channel(capacity);
    let broken = CancellationToken::new();
    let watch = broken.clone();
    let stream = futures_util::stream::unfold(Some(rx), move |state| {
        let watch = watch.clone();
        async move {
            let mut rx: mpsc::Receiver<BodyItem> = state?;
            tokio::select! {
                biased;
                _ = watch.cancelled() => Some((
                    Err(std::io::Error::other("transfer abandoned by the CPI")),
                    None,
                )),
                item = rx.recv() => item.map(|i| (i, Some(rx))),
            }
        }
    });
    (
        BodySender {
            tx,
            broken,
            complete: false,
        },
        stream,
    )
}

impl BodySender {
    /// Hands `chunk` to `node`. `Ok(true)`: taken; `Ok(false)`: the request already ended
    /// (its own result says why); an error when the node took nothing for its idle timeout.
    pub(crate) async fn send(
        &self,
        chunk: BodyItem,
        node: &NodeDocker,
        doing: &str,
    ) -> Result<bool, DockerError> {
        super::idle::send_within(&self.tx, chunk, node, doing).await
    }

    /// Ends the body cleanly once everything was sent: the node reads what is queued, then
    /// the end.
    pub(crate) fn finish(mut self) {
        self.complete = true;
    }

    /// Breaks the body: whatever the node reads next is an error, whether or not chunks are
    /// still queued, so the request fails instead of completing with partial data. (What
    /// dropping an unfinished sender does; this names it.)
    pub(crate) fn abandon(self) {}
}

impl Drop for BodySender {
    fn drop(&mut self) {
        if !self.complete {
            self.broken.cancel();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    #[tokio::test]
    async fn a_finished_body_ends_after_its_chunks() {
        let (tx, body) = channel(4);
        tx.tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        tx.tx.send(Ok(Bytes::from_static(b"b"))).await.unwrap();
        tx.finish();
        let items: Vec<_> = body.collect().await;
        let chunks: Vec<_> = items.into_iter().map(Result::unwrap).collect();
        assert_eq!(
            chunks,
            vec![Bytes::from_static(b"a"), Bytes::from_static(b"b")]
        );
    }

    #[tokio::test]
    async fn an_abandoned_body_ends_in_an_error_even_with_chunks_queued() {
        let (tx, body) = channel(4);
        tx.tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        tx.abandon();
        let items: Vec<_> = body.collect().await;
        assert_eq!(items.len(), 1, "the error ends the body");
        assert!(items[0].is_err());
    }

    #[tokio::test]
    async fn a_sender_dropped_unfinished_breaks_the_body() {
        let (tx, body) = channel(4);
        tx.tx.send(Ok(Bytes::from_static(b"a"))).await.unwrap();
        drop(tx);
        let items: Vec<_> = body.collect().await;
        assert_eq!(items.len(), 1);
        assert!(items[0].is_err(), "a dropped sender is never a clean end");
    }
}
