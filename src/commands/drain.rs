//! `cpi nodes drain NAME`: empties a node before host maintenance. The CPI cannot move a
//! BOSH VM by itself (the director owns instances), so drain cordons the node (no new VMs)
//! and lists the instances still on it with the `bosh recreate` that moves each: the
//! director deletes and re-creates the VM, placement puts it on another node, and its
//! persistent disk moves with it on attach.

use std::path::PathBuf;

use serde::Serialize;
use serde_json::Value;

use super::error::{CommandError, Outcome};
use crate::cloud::CloudContext;
use crate::cluster::{NodeState, VmRecord};
use crate::node_name::NodeName;

/// One VM still on the drained node, and how to move it.
#[derive(Debug, Serialize, PartialEq)]
pub(crate) struct Remaining {
    pub(crate) vm_cid: String,
    /// From set_vm_metadata, when the director gave it.
    pub(crate) deployment: Option<String>,
    /// `instance_group/id` (or `job/index`), when the director gave it.
    pub(crate) instance: Option<String>,
    /// The command that moves the instance, when both are known.
    pub(crate) recreate: Option<String>,
}

/// What the VM's metadata says about the instance it runs.
pub(crate) fn remaining(vm: &VmRecord) -> Remaining {
    let text = |key: &str| match vm.metadata.get(key) {
        Some(Value::String(s)) if !s.is_empty() => Some(s.clone()),
        Some(Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let deployment = text("deployment");
    let group = text("instance_group").or_else(|| text("job"));
    let instance = text("name").filter(|n| n.contains('/')).or_else(|| {
        Some(format!(
            "{}/{}",
            group.clone()?,
            text("id").or_else(|| text("index"))?
        ))
    });
    let recreate = match (&deployment, &instance) {
        (Some(d), Some(i)) => Some(format!("bosh -d {d} recreate {i}")),
        _ => None,
    };
    Remaining {
        vm_cid: vm.cid.to_string(),
        deployment,
        instance,
        recreate,
    }
}

/// Cordons `name` and lists what is still on it; exit code 0 once the node is cordoned, 1
/// on error.
pub fn run(config_path: PathBuf, name: &str, json: bool) -> Outcome {
    let name = &NodeName::parse(name)?;
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    let (before, left) = super::block_on(async {
        let before =
            super::nodes::change_state(&ctx, &config_path, name, NodeState::Cordoned).await?;
        let view = ctx.view().await?;
        let left: Vec<Remaining> = view.vms_on(name).map(remaining).collect();
        Ok::<_, CommandError>((before, left))
    })??;
    if json {
        let doc = serde_json::json!({"node": name, "state_before": before.to_string(),
            "state": NodeState::Cordoned.to_string(), "vms": left});
        println!("{doc:#}");
        return Ok(0);
    }
    println!(
        "node {name}: {before} -> {} (takes no new VMs)",
        NodeState::Cordoned
    );
    if left.is_empty() {
        println!("no VMs left on {name}: it can be taken down");
        return Ok(0);
    }
    println!(
        "{} VM(s) still on {name}. An instance pinned to {name} by its AZ (cloud_properties.node, \
         as in the generated per-node cloud-config) or a static IP in its subnet must not be \
         recreated: its new VM would be refused here and it would be left without one. Take \
         AZ {name} out of its instance group's azs (and its static IPs) and deploy instead. \
         Instances not pinned move with the command shown:",
        left.len()
    );
    for r in &left {
        match &r.recreate {
            Some(cmd) => println!("  {}  {cmd}", r.vm_cid),
            None => println!(
                "  {}  (no BOSH instance metadata: a create-env director, a compilation VM, or not yet named)",
                r.vm_cid
            ),
        }
    }
    println!("`cpi nodes uncordon {name}` when the host is back.");
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vm(metadata: Value) -> VmRecord {
        serde_json::from_value(
            serde_json::json!({"cid": "vm-00000000-0000-0000-0000-000000000001", "node": "n1",
            "agent_id": "a", "stemcell_cid": "sc-00000000-0000-0000-0000-00000000000c", "created_at": "2026-01-01T00:00:00Z",
            "metadata": metadata}),
        )
        .unwrap()
    }

    #[test]
    fn the_director_s_metadata_names_the_instance_to_recreate() {
        let r = remaining(&vm(serde_json::json!({"deployment": "cf",
            "instance_group": "web", "id": "0f1e", "index": "2", "name": "web/0f1e"})));
        assert_eq!(r.recreate.as_deref(), Some("bosh -d cf recreate web/0f1e"));
        // Older directors: job and index only.
        let r = remaining(&vm(
            serde_json::json!({"deployment": "cf", "job": "db", "index": 1}),
        ));
        assert_eq!(r.instance.as_deref(), Some("db/1"));
        assert_eq!(r.recreate.as_deref(), Some("bosh -d cf recreate db/1"));
    }

    #[test]
    fn a_vm_without_instance_metadata_has_no_command() {
        let r = remaining(&vm(serde_json::json!({"director": "bosh-init"})));
        assert_eq!(
            r,
            Remaining {
                vm_cid: "vm-00000000-0000-0000-0000-000000000001".into(),
                deployment: None,
                instance: None,
                recreate: None
            }
        );
    }
}
