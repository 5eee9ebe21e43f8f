//! Who this node is: name, hostname, private and public IPv4. Flags win; what is not given
//! comes from Flatcar's `/run/metadata/flatcar` (`COREOS_*` variables written by the
//! metadata agent), the hostname from `/etc/hostname` or the kernel.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use serde::Serialize;

use super::error::{NodePrepError, Result};
use super::files::Root;
use crate::node_name::NodeName;

/// Where Flatcar's metadata agent writes the instance metadata.
pub(crate) const METADATA_FILE: &str = "/run/metadata/flatcar";

/// The flags that name the node; each one is optional.
#[derive(Debug, Clone, Default)]
pub(crate) struct IdentityFlags {
    pub(crate) name: Option<String>,
    pub(crate) hostname: Option<String>,
    pub(crate) private_ip: Option<Ipv4Addr>,
    pub(crate) public_ip: Option<Ipv4Addr>,
}

/// The node's resolved identity.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Identity {
    /// Node name: etcd key, BOSH AZ pin, certificate CN.
    pub(crate) name: NodeName,
    /// DNS name put in the server certificate.
    pub(crate) hostname: String,
    /// Address the Docker API listens on and other nodes reach.
    pub(crate) private_ip: Ipv4Addr,
    /// The node's public address (a certificate SAN; on clouds often NATed).
    pub(crate) public_ip: Ipv4Addr,
}

/// What `/run/metadata/flatcar` says, reduced to the parts node-prep uses.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Metadata {
    pub(crate) hostname: Option<String>,
    pub(crate) private_ip: Option<Ipv4Addr>,
    pub(crate) public_ip: Option<Ipv4Addr>,
}

/// Parses `KEY=value` lines of the metadata file. Provider names differ
/// (`COREOS_EC2_IPV4_LOCAL`, `COREOS_DIGITALOCEAN_IPV4_PRIVATE_0`, `COREOS_GCE_IP_LOCAL_0`,
/// `COREOS_CUSTOM_PUBLIC_IPV4`, ...): names with LOCAL/PRIVATE/DYNAMIC are private, with
/// PUBLIC/EXTERNAL/VIRTUAL public; the first in name order wins.
pub(crate) fn parse_metadata(text: &str) -> Metadata {
    let vars: BTreeMap<&str, &str> = text
        .lines()
        .filter_map(|l| l.trim().split_once('='))
        .map(|(k, v)| (k.trim(), v.trim().trim_matches('"').trim_matches('\'')))
        .filter(|(k, v)| k.starts_with("COREOS_") && !v.is_empty())
        .collect();
    let ip_of = |words: &[&str]| {
        vars.iter()
            .filter(|(k, _)| k.contains("_IP") && !k.contains("IPV6"))
            .filter(|(k, _)| words.iter().any(|w| k.contains(w)))
            .find_map(|(_, v)| v.parse::<Ipv4Addr>().ok())
    };
    Metadata {
        hostname: vars
            .iter()
            .find(|(k, _)| k.ends_with("_HOSTNAME"))
            .map(|(_, v)| v.to_string()),
        private_ip: ip_of(&["LOCAL", "PRIVATE", "DYNAMIC"]),
        public_ip: ip_of(&["PUBLIC", "EXTERNAL", "VIRTUAL"]),
    }
}

/// Parses a node name by [`NodeName::parse`]; the error says how to set it.
pub(crate) fn check_name(name: &str) -> Result<NodeName> {
    NodeName::parse(name).map_err(NodePrepError::BadName)
}

/// Resolves the identity from flags, then the metadata file and hostname below `root`.
pub(crate) fn resolve(flags: &IdentityFlags, root: &Root) -> Result<Identity> {
    let meta = root
        .read(METADATA_FILE)?
        .map(|t| parse_metadata(&t))
        .unwrap_or_default();
    let system_hostname = || -> Result<Option<String>> {
        if let Some(h) = root.read("/etc/hostname")? {
            return Ok(Some(h));
        }
        if root.is_system_root() {
            return Ok(crate::bounded_file::read_to_string(
                std::path::Path::new("/proc/sys/kernel/hostname"),
                crate::bounded_file::FileKind::HostFile,
            )
            .ok());
        }
        Ok(None)
    };
    let hostname = match flags.hostname.clone().or(meta.hostname.clone()) {
        Some(h) => Some(h),
        None => system_hostname()?,
    }
    .map(|h| h.trim().to_string())
    .filter(|h| !h.is_empty());
    let name = match (&flags.name, &hostname) {
        (Some(n), _) => n.clone(),
        // The short hostname, lower-cased: the usual node name.
        (None, Some(h)) => h.split('.').next().unwrap_or(h).to_ascii_lowercase(),
        (None, None) => {
            return Err(NodePrepError::Identity(format!(
                "no node name: give --name, or make sure {METADATA_FILE} or /etc/hostname names the host"
            )));
        }
    };
    let name = check_name(&name)?;
    let Some(private_ip) = flags.private_ip.or(meta.private_ip) else {
        return Err(NodePrepError::Identity(format!(
            "no private IP for node {name}: give --private-ip, or make sure {METADATA_FILE} has a COREOS_*_IPV4_LOCAL/PRIVATE variable"
        )));
    };
    let public_ip = flags.public_ip.or(meta.public_ip).unwrap_or(private_ip);
    Ok(Identity {
        hostname: hostname.unwrap_or_else(|| name.to_string()),
        name,
        private_ip,
        public_ip,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_of_several_providers() {
        let ec2 = parse_metadata(
            "COREOS_EC2_HOSTNAME=ip-10-0-0-5.ec2.internal\nCOREOS_EC2_IPV4_LOCAL=10.0.0.5\nCOREOS_EC2_IPV4_PUBLIC=198.51.100.5\n",
        );
        assert_eq!(ec2.hostname.as_deref(), Some("ip-10-0-0-5.ec2.internal"));
        assert_eq!(ec2.private_ip, Some(Ipv4Addr::new(10, 0, 0, 5)));
        assert_eq!(ec2.public_ip, Some(Ipv4Addr::new(198, 51, 100, 5)));
        let custom = parse_metadata(
            "COREOS_CUSTOM_PRIVATE_IPV4=\"192.0.2.11\"\nCOREOS_CUSTOM_PUBLIC_IPV4=\nCOREOS_CUSTOM_IPV6=::1\n",
        );
        assert_eq!(custom.private_ip, Some(Ipv4Addr::new(192, 0, 2, 11)));
        assert_eq!(custom.public_ip, None);
        let gce =
            parse_metadata("COREOS_GCE_IP_LOCAL_0=10.1.1.2\nCOREOS_GCE_IP_EXTERNAL_0=203.0.113.9");
        assert_eq!(gce.private_ip, Some(Ipv4Addr::new(10, 1, 1, 2)));
        assert_eq!(gce.public_ip, Some(Ipv4Addr::new(203, 0, 113, 9)));
        assert_eq!(parse_metadata("garbage\n=\n"), Metadata::default());
    }

    #[test]
    fn flags_win_and_public_defaults_to_private() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        root.write(
            METADATA_FILE,
            "COREOS_CUSTOM_HOSTNAME=Node-7.example\nCOREOS_CUSTOM_PRIVATE_IPV4=192.0.2.7\n",
            0o644,
        )
        .unwrap();
        let id = resolve(&IdentityFlags::default(), &root).unwrap();
        assert_eq!(id.name, "node-7");
        assert_eq!(id.hostname, "Node-7.example");
        assert_eq!(id.public_ip, Ipv4Addr::new(192, 0, 2, 7));
        let flags = IdentityFlags {
            name: Some("n1".into()),
            public_ip: Some(Ipv4Addr::new(198, 51, 100, 1)),
            ..Default::default()
        };
        let id = resolve(&flags, &root).unwrap();
        assert_eq!(
            (id.name.as_str(), id.private_ip),
            ("n1", Ipv4Addr::new(192, 0, 2, 7))
        );
        assert_eq!(id.public_ip, Ipv4Addr::new(198, 51, 100, 1));
    }

    #[test]
    fn missing_or_bad_input_says_what_to_give() {
        let dir = tempfile::tempdir().unwrap();
        let root = Root::new(dir.path(), false);
        let e = resolve(&IdentityFlags::default(), &root).unwrap_err();
        assert!(e.to_string().contains("--name"), "{e}");
        let flags = IdentityFlags {
            name: Some("n1".into()),
            ..Default::default()
        };
        let e = resolve(&flags, &root).unwrap_err();
        assert!(e.to_string().contains("--private-ip"), "{e}");
        assert_eq!(
            check_name("N_1").unwrap_err().to_string(),
            "node name 'N_1' is not usable: use 1-63 characters a-z, 0-9 and '-' (not at either end); set it with --name"
        );
        assert!(check_name("-a").is_err());
        assert!(check_name("n-1").is_ok());
    }
}
