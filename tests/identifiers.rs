//! Black-box tests of hostile identifiers: cids that try to walk out of their Docker API
//! path or etcd key (`x/../../containers/<vm>?force=true`, `%2e%2e`, `#`, NUL, newline)
//! and 4 MiB cids, on every method and argument position that takes a cid. Canary VMs,
//! disks, snapshots, networks and images must stay exactly as they were on every node.

use std::sync::Mutex;

use moltencore_testkit::{
    cluster::cluster_config,
    cpi::{CpiRun, assert_schema, call, run_cpi},
    docker::{assert_nodes_unchanged, node_state},
    requests::{Canaries, canaries, remove_canaries},
};
use serde_json::{Value, json};

/// Both tests compare whole nodes before and after: they must not run at the same time.
static NODES: Mutex<()> = Mutex::new(());

/// Every method with every argument position that takes a cid: (method, arguments with
/// `HOSTILE` where the value goes). The other arguments are valid, real objects.
fn cid_positions(vm: &str, disk: &str, stemcell: &str) -> Vec<(&'static str, Value)> {
    let h = "HOSTILE";
    let dynamic = json!({"d": {"type": "dynamic"}});
    vec![
        ("delete_stemcell", json!([h])),
        (
            "create_vm",
            json!(["agent-hostile", h, {}, dynamic.clone(), [], {}]),
        ),
        (
            "create_vm",
            json!(["agent-hostile", stemcell, {}, dynamic, [h], {}]),
        ),
        ("delete_vm", json!([h])),
        ("has_vm", json!([h])),
        ("reboot_vm", json!([h])),
        ("set_vm_metadata", json!([h, {"job": "x"}])),
        ("create_disk", json!([16, {}, h])),
        ("delete_disk", json!([h])),
        ("has_disk", json!([h])),
        ("attach_disk", json!([h, disk])),
        ("attach_disk", json!([vm, h])),
        ("detach_disk", json!([h, disk])),
        ("detach_disk", json!([vm, h])),
        ("get_disks", json!([h])),
        ("set_disk_metadata", json!([h, {"x": "y"}])),
        ("resize_disk", json!([h, 32])),
        ("update_disk", json!([h, 32, {}])),
        ("snapshot_disk", json!([h, {}])),
        ("delete_snapshot", json!([h])),
    ]
}

fn with_value(args: &Value, value: &str) -> Value {
    match args {
        Value::String(s) if s == "HOSTILE" => Value::String(value.to_string()),
        Value::Array(items) => Value::Array(items.iter().map(|v| with_value(v, value)).collect()),
        other => other.clone(),
    }
}

/// What a malformed cid must get: delete_* success and has_* false (as for an unknown
/// object), everything else a non-retriable CpiError. Returns the error message, if any.
fn assert_answer_to_malformed(method: &str, run: &CpiRun, shown: &str) -> Option<String> {
    assert_schema(run);
    let error = &run.response["error"];
    if method.starts_with("delete_") {
        assert!(error.is_null(), "{method}({shown}): {}", run.stdout);
        assert_eq!(run.response["result"], Value::Null, "{method}({shown})");
        None
    } else if method.starts_with("has_") {
        assert!(error.is_null(), "{method}({shown}): {}", run.stdout);
        assert_eq!(run.response["result"], false, "{method}({shown})");
        None
    } else {
        assert_eq!(
            error["type"], "Bosh::Clouds::CpiError",
            "{method}({shown}): {}",
            run.stdout
        );
        assert_eq!(error["ok_to_retry"], false, "{method}({shown})");
        Some(error["message"].as_str().unwrap().to_string())
    }
}

#[test]
fn traversal_cids_touch_nothing_on_any_node() {
    let _one = NODES.lock().unwrap_or_else(|e| e.into_inner());
    let Canaries {
        vm,
        disk,
        snapshot,
        stemcell,
    } = canaries("traversal", 0);
    let image = format!("moltencore-stemcell:{stemcell}");
    let targets = [
        format!("containers/{vm}?force=true&v=true"),
        format!("volumes/{disk}"),
        format!("volumes/{snapshot}"),
        "networks/bosh".to_string(),
        format!("images/{image}?force=true"),
    ];
    let mut hostile = Vec::new();
    for t in &targets {
        hostile.push(format!("x/../../{t}"));
        hostile.push(format!("x/../../../{t}"));
        hostile.push(format!("{vm}/../../{t}"));
        hostile.push(format!("{disk}/../../{t}"));
        hostile.push(format!("sc-00000000-0000-0000-0000-000000000000/../../{t}"));
        hostile.push(format!("x%2f%2e%2e%2f%2e%2e%2f{t}"));
        hostile.push(format!("x/%2e%2e/%2e%2e/{t}"));
        hostile.push(format!("x/..%2f..%2f{t}"));
        hostile.push(format!("x/../../{t}#frag"));
        hostile.push(format!("x/../../{t}\u{0}"));
        hostile.push(format!("x/../../{t}\nx"));
    }
    for valid in [&vm, &disk, &snapshot, &stemcell] {
        hostile.push(format!("{valid}?force=true&v=true"));
        hostile.push(format!("{valid}#x"));
        hostile.push(format!("{valid}\u{0}"));
        hostile.push(format!("{valid}\n"));
        hostile.push(format!("{valid}/"));
        hostile.push(format!("{valid}/.."));
        hostile.push(format!("../{valid}"));
        hostile.push(valid.to_uppercase());
    }
    let before = node_state();
    let positions = cid_positions(&vm, &disk, &stemcell);
    for value in &hostile {
        for (method, args) in &positions {
            let args = with_value(args, value);
            let req = json!({"method": method, "arguments": args, "api_version": 2});
            let run = run_cpi(&req.to_string(), Some(&cluster_config()), &[]);
            assert_answer_to_malformed(method, &run, &format!("{value:?}"));
        }
    }
    assert_nodes_unchanged(&before);
    assert_eq!(call("has_vm", json!([vm])), true);
    assert_eq!(call("has_disk", json!([disk])), true);
    remove_canaries(&vm, &disk, &snapshot);
}

#[test]
fn a_4_mib_cid_gets_a_small_non_retriable_answer_on_every_method() {
    let _one = NODES.lock().unwrap_or_else(|e| e.into_inner());
    let Canaries {
        vm,
        disk,
        snapshot,
        stemcell,
    } = canaries("huge-cid", 0);
    let huge = format!("vm-{}", "a".repeat(4 * 1024 * 1024));
    let before = node_state();
    for (method, args) in cid_positions(&vm, &disk, &stemcell) {
        let req = json!({"method": method, "arguments": with_value(&args, &huge)});
        let run = run_cpi(&req.to_string(), Some(&cluster_config()), &[]);
        assert_schema(&run);
        assert!(
            run.stdout.len() < 4096,
            "{method}: response of {} bytes",
            run.stdout.len()
        );
        assert!(
            run.stderr.len() < 16 * 1024,
            "{method}: {} bytes of stderr",
            run.stderr.len()
        );
        let error = &run.response["error"];
        if error.is_null() {
            // Only where BOSH expects "unknown object" answers.
            let expected = if method.starts_with("has_") {
                Value::Bool(false)
            } else {
                assert!(method.starts_with("delete_"), "{method}: {}", run.stdout);
                Value::Null
            };
            assert_eq!(run.response["result"], expected, "{method}");
        } else {
            assert_eq!(
                error["type"], "Bosh::Clouds::CpiError",
                "{method}: {}",
                run.stdout
            );
            assert_eq!(error["ok_to_retry"], false, "{method}: {}", run.stdout);
            let message = error["message"].as_str().unwrap();
            assert!(
                message.contains("vm-aaaa") || message.contains("too large"),
                "{method}: the value is named (cut short): {message}"
            );
            assert!(message.len() < 512, "{method}: {message}");
        }
    }
    assert_nodes_unchanged(&before);
    remove_canaries(&vm, &disk, &snapshot);
}
