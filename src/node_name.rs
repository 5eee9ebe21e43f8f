//! A node's name: the last segment of `<key_prefix>/nodes/<name>`, a BOSH AZ pin, the CN
//! of the node's certificate. Node-prep gives the rules a name must follow; where a name
//! enters (node-prep's identity, `cpi nodes` flags, `cloud_properties.node`) it is
//! parsed by them.

use std::borrow::Borrow;
use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A name that breaks node-prep's rules for node names; it holds the name made printable
/// (cut short, control characters escaped), since it came from outside.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("node name '{0}' is not usable: use 1-63 characters a-z, 0-9 and '-' (not at either end)")]
pub struct BadNodeName(pub(crate) String);

/// A node's name. Made by [`NodeName::parse`] where a name enters, or read back from a
/// record.
///
/// Parsed where a name enters: node-prep's identity (`--name` or the hostname), the
/// `NAME` of `cpi nodes cordon|uncordon|drain|reboot`, `cpi reboot-manager --node`, and
/// `cloud_properties.node` of create_vm and create_disk (a name that breaks the rules is
/// refused as the unknown node it is).
///
/// Read as found, on purpose, where a name comes from etcd or from what names etcd's
/// contents: records in etcd (node records and every record that names a node, through
/// serde), the names in reboot record keys and the node keys the FleetLock server reads,
/// the CPI config's `placement.node`, and `cpi nodes release NAME` (whose name may be a
/// FleetLock client's id). Those may have been written by an older version or by hand,
/// and reading them must not start failing where it did not before: a name that breaks
/// the rules is kept as it is (written back the same, and still compared, shown and
/// used in keys as before).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct NodeName(String);

impl NodeName {
    /// Parses a name by node-prep's rules: 1-63 characters a-z, 0-9 and '-', not '-' at
    /// either end (it becomes an etcd key segment, a certificate CN and a BOSH name).
    pub(crate) fn parse(name: &str) -> Result<NodeName, BadNodeName> {
        let ok = !name.is_empty()
            && name.len() <= 63
            && name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !name.starts_with('-')
            && !name.ends_with('-');
        if ok {
            Ok(NodeName(name.to_string()))
        } else {
            Err(BadNodeName(crate::echo::printable(name)))
        }
    }

    /// A name as a record holds it, kept as found (see the type's doc): for names read
    /// from etcd (keys, records) and for the placement config, which is read as leniently.
    pub(crate) fn from_record(name: impl Into<String>) -> NodeName {
        NodeName(name.into())
    }

    /// The name as text.
    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }
}

/// Parses by [`NodeName::parse`].
impl std::str::FromStr for NodeName {
    type Err = BadNodeName;
    fn from_str(name: &str) -> Result<NodeName, BadNodeName> {
        NodeName::parse(name)
    }
}

impl fmt::Display for NodeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Read-only access as text, so a name goes wherever text is taken (keys, messages).
impl std::ops::Deref for NodeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl AsRef<str> for NodeName {
    fn as_ref(&self) -> &str {
        &self.0
    }
}

impl Borrow<str> for NodeName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

impl PartialEq<str> for NodeName {
    fn eq(&self, other: &str) -> bool {
        self.0 == other
    }
}

impl PartialEq<&str> for NodeName {
    fn eq(&self, other: &&str) -> bool {
        self.0 == *other
    }
}

impl From<NodeName> for String {
    fn from(name: NodeName) -> String {
        name.0
    }
}

/// The unit tests write names as literals.
#[cfg(test)]
impl From<&str> for NodeName {
    fn from(name: &str) -> NodeName {
        NodeName::from_record(name)
    }
}

impl Serialize for NodeName {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

/// Lenient: any string reads back as found (see the type's doc).
impl<'de> Deserialize<'de> for NodeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<NodeName, D::Error> {
        String::deserialize(d).map(NodeName)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_rules_of_node_prep() {
        for good in ["n1", "n-1", "a", &"a".repeat(63), "0"] {
            assert_eq!(NodeName::parse(good).unwrap().as_str(), good);
        }
        for bad in ["", "N_1", "-a", "a-", "n.1", "n/1", "Ab", &"a".repeat(64)] {
            assert!(NodeName::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(
            NodeName::parse("N_1").unwrap_err().to_string(),
            "node name 'N_1' is not usable: use 1-63 characters a-z, 0-9 and '-' (not at either end)"
        );
    }

    #[test]
    fn a_refused_name_is_shown_cut_short_and_escaped() {
        let long = format!("bad\n{}", "x".repeat(4096));
        let shown = NodeName::parse(&long).unwrap_err().0;
        assert!(shown.starts_with("bad\\n"), "{shown}");
        assert!(shown.ends_with("..."), "{shown}");
        assert!(shown.len() < 80, "{}", shown.len());
    }

    #[test]
    fn records_read_back_as_found() {
        for text in [r#""n1""#, r#""Hand Written/1""#, r#""""#] {
            let name: NodeName = serde_json::from_str(text).unwrap();
            assert_eq!(serde_json::to_string(&name).unwrap(), text);
        }
        let name: NodeName = serde_json::from_str(r#""N_1""#).unwrap();
        assert_eq!(name, "N_1");
        assert!(serde_json::from_str::<NodeName>("3").is_err());
    }
}
