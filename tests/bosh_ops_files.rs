//! bosh-release/: the ops files applied to a skeleton of bosh-deployment's bosh.yml (with a
//! small go-patch: replace/remove, `name=x` selectors, indexes, `-` appends, `?`), the
//! variables filled in as `bosh create-env -v/-l/--var-file` would, and the CPI properties
//! of both sides (the CLI's cloud_provider and the director's job) rendered through the
//! job template into configs the CPI accepts. The example configs are what
//! `cpi bosh-config` prints for a three-node cluster.

use moltencore::boshconfig::{cloud_config, cpi_config};
use moltencore::cloud::vm::blobstore::for_agent;
use moltencore::cluster::{ClusterView, NodeRecord, SubnetLease};
use moltencore::config::{Config, StartMode};
use moltencore_testkit::bosh::{render_config, repo, yaml_file};
use serde_json::{Map, Value, json};

#[derive(Debug)]
enum Step {
    Key(String),
    Named(String),
    Index(usize),
    Append,
}

/// Parses a go-patch path into steps, each with its `?`.
fn steps(path: &str) -> Vec<(Step, bool)> {
    assert!(path.starts_with('/'), "path {path} must start with /");
    path[1..]
        .split('/')
        .map(|raw| {
            let (token, optional) = match raw.strip_suffix('?') {
                Some(t) => (t, true),
                None => (raw, false),
            };
            let step = if token == "-" {
                Step::Append
            } else if let Some(name) = token.strip_prefix("name=") {
                Step::Named(name.to_string())
            } else if let Ok(i) = token.parse() {
                Step::Index(i)
            } else {
                Step::Key(token.to_string())
            };
            (step, optional)
        })
        .collect()
}

/// Applies one `replace` or `remove` operation as go-patch does (the subset our files use).
fn apply(doc: &mut Value, op: &Value) -> Result<(), String> {
    let path = op["path"].as_str().ok_or("op without path")?;
    let kind = op["type"].as_str().ok_or("op without type")?;
    let steps = steps(path);
    let mut node = doc;
    let mut optional = false;
    for (i, (step, opt)) in steps.iter().enumerate() {
        optional |= *opt;
        let last = i == steps.len() - 1;
        node = match step {
            Step::Key(key) => {
                let map = node
                    .as_object_mut()
                    .ok_or(format!("{path}: '{key}' of a non-map"))?;
                if last {
                    match kind {
                        "replace" => {
                            if !map.contains_key(key) && !optional {
                                return Err(format!("{path}: no key '{key}' (and no ?)"));
                            }
                            map.insert(key.clone(), op["value"].clone());
                        }
                        "remove" => {
                            map.remove(key)
                                .ok_or(format!("{path}: nothing to remove"))?;
                        }
                        other => return Err(format!("op type {other}")),
                    }
                    return Ok(());
                }
                if !map.contains_key(key) {
                    if !optional {
                        return Err(format!("{path}: no key '{key}' (and no ?)"));
                    }
                    map.insert(key.clone(), Value::Object(Map::new()));
                }
                map.get_mut(key).unwrap()
            }
            Step::Named(name) => {
                let list = node
                    .as_array_mut()
                    .ok_or(format!("{path}: name={name} of a non-list"))?;
                let pos = list.iter().position(|e| e["name"] == name.as_str());
                let pos = match pos {
                    Some(p) => p,
                    None if optional && !last => {
                        list.push(json!({"name": name}));
                        list.len() - 1
                    }
                    None => return Err(format!("{path}: no element name={name}")),
                };
                if last {
                    match kind {
                        "replace" => list[pos] = op["value"].clone(),
                        _ => {
                            list.remove(pos);
                        }
                    }
                    return Ok(());
                }
                &mut list[pos]
            }
            Step::Index(i) => {
                let list = node
                    .as_array_mut()
                    .ok_or(format!("{path}: [{i}] of a non-list"))?;
                let len = list.len();
                let slot = list
                    .get_mut(*i)
                    .ok_or(format!("{path}: index {i} of {len}"))?;
                if last {
                    *slot = op["value"].clone();
                    return Ok(());
                }
                slot
            }
            Step::Append => {
                let list = node
                    .as_array_mut()
                    .ok_or(format!("{path}: - of a non-list"))?;
                if !last || kind != "replace" {
                    return Err(format!("{path}: - only appends, last"));
                }
                list.push(op["value"].clone());
                return Ok(());
            }
        };
    }
    Err(format!("{path}: empty path"))
}

/// Fills in `((name))` variables: a whole-string variable takes the value's type, one
/// inside a longer string is spliced in as text. Unknown variables are left as they are.
fn interpolate(value: &Value, vars: &Map<String, Value>) -> Value {
    match value {
        Value::String(s) => {
            if let Some(name) = s.strip_prefix("((").and_then(|r| r.strip_suffix("))"))
                && !name.contains("((")
                && let Some(v) = vars.get(name)
            {
                return v.clone();
            }
            let mut out = s.clone();
            for (name, v) in vars {
                let text = match v {
                    Value::String(t) => t.clone(),
                    other => other.to_string(),
                };
                out = out.replace(&format!("(({name}))"), &text);
            }
            Value::String(out)
        }
        Value::Array(items) => Value::Array(items.iter().map(|v| interpolate(v, vars)).collect()),
        Value::Object(map) => Value::Object(
            map.iter()
                .map(|(k, v)| (k.clone(), interpolate(v, vars)))
                .collect(),
        ),
        other => other.clone(),
    }
}

const CERT: &str = "-----BEGIN CERTIFICATE-----\nMA==\n-----END CERTIFICATE-----\n";
const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMA==\n-----END PRIVATE KEY-----\n";

fn vars() -> Map<String, Value> {
    json!({
        "director_name": "moltencore",
        "internal_cidr": "10.1.1.0/24", "internal_gw": "10.1.1.1", "internal_ip": "10.1.1.6",
        "mbus_bootstrap_password": "bootstrap-pw", "mbus_bootstrap_ssl": {"ca": CERT},
        "blobstore_agent_password": "agent-pw",
        "moltencore_release_tarball": "/home/op/moltencore.tgz",
        "moltencore_stemcell_url": "file:///home/op/bosh-stemcell-warden-boshlite-ubuntu-jammy.tgz",
        "moltencore_stemcell_sha1": "0123456789abcdef0123456789abcdef01234567",
        "moltencore_etcd_endpoints": ["https://10.0.0.11:2379", "https://10.0.0.12:2379"],
        "moltencore_etcd_ca": CERT, "moltencore_etcd_client_cert": CERT,
        "moltencore_etcd_client_key": KEY,
        "moltencore_docker_client_cert": CERT, "moltencore_docker_client_key": KEY,
    })
    .as_object()
    .unwrap()
    .clone()
}

/// The skeleton with `files` (below bosh-release/) applied and the variables filled in.
fn manifest(files: &[&str]) -> Value {
    let mut doc = yaml_file(&repo().join("tests/bosh/bosh-deployment-skeleton.yml"));
    for file in files {
        let ops = yaml_file(&repo().join("bosh-release").join(file));
        for op in ops
            .as_array()
            .unwrap_or_else(|| panic!("{file} is a list of ops"))
        {
            apply(&mut doc, op).unwrap_or_else(|e| panic!("{file}: {e}"));
        }
    }
    let filled = interpolate(&doc, &vars());
    let text = filled.to_string();
    assert!(!text.contains("(("), "a variable is left unset: {filled:#}");
    filled
}

fn bosh_group(doc: &Value) -> &Value {
    doc["instance_groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["name"] == "bosh")
        .unwrap()
}

/// The CPI's config as each side renders it: (create-env's, the director's).
fn both_sides(doc: &Value) -> (Config, Config) {
    let cli = render_config(&doc["cloud_provider"]["properties"]);
    let director = render_config(&bosh_group(doc)["properties"]);
    let load = |v: Value, side: &str| {
        Config::from_value(v.clone())
            .unwrap_or_else(|e| panic!("{side}: the CPI refuses {e}:\n{v:#}"))
    };
    (load(cli, "create-env"), load(director, "director"))
}

#[test]
fn cpi_yml_makes_a_director_with_this_cpi_on_both_sides() {
    let doc = manifest(&["cpi.yml"]);
    let job = json!({"name": "moltencore_cpi", "release": "moltencore"});
    assert_eq!(doc["cloud_provider"]["template"], job);
    assert!(bosh_group(&doc)["jobs"].as_array().unwrap().contains(&job));
    assert_eq!(
        bosh_group(&doc)["properties"]["director"]["cpi_job"],
        "moltencore_cpi"
    );
    let release = doc["releases"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "moltencore")
        .expect("the moltencore release");
    assert_eq!(release["url"], "file:///home/op/moltencore.tgz");
    let stemcell = &doc["resource_pools"][0]["stemcell"];
    assert!(stemcell["url"].as_str().unwrap().starts_with("file://"));
    assert_eq!(stemcell["sha1"].as_str().unwrap().len(), 40);
    assert_eq!(
        doc["networks"][0]["subnets"][0]["cloud_properties"],
        json!({})
    );

    let (cli, director) = both_sides(&doc);
    assert_eq!(
        cli.agent.mbus.expose(),
        "https://mbus:bootstrap-pw@0.0.0.0:6868"
    );
    assert_eq!(director.agent.mbus.expose(), "nats://10.1.1.6:4222");
    for c in [&cli, &director] {
        assert_eq!(c.etcd.endpoints.len(), 2);
        assert!(c.etcd.tls.is_some());
        assert!(c.vm_defaults.privileged);
        assert_eq!(c.vm_defaults.start_mode, StartMode::Runit);
        assert!(c.docker_tls().unwrap().client_key.is_some());
    }
    // Every VM either side makes gets a blobstore: create-env's from the resource pool's
    // env (a local one, not the configured), the director's agents from agent.env.
    let pool_env = doc["resource_pools"][0]["env"].as_object().unwrap().clone();
    assert_eq!(for_agent(&pool_env, &cli.agent).unwrap(), None);
    let agent_env = bosh_group(&doc)["properties"]["agent"]["env"]
        .as_object()
        .unwrap()
        .clone();
    assert_eq!(for_agent(&agent_env, &director.agent).unwrap(), None);
    // The director's own dav blobstore properties make no agent blobstore in its CPI.
    assert_eq!(director.agent.blobstore, None);
    // The create-env side's mbus is the one the CLI connects to (cloud_provider.mbus).
    assert_eq!(
        doc["cloud_provider"]["mbus"],
        "https://mbus:bootstrap-pw@10.1.1.6:6868"
    );
}

#[test]
fn a_blobstore_and_ntp_in_cloud_provider_properties_reach_the_create_env_vm() {
    // The older bosh.yml shape (and other CPIs' manifests): blobstore and ntp as standard
    // properties of cloud_provider, no blobstores in the resource pool's env.
    let mut doc = manifest(&["cpi.yml"]);
    doc["resource_pools"][0]["env"]["bosh"]
        .as_object_mut()
        .unwrap()
        .remove("blobstores")
        .unwrap();
    doc["cloud_provider"]["properties"]["blobstore"] =
        json!({"provider": "local", "path": "/var/vcap/micro_bosh/data/cache"});
    doc["cloud_provider"]["properties"]["ntp"] = json!(["0.pool.ntp.org"]);
    let (cli, _) = both_sides(&doc);
    assert_eq!(cli.agent.ntp, ["0.pool.ntp.org"]);
    let pool_env = doc["resource_pools"][0]["env"].as_object().unwrap().clone();
    let chosen = for_agent(&pool_env, &cli.agent)
        .unwrap()
        .expect("the configured blobstore");
    assert_eq!(chosen.provider, "local");
    assert_eq!(
        chosen.options["blobstore_path"],
        "/var/vcap/micro_bosh/data/cache"
    );
    // Without either, create_vm refuses before it makes anything.
    doc["cloud_provider"]["properties"]
        .as_object_mut()
        .unwrap()
        .remove("blobstore");
    let (cli, _) = both_sides(&doc);
    assert!(for_agent(&pool_env, &cli.agent).is_err());
}

#[test]
fn the_stemcell_and_host_variants_combine_in_any_order() {
    for files in [
        ["cpi.yml", "systemd-stemcell.yml", "unprivileged.yml"],
        ["cpi.yml", "unprivileged.yml", "systemd-stemcell.yml"],
    ] {
        let (cli, director) = both_sides(&manifest(&files));
        for c in [cli, director] {
            assert_eq!(c.vm_defaults.start_mode, StartMode::Systemd, "{files:?}");
            assert!(!c.vm_defaults.privileged, "{files:?}");
            assert_eq!(c.vm_defaults.cap_add, ["ALL"]);
            assert_eq!(c.vm_defaults.cap_drop, ["SYS_RESOURCE"]);
            assert_eq!(c.vm_defaults.device_cgroup_rules, ["a *:* rwm"]);
            assert!(
                c.vm_defaults
                    .security_opt
                    .contains(&"systempaths=unconfined".to_string())
            );
        }
    }
}

#[test]
fn the_patch_subset_refuses_what_go_patch_refuses() {
    let mut doc = json!({"a": {"b": 1}, "list": [{"name": "x"}]});
    assert!(
        apply(
            &mut doc,
            &json!({"type": "replace", "path": "/a/c/d", "value": 1})
        )
        .is_err()
    );
    assert!(
        apply(
            &mut doc,
            &json!({"type": "replace", "path": "/list/name=y/v", "value": 1})
        )
        .is_err()
    );
    apply(
        &mut doc,
        &json!({"type": "replace", "path": "/a/c?/d", "value": 2}),
    )
    .unwrap();
    apply(
        &mut doc,
        &json!({"type": "replace", "path": "/list/-", "value": {"name": "y"}}),
    )
    .unwrap();
    apply(&mut doc, &json!({"type": "remove", "path": "/a/b"})).unwrap();
    assert_eq!(
        doc,
        json!({"a": {"c": {"d": 2}}, "list": [{"name": "x"}, {"name": "y"}]})
    );
}

fn node(name: &str, i: u8) -> NodeRecord {
    serde_json::from_value(json!({
        "name": name, "private_ip": format!("10.0.0.{}", 10 + i),
        "docker_endpoint": format!("tcp://10.0.0.{}:2376", 10 + i),
        "subnet": format!("10.1.{i}.0/24"), "gateway": format!("10.1.{i}.1"),
    }))
    .unwrap()
}

/// The body of an example file: what follows its leading comment lines.
fn example(file: &str) -> String {
    let text = std::fs::read_to_string(repo().join("bosh-release").join(file)).unwrap();
    text.lines()
        .skip_while(|l| l.starts_with('#') || l.is_empty())
        .map(|l| format!("{l}\n"))
        .collect()
}

#[test]
fn the_examples_are_what_bosh_config_prints_for_three_nodes() {
    let nodes = vec![node("n1", 1), node("n2", 2), node("n3", 3)];
    let view = ClusterView {
        leases: nodes
            .iter()
            .map(|n| SubnetLease {
                subnet: n.subnet,
                public_ip: Some(n.private_ip),
                backend_type: Some("vxlan".into()),
            })
            .collect(),
        nodes,
        ..ClusterView::default()
    };
    let cloud = cloud_config::generate(&view, &cloud_config::Options::default()).unwrap();
    assert!(cloud.warnings.is_empty());
    let printed = format!(
        "---\n{}",
        serde_yaml_ng::to_string(&cloud.document).unwrap()
    );
    assert_eq!(example("cloud-config.example.yml"), printed);
    let cpis = cpi_config::generate(&view).unwrap();
    let printed = format!("---\n{}", serde_yaml_ng::to_string(&cpis.document).unwrap());
    assert_eq!(example("cpi-config.example.yml"), printed);
}
