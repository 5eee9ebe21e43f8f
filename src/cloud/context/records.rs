//! The index records of one call: every read and write of a VM, disk, stemcell or snapshot
//! record by a handler is a method here, so the call's copies ([`CloudContext::vm`],
//! [`CloudContext::disk_if_any`]) always say what the call last read or wrote.

use serde::Serialize;
use serde::de::DeserializeOwned;

use super::{CloudContext, ContextError};
use crate::cluster::model::StemcellRecord;
use crate::cluster::{DiskRecord, Keys, SnapshotRecord, VmRecord, claims, index};
use crate::protocol::{DiskCid, SnapshotCid, StemcellCid, VmCid};

impl CloudContext<'_> {
    /// The index record of VM `cid`: what this call wrote, else the view if it is loaded,
    /// else one read (kept for the rest of the call).
    pub(crate) async fn vm(&self, cid: &VmCid) -> Result<Option<VmRecord>, ContextError> {
        if let Some(known) = self.vms.lock().unwrap().get(cid) {
            return Ok(known.clone());
        }
        let record = match self.cluster.get() {
            Some(view) => view.vm(cid)?.cloned(),
            None => self.read(|k| k.vm(cid)).await?,
        };
        self.note_vm(cid, record.clone());
        Ok(record)
    }

    /// The index record of VM `cid` read now, not from this call's view or cache: a
    /// concurrent create_vm may have written it since. `None` means the VM is abandoned.
    pub(crate) async fn vm_record_now(
        &self,
        cid: &VmCid,
    ) -> Result<Option<VmRecord>, ContextError> {
        // Deliberately fresh (see above); the answer replaces what the call knew.
        let record = self.read(|k| k.vm(cid)).await?;
        self.note_vm(cid, record.clone());
        Ok(record)
    }

    /// Writes a VM's index record.
    pub(crate) async fn save_vm(&self, record: &VmRecord) -> Result<(), ContextError> {
        self.write(|k| k.vm(&record.cid), record).await?;
        self.note_vm(&record.cid, Some(record.clone()));
        Ok(())
    }

    /// Removes a VM's index record and its address claims.
    pub(crate) async fn forget_vm(&self, record: &VmRecord) -> Result<(), ContextError> {
        let keys = self.keys().await?;
        claims::forget_vm(self.etcd().await?, &keys, record).await?;
        self.note_vm(&record.cid, None);
        Ok(())
    }

    /// Writes the record of a new VM and claims its `wanted` addresses on `lease`, in one
    /// transaction (see [`claims::claim_for_new_vm`]); when all are claimed, the call
    /// knows the record with those addresses.
    pub(crate) async fn claim_new_vm(
        &self,
        lease: &index::ProgressLease,
        record: &VmRecord,
        wanted: &[claims::Wanted],
    ) -> Result<claims::Claimed, ContextError> {
        let keys = self.keys().await?;
        let etcd = self.etcd().await?;
        let claimed = claims::claim_for_new_vm(etcd, &keys, lease.id(), record, wanted).await?;
        if let claims::Claimed::All(addresses) = &claimed {
            let mut written = record.clone();
            written.addresses = addresses.clone();
            self.note_vm(&record.cid, Some(written));
        }
        Ok(claimed)
    }

    /// Takes a new VM's record and claims off `lease` (see [`claims::make_permanent`]);
    /// whether they were still there.
    pub(crate) async fn make_vm_permanent(
        &self,
        lease: &index::ProgressLease,
        record: &VmRecord,
    ) -> Result<bool, ContextError> {
        let keys = self.keys().await?;
        let etcd = self.etcd().await?;
        let kept = claims::make_permanent(etcd, &keys, lease.id(), record).await?;
        if kept {
            self.note_vm(&record.cid, Some(record.clone()));
        }
        Ok(kept)
    }

    /// Removes the address claims that name VM `cid` (a VM without a record).
    pub(crate) async fn forget_claims_of(&self, cid: &VmCid) -> Result<(), ContextError> {
        let keys = self.keys().await?;
        Ok(claims::forget_claims_of(self.etcd().await?, &keys, cid).await?)
    }

    /// A lease for what a create_vm writes while it runs (see [`index::ProgressLease`]).
    pub(crate) async fn progress_lease(&self) -> Result<index::ProgressLease, ContextError> {
        Ok(index::ProgressLease::start(self.etcd().await?).await?)
    }

    fn note_vm(&self, cid: &VmCid, record: Option<VmRecord>) {
        self.vms.lock().unwrap().insert(cid.clone(), record);
    }

    /// The disk's index record, `None` when there is none (read once per call).
    pub(crate) async fn disk_if_any(
        &self,
        cid: &DiskCid,
    ) -> Result<Option<DiskRecord>, ContextError> {
        if let Some(known) = self.disks.lock().unwrap().get(cid) {
            return Ok(known.clone());
        }
        let record = self.read(|k| k.disk(cid)).await?;
        self.note_disk(cid, record.clone());
        Ok(record)
    }

    /// Writes a disk's index record.
    pub(crate) async fn save_disk(&self, disk: &DiskRecord) -> Result<(), ContextError> {
        self.write(|k| k.disk(&disk.cid), disk).await?;
        self.note_disk(&disk.cid, Some(disk.clone()));
        Ok(())
    }

    /// Removes a disk's index record.
    pub(crate) async fn delete_disk_record(&self, cid: &DiskCid) -> Result<(), ContextError> {
        self.remove(|k| k.disk(cid)).await?;
        self.note_disk(cid, None);
        Ok(())
    }

    fn note_disk(&self, cid: &DiskCid, record: Option<DiskRecord>) {
        self.disks.lock().unwrap().insert(cid.clone(), record);
    }

    /// The index record of stemcell `cid`, `None` when there is none.
    pub(crate) async fn stemcell(
        &self,
        cid: &StemcellCid,
    ) -> Result<Option<StemcellRecord>, ContextError> {
        self.read(|k| k.stemcell(cid)).await
    }

    /// Writes a stemcell's index record.
    pub(crate) async fn save_stemcell(&self, record: &StemcellRecord) -> Result<(), ContextError> {
        self.write(|k| k.stemcell(&record.cid), record).await
    }

    /// Removes a stemcell's index record.
    pub(crate) async fn forget_stemcell(&self, cid: &StemcellCid) -> Result<(), ContextError> {
        self.remove(|k| k.stemcell(cid)).await
    }

    /// The index record of snapshot `cid`, `None` when there is none.
    pub(crate) async fn snapshot(
        &self,
        cid: &SnapshotCid,
    ) -> Result<Option<SnapshotRecord>, ContextError> {
        self.read(|k| k.snapshot(cid)).await
    }

    /// Writes a snapshot's index record.
    pub(crate) async fn save_snapshot(&self, record: &SnapshotRecord) -> Result<(), ContextError> {
        self.write(|k| k.snapshot(&record.cid), record).await
    }

    /// Removes a snapshot's index record.
    pub(crate) async fn forget_snapshot(&self, cid: &SnapshotCid) -> Result<(), ContextError> {
        self.remove(|k| k.snapshot(cid)).await
    }

    /// Reads the record at the key `key` makes from the cluster's keys.
    async fn read<T: DeserializeOwned>(
        &self,
        key: impl FnOnce(&Keys) -> String,
    ) -> Result<Option<T>, ContextError> {
        let key = key(&self.keys().await?);
        Ok(index::get(self.etcd().await?, &key).await?)
    }

    /// Writes `record` at the key `key` makes.
    async fn write<T: Serialize>(
        &self,
        key: impl FnOnce(&Keys) -> String,
        record: &T,
    ) -> Result<(), ContextError> {
        let key = key(&self.keys().await?);
        Ok(index::put(self.etcd().await?, &key, record).await?)
    }

    /// Removes the record at the key `key` makes.
    async fn remove(&self, key: impl FnOnce(&Keys) -> String) -> Result<(), ContextError> {
        let key = key(&self.keys().await?);
        Ok(index::delete(self.etcd().await?, &key).await?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloud::context::tests::offline;
    use crate::cluster::model::DiskMove;
    use crate::cluster::{ClusterView, VmState};
    use crate::timestamp::Timestamp;

    fn vm(n: u32) -> VmRecord {
        VmRecord {
            cid: VmCid::parse(&format!("vm-00000000-0000-0000-0000-{n:012}")).unwrap(),
            node: "n1".into(),
            agent_id: "agent".into(),
            stemcell_cid: "sc-00000000-0000-0000-0000-00000000000c".to_string(),
            memory_mib: 512,
            group: None,
            state: VmState::Created,
            created_at: Timestamp::now(),
            metadata: Default::default(),
            addresses: Vec::new(),
        }
    }

    fn disk() -> DiskRecord {
        DiskRecord {
            cid: DiskCid::parse("disk-00000000-0000-0000-0000-000000000009").unwrap(),
            node: "n1".into(),
            size_mib: 1024,
            vm: None,
            moving: DiskMove::Settled,
            created_at: Timestamp::now(),
            metadata: Default::default(),
        }
    }

    #[tokio::test]
    async fn a_vm_is_answered_from_the_loaded_view_without_a_read() {
        let one = vm(1);
        let view = ClusterView {
            vms: vec![one.clone()],
            ..Default::default()
        };
        let ctx = offline(Some(view));
        assert_eq!(ctx.vm(&one.cid).await.unwrap(), Some(one));
        assert_eq!(ctx.vm(&vm(2).cid).await.unwrap(), None);
    }

    #[tokio::test]
    async fn what_the_call_wrote_wins_over_its_view() {
        let one = vm(1);
        let view = ClusterView {
            vms: vec![one.clone()],
            ..Default::default()
        };
        let ctx = offline(Some(view));
        ctx.note_vm(&one.cid, None);
        assert_eq!(
            ctx.vm(&one.cid).await.unwrap(),
            None,
            "forgotten by the call"
        );
    }

    #[tokio::test]
    async fn a_disk_the_call_knows_is_not_read_again() {
        let ctx = offline(None);
        let known = disk();
        let e = ctx.disk_if_any(&known.cid).await.unwrap_err();
        assert!(
            matches!(e, ContextError::Config(_)),
            "an unknown disk is read: {e:?}"
        );
        ctx.note_disk(&known.cid, Some(known.clone()));
        assert_eq!(
            ctx.disk_if_any(&known.cid).await.unwrap(),
            Some(known.clone())
        );
        ctx.note_disk(&known.cid, None);
        assert_eq!(ctx.disk_if_any(&known.cid).await.unwrap(), None);
    }
}
