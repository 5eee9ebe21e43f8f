//! A blocking `Read` over chunks arriving on a channel: lets synchronous readers (tar,
//! gzip) consume bytes that another thread or an async task produces, without buffering
//! the whole stream. The channel is tokio's, so async producers never block a runtime
//! worker; the reader itself runs on a blocking thread.

use std::io::Read;

use bytes::{Buf, Bytes};
use tokio::sync::mpsc::Receiver;

/// Reads the chunks of `chunks` in order; the stream ends when the sender is dropped, and
/// an `Err` chunk is returned as a read error.
pub(crate) struct ChannelReader {
    chunks: Receiver<std::io::Result<Bytes>>,
    current: Bytes,
    done: bool,
}

impl ChannelReader {
    /// A reader over `chunks`.
    pub(crate) fn new(chunks: Receiver<std::io::Result<Bytes>>) -> Self {
        ChannelReader {
            chunks,
            current: Bytes::new(),
            done: false,
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            if self.done {
                return Ok(0);
            }
            match self.chunks.blocking_recv() {
                Some(Ok(chunk)) => self.current = chunk,
                Some(Err(e)) => return Err(e),
                None => {
                    self.done = true;
                    return Ok(0);
                }
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current.advance(n);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_chunks_in_order_and_reports_errors() {
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || {
            tx.blocking_send(Ok(Bytes::from_static(b"hel"))).unwrap();
            tx.blocking_send(Ok(Bytes::new())).unwrap();
            tx.blocking_send(Ok(Bytes::from_static(b"lo"))).unwrap();
        });
        let mut s = String::new();
        ChannelReader::new(rx).read_to_string(&mut s).unwrap();
        assert_eq!(s, "hello");

        let (tx, rx) = tokio::sync::mpsc::channel(4);
        tx.try_send(Err(std::io::Error::other("boom"))).unwrap();
        let mut r = ChannelReader::new(rx);
        assert!(r.read(&mut [0u8; 4]).is_err());
    }
}
