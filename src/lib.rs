//! MoltenCore: a BOSH CPI that runs BOSH VMs as containers across a cluster of Docker
//! hosts joined by etcd and Flannel.

pub mod boshconfig;
pub mod bounded_file;
pub mod channel_reader;
pub mod cloud;
pub mod cluster;
pub mod commands;
pub mod config;
pub mod disk_mounts;
pub mod docker;
pub mod echo;
pub mod fleetlock;
pub mod ids;
pub mod image_copy;
pub mod labels;
pub mod logging;
pub mod loop_device;
pub mod nodeprep;
pub mod placement;
pub mod protocol;
pub mod reboot;
pub mod redact;
pub mod roundtrips;
pub mod serde_words;
pub mod timestamp;
