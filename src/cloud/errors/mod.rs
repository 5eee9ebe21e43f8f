//! What the director is told when a layer below `cloud/` fails: the one place that turns
//! their typed errors into `Bosh::Clouds::*` classes and decides whether a retry can help.
//! One file per layer: the Docker nodes, and the cluster's etcd index, configuration and
//! placement.

mod cluster;
mod docker;
mod vm;
