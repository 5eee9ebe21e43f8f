//! Structured logs on stderr (tracing), tagged with method and request_id, plus a copy of
//! warnings and errors for the response's `log` string.
//!
//! Two rules hold for every record whatever a call site logs: it is one line (control
//! characters escaped, PEM blocks and URL credentials redacted, length cut: see
//! [`safe_record`]), and libraries never log below `info`, whatever the filter asks,
//! because their debug and trace output carries request and response bodies (bollard
//! logs the agent settings archive and container specs, h2/hyper headers, etcd tokens).

use std::fmt;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tracing::{Event, Level, Metadata, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields, MakeWriter};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer, reload};

/// Environment variable that sets the log filter, winning over cpi.json's `log_level`.
pub(crate) const LOG_ENV: &str = "MOLTENCORE_LOG";

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

/// The most verbose level any library (any target outside this crate and its binary) may
/// log at, whatever `MOLTENCORE_LOG` or `log_level` ask: below it, bollard, hyper, h2,
/// tonic, tower and rustls log bodies and headers.
pub(crate) const LIBRARY_MAX_LEVEL: Level = Level::INFO;

/// The longest record written (characters after escaping); the rest is cut.
pub(crate) const MAX_RECORD_CHARS: usize = 64 * 1024;

/// Whether `target` is this crate's (the library `moltencore`, the binary `cpi`).
fn is_own_target(target: &str) -> bool {
    ["moltencore", "cpi"].iter().any(|own| {
        target
            .strip_prefix(own)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    })
}

/// The cap on library targets, applied after (and independent of) the user's filter.
fn within_library_cap(meta: &Metadata<'_>) -> bool {
    is_own_target(meta.target()) || *meta.level() <= LIBRARY_MAX_LEVEL
}

/// One formatted record made safe to write: secrets in free text redacted, every control
/// character escaped (a newline in a logged value cannot start a forged line), cut to
/// [`MAX_RECORD_CHARS`], ending in exactly one newline.
pub(crate) fn safe_record(record: &str) -> String {
    let body = record.strip_suffix('\n').unwrap_or(record);
    let redacted = crate::redact::redact_str(body);
    let mut line = crate::echo::cut(&redacted, MAX_RECORD_CHARS);
    line.push('\n');
    line
}

/// Wraps the standard formatter: the record is formatted in full, then written through
/// [`safe_record`], so no call site can forget to escape.
struct SafeFormat<F>(F);

impl<S, N, F> FormatEvent<S, N> for SafeFormat<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let mut record = String::new();
        self.0.format_event(ctx, Writer::new(&mut record), event)?;
        writer.write_str(&safe_record(&record))
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
            .event_format(SafeFormat(
                tracing_subscriber::fmt::format()
                    .with_ansi(false)
                    .with_target(false),
            ));
        let capture = tracing_subscriber::fmt::layer()
            .with_writer(captured.clone())
            .with_ansi(false)
            .event_format(SafeFormat(
                tracing_subscriber::fmt::format()
                    .with_ansi(false)
                    .with_target(false)
                    .without_time(),
            ))
            .with_filter(tracing_subscriber::filter::LevelFilter::WARN);
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(tracing_subscriber::filter::filter_fn(within_library_cap))
            .with(stderr)
            .with(capture)
            .try_init();
        Logging { reload, captured }
    }

    /// Applies the config's level unless `MOLTENCORE_LOG` is set. A bad level is reported
    /// and the current one kept.
    pub(crate) fn set_level(&self, level: &str) {
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
    pub(crate) fn take_captured(&self) -> String {
        self.captured
            .0
            .lock()
            .map(|mut v| String::from_utf8_lossy(&std::mem::take(&mut *v)).into_owned())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_stays_one_line() {
        let r =
            safe_record("2026 INFO cpi{method=has_vm\n2026 ERROR cpi{method=x}: forged}: done\n");
        assert_eq!(r.matches('\n').count(), 1, "{r}");
        assert!(r.ends_with("done\n"), "{r}");
        assert!(r.contains("has_vm\\n2026 ERROR"), "{r}");
        let r = safe_record(&"x".repeat(MAX_RECORD_CHARS * 2));
        assert!(r.len() <= MAX_RECORD_CHARS + 4, "{}", r.len());
    }

    #[test]
    fn records_carry_no_pem_or_url_password() {
        let r = safe_record(
            "body: -----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE----- nats://nats:pw@10.0.0.6:4222\n",
        );
        assert!(!r.contains("MIIB") && !r.contains("pw@"), "{r}");
    }

    #[test]
    fn libraries_are_capped_whatever_is_asked() {
        assert!(is_own_target("moltencore"));
        assert!(is_own_target("moltencore::cloud::vm"));
        assert!(is_own_target("cpi"));
        assert!(!is_own_target("moltencore_other"));
        assert!(!is_own_target("bollard::docker"));
        assert!(!is_own_target("cpinfo"));
        assert!(!is_own_target("h2::codec"));
    }
}
