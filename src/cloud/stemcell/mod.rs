//! Stemcells: imported into every ready node (or the CPI's `placement.node` alone) at once
//! from one read of the image, copied node-to-node to a node that lacks one when a VM is placed there, removed everywhere.

pub(crate) mod error;
pub(crate) mod light;
pub(crate) mod manifest;
pub(crate) mod source;

use futures_util::StreamExt;
use futures_util::future::join_all;
use futures_util::stream::FuturesUnordered;

use super::CloudContext;
use crate::cluster::NodeState;
use crate::cluster::model::StemcellRecord;
use crate::docker::images::{self, ImportTarget, NodeOutcomes, StreamCheck};
use crate::docker::{NodeDocker, SourceError};
use crate::labels;
use crate::node_name::NodeName;
use crate::protocol::{CallResult, CpiError, Object, StemcellCid};
use crate::timestamp::Timestamp;
use error::StemcellError;
use manifest::{ExpectedDigest, Hasher, Manifest, ManifestError};
use source::StemcellSource;

/// Repository of stemcell images on every node; the tag is the stemcell cid.
pub(crate) const IMAGE_REPO: &str = "moltencore-stemcell";

/// The image reference of a stemcell on a node.
pub(crate) fn image_reference(cid: &StemcellCid) -> String {
    format!("{IMAGE_REPO}:{cid}")
}

struct DigestCheck {
    expected: ExpectedDigest,
    hasher: Hasher,
}

impl StreamCheck for DigestCheck {
    fn update(&mut self, data: &[u8]) {
        self.hasher.update(data);
    }
    fn finish(self: Box<Self>) -> Result<(), SourceError> {
        let actual = self.hasher.finish();
        if actual == self.expected.hex() {
            Ok(())
        } else {
            let mismatch = StemcellError::DigestMismatch {
                expected: self.expected.hex().to_string(),
                actual,
            };
            Err(SourceError::Rejected {
                reason: mismatch.to_string(),
            })
        }
    }
}

struct NoCheck;

impl StreamCheck for NoCheck {
    fn update(&mut self, _: &[u8]) {}
    fn finish(self: Box<Self>) -> Result<(), SourceError> {
        Ok(())
    }
}

/// `create_stemcell`: streams the rootfs into every ready node concurrently (into the
/// CPI's `placement.node` alone when one is set), or, for a docker-light stemcell, adopts
/// the image it names.
pub(crate) async fn create(
    ctx: &CloudContext<'_>,
    image_path: &str,
    cloud_properties: &Object,
) -> Result<CallResult, CpiError> {
    if let Some(image) = light::LightImage::from_cloud_properties(cloud_properties)? {
        return create_light(ctx, &image).await;
    }
    let source = StemcellSource::open(image_path)?;
    let manifest = source.manifest.clone();
    let check = stream_check(&manifest)?;
    let nodes = upload_nodes(ctx, ctx.cluster().await?).await?;
    if nodes.is_empty() {
        return Err(StemcellError::NoReachableNode.into());
    }
    let cid = StemcellCid::generate();
    let target = ImportTarget {
        repo: IMAGE_REPO.to_string(),
        tag: cid.to_string(),
        changes: labels(&cid, &manifest),
    };
    tracing::info!(
        stemcell = %cid, name = %manifest.name, version = %manifest.version,
        nodes = nodes.len(), "importing stemcell"
    );
    let reader = source.image_reader()?;
    let imported = match images::import_everywhere(&nodes, reader, check, &target).await {
        Ok(outcomes) => imported_on(outcomes, &cid),
        Err(source) => Err(StemcellError::Import {
            image_path: image_path.to_string(),
            source: Box::new(source),
        }),
    };
    let have = match imported {
        Ok(have) => have,
        Err(e) => {
            remove_everywhere(&nodes, &target.reference()).await;
            return Err(e.into());
        }
    };
    let record = StemcellRecord {
        cid: cid.clone(),
        name: manifest.name.clone(),
        version: manifest.version.clone(),
        operating_system: manifest.operating_system.clone(),
        nodes: have,
        created_at: Timestamp::now(),
    };
    save_record(ctx, &record, &nodes).await?;
    Ok(CallResult::StemcellCreated(cid))
}

/// The check of the image stream: its digest, when the manifest gives one (after the
/// manifest's formats are checked).
fn stream_check(manifest: &Manifest) -> Result<Box<dyn StreamCheck>, ManifestError> {
    manifest.check_format()?;
    Ok(match manifest.expected_digest()? {
        Some(expected) => Box::new(DigestCheck {
            hasher: expected.hasher(),
            expected,
        }),
        None => Box::new(NoCheck),
    })
}

/// The nodes that imported the stemcell; the others are named in the log (the stemcell
/// is copied there when a VM needs it). None is an error, retriable when one node's
/// failure was.
fn imported_on(outcomes: NodeOutcomes, cid: &StemcellCid) -> Result<Vec<NodeName>, StemcellError> {
    let mut have = Vec::new();
    let mut failed = Vec::new();
    for (name, result) in outcomes {
        match result {
            Ok(()) => have.push(name),
            Err(e) => failed.push((name, CpiError::from(e))),
        }
    }
    if have.is_empty() {
        let retry = failed.iter().any(|(_, e)| e.ok_to_retry);
        let reasons: Vec<String> = failed.into_iter().map(|(_, e)| e.message).collect();
        let reasons = reasons.join("; ");
        return Err(StemcellError::NoNodeImported { reasons, retry });
    }
    for (name, e) in &failed {
        tracing::warn!(
            node = %name,
            "stemcell {cid} not imported on node {name}; it is copied there when a VM needs it: {}",
            e.message
        );
    }
    Ok(have)
}

/// Writes the stemcell's record; when it cannot be written, the image goes from the
/// nodes again (nothing would lead to it).
async fn save_record(
    ctx: &CloudContext<'_>,
    record: &StemcellRecord,
    nodes: &[NodeDocker],
) -> Result<(), CpiError> {
    if let Err(e) = ctx.save_stemcell(record).await {
        remove_everywhere(nodes, &image_reference(&record.cid)).await;
        return Err(e.into());
    }
    Ok(())
}

async fn create_light(
    ctx: &CloudContext<'_>,
    image: &light::LightImage,
) -> Result<CallResult, CpiError> {
    let view = ctx.cluster().await?;
    let nodes = upload_nodes(ctx, view).await?;
    let cid = StemcellCid::generate();
    let have = match light::adopt(&nodes, image, &cid).await {
        Ok(have) => have,
        Err(e) => {
            // Tags made on other nodes before the failure go too.
            remove_everywhere(&nodes, &image_reference(&cid)).await;
            return Err(e);
        }
    };
    let record = StemcellRecord {
        cid: cid.clone(),
        name: image.reference.clone(),
        version: image.digest.clone().unwrap_or_default(),
        operating_system: None,
        nodes: have,
        created_at: Timestamp::now(),
    };
    save_record(ctx, &record, &nodes).await?;
    Ok(CallResult::StemcellCreated(cid))
}

fn labels(cid: &StemcellCid, m: &Manifest) -> Vec<String> {
    let mut labels = vec![
        format!("{}={cid}", labels::stemcell::CID),
        format!("{}={}", labels::stemcell::NAME, m.name),
        format!("{}={}", labels::stemcell::VERSION, m.version),
    ];
    if let Some(os) = &m.operating_system {
        labels.push(format!("{}={os}", labels::stemcell::OS));
    }
    vec![format!(
        "LABEL {}",
        labels
            .iter()
            .map(|l| {
                let (k, v) = l.split_once('=').unwrap_or((l, ""));
                format!("{k}={}", serde_json::Value::String(v.to_string()))
            })
            .collect::<Vec<_>>()
            .join(" ")
    )]
}

/// The nodes a stemcell upload goes to. A CPI pinned to one node by `placement.node` (one
/// CPI per node through a cpi-config, where the director uploads every stemcell once per
/// CPI) imports into that node alone, which must be registered and reachable; otherwise
/// every ready node that can be reached (unreachable ones are named in the log).
async fn upload_nodes(
    ctx: &CloudContext<'_>,
    view: &crate::cluster::ClusterView,
) -> Result<Vec<NodeDocker>, CpiError> {
    if let Some(pinned) = ctx.config().await?.placement.node.clone() {
        if view.node(&pinned).is_none() {
            return Err(StemcellError::PinnedUnknown { node: pinned }.into());
        }
        let node = ctx.node(&pinned).await.map_err(|e| {
            CpiError::from(e).context(format!("create_stemcell on placement.node '{pinned}'"))
        })?;
        return Ok(vec![node.client().clone()]);
    }
    let ready: Vec<&NodeName> = view
        .nodes
        .iter()
        .filter(|n| n.state == NodeState::Ready)
        .map(|n| &n.name)
        .collect();
    if ready.is_empty() {
        return Err(StemcellError::NoReadyNode.into());
    }
    reachable_nodes(ctx, ready.into_iter(), "importing the stemcell").await
}

/// Clients for `names`; a node that cannot even be connected to (with API version
/// negotiation) is left out and named in the log, so one dead node does not stop a
/// cluster-wide operation.
async fn reachable_nodes<'a>(
    ctx: &CloudContext<'_>,
    names: impl Iterator<Item = &'a NodeName>,
    doing: &str,
) -> Result<Vec<NodeDocker>, CpiError> {
    let mut nodes = Vec::new();
    for name in names {
        match ctx.node(name).await.map_err(CpiError::from) {
            Ok(n) => nodes.push(n.client().clone()),
            Err(e) if e.ok_to_retry => {
                tracing::warn!(node = %name, "{doing}: node {name} skipped: {}", e.message)
            }
            Err(e) => return Err(e),
        }
    }
    Ok(nodes)
}

async fn remove_everywhere(nodes: &[NodeDocker], reference: &str) {
    let results = join_all(nodes.iter().map(|n| images::remove(n, reference))).await;
    for r in results {
        if let Err(e) = r {
            tracing::warn!("cleanup: {e}");
        }
    }
}

/// `delete_stemcell`: removes the image from every node; already gone is success. A node
/// that cannot be reached is reported in the log and keeps its copy.
pub(crate) async fn delete(
    ctx: &CloudContext<'_>,
    cid: &StemcellCid,
) -> Result<CallResult, CpiError> {
    let view = ctx.cluster().await?;
    let reference = image_reference(cid);
    let names = view.nodes.iter().map(|n| &n.name);
    let nodes = reachable_nodes(ctx, names, "removing the stemcell").await?;
    let results = join_all(nodes.iter().map(|n| images::remove(n, &reference))).await;
    let mut hard = Vec::new();
    for (node, result) in nodes.iter().zip(results) {
        match result.map_err(CpiError::from) {
            Ok(()) => {}
            Err(e) if e.ok_to_retry => tracing::warn!(
                node = %node.name,
                "stemcell {cid} stays on unreachable node {}: {}",
                node.name,
                e.message
            ),
            Err(e) => hard.push(e.message),
        }
    }
    if !hard.is_empty() {
        let (cid, problems) = (cid.clone(), hard.join("; "));
        return Err(StemcellError::NotDeleted { cid, problems }.into());
    }
    ctx.forget_stemcell(cid).await?;
    Ok(CallResult::Done)
}

/// What create_vm learned about a stemcell before placing the VM (see [`check_exists`]).
pub(crate) enum Presence {
    /// The index has its record.
    Recorded,
    /// No record in this index (an image another CPI's index uploaded to the same nodes):
    /// the first node found with its image.
    OnNodes(Vec<NodeName>),
}

/// Checks that stemcell `cid` exists before create_vm chooses a node or writes anything:
/// its index record, else its image on a node of the cluster (as [`ensure_on_node`]
/// decides). Unknown (every node answered without it) is final; a node that did not
/// answer makes it retriable, as a retry may find it there.
pub(crate) async fn check_exists(
    ctx: &CloudContext<'_>,
    cid: &StemcellCid,
) -> Result<Presence, CpiError> {
    if ctx.stemcell(cid).await?.is_some() {
        return Ok(Presence::Recorded);
    }
    let reference = image_reference(cid);
    let view = ctx.cluster().await?;
    // The first node that has it settles the question: a slow node is not waited for.
    let mut looked_up: FuturesUnordered<_> = view
        .nodes
        .iter()
        .map(|n| async {
            let docker = ctx.node(&n.name).await?;
            let found = images::inspect(&docker, &reference).await?;
            Ok::<_, CpiError>(found.map(|_| n.name.clone()))
        })
        .collect();
    let mut unanswered = Vec::new();
    while let Some(result) = looked_up.next().await {
        match result {
            Ok(Some(node)) => return Ok(Presence::OnNodes(vec![node])),
            Ok(None) => {}
            Err(e) => unanswered.push(e),
        }
    }
    if let Some(e) = unanswered.into_iter().next() {
        return Err(e.context(format!(
            "stemcell {cid} has no record and the nodes that might have it did not all answer"
        )));
    }
    let shown = crate::echo::printable(cid.as_str());
    Err(StemcellError::Unknown { shown }.into())
}

/// Makes sure `node` has stemcell `cid`, copying it from another node that has it.
/// `presence` is what [`check_exists`] found: a node it saw the image on is not asked again.
pub(crate) async fn ensure_on_node(
    ctx: &CloudContext<'_>,
    node: &NodeDocker,
    cid: &StemcellCid,
    presence: &Presence,
) -> Result<(), CpiError> {
    let seen_on = match presence {
        Presence::OnNodes(nodes) => nodes.as_slice(),
        Presence::Recorded => &[],
    };
    if seen_on.contains(&node.name) {
        return Ok(());
    }
    let view = ctx.cluster().await?;
    let reference = image_reference(cid);
    if images::inspect(node, &reference).await?.is_some() {
        return Ok(());
    }
    let looked_up = join_all(
        view.nodes
            .iter()
            .filter(|n| n.name != node.name)
            .map(|n| async {
                let other = ctx.node(&n.name).await?;
                if seen_on.contains(&n.name) {
                    return Ok(Some(other));
                }
                let found = images::inspect(&other, &reference).await?;
                Ok::<_, CpiError>(found.map(|_| other))
            }),
    )
    .await;
    let mut source = None;
    let mut unanswered = Vec::new();
    for result in looked_up {
        match result {
            Ok(Some(other)) if source.is_none() => source = Some(other),
            Ok(_) => {}
            Err(e) => unanswered.push(e),
        }
    }
    let Some(source) = source else {
        // "Upload it again" only when every node answered; otherwise a retry may find it.
        if let Some(e) = unanswered.into_iter().next() {
            return Err(e.context(format!(
                "stemcell {cid} is not on node {} and the nodes that might have it did not all answer",
                node.name
            )));
        }
        return Err(StemcellError::Nowhere { cid: cid.clone() }.into());
    };
    let source = &source;
    tracing::info!(
        stemcell = %cid, from = %source.name, to = %node.name,
        "copying stemcell to the node"
    );
    Ok(images::copy(source, node, &reference).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::docker::DockerError;

    fn cid() -> StemcellCid {
        StemcellCid::generate()
    }

    fn refused() -> DockerError {
        DockerError::Verify {
            message: "copy check failed".into(),
        }
    }

    #[test]
    fn one_node_that_imported_is_enough() {
        let outcomes = vec![("n1".into(), Err(refused())), ("n2".into(), Ok(()))];
        assert_eq!(imported_on(outcomes, &cid()).unwrap(), vec!["n2"]);
    }

    #[test]
    fn no_node_that_imported_names_each_reason() {
        let outcomes = vec![
            ("n1".into(), Err(refused())),
            (
                "n2".into(),
                Err(DockerError::Setup {
                    message: "bad TLS".into(),
                }),
            ),
        ];
        let e = CpiError::from(imported_on(outcomes, &cid()).unwrap_err());
        assert_eq!(
            e.message,
            "create_stemcell: no node imported the stemcell: copy check failed; bad TLS"
        );
        assert!(e.ok_to_retry, "one node's failure was worth a retry");
        let outcomes = vec![(
            "n1".into(),
            Err(DockerError::Setup {
                message: "bad TLS".into(),
            }),
        )];
        assert!(!CpiError::from(imported_on(outcomes, &cid()).unwrap_err()).ok_to_retry);
    }

    #[test]
    fn the_stream_is_checked_against_the_manifest_digest() {
        let m = Manifest::parse("name: x\nversion: '1'\nstemcell_formats: [aws-raw]\n").unwrap();
        assert!(stream_check(&m).is_err());
        let m = Manifest::parse(
            "name: x\nversion: '1'\nsha1: a9993e364706816aba3e25717850c26c9cd0d89d\n",
        )
        .unwrap();
        let mut check = stream_check(&m).unwrap();
        check.update(b"abc");
        assert!(check.finish().is_ok());
        let mut check = stream_check(&m).unwrap();
        check.update(b"abd");
        let e = check.finish().unwrap_err();
        assert!(
            e.to_string()
                .starts_with("stemcell image digest mismatch: stemcell.MF says a9993e36"),
            "{e}"
        );
    }
}
