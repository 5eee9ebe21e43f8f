//! The health gate after a reboot: Docker answers, and every VM that ran before runs
//! again with the same IPs and volumes, and, seen from inside it, with its store mounted
//! on the same disk and its agent running. A VM the host did not bring back by itself (no
//! restart policy) is started once; one that cannot come back keeps the gate shut.

use super::drain::observe;
use super::error::HealthError;
use super::record::VmSnapshot;
use crate::cloud::vm::inside::{self, Inside};
use crate::docker::NodeDocker;

/// Checks the node against what ran before; `Err` says what is not back yet.
pub(crate) async fn check(docker: &NodeDocker, before: &[VmSnapshot]) -> Result<(), HealthError> {
    docker
        .version()
        .await
        .map_err(|e| HealthError::DockerDown(Box::new(e)))?;
    let mut problems = Vec::new();
    for vm in before.iter().filter(|v| v.running) {
        let Some(c) = docker
            .inspect_container(&vm.cid)
            .await
            .map_err(|e| HealthError::Inspect(Box::new(e)))?
        else {
            problems.push(format!("VM {}: its container is gone", vm.cid));
            continue;
        };
        let now = observe(&vm.cid, &c);
        if !now.running {
            match docker.start(&vm.cid).await {
                Ok(()) => problems.push(format!("VM {}: started again, not yet checked", vm.cid)),
                Err(e) => problems.push(format!("VM {}: does not start: {}", vm.cid, e)),
            }
            continue;
        }
        if let Some(p) = differences(vm, &now) {
            problems.push(p);
        } else if let Some(before) = &vm.inside {
            match inside::look(docker, &vm.cid).await {
                Ok(seen) => {
                    let lacks = Inside::lacks(before, &seen);
                    if !lacks.is_empty() {
                        problems.push(format!("VM {}: {}", vm.cid, lacks.join(", ")));
                    }
                }
                Err(e) => problems.push(format!("VM {}: cannot look inside: {e}", vm.cid)),
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(HealthError::NotBack(problems))
    }
}

/// What differs between a VM before and now (both running), if anything.
pub(crate) fn differences(before: &VmSnapshot, now: &VmSnapshot) -> Option<String> {
    let mut what = Vec::new();
    if before.ips != now.ips {
        what.push(format!("IPs were {:?}, are {:?}", before.ips, now.ips));
    }
    let missing: Vec<&String> = before
        .volumes
        .iter()
        .filter(|v| !now.volumes.contains(v))
        .collect();
    if !missing.is_empty() {
        what.push(format!("volumes {missing:?} are not mounted"));
    }
    (!what.is_empty()).then(|| format!("VM {}: {}", before.cid, what.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ids::VmCid;

    fn vm(ip: &str, volumes: &[&str]) -> VmSnapshot {
        VmSnapshot {
            cid: VmCid::generate(),
            running: true,
            ips: [("bosh".to_string(), ip.to_string())].into(),
            volumes: volumes.iter().map(|v| v.to_string()).collect(),
            inside: None,
        }
    }

    #[test]
    fn a_vm_back_with_its_ip_and_disks_passes() {
        let before = vm("10.1.1.30", &["disk-1", "vm-1-ephemeral"]);
        assert_eq!(differences(&before, &before.clone()), None);
        let moved = differences(&before, &vm("10.1.1.31", &["disk-1", "vm-1-ephemeral"]));
        assert!(moved.unwrap().contains("IPs"));
        let lost = differences(&before, &vm("10.1.1.30", &["vm-1-ephemeral"])).unwrap();
        assert!(lost.contains("disk-1"), "{lost}");
    }
}
