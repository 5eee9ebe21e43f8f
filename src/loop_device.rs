//! Loop devices over disk images, with nothing but std and the kernel's ioctls: a disk's
//! image file becomes a block device (`/dev/loopN`) that a VM mounts as a real disk. Used
//! by the node's mounter (`mc-mounter`, built from this file and `src/disk_mounts.rs`
//! alone) and by `cpi node-prep disk-mounts` at boot.

use std::ffi::{CString, c_char, c_int, c_long, c_ulong};
use std::fs::File;
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

unsafe extern "C" {
    fn ioctl(fd: c_int, request: c_ulong, ...) -> c_int;
    fn syscall(number: c_long, ...) -> c_long;
}

const LOOP_SET_FD: c_ulong = 0x4C00;
const LOOP_CLR_FD: c_ulong = 0x4C01;
const LOOP_GET_STATUS64: c_ulong = 0x4C05;
const LOOP_CTL_GET_FREE: c_ulong = 0x4C82;
const EBUSY: i32 = 16;
// Linux open(2) flag (std has no name for it).
#[cfg(target_arch = "x86_64")]
const O_NOFOLLOW: i32 = 0o400000;
#[cfg(target_arch = "aarch64")]
const O_NOFOLLOW: i32 = 0o100000;
const ENXIO: i32 = 6;
const AT_FDCWD: c_long = -100;
const S_IFBLK: u32 = 0o060000;
const S_IFCHR: u32 = 0o020000;
/// `/dev/loop-control`'s device number (misc 10:237).
const LOOP_CONTROL: (u64, u64) = (10, 237);
#[cfg(target_arch = "x86_64")]
const SYS_MKNODAT: c_long = 259;
#[cfg(target_arch = "aarch64")]
const SYS_MKNODAT: c_long = 33;
/// Tries at taking a free loop device that another process takes first.
const FREE_ATTEMPTS: usize = 32;
/// `struct loop_info64` is 232 bytes; `lo_device` and `lo_inode` are its first two u64.
const LOOP_INFO64_LEN: usize = 232;

/// One loop device: its number (`/dev/loopN`) and its device number (`st_rdev`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Loop {
    pub(crate) number: u32,
    pub(crate) rdev: u64,
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

/// `dev_t` from a `major:minor` pair, as glibc's `makedev`.
pub(crate) fn makedev(major: u64, minor: u64) -> u64 {
    ((major & 0xffff_f000) << 32)
        | ((major & 0xfff) << 8)
        | ((minor & 0xffff_ff00) << 12)
        | (minor & 0xff)
}

/// Makes the block device node `path` for `rdev` (mode 0600); an existing entry there is
/// an error (`AlreadyExists`), never followed.
pub(crate) fn make_block_node(path: &Path, rdev: u64) -> io::Result<()> {
    make_node(path, S_IFBLK, rdev)
}

fn make_node(path: &Path, kind: u32, rdev: u64) -> io::Result<()> {
    let p = c_path(path)?;
    // SAFETY: a NUL-terminated path that outlives the call; mknodat takes (dirfd, path,
    // mode, dev) and does not follow a symlink at the last component.
    let rc = unsafe {
        syscall(
            SYS_MKNODAT,
            AT_FDCWD,
            p.as_ptr() as *const c_char,
            c_long::from(kind | 0o600),
            rdev.cast_signed(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The device number of loop `n`, from sysfs (`/sys/block/loopN/dev`, "7:N").
fn rdev_of(n: u32) -> io::Result<u64> {
    let text = std::fs::read_to_string(format!("/sys/block/loop{n}/dev"))?;
    let (major, minor) = text
        .trim()
        .split_once(':')
        .and_then(|(a, b)| Some((a.parse().ok()?, b.parse().ok()?)))
        .ok_or_else(|| io::Error::other(format!("loop{n}: unreadable device number {text:?}")))?;
    Ok(makedev(major, minor))
}

/// Opens loop `n` read-write; where `/dev` lacks its node (a container's `/dev` holds only
/// the devices of its start), the node is made there first.
fn open_loop(n: u32) -> io::Result<(File, Loop)> {
    let rdev = rdev_of(n)?;
    let path = PathBuf::from(format!("/dev/loop{n}"));
    match std::fs::symlink_metadata(&path) {
        Ok(m) if m.file_type().is_block_device() && m.rdev() == rdev => {}
        Ok(_) => {
            std::fs::remove_file(&path)?;
            make_block_node(&path, rdev)?;
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => match make_block_node(&path, rdev) {
            Err(e) if e.kind() != io::ErrorKind::AlreadyExists => return Err(e),
            _ => {}
        },
        Err(e) => return Err(e),
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)?;
    Ok((file, Loop { number: n, rdev }))
}

fn check(rc: c_int) -> io::Result<c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// The loop devices whose backing file is `image` (the same inode on the same device).
/// `hint` is a tail of the backing file's path that sysfs shows (cheap to read), checked
/// before the loop is opened.
pub(crate) fn loops_of(image: &Path, hint: &str) -> io::Result<Vec<Loop>> {
    let meta = match std::fs::symlink_metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(e),
    };
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/sys/block")? {
        let name = entry?.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("loop"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(backing) = std::fs::read_to_string(format!("/sys/block/loop{n}/loop/backing_file"))
        else {
            continue;
        };
        if !backing
            .trim_end()
            .trim_end_matches(" (deleted)")
            .ends_with(hint)
        {
            continue;
        }
        let (file, lo) = match open_loop(n) {
            Ok(x) => x,
            // Gone, or being cleared, meanwhile.
            Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENXIO) => {
                continue;
            }
            Err(e) => return Err(e),
        };
        if backed_by(&file, &meta) {
            found.push(lo);
        }
    }
    found.sort_by_key(|l| l.number);
    Ok(found)
}

/// Whether the open loop device `device` is backed by the file of `meta` (the same inode
/// on the same device); a loop detached meanwhile is not.
fn backed_by(device: &File, meta: &std::fs::Metadata) -> bool {
    let mut info = [0u8; LOOP_INFO64_LEN];
    // SAFETY: the kernel writes one struct loop_info64 into a buffer of its size.
    let rc = unsafe { ioctl(device.as_raw_fd(), LOOP_GET_STATUS64, info.as_mut_ptr()) };
    if rc < 0 {
        return false;
    }
    let field = |at: usize| u64::from_ne_bytes(info[at..at + 8].try_into().unwrap_or_default());
    field(0) == meta.dev() && field(8) == meta.ino()
}

/// Attaches `image` (never through a symlink) to a free loop device; the device.
pub(crate) fn attach(image: &Path) -> io::Result<Loop> {
    use std::os::unix::fs::OpenOptionsExt;
    let backing = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOFOLLOW)
        .open(image)?;
    let control = open_control()?;
    for _ in 0..FREE_ATTEMPTS {
        // SAFETY: LOOP_CTL_GET_FREE takes no argument and returns a loop number.
        let n = check(unsafe { ioctl(control.as_raw_fd(), LOOP_CTL_GET_FREE) })?;
        let (device, lo) = open_loop(n.unsigned_abs())?;
        // SAFETY: LOOP_SET_FD takes the backing file's descriptor by value.
        let rc = unsafe {
            ioctl(
                device.as_raw_fd(),
                LOOP_SET_FD,
                c_ulong::from(backing.as_raw_fd().unsigned_abs()),
            )
        };
        match check(rc) {
            Ok(_) => return Ok(lo),
            // Another process took it between the two calls.
            Err(e) if e.raw_os_error() == Some(EBUSY) => continue,
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other(format!(
        "no free loop device after {FREE_ATTEMPTS} tries"
    )))
}

/// Opens `/dev/loop-control`, making its node first where `/dev` lacks it (a container
/// that is let use it, but not given it).
fn open_control() -> io::Result<File> {
    let path = Path::new("/dev/loop-control");
    if let Err(e) = make_node(path, S_IFCHR, makedev(LOOP_CONTROL.0, LOOP_CONTROL.1))
        && e.kind() != io::ErrorKind::AlreadyExists
    {
        return Err(e);
    }
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
}

/// Detaches loop `lo` if it is still backed by `image` (checked on the descriptor it is
/// detached through, so a loop device freed and taken by another file meanwhile is left
/// alone). One still in use (a mount not yet let go) is detached by the kernel once its
/// last user closes it; one detached already is success.
pub(crate) fn detach_if_backed_by(lo: Loop, image: &Path) -> io::Result<()> {
    let meta = match std::fs::symlink_metadata(image) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    let (device, _) = match open_loop(lo.number) {
        Ok(x) => x,
        Err(e) if e.kind() == io::ErrorKind::NotFound || e.raw_os_error() == Some(ENXIO) => {
            return Ok(());
        }
        Err(e) => return Err(e),
    };
    if !backed_by(&device, &meta) {
        return Ok(());
    }
    // SAFETY: LOOP_CLR_FD takes no argument.
    match check(unsafe { ioctl(device.as_raw_fd(), LOOP_CLR_FD, 0 as c_ulong) }) {
        Err(e) if e.raw_os_error() == Some(ENXIO) => Ok(()),
        other => other.map(|_| ()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn makedev_is_glibcs() {
        assert_eq!(makedev(7, 3), 0x703);
        assert_eq!(makedev(259, 0), 0x10300);
        assert_eq!(makedev(7, 300), 1_050_412);
    }
}
