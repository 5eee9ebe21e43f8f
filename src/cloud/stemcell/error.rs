//! What goes wrong with a stemcell: reading its files, the image a docker-light stemcell
//! names, importing it into the nodes, finding it for a VM, deleting it. The BOSH class
//! and retry flag of each are decided in `cloud::errors::stemcell`.

use super::manifest::ManifestError;
use super::source::SourceError;
use crate::docker::DockerError;
use crate::node_name::NodeName;
use crate::protocol::StemcellCid;

/// A stemcell operation that cannot go on. The text is what the director is told.
#[derive(Debug, thiserror::Error)]
pub(crate) enum StemcellError {
    /// The stemcell's files cannot be read as one.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The manifest names formats or a digest this CPI does not take.
    #[error(transparent)]
    Manifest(#[from] ManifestError),
    /// The image's bytes do not hash as the manifest says.
    #[error("stemcell image digest mismatch: stemcell.MF says {expected}, the image has {actual}")]
    DigestMismatch { expected: String, actual: String },
    /// `image_reference` is missing its text.
    #[error("create_stemcell: cloud_properties.image_reference must be a non-empty string")]
    ReferenceMissing,
    /// `image_reference` is no image reference.
    #[error("create_stemcell: cloud_properties.image_reference: {0}")]
    Reference(#[source] DockerError),
    /// `digest` is no `sha256:<64 hex>`.
    #[error("create_stemcell: cloud_properties.digest must be sha256:<64 hex>, got {shown}")]
    BadDigest { shown: String },
    /// A node has the light image under its reference with another digest.
    #[error(
        "create_stemcell: image {reference} on node {node} has id {id} and digests [{digests}], not {want}"
    )]
    LightDigest {
        reference: String,
        node: NodeName,
        id: String,
        digests: String,
        want: String,
    },
    /// A pull said it worked, and the image is not there.
    #[error("node {node}: {reference} missing after pull")]
    MissingAfterPull { node: NodeName, reference: String },
    /// No node has the light image or could pull it (`problems`: each node's).
    #[error("create_stemcell: image {reference} is on no node and could not be pulled: {problems}")]
    LightNowhere { reference: String, problems: String },
    /// The stream of the image into the nodes failed.
    #[error("create_stemcell {image_path}: {source}")]
    Import {
        image_path: String,
        #[source]
        source: Box<DockerError>,
    },
    /// The CPI is pinned to a node that is not registered.
    #[error("create_stemcell: placement.node '{node}' is not a registered node")]
    PinnedUnknown { node: NodeName },
    /// No node is ready to import into.
    #[error("create_stemcell: no ready node in the cluster to import into")]
    NoReadyNode,
    /// No ready node answered.
    #[error("create_stemcell: no ready node could be reached (see the log)")]
    NoReachableNode,
    /// Every node failed its import (`reasons`: each node's); retriable when one of
    /// those was.
    #[error("create_stemcell: no node imported the stemcell: {reasons}")]
    NoNodeImported { reasons: String, retry: bool },
    /// Nodes that answered refused to remove the image (`problems`: each node's).
    #[error("delete_stemcell {cid}: {problems}")]
    NotDeleted { cid: StemcellCid, problems: String },
    /// create_vm names a stemcell no node has (every node answered).
    #[error(
        "create_vm: unknown stemcell {shown}: stemcell {shown} is on no node of the cluster: upload it again"
    )]
    Unknown { shown: String },
    /// The stemcell's image is on no node to copy it from (every node answered).
    #[error("stemcell {cid} is on no node of the cluster: upload it again")]
    Nowhere { cid: StemcellCid },
    /// A node's Docker failed.
    #[error(transparent)]
    Docker(#[from] DockerError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_words_say_what_to_do() {
        let e = StemcellError::Unknown {
            shown: "sc-x".into(),
        };
        assert_eq!(
            e.to_string(),
            "create_vm: unknown stemcell sc-x: stemcell sc-x is on no node of the cluster: upload it again"
        );
        let e = StemcellError::LightDigest {
            reference: "r:1".into(),
            node: "n1".into(),
            id: "sha256:a".into(),
            digests: "r@sha256:b".into(),
            want: "sha256:c".into(),
        };
        assert_eq!(
            e.to_string(),
            "create_stemcell: image r:1 on node n1 has id sha256:a and digests [r@sha256:b], not sha256:c"
        );
    }
}
