//! Images on nodes: import a rootfs tarball into many nodes from one read of the source,
//! copy an image from one node to another (save -> load, streamed), inspect and remove.

use std::io::Read;

use bollard::models::ImageInspect;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

use super::node::NodeDocker;
use crate::protocol::CpiError;

/// Size of the chunks read from the source and sent to every node.
const CHUNK: usize = 1 << 20;
/// Chunks buffered per node: a slow node holds the others back by at most this much.
const QUEUE: usize = 8;

/// How a rootfs import is tagged and labelled on every node.
#[derive(Debug, Clone)]
pub struct ImportTarget {
    /// Repository and tag, e.g. `moltencore-stemcell` / `<cid>`.
    pub repo: String,
    pub tag: String,
    /// Dockerfile-style changes applied at import (`LABEL k=v`, `ENV ...`).
    pub changes: Vec<String>,
}

impl ImportTarget {
    /// `repo:tag`.
    pub fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// Verifies the streamed bytes before the last chunk is released; an `Err` aborts every
/// node's import.
pub trait StreamCheck: Send {
    /// Sees every chunk, in order.
    fn update(&mut self, data: &[u8]);
    /// Called at the end of the source, before its last chunk is sent.
    fn finish(self: Box<Self>) -> Result<(), String>;
}

/// Outcome per node of a fan-out import.
pub type NodeOutcomes = Vec<(String, Result<(), CpiError>)>;

/// Imports the rootfs read from `source` into every node at once: the source is read once,
/// in chunks, and each chunk goes to all nodes. The last chunk is held back until `check`
/// approves the whole stream, so a corrupt source never yields an image. A node that
/// fails drops out without stopping the others.
pub async fn import_everywhere(
    nodes: &[NodeDocker],
    source: Box<dyn Read + Send>,
    check: Box<dyn StreamCheck>,
    target: &ImportTarget,
) -> Result<NodeOutcomes, CpiError> {
    let mut senders = Vec::new();
    let mut tasks = Vec::new();
    for node in nodes {
        let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
        senders.push(Some(tx));
        let node = node.clone();
        let target = target.clone();
        tasks.push(tokio::spawn(async move {
            let result = import_one(&node, rx, &target).await;
            (node.name.clone(), result)
        }));
    }

    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Bytes, String>>(QUEUE);
    let reader = tokio::task::spawn_blocking(move || read_chunks(source, check, chunk_tx));

    while let Some(item) = chunk_rx.recv().await {
        match item {
            Ok(chunk) => {
                for slot in senders.iter_mut() {
                    if let Some(tx) = slot
                        && tx.send(Ok(chunk.clone())).await.is_err()
                    {
                        // That node's import already ended (failed); its result says why.
                        *slot = None;
                    }
                }
            }
            Err(problem) => {
                for tx in senders.iter_mut().filter_map(Option::take) {
                    let _ = tx.send(Err(std::io::Error::other(problem.clone()))).await;
                }
                // Let the nodes see the broken body, then report the source problem.
                for t in tasks {
                    let _ = t.await;
                }
                let _ = reader.await;
                return Err(CpiError::cpi(problem));
            }
        }
    }
    drop(senders);
    let _ = reader.await;
    let mut outcomes = Vec::new();
    for t in tasks {
        match t.await {
            Ok(outcome) => outcomes.push(outcome),
            Err(e) => outcomes.push((
                "?".into(),
                Err(CpiError::cloud(format!("import task failed: {e}"), true)),
            )),
        }
    }
    Ok(outcomes)
}

/// Reads `source` in chunks on a blocking thread, one chunk behind, so the last chunk is
/// only sent once `check` has approved the whole stream.
fn read_chunks(
    mut source: Box<dyn Read + Send>,
    mut check: Box<dyn StreamCheck>,
    out: mpsc::Sender<Result<Bytes, String>>,
) {
    let mut pending: Option<Bytes> = None;
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut filled = 0;
        while filled < CHUNK {
            match source.read(&mut buf[filled..]) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    let _ =
                        out.blocking_send(Err(format!("reading the stemcell image failed: {e}")));
                    return;
                }
            }
        }
        if filled == 0 {
            break;
        }
        buf.truncate(filled);
        check.update(&buf);
        if let Some(prev) = pending.replace(Bytes::from(buf))
            && out.blocking_send(Ok(prev)).is_err()
        {
            return;
        }
        if filled < CHUNK {
            break;
        }
    }
    match check.finish() {
        Ok(()) => {
            if let Some(last) = pending {
                let _ = out.blocking_send(Ok(last));
            }
        }
        Err(problem) => {
            let _ = out.blocking_send(Err(problem));
        }
    }
}

async fn import_one(
    node: &NodeDocker,
    body: mpsc::Receiver<Result<Bytes, std::io::Error>>,
    target: &ImportTarget,
) -> Result<(), CpiError> {
    let body = bollard::body_try_stream(ReceiverStream::new(body));
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(&target.repo)
        .tag(&target.tag)
        .changes(target.changes.clone())
        .build();
    let mut progress = node.docker.create_image(Some(options), Some(body), None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| node.error("importing the stemcell", &e))?;
    }
    Ok(())
}

/// The image `reference` on `node`, or `None` when the node does not have it.
pub async fn inspect(node: &NodeDocker, reference: &str) -> Result<Option<ImageInspect>, CpiError> {
    match node.docker.inspect_image(reference).await {
        Ok(i) => Ok(Some(i)),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(None),
        Err(e) => Err(node.error(&format!("inspecting image {reference}"), &e)),
    }
}

/// Removes `reference` from `node`; an absent image is success (idempotent).
pub async fn remove(node: &NodeDocker, reference: &str) -> Result<(), CpiError> {
    match node
        .docker
        .remove_image(
            reference,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Ok(()),
        Err(e) => Err(node.error(&format!("removing image {reference}"), &e)),
    }
}

/// Copies `reference` from `source` to `target`: `docker save` streamed straight into
/// `docker load`, nothing stored in between.
pub async fn copy(
    source: &NodeDocker,
    target: &NodeDocker,
    reference: &str,
) -> Result<(), CpiError> {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(QUEUE);
    let export_node = source.clone();
    let reference_owned = reference.to_string();
    let exporter = tokio::spawn(async move {
        let mut stream = export_node.docker.export_image(&reference_owned);
        while let Some(chunk) = stream.next().await {
            match chunk {
                Ok(bytes) => {
                    if tx.send(Ok(bytes)).await.is_err() {
                        return Ok(());
                    }
                }
                Err(e) => {
                    let err = export_node.error(&format!("exporting image {reference_owned}"), &e);
                    let _ = tx
                        .send(Err(std::io::Error::other(err.message.clone())))
                        .await;
                    return Err(err);
                }
            }
        }
        Ok(())
    });
    let options = ImportImageOptionsBuilder::new().quiet(true).build();
    let mut progress = target
        .docker
        .import_image_stream(options, ReceiverStream::new(rx), None);
    let mut load_result = Ok(());
    while let Some(step) = progress.next().await {
        if let Err(e) = step {
            load_result = Err(target.error(&format!("loading image {reference}"), &e));
            break;
        }
    }
    drop(progress);
    let export_result = exporter
        .await
        .map_err(|e| CpiError::cloud(format!("export task failed: {e}"), true))?;
    export_result?;
    load_result?;
    match inspect(target, reference).await? {
        Some(_) => Ok(()),
        None => Err(CpiError::cloud(
            format!(
                "copying image {reference} from node {} to node {} finished but the image is missing on {}",
                source.name, target.name, target.name
            ),
            true,
        )),
    }
}

/// Tags `reference` on `node` as `repo:tag`.
pub async fn tag(
    node: &NodeDocker,
    reference: &str,
    repo: &str,
    tag: &str,
) -> Result<(), CpiError> {
    node.docker
        .tag_image(
            reference,
            Some(
                bollard::query_parameters::TagImageOptionsBuilder::new()
                    .repo(repo)
                    .tag(tag)
                    .build(),
            ),
        )
        .await
        .map_err(|e| node.error(&format!("tagging {reference} as {repo}:{tag}"), &e))
}

/// Pulls `reference` on `node` from its registry.
pub async fn pull(node: &NodeDocker, reference: &str) -> Result<(), CpiError> {
    let options = CreateImageOptionsBuilder::new()
        .from_image(reference)
        .build();
    let mut progress = node.docker.create_image(Some(options), None, None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| node.error(&format!("pulling {reference}"), &e))?;
    }
    Ok(())
}
