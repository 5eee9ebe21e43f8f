//! `cpi` / `cpi rpc`: one BOSH CPI request on stdin, one response on stdout.

use std::io::{Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::cloud::{self, CloudContext};
use crate::logging::Logging;
use crate::protocol::call::{printable, printable_up_to};
use crate::protocol::{Call, CpiError, Request, Response};
use crate::redact::redact;

/// Largest request accepted on stdin; BOSH requests are a few KiB.
const MAX_REQUEST_BYTES: u64 = 16 * 1024 * 1024;

/// Reads the request, runs it, writes the response. Returns the process exit code: 0
/// whenever a response was written (error responses included).
pub fn run(config_path: PathBuf, logging: &Logging) -> i32 {
    let mut raw = String::new();
    let read = std::io::stdin()
        .take(MAX_REQUEST_BYTES)
        .read_to_string(&mut raw);
    let response = match read {
        Ok(_) => answer(&raw, config_path, logging),
        Err(e) => {
            let err = CpiError::cpi(format!("cannot read the request from stdin: {e}"));
            Response::error(&err, logging.take_captured())
        }
    };
    let mut stdout = std::io::stdout().lock();
    match writeln!(stdout, "{}", response.to_line()).and_then(|_| stdout.flush()) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("cannot write the response to stdout: {e}");
            1
        }
    }
}

/// Builds the response for one raw request text.
pub fn answer(raw: &str, config_path: PathBuf, logging: &Logging) -> Response {
    let request = match Request::parse(raw) {
        Ok(r) => r,
        Err(e) => {
            let log = logging.take_captured();
            tracing::error!(error = %e, "rejected request");
            return Response::error(&e, log);
        }
    };
    let span = tracing::info_span!(
        "cpi",
        method = %printable(&request.method),
        request_id = %printable(request.request_id().unwrap_or("-"))
    );
    let api = request.api_version;
    let outcome = {
        let _entered = span.enter();
        let arguments = redact(&serde_json::Value::Array(request.arguments.clone())).to_string();
        tracing::debug!(arguments = %printable_up_to(&arguments, 16 * 1024), "request");
        Call::parse(&request.method, request.arguments)
    };
    let result = match outcome {
        Ok(call) => run_call(call, config_path, request.context, logging).instrument(span.clone()),
        Err(e) => {
            let _entered = span.enter();
            let log = logging.take_captured();
            tracing::error!(error = %e, "rejected arguments");
            return Response::error(&e, log);
        }
    };
    let result = match super::runtime() {
        Ok(rt) => rt.block_on(result),
        Err(e) => Err(CpiError::cpi(format!(
            "cannot start the async runtime: {e}"
        ))),
    };
    let _entered = span.enter();
    // The response's log carries what was warned about during the call; the final
    // outcome is in the response itself and goes to stderr only.
    let log = logging.take_captured();
    match result {
        Ok(r) => {
            tracing::info!("done");
            Response::ok(r, api, log)
        }
        Err(e) => {
            tracing::error!(error = %e, retry = e.ok_to_retry, "failed");
            Response::error(&e, log)
        }
    }
}

async fn run_call(
    call: Call,
    config_path: PathBuf,
    context: serde_json::Map<String, serde_json::Value>,
    logging: &Logging,
) -> Result<crate::protocol::CallResult, CpiError> {
    let ctx = CloudContext::new(config_path, context, Some(logging));
    let method = cloud::method_name(&call);
    match AssertUnwindSafe(cloud::handle(&ctx, call))
        .catch_unwind()
        .await
    {
        Ok(result) => result,
        Err(_) => Err(CpiError::cpi(format!(
            "internal error while running {method}; see the CPI log"
        ))),
    }
}
