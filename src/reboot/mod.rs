//! Coordinated node reboots: the etcd v3 semaphore that bounds how many hosts are down at
//! once, and the reboot manager that empties a node, reboots it and brings its VMs back.

pub mod drain;
pub mod error;
pub mod group;
pub mod health;
pub mod heartbeat;
pub mod host;
pub mod keys;
pub mod manager;
pub(crate) mod overview;
pub mod record;
pub mod semaphore;
pub mod sources;
pub mod window;
