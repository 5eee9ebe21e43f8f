//! Serde's error texts in the words of whoever wrote the JSON: the CPI's requests and its
//! configuration are written by BOSH operators, not Rust programmers.

/// A serde error text in plain words: the Rust type names serde speaks of (`u64`,
/// `a sequence`, `struct NetworkSpec`, `a map`) become what a JSON writer knows (a whole
/// number, an array, an object), so a BOSH operator can read what the request got wrong.
/// Texts of other shapes come back unchanged.
pub(crate) fn plain(message: &str) -> String {
    for prefix in ["invalid type: ", "invalid value: "] {
        if let Some(rest) = message.strip_prefix(prefix)
            && let Some((got, expected)) = rest.rsplit_once(", expected ")
        {
            return format!(
                "expected {}, got {}",
                plain_expected(expected),
                plain_got(got)
            );
        }
    }
    if let Some(field) = message
        .strip_prefix("missing field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("the key '{field}' is missing");
    }
    if let Some(field) = message
        .strip_prefix("duplicate field `")
        .and_then(|r| r.strip_suffix('`'))
    {
        return format!("the key '{field}' is given twice");
    }
    message.to_string()
}

/// serde's "expected ..." in JSON words.
fn plain_expected(expected: &str) -> String {
    let word = match expected {
        "u8" | "u16" | "u32" | "u64" | "u128" | "usize" => "a whole number (0 or more)",
        "i8" | "i16" | "i32" | "i64" | "i128" | "isize" => "a whole number",
        "f32" | "f64" => "a number",
        "a sequence" => "an array",
        "a map" => "an object",
        "a borrowed string" => "a string",
        "a boolean" => "true or false",
        "unit" => "null",
        "char" | "a character" => "a single character",
        other if other.starts_with("struct ") => "an object",
        other if other.starts_with("tuple struct ") || other.starts_with("a tuple") => "an array",
        other => return other.to_string(),
    };
    word.to_string()
}

/// serde's description of the value it got, in JSON words.
fn plain_got(got: &str) -> String {
    let quoted = |prefix: &str| {
        got.strip_prefix(prefix)
            .and_then(|r| r.strip_prefix('`'))
            .and_then(|r| r.strip_suffix('`'))
            .map(str::to_string)
    };
    if let Some(n) = quoted("integer ").or_else(|| quoted("floating point ")) {
        return format!("the number {n}");
    }
    if let Some(b) = quoted("boolean ") {
        return b;
    }
    if let Some(text) = got.strip_prefix("string ") {
        return format!("the string {text}");
    }
    match got {
        "map" => "an object".into(),
        "sequence" => "an array".into(),
        "unit value" | "null" => "null".into(),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_type_names_become_plain_words() {
        assert_eq!(
            plain(r#"invalid type: string "x", expected u64"#),
            r#"expected a whole number (0 or more), got the string "x""#
        );
        assert_eq!(
            plain("invalid type: integer `5`, expected struct NetworkSpec"),
            "expected an object, got the number 5"
        );
        assert_eq!(
            plain("invalid type: sequence, expected a map"),
            "expected an object, got an array"
        );
        assert_eq!(
            plain("invalid type: map, expected a sequence"),
            "expected an array, got an object"
        );
        assert_eq!(
            plain("invalid value: integer `-1`, expected u64"),
            "expected a whole number (0 or more), got the number -1"
        );
        assert_eq!(
            plain("invalid type: floating point `1.5`, expected i64"),
            "expected a whole number, got the number 1.5"
        );
        assert_eq!(
            plain("invalid type: boolean `true`, expected f64"),
            "expected a number, got true"
        );
        assert_eq!(plain("missing field `cpu`"), "the key 'cpu' is missing");
        assert_eq!(
            plain("'10.1.2.300' is not an IPv4 address"),
            "'10.1.2.300' is not an IPv4 address"
        );
        // A value that itself contains serde's words is not mistaken for them.
        assert_eq!(
            plain(r#"invalid type: string "a, expected u8", expected a map"#),
            r#"expected an object, got the string "a, expected u8""#
        );
    }
}
