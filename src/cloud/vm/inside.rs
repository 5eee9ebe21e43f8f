//! What a VM's own processes see, looked at from inside it (`docker exec`): which disk
//! its `/var/vcap/store` mounts (the device, or for a disk bound as a folder the folder on
//! the node), and whether its agent runs. Docker's view of a VM (running, its IPs and mounts) stays
//! right while, inside, the store is not mounted: the reboot manager's health gate compares
//! this before and after a reboot.

use serde::{Deserialize, Serialize};

use super::agent_files::{DISK_MOUNT_ROOT, FileOwner, append_file};
use crate::docker::{DockerError, NodeDocker};
use crate::ids::{DiskCid, VmCid};

/// The probe run in the VM (`/bin/sh -c`): busybox and a full stemcell both have what it
/// uses. Prints `store=<the store's device>` (for a bound folder its root on the node;
/// empty when it is no mount) and `agent=yes|no`.
const PROBE: &str = r#"awk '$5 == "/var/vcap/store" { root = $4; for (i = 7; i < NF; i++) if ($i == "-") { src = $(i + 2); break } } END { print "store=" (root == "/" ? src : root) }' /proc/self/mountinfo
agent=no
for p in /proc/[0-9]*; do
  if [ "$(cat "$p/comm" 2>/dev/null)" = bosh-agent ]; then agent=yes; break; fi
done
echo "agent=$agent"
"#;

/// A VM as seen from inside.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inside {
    /// The disk `/var/vcap/store` mounts (its device, or the folder on the node of a
    /// bound disk), if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<String>,
    /// Whether a `bosh-agent` process runs.
    #[serde(default)]
    pub agent: bool,
}

impl Inside {
    /// What `now` lacks of what was seen `before` (the same store, a running agent).
    pub fn lacks(before: &Inside, now: &Inside) -> Vec<String> {
        let mut lacks = Vec::new();
        if let Some(store) = &before.store
            && now.store.as_ref() != Some(store)
        {
            lacks.push(format!(
                "/var/vcap/store is not a mount of its disk ({})",
                now.store.as_deref().unwrap_or("no mount")
            ));
        }
        if before.agent && !now.agent {
            lacks.push("its agent does not run".to_string());
        }
        lacks
    }

    fn parse(output: &str) -> Inside {
        let mut inside = Inside::default();
        for line in output.lines() {
            if let Some(root) = line.strip_prefix("store=") {
                inside.store = (!root.is_empty()).then(|| root.to_string());
            } else if let Some(agent) = line.strip_prefix("agent=") {
                inside.agent = agent == "yes";
            }
        }
        inside
    }
}

/// Where the running VM `cid` has disk `disk` mounted (`/var/vcap/store` after the
/// agent's `mount_disk`, ...): the mount points of its device, or of its folder on the
/// node but the hint for a bound disk. A VM that does not run has none.
pub async fn mounts_of_disk(
    docker: &NodeDocker,
    cid: &VmCid,
    disk: &DiskCid,
) -> Result<Vec<String>, DockerError> {
    let cmd = vec!["cat".to_string(), "/proc/self/mountinfo".to_string()];
    match docker.exec(cid, cmd, "reading the VM's mounts").await {
        Ok(done) => Ok(disk_mounts_in(&done.output, disk)),
        // The daemon's 409: the container is not running.
        Err(DockerError::Conflict { .. }) => Ok(Vec::new()),
        Err(e) => Err(e),
    }
}

/// The mount points in `mountinfo` of the device `<hint>` or of the folder
/// `.../<disk>/_data`, but the hint itself.
fn disk_mounts_in(mountinfo: &str, disk: &str) -> Vec<String> {
    let root = format!("/{disk}/_data");
    let hint = format!("{DISK_MOUNT_ROOT}/{disk}");
    mountinfo
        .lines()
        .filter_map(|l| {
            let (head, tail) = l.split_once(" - ")?;
            let mut fields = head.split(' ');
            let (at_root, point) = (fields.nth(3)?, fields.next()?);
            let source = tail.split(' ').nth(1).map(crate::disk_mounts::unescape);
            let point = crate::disk_mounts::unescape(point);
            let of_disk = at_root.ends_with(&root) || source.as_deref() == Some(hint.as_str());
            (of_disk && point != hint).then_some(point)
        })
        .collect()
}

/// Takes disk `disk` from every mount the running VM `cid` made of it (see
/// [`mounts_of_disk`]): the agent's `unmount_disk` on a bound disk unmounts only its hint,
/// and `/var/vcap/store` stays a mount of the disk. A mount still busy is detached lazily.
/// The mount points taken.
pub async fn unmount_disk(
    docker: &NodeDocker,
    cid: &VmCid,
    disk: &DiskCid,
) -> Result<Vec<String>, DockerError> {
    let points = mounts_of_disk(docker, cid, disk).await?;
    // Deepest first: a mount below another goes before it.
    let mut ordered = points.clone();
    ordered.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for point in &ordered {
        let plain = vec!["umount".to_string(), point.clone()];
        let done = docker
            .exec(cid, plain, "unmounting the disk in the VM")
            .await?;
        if done.code != 0 {
            let lazy = vec!["umount".to_string(), "-l".to_string(), point.clone()];
            let done = docker
                .exec(cid, lazy, "unmounting the disk in the VM")
                .await?;
            if done.code != 0 {
                return Err(DockerError::InVm {
                    node: docker.name.to_string(),
                    vm: cid.to_string(),
                    command: format!("umount -l {}", crate::echo::printable(point)),
                    code: done.code,
                    detail: crate::echo::printable_detail(done.output.trim()),
                });
            }
        }
    }
    Ok(points)
}

/// Where the CPI lists the new disks a stopped VM formats at its next start (one cid per
/// line; see [`super::start_script`]).
pub const FORMAT_AT_START: &str = "/var/vcap/bosh/moltencore-format-disks";

/// Formats the new disk `disk` in the VM `cid` with the stemcell's `mkfs.ext4`, as the
/// agent formats a new disk on any IaaS (here the agent mounts the device as it is, so the
/// CPI has it formatted once, on its first attach). A VM that does not run formats it at
/// its next start, before its agent starts.
pub async fn format_disk(
    docker: &NodeDocker,
    cid: &VmCid,
    disk: &DiskCid,
) -> Result<(), DockerError> {
    let device = format!("{DISK_MOUNT_ROOT}/{disk}");
    let cmd = vec!["mkfs.ext4".to_string(), "-F".to_string(), device.clone()];
    let done = match docker.exec(cid, cmd, "formatting the disk in the VM").await {
        Ok(done) => done,
        // The daemon's 409: the container is not running.
        Err(DockerError::Conflict { .. }) => {
            return list_at_start(docker, cid, FORMAT_AT_START, disk).await;
        }
        Err(e) => return Err(e),
    };
    if done.code == 0 {
        return Ok(());
    }
    Err(DockerError::InVm {
        node: docker.name.to_string(),
        vm: cid.to_string(),
        command: format!("mkfs.ext4 -F {device}"),
        code: done.code,
        detail: crate::echo::printable_detail(done.output.trim()),
    })
}

/// Where the CPI lists the disks a stopped VM grows at its next start, after resize_disk
/// grew their images (one cid per line; see [`super::start_script`]).
pub(crate) const GROW_AT_START: &str = "/var/vcap/bosh/moltencore-grow-disks";

/// Grows the filesystem of disk `disk` to fill its device in the VM `cid` (its image was
/// grown by resize_disk), with the stemcell's `e2fsck -f -p` and `resize2fs`, before the
/// agent mounts it. A disk the VM has mounted already is left as it is (growing a mounted
/// filesystem needs a capability VMs do not have); a VM that does not run grows it at its
/// next start.
pub(crate) async fn grow_disk(
    docker: &NodeDocker,
    cid: &VmCid,
    disk: &DiskCid,
) -> Result<(), DockerError> {
    let device = format!("{DISK_MOUNT_ROOT}/{disk}");
    let script = format!(
        "d={device}; if grep -q \" $d \" /proc/self/mountinfo; then echo mounted; exit 0; fi; \
         e2fsck -f -p $d >/dev/null 2>&1; c=$?; if [ $c -gt 1 ]; then echo \"e2fsck -f -p: exit $c\"; exit $c; fi; \
         resize2fs $d 2>&1"
    );
    let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let done = match docker
        .exec(cid, cmd, "growing the disk's filesystem in the VM")
        .await
    {
        Ok(done) => done,
        // The daemon's 409: the container is not running.
        Err(DockerError::Conflict { .. }) => {
            return list_at_start(docker, cid, GROW_AT_START, disk).await;
        }
        Err(e) => return Err(e),
    };
    if done.code == 0 {
        if done.output.trim() == "mounted" {
            tracing::warn!(
                vm = cid.as_str(),
                disk = disk.as_str(),
                "the disk is mounted in the VM: its filesystem is grown at its next attach"
            );
        }
        return Ok(());
    }
    Err(DockerError::InVm {
        node: docker.name.to_string(),
        vm: cid.to_string(),
        command: format!("e2fsck -f -p and resize2fs of {device}"),
        code: done.code,
        detail: crate::echo::printable_detail(done.output.trim()),
    })
}

/// How long the copy of a disk's folder into its image may take (it prints nothing, so
/// the node's idle timeout cannot bound it).
const COPY_LIMIT: std::time::Duration = std::time::Duration::from_secs(4 * 3600);

/// Copies the files of disk `disk` kept as a folder (seen by the running VM `cid` at
/// `/warden-cpi-dev/.folder-<disk>` while it is attached) into its new filesystem, with the
/// stemcell's `cp -a` (owners, modes, links, times, attributes as the stemcell's cp keeps
/// them), mounted at a place of its own and unmounted (flushed) after.
pub async fn copy_folder(
    docker: &NodeDocker,
    cid: &VmCid,
    disk: &DiskCid,
) -> Result<(), DockerError> {
    let device = format!("{DISK_MOUNT_ROOT}/{disk}");
    let script = format!(
        "set -e; t=/tmp/.moltencore-copy-{disk}; mkdir -p $t; mount {device} $t; \
         trap 'umount $t && rmdir $t' EXIT; cp -a {DISK_MOUNT_ROOT}/.folder-{disk}/. $t/"
    );
    let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), script];
    let deadline = std::time::Instant::now() + COPY_LIMIT;
    let doing = "copying the disk's folder in the VM";
    let code = match docker.exec_until(cid, cmd, deadline, doing).await {
        Ok(code) => code,
        Err(DockerError::Conflict { .. }) => {
            return Err(DockerError::InVm {
                node: docker.name.to_string(),
                vm: cid.to_string(),
                command: format!("cp -a of disk {disk}'s folder into its image"),
                code: -1,
                detail: "the VM does not run: start it, then attach the disk again".into(),
            });
        }
        Err(e) => return Err(e),
    };
    match code {
        Some(0) => Ok(()),
        code => Err(DockerError::InVm {
            node: docker.name.to_string(),
            vm: cid.to_string(),
            command: format!("cp -a of disk {disk}'s folder into its image"),
            code: code.unwrap_or(-1),
            detail: match code {
                Some(_) => "the copy failed (is the disk large enough for its files?); the folder stays the disk's data and the next attach copies it again".into(),
                None => format!("the copy did not end within {} s", COPY_LIMIT.as_secs()),
            },
        }),
    }
}

/// Adds `disk` to the stopped VM's list `path` ([`FORMAT_AT_START`], [`GROW_AT_START`]).
async fn list_at_start(
    docker: &NodeDocker,
    cid: &VmCid,
    path: &str,
    disk: &DiskCid,
) -> Result<(), DockerError> {
    let mut list = match docker.read_file(cid, path).await? {
        Some(file) => String::from_utf8_lossy(&file.data).into_owned(),
        None => String::new(),
    };
    if list.lines().any(|l| disk == l) {
        return Ok(());
    }
    list.push_str(disk);
    list.push('\n');
    let mut archive = tar::Builder::new(Vec::new());
    let owner = FileOwner {
        mode: 0o600,
        uid: 0,
        gid: 0,
    };
    append_file(&mut archive, path, list.as_bytes(), owner)
        .and_then(|()| archive.into_inner())
        .map(|tar| docker.upload_archive(cid, "/", tar))
        .map_err(|e| DockerError::InVm {
            node: docker.name.to_string(),
            vm: cid.to_string(),
            command: format!("listing {disk} in {path} for its next start"),
            code: -1,
            detail: e.to_string(),
        })?
        .await
}

/// Looks inside the running VM `cid`.
pub async fn look(docker: &NodeDocker, cid: &VmCid) -> Result<Inside, DockerError> {
    let cmd = vec!["/bin/sh".to_string(), "-c".to_string(), PROBE.to_string()];
    let done = docker.exec(cid, cmd, "looking inside the VM").await?;
    Ok(Inside::parse(&done.output))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_probe_output_is_read() {
        let seen = Inside::parse("store=/var/lib/docker/volumes/disk-1/_data\nagent=yes\n");
        assert_eq!(
            seen.store.as_deref(),
            Some("/var/lib/docker/volumes/disk-1/_data")
        );
        assert!(seen.agent);
        assert_eq!(Inside::parse("store=\nagent=no\n"), Inside::default());
    }

    #[test]
    fn the_disk_s_own_mounts_are_found_but_its_hint() {
        let info = "75 110 254:0 /var/lib/docker/volumes/disk-1/_data /warden-cpi-dev/disk-1 rw - ext4 /dev/vda rw\n\
                    90 22 254:0 /var/lib/docker/volumes/disk-1/_data /var/vcap/store rw - ext4 /dev/vda rw\n\
                    91 22 254:0 /var/lib/docker/volumes/disk-10/_data /var/vcap/store_migration_target rw - ext4 /dev/vda rw\n";
        assert_eq!(disk_mounts_in(info, "disk-1"), ["/var/vcap/store"]);
        assert_eq!(
            disk_mounts_in(info, "disk-10"),
            ["/var/vcap/store_migration_target"]
        );
        assert!(disk_mounts_in(info, "disk-2").is_empty());
        let block = "90 22 7:3 / /var/vcap/store rw shared:5 - ext4 /warden-cpi-dev/disk-1 rw\n\
                     91 22 7:4 / /var/vcap/store_migration_target rw - ext4 /warden-cpi-dev/disk-10 rw\n\
                     92 22 7:3 /sub /var/vcap/data/x rw - ext4 /warden-cpi-dev/disk-1 rw\n";
        assert_eq!(
            disk_mounts_in(block, "disk-1"),
            ["/var/vcap/store", "/var/vcap/data/x"]
        );
        assert_eq!(
            disk_mounts_in(block, "disk-10"),
            ["/var/vcap/store_migration_target"]
        );
    }

    #[test]
    fn a_lost_store_or_agent_is_named() {
        let before = Inside {
            store: Some("/v/disk-1/_data".into()),
            agent: true,
        };
        assert!(Inside::lacks(&before, &before.clone()).is_empty());
        let lost = Inside::lacks(&before, &Inside::default());
        assert_eq!(lost.len(), 2, "{lost:?}");
        assert!(lost[0].contains("no mount"), "{lost:?}");
        // A VM without a store or an agent before has nothing to lose.
        assert!(Inside::lacks(&Inside::default(), &Inside::default()).is_empty());
    }
}
