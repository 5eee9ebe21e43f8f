//! Talking to `cpi fleetlock`: the server started on a free port of a config's etcd
//! prefix, and FleetLock requests as Zincati sends them, over raw HTTP/1.1 so a test can
//! also send what no client would.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{Value, json};

use crate::cpi::cpi_bin;

pub mod attack;

/// A running `cpi fleetlock`, killed when dropped.
pub struct FleetLockServer {
    pub child: Child,
    /// `host:port` it listens on.
    pub address: String,
}

impl Drop for FleetLockServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl FleetLockServer {
    /// Starts `cpi -c config fleetlock --listen 127.0.0.1:0 EXTRA` and waits for the
    /// address it listens on.
    pub fn start(config: &Path, extra: &[&str]) -> FleetLockServer {
        let mut child = Command::new(cpi_bin())
            .arg("-c")
            .arg(config)
            .args(["fleetlock", "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn cpi fleetlock");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let address = line
            .strip_prefix("listening on ")
            .unwrap_or_else(|| panic!("cpi fleetlock did not start: {line:?}"))
            .trim()
            .to_string();
        FleetLockServer { child, address }
    }
}

/// One raw HTTP/1.1 exchange: status and body (parsed as JSON when not empty).
pub fn exchange(address: &str, head: &str, body: &[u8]) -> (u16, Value) {
    let mut s = TcpStream::connect(address).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(head.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).unwrap();
    parse_answer(&answer)
}

/// The status and JSON body (null when empty) of a raw HTTP answer.
pub(crate) fn parse_answer(answer: &[u8]) -> (u16, Value) {
    let text = String::from_utf8_lossy(answer);
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no HTTP status in {text:?}"));
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    let doc = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(body).unwrap_or_else(|e| panic!("body {body:?} is not JSON: {e}"))
    };
    (status, doc)
}

/// A POST of `body` to `path` with the extra header lines `headers` (each ending `\r\n`).
pub fn post(address: &str, path: &str, headers: &str, body: &[u8]) -> (u16, Value) {
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    );
    exchange(address, &head, body)
}

/// The body of a FleetLock request of client `id` in `group`.
pub fn fleetlock_body(group: &str, id: &str) -> Vec<u8> {
    json!({"client_params": {"group": group, "id": id}})
        .to_string()
        .into_bytes()
}

/// A FleetLock request as Zincati sends it; the status and the body.
pub fn fleetlock_request(address: &str, path: &str, group: &str, id: &str) -> (u16, Value) {
    post(
        address,
        path,
        "fleet-lock-protocol: true\r\nContent-Type: application/json\r\n",
        &fleetlock_body(group, id),
    )
}
