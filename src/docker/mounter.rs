//! The node's mounter: one small container per node (`mc-mounter`, made on first use)
//! that sees the node's VM disk tree (shared with the host, see [`crate::disk_mounts`]) and
//! Docker's volumes, and in which the CPI runs `exec` to bind a disk into a running VM or
//! remove it. Its image holds only the static `mc-mounter` binary built with the CPI, so
//! it depends on no stemcell; a CPI with another binary replaces the container.

use std::collections::HashMap;

use bollard::models::{ContainerCreateBody, HostConfig, RestartPolicy, RestartPolicyNameEnum};
use sha2::{Digest, Sha256};

use super::error::DockerError;
use super::exec::Done;
use super::node::NodeDocker;
use crate::labels;

/// The static helper, built by `build.rs` from `mounter/main.rs`.
const BINARY: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/mc-mounter"));
/// Rounds of waiting for a mounter another call is making.
const MAKE_ATTEMPTS: u32 = 20;
/// Pause between two of them.
const MAKE_PAUSE: std::time::Duration = std::time::Duration::from_millis(250);
/// The version of the mounter this CPI carries (the digest of its sources).
const VERSION: &str = env!("MC_MOUNTER_VERSION");
/// The mounter's exit code for a command it does not know, or another version.
const USAGE: i64 = 2;
/// The mounter's exit code for a disk (or its image) that is not on this node.
pub(crate) const NOT_HERE: i64 = 3;
/// The mounter's exit code for a disk whose volume holds files besides its image.
pub(crate) const NOT_AN_IMAGE: i64 = 4;
/// The mounter's exit code for a disk that a VM or a loop device of the node holds.
pub(crate) const IN_USE: i64 = 5;
/// Name of the mounter container on every node.
pub(crate) const CONTAINER: &str = "mc-mounter";
const IMAGE_REPO: &str = "moltencore-mounter";

/// The tag of this CPI's mounter image: the binary's digest, so a new binary gets a new
/// image and container.
fn tag() -> String {
    hex::encode(Sha256::digest(BINARY))[..16].to_string()
}

fn image() -> String {
    format!("{IMAGE_REPO}:{}", tag())
}

/// A disk put in a VM as a block device, as the mounter found its image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct BlockDisk {
    /// The image holds a filesystem: nothing to format.
    pub(crate) formatted: bool,
    /// The disk's files, kept as a folder by an earlier version, wait in the VM's
    /// `/warden-cpi-dev/.folder-<disk>` to be copied into the (new) image.
    pub(crate) folder: bool,
    /// Its filesystem is smaller than its image (grown by resize_disk): the VM grows it.
    pub(crate) grow: bool,
}

impl NodeDocker {
    /// Makes disk `disk` a block device in VM `vm`'s disk directory (its
    /// `/warden-cpi-dev/<disk>`), its image made of `size_mib` if the volume holds none.
    pub(crate) async fn attach_block_disk(
        &self,
        disks_dir: &str,
        vm: &str,
        disk: &str,
        size_mib: u64,
    ) -> Result<BlockDisk, DockerError> {
        let size = size_mib.to_string();
        let lines = self
            .mounter_ok(disks_dir, &["attach", vm, disk, &size])
            .await?;
        Ok(BlockDisk {
            formatted: lines.iter().any(|l| l == "formatted"),
            folder: lines.iter().any(|l| l == "folder"),
            grow: lines.iter().any(|l| l == "grow"),
        })
    }

    /// Makes VM `vm`'s ephemeral disk (the image in its volume `<vm>-ephemeral`, made of
    /// `size_mib` if the volume holds none) a block device in its disk directory, where
    /// its start script mounts it on `/var/vcap/data`.
    pub(crate) async fn attach_ephemeral_disk(
        &self,
        disks_dir: &str,
        vm: &str,
        size_mib: u64,
    ) -> Result<(), DockerError> {
        let size = size_mib.to_string();
        self.mounter_ok(disks_dir, &["attach-ephemeral", vm, &size])
            .await
            .map(|_| ())
    }

    /// Grows disk `disk`'s image to `size_mib` (its filesystem is grown by the VM of its
    /// next attach); whether it had an image. A disk something on the node holds fails with
    /// [`IN_USE`].
    pub(crate) async fn grow_disk(
        &self,
        disks_dir: &str,
        disk: &str,
        size_mib: u64,
    ) -> Result<bool, DockerError> {
        let size = size_mib.to_string();
        let lines = self.mounter_ok(disks_dir, &["grow", disk, &size]).await?;
        Ok(lines.iter().all(|l| l != "no image"))
    }

    /// Copies disk `disk`'s image into the new, empty volume `to` of this node (a
    /// snapshot), hole for hole and read back; the bytes of data copied. A disk without
    /// an image fails with [`NOT_HERE`], one whose volume holds more with
    /// [`NOT_AN_IMAGE`].
    pub(crate) async fn copy_disk_image(
        &self,
        disks_dir: &str,
        disk: &str,
        to: &str,
    ) -> Result<u64, DockerError> {
        let args = ["copy-image", disk, to];
        let lines = self.mounter_ok(disks_dir, &args).await?;
        lines
            .last()
            .and_then(|l| l.strip_prefix("copied "))
            .and_then(|l| l.split(' ').nth(1))
            .and_then(|b| b.parse().ok())
            .ok_or_else(|| DockerError::Mount {
                node: self.name.to_string(),
                command: args.join(" "),
                code: 0,
                detail: "no account of the copy".to_string(),
            })
    }

    /// After VM `vm` copied disk `disk`'s folder into its image: the folder goes.
    pub(crate) async fn settle_disk(
        &self,
        disks_dir: &str,
        vm: &str,
        disk: &str,
    ) -> Result<(), DockerError> {
        self.mounter_ok(disks_dir, &["settle", vm, disk])
            .await
            .map(|_| ())
    }

    /// Removes disk `disk` from VM `vm`; not bound is success.
    pub(crate) async fn unbind_disk(
        &self,
        disks_dir: &str,
        vm: &str,
        disk: &str,
    ) -> Result<(), DockerError> {
        self.mounter_ok(disks_dir, &["unbind", vm, disk])
            .await
            .map(|_| ())
    }

    /// The disks bound into VM `vm`.
    pub(crate) async fn disks_bound_in(
        &self,
        disks_dir: &str,
        vm: &str,
    ) -> Result<Vec<String>, DockerError> {
        self.mounter_ok(disks_dir, &["list", vm]).await
    }

    /// The VMs of the node that have disk `disk` bound.
    pub(crate) async fn disk_holders(
        &self,
        disks_dir: &str,
        disk: &str,
    ) -> Result<Vec<String>, DockerError> {
        self.mounter_ok(disks_dir, &["holders", disk]).await
    }

    /// Removes every disk of VM `vm` and its directory (the VM is gone).
    pub(crate) async fn forget_vm_disks(
        &self,
        disks_dir: &str,
        vm: &str,
    ) -> Result<(), DockerError> {
        self.mounter_ok(disks_dir, &["forget", vm])
            .await
            .map(|_| ())
    }

    /// Runs one mounter command that must succeed; its output lines.
    async fn mounter_ok(&self, disks_dir: &str, args: &[&str]) -> Result<Vec<String>, DockerError> {
        let done = self.mounter(disks_dir, args).await?;
        let lines = done.output.lines().filter(|l| !l.is_empty());
        if done.code != 0 {
            return Err(DockerError::Mount {
                node: self.name.to_string(),
                command: args.join(" "),
                code: done.code,
                detail: lines.collect::<Vec<_>>().join("; "),
            });
        }
        Ok(lines.map(str::to_string).collect())
    }

    /// Runs `mc-mounter ARGS` in the node's mounter. The mounter is made first when it is
    /// missing or stopped, and replaced by this CPI's when it is of another version (it
    /// answers 2 to the version this CPI asks for), which costs no inspect per call. Calls on one node run side by side: one that finds
    /// another making the mounter (its name taken, the container not there yet) waits and
    /// tries again.
    async fn mounter(&self, disks_dir: &str, args: &[&str]) -> Result<Done, DockerError> {
        let mut attempt = 0;
        loop {
            match self.exec_in_mounter(args).await {
                Err(DockerError::NotFound { .. } | DockerError::Conflict { .. }) => {}
                Ok(done) if done.code == USAGE => {}
                done => return done,
            }
            attempt += 1;
            match self.ensure_mounter(disks_dir).await {
                Ok(()) => return self.exec_in_mounter(args).await,
                Err(DockerError::NotFound { .. } | DockerError::Conflict { .. })
                    if attempt < MAKE_ATTEMPTS =>
                {
                    tokio::time::sleep(MAKE_PAUSE).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn exec_in_mounter(&self, args: &[&str]) -> Result<Done, DockerError> {
        let mut cmd = vec![
            "/mc-mounter".to_string(),
            "--version-is".to_string(),
            VERSION.to_string(),
        ];
        cmd.extend(args.iter().map(|a| a.to_string()));
        let doing = format!("running mc-mounter {} on the node", args.join(" "));
        self.exec(CONTAINER, cmd, &doing).await
    }

    /// The mounter of this CPI's binary, running.
    async fn ensure_mounter(&self, disks_dir: &str) -> Result<(), DockerError> {
        if let Some(c) = self.inspect_container(CONTAINER).await? {
            let ours = c.config.as_ref().and_then(|c| c.image.as_deref()) == Some(image().as_str());
            if ours {
                return self.start(CONTAINER).await;
            }
            tracing::info!(node = %self.name, "replacing the mounter of another CPI version");
            // By its id: a mounter another call made meanwhile is not removed.
            let id = c.id.clone().unwrap_or_else(|| CONTAINER.to_string());
            self.remove_container(&id).await?;
        }
        self.ensure_mounter_image().await?;
        let root = self
            .docker
            .info()
            .await
            .map_err(|e| self.error("reading Docker's root directory", &e))?
            .docker_root_dir
            .unwrap_or_else(|| "/var/lib/docker".into());
        let body = ContainerCreateBody {
            image: Some(image()),
            entrypoint: Some(vec!["/mc-mounter".into()]),
            cmd: Some(vec!["serve".into()]),
            stop_signal: Some("SIGKILL".into()),
            labels: Some(HashMap::from([(labels::MOUNTER.to_string(), tag())])),
            host_config: Some(HostConfig {
                binds: Some(vec![
                    format!("{disks_dir}:/vms:rshared"),
                    format!("{root}/volumes:/volumes"),
                ]),
                cap_add: Some(vec!["SYS_ADMIN".into()]),
                // Loop devices (block 7) and their control (misc 10:237); the mounter makes
                // their nodes in its /dev, which holds only the devices of its start.
                device_cgroup_rules: Some(vec!["b 7:* rwm".into(), "c 10:237 rwm".into()]),
                security_opt: Some(vec![
                    "apparmor=unconfined".into(),
                    "seccomp=unconfined".into(),
                ]),
                network_mode: Some("none".into()),
                restart_policy: Some(RestartPolicy {
                    name: Some(RestartPolicyNameEnum::ALWAYS),
                    maximum_retry_count: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        };
        match self.create_container(CONTAINER, body).await {
            // Another call made it meanwhile.
            Ok(()) | Err(DockerError::Conflict { .. }) => {}
            Err(e) => return Err(e),
        }
        self.start(CONTAINER).await
    }

    /// The mounter image, imported from an in-memory root of the binary when missing.
    async fn ensure_mounter_image(&self) -> Result<(), DockerError> {
        let tag = tag();
        super::images::ensure_one_file_image(
            self,
            (IMAGE_REPO, &tag),
            ("mc-mounter", 0o755, BINARY),
        )
        .await
    }
}
