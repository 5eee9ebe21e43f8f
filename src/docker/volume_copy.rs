//! Copies a volume's contents, on one node or between two nodes, streamed through the CPI
//! (`docker cp` semantics via the archive API of idle helper containers that mount the
//! volumes; nothing is stored in between), and checks the copy: the target is read back
//! and must hold the same files, bytes and content digest as the source stream
//! ([`copy_volume`]).

use std::collections::HashMap;
use std::io::Read;

use bollard::models::{ContainerCreateBody, HostConfig, Mount, MountType};
use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use sha2::{Digest, Sha256};
use tokio::sync::mpsc;

use super::body;
use super::error::DockerError;
use super::idle::{next_within, wait_alive};
use super::node::NodeDocker;
use crate::channel_reader::ChannelReader;

/// An image with an empty root filesystem, imported on demand; helper containers are made
/// from it and never started.
pub(crate) const HELPER_IMAGE_REPO: &str = "moltencore-helper";
const HELPER_IMAGE_TAG: &str = "empty";
/// Where helper containers mount the volume.
const MOUNT: &str = "/data";

/// Bytes handed on at once. The network delivers about one TLS record (16 KiB) per read,
/// and every hand-over to the upload or the digest wakes another thread: per read, that
/// cost more CPU than the copy itself on a small node.
const BATCH: usize = 512 * 1024;

/// A node's download, read in batches of at least [`BATCH`] bytes (the last one may be
/// shorter); the node's idle timeout still applies to each read.
struct Batches<S> {
    stream: S,
    gathered: BytesMut,
    ended: bool,
}

impl<S> Batches<S>
where
    S: Stream<Item = Result<Bytes, bollard::errors::Error>> + Unpin,
{
    fn new(stream: S) -> Self {
        Batches {
            stream,
            gathered: BytesMut::new(),
            ended: false,
        }
    }

    /// The next batch; `Ok(None)` once the download has ended and everything was handed on.
    async fn next(&mut self, node: &NodeDocker, doing: &str) -> Result<Option<Bytes>, DockerError> {
        // After a batch is split off, what is left is too small for the next one.
        if self.gathered.capacity() < BATCH {
            self.gathered.reserve(BATCH + 64 * 1024);
        }
        while !self.ended && self.gathered.len() < BATCH {
            match next_within(&mut self.stream, node, doing).await? {
                Some(chunk) => self.gathered.extend_from_slice(&chunk),
                None => self.ended = true,
            }
        }
        Ok((!self.gathered.is_empty()).then(|| self.gathered.split().freeze()))
    }
}

/// What a tree of files holds: count, bytes and a digest over paths and contents.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TreeDigest {
    pub(crate) files: u64,
    pub(crate) bytes: u64,
    pub(crate) sha256: String,
}

/// Digest of a tar stream, in archive order: every entry's type, path, mode, owner and
/// link target, and the contents of regular files. `files` counts regular files and links.
pub(crate) fn digest_tar(reader: impl Read) -> std::io::Result<TreeDigest> {
    let mut archive = tar::Archive::new(reader);
    let mut hasher = Sha256::new();
    let (mut files, mut bytes) = (0u64, 0u64);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry
            .path()?
            .to_string_lossy()
            .trim_start_matches("./")
            .to_string();
        let header = entry.header();
        let kind = header.entry_type();
        let meta = format!(
            "{:?}\0{path}\0{:o}\0{}:{}\0",
            kind,
            header.mode().unwrap_or(0) & 0o7777,
            header.uid().unwrap_or(0),
            header.gid().unwrap_or(0)
        );
        hasher.update(meta.as_bytes());
        if let Some(target) = entry.link_name()? {
            hasher.update(target.to_string_lossy().as_bytes());
            hasher.update(b"\0");
        }
        if kind.is_file() {
            bytes += std::io::copy(&mut entry, &mut HashWriter(&mut hasher))?;
            files += 1;
        } else if kind.is_symlink() || kind.is_hard_link() {
            files += 1;
        }
    }
    Ok(TreeDigest {
        files,
        bytes,
        sha256: hex::encode(hasher.finalize()),
    })
}

struct HashWriter<'a>(&'a mut Sha256);

impl std::io::Write for HashWriter<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.update(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// An idle container mounting one volume at /data, removed after use.
struct Helper {
    node: NodeDocker,
    name: String,
}

/// Label on helper containers, valued with the volume they mount.
pub(crate) use crate::labels::HELPER as HELPER_LABEL;

/// Removes helper containers of `volume` that a killed copy left behind: they hold the
/// volume and would block its removal and every later copy.
pub(crate) async fn sweep_helpers(node: &NodeDocker, volume: &str) -> Result<(), DockerError> {
    for c in node
        .containers_with_label(&format!("{HELPER_LABEL}={volume}"))
        .await?
    {
        if let Some(id) = c.id {
            node.remove_container(&id).await?;
        }
    }
    Ok(())
}

impl Helper {
    async fn new(node: &NodeDocker, volume: &str) -> Result<Helper, DockerError> {
        ensure_helper_image(node).await?;
        sweep_helpers(node, volume).await?;
        let name = format!("mc-copy-{}", uuid::Uuid::new_v4().simple());
        let body = ContainerCreateBody {
            image: Some(format!("{HELPER_IMAGE_REPO}:{HELPER_IMAGE_TAG}")),
            cmd: Some(vec!["/never-started".into()]),
            labels: Some(HashMap::from([(
                HELPER_LABEL.to_string(),
                volume.to_string(),
            )])),
            host_config: Some(HostConfig {
                network_mode: Some("none".into()),
                mounts: Some(vec![Mount {
                    target: Some(MOUNT.into()),
                    source: Some(volume.into()),
                    typ: Some(MountType::VOLUME),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        node.create_container(&name, body).await?;
        Ok(Helper {
            node: node.clone(),
            name,
        })
    }

    async fn remove(self) {
        if let Err(e) = self.node.remove_container(&self.name).await {
            tracing::warn!("removing helper container: {e}");
        }
    }

    /// The volume's contents as a tar stream of chunks.
    fn download(
        &self,
    ) -> impl futures_util::Stream<Item = Result<Bytes, bollard::errors::Error>> + '_ {
        self.node.long.download_from_container(
            &self.name,
            Some(
                bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
                    .path(&format!("{MOUNT}/."))
                    .build(),
            ),
        )
    }

    /// Reads the whole volume and digests it.
    async fn digest(&self) -> Result<TreeDigest, DockerError> {
        let (tx, rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
        let digester = tokio::task::spawn_blocking(move || digest_tar(ChannelReader::new(rx)));
        let mut batches = Batches::new(Box::pin(self.download()));
        let mut failure = None;
        loop {
            match batches.next(&self.node, "reading the volume back").await {
                Ok(Some(b)) => {
                    if tx.send(Ok(b)).await.is_err() {
                        break;
                    }
                }
                Ok(None) => break,
                Err(e) => {
                    failure = Some(e);
                    let _ = tx.send(Err(std::io::Error::other("download failed"))).await;
                    break;
                }
            }
        }
        drop(tx);
        let digest = digester.await.map_err(|e| DockerError::Task {
            what: "digest task".into(),
            source: e,
        })?;
        if let Some(f) = failure {
            return Err(f);
        }
        digest.map_err(|e| unreadable(&self.node, e))
    }
}

/// A volume archive a node sent that cannot be read.
fn unreadable(node: &NodeDocker, e: std::io::Error) -> DockerError {
    DockerError::Archive {
        node: node.name.to_string(),
        what: "volume archive unreadable".into(),
        source: e,
    }
}

/// The helper image on `node`, imported when missing.
async fn ensure_helper_image(node: &NodeDocker) -> Result<(), DockerError> {
    let marker = b"moltencore helper: an empty root for idle containers\n";
    super::images::ensure_one_file_image(
        node,
        (HELPER_IMAGE_REPO, HELPER_IMAGE_TAG),
        (".moltencore-helper", 0o644, marker),
    )
    .await
}

/// A copy streamed into its target volume and not checked yet: the target's helper stays
/// for [`Streamed::verify`]. Dropped unverified, the helper is left for [`sweep_helpers`].
struct Streamed {
    to: Helper,
    source_node: String,
    source: TreeDigest,
}

impl Streamed {
    /// Checks the copy: the target is read back and must hold the same files, bytes and
    /// content digest as the source stream. The target's helper is removed either way.
    async fn verify(self) -> Result<TreeDigest, DockerError> {
        let copied = self.to.digest().await;
        let target_node = self.to.node.name.to_string();
        self.to.remove().await;
        let copied = copied?;
        if copied != self.source {
            return Err(DockerError::Verify {
                message: format!(
                    "copy check failed: node {} has {} files / {} bytes / {}, node {} now has {} files / {} bytes / {}",
                    self.source_node,
                    self.source.files,
                    self.source.bytes,
                    self.source.sha256,
                    target_node,
                    copied.files,
                    copied.bytes,
                    copied.sha256
                ),
            });
        }
        Ok(self.source)
    }
}

/// Copies the contents of `src_volume` on `src` into `dst_volume` on `dst` (which may be
/// the same node) and verifies the copy. Both volumes must exist.
pub(crate) async fn copy_volume(
    src: &NodeDocker,
    src_volume: &str,
    dst: &NodeDocker,
    dst_volume: &str,
) -> Result<TreeDigest, DockerError> {
    stream_volume(src, src_volume, dst, dst_volume)
        .await?
        .verify()
        .await
}

/// Streams the contents of `src_volume` on `src` into `dst_volume` on `dst`; the copy is
/// checked by [`Streamed::verify`]. Both volumes must exist.
async fn stream_volume(
    src: &NodeDocker,
    src_volume: &str,
    dst: &NodeDocker,
    dst_volume: &str,
) -> Result<Streamed, DockerError> {
    // The two helpers are made (and later removed) side by side: they are on two nodes.
    let (from, to) = match futures_util::future::join(
        Helper::new(src, src_volume),
        Helper::new(dst, dst_volume),
    )
    .await
    {
        (Ok(from), Ok(to)) => (from, to),
        (Ok(made), Err(e)) | (Err(e), Ok(made)) => {
            made.remove().await;
            return Err(e);
        }
        (Err(e), Err(_)) => return Err(e),
    };
    let streamed = stream(&from, &to).await;
    let source_node = from.node.name.to_string();
    match streamed {
        Ok(source) => {
            from.remove().await;
            Ok(Streamed {
                to,
                source_node,
                source,
            })
        }
        Err(e) => {
            futures_util::future::join(from.remove(), to.remove()).await;
            Err(e)
        }
    }
}

/// Streams the source helper's volume into the target's; the digest of what was sent.
async fn stream(from: &Helper, to: &Helper) -> Result<TreeDigest, DockerError> {
    // Source stream -> (upload to the target, digest on a blocking thread).
    let (upload, upload_body) = body::channel(8);
    let (dg_tx, dg_rx) = mpsc::channel::<std::io::Result<Bytes>>(8);
    let digester = tokio::task::spawn_blocking(move || digest_tar(ChannelReader::new(dg_rx)));
    let mut uploader = spawn_upload(to, upload_body);
    let failure = pump(from, to, &upload, &dg_tx).await;
    drop(dg_tx);
    let uploaded = if failure.is_some() {
        upload.abandon();
        uploader.abort();
        Ok(())
    } else {
        upload.finish(); // the whole archive is sent: end the body
        finish_upload(&mut uploader, to).await?
    };
    let source_digest = digester.await.map_err(|e| DockerError::Task {
        what: "digest task".into(),
        source: e,
    })?;
    if let Some(f) = failure {
        return Err(f);
    }
    uploaded?;
    let source_digest = source_digest.map_err(|e| unreadable(&from.node, e))?;
    Ok(source_digest)
}

/// The upload into the target helper's volume, its body read from `upload_body`.
fn spawn_upload(
    to: &Helper,
    upload_body: impl futures_util::Stream<Item = body::BodyItem> + Send + 'static,
) -> tokio::task::JoinHandle<Result<(), DockerError>> {
    let to_node = to.node.clone();
    let to_name = to.name.clone();
    tokio::spawn(async move {
        to_node
            .long
            .upload_to_container(
                &to_name,
                Some(
                    bollard::query_parameters::UploadToContainerOptionsBuilder::new()
                        .path(MOUNT)
                        .build(),
                ),
                bollard::body_try_stream(upload_body),
            )
            .await
            .map_err(|e| to_node.error("writing the copy", &e))
    })
}

/// Sends the source volume's archive, in batches, to the upload and the digest. Ends when
/// the source is done or the upload ended (its result says why); a failure of the source,
/// or a target that stopped reading, is returned (and the digest told the copy is
/// abandoned).
async fn pump(
    from: &Helper,
    to: &Helper,
    upload: &body::BodySender,
    dg_tx: &mpsc::Sender<std::io::Result<Bytes>>,
) -> Option<DockerError> {
    let mut batches = Batches::new(Box::pin(from.download()));
    loop {
        let sent = match batches.next(&from.node, "reading the volume").await {
            Ok(Some(b)) => {
                let for_digest = b.clone();
                let sent = upload.send(Ok(b), &to.node, "writing the copy").await;
                let _ = dg_tx.send(Ok(for_digest)).await;
                sent
            }
            Ok(None) => return None,
            Err(e) => Err(e),
        };
        match sent {
            Ok(true) => {}
            Ok(false) => return None, // the upload failed; its result says why
            Err(e) => {
                // The source failed or the target stopped reading: the target's body
                // is broken (a partial copy is never verified; the caller removes it).
                let _ = dg_tx.try_send(Err(std::io::Error::other("copy abandoned")));
                return Some(e);
            }
        }
    }
}

/// The upload's answer once its whole body is sent: the target answers once it has
/// unpacked the rest, as long as it answers pings. The outer error is the upload task's
/// own end (it panicked); the inner one is the upload's result.
async fn finish_upload(
    uploader: &mut tokio::task::JoinHandle<Result<(), DockerError>>,
    to: &Helper,
) -> Result<Result<(), DockerError>, DockerError> {
    match wait_alive(&mut *uploader, &to.node, "finishing the copy").await {
        Ok(joined) => joined.map_err(|e| DockerError::Task {
            what: "upload task".into(),
            source: e,
        }),
        Err(stalled) => {
            uploader.abort();
            Ok(Err(stalled))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    #[test]
    fn digest_counts_files_and_bytes_and_sees_content() {
        let a = digest_tar(tar_of(&[("./x", b"hello"), ("./d/y", b"!")]).as_slice()).unwrap();
        assert_eq!((a.files, a.bytes), (2, 6));
        let b = digest_tar(tar_of(&[("x", b"hello"), ("d/y", b"!")]).as_slice()).unwrap();
        assert_eq!(a, b, "a leading ./ does not matter");
        let c = digest_tar(tar_of(&[("./x", b"hellO"), ("./d/y", b"!")]).as_slice()).unwrap();
        assert_ne!(a.sha256, c.sha256);
        let mut builder = tar::Builder::new(Vec::new());
        for (name, mode) in [("x", 0o600), ("d/y", 0o644)] {
            let data: &[u8] = if name == "x" { b"hello" } else { b"!" };
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(mode);
            h.set_cksum();
            builder.append_data(&mut h, name, data).unwrap();
        }
        let d = digest_tar(builder.into_inner().unwrap().as_slice()).unwrap();
        assert_ne!(a.sha256, d.sha256, "a changed mode changes the digest");
    }
}
