//! A disk image copied on its own node, hole for hole: only the image's data ranges
//! (`SEEK_DATA`/`SEEK_HOLE`) are read, blocks of zeros are left as holes in the copy, and
//! the copy is read back and must hash as what was read. A snapshot of a 10 GiB disk that
//! holds 100 MiB reads and writes about 100 MiB and allocates no more.
//!
//! Used by the node's mounter (`mounter/main.rs`, std only); `disk_mounts` names the files.

use std::ffi::c_int;
use std::fs::File;
use std::hash::{DefaultHasher, Hasher};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;

unsafe extern "C" {
    fn lseek64(fd: c_int, offset: i64, whence: c_int) -> i64;
    fn sync();
}

const SEEK_DATA: c_int = 3;
const SEEK_HOLE: c_int = 4;
const ENXIO: i32 = 6;
/// Bytes read and written at a time.
const CHUNK: usize = 1 << 20;

/// What a copy moved: the image's size and the bytes of data read from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Copied {
    pub(crate) size: u64,
    pub(crate) data: u64,
}

/// The data ranges of `file` (start, end), in order; a file system that does not know
/// holes reports the whole file as one.
fn data_ranges(file: &File, size: u64) -> io::Result<Vec<(u64, u64)>> {
    let fd = file.as_raw_fd();
    let mut ranges = Vec::new();
    let mut at = 0u64;
    while at < size {
        // SAFETY: lseek on an open descriptor owned by `file`; no memory is passed.
        let start = unsafe { lseek64(fd, at.cast_signed(), SEEK_DATA) };
        if start < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(ENXIO) {
                break;
            }
            return Err(e);
        }
        // SAFETY: as above.
        let end = unsafe { lseek64(fd, start, SEEK_HOLE) };
        if end < 0 {
            return Err(io::Error::last_os_error());
        }
        let (start, end) = (start.unsigned_abs(), end.unsigned_abs().min(size));
        if end <= start {
            return Err(io::Error::other(format!(
                "the image's data at {start} ends at {end}"
            )));
        }
        ranges.push((start, end));
        at = end;
    }
    Ok(ranges)
}

/// Copies the image `from` into the empty file `to` (same size, holes where `from` has
/// holes or blocks of zeros), syncs it, then reads the copy back: its hash must be that of
/// what was read from `from`, or the copy failed. Every file system is synced first, so
/// that what a VM wrote on its mount of the image's loop device is in the image. `progress`
/// hears the bytes handled so far after every chunk, copied and read back (the mounter
/// reports them, so that a long copy is never silent).
pub(crate) fn copy(from: &File, to: &File, progress: &mut dyn FnMut(u64)) -> io::Result<Copied> {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { sync() };
    let size = from.metadata()?.len();
    to.set_len(size)?;
    let ranges = data_ranges(from, size)?;
    let mut buf = vec![0u8; CHUNK];
    let mut read = DefaultHasher::new();
    let mut data = 0u64;
    for (at, n) in chunks(&ranges) {
        from.read_exact_at(&mut buf[..n], at)?;
        hash_chunk(&mut read, at, &buf[..n]);
        if buf[..n].iter().any(|b| *b != 0) {
            to.write_all_at(&buf[..n], at)?;
        }
        data += n as u64;
        progress(data);
    }
    to.sync_all()?;
    let mut back = DefaultHasher::new();
    let mut checked = 0u64;
    for (at, n) in chunks(&ranges) {
        to.read_exact_at(&mut buf[..n], at)?;
        hash_chunk(&mut back, at, &buf[..n]);
        checked += n as u64;
        progress(data + checked);
    }
    if read.finish() != back.finish() || to.metadata()?.len() != size {
        return Err(io::Error::other(
            "the copy of the image does not read back as what was read",
        ));
    }
    Ok(Copied { size, data })
}

/// The ranges cut into chunks of at most `CHUNK` bytes: (offset, length).
fn chunks(ranges: &[(u64, u64)]) -> impl Iterator<Item = (u64, usize)> + '_ {
    ranges.iter().flat_map(|&(start, end)| {
        (start..end).step_by(CHUNK).map(move |at| {
            (
                at,
                usize::try_from(end - at).map_or(CHUNK, |n| n.min(CHUNK)),
            )
        })
    })
}

fn hash_chunk(h: &mut DefaultHasher, at: u64, bytes: &[u8]) {
    h.write_u64(at);
    h.write(bytes);
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn image(dir: &std::path::Path, name: &str) -> File {
        std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.join(name))
            .unwrap()
    }

    #[test]
    fn a_sparse_image_is_copied_with_its_holes_and_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let from = image(dir.path(), "from");
        from.set_len(64 << 20).unwrap();
        from.write_all_at(b"superblock", 1024).unwrap();
        from.write_all_at(&vec![7u8; 3 << 20], 40 << 20).unwrap();
        // Zeros written as data: left as a hole in the copy, read back as zeros.
        from.write_all_at(&vec![0u8; 2 << 20], 20 << 20).unwrap();
        let to = image(dir.path(), "to");
        let copied = copy(&from, &to, &mut |_| {}).unwrap();
        assert_eq!(copied.size, 64 << 20);
        assert!(
            copied.data >= (3 << 20) && copied.data < (16 << 20),
            "{copied:?}"
        );
        let (mut a, mut b) = (vec![0u8; 64 << 20], vec![0u8; 64 << 20]);
        from.read_exact_at(&mut a, 0).unwrap();
        to.read_exact_at(&mut b, 0).unwrap();
        assert!(a == b, "the copy differs from the image");
        let allocated = to.metadata().unwrap().blocks() * 512;
        assert!(
            allocated < (8 << 20),
            "the copy allocates {allocated} bytes"
        );
    }

    #[test]
    fn an_empty_image_copies_to_an_empty_image_of_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let from = image(dir.path(), "from");
        from.set_len(8 << 20).unwrap();
        let to = image(dir.path(), "to");
        assert_eq!(
            copy(&from, &to, &mut |_| {}).unwrap(),
            Copied {
                size: 8 << 20,
                data: 0
            }
        );
        assert_eq!(to.metadata().unwrap().len(), 8 << 20);
    }
}
