//! Containers and their files on one node: thin calls with errors that name the node and
//! the object. Absent objects are reported as `None`/success where callers need
//! idempotency.

use std::collections::HashMap;

use bollard::models::{
    ContainerCreateBody, ContainerInspectResponse, ContainerSummary, EndpointSettings,
    NetworkConnectRequest,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, ListContainersOptionsBuilder, RemoveContainerOptionsBuilder,
    RestartContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bytes::Bytes;

use super::error::{DockerError, is_status};
use super::node::NodeDocker;
use crate::bounded_file::FileKind;

impl NodeDocker {
    /// Creates a container named `name`.
    pub(crate) async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        self.docker
            .create_container(
                Some(CreateContainerOptionsBuilder::new().name(name).build()),
                body,
            )
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("creating container {name}"), &e))
    }

    /// Restarts a container (stop with a grace period, then start).
    pub(crate) async fn restart_container(
        &self,
        name: &str,
        grace_seconds: i32,
    ) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        self.with_grace(grace_seconds)
            .restart_container(
                name,
                Some(
                    RestartContainerOptionsBuilder::new()
                        .t(grace_seconds)
                        .build(),
                ),
            )
            .await
            .map_err(|e| self.error(&format!("restarting container {name}"), &e))
    }

    /// The container, or `None` when it does not exist.
    pub(crate) async fn inspect_container(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        let name = super::names::object(name)?;
        match self.docker.inspect_container(name, None).await {
            Ok(c) => Ok(Some(c)),
            Err(e) if is_status(&e, 404) => Ok(None),
            Err(e) => Err(self.error(&format!("inspecting container {name}"), &e)),
        }
    }

    /// Removes a container, running or not, with its anonymous volumes; absent is success.
    pub(crate) async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        let options = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(true)
            .build();
        match self
            .for_removal()
            .await?
            .remove_container(name, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.error(&format!("removing container {name}"), &e)),
        }
    }

    /// All containers (running or not) carrying `label` (`key` or `key=value`).
    pub(crate) async fn containers_with_label(
        &self,
        label: &str,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        self.containers_where("label", label, &format!("with label {label}"))
            .await
    }

    /// All containers (running or not) matching one Docker list filter.
    pub(super) async fn containers_where(
        &self,
        filter: &str,
        value: &str,
        which: &str,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let filters: HashMap<String, Vec<String>> =
            [(filter.to_string(), vec![value.to_string()])].into();
        self.docker
            .list_containers(Some(
                ListContainersOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .map_err(|e| self.error(&format!("listing containers {which}"), &e))
    }

    /// Connects a created container to one more network.
    pub(crate) async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> Result<(), DockerError> {
        let network = super::names::object(network)?;
        let container = super::names::object(container)?;
        self.docker
            .connect_network(
                network,
                NetworkConnectRequest {
                    container: container.to_string(),
                    endpoint_config: Some(endpoint),
                },
            )
            .await
            .map_err(|e| {
                self.error(
                    &format!("connecting container {container} to network {network}"),
                    &e,
                )
            })
    }

    /// Extracts a tar archive into a (created, not necessarily started) container at `path`.
    pub(crate) async fn upload_archive(
        &self,
        container: &str,
        path: &str,
        tar: Vec<u8>,
    ) -> Result<(), DockerError> {
        let container = super::names::object(container)?;
        self.docker
            .upload_to_container(
                container,
                Some(UploadToContainerOptionsBuilder::new().path(path).build()),
                bollard::body_full(Bytes::from(tar)),
            )
            .await
            .map_err(|e| self.error(&format!("writing files into container {container}"), &e))
    }
}

impl NodeDocker {
    /// The control client with room for a stop's grace period on top of the idle timeout.
    fn with_grace(&self, grace_seconds: i32) -> bollard::Docker {
        let grace = std::time::Duration::from_secs(u64::from(grace_seconds.max(0).unsigned_abs()));
        self.docker.clone().with_timeout(self.idle_timeout + grace)
    }

    /// Stops a container (SIGTERM, then SIGKILL after `grace_seconds`); absent or already
    /// stopped is success.
    pub(crate) async fn stop_container(
        &self,
        name: &str,
        grace_seconds: i32,
    ) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        let options = bollard::query_parameters::StopContainerOptionsBuilder::new()
            .t(grace_seconds)
            .build();
        match self
            .with_grace(grace_seconds)
            .stop_container(name, Some(options))
            .await
        {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) || is_status(&e, 404) => Ok(()),
            Err(e) => Err(self.error(&format!("stopping container {name}"), &e)),
        }
    }

    /// Starts a container; one already running is success. An address that another
    /// container holds is the daemon's 403 ([`DockerError::Forbidden`], "Address already
    /// in use"), so a caller can say who holds it.
    pub(crate) async fn start(&self, name: &str) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        match self.docker.start_container(name, None).await {
            Ok(()) => Ok(()),
            Err(e) if is_status(&e, 304) => Ok(()),
            Err(e) => Err(self.error(&format!("starting container {name}"), &e)),
        }
    }

    /// One regular file from a container (running or not), with its mode and owner;
    /// `None` when it does not exist. The VM owns that file and may have made it anything:
    /// at most [`FileKind::AgentSettings`]'s limit is read, a larger one is an error.
    pub(crate) async fn read_file(
        &self,
        container: &str,
        path: &str,
    ) -> Result<Option<ContainerFile>, DockerError> {
        let container = super::names::object(container)?;
        let too_large = || DockerError::TooLarge {
            node: self.name.to_string(),
            path: path.to_string(),
            container: container.to_string(),
            limit: crate::bounded_file::human(READ_FILE_LIMIT),
            what: FileKind::AgentSettings.what(),
        };
        let Some(tar_bytes) = self.download_archive(container, path, too_large).await? else {
            return Ok(None);
        };
        let unreadable = |what: String| {
            let node = self.name.to_string();
            move |source| DockerError::Archive { node, what, source }
        };
        let mut archive = tar::Archive::new(tar_bytes.as_slice());
        let entries = archive
            .entries()
            .map_err(unreadable(format!("{path} from {container}: bad archive")))?;
        for entry in entries {
            let entry = entry.map_err(unreadable(format!("{path} from {container}")))?;
            if entry.header().entry_type().is_file() {
                return file_of_entry(entry)
                    .map_err(unreadable(format!("{path} from {container}")))?
                    .ok_or_else(too_large)
                    .map(Some);
            }
        }
        Ok(None)
    }

    /// The tar archive Docker sends for `path` in `container`, at most the read limit plus
    /// the archive's own overhead; `None` when the path does not exist.
    async fn download_archive(
        &self,
        container: &str,
        path: &str,
        too_large: impl Fn() -> DockerError,
    ) -> Result<Option<Vec<u8>>, DockerError> {
        use futures_util::StreamExt;
        let mut stream = self.docker.download_from_container(
            container,
            Some(
                bollard::query_parameters::DownloadFromContainerOptionsBuilder::new()
                    .path(path)
                    .build(),
            ),
        );
        // The archive around the file: tar headers and padding on top of its bytes.
        const TAR_OVERHEAD: u64 = 64 * 1024;
        let mut tar_bytes = Vec::new();
        let doing = format!("reading {path} from container {container}");
        loop {
            let chunk = match tokio::time::timeout(self.idle_timeout, stream.next()).await {
                Ok(Some(chunk)) => chunk,
                Ok(None) => return Ok(Some(tar_bytes)),
                Err(_) => return Err(super::idle::silent(self, &doing)),
            };
            match chunk {
                Ok(b) if (tar_bytes.len() + b.len()) as u64 > READ_FILE_LIMIT + TAR_OVERHEAD => {
                    return Err(too_large());
                }
                Ok(b) => tar_bytes.extend_from_slice(&b),
                Err(e) if is_status(&e, 404) => return Ok(None),
                Err(e) => return Err(self.error(&doing, &e)),
            }
        }
    }
}

/// The most [`NodeDocker::read_file`] reads of a file: what agent settings may hold.
const READ_FILE_LIMIT: u64 = FileKind::AgentSettings.limit();

/// A regular file's bytes (at most [`READ_FILE_LIMIT`]; `None` when larger), mode and
/// owner from its archive entry.
fn file_of_entry(entry: tar::Entry<'_, &[u8]>) -> Result<Option<ContainerFile>, std::io::Error> {
    let header = entry.header();
    let (mode, uid, gid) = (header.mode()?, header.uid()?, header.gid()?);
    let Some(data) = crate::bounded_file::read_limited(entry, READ_FILE_LIMIT)? else {
        return Ok(None);
    };
    Ok(Some(ContainerFile {
        data,
        mode,
        uid,
        gid,
    }))
}

/// A file read from a container: its bytes, permission bits and numeric owner, so it can
/// be written back as it was.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContainerFile {
    /// The content.
    pub(crate) data: Vec<u8>,
    /// Permission bits.
    pub(crate) mode: u32,
    /// Numeric user id.
    pub(crate) uid: u64,
    /// Numeric group id.
    pub(crate) gid: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn archive_of(data: &[u8], mode: u32) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(mode);
        header.set_uid(1000);
        header.set_gid(1001);
        header.set_cksum();
        builder
            .append_data(&mut header, "settings.json", data)
            .unwrap();
        builder.into_inner().unwrap()
    }

    fn first_file(tar_bytes: &[u8]) -> Option<ContainerFile> {
        let mut archive = tar::Archive::new(tar_bytes);
        let entry = archive.entries().unwrap().next().unwrap().unwrap();
        file_of_entry(entry).unwrap()
    }

    #[test]
    fn an_entry_gives_its_bytes_mode_and_owner() {
        let file = first_file(&archive_of(b"{}", 0o640)).unwrap();
        assert_eq!(
            file,
            ContainerFile {
                data: b"{}".to_vec(),
                mode: 0o640,
                uid: 1000,
                gid: 1001,
            }
        );
    }

    #[test]
    fn an_entry_over_the_limit_gives_nothing() {
        let big = vec![b'x'; usize::try_from(READ_FILE_LIMIT).unwrap() + 1];
        assert_eq!(first_file(&archive_of(&big, 0o600)), None);
    }
}
