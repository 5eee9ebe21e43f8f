//! `cpi fleetlock`: an HTTP endpoint speaking the FleetLock protocol, backed by the same
//! etcd v3 reboot semaphore the MoltenCore nodes use, so hosts with a FleetLock client
//! (Zincati, airlock-style setups) share the reboot slots with them.

pub(crate) mod protocol;
mod registry;
pub(crate) mod server;
pub(crate) mod service;
pub(crate) mod tls;
