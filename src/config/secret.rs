//! A string that must never reach a log: Debug and Display print a placeholder.

use std::fmt;

use serde::{Deserialize, Deserializer};

/// A secret value (private key, password). Formatting never reveals it; use
/// [`Secret::expose`] where the value is really needed.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        // serde's own message would quote the offending value; a secret of the wrong type
        // is still a secret.
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => Ok(Secret(s)),
            _ => Err(serde::de::Error::custom(
                "must be a string (value not shown: it is a secret)",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_mistyped_secret_is_not_echoed() {
        let e = serde_json::from_str::<Secret>("12345678")
            .unwrap_err()
            .to_string();
        assert!(!e.contains("12345678"), "{e}");
        assert!(e.contains("must be a string"), "{e}");
    }

    #[test]
    fn never_formats_the_value() {
        let s = Secret::new("hunter2");
        assert_eq!(format!("{s} {s:?}"), "<redacted> <redacted>");
        assert_eq!(s.expose(), "hunter2");
    }
}
