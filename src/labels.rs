//! Every Docker label key this CPI writes on containers, volumes, images and networks, in
//! one place: the keys are how a later call (or another CPI of the same cluster) finds
//! and judges what an earlier one made, so they must be spelled the same everywhere.

/// Label on helper containers of a volume copy, valued with the volume they mount.
pub(crate) const HELPER: &str = "moltencore.helper";

/// Label on a node's mounter container, valued with its binary's digest.
pub(crate) const MOUNTER: &str = "moltencore.mounter";

/// Label on the `bosh` Docker network that node-prep creates.
pub(crate) const NETWORK: &str = "moltencore.network";

/// Label keys on VM containers and their ephemeral volumes.
pub(crate) mod vm {
    /// The VM's cid (container).
    pub(crate) const VM_CID: &str = "moltencore.vm.cid";
    /// The BOSH agent id the VM was created with (container and ephemeral volume).
    pub(crate) const AGENT_ID: &str = "moltencore.vm.agent_id";
    /// The stemcell cid the VM runs.
    pub(crate) const STEMCELL: &str = "moltencore.vm.stemcell";
    /// The BOSH group (`env.bosh.group`), for operators.
    pub(crate) const GROUP: &str = "moltencore.vm.group";
    /// When the VM was created (RFC 3339).
    pub(crate) const CREATED_AT: &str = "moltencore.vm.created_at";
    /// The ephemeral disk size asked for, in MiB (on the ephemeral volume).
    pub(crate) const EPHEMERAL_DISK_MIB: &str = "moltencore.vm.ephemeral_disk_mib";
    /// How the VM takes persistent disks: [`BLOCK_DISKS`] on VMs whose disks are block
    /// devices; VMs made earlier have no such label.
    pub(crate) const DISKS: &str = "moltencore.vm.disks";
    /// The value of [`DISKS`] for disks as block devices.
    pub(crate) const BLOCK_DISKS: &str = "block";
    /// On an ephemeral volume: the VM it belongs to.
    pub(crate) const EPHEMERAL_OF: &str = "moltencore.ephemeral.vm";
    /// The etcd key prefix of the index the VM is recorded in: only that CPI may judge
    /// the VM abandoned.
    pub(crate) const INDEX: &str = "moltencore.vm.index";

    /// The VM a container belongs to, read from its [`VM_CID`] label. `None` without the
    /// label or when its value is not a VM cid: then no VM of this CPI made the container.
    pub(crate) fn vm_of(
        labels: Option<&std::collections::HashMap<String, String>>,
    ) -> Option<crate::ids::VmCid> {
        labels?
            .get(VM_CID)
            .and_then(|h| crate::ids::VmCid::parse(h).ok())
    }
}

/// Label keys on persistent disk volumes.
pub(crate) mod disk {
    /// The disk's cid (volume).
    pub(crate) const DISK_CID: &str = "moltencore.disk.cid";
    /// The disk's size in MiB.
    pub(crate) const SIZE_MIB: &str = "moltencore.disk.size_mib";
}

/// Label keys on snapshot volumes.
pub(crate) mod snapshot {
    /// The snapshot's cid (volume).
    pub(crate) const CID: &str = "moltencore.snapshot.cid";
    /// The disk the snapshot was copied from.
    pub(crate) const DISK: &str = "moltencore.snapshot.disk";
    /// Prefix of one label per metadata key (`moltencore.snapshot.meta.<key>`).
    pub(crate) const META_PREFIX: &str = "moltencore.snapshot.meta.";
}

/// Label keys on imported stemcell images.
pub(crate) mod stemcell {
    /// The stemcell's cid.
    pub(crate) const CID: &str = "moltencore.stemcell.cid";
    /// The stemcell's name from its manifest.
    pub(crate) const NAME: &str = "moltencore.stemcell.name";
    /// The stemcell's version from its manifest.
    pub(crate) const VERSION: &str = "moltencore.stemcell.version";
    /// The stemcell's operating system, when the manifest names one.
    pub(crate) const OS: &str = "moltencore.stemcell.os";
}
