//! Removes secrets from JSON before it is logged: values under secret-looking keys (the
//! maintained lists below), credentials in URLs, PEM blocks anywhere in a string. Used for
//! every request argument that reaches a log line; the free-text part also runs over every
//! log record and every response message.

use serde_json::{Map, Value};

/// The placeholder that replaces a secret.
pub(crate) const REDACTED: &str = "<redacted>";

/// A copy of `value` with every secret replaced by [`REDACTED`].
pub(crate) fn redact(value: &Value) -> Value {
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

/// Parts of a key (lower case, separators removed) that make it secret wherever they
/// appear: `db_password`, `secretAccessKey`, `x-auth-token`, `.dockerconfigjson`.
const SECRET_PARTS: &[&str] = &[
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "credential",
    "private",
    "apikey",
    "accesskey",
    "authorization",
    "bearer",
    "cookie",
    "session",
    "jwt",
    "signature",
    "keyfile",
    "dockerconfigjson",
    "cert",
    "mbus",
];

/// Words (between `_`, `-`, `.`, spaces or camelCase humps) that make a key secret only
/// as a whole word, because as a part they occur in harmless keys (`pin` in `pinned`,
/// `pass` in `passthrough`, `sas` in `sasl_mechanism`... which a word match still
/// catches when it stands alone).
const SECRET_WORDS: &[&str] = &["auth", "pass", "pwd", "pin", "otp", "sas"];

/// Endings that make a key secret: `registry_auth`, `oauth`, `apikey`, `ssh_key`,
/// `signingkey`.
const SECRET_SUFFIXES: &[&str] = &["auth", "key", "pwd", "pass"];

/// Whether a key names a secret (case-insensitive). The lists above are the maintained
/// rule; keys that merely contain `key` elsewhere (`keys`, `key_prefix`, `monkey_count`)
/// are not secrets.
pub(crate) fn is_secret_key(key: &str) -> bool {
    let words = words(key);
    let compact: String = words.concat();
    SECRET_PARTS.iter().any(|p| compact.contains(p))
        || SECRET_SUFFIXES.iter().any(|s| compact.ends_with(s))
        || words.iter().any(|w| SECRET_WORDS.contains(&w.as_str()))
}

/// The lower-case words of a key: split at every non-alphanumeric character and at a
/// lower-to-upper case change (`registryAuth` -> `registry`, `auth`).
fn words(key: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut current = String::new();
    let mut previous_lower = false;
    for c in key.chars() {
        if !c.is_alphanumeric() {
            if !current.is_empty() {
                words.push(std::mem::take(&mut current));
            }
            previous_lower = false;
            continue;
        }
        if c.is_uppercase() && previous_lower && !current.is_empty() {
            words.push(std::mem::take(&mut current));
        }
        previous_lower = c.is_lowercase() || c.is_numeric();
        current.extend(c.to_lowercase());
    }
    if !current.is_empty() {
        words.push(current);
    }
    words
}

/// Redacts URL credentials (`scheme://user:pw@host`, `scheme://token@host`) and every PEM
/// block (keys and certificates alike) anywhere in free text.
pub(crate) fn redact_str(s: &str) -> String {
    let mut out = redact_pem(s);
    out = redact_url_passwords(&out);
    out
}

fn redact_pem(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(start) = rest.find("-----BEGIN") {
        out.push_str(&rest[..start]);
        out.push_str(REDACTED);
        let block = &rest[start..];
        rest = match block.find("-----END") {
            Some(end) => {
                let after_end = end + "-----END".len();
                match block[after_end..].find("-----") {
                    Some(close) => &block[after_end + close + "-----".len()..],
                    None => "",
                }
            }
            None => "",
        };
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
            .find(|c: char| {
                matches!(c, '/' | '?' | '#' | '"' | '\\' | '\'' | '<' | '>') || c.is_whitespace()
            })
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
                    // A lone userinfo is a token more often than a user name.
                    None => out.push_str(REDACTED),
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
        assert_eq!(
            redact_str("\"https://ghp_TOKEN@host/r\""),
            "\"https://<redacted>@host/r\""
        );
        assert_eq!(redact_str("http://host:80/p"), "http://host:80/p");
    }

    #[test]
    fn pem_blocks_are_replaced_anywhere() {
        let s = "a -----BEGIN EC PRIVATE KEY-----\nAAAA\n-----END EC PRIVATE KEY----- b \
                 -----BEGIN CERTIFICATE-----\\nCC\\n-----END CERTIFICATE-----c \
                 -----BEGIN RSA PRIVATE KEY-----\nDDDD";
        let r = redact_str(s);
        assert_eq!(r, "a <redacted> b <redacted>c <redacted>");
    }

    #[test]
    fn the_maintained_list_of_secret_keys() {
        for key in [
            "auth",
            "registry_auth",
            "RegistryAuth",
            "X-Registry-Auth",
            "pass",
            "passphrase",
            "pwd",
            "apikey",
            "api_key",
            "authorization",
            "Authorization",
            "bearer",
            "bearer_token",
            "cookie",
            "session",
            "session_id",
            "jwt",
            "sas",
            "sas_token",
            "signature",
            "otp",
            "pin",
            "keyfile",
            "dockerconfigjson",
            ".dockerconfigjson",
            "token",
            "secret",
            "client_secret",
            "secretAccessKey",
            "secret_access_key",
            "access_key_id",
            "password",
            "db-password",
            "private_key",
            "privateKey",
            "credential",
            "credentials",
            "ssh_key",
            "signingkey",
            "key",
            "ca_cert",
            "mbus",
        ] {
            assert!(is_secret_key(key), "{key} is a secret");
        }
        for key in [
            "keys",
            "key_prefix",
            "group",
            "name",
            "node",
            "ports",
            "restart_policy",
            "ip",
            "disk_cids",
            "pinned",
            "passthrough_mode",
            "user",
            "director",
            "deployment",
            "authorized_keys",
        ] {
            assert!(!is_secret_key(key), "{key} is not a secret");
        }
    }
}
