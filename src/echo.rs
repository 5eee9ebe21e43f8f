//! Values from a request, a file or a node, made safe to show in an error message or a
//! log line: control characters escaped (a newline cannot start a forged log line) and
//! the length cut, so a 4 MiB argument is never echoed whole.

/// How many characters of a value an error message shows.
pub(crate) const ECHO_CHARS: usize = 64;

/// How many characters of a file path an error message shows.
pub(crate) const PATH_CHARS: usize = 256;

/// How many characters of a library's error text (which may quote a value: serde's
/// `invalid type: string "..."`) an error message shows.
pub(crate) const DETAIL_CHARS: usize = 512;

/// A library's error text safe to echo, as [`printable`] with room for its words.
pub(crate) fn printable_detail(s: &str) -> String {
    cut(s, DETAIL_CHARS)
}

/// A value safe to echo: control characters escaped, at most [`ECHO_CHARS`] characters
/// of it shown, followed by `...` when it was longer.
pub(crate) fn printable(s: &str) -> String {
    cut(s, ECHO_CHARS)
}

/// A path safe to echo (longer than a value: real paths are), as [`printable`].
pub(crate) fn printable_path(path: &std::path::Path) -> String {
    cut(&path.to_string_lossy(), PATH_CHARS)
}

/// `s` with control characters escaped, cut to `max` characters of the escaped text;
/// `...` marks a cut.
pub(crate) fn cut(s: &str, max: usize) -> String {
    let mut out = String::new();
    let mut shown = 0;
    for c in s.chars() {
        let piece = escape_char(c);
        let len = piece.as_ref().map_or(1, |p| p.chars().count());
        if shown + len > max {
            out.push_str("...");
            return out;
        }
        shown += len;
        match piece {
            Some(p) => out.push_str(&p),
            None => out.push(c),
        }
    }
    out
}

/// `s` cut to at most `max_bytes` bytes (at a character boundary), nothing escaped; a cut
/// is marked. For text already made safe line by line, such as the response's `log`.
pub(crate) fn truncate(s: &str, max_bytes: usize) -> String {
    if s.len() <= max_bytes {
        return s.to_string();
    }
    let mut end = max_bytes;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}... ({} more bytes cut)", &s[..end], s.len() - end)
}

/// The escape for one character that must not appear raw, or `None`.
fn escape_char(c: char) -> Option<String> {
    match c {
        '\n' => Some("\\n".into()),
        '\r' => Some("\\r".into()),
        '\t' => Some("\\t".into()),
        c if c.is_control() || c == '\u{2028}' || c == '\u{2029}' => {
            Some(format!("\\u{{{:x}}}", c as u32))
        }
        _ => None,
    }
}

/// `text` followed by every message of the `source` chain it does not already contain:
/// libraries hide the useful part ("connection refused", a certificate rejection) in the
/// sources of a generic error.
pub(crate) fn with_sources(
    mut text: String,
    mut source: Option<&(dyn std::error::Error + 'static)>,
) -> String {
    while let Some(s) = source {
        let more = s.to_string();
        if !text.contains(&more) {
            text.push_str(": ");
            text.push_str(&more);
        }
        source = s.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fmt;

    #[derive(Debug)]
    struct Outer(std::io::Error);
    impl fmt::Display for Outer {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            f.write_str("request failed")
        }
    }
    impl std::error::Error for Outer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn sources_are_appended_once() {
        let outer = Outer(std::io::Error::other("connection refused"));
        let source = std::error::Error::source(&outer);
        assert_eq!(
            with_sources(outer.to_string(), source),
            "request failed: connection refused"
        );
        assert_eq!(
            with_sources("connection refused".into(), source),
            "connection refused"
        );
    }

    #[test]
    fn controls_are_escaped_not_dropped() {
        assert_eq!(
            printable("a\nERROR b\r\x1b[31m\u{85}\u{2028}\0"),
            "a\\nERROR b\\r\\u{1b}[31m\\u{85}\\u{2028}\\u{0}"
        );
        assert_eq!(printable("has_vm\n2026 ERROR"), "has_vm\\n2026 ERROR");
    }

    #[test]
    fn long_values_are_cut() {
        let long = "x".repeat(4 << 20);
        let shown = printable(&long);
        assert_eq!(shown, format!("{}...", "x".repeat(ECHO_CHARS)));
        assert_eq!(printable(&"y".repeat(ECHO_CHARS)), "y".repeat(ECHO_CHARS));
        // An escape is never split by the cut.
        let s = format!("{}\n", "z".repeat(ECHO_CHARS - 1));
        assert_eq!(printable(&s), format!("{}...", "z".repeat(ECHO_CHARS - 1)));
        assert_eq!(cut("äöü", 2), "äö...");
        assert_eq!(truncate("äöü", 3), "ä... (4 more bytes cut)");
        assert_eq!(truncate("abc", 3), "abc");
    }
}
