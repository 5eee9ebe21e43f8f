//! Reboot group names, checked once: they end up in etcd keys and FleetLock answers.

use serde::Serialize;

use super::error::SemaphoreError;

/// Longest group name accepted.
const GROUP_MAX_LEN: usize = 64;

/// A reboot group's name, as FleetLock defines it (`^[a-zA-Z0-9.-]+$`), bounded.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Group(String);

impl Group {
    /// Parses a group name; the error names the value, cut short.
    pub fn parse(name: &str) -> Result<Group, SemaphoreError> {
        let ok = !name.is_empty()
            && name.len() <= GROUP_MAX_LEN
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
        if ok {
            Ok(Group(name.to_string()))
        } else {
            Err(SemaphoreError::BadGroup(crate::echo::cut(
                name,
                GROUP_MAX_LEN,
            )))
        }
    }

    /// The group every MoltenCore node and every FleetLock client uses unless told
    /// otherwise (Zincati's default).
    pub(crate) fn default_group() -> Group {
        Group("default".into())
    }

    /// The name.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Display for Group {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}
