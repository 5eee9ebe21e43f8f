//! Thin layer over bollard per node: connection with mutual TLS, images, containers,
//! networks and volumes, with typed errors ([`DockerError`]) that name the node. No BOSH
//! semantics live here.

pub(crate) mod body;
pub(crate) mod containers;
pub(crate) mod error;
pub(crate) mod exec;
pub(crate) mod idle;
pub(crate) mod images;
pub(crate) mod mounter;
pub(crate) mod names;
pub(crate) mod networks;
pub(crate) mod node;
pub(crate) mod progress;
pub(crate) mod tls;
pub(crate) mod volume_copy;
pub(crate) mod volumes;

#[cfg(test)]
pub(crate) use error::Doing;
pub(crate) use error::{DockerError, SourceError};
pub(crate) use networks::BridgeSpec;
pub(crate) use node::NodeDocker;
pub use node::{DockerAccess, DockerTimeouts};
