//! The names this layer puts into Docker API paths, checked once more before every request
//! that carries one: a Docker object name (container, volume, network) is Docker's own
//! grammar `[a-zA-Z0-9][a-zA-Z0-9_.-]*`, an image reference the grammar of Docker's
//! reference package. Nothing else (`/`, `..`, `?`, `#`, `%`, control characters) can reach
//! a path, whatever a caller passes.

use std::sync::OnceLock;

use regex::Regex;

use super::error::DockerError;
use crate::echo::printable;

/// Longest object name or image reference accepted.
const MAX_LEN: usize = 255;

/// Checks a container, volume or network name (or a container id).
pub(crate) fn object(name: &str) -> Result<&str, DockerError> {
    let mut chars = name.chars();
    let ok = name.len() <= MAX_LEN
        && chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'));
    if ok {
        Ok(name)
    } else {
        Err(DockerError::InvalidName {
            shown: printable(name),
            max: MAX_LEN,
        })
    }
}

/// Checks an image reference: `[host[:port]/]path[:tag][@algorithm:hex]`.
pub(crate) fn image(reference: &str) -> Result<&str, DockerError> {
    static GRAMMAR: OnceLock<Regex> = OnceLock::new();
    let grammar = GRAMMAR.get_or_init(|| {
        let component = r"[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*";
        let domain_part = r"(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])";
        let host = format!(r"(?:{domain_part}(?:\.{domain_part})*|\[[a-fA-F0-9:]+\])");
        let name = format!(r"(?:{host}(?::[0-9]+)?/)?{component}(?:/{component})*");
        let tag = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}";
        let digest = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9A-Fa-f]{32,}";
        Regex::new(&format!(r"\A{name}(?::{tag})?(?:@{digest})?\z")).expect("valid grammar")
    });
    let name_len = reference
        .split_once('@')
        .map_or(reference, |(n, _)| n)
        .len();
    if name_len <= MAX_LEN && grammar.is_match(reference) {
        Ok(reference)
    } else {
        Err(DockerError::InvalidReference {
            shown: printable(reference),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn object_names() {
        for ok in ["vm-0f0e", "disk-1", "bosh", "a.b_c-d", "0123abcdef"] {
            assert!(object(ok).is_ok(), "{ok}");
        }
        let long = "a".repeat(256);
        for bad in [
            "",
            "-x",
            ".x",
            "x/../y",
            "x?force=true",
            "x#y",
            "x%2e",
            "x\0",
            "x\n",
            "x y",
            long.as_str(),
        ] {
            assert!(object(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn image_references() {
        let digest = format!("sha256:{}", "a".repeat(64));
        for ok in [
            "busybox".to_string(),
            "moltencore-stemcell:sc-0f0e".to_string(),
            "bosh/stemcell:1.2".to_string(),
            "registry.example.org:5000/a/b_c:tag".to_string(),
            format!("bosh/stemcell@{digest}"),
            format!("bosh/stemcell:1@{digest}"),
            "[::1]:5000/x".to_string(),
        ] {
            assert!(image(&ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "x/../../containers/vm-1",
            "x:../y",
            "UPPER",
            "x?force=true",
            "x#y",
            "x%2e%2e",
            "x\n",
            "x:tag\n",
            "x@sha256:short",
            "/x",
            "x/",
        ] {
            assert!(image(bad).is_err(), "{bad:?}");
        }
    }
}
