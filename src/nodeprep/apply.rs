//! Putting the Docker files in place and making systemd follow, in the order that keeps a
//! host consistent: restart marker first, then the files; the systemd calls come last, and
//! Docker restarts only when one of its files changed (or a failed run still owes it).

use super::disk_mounts::UNIT as DISK_MOUNTS_UNIT;
use super::docker_units::{self as du, WantedFile};
use super::error::Result;
use super::files::{FileChange, Root};
use super::reboot_unit::REBOOT_MANAGER_UNIT;
use super::systemd::Systemd;

/// Which files differed and what that means for systemd.
#[derive(Debug, Default)]
pub(crate) struct Written {
    /// Each changed file (path on the node) and how.
    pub(crate) files: Vec<(String, FileChange)>,
    /// Docker's certificates, options, drop-in or TLS socket changed.
    pub(crate) docker: bool,
    /// A unit file or drop-in changed: systemd must reload.
    pub(crate) units: bool,
    /// The network unit changed: enable and start it.
    pub(crate) network_unit: bool,
    /// The reboot manager's unit changed: enable and start it.
    pub(crate) reboot_unit: bool,
    /// The disk mounts unit changed: enable and run it (before Docker restarts).
    pub(crate) disk_mounts_unit: bool,
}

/// Writes the files that differ (none in a dry run, which still reports them).
pub(crate) fn write_files(root: &Root, wanted: &[WantedFile]) -> Result<Written> {
    let network_unit = du::unit_path(du::NETWORK_UNIT);
    let socket = du::unit_path(du::TLS_SOCKET_UNIT);
    let reboot_unit = du::unit_path(REBOOT_MANAGER_UNIT);
    let mounts_unit = du::unit_path(DISK_MOUNTS_UNIT);
    let mut written = Written::default();
    for f in wanted {
        let change = root.change_of(&f.path, &f.content, f.mode)?;
        if change == FileChange::Unchanged {
            continue;
        }
        let own_unit = [&network_unit, &reboot_unit, &mounts_unit].contains(&&f.path);
        written.docker |= !own_unit;
        written.units |= own_unit || f.path == du::DROPIN_FILE || f.path == socket;
        written.network_unit |= f.path == network_unit;
        written.reboot_unit |= f.path == reboot_unit;
        written.disk_mounts_unit |= f.path == mounts_unit;
        written.files.push((f.path.clone(), change));
    }
    // Remember the owed restart before Docker's files change.
    if written.docker {
        root.touch(du::RESTART_PENDING)?;
    }
    for f in wanted {
        if written.files.iter().any(|(p, _)| p == &f.path) {
            root.write(&f.path, &f.content, f.mode)?;
        }
    }
    Ok(written)
}

/// Reloads units, starts the TLS socket and restarts Docker as the written files need.
/// The TLS socket is `PartOf=docker.service`, so restarting Docker rebinds it too.
pub(crate) fn run_systemd(sd: &mut dyn Systemd, root: &Root, written: &Written) -> Result<()> {
    if written.units {
        sd.daemon_reload()?;
    }
    let socket_file_changed = written
        .files
        .iter()
        .any(|(p, _)| *p == du::unit_path(du::TLS_SOCKET_UNIT));
    let mut restart_docker = written.docker || root.exists(du::RESTART_PENDING);
    if socket_file_changed || !sd.is_active(du::TLS_SOCKET_UNIT)? {
        sd.enable_now(du::TLS_SOCKET_UNIT, false)?;
        restart_docker = true;
    }
    if written.disk_mounts_unit {
        // Before Docker restarts: its VMs need the shared tree.
        sd.enable_now(DISK_MOUNTS_UNIT, false)?;
    }
    if restart_docker {
        sd.restart("docker.service")?;
        root.remove(du::RESTART_PENDING)?;
    }
    if written.network_unit {
        sd.enable_now(du::NETWORK_UNIT, true)?;
    }
    if written.reboot_unit {
        // Ordered after node-prep: the start waits until this run is over.
        sd.enable_now(REBOOT_MANAGER_UNIT, true)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::nodeprep::systemd::Recording;

    fn file(path: &str, content: &str) -> WantedFile {
        WantedFile {
            path: path.into(),
            content: content.into(),
            mode: 0o644,
        }
    }

    #[test]
    fn only_the_network_unit_changed_restarts_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        let net = du::unit_path(du::NETWORK_UNIT);
        let w = write_files(&root, &[file(&net, "a")]).unwrap();
        assert!(!w.docker && w.units && w.network_unit);
        assert!(!root.exists(du::RESTART_PENDING));
        let mut sd = Recording::default();
        run_systemd(&mut sd, &root, &w).unwrap();
        assert_eq!(
            sd.actions(),
            [
                "daemon-reload",
                "enable --now --no-block moltencore-network.service"
            ]
        );
    }

    #[test]
    fn a_changed_reboot_manager_unit_is_enabled_without_restarting_docker() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        let unit = du::unit_path(REBOOT_MANAGER_UNIT);
        let w = write_files(&root, &[file(&unit, "a")]).unwrap();
        assert!(!w.docker && w.units && w.reboot_unit);
        let mut sd = Recording::default();
        run_systemd(&mut sd, &root, &w).unwrap();
        assert_eq!(
            sd.actions(),
            [
                "daemon-reload",
                "enable --now --no-block moltencore-reboot-manager.service"
            ]
        );
    }

    #[test]
    fn an_owed_restart_is_paid_by_the_next_run() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        let w = write_files(&root, &[file(du::ENV_FILE, "x")]).unwrap();
        assert!(w.docker && root.exists(du::RESTART_PENDING));
        // The run died before systemd: the next run finds no file change but the marker.
        let again = write_files(&root, &[file(du::ENV_FILE, "x")]).unwrap();
        assert!(again.files.is_empty());
        let mut sd = Recording::default();
        run_systemd(&mut sd, &root, &again).unwrap();
        assert_eq!(sd.actions(), ["restart docker.service"]);
        assert!(!root.exists(du::RESTART_PENDING));
    }
}
