//! Host tools the tests run beside `cpi`.

use std::path::Path;
use std::process::Command;

/// `systemd-analyze verify --root=<root> <units>`, as run on Debian (package systemd).
pub fn systemd_verify(root: &Path, units: &[&str]) -> std::process::Output {
    Command::new("systemd-analyze")
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .output()
        .unwrap_or_else(|e| panic!("systemd-analyze is needed (Debian package systemd): {e}"))
}
