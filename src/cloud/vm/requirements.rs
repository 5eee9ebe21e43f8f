//! `calculate_vm_cloud_properties`: cpu/ram/disk requirements -> cloud_properties this
//! CPI understands, refused when no node could hold them.

use crate::cloud::CloudContext;
use crate::placement::{self, PlacementError};
use crate::protocol::{CallResult, CpiError, VmCloudProperties, VmRequirements};

/// Why requirements cannot be translated; both are answered as the CPI's own error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RequirementsError {
    #[error("calculate_vm_cloud_properties: cpu ({cpu}) and ram ({ram}) must be at least 1")]
    Zero { cpu: u64, ram: u64 },
    /// No node could hold the VM (said as the placement says it).
    #[error(transparent)]
    NoNode(#[from] PlacementError),
}

/// The VM size the requirements ask for, refused when a size is zero.
fn size(req: &VmRequirements) -> Result<placement::VmSize, RequirementsError> {
    let ram = req.ram.get();
    if req.cpu == 0 || ram == 0 {
        return Err(RequirementsError::Zero { cpu: req.cpu, ram });
    }
    Ok(placement::VmSize {
        cpus: req.cpu,
        ram_mib: ram,
    })
}

/// Translates requirements; the sizes map to the `cpu`, `ram` and `ephemeral_disk`
/// cloud_properties of create_vm.
pub(crate) async fn calculate(
    ctx: &CloudContext<'_>,
    req: VmRequirements,
) -> Result<CallResult, CpiError> {
    let size = size(&req)?;
    let view = ctx.cluster().await?;
    placement::fits_some_node(&size, &view.nodes).map_err(RequirementsError::from)?;
    Ok(CallResult::VmCloudProperties(VmCloudProperties {
        cpu: req.cpu,
        ram: req.ram.get(),
        ephemeral_disk: req.ephemeral_disk_size.get(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mib::Mib;

    fn req(cpu: u64, ram: u64) -> VmRequirements {
        VmRequirements {
            cpu,
            ram: Mib::new(ram).unwrap(),
            ephemeral_disk_size: Mib::new(1024).unwrap(),
        }
    }

    #[test]
    fn sizes_below_one_are_refused_naming_both() {
        for (cpu, ram) in [(0, 512), (1, 0), (0, 0)] {
            let e = CpiError::from(size(&req(cpu, ram)).unwrap_err());
            assert_eq!(
                e.message,
                format!(
                    "calculate_vm_cloud_properties: cpu ({cpu}) and ram ({ram}) must be at least 1"
                )
            );
            assert!(!e.ok_to_retry);
        }
    }

    #[test]
    fn sizes_of_one_and_more_are_the_vm_size() {
        let s = size(&req(2, 4096)).unwrap();
        assert_eq!((s.cpus, s.ram_mib), (2, 4096));
    }
}
