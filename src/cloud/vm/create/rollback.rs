//! The one way create_vm undoes what it made: every step pushes its undo on a stack,
//! and a failure runs the stack in reverse.

use crate::cloud::CloudContext;
use crate::cloud::context::NodeHandle;
use crate::cluster::VmRecord;
use crate::ids::VmCid;
use crate::protocol::CpiError;

/// One thing made for the VM, and how it goes again.
pub(super) enum Undo {
    /// The VM's record and the address claims it lists.
    IndexRecord(Box<VmRecord>),
    Volume(String),
    Container(VmCid),
    /// The VM's directory of the node's disk tree, with the disks bound.
    DiskTree {
        disks_dir: String,
        vm: VmCid,
    },
}

/// What to undo, in reverse order, when creation fails.
#[derive(Default)]
pub(super) struct UndoStack(Vec<Undo>);

impl UndoStack {
    /// A stack whose first step forgets `record` (and its claims).
    pub(super) fn for_record(record: &VmRecord) -> UndoStack {
        UndoStack(vec![Undo::IndexRecord(Box::new(record.clone()))])
    }

    pub(super) fn push(&mut self, step: Undo) {
        self.0.push(step);
    }

    /// Undoes every step, last first. Without `docker` the node's steps are skipped; a
    /// node step that fails keeps the record, so delete_vm can finish the job.
    pub(super) async fn run(self, ctx: &CloudContext<'_>, docker: Option<&NodeHandle<'_>>) {
        let mut node_clean = true;
        for step in self.0.into_iter().rev() {
            if let Err(e) = undo(ctx, docker, &step, node_clean).await {
                node_clean = false;
                tracing::warn!("undo after failed create_vm: {}", e.message);
            }
        }
    }
}

async fn undo(
    ctx: &CloudContext<'_>,
    docker: Option<&NodeHandle<'_>>,
    step: &Undo,
    node_clean: bool,
) -> Result<(), CpiError> {
    match (step, docker) {
        (Undo::Container(name), Some(d)) => Ok(d.remove_container(name).await?),
        (Undo::Volume(name), Some(d)) => Ok(d.remove_volume(name).await?),
        (Undo::DiskTree { disks_dir, vm }, Some(d)) => Ok(d.forget_vm_disks(disks_dir, vm).await?),
        (Undo::IndexRecord(record), _) if node_clean => Ok(ctx.forget_vm(record).await?),
        // The node could not be cleaned: keep the record so delete_vm can finish.
        (Undo::IndexRecord(_), _) => Ok(()),
        (_, None) => Ok(()),
    }
}
