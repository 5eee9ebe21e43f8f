//! MoltenCore: a BOSH CPI that runs BOSH VMs as containers across a cluster of Docker
//! hosts joined by etcd and Flannel.

pub mod boshconfig;
pub(crate) mod bounded_file;
pub(crate) mod channel_reader;
/// The CPI's calls, from request to answer.
pub mod cloud;
pub mod cluster;
pub mod commands;
pub mod config;
/// Also compiled into `mc-mounter` (mounter/main.rs), which does the disk work; the CPI
/// itself uses only its paths, names and unit.
#[allow(dead_code, reason = "most of it is used by mc-mounter alone")]
pub mod disk_mounts;
pub mod docker;
pub(crate) mod echo;
pub(crate) mod fleetlock;
pub mod ids;
#[allow(dead_code, reason = "used by mc-mounter alone, through disk_mounts")]
pub(crate) mod image_copy;
pub(crate) mod labels;
pub mod logging;
#[allow(dead_code, reason = "used by mc-mounter alone, through disk_mounts")]
pub(crate) mod loop_device;
pub(crate) mod mib;
pub mod node_name;
pub mod nodeprep;
pub(crate) mod placement;
pub mod protocol;
pub mod reboot;
pub(crate) mod redact;
pub(crate) mod roundtrips;
pub(crate) mod serde_words;
pub mod timestamp;
