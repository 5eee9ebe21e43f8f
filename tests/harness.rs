//! Tests of the local cluster harness itself, against its real etcd and dockerds: mutual
//! TLS is enforced, containers on different nodes reach each other with their real IPs,
//! and `ci/cluster down` leaves nothing behind.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointIpamConfig, EndpointSettings, HostConfig, NetworkingConfig,
};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, CreateImageOptionsBuilder, LogsOptionsBuilder,
    RemoveContainerOptionsBuilder, WaitContainerOptions,
};
use futures_util::StreamExt;
use moltencore::docker::DockerAccess;
use serde_json::Value;

fn read(path: &Value) -> String {
    std::fs::read_to_string(path.as_str().expect("path")).expect("read PEM")
}

fn access(tls: &Value, ca_from: &Value) -> DockerAccess {
    DockerAccess::new(
        &read(&ca_from["ca_cert_file"]),
        &read(&tls["client_cert_file"]),
        &read(&tls["client_key_file"]),
        "auto",
        moltencore::docker::DockerTimeouts {
            connect: Duration::from_secs(5),
            request: Duration::from_secs(120),
            idle: Duration::from_secs(120),
        },
    )
    .expect("docker access")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

#[test]
fn every_node_accepts_the_cluster_client_certificate() {
    let cluster = moltencore_testkit::cluster::cluster();
    let good = access(&cluster["docker_tls"], &cluster["docker_tls"]);
    let nodes = cluster["nodes"].as_array().unwrap();
    assert!(nodes.len() >= 2, "the harness runs several nodes");
    runtime().block_on(async {
        for node in nodes {
            let name = node["name"].as_str().unwrap();
            let client = good
                .connect(name, node["docker_endpoint"].as_str().unwrap())
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            let version = client
                .version()
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert!(!version.is_empty());
        }
    });
}

#[test]
fn nodes_refuse_a_client_certificate_from_another_ca() {
    let cluster = moltencore_testkit::cluster::cluster();
    // The rogue client certificate, presented to a client that trusts the real CA: the
    // server must reject the handshake.
    let rogue = access(&cluster["rogue_tls"], &cluster["docker_tls"]);
    // The real client certificate, but trusting only the rogue CA: the client must reject
    // the server.
    let wrong_trust = access(&cluster["docker_tls"], &cluster["rogue_tls"]);
    runtime().block_on(async {
        for node in cluster["nodes"].as_array().unwrap() {
            let name = node["name"].as_str().unwrap();
            let endpoint = node["docker_endpoint"].as_str().unwrap();
            for (what, a) in [("rogue client cert", &rogue), ("rogue CA", &wrong_trust)] {
                let result = match a.connect(name, endpoint).await {
                    Ok(c) => c.version().await,
                    Err(e) => Err(e),
                };
                let err = moltencore::protocol::CpiError::from(
                    result.expect_err(&format!("{name} accepted a {what}")),
                );
                assert!(err.message.contains(name), "{}", err.message);
                assert!(err.message.contains(endpoint), "{}", err.message);
                // Refused by TLS, not merely unreachable: the client that distrusts the
                // server says why; the server that refuses the client cert just drops the
                // connection (TLS 1.3 reports that after the handshake), while the same
                // node answers the right certificate (checked below).
                let m = err.message.to_ascii_lowercase();
                if what == "rogue CA" {
                    assert!(
                        m.contains("certificate") || m.contains("unknownissuer"),
                        "{what} on {name}: not a TLS rejection: {}",
                        err.message
                    );
                }
                assert!(
                    !m.contains("connection refused") && !m.contains("timed out"),
                    "{what} on {name}: unreachable rather than refused: {}",
                    err.message
                );
            }
            let good = access(&cluster["docker_tls"], &cluster["docker_tls"]);
            let version = good.connect(name, endpoint).await.unwrap().version().await;
            assert!(
                version.is_ok(),
                "{name} is reachable with the right certificate"
            );
        }
    });
}

#[test]
fn nodes_refuse_plain_http() {
    let cluster = moltencore_testkit::cluster::cluster();
    for node in cluster["nodes"].as_array().unwrap() {
        let endpoint = node["docker_endpoint"].as_str().unwrap();
        let addr = endpoint.trim_start_matches("tcp://");
        let mut stream = TcpStream::connect(addr).unwrap_or_else(|e| panic!("{addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        stream
            .write_all(b"GET /version HTTP/1.0\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut answer = Vec::new();
        let _ = stream.read_to_end(&mut answer);
        let answer = String::from_utf8_lossy(&answer);
        assert!(
            !answer.contains("ApiVersion"),
            "{addr} answered a plain HTTP request:\n{answer}"
        );
    }
}

/// A test image (the test stemcell's rootfs) imported into a node through its unix socket.
async fn import_test_image(node: &Value, tag: &str) -> Docker {
    let dir = std::env::var("MC_TEST_STEMCELL_DIR").unwrap_or_else(|_| {
        panic!(
            "MC_TEST_STEMCELL_DIR is not set: build it with ci/build-test-stemcell (ci/test does)"
        )
    });
    let image = std::fs::read(PathBuf::from(&dir).join("image"))
        .unwrap_or_else(|e| panic!("{dir}/image: {e}"));
    let socket = node["docker_socket"].as_str().unwrap();
    let docker = Docker::connect_with_unix(socket, 120, bollard::API_DEFAULT_VERSION)
        .unwrap()
        .negotiate_version()
        .await
        .unwrap();
    let (repo, tag) = tag.split_once(':').unwrap();
    let options = CreateImageOptionsBuilder::new()
        .from_src("-")
        .repo(repo)
        .tag(tag)
        .build();
    let mut progress = docker.create_image(
        Some(options),
        Some(bollard::body_full(bytes::Bytes::from(image))),
        None,
    );
    while let Some(step) = progress.next().await {
        step.expect("docker import");
    }
    docker
}

async fn run_on_bosh_network(
    docker: &Docker,
    name: &str,
    image: &str,
    ip: Option<&str>,
    cmd: &str,
) -> String {
    let _ = docker
        .remove_container(
            name,
            Some(RemoveContainerOptionsBuilder::new().force(true).build()),
        )
        .await;
    let endpoint = EndpointSettings {
        ipam_config: ip.map(|ip| EndpointIpamConfig {
            ipv4_address: Some(ip.to_string()),
            ..Default::default()
        }),
        ..Default::default()
    };
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/bin/sh".into(), "-c".into(), cmd.into()]),
        host_config: Some(HostConfig {
            network_mode: Some("bosh".into()),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some([("bosh".to_string(), endpoint)].into()),
        }),
        ..Default::default()
    };
    docker
        .create_container(
            Some(CreateContainerOptionsBuilder::new().name(name).build()),
            body,
        )
        .await
        .unwrap_or_else(|e| panic!("create {name}: {e}"));
    docker
        .start_container(name, None)
        .await
        .unwrap_or_else(|e| panic!("start {name}: {e}"));
    let inspect = docker.inspect_container(name, None).await.unwrap();
    inspect.network_settings.unwrap().networks.unwrap()["bosh"]
        .ip_address
        .clone()
        .unwrap()
}

async fn wait_and_logs(docker: &Docker, name: &str) -> (i64, String) {
    let mut wait = docker.wait_container(name, None::<WaitContainerOptions>);
    let code = match wait.next().await {
        Some(Ok(r)) => r.status_code,
        Some(Err(bollard::errors::Error::DockerContainerWaitError { code, .. })) => code,
        other => panic!("wait {name}: {other:?}"),
    };
    let mut logs = docker.logs(
        name,
        Some(LogsOptionsBuilder::new().stdout(true).stderr(true).build()),
    );
    let mut text = String::new();
    while let Some(Ok(chunk)) = logs.next().await {
        text.push_str(&chunk.to_string());
    }
    (code, text)
}

#[test]
fn a_container_on_one_node_reaches_a_container_on_another_with_its_real_ip() {
    let cluster = moltencore_testkit::cluster::cluster();
    let nodes = cluster["nodes"].as_array().unwrap();
    let (n1, n2) = (&nodes[0], &nodes[1]);
    runtime().block_on(async {
        let image = "harness-test:1";
        let d1 = import_test_image(n1, image).await;
        let d2 = import_test_image(n2, image).await;
        // Server on node 1: a CGI that echoes the caller's address, so NAT would show.
        let server_cmd = "mkdir -p /tmp/w/cgi-bin && \
            printf '#!/bin/sh\\necho Content-Type: text/plain\\necho\\necho \"peer=$REMOTE_ADDR\"\\n' > /tmp/w/cgi-bin/peer && \
            chmod +x /tmp/w/cgi-bin/peer && exec httpd -f -p 8081 -h /tmp/w";
        let server_ip = run_on_bosh_network(&d1, "harness-server", image, None, server_cmd).await;
        let subnet1: ipnet::Ipv4Net = n1["subnet"].as_str().unwrap().parse().unwrap();
        assert!(subnet1.contains(&server_ip.parse::<std::net::Ipv4Addr>().unwrap()));
        // Client on node 2, retrying while the server starts (busybox nc: the static
        // busybox wget crashes in some sandboxes).
        let client_cmd = format!(
            "echo me=$(ip -4 addr show eth0 | sed -n 's/.*inet \\([0-9.]*\\).*/\\1/p'); \
             for i in 1 2 3 4 5 6 7 8 9 10; do \
               out=$(printf 'GET /cgi-bin/peer HTTP/1.0\\r\\n\\r\\n' | nc -w 3 {server_ip} 8081) && \
               echo \"$out\" | grep -q peer= && echo \"$out\" && exit 0; sleep 1; done; exit 1"
        );
        run_on_bosh_network(&d2, "harness-client", image, None, &client_cmd).await;
        let (code, logs) = wait_and_logs(&d2, "harness-client").await;
        for (d, name) in [(&d1, "harness-server"), (&d2, "harness-client")] {
            let _ = d
                .remove_container(name, Some(RemoveContainerOptionsBuilder::new().force(true).build()))
                .await;
        }
        assert_eq!(code, 0, "client on {} could not reach {server_ip}:\n{logs}", n2["name"]);
        let me = logs
            .lines()
            .find_map(|l| l.strip_prefix("me="))
            .unwrap_or_else(|| panic!("no own address in:\n{logs}"))
            .trim()
            .to_string();
        // busybox httpd reports IPv4 peers in IPv4-mapped IPv6 form.
        assert!(
            logs.contains(&format!("peer={me}")) || logs.contains(&format!("peer=[::ffff:{me}]")),
            "server saw another address than the client's {me} (NAT?):\n{logs}"
        );
    });
}
