//! create_vm checks its request against the cluster before it chooses a node or writes
//! anything: an unknown stemcell is a final error naming it, and leaves no record in etcd
//! and no container or volume on any node.

use moltencore_testkit::{
    cluster::{load_config, node_prefix, private_config, register_nodes, runtime},
    cpi::{expect_error, expect_result},
    docker::leftovers_of_agent,
    index::index_records_of_agent,
    requests::{agent_id, create_vm_request, manual_network, shared_stemcell},
};
use serde_json::{Value, json};

/// Every key under the private prefix besides what `register_nodes` copied there.
fn written_keys(config: &std::path::Path, prefix: &str) -> Vec<String> {
    let cfg = load_config(config);
    let keys = moltencore::cluster::Keys::with_prefixes(prefix, &cfg.etcd.flannel_prefix);
    runtime().block_on(async {
        let etcd = moltencore::cluster::Etcd::connect(&cfg).await.unwrap();
        let resp = etcd
            .client()
            .get(
                format!("{prefix}/"),
                Some(etcd_client::GetOptions::new().with_prefix()),
            )
            .await
            .unwrap();
        resp.kvs()
            .iter()
            .map(|kv| kv.key_str().unwrap().to_string())
            .filter(|k| !k.starts_with(&keys.nodes()) && *k != keys.ca_cert())
            .collect()
    })
}

#[test]
fn an_unknown_stemcell_is_refused_before_placement_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let (config, prefix) = private_config(dir.path());
    register_nodes(&config, &prefix, &[]);
    // The cluster has stemcells (so the nodes have images to look through), not this one.
    let known = shared_stemcell();
    let unknown = "sc-00000000-0000-0000-0000-00000000abcd";
    assert_ne!(known, unknown);
    let (_, p1) = node_prefix(0);
    let cases: [(&str, Value, Value); 3] = [
        ("dynamic", json!({}), json!({"d": {"type": "dynamic"}})),
        ("static", json!({}), manual_network(&format!("{p1}.83"))),
        // Placement alone would fail here (no such node): the stemcell is checked first.
        (
            "pinned",
            json!({"node": "no-such-node"}),
            json!({"d": {"type": "dynamic"}}),
        ),
    ];
    for (case, cloud_properties, networks) in cases {
        let agent = agent_id(&format!("unknown-stemcell-{case}"));
        let req = create_vm_request(&agent, unknown, cloud_properties, networks, json!({}), 2);
        let (kind, message, run) = expect_error(&req, Some(&config));
        assert_eq!(kind, "Bosh::Clouds::CpiError", "{case}: {message}");
        assert!(
            message.contains(&format!("unknown stemcell {unknown}")),
            "{case}: {message}"
        );
        assert_eq!(run.response["error"]["ok_to_retry"], false, "{case}");
        assert_eq!(
            written_keys(&config, &prefix),
            Vec::<String>::new(),
            "{case}: create_vm wrote to etcd"
        );
        assert!(index_records_of_agent(&config, &agent).is_empty(), "{case}");
        runtime().block_on(async {
            assert_eq!(
                leftovers_of_agent(&agent).await,
                Vec::<String>::new(),
                "{case}: create_vm made something on a node"
            );
        });
    }
}

#[test]
fn a_known_stemcell_passes_the_check_under_an_index_without_its_record() {
    // The stemcell was uploaded through the cluster's own index: under a private prefix
    // it has no record, and its image on the nodes is what makes it known.
    let dir = tempfile::tempdir().unwrap();
    let (config, prefix) = private_config(dir.path());
    register_nodes(&config, &prefix, &[]);
    let agent = agent_id("known-stemcell");
    let req = create_vm_request(
        &agent,
        &shared_stemcell(),
        json!({}),
        json!({"d": {"type": "dynamic"}}),
        json!({}),
        2,
    );
    let result = expect_result(&req, Some(&config));
    let vm = result[0].as_str().expect("vm cid").to_string();
    assert_eq!(index_records_of_agent(&config, &agent).len(), 1);
    let delete = json!({"method": "delete_vm", "arguments": [vm]}).to_string();
    expect_result(&delete, Some(&config));
    assert!(index_records_of_agent(&config, &agent).is_empty());
    runtime().block_on(async {
        assert_eq!(leftovers_of_agent(&agent).await, Vec::<String>::new());
    });
}
