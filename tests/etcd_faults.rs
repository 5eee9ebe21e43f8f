//! etcd as a Flatcar cluster runs it: one member per node (three here), and the faults an
//! operator meets: the leader killed while twenty calls run, one member cut from its
//! peers, the quorum lost for 30 s. Every call succeeds or fails with `ok_to_retry`; the
//! failed ones succeed when sent again once etcd is whole (no restart of anything); the
//! calls a director would make for what it knows (detach, delete) then leave the nodes
//! and the index exactly as before; and the reboot semaphore, contended throughout, never
//! has more holders than its max and loses no slot.
//!
//! The tests change the shared etcd, so they take turns.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::Duration;

use moltencore::cluster::index::PROGRESS_TTL;
use moltencore::reboot::semaphore::{Holder, HolderKind, Semaphore, Take};
use moltencore_testkit::cluster::{cluster_config, node_names, private_config};
use moltencore_testkit::cpi::{assert_schema, call, run_cpi};
use moltencore_testkit::docker::{assert_nodes_unchanged, node_state, sh};
use moltencore_testkit::etcd_members::{index_keys, member, wait_all_healthy};
use moltencore_testkit::index::semaphore_of;
use moltencore_testkit::requests::{agent_id, create_vm_request, request, shared_stemcell};
use moltencore_testkit::wait::poll_until;
use serde_json::{Value, json};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// One call of the workload, as the director would send it.
#[derive(Debug, Clone)]
enum Call {
    CreateVm { agent: String },
    CreateDisk { vm: String },
    AttachDisk { vm: String, disk: String },
}

impl Call {
    fn method(&self) -> &'static str {
        match self {
            Call::CreateVm { .. } => "create_vm",
            Call::CreateDisk { .. } => "create_disk",
            Call::AttachDisk { .. } => "attach_disk",
        }
    }

    fn request(&self) -> String {
        match self {
            Call::CreateVm { agent } => create_vm_request(
                agent,
                &shared_stemcell(),
                json!({}),
                json!({"d": {"type": "dynamic"}}),
                json!({}),
                2,
            ),
            Call::CreateDisk { vm } => request("create_disk", json!([64, {}, vm])),
            Call::AttachDisk { vm, disk } => request("attach_disk", json!([vm, disk])),
        }
    }

    /// Sends the call once: its result, or the message of an error a retry can help with.
    /// An error a retry cannot help with fails the test.
    fn send(&self) -> Result<Value, String> {
        let run = run_cpi(&self.request(), Some(&cluster_config()), &[]);
        assert_schema(&run);
        let error = &run.response["error"];
        if error.is_null() {
            return Ok(run.response["result"].clone());
        }
        assert_eq!(
            error["ok_to_retry"], true,
            "{self:?} failed and says a retry cannot help: {error}\n{}",
            run.stderr
        );
        Err(error["message"].as_str().unwrap_or_default().to_string())
    }
}

/// What a test starts from: three VMs (one per node) and six disks on their nodes, for
/// the attach calls, and the nodes and the index as they were with them.
struct Fixture {
    nodes_before: std::collections::BTreeSet<String>,
    keys_before: std::collections::BTreeSet<String>,
    vms: Vec<(String, String)>,
    disks: Vec<String>,
}

fn prepare(test: &str) -> Fixture {
    wait_all_healthy(Duration::from_secs(60));
    shared_stemcell();
    let vms: Vec<(String, String)> = node_names()
        .into_iter()
        .take(3)
        .map(|node| {
            let req = create_vm_request(
                &agent_id(test),
                &shared_stemcell(),
                json!({"node": node}),
                json!({"d": {"type": "dynamic"}}),
                json!({}),
                2,
            );
            let run = run_cpi(&req, Some(&cluster_config()), &[]);
            assert!(run.response["error"].is_null(), "{}", run.stdout);
            (
                run.response["result"][0].as_str().unwrap().to_string(),
                node,
            )
        })
        .collect();
    assert_eq!(vms.len(), 3, "the fault tests need three nodes");
    let disks: Vec<String> = (0..6)
        .map(|i| {
            let vm = &vms[i % 3].0;
            call("create_disk", json!([64, {}, vm]))
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    // A node makes its disk mounter at its first attach and keeps it: made here, before
    // the nodes are looked at.
    for (vm, disk) in vms.iter().map(|(vm, _)| vm).zip(&disks) {
        call("attach_disk", json!([vm, disk]));
        call("detach_disk", json!([vm, disk]));
    }
    Fixture {
        nodes_before: node_state(),
        keys_before: index_keys(&cluster_config()),
        vms,
        disks,
    }
}

/// The twenty calls: eight create_vm, six create_disk, six attach_disk.
fn workload(test: &str, f: &Fixture) -> Vec<Call> {
    let mut calls: Vec<Call> = (0..8)
        .map(|_| Call::CreateVm {
            agent: agent_id(test),
        })
        .collect();
    calls.extend((0..6).map(|i| Call::CreateDisk {
        vm: f.vms[i % 3].0.clone(),
    }));
    calls.extend(
        f.disks
            .iter()
            .enumerate()
            .map(|(i, disk)| Call::AttachDisk {
                vm: f.vms[i % 3].0.clone(),
                disk: disk.clone(),
            }),
    );
    calls
}

/// Sends every call at once and plays `fault` while they run; each call's outcome.
fn under_fault(calls: &[Call], fault: impl FnOnce()) -> Vec<Result<Value, String>> {
    thread::scope(|s| {
        let running: Vec<_> = calls.iter().map(|c| s.spawn(|| c.send())).collect();
        fault();
        running.into_iter().map(|r| r.join().unwrap()).collect()
    })
}

/// Sends the failed calls again (etcd is whole now): each must succeed. The outcomes,
/// all results now, and a line for the closing report.
fn retry_failed(calls: &[Call], outcomes: Vec<Result<Value, String>>, fault: &str) -> Vec<Value> {
    let mut counts: BTreeMap<&str, (usize, usize)> = BTreeMap::new();
    let mut reasons: BTreeMap<String, usize> = BTreeMap::new();
    let results: Vec<Value> = calls
        .iter()
        .zip(outcomes)
        .map(|(call, outcome)| {
            let count = counts.entry(call.method()).or_default();
            match outcome {
                Ok(result) => {
                    count.0 += 1;
                    result
                }
                Err(message) => {
                    count.1 += 1;
                    *reasons.entry(message.chars().take(160).collect()).or_default() += 1;
                    call.send().unwrap_or_else(|again| {
                        panic!("{call:?} failed ({message}) and failed again once etcd was whole: {again}")
                    })
                }
            }
        })
        .collect();
    let ok: usize = counts.values().map(|c| c.0).sum();
    let failed: usize = counts.values().map(|c| c.1).sum();
    println!(
        "{fault}: {} calls, {ok} succeeded, {failed} failed with ok_to_retry and succeeded when sent again; by method (succeeded, retriable): {counts:?}",
        calls.len()
    );
    for (reason, n) in &reasons {
        println!("{fault}:   {n} x {reason}");
    }
    results
}

/// Checks what succeeded inside the VMs, then removes everything the director would
/// know of (detach, delete) and shows that nothing else is left on any node or in etcd.
fn check_and_clean(f: Fixture, calls: &[Call], results: &[Value]) {
    let node_of: BTreeMap<&str, &str> = f
        .vms
        .iter()
        .map(|(vm, node)| (vm.as_str(), node.as_str()))
        .collect();
    let (mut vms, mut disks) = (Vec::new(), Vec::new());
    for (made, result) in calls.iter().zip(results) {
        match made {
            Call::CreateVm { .. } => vms.push(result[0].as_str().unwrap().to_string()),
            Call::CreateDisk { .. } => disks.push(result.as_str().unwrap().to_string()),
            Call::AttachDisk { vm, disk } => {
                let node = node_of[vm.as_str()];
                let seen = sh(
                    node,
                    vm,
                    &format!("test -b /warden-cpi-dev/{disk} && echo block"),
                );
                assert_eq!(seen.trim(), "block", "{disk} is no block device in {vm}");
                assert_eq!(call("detach_disk", json!([vm, disk])), Value::Null);
            }
        }
    }
    for vm in &vms {
        assert_eq!(call("delete_vm", json!([vm])), Value::Null);
    }
    for disk in &disks {
        assert_eq!(call("delete_disk", json!([disk])), Value::Null);
    }
    assert_nodes_unchanged(&f.nodes_before);
    // A record of work in progress whose lease could not be revoked while etcd was
    // broken expires by itself (within PROGRESS_TTL): that is not left behind.
    let mut keys_after = index_keys(&cluster_config());
    poll_until(
        Duration::from_secs(PROGRESS_TTL as u64 + 5),
        Duration::from_millis(500),
        || {
            keys_after = index_keys(&cluster_config());
            keys_after == f.keys_before
        },
    );
    let gained: Vec<_> = keys_after.difference(&f.keys_before).collect();
    let lost: Vec<_> = f.keys_before.difference(&keys_after).collect();
    assert!(
        gained.is_empty() && lost.is_empty(),
        "the index changed: gained {gained:#?}, lost {lost:#?}"
    );
    for (vm, _) in &f.vms {
        assert_eq!(call("delete_vm", json!([vm])), Value::Null);
    }
    for disk in &f.disks {
        assert_eq!(call("delete_disk", json!([disk])), Value::Null);
    }
}

/// FleetLock-style clients taking turns on one reboot slot (max 1) while the faults play,
/// each retrying what failed as Zincati does; a watcher reads the document all along.
struct Contention {
    stop: Arc<AtomicBool>,
    thread: thread::JoinHandle<(u32, u32)>,
    config: PathBuf,
    _dir: tempfile::TempDir,
}

impl Contention {
    fn start() -> Contention {
        let dir = tempfile::tempdir().unwrap();
        let (config, _) = private_config(dir.path());
        let stop = Arc::new(AtomicBool::new(false));
        let (flag, path) = (stop.clone(), config.clone());
        let thread = thread::spawn(move || contend(&path, &flag));
        Contention {
            stop,
            thread,
            config,
            _dir: dir,
        }
    }

    /// Stops the clients; each gives its slot back; no slot is lost: the document is
    /// empty and a new client gets the slot at once.
    fn finish(self, fault: &str) {
        self.stop.store(true, Ordering::SeqCst);
        let (turns, errors) = self.thread.join().expect("a semaphore client failed");
        let rt = tokio::runtime::Runtime::new().unwrap();
        rt.block_on(async {
            let sem = semaphore(&self.config).await;
            assert!(
                sem.read().await.unwrap().doc.holders.is_empty(),
                "a slot was lost"
            );
            assert_eq!(sem.take(holder("after")).await.unwrap(), Take::Taken);
            sem.give_back("after").await.unwrap();
        });
        println!(
            "{fault}: reboot semaphore: {turns} turns taken one at a time, {errors} requests failed and were sent again, no slot lost"
        );
        assert!(turns > 0, "no client got the slot at all");
    }
}

async fn semaphore(config: &Path) -> Semaphore {
    semaphore_of(config, "default").await
}

fn holder(id: &str) -> Holder {
    Holder {
        id: id.into(),
        kind: HolderKind::Fleetlock,
        node: None,
        boot_id: None,
        since: "2026-01-01T00:00:00Z".into(),
        why: "etcd fault test".into(),
    }
}

/// Three clients and a watcher until `stop`: (turns taken, failed requests).
fn contend(config: &Path, stop: &AtomicBool) -> (u32, u32) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let sem = semaphore(config).await;
        let holding = AtomicUsize::new(0);
        let (turns, errors) = (AtomicUsize::new(0), AtomicUsize::new(0));
        let client = |id: String| {
            let (sem, holding, turns, errors) = (&sem, &holding, &turns, &errors);
            async move {
                while !stop.load(Ordering::SeqCst) {
                    match sem.take(holder(&id)).await {
                        Ok(Take::Taken | Take::AlreadyHeld(_)) => {
                            assert_eq!(
                                holding.fetch_add(1, Ordering::SeqCst),
                                0,
                                "two clients hold the one slot"
                            );
                            turns.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(30)).await;
                            holding.fetch_sub(1, Ordering::SeqCst);
                            while sem.give_back(&id).await.is_err() {
                                errors.fetch_add(1, Ordering::SeqCst);
                                tokio::time::sleep(Duration::from_millis(50)).await;
                            }
                        }
                        Ok(Take::Full(_)) => tokio::time::sleep(Duration::from_millis(10)).await,
                        Err(_) => {
                            errors.fetch_add(1, Ordering::SeqCst);
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            }
        };
        let watcher = async {
            while !stop.load(Ordering::SeqCst) {
                if let Ok(stored) = sem.read().await {
                    let doc = stored.doc;
                    assert!(
                        doc.holders.len() <= doc.max as usize,
                        "more holders than max: {doc:?}"
                    );
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::join!(
            client("client-a".into()),
            client("client-b".into()),
            client("client-c".into()),
            watcher
        );
        (
            u32::try_from(turns.load(Ordering::SeqCst)).unwrap(),
            u32::try_from(errors.load(Ordering::SeqCst)).unwrap(),
        )
    })
}

#[test]
fn the_leader_killed_during_twenty_calls() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = prepare("leader-kill");
    let calls = workload("leader-kill", &f);
    let leader = wait_all_healthy(Duration::from_secs(30));
    let contention = Contention::start();
    let outcomes = under_fault(&calls, || {
        thread::sleep(Duration::from_millis(400));
        member(leader, "kill");
    });
    member(leader, "start");
    wait_all_healthy(Duration::from_secs(60));
    contention.finish("leader killed");
    let results = retry_failed(&calls, outcomes, "leader killed");
    check_and_clean(f, &calls, &results);
}

#[test]
fn one_member_cut_from_its_peers() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = prepare("partition");
    let calls = workload("partition", &f);
    // The leader is cut off: it must step down, the others elect a new one, and clients
    // still reach the cut member, which has no leader to serve them.
    let leader = wait_all_healthy(Duration::from_secs(30));
    let contention = Contention::start();
    let outcomes = under_fault(&calls, || {
        thread::sleep(Duration::from_millis(400));
        member(leader, "partition");
    });
    // Calls made while the member stays cut off.
    let more: Vec<Call> = workload("partition", &f).into_iter().take(14).collect();
    let more_outcomes = under_fault(&more, || {});
    member(leader, "heal");
    wait_all_healthy(Duration::from_secs(60));
    contention.finish("member partitioned");
    let calls: Vec<Call> = calls.into_iter().chain(more).collect();
    let outcomes: Vec<_> = outcomes.into_iter().chain(more_outcomes).collect();
    let results = retry_failed(&calls, outcomes, "member partitioned");
    check_and_clean(f, &calls, &results);
}

#[test]
fn the_quorum_lost_for_thirty_seconds() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let f = prepare("quorum");
    let calls = workload("quorum", &f);
    wait_all_healthy(Duration::from_secs(30));
    let contention = Contention::start();
    let lost = std::time::Instant::now();
    let outcomes = under_fault(&calls, || {
        thread::sleep(Duration::from_millis(400));
        member(2, "kill");
        member(3, "kill");
    });
    let left = Duration::from_secs(30).saturating_sub(lost.elapsed());
    thread::sleep(left);
    member(2, "start");
    member(3, "start");
    wait_all_healthy(Duration::from_secs(60));
    contention.finish("quorum lost");
    let results = retry_failed(&calls, outcomes, "quorum lost for 30 s");
    check_and_clean(f, &calls, &results);
}
