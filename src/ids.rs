//! The identifiers this CPI issues (`vm-<uuid>`, `disk-<uuid>`, `snap-<uuid>`,
//! `sc-<uuid>`), as types that can only be made by parsing the exact shape or by issuing a
//! new one. Cids become Docker object names (API paths) and etcd keys; a value of these
//! types cannot carry `/`, `..`, `?`, `#`, `%`, control characters or any length but one.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::echo::printable;

/// Why a value is not a cid of the expected kind; names the shape and the value, cut short.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MalformedCid {
    /// What was expected, e.g. `a VM cid (vm-<uuid>)`.
    pub(crate) expected: &'static str,
    /// The offending value, cut short (see `echo::printable`).
    pub(crate) shown: String,
}

impl fmt::Display for MalformedCid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "'{}' is not {}", self.shown, self.expected)
    }
}

/// Whether `s` is `prefix` followed by a UUID in its canonical form (lowercase,
/// hyphenated, 36 characters), the only form `uuid::Uuid`'s `Display` writes.
fn has_shape(s: &str, prefix: &str) -> bool {
    let Some(rest) = s.strip_prefix(prefix) else {
        return false;
    };
    rest.len() == 36
        && uuid::Uuid::try_parse(rest).is_ok_and(|u| u.hyphenated().to_string() == rest)
}

macro_rules! cid_type {
    ($(#[$doc:meta])* $name:ident, $prefix:literal, $expected:literal) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub struct $name(String);

        impl $name {
            /// The prefix of every cid of this kind.
            pub const PREFIX: &'static str = $prefix;
            /// How the shape is named in messages.
            pub const EXPECTED: &'static str = $expected;

            /// Parses the exact shape this CPI issues.
            pub fn parse(s: &str) -> Result<Self, MalformedCid> {
                if has_shape(s, $prefix) {
                    Ok($name(s.to_string()))
                } else {
                    Err(MalformedCid {
                        expected: $expected,
                        shown: printable(s),
                    })
                }
            }

            /// A new, unique cid.
            pub(crate) fn generate() -> Self {
                $name(format!("{}{}", $prefix, uuid::Uuid::new_v4()))
            }

            /// The cid as text (a Docker object name and an etcd key segment).
            pub(crate) fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        /// Read-only access as text, so a cid goes wherever a Docker name is taken.
        impl std::ops::Deref for $name {
            type Target = str;
            fn deref(&self) -> &str {
                &self.0
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl PartialEq<str> for $name {
            fn eq(&self, other: &str) -> bool {
                self.0 == other
            }
        }

        impl PartialEq<&str> for $name {
            fn eq(&self, other: &&str) -> bool {
                self.0 == *other
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        /// Records read back from etcd are checked like requests.
        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                $name::parse(&s).map_err(serde::de::Error::custom)
            }
        }
    };
}

cid_type!(
    /// A VM: the container (and its name) on one node, `<key_prefix>/vms/<cid>` in etcd.
    VmCid,
    "vm-",
    "a VM cid (vm-<uuid>)"
);
cid_type!(
    /// A persistent disk: a Docker volume of that name, `<key_prefix>/disks/<cid>`.
    DiskCid,
    "disk-",
    "a disk cid (disk-<uuid>)"
);
cid_type!(
    /// A disk snapshot: a Docker volume of that name, `<key_prefix>/snapshots/<cid>`.
    SnapshotCid,
    "snap-",
    "a snapshot cid (snap-<uuid>)"
);
cid_type!(
    /// A stemcell (rootfs or docker-light): the image tag `moltencore-stemcell:<cid>` on
    /// the nodes, `<key_prefix>/stemcells/<cid>`.
    StemcellCid,
    "sc-",
    "a stemcell cid (sc-<uuid>)"
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_issued_shape_parses() {
        let vm = VmCid::generate();
        assert_eq!(VmCid::parse(vm.as_str()).unwrap(), vm);
        assert!(VmCid::parse("vm-00000000-0000-0000-0000-000000000000").is_ok());
        let u = "0f0e0d0c-0b0a-4908-8706-050403020100";
        for bad in [
            "".to_string(),
            "vm-".to_string(),
            format!("vm-{}", u.to_uppercase()),
            format!("vm-{}", u.replace('-', "")),
            format!("vm-{{{u}}}"),
            format!("urn:uuid:{u}"),
            format!("disk-{u}"),
            format!("VM-{u}"),
            format!(" vm-{u}"),
            format!("vm-{u} "),
            format!("vm-{u}/../x"),
            format!("x/../../containers/vm-{u}"),
            format!("vm-{u}?force=true"),
            format!("vm-{u}#"),
            format!("vm-{u}\0"),
            format!("vm-{u}\n"),
            format!("vm-{}", "a".repeat(4 << 20)),
        ] {
            let e = VmCid::parse(&bad).unwrap_err();
            assert!(e.shown.chars().count() <= 67, "{}", e.shown);
            assert!(!e.shown.contains('\n') && !e.shown.contains('\0'));
        }
        assert!(DiskCid::parse(&format!("disk-{u}")).is_ok());
        assert!(SnapshotCid::parse(&format!("snap-{u}")).is_ok());
        assert!(StemcellCid::parse(&format!("sc-{u}")).is_ok());
        assert!(StemcellCid::parse(&format!("img-{u}")).is_err());
    }

    #[test]
    fn records_are_checked_when_read() {
        let ok: VmCid =
            serde_json::from_str("\"vm-00000000-0000-0000-0000-000000000000\"").unwrap();
        assert_eq!(
            serde_json::to_string(&ok).unwrap(),
            "\"vm-00000000-0000-0000-0000-000000000000\""
        );
        assert!(serde_json::from_str::<VmCid>("\"vm-1/../x\"").is_err());
    }
}
