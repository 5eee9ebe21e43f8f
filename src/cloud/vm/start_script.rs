//! The container's start command: undo Docker's bind-mounted resolv.conf, hosts and
//! hostname (the agent and bosh-dns write them), write them from the VM's network, then
//! exec the stemcell's init (runit or systemd).

use std::net::IpAddr;

use crate::config::StartMode;

/// The init a stemcell starts with in each mode.
pub fn init_path(mode: StartMode) -> &'static str {
    match mode {
        StartMode::Runit => "/usr/sbin/runsvdir-start",
        StartMode::Systemd => "/sbin/init",
    }
}

/// The shell script run as `/bin/sh -c <script>`. Only validated IP addresses and the
/// hostname (a cid made of [a-z0-9-]) are interpolated.
pub fn script(hostname: &str, ip: Option<IpAddr>, dns: &[IpAddr], mode: StartMode) -> String {
    let safe_host: String = hostname
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '-' || *c == '.')
        .collect();
    let mut s = String::from(
        "for f in /etc/resolv.conf /etc/hosts /etc/hostname; do umount \"$f\" 2>/dev/null || true; done\n",
    );
    if !dns.is_empty() {
        s.push_str(": > /etc/resolv.conf\n");
        for d in dns {
            s.push_str(&format!("echo 'nameserver {d}' >> /etc/resolv.conf\n"));
        }
    }
    s.push_str("echo '127.0.0.1 localhost' > /etc/hosts\n");
    if let Some(ip) = ip {
        s.push_str(&format!("echo '{ip} {safe_host}' >> /etc/hosts\n"));
    }
    s.push_str(&format!("echo '{safe_host}' > /etc/hostname\n"));
    s.push_str(&format!("exec {}\n", init_path(mode)));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_network_files_then_execs_init() {
        let s = script(
            "vm-1",
            Some("10.1.2.11".parse().unwrap()),
            &["10.1.2.1".parse().unwrap(), "8.8.8.8".parse().unwrap()],
            StartMode::Runit,
        );
        assert!(s.contains("umount \"$f\""));
        assert!(s.contains("echo 'nameserver 10.1.2.1' >> /etc/resolv.conf"));
        assert!(s.contains("echo 'nameserver 8.8.8.8' >> /etc/resolv.conf"));
        assert!(s.contains("echo '10.1.2.11 vm-1' >> /etc/hosts"));
        assert!(s.ends_with("exec /usr/sbin/runsvdir-start\n"));
        let s = script("vm-1'; rm -rf /", None, &[], StartMode::Systemd);
        assert!(!s.contains("rm -rf"), "{s}");
        assert!(
            !s.contains("resolv.conf\n:"),
            "no DNS leaves resolv.conf alone"
        );
        assert!(s.ends_with("exec /sbin/init\n"));
    }
}
