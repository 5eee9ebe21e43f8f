//! `cpi fleetlock` against the harness's real etcd: FleetLock clients of one group respect
//! the semaphore's max, refusals carry the protocol's error body, a MoltenCore node and a
//! FleetLock client compete for one slot, and mutual TLS keeps out foreign clients.
//! Every test runs under its own key prefix.

use std::path::Path;
use std::process::Command;

use moltencore::node_name::NodeName;
use moltencore::reboot::semaphore::{Holder, HolderKind, Semaphore, SemaphoreDoc, Take};
use moltencore_testkit::fleetlock::attack::{
    Attack, Endpoint, raise_open_files, rss_kib, timed_request,
};
use moltencore_testkit::index::semaphore_of;
use moltencore_testkit::wait::wait_until;
use moltencore_testkit::{
    cluster::{
        cluster, dead_node_record, load_config, node_names, private_cluster, private_config,
        register_nodes, runtime,
    },
    fleetlock::{FleetLockServer, exchange, fleetlock_body, fleetlock_request, post},
};
use serde_json::Value;

fn assert_refused(answer: &(u16, Value), status: u16, kind: &str) {
    assert_eq!(answer.0, status, "{answer:?}");
    assert_eq!(answer.1["kind"], kind, "{answer:?}");
    assert!(
        answer.1["value"].as_str().is_some_and(|v| !v.is_empty()),
        "{answer:?}"
    );
}

/// One runtime for the whole binary: an etcd client lives on the runtime it was made on.
fn rt() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(runtime)
}

fn semaphore(config: &Path, group: &str) -> Semaphore {
    rt().block_on(semaphore_of(config, group))
}

fn stored(sem: &Semaphore) -> SemaphoreDoc {
    rt().block_on(sem.read()).unwrap().doc
}

fn holder_ids(sem: &Semaphore) -> Vec<String> {
    stored(sem).holders.into_iter().map(|h| h.id).collect()
}

#[test]
fn two_clients_of_one_group_respect_max() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let server = FleetLockServer::start(&config, &[]);
    let a = &server.address;
    let sem = semaphore(&config, "default");

    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "client-a").0,
        200
    );
    assert_eq!(holder_ids(&sem), ["client-a"]);
    let full = fleetlock_request(a, "/v1/pre-reboot", "default", "client-b");
    assert_refused(&full, 409, "failed_lock_semaphore_full");
    assert!(full.1["value"].as_str().unwrap().contains("client-a"));
    // Recursive: the holder asks again and keeps its slot.
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "client-a").0,
        200
    );
    // Unlock if held: b holds nothing, and nothing changes.
    assert_eq!(
        fleetlock_request(a, "/v1/steady-state", "default", "client-b").0,
        200
    );
    assert_eq!(holder_ids(&sem), ["client-a"]);
    assert_eq!(
        fleetlock_request(a, "/v1/steady-state", "default", "client-a").0,
        200
    );
    assert!(holder_ids(&sem).is_empty());
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "client-b").0,
        200
    );

    // With max 2 both fit, a third does not.
    assert_eq!(rt().block_on(sem.set_max(2)).unwrap(), 1);
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "client-a").0,
        200
    );
    assert_refused(
        &fleetlock_request(a, "/v1/pre-reboot", "default", "client-c"),
        409,
        "failed_lock_semaphore_full",
    );
    let doc = stored(&sem);
    assert_eq!(doc.max, 2);
    assert_eq!(holder_ids(&sem), ["client-b", "client-a"]);
    assert!(
        doc.holders
            .iter()
            .all(|h| h.kind == HolderKind::Fleetlock && !h.since.is_empty())
    );
}

#[test]
fn clients_racing_for_one_slot_get_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let server = FleetLockServer::start(&config, &[]);
    let answers: Vec<u16> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..8)
            .map(|i| {
                let a = server.address.clone();
                s.spawn(move || {
                    fleetlock_request(&a, "/v1/pre-reboot", "default", &format!("c{i}")).0
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(
        answers.iter().filter(|&&s| s == 200).count(),
        1,
        "{answers:?}"
    );
    assert_eq!(
        answers.iter().filter(|&&s| s == 409).count(),
        7,
        "{answers:?}"
    );
    assert_eq!(holder_ids(&semaphore(&config, "default")).len(), 1);
}

/// The fleet-lock header every FleetLock request carries.
const FLEETLOCK_HEADER: &str = "fleet-lock-protocol: true\r\n";

/// A request without the FleetLock header or with a body that is not a FleetLock body
/// (or names no group of the server) is a 400 naming what is wrong.
fn assert_bad_headers_and_bodies_are_refused(a: &str) {
    let ok_body = fleetlock_body("default", "client-a");
    let header = FLEETLOCK_HEADER;
    assert_refused(
        &post(a, "/v1/pre-reboot", "", &ok_body),
        400,
        "missing_fleet_lock_header",
    );
    assert_refused(
        &post(
            a,
            "/v1/pre-reboot",
            "fleet-lock-protocol: false\r\n",
            &ok_body,
        ),
        400,
        "bad_fleet_lock_header",
    );
    assert_refused(
        &post(a, "/v1/pre-reboot", header, b"{\"client_params\": nope"),
        400,
        "bad_request_body",
    );
    assert_refused(
        &post(
            a,
            "/v1/pre-reboot",
            header,
            br#"{"client_params":{"id":"x"}}"#,
        ),
        400,
        "bad_request_body",
    );
    assert_refused(
        &fleetlock_request(a, "/v1/pre-reboot", "nightly", "client-a"),
        400,
        "unknown_group",
    );
    assert_refused(
        &fleetlock_request(a, "/v1/pre-reboot", "../etc", "client-a"),
        400,
        "bad_request_body",
    );
}

/// An unknown path (404), another method (405), a body too large (413) or announced and
/// never sent (408: answered, not waited for forever) are refused.
fn assert_bad_paths_methods_and_sizes_are_refused(a: &str) {
    let ok_body = fleetlock_body("default", "client-a");
    let header = FLEETLOCK_HEADER;
    assert_refused(&post(a, "/v1/unlock", header, &ok_body), 404, "not_found");
    assert_refused(
        &exchange(
            a,
            "GET /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
            b"",
        ),
        405,
        "method_not_allowed",
    );
    let huge = vec![b'x'; 64 * 1024];
    assert_refused(
        &post(a, "/v1/pre-reboot", header, &huge),
        413,
        "body_too_large",
    );
    // A body announced and never sent is answered, not waited for forever.
    let slow = exchange(
        a,
        "POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\nContent-Length: 100\r\n\r\n",
        b"{",
    );
    assert_refused(&slow, 408, "body_timeout");
}

#[test]
fn bad_requests_get_the_protocol_error_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let server = FleetLockServer::start(&config, &["--group", "default", "--group", "workers"]);
    let a = &server.address;
    assert_bad_headers_and_bodies_are_refused(a);
    assert_bad_paths_methods_and_sizes_are_refused(a);

    for group in ["default", "workers"] {
        let sem = semaphore(&config, group);
        assert_eq!(rt().block_on(sem.read()).unwrap().mod_revision, None);
    }
    // The second group is a semaphore of its own.
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "client-a").0,
        200
    );
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "workers", "client-b").0,
        200
    );
    assert_eq!(holder_ids(&semaphore(&config, "workers")), ["client-b"]);
}

#[test]
fn a_fleetlock_client_and_a_moltencore_node_compete_for_one_slot() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let server = FleetLockServer::start(&config, &[]);
    let a = &server.address;
    let sem = semaphore(&config, "default");
    let node = |name: &str| Holder {
        id: name.into(),
        kind: HolderKind::Node,
        node: Some(name.parse::<NodeName>().unwrap()),
        boot_id: Some("boot-1".into()),
        since: "2026-01-01T00:00:00Z".into(),
        why: "test".into(),
    };

    assert_eq!(rt().block_on(sem.take(node("n1"))).unwrap(), Take::Taken);
    assert_refused(
        &fleetlock_request(a, "/v1/pre-reboot", "default", "zincati-1"),
        409,
        "failed_lock_semaphore_full",
    );
    // A FleetLock client can neither ride on nor free a node's slot.
    assert_refused(
        &fleetlock_request(a, "/v1/pre-reboot", "default", "n1"),
        409,
        "held_by_node",
    );
    assert_refused(
        &fleetlock_request(a, "/v1/steady-state", "default", "n1"),
        409,
        "held_by_node",
    );
    assert_eq!(holder_ids(&sem), ["n1"]);

    rt().block_on(sem.give_back("n1")).unwrap();
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", "zincati-1").0,
        200
    );
    assert!(matches!(
        rt().block_on(sem.take(node("n2"))).unwrap(),
        Take::Full(holders) if holders[0].id == "zincati-1"
    ));
    assert_eq!(
        fleetlock_request(a, "/v1/steady-state", "default", "zincati-1").0,
        200
    );
    assert_eq!(rt().block_on(sem.take(node("n2"))).unwrap(), Take::Taken);
}

#[test]
fn mutual_tls_admits_only_clients_of_the_configured_ca() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let c = cluster();
    let pki = Path::new(c["dir"].as_str().unwrap()).join("pki");
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let server = FleetLockServer::start(
        &config,
        &[
            "--tls-cert",
            &p("etcd-server.crt"),
            "--tls-key",
            &p("etcd-server.key"),
            "--client-ca",
            &p("etcd-ca.crt"),
        ],
    );
    let curl = |cert: &str, key: &str| {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "30", "-o", "-", "-w", "\n%{http_code}"])
            .args(["--cacert", &p("etcd-ca.crt"), "--cert", cert, "--key", key])
            .args(["-H", "fleet-lock-protocol: true", "--data-binary"])
            .arg(String::from_utf8(fleetlock_body("default", "tls-client")).unwrap())
            .arg(format!("https://{}/v1/pre-reboot", server.address))
            .output()
            .expect("curl is needed (the harness requires it)");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    let (ok, out) = curl(&p("etcd-client.crt"), &p("etcd-client.key"));
    assert!(ok && out.ends_with("200"), "{out}");
    let (ok, out) = curl(&p("rogue-client.crt"), &p("rogue-client.key"));
    assert!(!ok, "a client of another CA was served: {out}");
    // Only the admitted client holds a slot.
    let sem = semaphore(&config, "default");
    assert_eq!(holder_ids(&sem), ["tls-client"]);
}

#[test]
fn ids_that_name_a_node_are_refused_and_change_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let long = "x".repeat(200);
    let config = private_cluster(dir.path(), &[(&long, dead_node_record(&long))]);
    let server = FleetLockServer::start(&config, &[]);
    let a = &server.address;
    let sem = semaphore(&config, "default");
    let names = node_names();
    assert!(names.len() >= 3, "{names:?}");
    for name in names.iter().chain([&long]) {
        for path in ["/v1/pre-reboot", "/v1/steady-state"] {
            let answer = fleetlock_request(a, path, "default", name);
            assert_refused(&answer, 409, "id_names_a_node");
            let value = answer.1["value"].as_str().unwrap();
            assert!(value.contains(&name[..name.len().min(64)]), "{value}");
            assert!(value.len() < 300, "{value}");
        }
    }
    assert_eq!(rt().block_on(sem.read()).unwrap().mod_revision, None);
    // A name that merely starts like a node's is an id of its own.
    let other = format!("{}-machine", names[0]);
    assert_eq!(
        fleetlock_request(a, "/v1/pre-reboot", "default", &other).0,
        200
    );
    assert_eq!(holder_ids(&sem), [other]);

    // A node registered while the server runs is known within seconds (the names are
    // read at most every 5 s).
    let prefix = load_config(&config).etcd.key_prefix;
    register_nodes(&config, &prefix, &[("late", dead_node_record("late"))]);
    wait_until(
        "the server refuses the id of a node registered after its start",
        std::time::Duration::from_secs(10),
        std::time::Duration::from_millis(500),
        || {
            fleetlock_request(a, "/v1/steady-state", "default", "late").1["kind"]
                == "id_names_a_node"
        },
    );
}

#[test]
fn one_deadline_covers_handshake_headers_and_body() {
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let server = FleetLockServer::start(&config, &[]);
    // Headers over 6 s, then a body that never completes: the 408 comes at the request's
    // deadline (10 s from the accept), not 10 s after the headers.
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(&server.address).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let head = "POST /v1/pre-reboot HTTP/1.1\r\nHost: x\r\nfleet-lock-protocol: true\r\n\
                Content-Length: 100\r\n\r\n{";
    let pieces: Vec<&[u8]> = head.as_bytes().chunks(head.len() / 12 + 1).collect();
    for piece in &pieces {
        std::io::Write::write_all(&mut s, piece).unwrap();
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    let mut answer = Vec::new();
    std::io::Read::read_to_end(&mut s, &mut answer).unwrap();
    let elapsed = start.elapsed();
    let text = String::from_utf8_lossy(&answer);
    assert!(text.starts_with("HTTP/1.1 408"), "{text}");
    assert!(text.contains("body_timeout"), "{text}");
    assert!(
        elapsed < std::time::Duration::from_millis(11_500),
        "{elapsed:?}"
    );

    // A TLS handshake that never starts is closed at the same deadline.
    let c = cluster();
    let pki = Path::new(c["dir"].as_str().unwrap()).join("pki");
    let p = |f: &str| pki.join(f).to_str().unwrap().to_string();
    let tls = FleetLockServer::start(
        &config,
        &[
            "--tls-cert",
            &p("etcd-server.crt"),
            "--tls-key",
            &p("etcd-server.key"),
        ],
    );
    let start = std::time::Instant::now();
    let mut s = std::net::TcpStream::connect(&tls.address).unwrap();
    s.set_read_timeout(Some(std::time::Duration::from_secs(30)))
        .unwrap();
    let mut answer = Vec::new();
    let _ = std::io::Read::read_to_end(&mut s, &mut answer);
    let elapsed = start.elapsed();
    assert!(answer.is_empty(), "{answer:?}");
    assert!(
        elapsed < std::time::Duration::from_millis(11_500),
        "{elapsed:?}"
    );
}

/// Idle and slow attackers each: together more than the server's 1024 connections, so
/// that the server must shed some.
const ATTACKERS: usize = 600;

/// Memory the server may use under attack: 1024 connections, each buffering at most 8 KiB
/// of headers and 16 KiB of body, on top of an idle server (about 10 MiB), with room for
/// the allocator's fragmentation while tens of thousands of connections come and go.
const RSS_BOUND_KIB: u64 = 128 * 1024;

/// A genuine client's requests while `attack` runs: every one answered 200 within 1 s.
/// Returns the largest RSS of the server seen meanwhile.
fn genuine_client_during(
    server: &FleetLockServer,
    endpoint: &Endpoint,
    attack: &Attack,
    what: &str,
) -> u64 {
    attack.wait_for_connections(2 * ATTACKERS as u64, std::time::Duration::from_secs(20));
    // The first burst of connections is queued; the requests go during the churn after it.
    std::thread::sleep(std::time::Duration::from_secs(1));
    let before = attack.connections();
    let mut rss = 0;
    let mut slowest = std::time::Duration::ZERO;
    for i in 0..16 {
        let path = if i % 2 == 0 {
            "/v1/pre-reboot"
        } else {
            "/v1/steady-state"
        };
        let within = std::time::Duration::from_secs(1);
        let start = std::time::Instant::now();
        match timed_request(endpoint, path, "default", "genuine", within) {
            Ok((200, _)) => {}
            other => panic!("{what}: request {i} ({path}) got {other:?}"),
        }
        slowest = slowest.max(start.elapsed());
        rss = rss.max(rss_kib(server.child.id()));
        std::thread::sleep(std::time::Duration::from_millis(250));
    }
    // The attackers were closed and came back meanwhile: the server shed them.
    assert!(
        attack.connections() > before + 100,
        "{what}: the attackers reconnected only {} times",
        attack.connections() - before
    );
    eprintln!(
        "{what}: slowest answer {slowest:?}; server RSS at most {rss} KiB; attackers \
         reconnected {} times",
        attack.connections() - before
    );
    rss
}

#[test]
fn idle_and_slow_connections_do_not_keep_a_client_from_its_answer() {
    raise_open_files(8192);
    let dir = tempfile::tempdir().unwrap();
    let (config, _) = private_config(dir.path());
    let c = cluster();
    let pki = Path::new(c["dir"].as_str().unwrap()).join("pki");
    let p = |f: &str| pki.join(f);
    let plain = FleetLockServer::start(&config, &[]);
    let tls = FleetLockServer::start(
        &config,
        &[
            "--tls-cert",
            p("etcd-server.crt").to_str().unwrap(),
            "--tls-key",
            p("etcd-server.key").to_str().unwrap(),
            "--client-ca",
            p("etcd-ca.crt").to_str().unwrap(),
        ],
    );
    let endpoints = [
        (&plain, Endpoint::Plain(plain.address.clone()), false),
        (
            &tls,
            Endpoint::tls(
                &tls.address,
                &p("etcd-ca.crt"),
                &p("etcd-client.crt"),
                &p("etcd-client.key"),
            ),
            true,
        ),
    ];
    let own = std::net::Ipv4Addr::new(127, 0, 0, 1);
    let others = (
        std::net::Ipv4Addr::new(127, 0, 0, 2),
        std::net::Ipv4Addr::new(127, 0, 0, 3),
    );
    for (server, endpoint, is_tls) in &endpoints {
        eprintln!("idle server RSS {} KiB", rss_kib(server.child.id()));
        let target = server.address.parse().unwrap();
        for (idle_from, slow_from) in [(own, own), others] {
            let what = format!(
                "{} server, attackers from {idle_from} and {slow_from}",
                if *is_tls { "TLS" } else { "plain" }
            );
            let attack = Attack::start(
                target,
                (idle_from, ATTACKERS),
                (slow_from, ATTACKERS),
                *is_tls,
            );
            let rss = genuine_client_during(server, endpoint, &attack, &what);
            assert!(rss < RSS_BOUND_KIB, "{what}: RSS {rss} KiB");
        }
    }
    assert!(holder_ids(&semaphore(&config, "default")).is_empty());
}
