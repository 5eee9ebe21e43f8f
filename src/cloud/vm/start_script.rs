//! The container's start command: undo Docker's bind-mounted resolv.conf, hosts and
//! hostname (the agent and bosh-dns write them), write them from the VM's network, mount
//! the persistent disk the agent mounted last back on its store, then exec the stemcell's
//! init (runit or systemd).

use std::net::IpAddr;

use super::agent_files::DISK_MOUNT_ROOT;
use super::inside::{FORMAT_AT_START, GROW_AT_START};
use crate::config::StartMode;
use crate::disk_mounts::IMAGE_FILE;

/// The init a stemcell starts with in each mode.
pub(crate) fn init_path(mode: StartMode) -> &'static str {
    match mode {
        StartMode::Runit => "/usr/sbin/runsvdir-start",
        StartMode::Systemd => "/sbin/init",
    }
}

/// Where the agent writes the cid of the disk it mounted last.
pub(crate) const MANAGED_DISK_FILE: &str = "/var/vcap/bosh/managed_disk_settings.json";
/// Left by a graceful stop ([`super::graceful_stop`]): monit's state file, which says every
/// job is unmonitored, goes before the next start of monit.
pub(crate) const JOBS_STOPPED: &str = "/var/vcap/bosh/moltencore-jobs-stopped";
/// Where the agent mounts the persistent disk.
pub(crate) const STORE: &str = "/var/vcap/store";
/// How long the start waits for the last mounted disk to appear (after a host reboot its
/// device is made again by `cpi node-prep disk-mounts`, which may finish after Docker
/// started the container), in tenths of a second.
const DISK_WAIT_TENTHS: u32 = 600;

/// At every start (a host reboot, a dockerd restart, reboot_vm, the restart policy) the
/// disk the agent mounted last goes back on the store before any job starts: the agent
/// itself re-mounts only a disk with a partition table, which a disk here (a filesystem
/// on the whole device) has not. The cid comes from the VM's own file, so only a cid's
/// characters pass. The device is mounted only once the loop device it names is backed by
/// that disk's image (a node left from before a reboot names another loop device until
/// node-prep makes it again); a disk no longer attached (no node) is not waited for.
fn store_script() -> String {
    format!(
        "{}d=$(cat {MANAGED_DISK_FILE} 2>/dev/null)\n\
         case \"$d\" in ''|*[!a-z0-9-]*) ;; *)\n\
         \x20 p=\"{DISK_MOUNT_ROOT}/$d\"\n\
         \x20 backed() {{ [ -b \"$p\" ] || return 1; set -- $(stat -c '%t %T' \"$p\"); case \"$(cat /sys/dev/block/$((0x$1)):$((0x$2))/loop/backing_file 2>/dev/null)\" in */\"$d\"/_data/{IMAGE_FILE}*) return 0;; esac; return 1; }}\n\
         \x20 if [ -e \"$p\" ] && ! grep -q \" {STORE} \" /proc/self/mountinfo; then\n\
         \x20   i=0\n\
         \x20   until backed || [ $i -ge {DISK_WAIT_TENTHS} ]; do sleep 0.1; i=$((i+1)); done\n\
         \x20   if backed; then mkdir -p {STORE} && mount \"$p\" {STORE}; fi\n\
         \x20 fi;;\n\
         esac\n",
        format_script()
    )
}

/// Where the ephemeral disk is mounted (the agent's data directory).
const DATA: &str = "/var/vcap/data";

/// A sized ephemeral disk (the block device `volume`, the VM's `<vm>-ephemeral`, in the
/// VM's folder of the disk tree) goes on `/var/vcap/data` at every start, before the
/// agent: formatted first when it holds no filesystem (a new VM; lazily initialised where
/// the stemcell's mkfs.ext4 knows how) and given what the stemcell has in
/// `/var/vcap/data` (as Docker fills a new volume), mounted once its node is the loop
/// device of its image (after a host reboot, node-prep makes it again), waited for as the
/// store is.
fn ephemeral_script(volume: &str) -> String {
    let volume: String = volume
        .chars()
        .filter(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '-')
        .collect();
    format!(
        "e=\"{DISK_MOUNT_ROOT}/{volume}\"\n\
         eb() {{ [ -b \"$e\" ] || return 1; set -- $(stat -c '%t %T' \"$e\"); case \"$(cat /sys/dev/block/$((0x$1)):$((0x$2))/loop/backing_file 2>/dev/null)\" in */{volume}/_data/{IMAGE_FILE}*) return 0;; esac; return 1; }}\n\
         if ! grep -q \" {DATA} \" /proc/self/mountinfo; then\n\
         \x20 i=0\n\
         \x20 until eb || [ $i -ge {DISK_WAIT_TENTHS} ]; do sleep 0.1; i=$((i+1)); done\n\
         \x20 if eb; then\n\
         \x20   mkdir -p {DATA}\n\
         \x20   if [ \"$(od -A n -t x1 -j 1080 -N 2 \"$e\" | tr -d ' \\n')\" != 53ef ]; then\n\
         \x20     mkfs.ext4 -F -q -E lazy_itable_init=1,lazy_journal_init=1 \"$e\" >/dev/null 2>&1 || mkfs.ext4 -F \"$e\" >/dev/null 2>&1\n\
         \x20     t=/tmp/.moltencore-data; mkdir -p $t && mount \"$e\" $t && {{ cp -a {DATA}/. $t/; umount $t; }}; rmdir $t\n\
         \x20   fi\n\
         \x20   mount \"$e\" {DATA}\n\
         \x20 fi\n\
         fi\n"
    )
}

/// New disks attached while the VM was stopped are formatted before anything else (the
/// CPI lists them in [`FORMAT_AT_START`]); one that holds a filesystem meanwhile (its
/// superblock's magic, ef53 at 1080) is left alone. Disks grown by resize_disk and
/// attached while it was stopped ([`GROW_AT_START`]) have their filesystems grown.
fn format_script() -> String {
    format!(
        "if [ -f {FORMAT_AT_START} ]; then\n\
         \x20 for d in $(cat {FORMAT_AT_START}); do\n\
         \x20   case \"$d\" in ''|*[!a-z0-9-]*) ;; *)\n\
         \x20     p=\"{DISK_MOUNT_ROOT}/$d\"\n\
         \x20     if [ -b \"$p\" ] && [ \"$(od -A n -t x1 -j 1080 -N 2 \"$p\" | tr -d ' \\n')\" != 53ef ]; then mkfs.ext4 -F \"$p\" >/dev/null 2>&1; fi;;\n\
         \x20   esac\n\
         \x20 done\n\
         \x20 rm -f {FORMAT_AT_START}\n\
         fi\n\
         if [ -f {GROW_AT_START} ]; then\n\
         \x20 for d in $(cat {GROW_AT_START}); do\n\
         \x20   case \"$d\" in ''|*[!a-z0-9-]*) ;; *)\n\
         \x20     p=\"{DISK_MOUNT_ROOT}/$d\"\n\
         \x20     if [ -b \"$p\" ]; then e2fsck -f -p \"$p\" >/dev/null 2>&1; resize2fs \"$p\" >/dev/null 2>&1; fi;;\n\
         \x20   esac\n\
         \x20 done\n\
         \x20 rm -f {GROW_AT_START}\n\
         fi\n"
    )
}

/// The shell script run as `/bin/sh -c <script>`. Only validated IP addresses and the
/// hostname (a cid made of [a-z0-9-]) are interpolated.
pub(crate) fn script(
    hostname: &str,
    ip: Option<IpAddr>,
    dns: &[IpAddr],
    mode: StartMode,
    ephemeral_disk: Option<&str>,
) -> String {
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
    s.push_str(&format!(
        "if [ -e {JOBS_STOPPED} ]; then h=$(getent passwd root 2>/dev/null | cut -d: -f6); rm -f \"${{h:-/root}}/.monit.state\" /root/.monit.state {JOBS_STOPPED}; fi\n"
    ));
    if let Some(volume) = ephemeral_disk {
        s.push_str(&ephemeral_script(volume));
    }
    s.push_str(&store_script());
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
            None,
        );
        assert!(s.contains("umount \"$f\""));
        assert!(s.contains("echo 'nameserver 10.1.2.1' >> /etc/resolv.conf"));
        assert!(s.contains("echo 'nameserver 8.8.8.8' >> /etc/resolv.conf"));
        assert!(s.contains("echo '10.1.2.11 vm-1' >> /etc/hosts"));
        assert!(s.ends_with("exec /usr/sbin/runsvdir-start\n"));
        assert!(
            s.contains("mount \"$p\" /var/vcap/store")
                && s.contains("*/\"$d\"/_data/moltencore-disk.img*)"),
            "{s}"
        );
        assert!(s.contains("*[!a-z0-9-]*) ;;"), "only a cid is used: {s}");
        assert!(
            !s.contains("/var/vcap/data"),
            "no sized ephemeral disk: {s}"
        );
        let s = script("vm-1'; rm -rf /", None, &[], StartMode::Systemd, None);
        assert!(!s.contains("rm -rf"), "{s}");
        assert!(
            !s.contains("resolv.conf\n:"),
            "no DNS leaves resolv.conf alone"
        );
        assert!(s.ends_with("exec /sbin/init\n"));
    }

    #[test]
    fn a_sized_ephemeral_disk_is_formatted_and_mounted_before_init() {
        let s = script(
            "vm-1",
            None,
            &[],
            StartMode::Runit,
            Some("vm-1-ephemeral'; x"),
        );
        assert!(s.contains("e=\"/warden-cpi-dev/vm-1-ephemeralx\""), "{s}");
        assert!(
            s.contains("*/vm-1-ephemeralx/_data/moltencore-disk.img*)"),
            "{s}"
        );
        let mount = s.find("mount \"$e\" /var/vcap/data").expect("mounted");
        assert!(s.find("mkfs.ext4 -F").unwrap() < mount, "{s}");
        assert!(
            mount < s.find("exec /usr/sbin/runsvdir-start").unwrap(),
            "{s}"
        );
    }
}
