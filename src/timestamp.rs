//! The moments the cluster's records keep (`created_at`, `prepared_at`, `since`): one
//! type, written one way (RFC 3339, UTC, whole seconds: `2026-11-25T00:00:00Z`), so every
//! etcd document and label spells a time alike whichever command wrote it.

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

/// A moment as the records write it. Serialized as its text, exactly as today's
/// documents hold it. A record written by hand or by another program may hold other
/// text there: it is kept as found, so reading a record and writing it back never
/// changes it (and never fails on it).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Timestamp(Moment);

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Moment {
    /// A UTC time to the second, written as the records write it.
    At(OffsetDateTime),
    /// Text that is not a time written that way, kept verbatim.
    Foreign(String),
}

impl Timestamp {
    /// Now, to the second, in UTC.
    pub(crate) fn now() -> Timestamp {
        let now = OffsetDateTime::now_utc();
        Timestamp(Moment::At(now.replace_nanosecond(0).unwrap_or(now)))
    }

    /// Reads a record's text: a time written as the records write it, else the text as
    /// found (see the type's doc).
    pub(crate) fn from_text(text: &str) -> Timestamp {
        match OffsetDateTime::parse(text, &Rfc3339) {
            Ok(at) if format(at).as_deref() == Some(text) => Timestamp(Moment::At(at)),
            _ => Timestamp(Moment::Foreign(text.to_string())),
        }
    }

    /// The time, when the text is one (not for text kept as found).
    #[cfg(test)]
    fn at(&self) -> Option<OffsetDateTime> {
        match &self.0 {
            Moment::At(at) => Some(*at),
            Moment::Foreign(_) => None,
        }
    }
}

/// The one spelling of a time in the records; `None` for a time RFC 3339 cannot write
/// (a year outside 0..=9999).
fn format(at: OffsetDateTime) -> Option<String> {
    at.format(&Rfc3339).ok()
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Moment::At(at) => f.write_str(&format(*at).ok_or(fmt::Error)?),
            Moment::Foreign(text) => f.write_str(text),
        }
    }
}

impl Serialize for Timestamp {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Timestamp {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Timestamp, D::Error> {
        let text = String::deserialize(d)?;
        Ok(Timestamp::from_text(&text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn now_is_utc_to_the_second() {
        let text = Timestamp::now().to_string();
        assert_eq!(text.len(), "2026-11-25T00:00:00Z".len(), "{text}");
        assert!(text.ends_with('Z'), "{text}");
        assert!(Timestamp::from_text(&text).at().is_some(), "{text}");
    }

    #[test]
    fn documents_read_back_unchanged() {
        for text in [
            "2026-11-25T00:00:00Z",
            "2026-11-25T00:00:00.5Z",
            "2026-11-25T01:00:00+01:00",
            "x",
            "",
        ] {
            let json = serde_json::to_string(text).unwrap();
            let t: Timestamp = serde_json::from_str(&json).unwrap();
            assert_eq!(serde_json::to_string(&t).unwrap(), json);
            assert_eq!(t.to_string(), text);
        }
    }

    #[test]
    fn rfc3339_is_a_time_other_text_is_kept() {
        assert!(Timestamp::from_text("2026-11-25T00:00:00Z").at().is_some());
        assert!(
            Timestamp::from_text("2026-11-25T00:00:00.5Z")
                .at()
                .is_some()
        );
        assert!(Timestamp::from_text("x").at().is_none());
    }
}
