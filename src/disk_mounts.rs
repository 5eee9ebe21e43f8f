//! The live disks of a node's VMs, as a tree on the host. Each VM's container sees its
//! folder `<vms>/<vm>` at `/warden-cpi-dev`, so what is made or removed there appears in
//! (or leaves) the running VM at once:
//! - a disk is a block device node `<vms>/<vm>/<disk>` of a loop device over the disk's
//!   image file (`<volumes>/<disk>/_data/moltencore-disk.img`), which the agent mounts
//!   and migrates like any IaaS disk;
//! - VMs made before disks were block devices have bind mounts of the volume's folder
//!   there instead (`<vms>` is a shared mount and each VM's folder a slave of it); those
//!   are still listed, unbound and bound again at boot, but no new ones are made.
//!
//! Two programs use this file: `cpi node-prep disk-mounts` (at boot, before Docker: the
//! tree made shared, the binds a reboot dropped made again) and the node's mounter, the
//! static helper `mc-mounter` (`mounter/main.rs`, built from this file alone, so it uses
//! nothing but std) that the CPI runs `exec` in to attach and detach disks.

use std::collections::BTreeSet;
use std::ffi::{CString, c_char, c_int, c_ulong, c_void};
use std::io;
use std::os::unix::fs::{FileExt, FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::image_copy;
use crate::loop_device;

unsafe extern "C" {
    fn mount(
        source: *const c_char,
        target: *const c_char,
        fstype: *const c_char,
        flags: c_ulong,
        data: *const c_void,
    ) -> c_int;
    fn umount2(target: *const c_char, flags: c_int) -> c_int;
}

const MS_BIND: c_ulong = 4096;
const MS_REC: c_ulong = 16384;
const MS_SHARED: c_ulong = 1 << 20;
const MNT_DETACH: c_int = 2;
const UMOUNT_NOFOLLOW: c_int = 8;
const MS_RDONLY: c_ulong = 1;
const MS_NOSUID: c_ulong = 2;
const MS_NODEV: c_ulong = 4;
const MS_REMOUNT: c_ulong = 32;
const EBUSY: i32 = 16;

/// The longest VM or disk cid accepted as a directory name.
const MAX_NAME: usize = 128;

/// Whether `name` may be a directory of the tree: a cid as the CPI makes them
/// (`[a-z0-9-]`, not starting with `-`), so no path can climb out of it.
pub(crate) fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME
        && !name.starts_with('-')
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
}

fn checked(name: &str, what: &str) -> io::Result<()> {
    if valid_name(name) {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "not a {what} cid: {:?}",
                name.chars().take(40).collect::<String>()
            ),
        ))
    }
}

fn c_path(p: &Path) -> io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path with a NUL byte"))
}

fn sys_mount(source: &Path, target: &Path, flags: c_ulong) -> io::Result<()> {
    let (s, t) = (c_path(source)?, c_path(target)?);
    // SAFETY: both strings are NUL-terminated and outlive the call; no fstype or data.
    let rc = unsafe {
        mount(
            s.as_ptr(),
            t.as_ptr(),
            std::ptr::null(),
            flags,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unmounts `target`; a mount still busy in this namespace is detached lazily (the VM's
/// own bind of it, if any, keeps working until the VM lets go).
fn sys_umount(target: &Path) -> io::Result<()> {
    let t = c_path(target)?;
    // SAFETY: a NUL-terminated path that outlives the call.
    if unsafe { umount2(t.as_ptr(), UMOUNT_NOFOLLOW) } == 0 {
        return Ok(());
    }
    let e = io::Error::last_os_error();
    if e.raw_os_error() != Some(EBUSY) {
        return Err(e);
    }
    // SAFETY: as above.
    if unsafe { umount2(t.as_ptr(), MNT_DETACH | UMOUNT_NOFOLLOW) } == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The mount points of this mount namespace (field 5 of `/proc/self/mountinfo`, with the
/// kernel's octal escapes undone).
pub(crate) fn mount_points() -> io::Result<BTreeSet<PathBuf>> {
    let info = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|p| PathBuf::from(unescape(p)))
        .collect())
}

/// A field of `/proc/self/mountinfo` with the kernel's octal escapes (`\\040`) undone.
pub(crate) fn unescape(field: &str) -> String {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let octal = b
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (b[i], octal) {
            (b'\\', Some(d)) => {
                out.push((d[0] - b'0') * 64 + (d[1] - b'0') * 8 + (d[2] - b'0'));
                i += 4;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Makes `dir` a shared mount (binding it onto itself first when it is no mount point),
/// so mounts below it propagate to the VMs' slaves; whether it had to be bound.
pub(crate) fn make_shared(dir: &Path) -> io::Result<bool> {
    std::fs::create_dir_all(dir)?;
    let dir = dir.canonicalize()?;
    let bound = !mount_points()?.contains(&dir);
    if bound {
        sys_mount(&dir, &dir, MS_BIND)?;
    }
    sys_mount(Path::new("none"), &dir, MS_SHARED | MS_REC)?;
    Ok(bound)
}

/// What [`DiskMounts::bind`] found.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Bound {
    /// The bind was made.
    Made,
    /// The disk was bound there already.
    Already,
}

/// The file in a disk's volume that holds its filesystem (an ext4 image, sparse, of the
/// disk's size).
pub const IMAGE_FILE: &str = "moltencore-disk.img";
/// What a record holds for a block-device disk (an empty one is a bound folder).
const BLOCK: &[u8] = b"block";
/// What a record holds for a VM's sized ephemeral disk: a block device like a persistent
/// disk's (its image in the volume `<vm>-ephemeral`), which the VM's start script mounts on
/// `/var/vcap/data`; never listed among the VM's persistent disks.
const EPHEMERAL: &[u8] = b"ephemeral";
/// The suffix of a VM's ephemeral volume (`<vm>-ephemeral`), which is also the name of its
/// device node in the VM's folder.
const EPHEMERAL_SUFFIX: &str = "-ephemeral";
/// Where the files of a disk kept as a folder (by an earlier version) wait while they are
/// copied into its new image: `<volume>/_data/.moltencore-folder`. The VM that copies them
/// sees them at `<vms>/<vm>/.folder-<disk>` (a bind), until [`DiskMounts::settle`].
const FOLDER: &str = ".moltencore-folder";
/// The staged folder once its files are in the image, while it is removed.
const COPIED: &str = ".moltencore-folder.copied";
/// The staged folder while it is made.
const STAGING: &str = ".moltencore-folder.new";

/// What [`DiskMounts::attach`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Attached {
    /// Whether the device node was made or was there already.
    pub(crate) node: Bound,
    /// Whether the image holds a filesystem (an ext2/3/4 superblock); a new disk does not,
    /// and is formatted by the VM. An image whose folder is still to be copied counts as
    /// not formatted (a copy cut short is made again on a fresh filesystem).
    pub(crate) formatted: bool,
    /// Whether the disk's files kept as a folder wait to be copied into the image, and
    /// are seen by the VM at `.folder-<disk>` of its folder.
    pub(crate) folder: bool,
    /// Whether its filesystem is smaller than its image (grown by resize_disk), and is to
    /// be grown by the VM before it is mounted.
    pub(crate) grow: bool,
}

/// What [`DiskMounts::grow`] did.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Grown {
    /// The disk has no image yet (never attached): the image is made of the recorded size.
    NoImage,
    /// The image is of the size (its filesystem grows at the next attach).
    Image,
}

/// What [`DiskMounts::remount_all`] did.
#[derive(Debug, Default)]
pub(crate) struct Remounted {
    /// `(vm, disk)` put back: loop device and node made again (or the folder bound again).
    pub(crate) made: Vec<(String, String)>,
    /// `(vm, disk)` whose volume or image is gone: left out (the VM's start waits for it,
    /// then starts without its store, and the reboot's health gate names it).
    pub(crate) missing: Vec<(String, String)>,
    /// `(vm, disk, why)` that could not be put back; the others were still tried.
    pub(crate) failed: Vec<(String, String, String)>,
}

/// Where the tree records which disk is bound in which VM (`<vms>/.bound/<vm>/<disk>`, an
/// empty file). Only the host and the mounter see it: a VM sees its own folder alone, so
/// nothing a VM makes there is ever bound again at boot.
const BOUND: &str = ".bound";

/// Rounds of unmounting one mount point (binds stacked by calls side by side).
const UNMOUNT_ROUNDS: usize = 16;

// Linux x86_64 open(2) flags (std has no names for them).
const O_DIRECTORY: i32 = 0o200000;
const O_NOFOLLOW: i32 = 0o400000;
const O_NONBLOCK: i32 = 0o4000;
const O_PATH: i32 = 0o10000000;

/// The tree of one node: `vms` (the shared directory) and Docker's `volumes` directory.
pub(crate) struct DiskMounts {
    vms: PathBuf,
    volumes: PathBuf,
}

impl DiskMounts {
    /// The tree at `vms` over the volumes in `volumes` (`vms` must exist).
    pub(crate) fn new(vms: &Path, volumes: &Path) -> io::Result<DiskMounts> {
        Ok(DiskMounts {
            vms: vms.canonicalize()?,
            volumes: volumes.to_path_buf(),
        })
    }

    fn target(&self, vm: &str, disk: &str) -> io::Result<PathBuf> {
        checked(vm, "VM")?;
        checked(disk, "disk")?;
        Ok(self.vms.join(vm).join(disk))
    }

    fn source(&self, disk: &str) -> PathBuf {
        self.volumes.join(disk).join("_data")
    }

    fn marker(&self, vm: &str, disk: &str) -> PathBuf {
        self.vms.join(BOUND).join(vm).join(disk)
    }

    fn record(&self, vm: &str, disk: &str, kind: &[u8]) -> io::Result<()> {
        let marker = self.marker(vm, disk);
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(marker, kind)
    }

    fn image(&self, disk: &str) -> PathBuf {
        self.source(disk).join(IMAGE_FILE)
    }

    /// Makes `disk` a block device in `vm`'s folder: its image (made, sparse, of
    /// `size_mib` when the volume is still empty) attached to a loop device, whose node is
    /// `<vms>/<vm>/<disk>`; recorded for the next boot.
    pub(crate) fn attach(&self, vm: &str, disk: &str, size_mib: u64) -> io::Result<Attached> {
        let target = self.target(vm, disk)?;
        let _lock = self.lock()?;
        let data = self.source(disk);
        if !data.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("disk {disk} has no volume on this node"),
            ));
        }
        if let Some(other) = self.block_records(disk)?.into_iter().find(|v| v != vm) {
            return Err(io::Error::other(format!(
                "disk {disk} is in VM {other} on this node"
            )));
        }
        let image = self.image(disk);
        let folder = stage_folder(&data, &image)?;
        ensure_image(&data, &image, size_mib, folder)?;
        let node = self.place_image(vm, disk, &target, BLOCK)?;
        if folder {
            let view = self.folder_view(vm, disk);
            if !mount_points()?.contains(&view) {
                make_dir(&view)?;
                mount_onto_dir(&data.join(FOLDER), &view)?;
                // The VM only reads it: read-only, no setuid, no devices.
                let flags = MS_BIND | MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV;
                sys_mount(Path::new("none"), &view, flags)?;
            }
        }
        let formatted = !folder && has_filesystem(&image)?;
        Ok(Attached {
            node,
            formatted,
            folder,
            grow: formatted && needs_grow(&image)?,
        })
    }

    /// Records `disk` in `vm` as `kind`, attaches its image to a loop device and makes the
    /// device's node at `target`.
    fn place_image(&self, vm: &str, disk: &str, target: &Path, kind: &[u8]) -> io::Result<Bound> {
        // Recorded first: a loop device is never without the record that releases it.
        self.record(vm, disk, kind)?;
        let lo = self.loop_of(disk)?;
        std::fs::create_dir_all(self.vms.join(vm))?;
        place_node(target, lo.rdev)
    }

    /// Makes `vm`'s ephemeral disk a block device in its folder (`<vms>/<vm>/<vm>-ephemeral`):
    /// the image in its volume `<vm>-ephemeral`, made sparse of `size_mib` when the volume is
    /// still empty; recorded for the next boot. Whether the image holds a filesystem (the
    /// VM's start script formats a new one).
    pub(crate) fn attach_ephemeral(&self, vm: &str, size_mib: u64) -> io::Result<Attached> {
        let volume = format!("{vm}{EPHEMERAL_SUFFIX}");
        let target = self.target(vm, &volume)?;
        let _lock = self.lock()?;
        let data = self.source(&volume);
        if !data.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("VM {vm} has no ephemeral volume on this node"),
            ));
        }
        let image = self.image(&volume);
        ensure_image(&data, &image, size_mib, false)?;
        let node = self.place_image(vm, &volume, &target, EPHEMERAL)?;
        Ok(Attached {
            node,
            formatted: has_filesystem(&image)?,
            folder: false,
            grow: false,
        })
    }

    /// Grows `disk`'s image to `size_mib` (sparse, its data kept); the disk must be in no
    /// VM and no loop device of this node. Its filesystem is grown by the VM of its next
    /// attach (`Attached::grow`). An image larger than asked for is an error (a disk never
    /// shrinks).
    pub(crate) fn grow(&self, disk: &str, size_mib: u64) -> io::Result<Grown> {
        checked(disk, "disk")?;
        let _lock = self.lock()?;
        let data = self.source(disk);
        if !data.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("disk {disk} has no volume on this node"),
            ));
        }
        let mut held = self.bound_holders(disk)?;
        held.extend(self.block_records(disk)?);
        let image = self.image(disk);
        let loops = loop_device::loops_of(&image, &image_tail(disk))?;
        held.extend(loops.iter().map(|lo| format!("loop{}", lo.number)));
        if !held.is_empty() {
            return Err(io::Error::new(
                io::ErrorKind::ResourceBusy,
                format!("disk {disk} is held by {}", held.join(", ")),
            ));
        }
        let len = match std::fs::symlink_metadata(&image) {
            Ok(m) if m.is_file() => m.len(),
            Ok(_) => {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "its image is not a file",
                ));
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Grown::NoImage),
            Err(e) => return Err(e),
        };
        let bytes = image_bytes(size_mib)?;
        if bytes < len {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("its image holds {} MiB: a disk does not shrink", len >> 20),
            ));
        }
        if bytes > len {
            let file = open_image(&image)?;
            file.set_len(bytes)?;
            file.sync_all()?;
        }
        Ok(Grown::Image)
    }

    /// The tree's lock, held by every command that changes it: calls side by side (a
    /// retried attach beside the first, an attach beside a detach) take turns. The file is
    /// outside every VM's folder.
    fn lock(&self) -> io::Result<std::fs::File> {
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .custom_flags(O_NOFOLLOW)
            .open(self.vms.join(".lock"))?;
        file.lock()?;
        Ok(file)
    }

    /// Where `vm` sees the files of `disk` kept as a folder while it copies them.
    fn folder_view(&self, vm: &str, disk: &str) -> PathBuf {
        self.vms.join(vm).join(format!(".folder-{disk}"))
    }

    /// After `vm` copied `disk`'s folder into its image: the folder leaves the VM and the
    /// volume, which then holds the image alone.
    pub(crate) fn settle(&self, vm: &str, disk: &str) -> io::Result<()> {
        self.target(vm, disk)?;
        let _lock = self.lock()?;
        self.drop_folder_view(vm, disk)?;
        let data = self.source(disk);
        let staged = data.join(FOLDER);
        if real_dir(&staged)? {
            // One rename makes the copy final; a removal cut short leaves a tombstone,
            // never a staged folder that a later attach would copy again, partly.
            let copied = data.join(COPIED);
            std::fs::rename(&staged, &copied)?;
            remove_unmounted_tree(&copied)?;
        }
        Ok(())
    }

    /// Unmounts and removes `vm`'s view of `disk`'s folder, if any.
    fn drop_folder_view(&self, vm: &str, disk: &str) -> io::Result<()> {
        let view = self.folder_view(vm, disk);
        for _ in 0..UNMOUNT_ROUNDS {
            if !mount_points()?.contains(&view) {
                break;
            }
            sys_umount(&view)?;
        }
        match std::fs::remove_dir(&view) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    /// The size of `disk`'s image in bytes; `None` while it has none (never attached).
    pub(crate) fn image_size(&self, disk: &str) -> io::Result<Option<u64>> {
        checked(disk, "disk")?;
        match std::fs::symlink_metadata(self.image(disk)) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Copies `disk`'s image into the volume `to` of this node (a snapshot's, new and
    /// empty) as its image, hole for hole, read back before it takes the image's name.
    pub(crate) fn copy_image(
        &self,
        disk: &str,
        to: &str,
        progress: &mut dyn FnMut(u64),
    ) -> io::Result<image_copy::Copied> {
        checked(disk, "disk")?;
        checked(to, "volume")?;
        let data = self.source(to);
        if !data.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::NotFound,
                format!("volume {to} is not on this node"),
            ));
        }
        if !volume_entries(&data)?.is_empty() || data.join(IMAGE_FILE).exists() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("volume {to} is not empty"),
            ));
        }
        let from = {
            // Checked under the tree's lock (no first attach is staging a folder disk's
            // files meanwhile); the copy reads the opened image after it.
            let _lock = self.lock()?;
            let source = self.source(disk);
            if !volume_entries(&source)?.is_empty() || has_staged_folder(&source)? {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "its volume holds files besides its image",
                ));
            }
            let file = std::fs::OpenOptions::new()
                .read(true)
                .custom_flags(O_NOFOLLOW | O_NONBLOCK)
                .open(self.image(disk))?;
            if !file.metadata()?.is_file() {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "its image is not a file",
                ));
            }
            file
        };
        let (partial, copy) = new_partial_image(&data)?;
        let copied = image_copy::copy(&from, &copy, progress).and_then(|c| {
            std::fs::rename(&partial, data.join(IMAGE_FILE))?;
            Ok(c)
        });
        if copied.is_err() {
            let _ = std::fs::remove_file(&partial);
        }
        copied
    }

    /// The loop device of `disk`'s image, attached when it has none.
    fn loop_of(&self, disk: &str) -> io::Result<loop_device::Loop> {
        let image = self.image(disk);
        match loop_device::loops_of(&image, &image_tail(disk))?.first() {
            Some(lo) => Ok(*lo),
            None => loop_device::attach(&image),
        }
    }

    /// The VMs whose records hold `disk` as a block device.
    fn block_records(&self, disk: &str) -> io::Result<Vec<String>> {
        let records = self.vms.join(BOUND);
        if !records.is_dir() {
            return Ok(Vec::new());
        }
        Ok(names_in(&records, std::fs::FileType::is_dir)?
            .into_iter()
            .filter(|vm| self.is_block(vm, disk))
            .collect())
    }

    fn is_block(&self, vm: &str, disk: &str) -> bool {
        std::fs::read(self.marker(vm, disk)).is_ok_and(|k| k == BLOCK)
    }

    /// Whether the record of `disk` in `vm` is a loop device over an image: a persistent
    /// disk's block device or the VM's sized ephemeral disk.
    fn is_image_record(&self, vm: &str, disk: &str) -> bool {
        std::fs::read(self.marker(vm, disk)).is_ok_and(|k| k == BLOCK || k == EPHEMERAL)
    }

    /// Detaches the loop devices of `disk`'s image once no VM has the disk.
    fn release_loops(&self, disk: &str) -> io::Result<()> {
        if !self.block_records(disk)?.is_empty() {
            return Ok(());
        }
        let image = self.image(disk);
        for lo in loop_device::loops_of(&image, &image_tail(disk))? {
            loop_device::detach_if_backed_by(lo, &image)?;
        }
        Ok(())
    }

    /// Removes `disk` from `vm`: its device node (or, for a bound folder, every stacked
    /// bind and the mount point) and its record; the loop device goes with the last VM
    /// that had the disk. Whether it was there.
    pub(crate) fn unbind(&self, vm: &str, disk: &str) -> io::Result<bool> {
        self.target(vm, disk)?;
        let _lock = self.lock()?;
        self.unbind_locked(vm, disk)
    }

    fn unbind_locked(&self, vm: &str, disk: &str) -> io::Result<bool> {
        let target = self.target(vm, disk)?;
        let mut was = false;
        for _ in 0..UNMOUNT_ROUNDS {
            if !mount_points()?.contains(&target) {
                break;
            }
            was = true;
            sys_umount(&target)?;
        }
        if mount_points()?.contains(&target) {
            return Err(io::Error::other(format!(
                "{} is still a mount point after {UNMOUNT_ROUNDS} unmounts",
                target.display()
            )));
        }
        was |= self.is_image_record(vm, disk);
        self.drop_folder_view(vm, disk)?;
        match std::fs::symlink_metadata(&target) {
            Ok(m) if m.is_dir() => remove_unmounted_tree(&target)?,
            Ok(_) => std::fs::remove_file(&target)?,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        match std::fs::remove_file(self.marker(vm, disk)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        self.release_loops(disk)?;
        Ok(was)
    }

    /// The disks of `vm`: recorded block devices and bound folders.
    pub(crate) fn disks_of(&self, vm: &str) -> io::Result<Vec<String>> {
        checked(vm, "VM")?;
        let dir = self.vms.join(vm);
        let mut disks: Vec<String> = mount_points()?
            .iter()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter_map(|p| p.file_name()?.to_str().map(str::to_string))
            .filter(|name| valid_name(name))
            .collect();
        let records = self.vms.join(BOUND).join(vm);
        if records.is_dir() {
            disks.extend(
                names_in(&records, std::fs::FileType::is_file)?
                    .into_iter()
                    .filter(|disk| self.is_block(vm, disk)),
            );
        }
        disks.sort();
        disks.dedup();
        Ok(disks)
    }

    /// What holds `disk` on this node: the VMs that have it, or else a loop device of its
    /// image that a mount has not let go yet (`loopN`).
    pub(crate) fn holders(&self, disk: &str) -> io::Result<Vec<String>> {
        let mut vms = self.bound_holders(disk)?;
        vms.extend(self.block_records(disk)?);
        vms.sort();
        vms.dedup();
        if vms.is_empty() {
            let loops = loop_device::loops_of(&self.image(disk), &image_tail(disk))?;
            vms.extend(loops.iter().map(|lo| format!("loop{}", lo.number)));
        }
        Ok(vms)
    }

    /// The VMs that have `disk`'s folder bound.
    fn bound_holders(&self, disk: &str) -> io::Result<Vec<String>> {
        checked(disk, "disk")?;
        let mut vms: Vec<String> = mount_points()?
            .iter()
            .filter(|p| p.file_name().and_then(|n| n.to_str()) == Some(disk))
            .filter_map(|p| {
                let vm_dir = p.parent()?;
                if vm_dir.parent()? != self.vms.as_path() {
                    return None;
                }
                vm_dir.file_name()?.to_str().map(str::to_string)
            })
            .collect();
        vms.dedup();
        Ok(vms)
    }

    /// Removes every disk of `vm`, its directory and its records (the VM is gone); the
    /// disks removed.
    pub(crate) fn forget(&self, vm: &str) -> io::Result<Vec<String>> {
        let mut disks = self.disks_of(vm)?;
        let ephemeral = format!("{vm}{EPHEMERAL_SUFFIX}");
        if std::fs::symlink_metadata(self.marker(vm, &ephemeral)).is_ok() {
            disks.push(ephemeral);
        }
        let _lock = self.lock()?;
        let dir = self.vms.join(vm);
        // The views of folders a conversion left (a copy cut short) go first.
        let views: Vec<PathBuf> = mount_points()?
            .into_iter()
            .filter(|p| p.parent() == Some(dir.as_path()))
            .filter(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(".folder-"))
            })
            .collect();
        for view in views {
            for _ in 0..UNMOUNT_ROUNDS {
                if !mount_points()?.contains(&view) {
                    break;
                }
                sys_umount(&view)?;
            }
        }
        for disk in &disks {
            self.unbind_locked(vm, disk)?;
        }
        if dir.exists() {
            remove_unmounted_tree(&dir)?;
        }
        let records = self.vms.join(BOUND).join(vm);
        if records.exists() {
            std::fs::remove_dir_all(records)?;
        }
        Ok(disks)
    }

    /// Makes again every recorded disk that a reboot took (the loop device and its node,
    /// or the bind). One that fails does not keep the others from being tried.
    pub(crate) fn remount_all(&self) -> io::Result<Remounted> {
        let _lock = self.lock()?;
        let mut done = Remounted::default();
        let records = self.vms.join(BOUND);
        if !records.is_dir() {
            return Ok(done);
        }
        let mounted = mount_points()?;
        for vm in names_in(&records, std::fs::FileType::is_dir)? {
            for disk in names_in(&records.join(&vm), std::fs::FileType::is_file)? {
                let target = self.vms.join(&vm).join(&disk);
                if self.is_image_record(&vm, &disk) {
                    let is_image = std::fs::symlink_metadata(self.image(&disk))
                        .is_ok_and(|m| m.file_type().is_file());
                    let placed = if is_image {
                        std::fs::create_dir_all(self.vms.join(&vm))
                            .and_then(|()| self.loop_of(&disk))
                            .and_then(|lo| place_node(&target, lo.rdev))
                    } else {
                        Err(io::Error::from(io::ErrorKind::NotFound))
                    };
                    match placed {
                        Ok(Bound::Made) => done.made.push((vm.clone(), disk)),
                        Ok(Bound::Already) => {}
                        Err(e) => {
                            // A node from before the reboot may name another disk's loop
                            // device now: it goes.
                            remove_block_node(&target)?;
                            if is_image {
                                done.failed.push((vm.clone(), disk, e.to_string()));
                            } else {
                                done.missing.push((vm.clone(), disk));
                            }
                        }
                    }
                    continue;
                }
                if mounted.contains(&target) {
                    continue;
                }
                if !self.source(&disk).is_dir() {
                    done.missing.push((vm.clone(), disk));
                    continue;
                }
                let bound = std::fs::create_dir_all(self.vms.join(&vm))
                    .and_then(|()| make_dir(&target))
                    .and_then(|_| mount_onto_dir(&self.source(&disk), &target));
                match bound {
                    Ok(()) => done.made.push((vm.clone(), disk)),
                    Err(e) => done.failed.push((vm.clone(), disk, e.to_string())),
                }
            }
        }
        Ok(done)
    }
}

/// The tail of `disk`'s image path that sysfs shows for its loop device, whatever the
/// mount namespace that attached it saw of Docker's root.
fn image_tail(disk: &str) -> String {
    format!("/{disk}/_data/{IMAGE_FILE}")
}

/// The largest image in MiB: its bytes fit a file's length (`i64`). The CPI's `Mib::MAX`
/// (`src/mib.rs`) is the same bound; this file is std only, as the mounter is built.
pub(crate) const MAX_IMAGE_MIB: u64 = i64::MAX.cast_unsigned() >> 20;

/// The bytes of an image of `size_mib`; refused when 0 or when they would not fit a
/// file's length.
fn image_bytes(size_mib: u64) -> io::Result<u64> {
    if size_mib == 0 || size_mib > MAX_IMAGE_MIB {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("a disk size of {size_mib} MiB is 0 or more than {MAX_IMAGE_MIB} MiB"),
        ));
    }
    Ok(size_mib << 20)
}

/// Makes `image` (sparse, `size_mib`) when the volume folder `data` is still empty. A
/// folder holding files but no image is a disk made as a folder by an earlier version.
fn ensure_image(data: &Path, image: &Path, size_mib: u64, folder: bool) -> io::Result<()> {
    match std::fs::symlink_metadata(image) {
        // An image a folder is copied into is formatted anew: it takes the disk's size.
        Ok(m) if m.is_file() && folder && m.len() < image_bytes(size_mib)? => {
            return open_image(image)?.set_len(image_bytes(size_mib)?);
        }
        Ok(m) if m.is_file() => return Ok(()),
        Ok(_) => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{} is not a file", image.display()),
            ));
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    if !volume_entries(data)?.is_empty() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "its volume holds files besides its image",
        ));
    }
    let bytes = image_bytes(size_mib)?;
    // Made whole under another name first: a call side by side never sees it half made.
    let (new, file) = new_partial_image(data)?;
    file.set_len(bytes)?;
    let linked = std::fs::hard_link(&new, image);
    std::fs::remove_file(&new)?;
    match linked {
        Err(e) if e.kind() != io::ErrorKind::AlreadyExists => Err(e),
        _ => Ok(()),
    }
}

/// Whether the volume folder `data` holds a folder disk's staged files (or files being
/// staged): the disk's data until the VM has copied them into its image.
fn has_staged_folder(data: &Path) -> io::Result<bool> {
    for entry in std::fs::read_dir(data)? {
        if entry?.file_name().to_string_lossy().starts_with(FOLDER) {
            return Ok(true);
        }
    }
    Ok(false)
}

/// A new, empty image file in the volume folder `data` under the name of an image being
/// made (`volume_entries` does not count it), read-write; one a crashed call of the same
/// process id left is replaced. Never opened through anything found there (O_EXCL does
/// not follow a symlink).
fn new_partial_image(data: &Path) -> io::Result<(PathBuf, std::fs::File)> {
    let partial = data.join(format!(".{IMAGE_FILE}.{}", std::process::id()));
    match std::fs::remove_file(&partial) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
        _ => {}
    }
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(&partial)?;
    Ok((partial, file))
}

/// The entries of the volume folder `data` that are the disk's files: all but its image,
/// an image being made and the staged folder (or one being made).
fn volume_entries(data: &Path) -> io::Result<Vec<std::ffi::OsString>> {
    let partial = format!(".{IMAGE_FILE}.");
    let mut names = Vec::new();
    for entry in std::fs::read_dir(data)? {
        let name = entry?.file_name();
        let text = name.to_string_lossy();
        if text != IMAGE_FILE && !text.starts_with(FOLDER) && !text.starts_with(&partial) {
            names.push(name);
        }
    }
    Ok(names)
}

/// For a disk kept as a folder (files in its volume, no image yet), moves its files into
/// `<data>/.moltencore-folder` (with the folder's own owner and mode), where they stay
/// until they are copied into the image; a staging cut short goes on. Whether the disk
/// has staged files.
fn stage_folder(data: &Path, image: &Path) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    // A VM of an earlier version wrote this folder: nothing here is followed.
    let copied = data.join(COPIED);
    if real_dir(&copied)? {
        remove_unmounted_tree(&copied)?;
    }
    let staged = data.join(FOLDER);
    let is_staged = real_dir(&staged)?;
    let has_image = std::fs::symlink_metadata(image).is_ok();
    if has_image && !is_staged {
        return Ok(false);
    }
    let files = volume_entries(data)?;
    if files.is_empty() && !is_staged {
        return Ok(false);
    }
    if !is_staged {
        let own = std::fs::symlink_metadata(data)?;
        let new = data.join(STAGING);
        if !real_dir(&new)? {
            std::fs::create_dir(&new)?;
        }
        std::os::unix::fs::lchown(&new, Some(own.uid()), Some(own.gid()))?;
        std::fs::set_permissions(&new, std::fs::Permissions::from_mode(own.mode() & 0o7777))?;
        std::fs::rename(&new, &staged)?;
    }
    for name in files {
        std::fs::rename(data.join(&name), staged.join(&name))?;
    }
    Ok(true)
}

/// Whether `path` is a real directory; something else there (a symlink a VM planted) is
/// an error, nothing there is `false`.
fn real_dir(path: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => Ok(true),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("{} is not a folder", path.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

/// Opens the image `image` read-write, never through a symlink.
pub(crate) fn open_image(image: &Path) -> io::Result<std::fs::File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(O_NOFOLLOW)
        .open(image)
}

/// Removes the block device node `target` if there is one.
fn remove_block_node(target: &Path) -> io::Result<()> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_block_device() => std::fs::remove_file(target),
        _ => Ok(()),
    }
}

/// The size of an ext2/3/4 filesystem, from its superblock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct FsSize {
    blocks: u64,
    block_size: u64,
}

impl FsSize {
    fn bytes(self) -> u64 {
        self.blocks.saturating_mul(self.block_size)
    }
}

/// The ext superblock's offset in the image, and the fields read from it.
const SUPERBLOCK: u64 = 1024;
const SB_MAGIC: usize = 56;
const SB_BLOCKS_LO: usize = 4;
const SB_LOG_BLOCK_SIZE: usize = 24;
const SB_INCOMPAT: usize = 0x60;
const SB_BLOCKS_HI: usize = 0x150;
const INCOMPAT_64BIT: u32 = 0x80;

/// The size of the ext filesystem in `file`, `None` when it holds none.
fn ext4_size(file: &std::fs::File) -> io::Result<Option<FsSize>> {
    let mut sb = [0u8; 1024];
    match file.read_exact_at(&mut sb, SUPERBLOCK) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    Ok(superblock_size(&sb))
}

/// The filesystem size a superblock says, `None` when it is no ext superblock.
fn superblock_size(sb: &[u8; 1024]) -> Option<FsSize> {
    let u32_at = |at: usize| u32::from_le_bytes([sb[at], sb[at + 1], sb[at + 2], sb[at + 3]]);
    if sb[SB_MAGIC..SB_MAGIC + 2] != [0x53, 0xEF] {
        return None;
    }
    let log = u32_at(SB_LOG_BLOCK_SIZE);
    if log > 6 {
        return None;
    }
    let hi = if u32_at(SB_INCOMPAT) & INCOMPAT_64BIT != 0 {
        u64::from(u32_at(SB_BLOCKS_HI))
    } else {
        0
    };
    Some(FsSize {
        blocks: hi << 32 | u64::from(u32_at(SB_BLOCKS_LO)),
        block_size: 1024 << log,
    })
}

/// How much smaller than its image a filesystem may be and still count as filling it:
/// `mkfs` and `resize2fs` leave out a last block group too small for its own tables (at
/// most about 2.2 MiB with ext4's defaults). A disk grown by less keeps its filesystem.
const GROW_SLACK: u64 = 8 << 20;

/// Whether the filesystem in `image` is to be grown to fill it (the image was grown by
/// resize_disk since it was formatted).
fn needs_grow(image: &Path) -> io::Result<bool> {
    let file = open_image(image)?;
    let len = file.metadata()?.len();
    Ok(ext4_size(&file)?.is_some_and(|fs| fs.bytes().saturating_add(GROW_SLACK) < len))
}

/// Whether `image` holds an ext2/3/4 filesystem (its superblock's magic, 0xEF53 at 1080).
fn has_filesystem(image: &Path) -> io::Result<bool> {
    let mut magic = [0u8; 2];
    match open_image(image)?.read_exact_at(&mut magic, 1080) {
        Ok(()) => Ok(magic == [0x53, 0xEF]),
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(e) => Err(e),
    }
}

/// Makes `target` the block device node of `rdev`; a node of another device there (made
/// before a reboot renumbered the loop devices) is replaced, a folder is an error.
fn place_node(target: &Path, rdev: u64) -> io::Result<Bound> {
    match std::fs::symlink_metadata(target) {
        Ok(m) if m.file_type().is_block_device() && m.rdev() == rdev => return Ok(Bound::Already),
        Ok(m) if m.is_dir() => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("{} is a folder (a bound disk)", target.display()),
            ));
        }
        Ok(_) => std::fs::remove_file(target)?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    loop_device::make_block_node(target, rdev)?;
    Ok(Bound::Made)
}

/// Makes `dir` unless it is there already as a real directory; whether it was made. A
/// symlink or a file there (a VM can write its own folder) is an error, never followed.
fn make_dir(dir: &Path) -> io::Result<bool> {
    match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => Ok(false),
        Ok(_) => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a directory", dir.display()),
        )),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            std::fs::create_dir(dir)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Binds `source` onto the directory `target` through a handle opened without following
/// symlinks, so that nothing swapped in at `target` meanwhile is followed.
fn mount_onto_dir(source: &Path, target: &Path) -> io::Result<()> {
    use std::os::unix::io::AsRawFd;
    let handle = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(O_PATH | O_NOFOLLOW | O_DIRECTORY)
        .open(target)?;
    let fd_path = PathBuf::from(format!("/proc/self/fd/{}", handle.as_raw_fd()));
    sys_mount(source, &fd_path, MS_BIND)
}

/// Removes `dir` and what is in it, after checking that no mount point is below it (a bind
/// there would be removed through).
fn remove_unmounted_tree(dir: &Path) -> io::Result<()> {
    if mount_points()?.iter().any(|p| p.starts_with(dir)) {
        return Err(io::Error::other(format!(
            "{} still holds a mount point",
            dir.display()
        )));
    }
    std::fs::remove_dir_all(dir)
}

/// The names of the entries in `dir` that are valid cids and of the kind `wanted`
/// (anything else is not the tree's).
fn names_in(dir: &Path, wanted: fn(&std::fs::FileType) -> bool) -> io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if wanted(&entry.file_type()?)
            && let Some(name) = entry.file_name().to_str()
            && valid_name(name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_cids_are_names() {
        assert!(valid_name("vm-0f3c"));
        assert!(valid_name("disk-1"));
        for bad in ["", "..", "a/b", "-x", "Vm", "a b", &"a".repeat(129)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn a_folder_disk_is_staged_then_its_image_made_beside() {
        let data = tempfile::tempdir().unwrap();
        let d = data.path();
        let image = d.join(IMAGE_FILE);
        // A fresh volume: no staging, an image of the size.
        assert!(!stage_folder(d, &image).unwrap());
        ensure_image(d, &image, 3, false).unwrap();
        assert_eq!(std::fs::metadata(&image).unwrap().len(), 3 << 20);
        assert!(!has_filesystem(&image).unwrap());
        assert!(
            !stage_folder(d, &image).unwrap(),
            "an image disk is left alone"
        );

        // A folder disk: its files move below the staged folder, the image comes beside.
        let folder = tempfile::tempdir().unwrap();
        let f = folder.path();
        std::fs::create_dir(f.join("job")).unwrap();
        std::fs::write(f.join("job/data"), "kept").unwrap();
        std::os::unix::fs::symlink("job/data", f.join("link")).unwrap();
        let image = f.join(IMAGE_FILE);
        assert!(stage_folder(f, &image).unwrap());
        assert_eq!(
            std::fs::read_to_string(f.join(FOLDER).join("job/data")).unwrap(),
            "kept"
        );
        assert!(f.join(FOLDER).join("link").is_symlink());
        ensure_image(f, &image, 1, true).unwrap();
        // Until it is settled, every attach finds it staged.
        assert!(stage_folder(f, &image).unwrap());
        assert_eq!(volume_entries(f).unwrap(), Vec::<std::ffi::OsString>::new());

        // Files beside an image are never taken for a folder disk; an image that is no
        // file is refused.
        std::fs::remove_dir_all(f.join(FOLDER)).unwrap();
        std::fs::write(f.join("stray"), "x").unwrap();
        assert!(!stage_folder(f, &image).unwrap());
        let other = tempfile::tempdir().unwrap();
        std::fs::write(other.path().join("stray"), "x").unwrap();
        std::fs::create_dir(other.path().join(IMAGE_FILE)).unwrap();
        let e = ensure_image(other.path(), &other.path().join(IMAGE_FILE), 1, false).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidData);
    }

    /// An ext superblock (at 1024 of an image) saying `blocks` of `1024 << log`, 64-bit
    /// when `hi` is some.
    fn superblock(blocks_lo: u32, log: u32, hi: Option<u32>) -> [u8; 1024] {
        let mut sb = [0u8; 1024];
        sb[SB_MAGIC..SB_MAGIC + 2].copy_from_slice(&[0x53, 0xEF]);
        sb[SB_BLOCKS_LO..SB_BLOCKS_LO + 4].copy_from_slice(&blocks_lo.to_le_bytes());
        sb[SB_LOG_BLOCK_SIZE..SB_LOG_BLOCK_SIZE + 4].copy_from_slice(&log.to_le_bytes());
        if let Some(hi) = hi {
            sb[SB_INCOMPAT..SB_INCOMPAT + 4].copy_from_slice(&INCOMPAT_64BIT.to_le_bytes());
            sb[SB_BLOCKS_HI..SB_BLOCKS_HI + 4].copy_from_slice(&hi.to_le_bytes());
        }
        sb
    }

    #[test]
    fn a_superblock_says_the_filesystem_s_size() {
        let size = superblock_size(&superblock(262_144, 2, None)).unwrap();
        assert_eq!((size.block_size, size.bytes()), (4096, 1 << 30));
        let big = superblock_size(&superblock(0, 2, Some(1))).unwrap();
        assert_eq!(big.blocks, 1 << 32);
        // The high word counts only with the 64bit feature.
        let mut sb = superblock(8, 0, Some(1));
        sb[SB_INCOMPAT] = 0;
        assert_eq!(superblock_size(&sb).unwrap().bytes(), 8 * 1024);
        assert_eq!(superblock_size(&[0u8; 1024]), None);
        assert_eq!(superblock_size(&superblock(1, 40, None)), None);
    }

    #[test]
    fn a_grown_image_asks_for_its_filesystem_to_grow() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join(IMAGE_FILE);
        let mut bytes = vec![0u8; 2048];
        bytes[1024..].copy_from_slice(&superblock(16 << 10, 0, None));
        std::fs::write(&image, &bytes).unwrap();
        let file = open_image(&image).unwrap();
        file.set_len(16 << 20).unwrap();
        assert!(!needs_grow(&image).unwrap(), "fills its image");
        file.set_len((16 << 20) + GROW_SLACK).unwrap();
        assert!(!needs_grow(&image).unwrap(), "within the slack");
        file.set_len(32 << 20).unwrap();
        assert!(needs_grow(&image).unwrap());
        std::fs::write(&image, vec![0u8; 4096]).unwrap();
        assert!(
            !needs_grow(&image).unwrap(),
            "no filesystem: formatted at attach"
        );
    }

    #[test]
    fn an_image_size_is_whole_mib_that_fit_a_file_length() {
        assert_eq!(image_bytes(1).unwrap(), 1 << 20);
        assert_eq!(
            image_bytes(MAX_IMAGE_MIB).unwrap(),
            (i64::MAX - 0xF_FFFF).cast_unsigned()
        );
        for bad in [0, MAX_IMAGE_MIB + 1, u64::MAX] {
            let e = image_bytes(bad).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
            assert!(e.to_string().contains(&bad.to_string()), "{e}");
        }
    }

    #[test]
    fn grow_extends_a_free_image_and_refuses_to_shrink() {
        let vms = tempfile::tempdir().unwrap();
        let volumes = tempfile::tempdir().unwrap();
        let tree = DiskMounts::new(vms.path(), volumes.path()).unwrap();
        assert_eq!(
            tree.grow("disk-1", 2).unwrap_err().kind(),
            io::ErrorKind::NotFound
        );
        let data = volumes.path().join("disk-1").join("_data");
        std::fs::create_dir_all(&data).unwrap();
        assert_eq!(tree.grow("disk-1", 2).unwrap(), Grown::NoImage);
        ensure_image(&data, &data.join(IMAGE_FILE), 1, false).unwrap();
        assert_eq!(tree.grow("disk-1", 3).unwrap(), Grown::Image);
        assert_eq!(tree.image_size("disk-1").unwrap(), Some(3 << 20));
        assert_eq!(tree.grow("disk-1", 3).unwrap(), Grown::Image);
        let e = tree.grow("disk-1", 2).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput, "{e}");
        assert_eq!(tree.image_size("disk-1").unwrap(), Some(3 << 20));
        // A disk a VM has (recorded) is held.
        tree.record("vm-1", "disk-1", BLOCK).unwrap();
        let e = tree.grow("disk-1", 4).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ResourceBusy, "{e}");
        // An ephemeral record is no persistent disk of the VM.
        tree.record("vm-1", "vm-1-ephemeral", EPHEMERAL).unwrap();
        assert_eq!(tree.disks_of("vm-1").unwrap(), vec!["disk-1".to_string()]);
        assert!(tree.is_image_record("vm-1", "vm-1-ephemeral"));
    }

    #[test]
    fn an_ext_superblock_is_seen() {
        let dir = tempfile::tempdir().unwrap();
        let image = dir.path().join("i");
        std::fs::write(&image, vec![0u8; 2048]).unwrap();
        assert!(!has_filesystem(&image).unwrap());
        let mut bytes = vec![0u8; 2048];
        bytes[1080] = 0x53;
        bytes[1081] = 0xEF;
        std::fs::write(&image, bytes).unwrap();
        assert!(has_filesystem(&image).unwrap());
        std::fs::write(&image, b"short").unwrap();
        assert!(!has_filesystem(&image).unwrap());
    }

    #[test]
    fn mountinfo_escapes_are_undone() {
        assert_eq!(unescape(r"/a\040b"), "/a b");
        assert_eq!(unescape(r"/tab\011x\134"), "/tab\tx\\");
        assert_eq!(unescape(r"/plain"), "/plain");
    }
}
