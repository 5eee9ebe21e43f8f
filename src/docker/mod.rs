//! Thin layer over bollard per node: connection with mutual TLS, images, containers,
//! networks and volumes, with typed errors ([`DockerError`]) that name the node. No BOSH
//! semantics live here.

pub mod body;
pub mod containers;
pub mod error;
pub mod exec;
pub mod idle;
pub mod images;
pub mod mounter;
pub mod names;
pub mod networks;
pub mod node;
pub mod progress;
pub mod tls;
pub mod volume_copy;
pub mod volumes;

pub use error::{DockerError, Doing, SourceError};
pub use networks::BridgeSpec;
pub use node::{DockerAccess, DockerTimeouts, NodeDocker};
