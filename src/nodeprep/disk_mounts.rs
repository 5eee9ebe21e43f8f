//! `cpi node-prep disk-mounts`, run at every boot by [`UNIT`] before Docker starts the VMs:
//! the node's VM disk tree ([`DISKS_DIR`]) made a shared mount (Docker refuses to give a
//! VM a slave of anything else), and every disk bind a reboot dropped made again from
//! its volume, so each VM finds its disks in place when its container starts (see
//! [`crate::disk_mounts`]).

use std::path::{Path, PathBuf};

use serde::Serialize;

use super::error::{NodePrepError, Result};
use crate::disk_mounts::{self, DiskMounts};

/// The VM disk tree on a node, below node-prep's root.
pub(crate) const DISKS_DIR: &str = "/var/lib/moltencore/vm-disks";
/// The oneshot unit that runs `cpi node-prep disk-mounts` before docker.service.
pub(crate) const UNIT: &str = "moltencore-disk-mounts.service";

/// What one run did.
#[derive(Debug, Serialize)]
pub(crate) struct DiskMountsReport {
    /// The tree, as a path on the node.
    pub(crate) dir: PathBuf,
    /// The tree was no mount point and was bound onto itself.
    pub(crate) bound_onto_itself: bool,
    /// `<vm>/<disk>` put back in its VM (its loop device and node made again, or its
    /// folder bound again).
    pub(crate) remounted: Vec<String>,
    /// `<vm>/<disk>` whose volume or image is gone (left out: the VM waits, then starts
    /// without that disk, and the reboot's health gate names it).
    pub(crate) missing: Vec<String>,
    /// `<vm>/<disk>: why` that could not be put back (the others were still tried).
    pub(crate) failed: Vec<String>,
}

/// The tree's path below `root`, as the CPI finds it in the node record.
pub(crate) fn disks_dir(root: &Path) -> PathBuf {
    let dir = root.join(DISKS_DIR.trim_start_matches('/'));
    std::path::absolute(&dir).unwrap_or(dir)
}

/// Docker's data root as its configuration has it: `data-root` of `<root>/etc/docker/
/// daemon.json`, else Docker's default. The CPI's mounter asks the running daemon; both
/// must find the same volumes.
pub(crate) fn docker_data_root(root: &Path) -> PathBuf {
    let configured = std::fs::read_to_string(root.join("etc/docker/daemon.json"))
        .ok()
        .and_then(|text| serde_json::from_str::<serde_json::Value>(&text).ok())
        .and_then(|doc| doc.get("data-root")?.as_str().map(PathBuf::from));
    configured.unwrap_or_else(|| PathBuf::from("/var/lib/docker"))
}

/// Makes the tree below `root` shared and re-makes its binds from Docker's volumes under
/// `docker_data_root`.
pub(crate) fn run(root: &Path, docker_data_root: &Path) -> Result<DiskMountsReport> {
    let dir = disks_dir(root);
    let failed = |action, path: &Path, error| NodePrepError::File {
        action,
        path: path.to_path_buf(),
        error,
    };
    let bound_onto_itself =
        disk_mounts::make_shared(&dir).map_err(|e| failed("make a shared mount of", &dir, e))?;
    let volumes = docker_data_root.join("volumes");
    let tree = DiskMounts::new(&dir, &volumes).map_err(|e| failed("open", &dir, e))?;
    let done = tree
        .remount_all()
        .map_err(|e| failed("bind the disks again in", &dir, e))?;
    let joined = |(vm, disk): (String, String)| format!("{vm}/{disk}");
    Ok(DiskMountsReport {
        dir,
        bound_onto_itself,
        remounted: done.made.into_iter().map(joined).collect(),
        missing: done.missing.into_iter().map(joined).collect(),
        failed: done
            .failed
            .into_iter()
            .map(|(vm, disk, why)| format!("{vm}/{disk}: {why}"))
            .collect(),
    })
}

/// The unit: before docker.service (whose drop-in wants it), after the local file
/// systems that hold Docker's data.
pub(crate) fn unit(cpi_path: &str) -> String {
    format!(
        "# Written by cpi node-prep; rewritten at every boot.\n\
         [Unit]\n\
         Description=MoltenCore VM disk mounts, made before Docker starts the VMs\n\
         DefaultDependencies=no\n\
         After=local-fs.target\n\
         Before=docker.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={cpi_path} node-prep disk-mounts\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn docker_s_data_root_comes_from_its_configuration() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(
            docker_data_root(dir.path()),
            PathBuf::from("/var/lib/docker")
        );
        std::fs::create_dir_all(dir.path().join("etc/docker")).unwrap();
        std::fs::write(
            dir.path().join("etc/docker/daemon.json"),
            r#"{"data-root": "/srv/docker", "log-driver": "journald"}"#,
        )
        .unwrap();
        assert_eq!(docker_data_root(dir.path()), PathBuf::from("/srv/docker"));
    }

    #[test]
    fn the_tree_follows_the_root_and_the_unit_runs_before_docker() {
        assert_eq!(
            disks_dir(Path::new("/")),
            PathBuf::from("/var/lib/moltencore/vm-disks")
        );
        assert_eq!(
            disks_dir(Path::new("/srv/n1/root")),
            PathBuf::from("/srv/n1/root/var/lib/moltencore/vm-disks")
        );
        let u = unit("/opt/bin/cpi");
        assert!(u.contains("Before=docker.service\n"), "{u}");
        assert!(
            u.contains("ExecStart=/opt/bin/cpi node-prep disk-mounts\n"),
            "{u}"
        );
    }
}
