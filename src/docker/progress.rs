//! Progress of a long transfer to several nodes (a stemcell import of hundreds of MiB):
//! bytes each node took and the rate, reported every few seconds, so the log shows the
//! import moving (and which node lags) between "importing" and "done".

use std::time::{Duration, Instant};

/// How often progress is reported.
pub(crate) const EVERY: Duration = Duration::from_secs(5);

/// Bytes sent per node since the start, and when progress was last reported.
#[derive(Debug)]
pub(crate) struct Progress {
    started: Instant,
    last_report: Instant,
    sent: Vec<u64>,
}

impl Progress {
    /// A transfer to `nodes` nodes starting at `now`.
    pub(crate) fn new(nodes: usize, now: Instant) -> Progress {
        Progress {
            started: now,
            last_report: now,
            sent: vec![0; nodes],
        }
    }

    /// Counts `bytes` taken by node `index`.
    pub(crate) fn sent(&mut self, index: usize, bytes: usize) {
        if let Some(s) = self.sent.get_mut(index) {
            *s += bytes as u64;
        }
    }

    /// Whether a report is due at `now` (and, if so, starts the next interval).
    pub(crate) fn due(&mut self, now: Instant) -> bool {
        if now.duration_since(self.last_report) >= EVERY {
            self.last_report = now;
            true
        } else {
            false
        }
    }

    /// One line for node `index`: `"312 MiB sent, 41.2 MiB/s"`.
    pub(crate) fn line(&self, index: usize, now: Instant) -> String {
        let sent = self.sent.get(index).copied().unwrap_or(0);
        let secs = now.duration_since(self.started).as_secs_f64();
        #[expect(
            clippy::cast_precision_loss,
            reason = "shown rounded to 0.1 MiB: the bits beyond f64's 52 do not show"
        )]
        let sent = sent as f64;
        let rate = if secs > 0.0 { sent / secs } else { 0.0 };
        format!("{} sent, {}/s", mib(sent), mib(rate))
    }
}

/// `bytes` in MiB with one decimal.
fn mib(bytes: f64) -> String {
    format!("{:.1} MiB", bytes / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_bytes_and_rate_per_node_every_interval() {
        let t0 = Instant::now();
        let mut p = Progress::new(2, t0);
        p.sent(0, 10 << 20);
        p.sent(1, 5 << 20);
        p.sent(7, 1); // a node index that does not exist is ignored
        assert!(!p.due(t0 + Duration::from_secs(1)));
        let t5 = t0 + EVERY;
        assert!(p.due(t5));
        assert!(!p.due(t5 + Duration::from_secs(1)));
        assert_eq!(p.line(0, t5), "10.0 MiB sent, 2.0 MiB/s");
        assert_eq!(p.line(1, t5), "5.0 MiB sent, 1.0 MiB/s");
        assert_eq!(p.line(1, t0), "5.0 MiB sent, 0.0 MiB/s");
    }
}
