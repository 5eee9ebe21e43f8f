//! `calculate_vm_cloud_properties`: cpu/ram/disk requirements -> cloud_properties this
//! CPI understands, refused when no node could hold them.

use serde_json::json;

use crate::cloud::CloudContext;
use crate::placement;
use crate::protocol::{CallResult, CpiError, VmRequirements};

/// Translates requirements; the sizes map to the `cpu`, `ram` and `ephemeral_disk`
/// cloud_properties of create_vm.
pub async fn calculate(
    ctx: &CloudContext<'_>,
    req: VmRequirements,
) -> Result<CallResult, CpiError> {
    if req.cpu == 0 || req.ram == 0 {
        return Err(CpiError::cpi(format!(
            "calculate_vm_cloud_properties: cpu ({}) and ram ({}) must be at least 1",
            req.cpu, req.ram
        )));
    }
    let view = ctx.view().await?;
    let size = placement::VmSize {
        cpus: req.cpu,
        ram_mib: req.ram,
    };
    placement::fits_some_node(&size, &view.nodes).map_err(|e| CpiError::cpi(e.to_string()))?;
    Ok(CallResult::Plain(json!({
        "cpu": req.cpu,
        "ram": req.ram,
        "ephemeral_disk": req.ephemeral_disk_size,
    })))
}
