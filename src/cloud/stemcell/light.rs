//! docker-light stemcells: the stemcell names an image (`image_reference`, `digest`) that
//! is already on the nodes or pullable; the CPI checks the digest and tags it with the
//! stemcell cid on every node that has it.

use futures_util::future::join_all;
use serde_json::Value;

use super::IMAGE_REPO;
use super::error::StemcellError;
use crate::docker::NodeDocker;
use crate::docker::images;
use crate::ids::StemcellCid;
use crate::node_name::NodeName;
use crate::protocol::{CpiError, ErrorKind, Object};

/// The image a docker-light stemcell names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LightImage {
    pub reference: String,
    /// `sha256:...`: the image id or a repo digest it must have.
    pub digest: Option<String>,
}

impl LightImage {
    /// Reads `image_reference` (and `digest`) from create_stemcell's cloud_properties;
    /// `None` for rootfs stemcells.
    pub(crate) fn from_cloud_properties(cp: &Object) -> Result<Option<LightImage>, StemcellError> {
        let Some(reference) = cp.get("image_reference") else {
            return Ok(None);
        };
        let reference = reference
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or(StemcellError::ReferenceMissing)?;
        // It goes into Docker API paths (inspect, pull, tag): only the reference grammar.
        let reference = crate::docker::names::image(reference)
            .map_err(StemcellError::Reference)?
            .to_string();
        let digest = match cp.get("digest") {
            None | Some(Value::Null) => None,
            Some(Value::String(d))
                if d.strip_prefix("sha256:")
                    .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit())) =>
            {
                Some(d.clone())
            }
            Some(other) => {
                let shown = match other {
                    Value::String(s) => crate::protocol::call::printable(s),
                    other => crate::protocol::request::json_type(other).to_string(),
                };
                return Err(StemcellError::BadDigest { shown });
            }
        };
        Ok(Some(LightImage { reference, digest }))
    }

    fn matches(&self, inspect: &bollard::models::ImageInspect) -> bool {
        let Some(want) = &self.digest else {
            return true;
        };
        inspect.id.as_deref() == Some(want.as_str())
            || inspect
                .repo_digests
                .iter()
                .flatten()
                .any(|d| d.ends_with(&format!("@{want}")))
    }
}

/// Tags the image as the stemcell on every node that has it with the right digest (pulling
/// where it is missing). Returns the nodes that have it; errors when none does, or when a
/// node has the reference with another digest.
pub(crate) async fn adopt(
    nodes: &[NodeDocker],
    image: &LightImage,
    cid: &StemcellCid,
) -> Result<Vec<NodeName>, CpiError> {
    let results = join_all(nodes.iter().map(|n| adopt_on(n, image, cid))).await;
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for (node, r) in nodes.iter().zip(results) {
        match r.map_err(CpiError::from) {
            Ok(()) => ok.push(node.name.clone()),
            // The request's fault (a digest that differs): no other node can help.
            Err(e) if e.kind == ErrorKind::CpiError => return Err(e),
            Err(e) => problems.push(e.message),
        }
    }
    if ok.is_empty() {
        return Err(StemcellError::LightNowhere {
            reference: image.reference.clone(),
            problems: problems.join("; "),
        }
        .into());
    }
    for p in problems {
        tracing::warn!("stemcell {cid}: {p}; it is copied there when a VM needs it");
    }
    Ok(ok)
}

/// Tags the image as the stemcell on one node, pulling it there first when it is missing.
async fn adopt_on(
    node: &NodeDocker,
    image: &LightImage,
    cid: &StemcellCid,
) -> Result<(), StemcellError> {
    let inspect = match images::inspect(node, &image.reference).await? {
        Some(i) => i,
        None => {
            images::pull(node, &image.reference).await?;
            images::inspect(node, &image.reference)
                .await?
                .ok_or_else(|| StemcellError::MissingAfterPull {
                    node: node.name.clone(),
                    reference: image.reference.clone(),
                })?
        }
    };
    if !image.matches(&inspect) {
        return Err(StemcellError::LightDigest {
            reference: image.reference.clone(),
            node: node.name.clone(),
            id: inspect.id.as_deref().unwrap_or("?").to_string(),
            digests: inspect.repo_digests.unwrap_or_default().join(", "),
            want: image.digest.clone().unwrap_or_default(),
        });
    }
    Ok(images::tag(node, &image.reference, IMAGE_REPO, cid).await?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn reads_reference_and_digest() {
        let d = format!("sha256:{}", "a".repeat(64));
        let cp = json!({"image_reference": "bosh/stemcell:1", "digest": d});
        let l = LightImage::from_cloud_properties(cp.as_object().unwrap())
            .unwrap()
            .unwrap();
        assert_eq!(l.reference, "bosh/stemcell:1");
        assert_eq!(l.digest.as_deref(), Some(d.as_str()));
        assert!(
            LightImage::from_cloud_properties(json!({}).as_object().unwrap())
                .unwrap()
                .is_none()
        );
        let bad = json!({"image_reference": "x", "digest": "md5:1"});
        assert!(LightImage::from_cloud_properties(bad.as_object().unwrap()).is_err());
        let not_hex =
            json!({"image_reference": "x", "digest": format!("sha256:{}", "g".repeat(64))});
        assert!(LightImage::from_cloud_properties(not_hex.as_object().unwrap()).is_err());
        for hostile in ["x/../../containers/vm-1?force=true", "x#y", "x\n", "../x"] {
            let cp = json!({ "image_reference": hostile });
            let e = LightImage::from_cloud_properties(cp.as_object().unwrap()).unwrap_err();
            assert!(e.to_string().contains("image_reference"), "{e}");
        }
    }
}
