//! `cpi` / `cpi rpc`: one BOSH CPI request on stdin, one response on stdout.

use std::io::{IsTerminal, Read, Write};
use std::panic::AssertUnwindSafe;
use std::path::PathBuf;

use futures_util::FutureExt;
use tracing::Instrument;

use crate::cloud::{self, CloudContext};
use crate::logging::Logging;
use crate::protocol::{Call, CpiError, Request, RequestError, Response};
use crate::redact::redact;

/// Largest request accepted on stdin. The largest real requests are a director's
/// `create_vm` (env with certificates and blobstore settings: tens of KiB) and metadata
/// calls; 8 MiB leaves two orders of magnitude of room and bounds the memory a request
/// can take.
pub(crate) const MAX_REQUEST_BYTES: u64 = 8 * 1024 * 1024;

/// How much of an over-limit request is still read and thrown away, so that a writer
/// that sends a finite request is not cut off with a broken pipe before it reads the
/// answer; an endless stdin (`/dev/zero`) stops here.
const DRAIN_BYTES: u64 = 64 * 1024 * 1024;

/// What `cpi` says on stderr when its stdin is a terminal.
pub(crate) const TERMINAL_HINT: &str = "cpi: reading one BOSH CPI request (a JSON object) on stdin, end it with Ctrl-D; `cpi --help` lists the operator commands (cpi nodes, cpi bosh-config, ...)";

/// Reads the request, runs it, writes the response. Returns the process exit code: 0
/// whenever a response was written (error responses included).
pub fn run(config_path: PathBuf, logging: &Logging) -> i32 {
    if std::io::stdin().is_terminal() {
        // A person ran `cpi` by hand: say what it waits for instead of hanging silently.
        eprintln!("{TERMINAL_HINT}");
    }
    let response = match read_request(std::io::stdin().lock()) {
        Ok(raw) => answer(&raw, config_path, logging),
        Err(err) => {
            let err = CpiError::from(err);
            let log = logging.take_captured();
            tracing::error!(error = %err, "rejected request");
            Response::error(&err, log)
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

/// The request text: at most [`MAX_REQUEST_BYTES`] of UTF-8. Anything else is never
/// retriable: the same request cannot succeed later.
pub(crate) fn read_request(mut stdin: impl Read) -> Result<String, RequestError> {
    let raw = crate::bounded_file::read_limited(&mut stdin, MAX_REQUEST_BYTES)
        .map_err(RequestError::Unreadable)?;
    let Some(raw) = raw else {
        let _ = std::io::copy(&mut stdin.take(DRAIN_BYTES), &mut std::io::sink());
        return Err(RequestError::TooLarge {
            limit: MAX_REQUEST_BYTES,
        });
    };
    String::from_utf8(raw).map_err(|e| RequestError::NotUtf8 {
        offset: e.utf8_error().valid_up_to(),
    })
}

/// Builds the response for one raw request text.
pub(crate) fn answer(raw: &str, config_path: PathBuf, logging: &Logging) -> Response {
    let request = match Request::parse(raw) {
        Ok(r) => r,
        Err(e) => {
            let e = CpiError::from(e);
            let log = logging.take_captured();
            tracing::error!(error = %e, "rejected request");
            return Response::error(&e, log);
        }
    };
    let span = tracing::info_span!(
        "cpi",
        method = %crate::echo::printable(&request.method),
        request_id = %crate::echo::printable(request.request_id().unwrap_or("-"))
    );
    let api = request.api_version;
    let outcome = {
        let _entered = span.enter();
        // JSON text (control characters escaped by the encoder), cut: a 4 MiB argument is
        // not logged whole.
        let arguments = redact(&serde_json::Value::Array(request.arguments.clone())).to_string();
        tracing::debug!(arguments = %crate::echo::truncate(&arguments, 16 * 1024), "request");
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
        Err(e) => Err(RequestError::NoRuntime(e).into()),
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
    let method = call.method();
    let outcome = AssertUnwindSafe(cloud::handle(&ctx, call))
        .catch_unwind()
        .await;
    let (etcd, docker) = crate::roundtrips::totals();
    tracing::debug!("round trips: etcd={etcd} docker={docker}");
    match outcome {
        Ok(result) => result,
        Err(_) => Err(RequestError::Panicked { method }.into()),
    }
}
