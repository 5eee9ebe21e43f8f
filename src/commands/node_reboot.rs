//! `cpi nodes reboot|release|max-unavailable`: the operator's side of coordinated reboots,
//! and the reboot part of the `cpi nodes` listing (each node's reboot state, the slot
//! holders and `max_unavailable`).

use std::path::PathBuf;

use super::error::{CommandError, Outcome, load_config};
use crate::cloud::CloudContext;
use crate::cluster::{Etcd, NodeState};
use crate::node_name::NodeName;
use crate::reboot::heartbeat::{ManagerStatus, span};
use crate::reboot::keys::RebootKeys;
use crate::reboot::overview::{self, RebootOverview};
use crate::reboot::record::{Phase, RebootRequest, Records};
use crate::reboot::semaphore::{Group, Holder, HolderKind, Semaphore, cut};
use crate::timestamp::Timestamp;

/// Longest operator's reason kept.
const WHY_MAX: usize = 200;

/// How `cpi nodes` shows a node's reboot.
impl RebootOverview {
    /// One short cell for the table: the reboot phase, and a missing manager when the
    /// reboot waits for one.
    pub(crate) fn cell(&self, name: &NodeName) -> String {
        let mut s = match self.of(name) {
            Some(r) => {
                let mut s = format!("{} since {} ({})", r.phase, r.since, r.why);
                if let Some(h) = &r.health {
                    s.push_str(&format!(" {h}"));
                }
                s
            }
            None if self.requested.iter().any(|n| n == name) => "requested".into(),
            None => return "-".into(),
        };
        let missing = match self.manager(name) {
            Some(ManagerStatus::Gone {
                last_seen_seconds_ago: seconds,
                ..
            }) => Some(format!("last seen {} ago", span(seconds))),
            Some(ManagerStatus::Stopped {
                last_seen_seconds_ago: seconds,
                ..
            }) => Some(format!("stopped {} ago", span(seconds))),
            Some(ManagerStatus::NotSeen) => Some("none seen".into()),
            Some(ManagerStatus::Up { .. }) | None => None,
        };
        if let Some(m) = missing {
            s.push_str(&format!(" · no manager ({m})"));
        }
        s
    }

    /// One short cell for the MANAGER column: `up 5m 3s`, `gone, seen 2m 10s ago`,
    /// `stopped 1m ago`, `none` (a reboot waits and no manager was heard of), `-`
    /// (nothing known).
    pub(crate) fn manager_cell(&self, name: &NodeName) -> String {
        match self.manager(name) {
            Some(ManagerStatus::Up { manager }) => match age(&manager.started_at) {
                Some(up) => format!("up {}", span(up)),
                None => "up".into(),
            },
            Some(ManagerStatus::Gone {
                last_seen_seconds_ago: seconds,
                ..
            }) => format!("gone, seen {} ago", span(seconds)),
            Some(ManagerStatus::Stopped {
                last_seen_seconds_ago: seconds,
                ..
            }) => {
                format!("stopped {} ago", span(seconds))
            }
            Some(ManagerStatus::NotSeen) => "none".into(),
            None => "-".into(),
        }
    }
}

/// Seconds since an RFC 3339 time (as this host's clock sees it).
fn age(rfc3339: &str) -> Option<u64> {
    let then = time::OffsetDateTime::parse(rfc3339, &time::format_description::well_known::Rfc3339)
        .ok()?;
    u64::try_from((time::OffsetDateTime::now_utc() - then).whole_seconds()).ok()
}

async fn context_parts(ctx: &CloudContext<'_>) -> Result<(Etcd, RebootKeys), CommandError> {
    let etcd = ctx.etcd().await?.clone();
    let keys = RebootKeys::new(&ctx.keys().await?);
    Ok((etcd, keys))
}

/// Reads every reboot record and every group's semaphore.
pub(crate) async fn overview(ctx: &CloudContext<'_>) -> Result<RebootOverview, CommandError> {
    let (etcd, keys) = context_parts(ctx).await?;
    Ok(overview::read(&etcd, &keys).await?)
}

/// Prints the slot lines under the table.
pub(crate) fn print(overview: &RebootOverview) {
    for g in &overview.groups {
        let holders: Vec<String> = g
            .holders
            .iter()
            .map(|h| {
                let kind = match h.kind {
                    HolderKind::Node => "node",
                    HolderKind::Fleetlock => "fleetlock",
                };
                format!("{} ({kind}, since {}, {})", h.id, h.since, h.why)
            })
            .collect();
        println!(
            "reboot group {}: {}/{} slot(s) held{}{}",
            g.group,
            g.holders.len(),
            g.max_unavailable,
            if holders.is_empty() { "" } else { " by " },
            holders.join(", ")
        );
    }
    for p in &overview.problems {
        println!("warning: {p}");
    }
}

/// Reads cpi.json, runs `work` and prints what it says.
fn with_context<F>(config_path: PathBuf, work: F) -> Outcome
where
    F: for<'c> AsyncFnOnce(&'c CloudContext<'c>) -> Result<String, CommandError>,
{
    let ctx = CloudContext::new(config_path.clone(), Default::default(), None);
    let checked = async {
        load_config(&ctx, &config_path).await?;
        work(&ctx).await
    };
    println!("{}", super::block_on(checked)??);
    Ok(0)
}

/// `cpi nodes reboot NAME`: records an operator's request; the node's manager does the rest.
pub fn request(config_path: PathBuf, name: &str, why: Option<String>) -> Outcome {
    let name = &NodeName::parse(name)?;
    with_context(config_path, async |ctx| {
        let view = ctx.view().await?;
        if view.registered(name)?.is_none() {
            return Err(CommandError::NoSuchNode(name.to_string()));
        }
        let (etcd, keys) = context_parts(ctx).await?;
        let records = Records::new(etcd, keys);
        let why = why.unwrap_or_else(|| "cpi nodes reboot".into());
        if why.chars().any(char::is_control) {
            return Err(CommandError::Flag(
                "--why must be one line of printable text",
            ));
        }
        let request = RebootRequest {
            since: Timestamp::now().to_string(),
            why: cut(&why, WHY_MAX),
        };
        Ok(if records.put_request(name, &request).await? {
            format!("node {name}: reboot requested; its reboot manager takes a slot and reboots it")
        } else {
            format!("node {name}: a reboot was requested already")
        })
    })
}

/// `cpi nodes release NAME [--force]`: gives back the slot `name` holds (a node or a
/// FleetLock client that never came back) and forgets the node's reboot record. Refused
/// while the node reports itself draining or rebooting, unless forced.
pub fn release(config_path: PathBuf, name: &str, force: bool, group: &str) -> Outcome {
    // Not parsed: the holder may be a FleetLock client, whose id is no node name, and a
    // record under a name no node can have (written by hand) must be releasable too.
    let name = &NodeName::from_record(name);
    let group = group.to_string();
    with_context(config_path, async move |ctx| {
        let group = Group::parse(&group)?;
        let (etcd, keys) = context_parts(ctx).await?;
        let records = Records::new(etcd.clone(), keys.clone());
        let record = records.state(name).await?;
        if let Some(r) = &record
            && matches!(r.value.phase, Phase::Draining | Phase::Rebooting)
            && !force
        {
            return Err(CommandError::StillRebooting {
                name: name.to_string(),
                record: Box::new(r.value.clone()),
            });
        }
        let holder = Semaphore::new(etcd, &keys, group.clone())
            .give_back(name)
            .await?;
        // A pending request would start the next reboot at once.
        records.withdraw_request(name).await?;
        if let Some(r) = record
            && !records.forget(name, r.mod_revision).await?
        {
            return Err(CommandError::RecordChanged(name.to_string()));
        }
        let cordoned = ctx
            .view()
            .await?
            .registered(name)?
            .is_some_and(|n| n.state == NodeState::Cordoned);
        Ok(released(name, &group, holder.as_ref(), cordoned))
    })
}

/// What `cpi nodes release` says: the uncordon hint names `name` only when it is a node
/// that is cordoned (a FleetLock client's id is no node).
fn released(name: &NodeName, group: &Group, holder: Option<&Holder>, cordoned: bool) -> String {
    let mut msg = match holder {
        Some(h) if h.kind == HolderKind::Fleetlock => format!(
            "FleetLock client {name}: reboot slot of group {group} given back (held since {})",
            h.since
        ),
        Some(h) => format!(
            "node {name}: reboot slot of group {group} given back (held since {})",
            h.since
        ),
        None => format!("{name} held no reboot slot in group {group}"),
    };
    if cordoned {
        msg.push_str(&format!(
            "; node {name} stays cordoned until `cpi nodes uncordon {name}`"
        ));
    }
    msg
}

/// `cpi nodes max-unavailable N`: how many nodes of a group may reboot at once.
pub fn set_max(config_path: PathBuf, max: u32, group: &str) -> Outcome {
    let group = group.to_string();
    with_context(config_path, async move |ctx| {
        let group = Group::parse(&group)?;
        let (etcd, keys) = context_parts(ctx).await?;
        let before = Semaphore::new(etcd, &keys, group.clone())
            .set_max(max)
            .await?;
        Ok(format!(
            "reboot group {group}: max_unavailable {before} -> {max}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reboot::heartbeat;
    use crate::reboot::record::RebootRecord;

    fn holder(id: &str, kind: HolderKind) -> Holder {
        Holder {
            id: id.into(),
            kind,
            node: (kind == HolderKind::Node).then(|| id.into()),
            boot_id: None,
            since: "2026-01-01T00:00:00Z".into(),
            why: "test".into(),
        }
    }

    #[test]
    fn release_names_a_node_to_uncordon_only_when_it_is_a_cordoned_node() {
        let g = Group::default_group();
        let client = holder("zincati-3", HolderKind::Fleetlock);
        let msg = released(&"zincati-3".into(), &g, Some(&client), false);
        assert!(msg.starts_with("FleetLock client zincati-3"), "{msg}");
        assert!(!msg.contains("uncordon"), "{msg}");
        let node = holder("n1", HolderKind::Node);
        let msg = released(&"n1".into(), &g, Some(&node), true);
        assert!(msg.contains("`cpi nodes uncordon n1`"), "{msg}");
        let msg = released(&"n1".into(), &g, Some(&node), false);
        assert!(!msg.contains("uncordon"), "{msg}");
        let msg = released(&"nobody".into(), &g, None, false);
        assert_eq!(msg, "nobody held no reboot slot in group default");
    }

    #[test]
    fn a_missing_manager_shows_in_the_reboot_cell_and_a_running_one_does_not() {
        let record: RebootRecord = serde_json::from_value(serde_json::json!({
            "phase": "checking", "since": "2026-01-01T00:00:00Z",
            "started": "2026-01-01T00:00:00Z", "why": "w", "group": "default",
            "boot_id": "b", "operator_cordoned": false, "health": "settling (20s)"
        }))
        .unwrap();
        let mut o = RebootOverview {
            nodes: vec![("n1".into(), record)],
            ..Default::default()
        };
        assert_eq!(o.manager(&"n1".into()), Some(ManagerStatus::NotSeen));
        assert!(
            o.cell(&"n1".into())
                .ends_with("settling (20s) · no manager (none seen)")
        );
        assert_eq!(o.manager_cell(&"n1".into()), "none");
        assert_eq!(o.manager_cell(&"n2".into()), "-");
        let manager = heartbeat::ManagerInfo {
            node: "n1".into(),
            boot_id: "b".into(),
            pid: 7,
            started_at: "2026-01-01T00:00:00Z".into(),
            version: "0".into(),
            stopped_at: None,
        };
        o.managers.insert(
            "n1".into(),
            ManagerStatus::Gone {
                last_seen_seconds_ago: 130,
                manager: manager.clone(),
            },
        );
        assert!(
            o.cell(&"n1".into())
                .ends_with("· no manager (last seen 2m 10s ago)"),
            "{}",
            o.cell(&"n1".into())
        );
        assert_eq!(o.manager_cell(&"n1".into()), "gone, seen 2m 10s ago");
        o.managers
            .insert("n1".into(), ManagerStatus::Up { manager });
        assert!(!o.cell(&"n1".into()).contains("no manager"));
        assert!(o.manager_cell(&"n1".into()).starts_with("up "));
    }
}
