//! Removes secrets from JSON before it is logged: passwords, keys, tokens, credentials in
//! URLs, PEM private keys. Used for every request argument that reaches a log line.

use serde_json::{Map, Value};

/// The placeholder that replaces a secret.
pub const REDACTED: &str = "<redacted>";

/// A copy of `value` with every secret replaced by [`REDACTED`].
pub fn redact(value: &Value) -> Value {
    match value {
        Value::Object(map) => Value::Object(redact_map(map)),
        Value::Array(items) => Value::Array(items.iter().map(redact).collect()),
        Value::String(s) => Value::String(redact_str(s)),
        other => other.clone(),
    }
}

fn redact_map(map: &Map<String, Value>) -> Map<String, Value> {
    map.iter()
        .map(|(k, v)| {
            let v = if is_secret_key(k) && !v.is_null() {
                Value::String(REDACTED.into())
            } else {
                redact(v)
            };
            (k.clone(), v)
        })
        .collect()
}

/// Whether a key names a secret (case-insensitive).
pub fn is_secret_key(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    const WORDS: &[&str] = &[
        "password",
        "passwd",
        "secret",
        "private",
        "token",
        "credential",
        "cert",
        "mbus",
    ];
    WORDS.iter().any(|w| k.contains(w)) || k == "key" || k.ends_with("_key") || k.ends_with("-key")
}

/// Redacts URL passwords (`scheme://user:pw@host`) and PEM private key blocks in free text.
pub fn redact_str(s: &str) -> String {
    let mut out = redact_pem(s);
    out = redact_url_passwords(&out);
    out
}

fn redact_pem(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("-----BEGIN") {
        let head_end = rest[start..]
            .find('\n')
            .map(|i| start + i)
            .unwrap_or(rest.len());
        let header = &rest[start..head_end];
        if !header.contains("PRIVATE KEY") {
            out.push_str(&rest[..head_end]);
            rest = &rest[head_end..];
            continue;
        }
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        match rest[start..].find("-----END") {
            Some(end_rel) => {
                let end = start + end_rel;
                let after = rest[end + 8..]
                    .find("-----")
                    .map(|i| end + 8 + i + 5)
                    .unwrap_or(rest.len());
                rest = &rest[after..];
            }
            None => rest = "",
        }
    }
    out.push_str(rest);
    out
}

fn redact_url_passwords(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(scheme_end) = rest.find("://") {
        let authority_start = scheme_end + 3;
        out.push_str(&rest[..authority_start]);
        let tail = &rest[authority_start..];
        let authority_len = tail
            .find(|c: char| c == '/' || c == '?' || c == '#' || c.is_whitespace() || c == '"')
            .unwrap_or(tail.len());
        let authority = &tail[..authority_len];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.find(':') {
                    Some(colon) => {
                        out.push_str(&userinfo[..colon + 1]);
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(userinfo),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[authority_len..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn secret_keys_are_replaced() {
        let v = json!({"bosh": {"password": "pw1", "group": "g",
            "mbus": {"cert": {"ca": "C", "private_key": "K"}},
            "blobstores": [{"options": {"user": "u", "password": "pw2"}}]},
            "agent_key": "k", "keys": ["a"]});
        let r = redact(&v).to_string();
        for secret in ["pw1", "pw2", "\"K\"", "\"k\""] {
            assert!(!r.contains(secret), "{secret} leaked in {r}");
        }
        assert!(r.contains("\"group\":\"g\""));
        assert!(r.contains("\"keys\":[\"a\"]"));
    }

    #[test]
    fn url_passwords_are_replaced() {
        assert_eq!(
            redact_str("mbus https://mbus:s3cret@0.0.0.0:6868/x and nats://u:p@h"),
            "mbus https://mbus:<redacted>@0.0.0.0:6868/x and nats://u:<redacted>@h"
        );
        assert_eq!(redact_str("http://host:80/p"), "http://host:80/p");
    }

    #[test]
    fn pem_private_keys_are_replaced() {
        let s = "a -----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY----- b \
                 -----BEGIN CERTIFICATE-----\nCC\n-----END CERTIFICATE-----";
        let r = redact_str(s);
        assert!(!r.contains("AAAA"), "{r}");
        assert!(
            r.starts_with("a <redacted> b -----BEGIN CERTIFICATE-----"),
            "{r}"
        );
    }
}
