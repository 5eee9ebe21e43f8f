//! BOSH semantics: each CPI method as a short function over config, cluster and Docker.

mod context;
pub(crate) mod disk;
pub(crate) mod errors;
mod info;
pub(crate) mod stemcell;
pub mod vm;

pub use context::{CloudContext, ContextError};
pub use info::STEMCELL_FORMATS;

use crate::protocol::{Call, CallResult, CpiError};

/// The cloud_properties keys `create_disk` reads (`disk::create`).
const DISK_KEYS: &[&str] = &["node"];

/// Methods this CPI answers with a refusal, whatever the request.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Unsupported {
    /// create_network and delete_network.
    #[error(
        "director-managed networks are not supported: declare manual or dynamic networks in the cloud-config"
    )]
    Networks,
    /// current_vm_id and configure_networks.
    #[error("this method is deprecated by BOSH and not implemented")]
    Deprecated,
    /// update_disk.
    #[error("update_disk is not supported: the director copies the data to a new disk instead")]
    UpdateDisk,
}

/// Runs one typed call: the one handler of each `Call` variant (the method list itself
/// is `protocol::call`).
pub async fn handle(ctx: &CloudContext<'_>, call: Call) -> Result<CallResult, CpiError> {
    let method = call.method();
    match call {
        Call::Info => Ok(info::info()),
        Call::CalculateVmCloudProperties(req) => vm::requirements::calculate(ctx, req).await,
        Call::CreateStemcell {
            image_path,
            cloud_properties,
        } => stemcell::create(ctx, &image_path, &cloud_properties).await,
        Call::DeleteStemcell { stemcell_cid } => stemcell::delete(ctx, &stemcell_cid).await,
        Call::CreateVm(req) => {
            let known = vm::properties::LOWER_KEYS;
            vm::properties::warn_unknown_keys(method, &req.cloud_properties, known);
            vm::create(ctx, *req).await
        }
        Call::DeleteVm { vm_cid } => vm::delete(ctx, &vm_cid).await,
        Call::HasVm { vm_cid } => vm::has(ctx, &vm_cid).await,
        Call::RebootVm { vm_cid } => vm::reboot(ctx, &vm_cid).await,
        Call::SetVmMetadata { vm_cid, metadata } => vm::set_metadata(ctx, &vm_cid, &metadata).await,
        Call::NoSuchObject {
            method,
            answer,
            reason,
        } => Ok(no_such_object(method, answer, &reason)),
        Call::CreateNetwork | Call::DeleteNetwork => Err(Unsupported::Networks.into()),
        Call::CurrentVmId | Call::ConfigureNetworks => Err(Unsupported::Deprecated.into()),
        Call::CreateDisk {
            size_mib,
            cloud_properties,
            vm_cid,
        } => {
            vm::properties::warn_unknown_keys(method, &cloud_properties, DISK_KEYS);
            disk::create(ctx, size_mib, &cloud_properties, vm_cid.as_ref()).await
        }
        Call::DeleteDisk { disk_cid } => disk::delete(ctx, &disk_cid).await,
        Call::HasDisk { disk_cid } => disk::has(ctx, &disk_cid).await,
        Call::AttachDisk { vm_cid, disk_cid } => disk::attach(ctx, &vm_cid, &disk_cid).await,
        Call::DetachDisk { vm_cid, disk_cid } => disk::detach(ctx, &vm_cid, &disk_cid).await,
        Call::GetDisks { vm_cid } => disk::get_disks(ctx, &vm_cid).await,
        Call::SetDiskMetadata { disk_cid, metadata } => {
            disk::set_metadata(ctx, &disk_cid, &metadata).await
        }
        Call::ResizeDisk {
            disk_cid,
            new_size_mib,
        } => disk::resize(ctx, &disk_cid, new_size_mib).await,
        Call::UpdateDisk { .. } => Err(Unsupported::UpdateDisk.into()),
        Call::SnapshotDisk { disk_cid, metadata } => {
            disk::snapshot(ctx, &disk_cid, &metadata).await
        }
        Call::DeleteSnapshot { snapshot_cid } => disk::delete_snapshot(ctx, &snapshot_cid).await,
    }
}

/// The answer to a call about an object that cannot exist (a cid of another shape).
fn no_such_object(method: &str, answer: CallResult, reason: &impl std::fmt::Display) -> CallResult {
    tracing::info!("{method}: {reason}: no such object can exist");
    answer
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::ErrorKind;
    use crate::protocol::request::ApiVersion;
    use serde_json::{Map, json};
    use std::path::PathBuf;

    /// A context whose configuration file does not exist: a call that reads it fails.
    fn without_config() -> CloudContext<'static> {
        CloudContext::new(PathBuf::from("/nonexistent/cpi.json"), Map::new(), None)
    }

    fn run(call: Call) -> Result<CallResult, CpiError> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        runtime.block_on(handle(&without_config(), call))
    }

    #[test]
    fn info_is_answered_without_configuration() {
        let answer = run(Call::Info).unwrap().shape(ApiVersion::V2);
        assert_eq!(
            answer,
            json!({"api_version": 2, "stemcell_formats": ["warden-tar", "general-tar", "docker-light"]})
        );
    }

    #[test]
    fn refused_methods_are_refused_without_configuration() {
        for (call, kind) in [
            (Call::CreateNetwork, ErrorKind::NotImplemented),
            (Call::DeleteNetwork, ErrorKind::NotImplemented),
            (Call::CurrentVmId, ErrorKind::NotImplemented),
            (Call::ConfigureNetworks, ErrorKind::NotImplemented),
        ] {
            let e = run(call).unwrap_err();
            assert_eq!((e.kind, e.ok_to_retry), (kind, false), "{}", e.message);
        }
    }

    #[test]
    fn a_cid_that_cannot_exist_is_answered_without_configuration() {
        let call = Call::parse("has_vm", json!(["vm-../../x"]).as_array().unwrap().clone());
        let answer = run(call.unwrap()).unwrap();
        assert_eq!(answer, CallResult::Exists(false));
    }

    #[test]
    fn a_call_that_needs_the_cluster_names_the_missing_configuration() {
        let call = Call::parse(
            "has_disk",
            json!(["disk-0b4f0c2e-6a43-4d0e-9f55-2d7e1c9a8b31"])
                .as_array()
                .unwrap()
                .clone(),
        );
        let e = run(call.unwrap()).unwrap_err();
        assert_eq!(e.kind, ErrorKind::CpiError, "{}", e.message);
        assert!(e.message.contains("/nonexistent/cpi.json"), "{}", e.message);
    }
}
