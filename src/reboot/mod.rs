//! Coordinated node reboots: the etcd v3 semaphore that bounds how many hosts are down at
//! once, and the reboot manager that empties a node, reboots it and brings its VMs back.

pub(crate) mod drain;
pub(crate) mod error;
pub(crate) mod group;
pub(crate) mod health;
pub(crate) mod heartbeat;
pub(crate) mod host;
pub mod keys;
pub(crate) mod manager;
pub(crate) mod overview;
pub(crate) mod record;
pub mod semaphore;
pub(crate) mod sources;
pub(crate) mod window;
