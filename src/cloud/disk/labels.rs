//! Docker label keys on disk volumes.

pub const DISK_CID: &str = "moltencore.disk.cid";
pub const SIZE_MIB: &str = "moltencore.disk.size_mib";
