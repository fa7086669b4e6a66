//! A JSON object read as its top-level entries, each value kept as raw JSON, so that a rewrite
//! touches only the entries it changes and every other byte stays as the client sent it.

use serde::Deserialize;
use serde::de::{self, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;
use std::fmt;

/// The entries of a JSON object, in order.
pub struct Entries<'a>(pub Vec<(Cow<'a, str>, &'a RawValue)>);

impl<'de: 'a, 'a> Deserialize<'de> for Entries<'a> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct EntriesVisitor<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> Visitor<'de> for EntriesVisitor<'a> {
            type Value = Entries<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<M: MapAccess<'de>>(self, mut map: M) -> Result<Self::Value, M::Error> {
                let mut entries = Vec::new();
                while let Some(key) = map.next_key::<Key<'de>>()? {
                    let value: &'de RawValue = map.next_value()?;
                    entries.push((key.0, value));
                }
                Ok(Entries(entries))
            }
        }
        deserializer.deserialize_map(EntriesVisitor(std::marker::PhantomData))
    }
}

/// A map key, borrowed unless it has escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de> Deserialize<'de> for Key<'de> {
    fn deserialize<D: de::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E: de::Error>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Key(Cow::Owned(v.to_string())))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Writes `{...}` from entries, with `replace(key, raw)` deciding each value: `Some(new)` to
/// substitute, `None` to keep the original bytes. `extra` entries are appended at the end.
pub fn write_object(
    entries: &[(Cow<'_, str>, &RawValue)],
    mut replace: impl FnMut(&str, &RawValue) -> Option<String>,
    extra: &[(&str, String)],
) -> Vec<u8> {
    let mut out = Vec::with_capacity(
        entries
            .iter()
            .map(|(k, v)| k.len() + v.get().len() + 4)
            .sum::<usize>()
            + 64,
    );
    out.push(b'{');
    let mut first = true;
    let mut put = |out: &mut Vec<u8>, key: &str, value: &str| {
        if !first {
            out.push(b',');
        }
        first = false;
        // Keys are re-encoded (escapes included) by serde_json; values are copied. Writing a
        // `str` into a `Vec` cannot fail.
        let _ = serde_json::to_writer(&mut *out, key);
        out.push(b':');
        out.extend_from_slice(value.as_bytes());
    };
    for (key, value) in entries {
        match replace(key, value) {
            Some(new) => put(&mut out, key, &new),
            None => put(&mut out, key, value.get()),
        }
    }
    for (key, value) in extra {
        put(&mut out, key, value);
    }
    out.push(b'}');
    out
}

/// The first byte of `body` that is not JSON whitespace: `{` for an object. A JSON parser would
/// also read a struct from an array, so a shape check looks here first.
pub fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter()
        .copied()
        .find(|b| !matches!(b, b' ' | b'\t' | b'\n' | b'\r'))
}

/// Reads a struct from `raw` only when it is a JSON object: serde would also read one from an
/// array, taking its elements for the fields in order, which no upstream means (a `"usage":
/// [40, 2]` is no 40 prompt tokens).
pub fn object<'a, T: Deserialize<'a>>(raw: &'a RawValue) -> Option<T> {
    if first_byte(raw.get().as_bytes()) != Some(b'{') {
        return None;
    }
    serde_json::from_str(raw.get()).ok()
}
