//! What the black-box tests share, by concern: running the built `cpi` ([`cpi`]), the local
//! cluster brought up by `ci/cluster` ([`cluster`]), probes of Docker on its nodes
//! ([`docker`]), reads and writes of the etcd index ([`index`]), the etcd members and
//! their faults ([`etcd_members`]), request builders and the
//! objects made with them ([`requests`]), `cpi fleetlock` and its clients
//! ([`fleetlock`]), host tools ([`tools`]), waiting for a condition ([`wait`]) and the BOSH release's
//! files and templates ([`bosh`]).
//!
//! A crate of its own (a dev-dependency of `moltencore`), so a helper one test binary does
//! not use is no dead code in it.

pub mod agent;
pub mod bosh;
pub mod cluster;
pub mod cpi;
pub mod docker;
pub mod etcd_members;
pub mod fleetlock;
pub mod index;
pub mod reboots;
pub mod requests;
pub mod tools;
pub mod wait;

/// The flat names every helper had before the split, for a test file that still says
/// `mod common; use common::*;` (`tests/common/mod.rs` re-exports these); new code names
/// the module.
pub mod flat {
    pub use crate::bosh;
    pub use crate::cluster::*;
    pub use crate::cpi::*;
    pub use crate::docker::*;
    pub use crate::index::*;
    pub use crate::requests::*;
    pub use crate::tools::*;
    pub use crate::wait::*;
}
