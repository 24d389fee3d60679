//! Parsing user-written specs (YAML or JSON) with errors that name the field.
//!
//! Specs come from users and API clients, so every parser here bounds what a document may cost
//! before it is turned into values (`docs/design/hostile-input.md`):
//!
//! - size: [`MAX_SPEC_BYTES`] of text;
//! - nesting: [`MAX_SPEC_DEPTH`] levels of maps and sequences;
//! - count: [`MAX_SPEC_VALUES`] values, and [`MAX_SPEC_EXPANDED_BYTES`] of scalar text, both
//!   counted with every use of a YAML alias expanded, so an alias bomb ("billion laughs") is
//!   refused after a bounded amount of work instead of exhausting memory;
//! - flow collections: at most [`max_flow_openers`] `[`/`{` characters, because the YAML
//!   parser spends time proportional to the flow nesting depth on every token (a document of
//!   500,000 `[` takes minutes to reject otherwise).
//!
//! A YAML document is scanned once for these limits (a pass that builds nothing) and only then
//! deserialized into its type.

use std::fmt;

use serde::de::{self, DeserializeOwned, DeserializeSeed, Visitor};

/// The largest spec document accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;
/// The deepest nesting of maps and sequences a spec may have (the documents themselves need
/// five or so; YAML and JSON parsers stop at 128 on their own).
pub const MAX_SPEC_DEPTH: usize = 32;
/// The most values (scalars, maps and sequences) a spec may hold, counting each use of a YAML
/// alias again.
pub const MAX_SPEC_VALUES: usize = 100_000;
/// The most scalar text a spec may hold once YAML aliases are expanded, in bytes.
pub const MAX_SPEC_EXPANDED_BYTES: usize = 2 * MAX_SPEC_BYTES;
/// The YAML parser's work grows with (flow nesting depth) x (tokens). `[` and `{` are counted
/// anywhere in the text (even inside quotes: the count is taken before parsing), and their
/// count times the document's length must stay under this budget.
const FLOW_BUDGET: usize = 1 << 26;
/// Never refuse a document for fewer flow openers than this, whatever its length.
const MIN_FLOW_OPENERS: usize = 64;

/// How many `[` and `{` characters a YAML spec of `len` bytes may contain: generous for
/// ordinary specs (65,536 at 1 KiB, 1,024 at 64 KiB), 64 for a 1 MiB document.
pub fn max_flow_openers(len: usize) -> usize {
    (FLOW_BUDGET / len.max(1)).max(MIN_FLOW_OPENERS)
}

/// A spec that could not be accepted. `field` is a dotted path (`resources.cpu`), empty when the
/// whole document is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}{message}", if field.is_empty() { String::new() } else { format!("field `{field}`: ") })]
pub struct SpecError {
    pub field: String,
    pub message: String,
}

impl SpecError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError { field: field.into(), message: message.into() }
    }
}

/// Parse a YAML document (JSON is accepted too: it is YAML) into `T`.
pub fn from_yaml<T: DeserializeOwned>(text: &str) -> Result<T, SpecError> {
    if text.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new("", format!("spec is {} bytes; the limit is {MAX_SPEC_BYTES}", text.len())));
    }
    if text.trim().is_empty() {
        return Err(SpecError::new("", "spec is empty"));
    }
    let openers = text.bytes().filter(|b| matches!(b, b'[' | b'{')).count();
    let max_openers = max_flow_openers(text.len());
    if openers > max_openers {
        return Err(SpecError::new(
            "",
            format!(
                "spec has {openers} `[`/`{{` characters in {} bytes; the limit at this size is {max_openers} \
                 (write deep or long lists in block style, or send JSON)",
                text.len()
            ),
        ));
    }
    // The bounded scan first: it refuses alias bombs and deep nesting before anything is built.
    // Any error of the scan is final: the typed pass below may accept what the scan's untyped
    // reading refuses (`!!int x` read as a string), and must never get further than the scan.
    let mut budget = Budget::default();
    let scanned = Scan { budget: &mut budget, depth: 0 }.deserialize(yaml_serde::Deserializer::from_str(text));
    if let Err(error) = scanned {
        return Err(budget.exceeded.take().unwrap_or_else(|| SpecError::new("", error.to_string())));
    }
    let de = yaml_serde::Deserializer::from_str(text);
    serde_path_to_error::deserialize(de).map_err(|e| {
        let field = path_text(e.path());
        let message = e.into_inner().to_string();
        // yaml_serde already prefixes nested errors with the path; keep it once.
        let message = match message.split_once(": ") {
            Some((head, rest)) if !head.is_empty() && field.starts_with(head) => rest.to_owned(),
            _ => message,
        };
        SpecError::new(field, message)
    })
}

/// Parse a JSON document into `T`, refusing it before parsing if it is larger than
/// [`MAX_SPEC_BYTES`]. serde_json stops at 128 levels of nesting by itself; the rest of the
/// limits are [`from_json_value`]'s.
pub fn from_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, SpecError> {
    if bytes.len() > MAX_SPEC_BYTES {
        return Err(SpecError::new("", format!("spec is {} bytes; the limit is {MAX_SPEC_BYTES}", bytes.len())));
    }
    let value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| SpecError::new("", format!("spec is not valid JSON: {e}")))?;
    from_json_value(value)
}

/// Parse a JSON value into `T`, refusing values deeper than [`MAX_SPEC_DEPTH`], with more than
/// [`MAX_SPEC_VALUES`] values or more than [`MAX_SPEC_EXPANDED_BYTES`] of strings.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, SpecError> {
    check_json_value(&value)?;
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = path_text(e.path());
        SpecError::new(field, e.into_inner().to_string())
    })
}

/// Walks `value` without recursion (a value built in code may be deeper than any parser
/// allows) and charges it to a [`Budget`].
fn check_json_value(value: &serde_json::Value) -> Result<(), SpecError> {
    let mut budget = Budget::default();
    let mut stack = vec![(value, 0usize)];
    while let Some((value, depth)) = stack.pop() {
        let text = match value {
            serde_json::Value::String(s) => s.len(),
            _ => 0,
        };
        budget.charge(text)?;
        match value {
            serde_json::Value::Array(items) => {
                budget.enter(depth)?;
                stack.extend(items.iter().map(|v| (v, depth + 1)));
            }
            serde_json::Value::Object(map) => {
                budget.enter(depth)?;
                for (key, v) in map {
                    budget.charge(key.len())?;
                    stack.push((v, depth + 1));
                }
            }
            _ => {}
        }
    }
    Ok(())
}

/// What a document has cost so far, and the first limit it broke.
#[derive(Default)]
struct Budget {
    values: usize,
    text_bytes: usize,
    exceeded: Option<SpecError>,
}

impl Budget {
    /// Count one value carrying `text` bytes of scalar text.
    fn charge(&mut self, text: usize) -> Result<(), SpecError> {
        self.values += 1;
        self.text_bytes = self.text_bytes.saturating_add(text);
        if self.values > MAX_SPEC_VALUES {
            return Err(SpecError::new(
                "",
                format!("spec holds more than {MAX_SPEC_VALUES} values (each use of a YAML alias counts again)"),
            ));
        }
        if self.text_bytes > MAX_SPEC_EXPANDED_BYTES {
            return Err(SpecError::new(
                "",
                format!(
                    "spec text expands to more than {MAX_SPEC_EXPANDED_BYTES} bytes (each use of a YAML alias \
                     counts again)"
                ),
            ));
        }
        Ok(())
    }

    /// Enter a map or sequence at `depth` (0 for the document itself).
    fn enter(&mut self, depth: usize) -> Result<(), SpecError> {
        if depth >= MAX_SPEC_DEPTH {
            return Err(SpecError::new("", format!("spec nests deeper than the limit of {MAX_SPEC_DEPTH} levels")));
        }
        Ok(())
    }

    /// The scan's error for a broken limit, remembered so the caller reports it as it is.
    fn fail<E: de::Error>(&mut self, error: SpecError) -> E {
        let message = error.to_string();
        self.exceeded = Some(error);
        E::custom(message)
    }
}

/// A pass over a YAML document that builds nothing and charges every value, with every alias
/// expanded, to a [`Budget`]; it stops at the first limit broken.
struct Scan<'a> {
    budget: &'a mut Budget,
    depth: usize,
}

impl Scan<'_> {
    fn scalar<E: de::Error>(self, text: usize) -> Result<(), E> {
        self.budget.charge(text).map_err(|e| self.budget.fail(e))
    }

    fn nested(&mut self) -> Scan<'_> {
        Scan { budget: self.budget, depth: self.depth + 1 }
    }

    fn enter<E: de::Error>(&mut self) -> Result<(), E> {
        let depth = self.depth;
        self.budget.charge(0).and_then(|()| self.budget.enter(depth)).map_err(|e| self.budget.fail(e))
    }
}

impl<'de> DeserializeSeed<'de> for Scan<'_> {
    type Value = ();

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Scan<'_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("any YAML value")
    }

    fn visit_bool<E: de::Error>(self, _: bool) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_i64<E: de::Error>(self, _: i64) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_i128<E: de::Error>(self, _: i128) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_u64<E: de::Error>(self, _: u64) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_u128<E: de::Error>(self, _: u128) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_f64<E: de::Error>(self, _: f64) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<(), E> {
        self.scalar(v.len())
    }

    fn visit_bytes<E: de::Error>(self, v: &[u8]) -> Result<(), E> {
        self.scalar(v.len())
    }

    fn visit_unit<E: de::Error>(self) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_none<E: de::Error>(self) -> Result<(), E> {
        self.scalar(0)
    }

    fn visit_some<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_newtype_struct<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<(), D::Error> {
        deserializer.deserialize_any(self)
    }

    fn visit_seq<A: de::SeqAccess<'de>>(mut self, mut seq: A) -> Result<(), A::Error> {
        self.enter()?;
        while seq.next_element_seed(self.nested())?.is_some() {}
        Ok(())
    }

    fn visit_map<A: de::MapAccess<'de>>(mut self, mut map: A) -> Result<(), A::Error> {
        self.enter()?;
        while map.next_key_seed(self.nested())?.is_some() {
            map.next_value_seed(self.nested())?;
        }
        Ok(())
    }

    /// A tagged value (`!name value`): the tag is the variant, the value its content.
    fn visit_enum<A: de::EnumAccess<'de>>(mut self, data: A) -> Result<(), A::Error> {
        use de::VariantAccess;
        self.enter()?;
        let ((), variant) = data.variant_seed(self.nested())?;
        variant.newtype_variant_seed(self.nested())
    }
}

fn path_text(path: &serde_path_to_error::Path) -> String {
    let text = path.to_string();
    if text == "." { String::new() } else { text }
}

/// Names of capsules, services and functions: lowercase letters, digits and `-`, 1 to 63
/// characters, starting with a letter or digit (they appear in URLs and file names).
pub fn validate_name(field: &str, name: &str) -> Result<(), SpecError> {
    let ok = !name.is_empty()
        && name.len() <= 63
        && name.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(SpecError::new(
            field,
            format!("{name:?} is not a valid name: use 1-63 lowercase letters, digits and '-', not starting with '-'"),
        ))
    }
}

/// Environment variable names a user may set: non-empty, without `=` or NUL, and not
/// `FALAK_*` (falak sets those).
pub fn validate_env(env: &std::collections::BTreeMap<String, String>) -> Result<(), SpecError> {
    validate_env_names(env.keys())
}

/// [`validate_env`] on names alone.
pub fn validate_env_names<'a>(names: impl IntoIterator<Item = &'a String>) -> Result<(), SpecError> {
    for key in names {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError::new(format!("env.{key}"), "environment names must be non-empty without '=' or NUL"));
        }
        if key.starts_with("FALAK_") {
            return Err(SpecError::new(format!("env.{key}"), "names starting with FALAK_ are set by falak"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    type Doc = BTreeMap<String, serde_json::Value>;

    fn yaml_error(text: &str) -> String {
        from_yaml::<Doc>(text).expect_err("refused").to_string()
    }

    #[test]
    fn a_document_over_the_size_limit_is_refused_before_parsing() {
        let text = format!("a: {}", "x".repeat(MAX_SPEC_BYTES));
        assert_eq!(yaml_error(&text), format!("spec is {} bytes; the limit is {MAX_SPEC_BYTES}", text.len()));
        let json = format!("{{\"a\": \"{}\"}}", "x".repeat(MAX_SPEC_BYTES));
        let e = from_json::<Doc>(json.as_bytes()).expect_err("refused").to_string();
        assert_eq!(e, format!("spec is {} bytes; the limit is {MAX_SPEC_BYTES}", json.len()));
    }

    #[test]
    fn nesting_deeper_than_the_limit_is_refused() {
        let nested = |depth: usize| format!("a: {}1{}", "[".repeat(depth), "]".repeat(depth));
        // The document's own map is the first level.
        assert!(from_yaml::<Doc>(&nested(MAX_SPEC_DEPTH - 1)).is_ok());
        assert_eq!(yaml_error(&nested(MAX_SPEC_DEPTH)), "spec nests deeper than the limit of 32 levels");
        let mut value = serde_json::json!(1);
        for _ in 0..=MAX_SPEC_DEPTH {
            value = serde_json::json!([value]);
        }
        let e = from_json_value::<serde_json::Value>(value).expect_err("refused").to_string();
        assert_eq!(e, "spec nests deeper than the limit of 32 levels");
    }

    #[test]
    fn an_alias_bomb_is_refused_by_the_value_count() {
        // Ten levels of ten aliases each: 10^10 values once expanded, in 600 bytes.
        let mut text = String::from("l0: &l0 [x, x, x, x, x, x, x, x, x, x]\n");
        for i in 1..10 {
            let p = format!("*l{}", i - 1);
            text.push_str(&format!("l{i}: &l{i} [{}]\n", [p.as_str(); 10].join(", ")));
        }
        assert_eq!(yaml_error(&text), "spec holds more than 100000 values (each use of a YAML alias counts again)");
    }

    #[test]
    fn aliases_of_a_long_string_are_refused_by_the_expanded_text_size() {
        let text = format!("a: &s {}\nb: [{}]\n", "x".repeat(100_000), ["*s"; 30].join(", "));
        assert_eq!(
            yaml_error(&text),
            "spec text expands to more than 2097152 bytes (each use of a YAML alias counts again)"
        );
        // A few aliases are fine.
        let text = format!("a: &s {}\nb: [{}]\n", "x".repeat(100_000), ["*s"; 3].join(", "));
        assert_eq!(from_yaml::<Doc>(&text).expect("parses")["b"].as_array().map(Vec::len), Some(3));
    }

    #[test]
    fn too_many_flow_openers_are_refused_before_parsing() {
        // Unbounded, this document takes the YAML parser seconds: its work grows with depth x tokens.
        let text = format!("a: {}{}", "[".repeat(100_000), "]".repeat(100_000));
        assert_eq!(
            yaml_error(&text),
            "spec has 100000 `[`/`{` characters in 200003 bytes; the limit at this size is 335 (write deep or \
             long lists in block style, or send JSON)"
        );
        assert_eq!(max_flow_openers(1 << 10), 65_536);
        assert_eq!(max_flow_openers(MAX_SPEC_BYTES), 64);
    }

    #[test]
    fn json_values_are_counted() {
        let value = serde_json::Value::Array(vec![serde_json::json!(1); MAX_SPEC_VALUES]);
        let e = from_json_value::<serde_json::Value>(value).expect_err("refused").to_string();
        assert_eq!(e, "spec holds more than 100000 values (each use of a YAML alias counts again)");
        let e = from_json::<Doc>(b"{\"a\": [1,").expect_err("refused").to_string();
        assert!(e.starts_with("spec is not valid JSON: "), "{e}");
        assert_eq!(from_json::<Doc>(br#"{"a": [1, {"b": "c"}]}"#).expect("parses")["a"][1]["b"], "c");
    }

    #[test]
    fn errors_of_the_scan_are_final() {
        // The untyped scan refuses `!!int x`; a typed pass would have read it as a string.
        let e = from_yaml::<BTreeMap<String, String>>("a: !!int x").expect_err("refused").to_string();
        assert!(e.contains("expected an integer"), "{e}");
    }
}
