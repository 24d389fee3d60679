//! Parsing user-written specs (YAML or JSON) with errors that name the field.

use serde::de::DeserializeOwned;

/// The largest spec document accepted, in bytes.
pub const MAX_SPEC_BYTES: usize = 1 << 20;

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

/// Parse a JSON value into `T`.
pub fn from_json_value<T: DeserializeOwned>(value: serde_json::Value) -> Result<T, SpecError> {
    serde_path_to_error::deserialize(value).map_err(|e| {
        let field = path_text(e.path());
        SpecError::new(field, e.into_inner().to_string())
    })
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
    for key in env.keys() {
        if key.is_empty() || key.contains('=') || key.contains('\0') {
            return Err(SpecError::new(format!("env.{key}"), "environment names must be non-empty without '=' or NUL"));
        }
        if key.starts_with("FALAK_") {
            return Err(SpecError::new(format!("env.{key}"), "names starting with FALAK_ are set by falak"));
        }
    }
    Ok(())
}
