//! Named volumes on one node: create, inspect, remove, and which containers use one. An
//! absent volume is success where callers need idempotency.

use std::collections::HashMap;

use bollard::models::{ContainerSummary, VolumeCreateRequest};
use bollard::query_parameters::RemoveVolumeOptionsBuilder;

use super::error::{DockerError, is_status};
use super::node::NodeDocker;

impl NodeDocker {
    /// Creates a named local volume with labels.
    pub(crate) async fn create_volume(
        &self,
        name: &str,
        labels: HashMap<String, String>,
    ) -> Result<(), DockerError> {
        let name = super::names::object(name)?;
        self.docker
            .create_volume(VolumeCreateRequest {
                name: Some(name.to_string()),
                driver: Some("local".into()),
                labels: Some(labels),
                ..Default::default()
            })
            .await
            .map(|_| ())
            .map_err(|e| self.error(&format!("creating volume {name}"), &e))
    }

    /// Removes a volume; absent is success.
    pub(crate) async fn remove_volume(&self, name: &str) -> Result<(), DockerError> {
        self.remove_volume_unless(name, None).await.map(|_| ())
    }

    /// Removes a volume unless a container uses it: `Ok(false)` then (Docker's 409), so a
    /// caller that owns every user of the volume can remove them and try again.
    pub(crate) async fn remove_volume_if_unused(&self, name: &str) -> Result<bool, DockerError> {
        self.remove_volume_unless(name, Some(409)).await
    }

    async fn remove_volume_unless(
        &self,
        name: &str,
        kept_on: Option<u16>,
    ) -> Result<bool, DockerError> {
        let name = super::names::object(name)?;
        match self
            .for_removal()
            .await?
            .remove_volume(
                name,
                Some(RemoveVolumeOptionsBuilder::new().force(true).build()),
            )
            .await
        {
            Ok(()) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(true),
            Err(e) if kept_on.is_some_and(|code| is_status(&e, code)) => Ok(false),
            Err(e) => Err(self.error(&format!("removing volume {name}"), &e)),
        }
    }
    /// Whether a volume exists.
    pub(crate) async fn volume_exists(&self, name: &str) -> Result<bool, DockerError> {
        let name = super::names::object(name)?;
        match self.docker.inspect_volume(name).await {
            Ok(_) => Ok(true),
            Err(e) if is_status(&e, 404) => Ok(false),
            Err(e) => Err(self.error(&format!("inspecting volume {name}"), &e)),
        }
    }
    /// All containers (running or not) that mount the volume `name`.
    pub(crate) async fn containers_using_volume(
        &self,
        name: &str,
    ) -> Result<Vec<ContainerSummary>, DockerError> {
        let name = super::names::object(name)?;
        self.containers_where("volume", name, &format!("that use volume {name}"))
            .await
    }
}
