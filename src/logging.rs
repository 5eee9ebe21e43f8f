//! Structured logs on stderr (tracing), tagged with method and request_id, plus a copy of
//! warnings and errors for the response's `log` string.

use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// Environment variable that sets the log filter, winning over cpi.json's `log_level`.
pub const LOG_ENV: &str = "MOLTENCORE_LOG";

/// The filter for a plain level (`debug`) applies to this crate only; libraries stay at
/// `warn`, because their debug output (HTTP/2 headers, etcd auth tokens) may carry secrets.
/// A full directive (containing `=` or `,`) is taken as written.
fn directive(level: &str) -> String {
    if level.contains('=') || level.contains(',') {
        level.to_string()
    } else {
        format!("warn,moltencore={level},cpi={level}")
    }
}

/// Handle to the installed logging: change the level once the config is read, and take
/// the captured lines for the response.
pub struct Logging {
    reload: reload::Handle<EnvFilter, tracing_subscriber::Registry>,
    captured: Captured,
}

/// Lines captured for the response `log` (warnings and errors only).
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

impl Logging {
    /// Installs the global subscriber. The filter comes from `MOLTENCORE_LOG`, else `info`.
    pub fn init() -> Logging {
        let filter = std::env::var(LOG_ENV)
            .ok()
            .and_then(|level| EnvFilter::try_new(directive(&level)).ok())
            .unwrap_or_else(|| EnvFilter::new(directive("info")));
        let (filter, reload) = reload::Layer::new(filter);
        let captured = Captured::default();
        let stderr = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_ansi(false)
            .with_target(false);
        let capture = tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false)
            .with_target(false)
            .without_time()
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(stderr)
            .with(capture)
            .try_init();
        Logging { reload, captured }
    }

    /// Applies the config's level unless `MOLTENCORE_LOG` is set. A bad level is reported
    /// and the current one kept.
    pub fn set_level(&self, level: &str) {
        if std::env::var_os(LOG_ENV).is_some() {
            return;
        }
        match EnvFilter::try_new(directive(level)) {
            Ok(f) => {
                let _ = self.reload.modify(|current| *current = f);
            }
            Err(e) => tracing::warn!("log_level '{level}' is not a valid filter: {e}"),
        }
    }

    /// The captured warning and error lines, for the response's `log`.
    pub fn take_captured(&self) -> String {
        self.captured
            .0
            .lock()
            .map(|mut v| String::from_utf8_lossy(&std::mem::take(&mut *v)).into_owned())
            .unwrap_or_default()
    }
}
