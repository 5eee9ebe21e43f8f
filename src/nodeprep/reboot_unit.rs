//! The unit that runs `cpi reboot-manager` on the node: after node-prep, Docker and the
//! BOSH network (so after boot it finds the node's VMs), restarted when it dies, and only
//! where its configuration exists (a cpi.json with etcd and Docker client access).

use super::docker_units::{WantedFile, unit_path};
use crate::node_name::NodeName;

/// The reboot manager's unit.
pub const REBOOT_MANAGER_UNIT: &str = "moltencore-reboot-manager.service";
/// Its configuration: a CPI config (etcd access and a Docker client certificate).
pub const CONFIG_FILE: &str = "/etc/moltencore/reboot-manager/cpi.json";
/// Optional extra flags (`REBOOT_MANAGER_OPTS="--window 'Sun 04:00' ..."`).
pub const ENV_FILE: &str = "/etc/moltencore/reboot-manager/reboot-manager.env";

/// The unit for node `node`, with the cpi binary at `cpi_path`.
pub fn unit(node: &str, cpi_path: &str) -> String {
    format!(
        "# Written by cpi node-prep; rewritten at every boot.\n\
         [Unit]\n\
         Description=MoltenCore reboot manager of node {node} (coordinated host reboots)\n\
         Wants=docker.service\n\
         After=moltencore-node-prep.service docker.service moltencore-network.service network-online.target\n\
         ConditionPathExists={config}\n\
         \n\
         [Service]\n\
         EnvironmentFile=-{env}\n\
         ExecStart={cpi} -c {config} reboot-manager --node {node} $REBOOT_MANAGER_OPTS\n\
         Restart=always\n\
         RestartSec=10s\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        config = CONFIG_FILE,
        env = ENV_FILE,
        cpi = cpi_path,
    )
}

/// The unit as a file node-prep keeps in place.
pub(crate) fn wanted(node: &NodeName, cpi_path: &str) -> WantedFile {
    WantedFile {
        path: unit_path(REBOOT_MANAGER_UNIT),
        content: unit(node, cpi_path),
        mode: 0o644,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_unit_runs_after_node_prep_and_docker() {
        let u = unit("n1", "/opt/bin/cpi");
        assert!(
            u.contains("After=moltencore-node-prep.service docker.service"),
            "{u}"
        );
        assert!(u.contains(
            "ExecStart=/opt/bin/cpi -c /etc/moltencore/reboot-manager/cpi.json reboot-manager --node n1 $REBOOT_MANAGER_OPTS\n"
        ));
        assert_eq!(
            wanted(&"n1".into(), "/opt/bin/cpi").path,
            "/etc/systemd/system/moltencore-reboot-manager.service"
        );
    }
}
