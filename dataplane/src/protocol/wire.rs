//! Small wire helpers every dialect's decoder and encoder share: lenient token counts, raw-JSON
//! checks, compact argument text, and SSE event writing that never emits half a value.

use super::shape::TranslateError;
use serde::{Deserialize, Deserializer, Serialize};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::collections::BTreeMap;

/// Reads a token count leniently: any non-negative number (a float is truncated) or null.
pub fn count<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    let n: Option<serde_json::Number> = Option::deserialize(d)?;
    Ok(n.and_then(|n| {
        n.as_u64().or_else(|| {
            n.as_f64()
                .filter(|f| f.is_finite() && *f >= 0.0)
                .map(|f| f as u64)
        })
    }))
}

/// The value, unless it is JSON `null`.
pub fn present(raw: &RawValue) -> Option<&RawValue> {
    (raw.get().trim() != "null").then_some(raw)
}

/// A JSON object's top-level entries, values kept raw.
pub fn top_level(body: &[u8]) -> Result<BTreeMap<String, &RawValue>, TranslateError> {
    serde_json::from_slice(body).map_err(|e| {
        TranslateError::new(format!(
            "We could not parse the JSON body of your request: {e}"
        ))
    })
}

/// Parses an optional field (`null` → `None`), naming it in the error.
pub fn opt_field<'a, T: Deserialize<'a>>(
    raw: &'a RawValue,
    name: &str,
) -> Result<Option<T>, TranslateError> {
    serde_json::from_str::<Option<T>>(raw.get())
        .map_err(|e| TranslateError::new(format!("Invalid '{name}': {e}")))
}

/// Records a dropped field name once.
pub fn note(dropped: &mut Vec<String>, name: &str) {
    if !dropped.iter().any(|d| d == name) {
        dropped.push(name.to_string());
    }
}

/// Removes insignificant whitespace from valid JSON, keeping every other byte (key order,
/// number spelling, escapes) as it was.
pub fn compact_json(raw: &str) -> String {
    let mut out = String::with_capacity(raw.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in raw.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if c == '"' {
            in_string = true;
            out.push(c);
        } else if !matches!(c, ' ' | '\n' | '\r' | '\t') {
            out.push(c);
        }
    }
    out
}

/// An OpenAI `arguments` string as an Anthropic `input` object: `""` is `{}`, anything that is
/// not a JSON object is an error (`what` names the source in the message).
pub fn tool_input(arguments: Option<&str>, what: &str) -> Result<Box<RawValue>, TranslateError> {
    let s = arguments.unwrap_or("").trim();
    let s = if s.is_empty() { "{}" } else { s };
    let raw: Box<RawValue> = serde_json::from_str(s)
        .map_err(|e| TranslateError::new(format!("{what}: arguments are not valid JSON: {e}")))?;
    if !raw.get().trim_start().starts_with('{') {
        return Err(TranslateError::new(format!(
            "{what}: arguments must be a JSON object"
        )));
    }
    Ok(raw)
}

/// Appends `value` as JSON; on the (impossible for these types) serialization error, appends
/// nothing rather than half a value.
pub fn put_json<T: Serialize + ?Sized>(out: &mut Vec<u8>, value: &T) {
    let len = out.len();
    if serde_json::to_writer(&mut *out, value).is_err() {
        out.truncate(len);
    }
}

/// `event: <name>\ndata: <json>\n\n`.
pub fn put_event<T: Serialize>(out: &mut Vec<u8>, name: &str, data: &T) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    put_json(out, data);
    out.extend_from_slice(b"\n\n");
}

/// `data: <json>\n\n`.
pub fn put_data<T: Serialize>(out: &mut Vec<u8>, data: &T) {
    out.extend_from_slice(b"data: ");
    put_json(out, data);
    out.extend_from_slice(b"\n\n");
}

pub fn to_body<T: Serialize>(value: &T) -> Result<Vec<u8>, TranslateError> {
    serde_json::to_vec(value)
        .map_err(|e| TranslateError::new(format!("could not encode the translated body: {e}")))
}

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub fn non_empty<'s>(s: &'s Option<Cow<'_, str>>) -> Option<&'s str> {
    s.as_deref().filter(|s| !s.is_empty())
}

/// `{}`.
#[derive(Serialize)]
pub struct EmptyObject {}

#[derive(Deserialize)]
struct ErrorEnvelopeIn<'a> {
    #[serde(default, borrow)]
    error: Option<&'a RawValue>,
    #[serde(default)]
    message: Option<String>,
}

#[derive(Deserialize)]
struct ErrorObjectIn {
    #[serde(default)]
    message: Option<String>,
    /// Not used, but read: an object whose `type` is not a string is no error object, and its
    /// message is then looked for elsewhere, as it always was.
    #[serde(rename = "type", default)]
    _kind: Option<String>,
}

/// The message of an error body in any dialect: `{"error": {"message": …}}` (OpenAI and
/// Anthropic), a bare `{"error": "text"}`, or a top-level `{"message": …}`. `None` when it has
/// no non-empty one.
pub fn error_body_message(body: &[u8]) -> Option<String> {
    let env = serde_json::from_slice::<ErrorEnvelopeIn<'_>>(body).ok()?;
    if let Some(raw) = env.error.and_then(present) {
        if let Ok(obj) = serde_json::from_str::<ErrorObjectIn>(raw.get()) {
            return obj.message.filter(|m| !m.is_empty());
        }
        if let Ok(text) = serde_json::from_str::<String>(raw.get()) {
            return Some(text).filter(|m| !m.is_empty());
        }
    }
    env.message.filter(|m| !m.is_empty())
}

/// The message of an error object inside a stream (`{"message": …}`), a string's text, or else
/// the raw JSON, so a stream's error always says something.
pub fn error_object_message(raw: &RawValue) -> String {
    serde_json::from_str::<ErrorObjectIn>(raw.get())
        .ok()
        .and_then(|e| e.message)
        .or_else(|| serde_json::from_str::<String>(raw.get()).ok())
        .unwrap_or_else(|| raw.get().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compact_json_keeps_strings_and_numbers() {
        assert_eq!(
            compact_json("{ \"a b\" : [1.50, 1e2 ,\n\t\"x\\\" y\" ], \"c\":{} }"),
            r#"{"a b":[1.50,1e2,"x\" y"],"c":{}}"#
        );
    }
}
