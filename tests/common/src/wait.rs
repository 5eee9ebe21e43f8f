//! Waiting for a condition the cluster reaches on its own time (a reboot, a lease running
//! out): a bound against hangs, never a timing assertion.

use std::time::{Duration, Instant};

/// Checks `cond` every `every` until it holds (true) or `limit` has passed (false).
pub fn poll_until(limit: Duration, every: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if cond() {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(every);
    }
}

/// [`poll_until`], failing the test with `what` when `cond` does not hold within `limit`.
pub fn wait_until(what: &str, limit: Duration, every: Duration, cond: impl FnMut() -> bool) {
    assert!(
        poll_until(limit, every, cond),
        "{what}: not reached within {limit:?}"
    );
}
