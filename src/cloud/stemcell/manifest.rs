//! `stemcell.MF`: what a stemcell says about itself (name, version, OS, formats, digest).

use serde::Deserialize;
use sha1::Digest as _;

/// The fields of `stemcell.MF` this CPI uses; unknown keys are ignored.
#[derive(Debug, Clone, Deserialize, PartialEq)]
pub(crate) struct Manifest {
    pub name: String,
    #[serde(deserialize_with = "string_or_number")]
    pub version: String,
    #[serde(default)]
    pub operating_system: Option<String>,
    #[serde(default)]
    pub sha1: Option<String>,
    #[serde(default)]
    pub stemcell_formats: Vec<String>,
    #[serde(default)]
    pub api_version: Option<u32>,
}

fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum V {
        S(String),
        I(i64),
        F(f64),
    }
    Ok(match V::deserialize(d)? {
        V::S(s) => s,
        V::I(i) => i.to_string(),
        V::F(f) => f.to_string(),
    })
}

/// Formats whose `image` is a (gzipped) rootfs tarball this CPI imports.
pub(crate) const ROOTFS_FORMATS: &[&str] = &["warden-tar", "general-tar"];

/// A manifest this CPI cannot import from; the text names the field.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ManifestError {
    /// Not YAML of the manifest's shape.
    #[error("stemcell.MF is not valid: {0}")]
    Invalid(#[source] serde_yaml_ng::Error),
    /// Formats that are not a rootfs this CPI imports.
    #[error(
        "stemcell {name}/{version} has formats [{}]; this CPI imports {}",
        .formats.join(", "),
        ROOTFS_FORMATS.join(" or ")
    )]
    Formats {
        name: String,
        version: String,
        formats: Vec<String>,
    },
    /// A `sha1` field that is no digest this CPI knows.
    #[error("stemcell.MF sha1 '{text}' is not a sha1 or sha256 digest")]
    Digest { text: String },
}

impl Manifest {
    /// Parses the manifest text; the error says which field is wrong. An unquoted numeric
    /// version (`version: 1.500`) is kept as written, not as the number YAML makes of it.
    pub(crate) fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let mut m: Manifest = serde_yaml_ng::from_str(text).map_err(ManifestError::Invalid)?;
        if let Some(raw) = text.lines().find_map(|l| l.strip_prefix("version:")) {
            let raw = raw.split(" #").next().unwrap_or(raw).trim();
            let raw = raw.trim_matches(|c| c == '"' || c == '\'');
            if !raw.is_empty() {
                m.version = raw.to_string();
            }
        }
        Ok(m)
    }

    /// Checks the stemcell is a rootfs format this CPI imports (an empty list is accepted:
    /// old stemcells do not declare formats).
    pub(crate) fn check_format(&self) -> Result<(), ManifestError> {
        if self.stemcell_formats.is_empty()
            || self
                .stemcell_formats
                .iter()
                .any(|f| ROOTFS_FORMATS.contains(&f.as_str()))
        {
            Ok(())
        } else {
            Err(ManifestError::Formats {
                name: self.name.clone(),
                version: self.version.clone(),
                formats: self.stemcell_formats.clone(),
            })
        }
    }

    /// The digest the image must have, when the manifest gives one.
    pub(crate) fn expected_digest(&self) -> Result<Option<ExpectedDigest>, ManifestError> {
        self.sha1.as_deref().map(ExpectedDigest::parse).transpose()
    }
}

/// A digest from the manifest's `sha1` field: a bare sha1, or `sha1:`/`sha256:` prefixed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ExpectedDigest {
    Sha1(String),
    Sha256(String),
}

impl ExpectedDigest {
    /// Parses `abc...`, `sha1:abc...` or `sha256:abc...` (a multi-digest takes the first
    /// algorithm this CPI knows).
    pub(crate) fn parse(text: &str) -> Result<ExpectedDigest, ManifestError> {
        for part in text.split(';').map(str::trim) {
            let (algo, hex) = part.split_once(':').unwrap_or(("sha1", part));
            let hex = hex.trim().to_ascii_lowercase();
            let ok = |len: usize| hex.len() == len && hex.chars().all(|c| c.is_ascii_hexdigit());
            match algo.trim() {
                "sha1" if ok(40) => return Ok(ExpectedDigest::Sha1(hex)),
                "sha256" if ok(64) => return Ok(ExpectedDigest::Sha256(hex)),
                _ => {}
            }
        }
        Err(ManifestError::Digest {
            text: text.to_string(),
        })
    }

    /// A hasher for this digest's algorithm.
    pub(crate) fn hasher(&self) -> Hasher {
        match self {
            ExpectedDigest::Sha1(_) => Hasher::Sha1(sha1::Sha1::new()),
            ExpectedDigest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
        }
    }

    /// The expected hex value.
    pub(crate) fn hex(&self) -> &str {
        match self {
            ExpectedDigest::Sha1(h) | ExpectedDigest::Sha256(h) => h,
        }
    }
}

/// An incremental digest over the streamed image.
pub(crate) enum Hasher {
    Sha1(sha1::Sha1),
    Sha256(sha2::Sha256),
}

impl Hasher {
    /// Adds bytes.
    pub(crate) fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Sha1(h) => h.update(data),
            Hasher::Sha256(h) => h.update(data),
        }
    }

    /// The final hex digest.
    pub(crate) fn finish(self) -> String {
        match self {
            Hasher::Sha1(h) => hex::encode(h.finalize()),
            Hasher::Sha256(h) => hex::encode(h.finalize()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_warden_manifest() {
        let m = Manifest::parse(
            "---\nname: bosh-warden-boshlite-ubuntu-jammy-go_agent\nversion: 1.500\n\
             api_version: 3\nsha1: 6dac6e6e12aed7d4bd09e1c2add0ed750ef3b0c5\n\
             operating_system: ubuntu-jammy\nstemcell_formats:\n- warden-tar\n- general-tar\n\
             cloud_properties: {}\n",
        )
        .unwrap();
        assert_eq!(m.version, "1.500");
        assert!(m.check_format().is_ok());
        assert_eq!(
            m.expected_digest().unwrap(),
            Some(ExpectedDigest::Sha1(
                "6dac6e6e12aed7d4bd09e1c2add0ed750ef3b0c5".into()
            ))
        );
    }

    #[test]
    fn rejects_foreign_formats_and_bad_digests() {
        let m = Manifest::parse("name: x\nversion: '1'\nstemcell_formats: [aws-raw]\n").unwrap();
        let e = m.check_format().unwrap_err().to_string();
        assert_eq!(
            e,
            "stemcell x/1 has formats [aws-raw]; this CPI imports warden-tar or general-tar"
        );
        assert_eq!(
            ExpectedDigest::parse("nothex").unwrap_err().to_string(),
            "stemcell.MF sha1 'nothex' is not a sha1 or sha256 digest"
        );
        assert!(ExpectedDigest::parse("nothex").is_err());
        let d = ExpectedDigest::parse(&format!("sha256:{}", "a".repeat(64))).unwrap();
        assert!(matches!(d, ExpectedDigest::Sha256(_)));
    }

    #[test]
    fn hashes_incrementally() {
        let d = ExpectedDigest::parse("a9993e364706816aba3e25717850c26c9cd0d89d").unwrap();
        let mut h = d.hasher();
        h.update(b"ab");
        h.update(b"c");
        assert_eq!(h.finish(), d.hex());
    }
}
