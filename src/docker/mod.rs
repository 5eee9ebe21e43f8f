//! Thin layer over bollard per node: connection with mutual TLS and error mapping. No BOSH
//! semantics live here.

pub mod node;
pub mod tls;

pub use node::{DockerAccess, NodeDocker};
pub mod images;
