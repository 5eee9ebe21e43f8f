//! A node as one call sees it: its Docker client and the call's container inspections.
//! Every container-changing request of the call goes through a [`NodeHandle`], which
//! drops the inspection of the container it changes before it asks, so the next
//! inspection of that container within the call asks the node again. Reading and volume
//! requests reach the client as they are (the handle dereferences to it).

use std::collections::HashMap;
use std::ops::Deref;
use std::sync::Mutex;

use bollard::models::{ContainerCreateBody, ContainerInspectResponse, EndpointSettings};

use crate::docker::{DockerError, NodeDocker};
use crate::node_name::NodeName;

/// A container as the call knows it: node name and container name (or id).
type ContainerKey = (NodeName, String);

/// The container inspections of one call (`None`: known to be absent), by node and
/// container name; a container's is dropped when the call changes it.
#[derive(Default)]
pub(crate) struct Inspections(Mutex<HashMap<ContainerKey, Option<ContainerInspectResponse>>>);

impl Inspections {
    /// What the call knows of container `name` on `node`, if it inspected it since its
    /// last change.
    fn known(&self, node: &NodeName, name: &str) -> Option<Option<ContainerInspectResponse>> {
        let key = (node.clone(), name.to_string());
        self.0.lock().unwrap().get(&key).cloned()
    }

    /// Keeps an inspection of container `name` on `node` for the rest of the call.
    fn keep(&self, node: &NodeName, name: &str, inspect: Option<ContainerInspectResponse>) {
        let key = (node.clone(), name.to_string());
        self.0.lock().unwrap().insert(key, inspect);
    }

    /// Forgets the inspection of container `name` on `node`: the call changes it.
    fn changed(&self, node: &NodeName, name: &str) {
        let key = (node.clone(), name.to_string());
        self.0.lock().unwrap().remove(&key);
    }
}

/// The Docker client of one node with the call's inspections (made by
/// [`super::CloudContext::node`]). Its container-changing methods shadow the client's
/// methods of the same name and drop the container's inspection first; the requests
/// are the client's own, unchanged.
#[derive(Clone)]
pub(crate) struct NodeHandle<'c> {
    docker: NodeDocker,
    inspections: &'c Inspections,
}

impl Deref for NodeHandle<'_> {
    type Target = NodeDocker;

    fn deref(&self) -> &NodeDocker {
        &self.docker
    }
}

impl<'c> NodeHandle<'c> {
    /// The client `docker` with the call's `inspections`.
    pub(super) fn new(docker: NodeDocker, inspections: &'c Inspections) -> Self {
        NodeHandle {
            docker,
            inspections,
        }
    }

    /// The plain client, for the `docker` functions that take one and change no VM
    /// container (images, volume copies).
    pub(crate) fn client(&self) -> &NodeDocker {
        &self.docker
    }

    /// Container `name`, inspected once per call until the call changes it.
    pub(crate) async fn inspect(
        &self,
        name: &str,
    ) -> Result<Option<ContainerInspectResponse>, DockerError> {
        if let Some(known) = self.inspections.known(&self.docker.name, name) {
            return Ok(known);
        }
        let inspect = self.docker.inspect_container(name).await?;
        self.inspections
            .keep(&self.docker.name, name, inspect.clone());
        Ok(inspect)
    }

    fn changing(&self, name: &str) {
        self.inspections.changed(&self.docker.name, name);
    }

    /// Creates container `name` (see [`NodeDocker::create_container`]).
    pub(crate) async fn create_container(
        &self,
        name: &str,
        body: ContainerCreateBody,
    ) -> Result<(), DockerError> {
        self.changing(name);
        self.docker.create_container(name, body).await
    }

    /// Starts container `name` (see [`NodeDocker::start`]).
    pub(crate) async fn start(&self, name: &str) -> Result<(), DockerError> {
        self.changing(name);
        self.docker.start(name).await
    }

    /// Stops container `name` (see [`NodeDocker::stop_container`]).
    #[expect(
        dead_code,
        reason = "kept so that no stop of a call bypasses the cache"
    )]
    pub(crate) async fn stop_container(
        &self,
        name: &str,
        grace_seconds: i32,
    ) -> Result<(), DockerError> {
        self.changing(name);
        self.docker.stop_container(name, grace_seconds).await
    }

    /// Restarts container `name` (see [`NodeDocker::restart_container`]).
    pub(crate) async fn restart_container(
        &self,
        name: &str,
        grace_seconds: i32,
    ) -> Result<(), DockerError> {
        self.changing(name);
        self.docker.restart_container(name, grace_seconds).await
    }

    /// Removes container `name` (see [`NodeDocker::remove_container`]).
    pub(crate) async fn remove_container(&self, name: &str) -> Result<(), DockerError> {
        self.changing(name);
        self.docker.remove_container(name).await
    }

    /// Connects container `container` to one more network (see
    /// [`NodeDocker::connect_network`]).
    pub(crate) async fn connect_network(
        &self,
        network: &str,
        container: &str,
        endpoint: EndpointSettings,
    ) -> Result<(), DockerError> {
        self.changing(container);
        self.docker
            .connect_network(network, container, endpoint)
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running(id: &str) -> Option<ContainerInspectResponse> {
        Some(ContainerInspectResponse {
            id: Some(id.into()),
            ..Default::default()
        })
    }

    #[test]
    fn an_inspection_is_kept_per_node_and_container() {
        let seen = Inspections::default();
        assert!(seen.known(&"n1".into(), "vm-1").is_none());
        seen.keep(&"n1".into(), "vm-1", running("a"));
        seen.keep(&"n1".into(), "vm-2", None);
        assert_eq!(seen.known(&"n1".into(), "vm-1"), Some(running("a")));
        assert_eq!(
            seen.known(&"n1".into(), "vm-2"),
            Some(None),
            "absence is known too"
        );
        assert!(
            seen.known(&"n2".into(), "vm-1").is_none(),
            "another node's is not"
        );
    }

    #[test]
    fn a_change_drops_that_containers_inspection_only() {
        let seen = Inspections::default();
        seen.keep(&"n1".into(), "vm-1", running("a"));
        seen.keep(&"n1".into(), "vm-2", running("b"));
        seen.keep(&"n2".into(), "vm-1", running("c"));
        seen.changed(&"n1".into(), "vm-1");
        assert!(seen.known(&"n1".into(), "vm-1").is_none());
        assert_eq!(seen.known(&"n1".into(), "vm-2"), Some(running("b")));
        assert_eq!(seen.known(&"n2".into(), "vm-1"), Some(running("c")));
    }
}
