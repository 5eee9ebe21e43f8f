//! docker-light stemcells: the stemcell names an image (`image_reference`, `digest`) that
//! is already on the nodes or pullable; the CPI checks the digest and tags it with the
//! stemcell cid on every node that has it.

use futures_util::future::join_all;
use serde_json::Value;

use super::IMAGE_REPO;
use crate::docker::NodeDocker;
use crate::docker::images;
use crate::protocol::{CpiError, Object};

/// The image a docker-light stemcell names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LightImage {
    pub reference: String,
    /// `sha256:...`: the image id or a repo digest it must have.
    pub digest: Option<String>,
}

impl LightImage {
    /// Reads `image_reference` (and `digest`) from create_stemcell's cloud_properties;
    /// `None` for rootfs stemcells.
    pub fn from_cloud_properties(cp: &Object) -> Result<Option<LightImage>, CpiError> {
        let Some(reference) = cp.get("image_reference") else {
            return Ok(None);
        };
        let reference = reference
            .as_str()
            .filter(|s| !s.trim().is_empty())
            .ok_or_else(|| {
                CpiError::cpi(
                    "create_stemcell: cloud_properties.image_reference must be a non-empty string",
                )
            })?;
        // It goes into Docker API paths (inspect, pull, tag): only the reference grammar.
        let reference = crate::docker::names::image(reference)
            .map_err(|e| {
                CpiError::from(e).context("create_stemcell: cloud_properties.image_reference")
            })?
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
                return Err(CpiError::cpi(format!(
                    "create_stemcell: cloud_properties.digest must be sha256:<64 hex>, got {shown}"
                )));
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
pub async fn adopt(
    nodes: &[NodeDocker],
    image: &LightImage,
    cid: &str,
) -> Result<Vec<String>, CpiError> {
    let results = join_all(nodes.iter().map(|n| adopt_on(n, image, cid))).await;
    let mut ok = Vec::new();
    let mut problems = Vec::new();
    for (node, r) in nodes.iter().zip(results) {
        match r {
            Ok(()) => ok.push(node.name.clone()),
            Err(e) if e.kind == crate::protocol::ErrorKind::CpiError => return Err(e),
            Err(e) => problems.push(e.message),
        }
    }
    if ok.is_empty() {
        return Err(CpiError::cloud(
            format!(
                "create_stemcell: image {} is on no node and could not be pulled: {}",
                image.reference,
                problems.join("; ")
            ),
            false,
        ));
    }
    for p in problems {
        tracing::warn!("stemcell {cid}: {p}; it is copied there when a VM needs it");
    }
    Ok(ok)
}

async fn adopt_on(node: &NodeDocker, image: &LightImage, cid: &str) -> Result<(), CpiError> {
    let inspect = match images::inspect(node, &image.reference).await? {
        Some(i) => i,
        None => {
            images::pull(node, &image.reference).await?;
            images::inspect(node, &image.reference)
                .await?
                .ok_or_else(|| {
                    CpiError::cloud(
                        format!("node {}: {} missing after pull", node.name, image.reference),
                        true,
                    )
                })?
        }
    };
    if !image.matches(&inspect) {
        return Err(CpiError::cpi(format!(
            "create_stemcell: image {} on node {} has id {} and digests [{}], not {}",
            image.reference,
            node.name,
            inspect.id.as_deref().unwrap_or("?"),
            inspect.repo_digests.unwrap_or_default().join(", "),
            image.digest.as_deref().unwrap_or("")
        )));
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
            assert!(e.message.contains("image_reference"), "{}", e.message);
        }
    }
}
