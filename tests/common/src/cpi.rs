//! Running the built `cpi` binary: one request on stdin, the response document checked
//! against the contract, and the same call killed at a chosen point.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::cluster::{cluster_config, runtime};
use crate::docker::leftovers_of_agent;
use crate::requests::request;

/// What one `cpi` run produced.
pub struct CpiRun {
    pub status: std::process::ExitStatus,
    pub stdout: String,
    pub stderr: String,
    /// stdout parsed as JSON (the test fails if it is not).
    pub response: Value,
}

/// Path of the built binary: `CARGO_BIN_EXE_cpi` when cargo sets it for the run, else
/// `cpi` in the profile folder above the test binary (`target/<profile>/deps/<test>`).
/// Fails loudly when there is none.
pub fn cpi_bin() -> PathBuf {
    let path = std::env::var_os("CARGO_BIN_EXE_cpi")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let exe = std::env::current_exe().expect("path of the test binary");
            let deps = exe.parent().expect("the test binary's folder");
            deps.parent().expect("the profile folder").join("cpi")
        });
    assert!(
        path.is_file(),
        "no cpi binary at {}: build it with `cargo build` (cargo test does)",
        path.display()
    );
    path
}

/// Runs `cpi` with `request` on stdin and the given config and extra environment.
pub fn run_cpi(request: &str, config: Option<&Path>, env: &[(&str, &str)]) -> CpiRun {
    let mut cmd = Command::new(cpi_bin());
    if let Some(c) = config {
        cmd.arg("-c").arg(c);
    } else {
        cmd.arg("-c").arg("/nonexistent/cpi.json");
    }
    cmd.stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .env_remove("MOLTENCORE_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = start_with_request(cmd, request)
        .wait_with_output()
        .expect("wait for cpi");
    let stdout = String::from_utf8(out.stdout).expect("stdout is UTF-8");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let response: Value = serde_json::from_str(stdout.trim()).unwrap_or_else(|e| {
        panic!("stdout is not one JSON document ({e}):\n{stdout}\nstderr:\n{stderr}")
    });
    assert_eq!(
        stdout.trim().lines().count(),
        1,
        "exactly one response line expected:\n{stdout}"
    );
    CpiRun {
        status: out.status,
        stdout,
        stderr,
        response,
    }
}

/// Asserts the response document has the contract's shape: `result`, `error` and `log`
/// present, `log` a string, and `error` either null or a typed object with a boolean
/// `ok_to_retry`. Also asserts exit status 0.
pub fn assert_schema(run: &CpiRun) {
    assert!(
        run.status.success(),
        "exit status {:?}, stderr:\n{}",
        run.status,
        run.stderr
    );
    let r = run.response.as_object().expect("response is an object");
    assert_eq!(r.len(), 3, "exactly result/error/log: {}", run.stdout);
    assert!(r.contains_key("result"), "no result: {}", run.stdout);
    assert!(r["log"].is_string(), "log must be a string: {}", run.stdout);
    match &r["error"] {
        Value::Null => {}
        Value::Object(e) => {
            let t = e["type"].as_str().expect("error.type is a string");
            assert!(t.starts_with("Bosh::Clouds::"), "error type {t}");
            assert!(e["message"].is_string(), "error.message: {}", run.stdout);
            assert!(e["ok_to_retry"].is_boolean(), "ok_to_retry: {}", run.stdout);
            assert!(r["result"].is_null(), "result must be null on error");
        }
        other => panic!("error must be null or an object, got {other}"),
    }
}

/// Runs and checks the schema, then returns the error (type, message) or panics.
pub fn expect_error(request: &str, config: Option<&Path>) -> (String, String, CpiRun) {
    let run = run_cpi(request, config, &[]);
    assert_schema(&run);
    let e = &run.response["error"];
    assert!(e.is_object(), "expected an error, got {}", run.stdout);
    (
        e["type"].as_str().unwrap().to_string(),
        e["message"].as_str().unwrap().to_string(),
        run,
    )
}

/// Runs and checks the schema, then returns the result or panics with the error.
pub fn expect_result(request: &str, config: Option<&Path>) -> Value {
    let run = run_cpi(request, config, &[]);
    assert_schema(&run);
    assert!(
        run.response["error"].is_null(),
        "expected success, got {}\nstderr:\n{}",
        run.stdout,
        run.stderr
    );
    run.response["result"].clone()
}

/// Calls `method` with `args` (API v2) on the shared cluster; its result, or the test
/// fails with the error.
pub fn call(method: &str, args: Value) -> Value {
    call_on(&cluster_config(), method, args)
}

/// [`call`] through `config` (e.g. a private key prefix, see
/// [`crate::cluster::private_config`]).
pub fn call_on(config: &Path, method: &str, args: Value) -> Value {
    expect_result(&request(method, args), Some(config))
}

/// Calls `method` with `args` (API v2) through `config`, whatever the answer; the run,
/// its response checked against the contract ([`assert_schema`]).
pub fn answer_on(config: &Path, method: &str, args: Value) -> CpiRun {
    let run = run_cpi(&request(method, args), Some(config), &[]);
    assert_schema(&run);
    run
}

/// Calls `method` with `args` (API v2) on the shared cluster, which must refuse it; the
/// error's (type, message, ok_to_retry).
pub fn call_error(method: &str, args: Value) -> (String, String, bool) {
    let (kind, message, run) = expect_error(&request(method, args), Some(&cluster_config()));
    (kind, message, run.response["error"]["ok_to_retry"] == true)
}

/// Runs `cpi -c config ARGS` (an operator command) to its end; its output.
pub fn cpi_command(config: &Path, args: &[&str]) -> std::process::Output {
    Command::new(cpi_bin())
        .arg("-c")
        .arg(config)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("run cpi {args:?}: {e}"))
}

/// Starts `cpi` on `config` with `request` written to its stdin (then closed); stderr is
/// dropped, stdout goes to `stdout`.
pub fn spawn_cpi(request: &str, config: &Path, stdout: Stdio) -> std::process::Child {
    let mut cmd = Command::new(cpi_bin());
    cmd.arg("-c")
        .arg(config)
        .stdout(stdout)
        .stderr(Stdio::null());
    start_with_request(cmd, request)
}

/// Spawns `cmd` with `request` written to its stdin, which is then closed.
fn start_with_request(mut cmd: Command, request: &str) -> std::process::Child {
    let mut child = cmd.stdin(Stdio::piped()).spawn().expect("spawn cpi");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(request.as_bytes())
        .expect("write request");
    child
}

/// Runs `cpi` with `request` and kills it (SIGKILL) as soon as `reached().await` is true,
/// polling every few milliseconds. Returns false when the call ended (or 30 s passed)
/// before that point was reached.
pub fn kill_cpi_when<F, Fut>(request: &str, config: &Path, mut reached: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let mut child = spawn_cpi(request, config, Stdio::null());
    let deadline = Instant::now() + Duration::from_secs(30);
    let caught = runtime().block_on(async {
        loop {
            if reached().await {
                return true;
            }
            if let Ok(Some(_)) = child.try_wait() {
                return false;
            }
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    let _ = child.kill();
    let _ = child.wait();
    caught
}

/// Runs the `create_vm` `request` of `agent` and kills it (SIGKILL) once its container
/// exists on a node, as a director restart would; asserts it was caught in time.
pub fn kill_create_vm_once_its_container_exists(request: &str, config: &Path, agent: &str) {
    let caught = kill_cpi_when(request, config, || {
        let agent = agent.to_string();
        async move {
            leftovers_of_agent(&agent)
                .await
                .iter()
                .any(|l| l.starts_with("container"))
        }
    });
    assert!(caught, "create_vm finished before it could be killed");
}

/// Runs the `create_vm` `request` as the director retries it, every 2 s for up to 60 s,
/// until it succeeds; every refusal must be retriable and pass `check`. The new VM's cid.
pub fn create_vm_retrying(request: &str, config: &Path, check: impl Fn(&CpiRun)) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let run = run_cpi(request, Some(config), &[]);
        assert_schema(&run);
        if run.response["error"].is_null() {
            return run.response["result"][0].as_str().unwrap().to_string();
        }
        assert_eq!(run.response["error"]["ok_to_retry"], true, "{}", run.stdout);
        check(&run);
        assert!(Instant::now() < deadline, "still refused: {}", run.stdout);
        std::thread::sleep(Duration::from_secs(2));
    }
}
