//! VMs of the agent stemcell (`ci/build-agent-stemcell`: the real bosh-agent, monit 5.2.5,
//! runit) and their agent, spoken to as `bosh create-env` does: over the agent's HTTPS
//! mbus, with the password of the cluster's `agent.mbus` and a certificate the test makes.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::cluster::runtime;
use crate::cluster::{cluster_config, cluster_cpi_json, node_prefix};
use crate::cpi::expect_result;
use crate::docker::{exec_in, sh};
use crate::requests::{agent_id, create_vm_request, manual_network};

/// The agent stemcell's folder (`image`, `stemcell.MF`), from `MC_AGENT_STEMCELL_DIR`.
pub fn agent_stemcell_dir() -> PathBuf {
    let dir = std::env::var("MC_AGENT_STEMCELL_DIR").expect(
        "MC_AGENT_STEMCELL_DIR is not set: build it with `ci/build-agent-stemcell DIR` (ci/test does)",
    );
    let dir = PathBuf::from(dir);
    assert!(
        dir.join("image").is_file(),
        "no agent stemcell image in {}",
        dir.display()
    );
    dir
}

/// The agent stemcell imported once per test binary.
pub fn agent_stemcell() -> String {
    static CID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CID.get_or_init(|| {
        let image = agent_stemcell_dir().join("image");
        let req = json!({"method": "create_stemcell", "arguments": [image.to_str().unwrap(), {}]});
        expect_result(&req.to_string(), Some(&cluster_config()))
            .as_str()
            .expect("stemcell cid")
            .to_string()
    })
    .clone()
}

/// The password of the cluster's agent mbus (`https://mbus:<password>@0.0.0.0:6868`).
fn mbus_password() -> String {
    let config: Value = cluster_cpi_json();
    let mbus = config["agent"]["mbus"]
        .as_str()
        .expect("agent.mbus in cpi.json");
    let userinfo = mbus
        .split("://")
        .nth(1)
        .and_then(|r| r.split('@').next())
        .unwrap();
    userinfo
        .split(':')
        .nth(1)
        .expect("a password in agent.mbus")
        .to_string()
}

/// A self-signed certificate for the agent's HTTPS mbus on `ip`, as `env.bosh.mbus.cert`.
fn mbus_cert(ip: &str) -> Value {
    let dir = tempfile::tempdir().unwrap();
    let (key, cert) = (dir.path().join("key.pem"), dir.path().join("cert.pem"));
    let out = Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj",
        ])
        .arg(format!("/CN={ip}"))
        .args(["-addext", &format!("subjectAltName=IP:{ip}")])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let cert = std::fs::read_to_string(cert).unwrap();
    json!({"ca": cert, "certificate": cert, "private_key": std::fs::read_to_string(key).unwrap()})
}

/// A VM of the agent stemcell, with its node and address.
pub struct AgentVm {
    pub cid: String,
    pub node: String,
    pub ip: String,
    password: String,
}

impl AgentVm {
    /// Creates a VM of the agent stemcell on the node at `index` (0-based) with the static
    /// address `.host`, and waits until its agent answers.
    pub fn create(index: usize, host: u8, test: &str) -> AgentVm {
        AgentVm::create_with(index, host, test, json!({}))
    }

    /// [`AgentVm::create`] with the VM's `cloud_properties`.
    pub fn create_with(index: usize, host: u8, test: &str, cloud_properties: Value) -> AgentVm {
        let (node, prefix) = node_prefix(index);
        let ip = format!("{prefix}.{host}");
        let env = json!({"bosh": {"mbus": {"cert": mbus_cert(&ip)}}});
        let req = create_vm_request(
            &agent_id(test),
            &agent_stemcell(),
            cloud_properties,
            manual_network(&ip),
            env,
            2,
        );
        let cid = expect_result(&req, Some(&cluster_config()))[0]
            .as_str()
            .expect("create_vm answers [cid, networks]")
            .to_string();
        let vm = AgentVm {
            cid,
            node,
            ip,
            password: mbus_password(),
        };
        vm.wait_ready(Duration::from_secs(120));
        vm
    }

    /// Waits until the agent answers `ping`.
    pub fn wait_ready(&self, limit: Duration) {
        let start = Instant::now();
        loop {
            if self
                .send("ping", json!([]))
                .is_some_and(|v| v["value"] == "pong")
            {
                return;
            }
            assert!(
                start.elapsed() < limit,
                "the agent of {} on {} did not answer within {limit:?}; its log: {}",
                self.cid,
                self.node,
                self.shell("tail -n 30 /var/vcap/bosh/log/current 2>&1 || true")
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// One request to the agent; `None` when it does not answer.
    fn send(&self, method: &str, args: Value) -> Option<Value> {
        let body = json!({"method": method, "arguments": args, "reply_to": "moltencore-test"});
        let out = Command::new("curl")
            .args(["-sk", "--max-time", "30", "-u"])
            .arg(format!("mbus:{}", self.password))
            .args(["-H", "Content-Type: application/json", "-d"])
            .arg(body.to_string())
            .arg(format!("https://{}:6868/agent", self.ip))
            .output()
            .expect("curl");
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Calls `method` on the agent and waits for its task, as the bosh CLI does; the
    /// value, or a panic with the agent's exception.
    pub fn call(&self, method: &str, args: Value) -> Value {
        let answer = self
            .send(method, args.clone())
            .unwrap_or_else(|| panic!("the agent of {} does not answer {method}", self.cid));
        let mut value = self.value(method, answer);
        let start = Instant::now();
        while let Some(task) = value
            .get("agent_task_id")
            .and_then(Value::as_str)
            .map(str::to_string)
        {
            if value["state"] != "running" {
                break;
            }
            assert!(
                start.elapsed() < Duration::from_secs(120),
                "{method} still running"
            );
            std::thread::sleep(Duration::from_millis(300));
            let answer = self
                .send("get_task", json!([task]))
                .unwrap_or_else(|| panic!("the agent of {} does not answer get_task", self.cid));
            value = self.value(method, answer);
        }
        value
    }

    fn value(&self, method: &str, answer: Value) -> Value {
        if let Some(e) = answer.get("exception") {
            panic!("agent {method} on {}: {e}", self.cid);
        }
        answer["value"].clone()
    }

    /// Runs `cmd` in the VM (must succeed); its output.
    pub fn shell(&self, cmd: &str) -> String {
        sh(&self.node, &self.cid, cmd)
    }

    /// Runs `cmd` in the VM; exit code and output.
    pub fn try_shell(&self, cmd: &str) -> (i64, String) {
        runtime().block_on(exec_in(&self.node, &self.cid, cmd))
    }

    /// The agent's process id in the VM.
    pub fn agent_pid(&self) -> String {
        self.shell("pidof bosh-agent").trim().to_string()
    }

    /// The disk the VM's `/var/vcap/store` mounts, as `/proc/self/mountinfo` names it: the
    /// device (the disk's hint); `None` when the store is not a mount.
    pub fn store_source(&self) -> Option<String> {
        let info = self.shell("cat /proc/self/mountinfo");
        let line = info
            .lines()
            .rev()
            .find(|l| l.split(' ').nth(4) == Some("/var/vcap/store"))?;
        let (_, tail) = line.split_once(" - ")?;
        tail.split(' ').nth(1).map(str::to_string)
    }

    /// The file `path` as it is on disk `disk` itself, read through a mount of the disk's
    /// device of the test's own, whatever the store is.
    pub fn read_on_disk(&self, disk: &str, path: &str) -> String {
        let at = crate::docker::mount_disk_in(&self.node, &self.cid, disk);
        self.shell(&format!("cat {at}/{path}"))
    }

    /// What the container's own `/var/vcap/store` (under any mount) holds.
    pub fn store_underneath(&self) -> String {
        self.shell(
            "mkdir -p /tmp/rootview && (mountpoint -q /tmp/rootview || mount --bind / /tmp/rootview) && ls -A /tmp/rootview/var/vcap/store; umount /tmp/rootview",
        )
    }
}

/// The agent's `mount_disk` after the director's `add_persistent_disk`, as bosh does after
/// attach_disk; `hint` is attach_disk's answer.
pub fn mount(vm: &AgentVm, disk: &str, hint: &Value) {
    // As the director, which pings an agent before it talks to it.
    vm.wait_ready(Duration::from_secs(120));
    vm.call("add_persistent_disk", json!([disk, hint]));
    vm.call("mount_disk", json!([disk]));
}

/// Waits until `cond` holds for the VM, or panics naming `what`.
pub fn wait_for(what: &str, limit: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        std::thread::sleep(Duration::from_millis(300));
    }
}
