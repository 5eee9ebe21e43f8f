//! The files that make Flatcar's Docker a cluster node: TLS material, the environment
//! file with Docker's options, a drop-in for docker.service, a socket unit for the mutual
//! TLS listener, and the oneshot unit that creates the BOSH network after flanneld. Pure
//! rendering; paths are as seen on the node.

use std::net::Ipv4Addr;
use std::path::Path;

use ipnet::Ipv4Net;

use super::pki::CertAndKey;
use crate::node_name::NodeName;

/// The cluster CA certificate, trusted for client certificates.
pub(crate) const CA_FILE: &str = "/etc/moltencore/docker/ca.pem";
/// The node's Docker server certificate.
pub(crate) const SERVER_CERT_FILE: &str = "/etc/moltencore/docker/server.pem";
/// Its private key (mode 0600).
pub(crate) const SERVER_KEY_FILE: &str = "/etc/moltencore/docker/server-key.pem";
/// Docker's options as environment variables, read by docker.service.
pub(crate) const ENV_FILE: &str = "/etc/moltencore/docker/docker.env";
/// The drop-in that makes docker.service read [`ENV_FILE`] and want the TLS socket.
pub(crate) const DROPIN_FILE: &str = "/etc/systemd/system/docker.service.d/50-moltencore.conf";
/// The socket unit of the mutual TLS listener.
pub(crate) const TLS_SOCKET_UNIT: &str = "moltencore-docker-tls.socket";
/// The oneshot unit that creates the BOSH network.
pub(crate) const NETWORK_UNIT: &str = "moltencore-network.service";
/// Marker left while Docker's new configuration is not yet applied (in /run: a reboot
/// applies it anyway).
pub(crate) const RESTART_PENDING: &str = "/run/moltencore/docker-restart-pending";
/// Docker's unix socket on Flatcar.
pub(crate) const DOCKER_SOCKET: &str = "unix:///var/run/docker.sock";

/// Path of one of our units.
pub(crate) fn unit_path(unit: &str) -> String {
    format!("/etc/systemd/system/{unit}")
}

/// What the Docker files are made from.
#[derive(Debug, Clone)]
pub(crate) struct DockerSettings {
    pub(crate) node: NodeName,
    pub(crate) private_ip: Ipv4Addr,
    pub(crate) port: u16,
    /// docker0's address (`--bip`), off the flannel network.
    pub(crate) bip: Ipv4Net,
    pub(crate) mtu: u32,
    /// Name of the BOSH bridge network.
    pub(crate) network_name: String,
    /// The cpi binary as installed on the node.
    pub(crate) cpi_path: String,
}

impl DockerSettings {
    /// `tcp://<private ip>:<port>`: where the CPI reaches this node.
    pub(crate) fn endpoint(&self) -> String {
        format!("tcp://{}:{}", self.private_ip, self.port)
    }
}

/// dockerd's options (besides `--host`): mutual TLS with the node's certificates, docker0
/// off the flannel range, MTU and masquerading for docker0. `prefix` is prepended to the
/// file paths (the prep root, for a dockerd started outside systemd).
pub(crate) fn dockerd_args(s: &DockerSettings, prefix: &Path) -> Vec<String> {
    let p = |f: &str| prefix.join(f.trim_start_matches('/')).display().to_string();
    vec![
        "--tlsverify".into(),
        format!("--tlscacert={}", p(CA_FILE)),
        format!("--tlscert={}", p(SERVER_CERT_FILE)),
        format!("--tlskey={}", p(SERVER_KEY_FILE)),
        format!("--bip={}", s.bip),
        format!("--mtu={}", s.mtu),
        // docker0 is off the flannel network, so flannel's masquerading does not cover it.
        "--ip-masq=true".into(),
    ]
}

/// The environment file: the variables Flatcar's docker.service passes to dockerd.
pub(crate) fn env_file(s: &DockerSettings) -> String {
    let args = dockerd_args(s, Path::new("/"));
    let (tls, rest) = args.split_at(4);
    format!(
        "# Written by cpi node-prep for node {node}; rewritten at every boot.\n\
         # Docker's options on a MoltenCore node: mutual TLS (the listener is\n\
         # {socket}), docker0 off the flannel network.\n\
         DOCKER_OPTS=\"{tls}\"\n\
         DOCKER_OPT_BIP=\"{bip}\"\n\
         DOCKER_OPT_MTU=\"{mtu}\"\n\
         DOCKER_OPT_IPMASQ=\"{masq}\"\n",
        node = s.node,
        socket = TLS_SOCKET_UNIT,
        tls = tls.join(" "),
        bip = rest[0],
        mtu = rest[1],
        masq = rest[2],
    )
}

/// The docker.service drop-in. Its EnvironmentFile is read after flannel's
/// `flannel_docker_opts.env`, so our values win; Docker starts after the VM disk mounts.
pub(crate) fn dropin() -> String {
    format!(
        "# Written by cpi node-prep; rewritten at every boot.\n\
         [Unit]\n\
         Wants={socket} {mounts}\n\
         After={socket} {mounts}\n\
         \n\
         [Service]\n\
         EnvironmentFile={env}\n",
        socket = TLS_SOCKET_UNIT,
        mounts = super::disk_mounts::UNIT,
        env = ENV_FILE,
    )
}

/// The socket unit: systemd binds `<private ip>:<port>` (also before the address is up:
/// FreeBind) and hands it to dockerd, which serves TLS on TCP sockets it inherits when
/// started with `--tlsverify`.
pub(crate) fn tls_socket_unit(s: &DockerSettings) -> String {
    format!(
        "# Written by cpi node-prep; rewritten at every boot.\n\
         [Unit]\n\
         Description=Docker API with mutual TLS on {ip}:{port} (MoltenCore node {node})\n\
         PartOf=docker.service\n\
         \n\
         [Socket]\n\
         ListenStream={ip}:{port}\n\
         FreeBind=true\n\
         NoDelay=true\n\
         Service=docker.service\n\
         \n\
         [Install]\n\
         WantedBy=sockets.target\n",
        ip = s.private_ip,
        port = s.port,
        node = s.node,
    )
}

/// The oneshot unit that creates (or checks) the BOSH network once flanneld has written
/// the node's subnet.
pub(crate) fn network_unit(s: &DockerSettings) -> String {
    format!(
        "# Written by cpi node-prep; rewritten at every boot.\n\
         [Unit]\n\
         Description=MoltenCore BOSH network '{net}' on this node's flannel subnet\n\
         Wants=flanneld.service\n\
         Requires=docker.service\n\
         After=flanneld.service docker.service\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart={cpi} node-prep network --network-name {net} --subnet-env /run/flannel/subnet.env --docker-host {sock}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        net = s.network_name,
        cpi = s.cpi_path,
        sock = DOCKER_SOCKET,
    )
}

/// One file node-prep wants on the node. No `Debug`: the content may be a private key.
pub(crate) struct WantedFile {
    /// Path as seen on the node.
    pub(crate) path: String,
    pub(crate) content: String,
    pub(crate) mode: u32,
}

/// Every Docker file of the node: the CA and server certificate (when known), the key
/// (0600), the options, the drop-in and both units.
pub(crate) fn wanted_files(
    s: &DockerSettings,
    ca_pem: Option<&str>,
    server: Option<&CertAndKey>,
) -> Vec<WantedFile> {
    let file = |path: &str, content: String, mode: u32| WantedFile {
        path: path.to_string(),
        content,
        mode,
    };
    let mut files = Vec::new();
    if let Some(ca) = ca_pem {
        files.push(file(CA_FILE, ca.to_string(), 0o644));
    }
    if let Some(server) = server {
        files.push(file(SERVER_CERT_FILE, server.cert_pem.clone(), 0o644));
        files.push(file(
            SERVER_KEY_FILE,
            server.key_pem.expose().to_string(),
            0o600,
        ));
    }
    files.push(file(ENV_FILE, env_file(s), 0o644));
    files.push(file(DROPIN_FILE, dropin(), 0o644));
    files.push(file(&unit_path(TLS_SOCKET_UNIT), tls_socket_unit(s), 0o644));
    files.push(file(&unit_path(NETWORK_UNIT), network_unit(s), 0o644));
    files.push(file(
        &unit_path(super::disk_mounts::UNIT),
        super::disk_mounts::unit(&s.cpi_path),
        0o644,
    ));
    files
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> DockerSettings {
        DockerSettings {
            node: "n1".into(),
            private_ip: Ipv4Addr::new(192, 0, 2, 11),
            port: 2376,
            bip: "10.255.240.1/20".parse().unwrap(),
            mtu: 1450,
            network_name: "bosh".into(),
            cpi_path: "/opt/bin/cpi".into(),
        }
    }

    #[test]
    fn env_file_holds_flatcars_variables() {
        let env = env_file(&settings());
        assert!(env.contains("DOCKER_OPTS=\"--tlsverify --tlscacert=/etc/moltencore/docker/ca.pem --tlscert=/etc/moltencore/docker/server.pem --tlskey=/etc/moltencore/docker/server-key.pem\"\n"), "{env}");
        assert!(env.contains("DOCKER_OPT_BIP=\"--bip=10.255.240.1/20\"\n"));
        assert!(env.contains("DOCKER_OPT_MTU=\"--mtu=1450\"\n"));
        assert!(env.contains("DOCKER_OPT_IPMASQ=\"--ip-masq=true\"\n"));
    }

    #[test]
    fn args_follow_the_root() {
        let args = dockerd_args(&settings(), Path::new("/tmp/r"));
        assert_eq!(args[1], "--tlscacert=/tmp/r/etc/moltencore/docker/ca.pem");
        assert_eq!(settings().endpoint(), "tcp://192.0.2.11:2376");
    }

    #[test]
    fn units_name_their_parts() {
        assert!(tls_socket_unit(&settings()).contains("ListenStream=192.0.2.11:2376\n"));
        assert!(dropin().contains("EnvironmentFile=/etc/moltencore/docker/docker.env\n"));
        let net = network_unit(&settings());
        assert!(net.contains("After=flanneld.service docker.service\n"));
        assert!(net.contains("ExecStart=/opt/bin/cpi node-prep network --network-name bosh"));
    }
}
