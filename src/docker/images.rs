//! Images on nodes: import a rootfs tarball into many nodes from one read of the source,
//! copy an image from one node to another (save -> load, streamed), inspect and remove.

use std::io::Read;
use std::time::Instant;

use bollard::models::ImageInspect;
use bollard::query_parameters::{CreateImageOptionsBuilder, ImportImageOptionsBuilder};
use bytes::Bytes;
use futures_util::StreamExt;
use futures_util::future::join_all;
use tokio::sync::mpsc;

use super::body;
use super::error::{DockerError, SourceError, is_status};
use super::idle::{next_within, wait_alive};
use super::node::NodeDocker;
use super::progress::Progress;
use crate::node_name::NodeName;

/// Size of the chunks read from the source and sent to every node.
const CHUNK: usize = 1 << 20;
/// Chunks buffered per node: a slow node holds the others back by at most this much.
const QUEUE: usize = 8;

/// How a rootfs import is tagged and labelled on every node.
#[derive(Debug, Clone)]
pub(crate) struct ImportTarget {
    /// Repository and tag, e.g. `moltencore-stemcell` / `<cid>`.
    pub(crate) repo: String,
    pub(crate) tag: String,
    /// Dockerfile-style changes applied at import (`LABEL k=v`, `ENV ...`).
    pub(crate) changes: Vec<String>,
}

impl ImportTarget {
    /// `repo:tag`.
    pub(crate) fn reference(&self) -> String {
        format!("{}:{}", self.repo, self.tag)
    }
}

/// Verifies the streamed bytes before the last chunk is released; an `Err` aborts every
/// node's import.
pub(crate) trait StreamCheck: Send {
    /// Sees every chunk, in order.
    fn update(&mut self, data: &[u8]);
    /// Called at the end of the source, before its last chunk is sent.
    fn finish(self: Box<Self>) -> Result<(), SourceError>;
}

/// Outcome per node of a fan-out import.
pub(crate) type NodeOutcomes = Vec<(NodeName, Result<(), DockerError>)>;

/// Imports the rootfs read from `source` into every node at once: the source is read once,
/// in chunks, and each chunk goes to all nodes together. The last chunk is held back until
/// `check` approves the whole stream, so a corrupt source never yields an image. A node
/// that fails, or takes nothing for its idle timeout, drops out (its body broken, never
/// ended) without stopping the others.
pub(crate) async fn import_everywhere(
    nodes: &[NodeDocker],
    source: Box<dyn Read + Send>,
    check: Box<dyn StreamCheck>,
    target: &ImportTarget,
) -> Result<NodeOutcomes, DockerError> {
    let mut imports = start_imports(nodes, target);
    let (chunk_tx, mut chunk_rx) = mpsc::channel::<Result<Bytes, SourceError>>(QUEUE);
    let reader = tokio::task::spawn_blocking(move || read_chunks(source, check, chunk_tx));
    let mut progress = Progress::new(imports.len(), Instant::now());

    while let Some(item) = chunk_rx.recv().await {
        match item {
            Ok(chunk) => {
                send_to_all(&mut imports, &chunk, &mut progress).await;
                report_progress(&mut progress, &imports, false);
            }
            Err(problem) => {
                // Break every body: no node may end up with an image of a bad source.
                return Err(abandon_all(imports, reader, problem).await);
            }
        }
    }
    // The channel closed: only a reader that returned normally read the whole source (a
    // panic closes the channel too, and must not end the bodies cleanly).
    if let Err(e) = reader.await {
        let problem = SourceError::Reader(e);
        return Err(abandon_all(imports, tokio::spawn(async {}), problem).await);
    }
    report_progress(&mut progress, &imports, true);
    for import in imports.iter_mut() {
        if let Some(body) = import.body.take() {
            body.finish();
        }
    }
    Ok(join_all(imports.into_iter().map(NodeImport::finish)).await)
}

/// One import request per node, each reading its body from a channel the fan-out fills.
fn start_imports(nodes: &[NodeDocker], target: &ImportTarget) -> Vec<NodeImport> {
    nodes
        .iter()
        .map(|node| {
            let (body, stream) = body::channel(QUEUE);
            let task = {
                let node = node.clone();
                let target = target.clone();
                tokio::spawn(async move { import_one(&node, stream, &target).await })
            };
            NodeImport {
                node: node.clone(),
                body: Some(body),
                task,
                stalled: None,
            }
        })
        .collect()
}

/// Sends `chunk` to every node still importing, all at once: one stalled node costs the
/// others its idle timeout, never the import. A node whose import ended, or that took
/// nothing for its idle timeout, drops out.
async fn send_to_all(imports: &mut [NodeImport], chunk: &Bytes, progress: &mut Progress) {
    let sends = imports.iter().map(|i| async {
        match &i.body {
            Some(b) => Some(b.send(Ok(chunk.clone()), &i.node, IMPORTING).await),
            None => None,
        }
    });
    let sent = join_all(sends).await;
    for (n, (import, sent)) in imports.iter_mut().zip(sent).enumerate() {
        match sent {
            None => {}
            Some(Ok(true)) => progress.sent(n, chunk.len()),
            // That node's import already ended (failed); its result says why.
            Some(Ok(false)) => import.body = None,
            Some(Err(stalled)) => import.drop_out(stalled),
        }
    }
}

/// Logs each node still taking the stream, with bytes sent and rate, when a report is due
/// (or `last`: the whole source was sent).
fn report_progress(progress: &mut Progress, imports: &[NodeImport], last: bool) {
    let now = Instant::now();
    if !progress.due(now) && !last {
        return;
    }
    for (n, import) in imports.iter().enumerate() {
        if import.body.is_some() {
            tracing::info!(node = %import.node.name, "{IMPORTING}: {}", progress.line(n, now));
        }
    }
}

/// Breaks every node's body, waits for the imports to fail, and returns `problem`.
async fn abandon_all<T>(
    imports: Vec<NodeImport>,
    reader: tokio::task::JoinHandle<T>,
    problem: SourceError,
) -> DockerError {
    let imports: Vec<NodeImport> = imports
        .into_iter()
        .map(|mut i| {
            if let Some(body) = i.body.take() {
                body.abandon();
            }
            i
        })
        .collect();
    join_all(imports.into_iter().map(NodeImport::finish)).await;
    let _ = reader.await;
    DockerError::SourceRead(problem)
}

const IMPORTING: &str = "importing the stemcell";

/// One node's part of a fan-out import.
struct NodeImport {
    node: NodeDocker,
    /// `None` once the body is ended, broken or refused.
    body: Option<body::BodySender>,
    task: tokio::task::JoinHandle<Result<(), DockerError>>,
    /// Why the node was dropped for taking nothing.
    stalled: Option<DockerError>,
}

impl NodeImport {
    /// Drops the node out: its body is broken and its request abandoned.
    fn drop_out(&mut self, stalled: DockerError) {
        if let Some(body) = self.body.take() {
            body.abandon();
        }
        self.task.abort();
        self.stalled = Some(stalled);
    }

    /// The node's outcome once it has answered (its body is done; the node may unpack for
    /// a while after it, as long as it answers pings).
    async fn finish(mut self) -> (NodeName, Result<(), DockerError>) {
        let name = self.node.name.clone();
        if let Some(stalled) = self.stalled {
            return (name, Err(stalled));
        }
        let result = match wait_alive(&mut self.task, &self.node, IMPORTING).await {
            Ok(Ok(result)) => result,
            Ok(Err(e)) => Err(DockerError::Task {
                what: format!("node {name}: import task"),
                source: e,
            }),
            Err(silent) => {
                self.task.abort();
                Err(silent)
            }
        };
        (name, result)
    }
}

/// Reads `source` in chunks on a blocking thread, one chunk behind, so the last chunk is
/// only sent once `check` has approved the whole stream.
fn read_chunks(
    mut source: Box<dyn Read + Send>,
    mut check: Box<dyn StreamCheck>,
    out: mpsc::Sender<Result<Bytes, SourceError>>,
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
                    let _ = out.blocking_send(Err(SourceError::Read(e)));
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
    body: impl futures_util::Stream<Item = body::BodyItem> + Send + 'static,
    target: &ImportTarget,
) -> Result<(), DockerError> {
    let body = bollard::body_try_stream(body);
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(&target.repo)
        .tag(&target.tag)
        .changes(target.changes.clone())
        .build();
    // No idle timeout here: while the body streams, the fan-out watches this node (a node
    // may wait on a slower one), and once it is sent the fan-out bounds the answer.
    let mut progress = node.long.create_image(Some(options), Some(body), None);
    while let Some(step) = progress.next().await {
        step.map_err(|e| node.error(IMPORTING, &e))?;
    }
    Ok(())
}

/// The image `repo:tag` on `node`, imported when missing from an in-memory root holding
/// one file (`path`, `mode`, `data`): what the CPI's own helper containers run from.
pub(crate) async fn ensure_one_file_image(
    node: &NodeDocker,
    (repo, tag): (&str, &str),
    (path, mode, data): (&str, u32, &[u8]),
) -> Result<(), DockerError> {
    if inspect(node, &format!("{repo}:{tag}")).await?.is_some() {
        return Ok(());
    }
    let mut builder = tar::Builder::new(Vec::new());
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(mode);
    header.set_cksum();
    let tar_bytes = builder
        .append_data(&mut header, path, data)
        .and_then(|()| builder.into_inner())
        .map_err(|source| DockerError::HelperImage {
            reference: format!("{repo}:{tag}"),
            source,
        })?;
    let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut progress = node.long.create_image(
        Some(options),
        Some(bollard::body_full(bytes::Bytes::from(tar_bytes))),
        None,
    );
    let doing = format!("importing the image {repo}:{tag}");
    while super::idle::next_within(&mut progress, node, &doing)
        .await?
        .is_some()
    {}
    Ok(())
}

/// The image `reference` on `node`, or `None` when the node does not have it.
pub(crate) async fn inspect(
    node: &NodeDocker,
    reference: &str,
) -> Result<Option<ImageInspect>, DockerError> {
    let reference = super::names::image(reference)?;
    match node.docker.inspect_image(reference).await {
        Ok(i) => Ok(Some(i)),
        Err(e) if is_status(&e, 404) => Ok(None),
        Err(e) => Err(node.error(&format!("inspecting image {reference}"), &e)),
    }
}

/// Removes `reference` from `node`; an absent image is success (idempotent).
pub(crate) async fn remove(node: &NodeDocker, reference: &str) -> Result<(), DockerError> {
    let reference = super::names::image(reference)?;
    match node
        .for_removal()
        .await?
        .remove_image(
            reference,
            None::<bollard::query_parameters::RemoveImageOptions>,
            None,
        )
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if is_status(&e, 404) => Ok(()),
        Err(e) => Err(node.error(&format!("removing image {reference}"), &e)),
    }
}

/// Copies `reference` from `source` to `target`: `docker save` streamed straight into
/// `docker load`, nothing stored in between. The source may stage the image before its first
/// byte and the target may unpack after the last for as long as each answers pings; a pause
/// of the idle timeout mid-stream fails the copy (the load's body is then broken, so no
/// partial image is loaded).
pub(crate) async fn copy(
    source: &NodeDocker,
    target: &NodeDocker,
    reference: &str,
) -> Result<(), DockerError> {
    let reference = super::names::image(reference)?;
    let (body, stream) = body::channel(QUEUE);
    let mut exporter = spawn_export(source, target, reference, body);
    let options = ImportImageOptionsBuilder::new().quiet(true).build();
    let mut progress = target.long.import_image_stream(options, stream, None);
    let loading = async {
        while let Some(step) = progress.next().await {
            step.map_err(|e| target.error(&format!("loading image {reference}"), &e))?;
        }
        Ok::<(), DockerError>(())
    };
    tokio::pin!(loading);
    let joined = |r: Result<Result<(), DockerError>, tokio::task::JoinError>| {
        r.map_err(|e| DockerError::Task {
            what: "export task".into(),
            source: e,
        })?
    };
    tokio::select! {
        exported = &mut exporter => {
            joined(exported)?;
            // The whole image is sent: the target answers once it has loaded it.
            wait_alive(&mut loading, target, &format!("loading image {reference}")).await??;
        }
        loaded = &mut loading => {
            if let Err(e) = loaded {
                exporter.abort();
                return Err(e);
            }
            joined(exporter.await)?;
        }
    }
    verify_copied(source, target, reference).await
}

/// `docker save` of `reference` on `source`, sent chunk by chunk into `body` (the body of
/// the load on `target`). The body is ended only once the whole image is sent; a failure
/// drops it, which breaks the load's body.
fn spawn_export(
    source: &NodeDocker,
    target: &NodeDocker,
    reference: &str,
    body: body::BodySender,
) -> tokio::task::JoinHandle<Result<(), DockerError>> {
    let (source, target) = (source.clone(), target.clone());
    let exporting = format!("exporting image {reference}");
    let loading = format!("loading image {reference}");
    let reference = reference.to_string();
    tokio::spawn(async move {
        let mut chunks = source.long.export_image(&reference);
        // `docker save` stages the image before its first byte: no bound but liveness.
        let mut next = match wait_alive(chunks.next(), &source, &exporting).await {
            Ok(Some(Ok(chunk))) => Ok(Some(chunk)),
            Ok(Some(Err(e))) => Err(source.error(&exporting, &e)),
            Ok(None) => Ok(None),
            Err(e) => Err(e),
        };
        loop {
            let sent = match next {
                Ok(Some(chunk)) => body.send(Ok(chunk), &target, &loading).await,
                Ok(None) => {
                    body.finish();
                    return Ok(());
                }
                Err(e) => Err(e),
            };
            match sent {
                Ok(true) => {}
                Ok(false) => return Ok(()), // the load ended; its result says why
                Err(e) => return Err(e),    // dropping `body` breaks the load's body
            }
            next = next_within(&mut chunks, &source, &exporting).await;
        }
    })
}

/// A finished copy left `reference` on `target`.
async fn verify_copied(
    source: &NodeDocker,
    target: &NodeDocker,
    reference: &str,
) -> Result<(), DockerError> {
    match inspect(target, reference).await? {
        Some(_) => Ok(()),
        None => Err(DockerError::Verify {
            message: format!(
                "copying image {reference} from node {} to node {} finished but the image is missing on {}",
                source.name, target.name, target.name
            ),
        }),
    }
}

/// Tags `reference` on `node` as `repo:tag`.
pub(crate) async fn tag(
    node: &NodeDocker,
    reference: &str,
    repo: &str,
    tag: &str,
) -> Result<(), DockerError> {
    let reference = super::names::image(reference)?;
    super::names::image(&format!("{repo}:{tag}"))?;
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
pub(crate) async fn pull(node: &NodeDocker, reference: &str) -> Result<(), DockerError> {
    let reference = super::names::image(reference)?;
    let options = CreateImageOptionsBuilder::new()
        .from_image(reference)
        .build();
    let mut progress = node.long.create_image(Some(options), None, None);
    let doing = format!("pulling {reference}");
    while next_within(&mut progress, node, &doing).await?.is_some() {}
    Ok(())
}
