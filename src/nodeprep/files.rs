//! Files under the prep root: every path node-prep writes is joined to `--root`, written
//! atomically (temp file + rename, mode set before the content lands) and only when its
//! content differs, so an unchanged host sees no write at all.

use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use super::error::{NodePrepError, Result};

use crate::bounded_file::{self, FileKind};

/// The directory node-prep treats as `/` (the host's `/` at boot, a temp dir in tests).
#[derive(Debug, Clone)]
pub(crate) struct Root {
    dir: PathBuf,
    dry_run: bool,
}

/// What happened (or, in a dry run, would happen) to one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum FileChange {
    /// Content and mode already as wanted.
    Unchanged,
    /// The file did not exist.
    Created,
    /// Content or mode differed.
    Updated,
}

impl Root {
    /// A root at `dir`; with `dry_run` nothing is ever written.
    pub(crate) fn new(dir: impl Into<PathBuf>, dry_run: bool) -> Root {
        Root {
            dir: dir.into(),
            dry_run,
        }
    }

    /// Whether this root is the running system's `/` (then systemd is called for real).
    pub(crate) fn is_system_root(&self) -> bool {
        self.dir == Path::new("/")
    }

    /// Whether writes are suppressed.
    pub(crate) fn dry_run(&self) -> bool {
        self.dry_run
    }

    /// The root directory itself.
    pub(crate) fn dir(&self) -> &Path {
        &self.dir
    }

    /// `path` (absolute, as seen on the node) below the root.
    pub(crate) fn join(&self, path: &str) -> PathBuf {
        self.dir.join(path.trim_start_matches('/'))
    }

    /// Reads a regular file below the root, at most [`FileKind::HostFile`]'s limit;
    /// `None` when it does not exist.
    pub(crate) fn read(&self, path: &str) -> Result<Option<String>> {
        Ok(bounded_file::read_optional(
            &self.join(path),
            FileKind::HostFile,
        )?)
    }

    /// What writing `content` with `mode` to `path` would change; writes nothing. Only as
    /// much of the old file is read as the new content could match.
    pub(crate) fn change_of(&self, path: &str, content: &str, mode: u32) -> Result<FileChange> {
        let full = self.join(path);
        let old = bounded_file::open_regular(&full).and_then(|f| {
            bounded_file::read_limited(f, content.len() as u64).map_err(|source| {
                bounded_file::ReadError::Io {
                    path: full.clone(),
                    source,
                }
            })
        });
        Ok(match old {
            Ok(None) => FileChange::Updated,
            Ok(Some(old)) => {
                let old_mode = fs::metadata(&full)
                    .map_err(|e| NodePrepError::file("stat", &full, e))?
                    .permissions()
                    .mode()
                    & 0o7777;
                if old == content.as_bytes() && old_mode == mode {
                    FileChange::Unchanged
                } else {
                    FileChange::Updated
                }
            }
            Err(e) if e.is_not_found() => FileChange::Created,
            Err(e) => return Err(e.into()),
        })
    }

    /// Writes `content` with `mode` unless the file already has both. Parent directories
    /// are created (0755). Returns what changed; in a dry run nothing is written.
    pub(crate) fn write(&self, path: &str, content: &str, mode: u32) -> Result<FileChange> {
        let change = self.change_of(path, content, mode)?;
        if change != FileChange::Unchanged && !self.dry_run {
            write_atomic(&self.join(path), content.as_bytes(), mode)?;
        }
        Ok(change)
    }

    /// Creates an empty marker file (no-op in a dry run).
    pub(crate) fn touch(&self, path: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        write_atomic(&self.join(path), b"", 0o600)
    }

    /// Whether a file exists below the root.
    pub(crate) fn exists(&self, path: &str) -> bool {
        self.join(path).exists()
    }

    /// Removes a file if present (no-op in a dry run).
    pub(crate) fn remove(&self, path: &str) -> Result<()> {
        if self.dry_run {
            return Ok(());
        }
        let full = self.join(path);
        match fs::remove_file(&full) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(NodePrepError::file("remove", full, e)),
        }
    }
}

/// Writes `content` to `path` through a temp file in the same directory that has `mode`
/// from its creation on (a key is never readable by others, not even briefly), then
/// renames it into place.
pub(crate) fn write_atomic(path: &Path, content: &[u8], mode: u32) -> Result<()> {
    let no_file = || {
        let e = std::io::Error::new(std::io::ErrorKind::InvalidInput, "not a file path");
        NodePrepError::file("write", path, e)
    };
    let dir = path.parent().ok_or_else(no_file)?;
    fs::create_dir_all(dir).map_err(|e| NodePrepError::file("create", dir, e))?;
    let name = path.file_name().ok_or_else(no_file)?.to_string_lossy();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let result = (|| -> std::io::Result<()> {
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        // The mode given at creation is filtered by the umask; set it exactly.
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(content)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = fs::remove_file(&tmp);
        return Err(NodePrepError::file("write", path, e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_only_changes_and_sets_modes() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        assert_eq!(
            root.write("/etc/x/key.pem", "k", 0o600).unwrap(),
            FileChange::Created
        );
        let meta = fs::metadata(root.join("/etc/x/key.pem")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(
            root.write("/etc/x/key.pem", "k", 0o600).unwrap(),
            FileChange::Unchanged
        );
        assert_eq!(
            root.write("/etc/x/key.pem", "k", 0o644).unwrap(),
            FileChange::Updated
        );
        assert_eq!(
            root.write("/etc/x/key.pem", "k2", 0o644).unwrap(),
            FileChange::Updated
        );
        assert_eq!(root.read("/etc/x/key.pem").unwrap().as_deref(), Some("k2"));
        assert_eq!(root.read("/etc/x/none").unwrap(), None);
    }

    #[test]
    fn dry_run_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), true);
        assert_eq!(
            root.write("/etc/a", "x", 0o644).unwrap(),
            FileChange::Created
        );
        root.touch("/run/m").unwrap();
        assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 0);
    }
}
