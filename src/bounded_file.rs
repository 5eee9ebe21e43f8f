//! Every file the CPI or node-prep reads goes through here: it must be a regular file
//! (not `/dev/zero`, a FIFO or a directory), and at most a stated limit per kind is read,
//! so a hostile or mistaken path is a clear error in milliseconds with bounded memory,
//! never a hang or an exhausted machine.

use std::fs::File;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * KIB;

/// What a file holds, which sets how much of it may be read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileKind {
    /// `cpi.json` (inline PEM text included): 1 MiB.
    Config,
    /// A PEM certificate, CA bundle or private key (`*_file` keys, node-prep flags): 1 MiB.
    TlsPem,
    /// `stemcell.MF` (beside the image or inside a packed stemcell): 1 MiB.
    StemcellManifest,
    /// An agent settings file read back from a VM's container: 8 MiB.
    AgentSettings,
    /// A small host file node-prep reads (`subnet.env`, metadata, hostname,
    /// `/proc/meminfo`, a file it may rewrite): 1 MiB.
    HostFile,
}

impl FileKind {
    /// The most bytes read for this kind; a larger file is an error.
    pub(crate) const fn limit(self) -> u64 {
        match self {
            FileKind::Config
            | FileKind::TlsPem
            | FileKind::StemcellManifest
            | FileKind::HostFile => MIB,
            FileKind::AgentSettings => 8 * MIB,
        }
    }

    /// How the kind is named in messages.
    pub(crate) const fn what(self) -> &'static str {
        match self {
            FileKind::Config => "a config file",
            FileKind::TlsPem => "TLS material",
            FileKind::StemcellManifest => "a stemcell manifest",
            FileKind::AgentSettings => "agent settings",
            FileKind::HostFile => "a host file",
        }
    }
}

/// Why a file was not read. The messages name the path and, for size, the limit; callers
/// prefix the config key or flag that named the path.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The path is a device, FIFO, socket or directory.
    #[error("{} is {found}, not a regular file", crate::echo::printable_path(path))]
    NotRegular { path: PathBuf, found: &'static str },
    /// More than the kind's limit.
    #[error("{} is larger than the {} limit for {}", crate::echo::printable_path(path), human(kind.limit()), kind.what())]
    TooLarge { path: PathBuf, kind: FileKind },
    /// Not UTF-8 text where text is expected.
    #[error("{} is not UTF-8 text", crate::echo::printable_path(path))]
    NotText { path: PathBuf },
    /// The file could not be opened or read.
    #[error("cannot read {}: {source}", crate::echo::printable_path(path))]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

impl ReadError {
    /// Whether the file does not exist (some callers treat that as "not given").
    pub(crate) fn is_not_found(&self) -> bool {
        matches!(self, ReadError::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// A limit in words (`1 MiB`, `512 KiB`).
pub(crate) fn human(bytes: u64) -> String {
    if bytes >= MIB && bytes.is_multiple_of(MIB) {
        format!("{} MiB", bytes / MIB)
    } else if bytes >= KIB && bytes.is_multiple_of(KIB) {
        format!("{} KiB", bytes / KIB)
    } else {
        format!("{bytes} bytes")
    }
}

/// Opens `path` for reading only if it is a regular file. The open never blocks (a FIFO
/// without writer would), and the type is checked on the opened file, so a path swapped
/// after a check cannot slip through.
pub(crate) fn open_regular(path: &Path) -> Result<File, ReadError> {
    let io = |source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    let t = meta.file_type();
    if !t.is_file() {
        let found = if t.is_dir() {
            "a directory"
        } else if t.is_char_device() {
            "a character device"
        } else if t.is_block_device() {
            "a block device"
        } else if t.is_fifo() {
            "a FIFO"
        } else if t.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(ReadError::NotRegular {
            path: path.to_path_buf(),
            found,
        });
    }
    Ok(file)
}

/// The bytes of the regular file `path`, at most `kind.limit()` of them.
pub(crate) fn read(path: &Path, kind: FileKind) -> Result<Vec<u8>, ReadError> {
    let file = open_regular(path)?;
    let too_large = || ReadError::TooLarge {
        path: path.to_path_buf(),
        kind,
    };
    // The size from stat answers at once; the bounded read also covers files whose
    // size stat does not know (/proc) or that grow while read.
    if file.metadata().map(|m| m.len()).unwrap_or(0) > kind.limit() {
        return Err(too_large());
    }
    let data = read_limited(file, kind.limit()).map_err(|source| ReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    data.ok_or_else(too_large)
}

/// The text of the regular file `path`, at most `kind.limit()` bytes of UTF-8.
pub(crate) fn read_to_string(path: &Path, kind: FileKind) -> Result<String, ReadError> {
    String::from_utf8(read(path, kind)?).map_err(|_| ReadError::NotText {
        path: path.to_path_buf(),
    })
}

/// Like [`read_to_string`], but a missing file is `None`.
pub(crate) fn read_optional(path: &Path, kind: FileKind) -> Result<Option<String>, ReadError> {
    match read_to_string(path, kind) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Reads all of `reader` if it holds at most `limit` bytes; `None` when it holds more
/// (only `limit + 1` bytes are ever taken from it). For streams that are not files: a
/// tar entry, a download from a container, stdin.
pub(crate) fn read_limited(reader: impl Read, limit: u64) -> std::io::Result<Option<Vec<u8>>> {
    let mut data = Vec::new();
    reader
        .take(limit.saturating_add(1))
        .read_to_end(&mut data)?;
    Ok((data.len() as u64 <= limit).then_some(data))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devices_fifos_and_directories_are_refused_without_reading() {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: mkfifo with a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        for (path, found) in [
            (Path::new("/dev/zero"), "a character device"),
            (fifo.as_path(), "a FIFO"),
            (dir.path(), "a directory"),
        ] {
            let e = read(path, FileKind::TlsPem).unwrap_err();
            assert!(
                matches!(e, ReadError::NotRegular { found: f, .. } if f == found),
                "{path:?}: {e}"
            );
            assert!(e.to_string().contains(found), "{e}");
        }
    }

    #[test]
    fn a_file_over_the_limit_names_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        let big = dir.path().join("big.pem");
        std::fs::write(
            &big,
            vec![b'a'; usize::try_from(FileKind::TlsPem.limit() + 1).unwrap()],
        )
        .unwrap();
        let e = read(&big, FileKind::TlsPem).unwrap_err();
        assert!(matches!(e, ReadError::TooLarge { .. }), "{e}");
        assert!(
            e.to_string().contains("1 MiB limit for TLS material"),
            "{e}"
        );
        let exact = dir.path().join("exact.pem");
        std::fs::write(
            &exact,
            vec![b'a'; usize::try_from(FileKind::TlsPem.limit()).unwrap()],
        )
        .unwrap();
        assert_eq!(
            read(&exact, FileKind::TlsPem).unwrap().len() as u64,
            FileKind::TlsPem.limit()
        );
    }

    #[test]
    fn proc_files_are_read_although_stat_says_zero_bytes() {
        let text = read_to_string(Path::new("/proc/meminfo"), FileKind::HostFile).unwrap();
        assert!(text.contains("MemTotal:"));
    }

    #[test]
    fn missing_files_and_streams() {
        assert!(
            read_optional(Path::new("/nonexistent/x"), FileKind::HostFile)
                .unwrap()
                .is_none()
        );
        assert_eq!(
            read_limited(&b"abc"[..], 3).unwrap().as_deref(),
            Some(&b"abc"[..])
        );
        assert_eq!(read_limited(&b"abcd"[..], 3).unwrap(), None);
        assert_eq!(human(8 << 20), "8 MiB");
        assert_eq!(human(512 << 10), "512 KiB");
    }
}
