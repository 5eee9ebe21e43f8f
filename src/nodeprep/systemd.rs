//! Every systemd call node-prep makes, behind one small seam: the real implementation runs
//! `systemctl`; for a root other than `/` a recording one only notes what it would do, so
//! node-prep runs for real in a temp root without touching the machine's systemd.

use std::process::Command;

use super::error::{NodePrepError, Result};

/// The systemd operations node-prep needs.
pub(crate) trait Systemd {
    /// `systemctl daemon-reload`.
    fn daemon_reload(&mut self) -> Result<()>;
    /// Whether `unit` is active.
    fn is_active(&mut self, unit: &str) -> Result<bool>;
    /// `systemctl restart UNIT`.
    fn restart(&mut self, unit: &str) -> Result<()>;
    /// `systemctl enable --now UNIT`; with `no_block` it does not wait for the start (at
    /// boot the unit may be ordered after units that wait for node-prep itself).
    fn enable_now(&mut self, unit: &str, no_block: bool) -> Result<()>;
    /// What was done (or would have been), in order, for the report.
    fn actions(&self) -> &[String];
}

/// Runs `systemctl` on the running system.
#[derive(Default)]
pub(crate) struct Systemctl {
    actions: Vec<String>,
}

impl Systemctl {
    fn run(&mut self, args: &[&str]) -> Result<()> {
        let out = Command::new("systemctl")
            .args(args)
            .output()
            .map_err(|error| NodePrepError::CommandNotRun {
                command: format!("systemctl {}", args.join(" ")),
                error,
            })?;
        if !out.status.success() {
            return Err(NodePrepError::CommandFailed {
                doing: format!("systemctl {}", args.join(" ")),
                status: out.status.to_string(),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        self.actions.push(args.join(" "));
        Ok(())
    }
}

impl Systemd for Systemctl {
    fn daemon_reload(&mut self) -> Result<()> {
        self.run(&["daemon-reload"])
    }
    fn is_active(&mut self, unit: &str) -> Result<bool> {
        let status = Command::new("systemctl")
            .args(["is-active", "--quiet", unit])
            .status()
            .map_err(|error| NodePrepError::CommandNotRun {
                command: format!("systemctl is-active {unit}"),
                error,
            })?;
        Ok(status.success())
    }
    fn restart(&mut self, unit: &str) -> Result<()> {
        self.run(&["restart", unit])
    }
    fn enable_now(&mut self, unit: &str, no_block: bool) -> Result<()> {
        if no_block {
            self.run(&["enable", "--now", "--no-block", unit])
        } else {
            self.run(&["enable", "--now", unit])
        }
    }
    fn actions(&self) -> &[String] {
        &self.actions
    }
}

/// Records what would be done. Units count as active: a prepared root is assumed to be
/// running as configured, so a second run reports no change.
#[derive(Default)]
pub(crate) struct Recording {
    actions: Vec<String>,
}

impl Systemd for Recording {
    fn daemon_reload(&mut self) -> Result<()> {
        self.actions.push("daemon-reload".into());
        Ok(())
    }
    fn is_active(&mut self, _unit: &str) -> Result<bool> {
        Ok(true)
    }
    fn restart(&mut self, unit: &str) -> Result<()> {
        self.actions.push(format!("restart {unit}"));
        Ok(())
    }
    fn enable_now(&mut self, unit: &str, no_block: bool) -> Result<()> {
        let flag = if no_block { " --no-block" } else { "" };
        self.actions.push(format!("enable --now{flag} {unit}"));
        Ok(())
    }
    fn actions(&self) -> &[String] {
        &self.actions
    }
}
