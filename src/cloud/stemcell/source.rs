//! Finds a stemcell's manifest and image: either the extracted `image` file with
//! `stemcell.MF` beside it (what the director and the CLI pass), or a packed stemcell
//! tarball holding both.

use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;

use super::manifest::{Manifest, ManifestError};
use crate::bounded_file::{self, FileKind, ReadError};
use crate::channel_reader::ChannelReader;

/// A stemcell whose files cannot be read as one; the text names the path. Always the
/// request's (or the operator's) fault: a retry reads the same files.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SourceError {
    /// `image_path` is no readable regular file.
    #[error("create_stemcell: image_path: {0}")]
    ImagePath(#[source] ReadError),
    /// The manifest at `shown` is not one this CPI reads.
    #[error("{shown}: {source}")]
    Manifest {
        shown: String,
        #[source]
        source: ManifestError,
    },
    /// The `stemcell.MF` beside the image cannot be read.
    #[error("create_stemcell: stemcell.MF: {0}")]
    ManifestFile(#[source] ReadError),
    /// No manifest beside the image, and the image is not a packed stemcell.
    #[error(
        "create_stemcell: no stemcell.MF beside {shown}, and {shown} is not a stemcell tarball holding stemcell.MF and image"
    )]
    NoManifest { shown: String },
    /// The extracted image cannot be opened.
    #[error("create_stemcell: image: {0}")]
    Image(#[source] ReadError),
    /// The manifest entry of a packed stemcell is over the limit.
    #[error(
        "create_stemcell: the stemcell.MF inside {shown} is larger than the {} limit for {}",
        bounded_file::human(FileKind::StemcellManifest.limit()),
        FileKind::StemcellManifest.what()
    )]
    ManifestTooLarge { shown: String },
    /// The manifest entry of a packed stemcell cannot be read.
    #[error("create_stemcell: stemcell.MF: {0}")]
    ManifestEntry(#[source] std::io::Error),
    /// The manifest entry of a packed stemcell is not text.
    #[error("create_stemcell: stemcell.MF is not UTF-8 text")]
    ManifestNotText,
}

/// A stemcell ready to be read: its manifest, and how to open its image bytes.
pub(crate) struct StemcellSource {
    pub manifest: Manifest,
    layout: Layout,
}

enum Layout {
    /// `image` file path.
    Extracted(PathBuf),
    /// Packed tarball path; the image is its `image` entry.
    Packed(PathBuf),
}

impl StemcellSource {
    /// Locates the manifest for `image_path`. Errors name the path and what is missing.
    pub(crate) fn open(image_path: &str) -> Result<StemcellSource, SourceError> {
        let path = Path::new(image_path);
        let shown = crate::echo::printable_path(path);
        // Checked on the opened file: a device or FIFO is refused before anything is read.
        bounded_file::open_regular(path).map_err(SourceError::ImagePath)?;
        // A packed stemcell names stemcell.MF among its first entries; a rootfs image
        // does not, and only its first few entries are looked at.
        if let Some(text) = read_packed_manifest(path)? {
            return Ok(StemcellSource {
                manifest: parse_manifest(&text, shown)?,
                layout: Layout::Packed(path.to_path_buf()),
            });
        }
        let beside = path.with_file_name("stemcell.MF");
        let text = bounded_file::read_optional(&beside, FileKind::StemcellManifest)
            .map_err(SourceError::ManifestFile)?
            .ok_or(SourceError::NoManifest { shown })?;
        let manifest = parse_manifest(&text, crate::echo::printable_path(&beside))?;
        Ok(StemcellSource {
            manifest,
            layout: Layout::Extracted(path.to_path_buf()),
        })
    }

    /// Opens the image bytes (the gzipped rootfs tarball), positioned at its start.
    pub(crate) fn image_reader(&self) -> Result<Box<dyn Read + Send>, SourceError> {
        match &self.layout {
            Layout::Extracted(path) => {
                let f = bounded_file::open_regular(path).map_err(SourceError::Image)?;
                Ok(Box::new(BufReader::with_capacity(1 << 20, f)))
            }
            Layout::Packed(path) => Ok(Box::new(PackedImage::open(path)?)),
        }
    }
}

/// The manifest text of the file shown as `shown`.
fn parse_manifest(text: &str, shown: String) -> Result<Manifest, SourceError> {
    Manifest::parse(text).map_err(|source| SourceError::Manifest { shown, source })
}

fn entry_name(entry: &tar::Entry<'_, impl Read>) -> Option<String> {
    let p = entry.path().ok()?;
    let s = p.to_string_lossy().trim_start_matches("./").to_string();
    Some(s)
}

/// How many leading entries of a tarball are searched for `stemcell.MF`.
const MANIFEST_SEARCH_ENTRIES: usize = 8;

/// The `stemcell.MF` entry of a packed stemcell; `None` when `path` is not one (not a
/// gzipped tarball, or no manifest among its first entries). A manifest entry over the
/// limit, or one that is not text, is an error.
fn read_packed_manifest(path: &Path) -> Result<Option<String>, SourceError> {
    let f = bounded_file::open_regular(path).map_err(SourceError::ImagePath)?;
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::new(f)));
    let Ok(entries) = archive.entries() else {
        return Ok(None);
    };
    for entry in entries.take(MANIFEST_SEARCH_ENTRIES) {
        let Ok(entry) = entry else {
            return Ok(None);
        };
        if entry_name(&entry).as_deref() != Some("stemcell.MF") {
            continue;
        }
        let limit = FileKind::StemcellManifest.limit();
        let too_large = || SourceError::ManifestTooLarge {
            shown: crate::echo::printable_path(path),
        };
        if entry.size() > limit {
            return Err(too_large());
        }
        let data = bounded_file::read_limited(entry, limit)
            .map_err(SourceError::ManifestEntry)?
            .ok_or_else(too_large)?;
        return String::from_utf8(data)
            .map(Some)
            .map_err(|_| SourceError::ManifestNotText);
    }
    Ok(None)
}

/// The `image` entry of a packed stemcell, streamed: a thread walks the archive and hands
/// the entry's bytes over a bounded channel, so nothing is extracted to disk.
struct PackedImage;

impl PackedImage {
    fn open(path: &Path) -> Result<ChannelReader, SourceError> {
        let f = bounded_file::open_regular(path).map_err(SourceError::ImagePath)?;
        let (tx, rx) = tokio::sync::mpsc::channel(4);
        std::thread::spawn(move || {
            if let Err(e) = stream_image_entry(f, &tx) {
                let _ = tx.blocking_send(Err(e));
            }
        });
        Ok(ChannelReader::new(rx))
    }
}

fn stream_image_entry(
    f: File,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<bytes::Bytes>>,
) -> std::io::Result<()> {
    let mut archive = tar::Archive::new(GzDecoder::new(BufReader::with_capacity(1 << 20, f)));
    for entry in archive.entries()? {
        let mut entry = entry?;
        if entry_name(&entry).as_deref() != Some("image") {
            continue;
        }
        loop {
            let mut buf = vec![0u8; 1 << 20];
            let n = entry.read(&mut buf)?;
            if n == 0 {
                return Ok(());
            }
            buf.truncate(n);
            if tx.blocking_send(Ok(buf.into())).is_err() {
                return Ok(());
            }
        }
    }
    Err(std::io::Error::new(
        std::io::ErrorKind::NotFound,
        "the stemcell tarball has no 'image' entry",
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn packed(dir: &Path, image: &[u8]) -> PathBuf {
        let path = dir.join("stemcell.tgz");
        let f = File::create(&path).unwrap();
        let mut b = tar::Builder::new(flate2::write::GzEncoder::new(f, Default::default()));
        for (name, data) in [
            ("stemcell.MF", &b"name: t\nversion: '1'\n"[..]),
            ("image", image),
        ] {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data).unwrap();
        }
        b.into_inner().unwrap().finish().unwrap().flush().unwrap();
        path
    }

    #[test]
    fn packed_tarball_streams_its_image_entry() {
        let dir = tempfile::tempdir().unwrap();
        let image: Vec<u8> = (0..(3 << 20) + 12345)
            .map(|i| u8::try_from(i * 7 % 251).unwrap())
            .collect();
        let path = packed(dir.path(), &image);
        let source = StemcellSource::open(path.to_str().unwrap()).unwrap();
        assert_eq!(source.manifest.name, "t");
        let mut read = Vec::new();
        source
            .image_reader()
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read.len(), image.len());
        assert!(read == image);
    }

    #[test]
    fn packed_tarball_wins_over_a_manifest_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = packed(dir.path(), b"img");
        std::fs::write(dir.path().join("stemcell.MF"), "name: other\nversion: 9\n").unwrap();
        let source = StemcellSource::open(path.to_str().unwrap()).unwrap();
        assert_eq!(source.manifest.name, "t");
    }

    #[test]
    fn extracted_image_uses_the_manifest_beside_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("image"), b"rootfs").unwrap();
        std::fs::write(dir.path().join("stemcell.MF"), "name: x\nversion: 2\n").unwrap();
        let source = StemcellSource::open(dir.path().join("image").to_str().unwrap()).unwrap();
        assert_eq!(source.manifest.version, "2");
        let mut read = Vec::new();
        source
            .image_reader()
            .unwrap()
            .read_to_end(&mut read)
            .unwrap();
        assert_eq!(read, b"rootfs");
    }

    #[test]
    fn missing_or_foreign_files_are_named() {
        let e = StemcellSource::open("/nonexistent/image").err().unwrap();
        assert!(e.to_string().contains("/nonexistent/image"), "{e}");
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("image");
        std::fs::write(&p, b"not a tarball").unwrap();
        let e = StemcellSource::open(p.to_str().unwrap()).err().unwrap();
        assert!(e.to_string().contains("no stemcell.MF beside"), "{e}");
    }
}
