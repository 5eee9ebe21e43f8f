//! Black-box tests of create_stemcell / delete_stemcell through the built `cpi` binary,
//! checked on every node of the local cluster.

use bollard::query_parameters::ListImagesOptionsBuilder;
use moltencore_testkit::{
    cluster::{
        cluster_config, dead_node_record, node_names, node_prefix, private_cluster, runtime,
        test_stemcell_dir,
    },
    cpi::{assert_schema, expect_error, expect_result, run_cpi},
    docker::node_socket,
    index::index_record,
    requests::static_vm,
};
use serde_json::json;

/// The stemcell images on `node`, as `repo:tag` strings.
fn stemcell_images(node: &str) -> Vec<String> {
    runtime().block_on(async {
        let docker = node_socket(node).await;
        let images = docker
            .list_images(Some(ListImagesOptionsBuilder::new().all(true).build()))
            .await
            .unwrap();
        images
            .into_iter()
            .flat_map(|i| i.repo_tags)
            .filter(|t| t.starts_with("moltencore-stemcell:"))
            .collect()
    })
}

fn labels_of(node: &str, reference: &str) -> serde_json::Value {
    runtime().block_on(async {
        let docker = node_socket(node).await;
        let i = docker.inspect_image(reference).await.unwrap();
        serde_json::to_value(i.config.unwrap().labels.unwrap()).unwrap()
    })
}

fn create(path: &str, config: &std::path::Path) -> String {
    let req = json!({"method":"create_stemcell","arguments":[path, {}],
                     "context":{"director_uuid":"d"},"api_version":2});
    expect_result(&req.to_string(), Some(config))
        .as_str()
        .expect("stemcell cid is a string")
        .to_string()
}

fn delete(cid: &str, config: &std::path::Path) {
    let req = json!({"method":"delete_stemcell","arguments":[cid]});
    let result = expect_result(&req.to_string(), Some(config));
    assert!(result.is_null());
}

#[test]
fn create_stemcell_imports_into_every_node_and_delete_removes_it_everywhere() {
    let config = cluster_config();
    let dir = test_stemcell_dir();
    let cid = create(dir.join("image").to_str().unwrap(), &config);
    let reference = format!("moltencore-stemcell:{cid}");
    for node in node_names() {
        assert!(
            stemcell_images(&node).contains(&reference),
            "{reference} missing on {node}"
        );
        let labels = labels_of(&node, &reference);
        assert_eq!(labels["moltencore.stemcell.cid"], cid.as_str());
        assert_eq!(
            labels["moltencore.stemcell.name"],
            "bosh-warden-boshlite-test-busybox"
        );
        assert_eq!(labels["moltencore.stemcell.version"], "0.1");
    }
    delete(&cid, &config);
    for node in node_names() {
        assert!(
            !stemcell_images(&node).contains(&reference),
            "{reference} still on {node}"
        );
    }
    // Idempotent: a second delete of the same (now absent) stemcell succeeds.
    delete(&cid, &config);
}

#[test]
fn a_cpi_pinned_to_one_node_imports_the_stemcell_there_only() {
    let config = cluster_config();
    let nodes = node_names();
    let image = test_stemcell_dir().join("image");
    let pinned = &nodes[1];
    let req = json!({"method":"create_stemcell","arguments":[image, {}],
                     "context":{"director_uuid":"d","placement":{"node": pinned}},
                     "api_version":2});
    let cid = expect_result(&req.to_string(), Some(&config))
        .as_str()
        .expect("stemcell cid is a string")
        .to_string();
    let reference = format!("moltencore-stemcell:{cid}");
    for node in &nodes {
        assert_eq!(
            stemcell_images(node).contains(&reference),
            node == pinned,
            "{reference} on {node} (CPI pinned to {pinned})"
        );
    }
    let record = index_record(&config, &format!("stemcells/{cid}")).expect("stemcell record");
    assert_eq!(record["nodes"], json!([pinned]), "{record}");
    delete(&cid, &config);
    assert!(!stemcell_images(pinned).contains(&reference));

    let req = json!({"method":"create_stemcell","arguments":[image, {}],
                     "context":{"director_uuid":"d","placement":{"node": "zz-nowhere"}}});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("zz-nowhere"), "{message}");
}

#[test]
fn a_packed_stemcell_tarball_is_accepted() {
    let config = cluster_config();
    let tgz = test_stemcell_dir().join("stemcell.tgz");
    let cid = create(tgz.to_str().unwrap(), &config);
    let reference = format!("moltencore-stemcell:{cid}");
    for node in node_names() {
        assert!(
            stemcell_images(&node).contains(&reference),
            "missing on {node}"
        );
    }
    delete(&cid, &config);
}

/// Images on `node` whose stemcell name label is `name`.
fn images_named(node: &str, name: &str) -> usize {
    runtime().block_on(async {
        let docker = node_socket(node).await;
        let filters: std::collections::HashMap<String, Vec<String>> = [(
            "label".to_string(),
            vec![format!("moltencore.stemcell.name={name}")],
        )]
        .into();
        docker
            .list_images(Some(
                ListImagesOptionsBuilder::new()
                    .all(true)
                    .filters(&filters)
                    .build(),
            ))
            .await
            .unwrap()
            .len()
    })
}

#[test]
fn a_digest_mismatch_fails_and_leaves_no_image() {
    let config = cluster_config();
    let src = test_stemcell_dir();
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(src.join("image"), dir.path().join("image")).unwrap();
    let name = format!("digest-mismatch-{}", uuid::Uuid::new_v4().simple());
    std::fs::write(
        dir.path().join("stemcell.MF"),
        format!(
            "name: {name}\nversion: '1'\nsha1: 0123456789012345678901234567890123456789\n\
             stemcell_formats: [warden-tar]\n"
        ),
    )
    .unwrap();
    let req = json!({"method":"create_stemcell",
                     "arguments":[dir.path().join("image").to_str().unwrap(), {}]});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("digest mismatch"), "{message}");
    assert!(
        message.contains("0123456789012345678901234567890123456789"),
        "{message}"
    );
    for node in node_names() {
        assert_eq!(
            images_named(&node, &name),
            0,
            "an image of the bad stemcell is on {node}"
        );
    }
    // The same stemcell with the right digest does import: the check above is not vacuous.
    let good = std::fs::read_to_string(src.join("stemcell.MF"))
        .unwrap()
        .replace("bosh-warden-boshlite-test-busybox", &name);
    std::fs::write(dir.path().join("stemcell.MF"), good).unwrap();
    let cid = create(dir.path().join("image").to_str().unwrap(), &config);
    for node in node_names() {
        assert_eq!(images_named(&node, &name), 1, "{node}");
    }
    delete(&cid, &config);
}

#[test]
fn missing_image_path_is_a_cpi_error_naming_it() {
    let req = json!({"method":"create_stemcell","arguments":["/nonexistent/stemcell/image", {}]});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&cluster_config()));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(message.contains("/nonexistent/stemcell/image"), "{message}");
}

#[test]
fn an_unreachable_node_does_not_fail_create_stemcell() {
    let dir = tempfile::tempdir().unwrap();
    let config = private_cluster(dir.path(), &[("zz-dead", dead_node_record("zz-dead"))]);
    let run = run_cpi(
        &json!({"method":"create_stemcell",
                "arguments":[test_stemcell_dir().join("image").to_str().unwrap(), {}]})
        .to_string(),
        Some(&config),
        &[],
    );
    assert_schema(&run);
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    let cid = run.response["result"].as_str().unwrap().to_string();
    let log = run.response["log"].as_str().unwrap();
    assert!(
        log.contains("zz-dead") && log.contains(&cid),
        "the log names the node that missed the stemcell: {log}"
    );
    for node in node_names() {
        assert!(stemcell_images(&node).contains(&format!("moltencore-stemcell:{cid}")));
    }
    // delete_stemcell still succeeds with the node down, and says so.
    let run = run_cpi(
        &json!({"method":"delete_stemcell","arguments":[cid]}).to_string(),
        Some(&config),
        &[],
    );
    assert_schema(&run);
    assert!(run.response["error"].is_null(), "{}", run.stdout);
    assert!(run.response["log"].as_str().unwrap().contains("zz-dead"));
}

/// Imports the test rootfs into one node under `reference` (as an operator would have
/// loaded an image there) and returns its image id.
fn load_image_on(node: &str, reference: &str) -> String {
    let image = std::fs::read(test_stemcell_dir().join("image")).unwrap();
    let (repo, tag) = reference.split_once(':').unwrap();
    runtime().block_on(async {
        use futures_util::StreamExt;
        let docker = node_socket(node).await;
        let options = bollard::query_parameters::CreateImageOptionsBuilder::new()
            .from_src("-")
            .repo(repo)
            .tag(tag)
            .build();
        let mut s = docker.create_image(
            Some(options),
            Some(bollard::body_full(bytes::Bytes::from(image))),
            None,
        );
        while let Some(step) = s.next().await {
            step.unwrap();
        }
        docker.inspect_image(reference).await.unwrap().id.unwrap()
    })
}

#[test]
fn a_docker_light_stemcell_adopts_the_image_present_on_the_nodes() {
    let config = cluster_config();
    let nodes = node_names();
    let reference = format!("light/test:{}", uuid::Uuid::new_v4().simple());
    let id = load_image_on(&nodes[0], &reference);
    let req = json!({"method":"create_stemcell",
        "arguments":["/nonexistent/empty-image", {"image_reference": reference, "digest": id}]});
    let run = run_cpi(&req.to_string(), Some(&config), &[]);
    assert_schema(&run);
    let cid = run.response["result"]
        .as_str()
        .unwrap_or_else(|| panic!("{}", run.stdout))
        .to_string();
    assert!(stemcell_images(&nodes[0]).contains(&format!("moltencore-stemcell:{cid}")));
    // The nodes without the image (and no registry to pull from) are named in the log;
    // a VM placed there gets the image copied from the first node.
    let log = run.response["log"].as_str().unwrap();
    assert!(log.contains(&nodes[1]), "{log}");
    delete(&cid, &config);
    runtime().block_on(async {
        // Only the stemcell tag went away; the operator's image stays.
        assert!(
            node_socket(&nodes[0])
                .await
                .inspect_image(&reference)
                .await
                .is_ok()
        );
    });

    let wrong = format!("sha256:{}", "0".repeat(64));
    let req = json!({"method":"create_stemcell",
        "arguments":["/nonexistent/empty-image", {"image_reference": reference, "digest": wrong}]});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CpiError");
    assert!(
        message.contains(&reference) && message.contains(&wrong),
        "{message}"
    );

    let absent = format!("light/absent:{}", uuid::Uuid::new_v4().simple());
    let req = json!({"method":"create_stemcell",
        "arguments":["/nonexistent/empty-image", {"image_reference": absent}]});
    let (kind, message, _) = expect_error(&req.to_string(), Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert!(
        message.contains(&absent) && message.contains("could not be pulled"),
        "{message}"
    );
}

#[test]
fn deleting_a_stemcell_a_vm_still_uses_is_refused_there_and_can_be_done_later() {
    let config = cluster_config();
    let cid = create(test_stemcell_dir().join("image").to_str().unwrap(), &config);
    let reference = format!("moltencore-stemcell:{cid}");
    let (node, prefix) = node_prefix(1);
    let vm = static_vm(&config, &cid, "stemcell-in-use", &format!("{prefix}.106"));

    let req = json!({"method":"delete_stemcell","arguments":[cid]}).to_string();
    let (kind, message, run) = expect_error(&req, Some(&config));
    assert_eq!(kind, "Bosh::Clouds::CloudError");
    assert_eq!(run.response["error"]["ok_to_retry"], false);
    assert!(
        message.contains(&cid) && message.contains(&node),
        "{message}"
    );
    assert!(
        stemcell_images(&node).contains(&reference),
        "the VM's image went"
    );
    assert!(
        index_record(&config, &format!("stemcells/{cid}")).is_some(),
        "the stemcell was forgotten while a node still has it"
    );
    // Once the VM is gone the same call finishes the job everywhere.
    let req_vm = json!({"method":"delete_vm","arguments":[vm]}).to_string();
    expect_result(&req_vm, Some(&config));
    delete(&cid, &config);
    for n in node_names() {
        assert!(
            !stemcell_images(&n).contains(&reference),
            "{reference} on {n}"
        );
    }
    assert!(index_record(&config, &format!("stemcells/{cid}")).is_none());
}
