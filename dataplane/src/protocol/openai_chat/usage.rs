//! The one reader of a chat `usage` object, for relayed streams and bodies and for translation
//! alike, so that a count the gateway bills is read the same way whichever way the answer goes.
//!
//! Counts are read leniently (any non-negative number, a float truncated; `null` is absent), and
//! a field of another type makes the usage unreadable. The provider-specific fields are listed
//! in the two tables below, each with the provider it comes from.

use crate::protocol::shape::Metering;
use crate::protocol::usage as billing;
use crate::protocol::wire::count;
use serde::Deserialize;
use serde::de::{Deserializer, IgnoredAny, MapAccess, Visitor};
use serde_json::value::RawValue;
use std::borrow::Cow;

/// Fields naming the cached part of `prompt_tokens`, read when `prompt_tokens_details.
/// cached_tokens` (OpenAI's) is absent; the first present wins.
const CACHED_TOKEN_FIELDS: [(&str, &str); 1] = [
    // DeepSeek: beside prompt_cache_miss_tokens; prompt_tokens is their sum.
    ("prompt_cache_hit_tokens", "DeepSeek"),
];

/// Fields carrying the provider's own charge for the request, in order of preference, with the
/// power of ten that turns the value into nano-USD.
const REPORTED_COST_FIELDS: [(&str, &str, i32); 3] = [
    // xAI: integer ticks, 10^10 per USD.
    ("cost_in_usd_ticks", "xAI", -1),
    // OpenRouter (and providers copying its usage accounting): USD.
    ("cost", "OpenRouter", 9),
    // DeepInfra: USD.
    ("estimated_cost", "DeepInfra", 9),
];

/// Token counts as a chat upstream reported them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    /// All input, cached included.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: u64,
    /// The part of `completion_tokens` spent reasoning (`completion_tokens_details`), when said.
    pub reasoning_tokens: Option<u64>,
    /// The upstream's own charge for the request, in nano-USD, when its usage carries one (see
    /// [`REPORTED_COST_FIELDS`]).
    pub reported_cost_nano: Option<u64>,
}

impl Usage {
    /// Reads a `usage` value; `None` unless it is a readable JSON object. Only this function
    /// reads one (the reader borrows from the value's text). (serde would also read
    /// a struct from an array, taking its elements for the fields in order, which no upstream
    /// means.)
    pub fn read(raw: &RawValue) -> Option<Usage> {
        if crate::protocol::json::first_byte(raw.get().as_bytes()) != Some(b'{') {
            return None;
        }
        serde_json::from_str(raw.get()).ok()
    }

    /// In billing terms; `None` for counts no upstream truthfully reports (more cached than
    /// prompted).
    pub fn metering(&self) -> Option<Metering> {
        Some(Metering {
            usage: self.billing()?,
            reasoning_tokens: self.reasoning_tokens,
            reported_cost_nano: self.reported_cost_nano,
        })
    }

    /// The counts in billing terms (see [`Usage::metering`]).
    pub fn billing(&self) -> Option<billing::Usage> {
        billing::Usage::from_openai(
            self.prompt_tokens,
            self.completion_tokens,
            self.cached_tokens,
        )
    }
}

#[derive(Deserialize)]
struct Count(#[serde(deserialize_with = "count")] Option<u64>);

#[derive(Deserialize)]
struct PromptDetails {
    #[serde(default, deserialize_with = "count")]
    cached_tokens: Option<u64>,
}

#[derive(Deserialize)]
struct CompletionDetails {
    #[serde(default, deserialize_with = "count")]
    reasoning_tokens: Option<u64>,
}

impl<'de> Deserialize<'de> for Usage {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Usage, D::Error> {
        d.deserialize_map(UsageVisitor)
    }
}

struct UsageVisitor;

impl<'de> Visitor<'de> for UsageVisitor {
    type Value = Usage;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a usage object")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Usage, A::Error> {
        let mut prompt = None;
        let mut completion = None;
        let mut details_cached = None;
        let mut reasoning = None;
        let mut cached: [Option<u64>; CACHED_TOKEN_FIELDS.len()] = Default::default();
        let mut costs: [Option<u64>; REPORTED_COST_FIELDS.len()] = Default::default();
        while let Some(key) = map.next_key::<Cow<'de, str>>()? {
            match key.as_ref() {
                "prompt_tokens" => prompt = map.next_value::<Count>()?.0,
                "completion_tokens" => completion = map.next_value::<Count>()?.0,
                "prompt_tokens_details" => {
                    details_cached = map
                        .next_value::<Option<PromptDetails>>()?
                        .and_then(|d| d.cached_tokens);
                }
                "completion_tokens_details" => {
                    reasoning = map
                        .next_value::<Option<CompletionDetails>>()?
                        .and_then(|d| d.reasoning_tokens);
                }
                key => {
                    if let Some(i) = CACHED_TOKEN_FIELDS.iter().position(|(f, _)| *f == key) {
                        cached[i] = map.next_value::<Count>()?.0;
                    } else if let Some(i) =
                        REPORTED_COST_FIELDS.iter().position(|(f, _, _)| *f == key)
                    {
                        // A charge that is not a number (or not one serde reads) is not believed,
                        // and hides no count.
                        let raw = map.next_value::<&'de RawValue>()?;
                        costs[i] = serde_json::from_str::<serde_json::Number>(raw.get())
                            .ok()
                            .and_then(|n| scaled(&n, REPORTED_COST_FIELDS[i].2));
                    } else {
                        map.next_value::<IgnoredAny>()?;
                    }
                }
            }
        }
        Ok(Usage {
            prompt_tokens: prompt.unwrap_or(0),
            completion_tokens: completion.unwrap_or(0),
            cached_tokens: details_cached
                .or(cached.into_iter().flatten().next())
                .unwrap_or(0),
            reasoning_tokens: reasoning,
            reported_cost_nano: costs.into_iter().flatten().next(),
        })
    }
}

/// A non-negative decimal times 10^`shift`, rounded half up; read from the number's shortest
/// decimal text, never through float arithmetic. `None` for a negative or absurd value.
fn scaled(n: &serde_json::Number, shift: i32) -> Option<u64> {
    let text = n.to_string();
    if text.starts_with('-') {
        return None;
    }
    let (number, exponent) = match text.find(['e', 'E']) {
        Some(at) => (&text[..at], text[at + 1..].parse::<i32>().ok()?),
        None => (text.as_str(), 0),
    };
    let (whole, frac) = number.split_once('.').unwrap_or((number, ""));
    let digits = format!("{whole}{frac}");
    let digits = digits.trim_start_matches('0');
    if digits.len() > 36 {
        return None;
    }
    let mantissa: u128 = if digits.is_empty() {
        0
    } else {
        digits.parse().ok()?
    };
    let power = i64::from(shift) + i64::from(exponent) - frac.len() as i64;
    let value = if power >= 0 {
        mantissa.checked_mul(10u128.checked_pow(u32::try_from(power).ok()?)?)?
    } else {
        match u32::try_from(-power)
            .ok()
            .and_then(|p| 10u128.checked_pow(p))
        {
            Some(d) => (mantissa + d / 2) / d,
            None => 0,
        }
    };
    u64::try_from(value).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn read(s: &str) -> Option<Usage> {
        Usage::read(serde_json::from_str(s).unwrap())
    }

    #[test]
    fn counts_are_lenient_and_other_types_unreadable() {
        let u = read(r#"{"prompt_tokens":12.0,"completion_tokens":3,"total_tokens":"x"}"#).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (12, 3));
        let u = read(r#"{"prompt_tokens":-5,"completion_tokens":null}"#).unwrap();
        assert_eq!((u.prompt_tokens, u.completion_tokens), (0, 0));
        assert_eq!(read(r#"{"prompt_tokens":"lots"}"#), None);
        assert_eq!(read("[40,2]"), None, "an array is no usage");
        assert_eq!(read("null"), None);
    }

    #[test]
    fn provider_fields() {
        // OpenAI's details win over DeepSeek's field; DeepSeek's alone is read.
        let u = read(
            r#"{"prompt_tokens":10,"prompt_tokens_details":{"cached_tokens":4},"prompt_cache_hit_tokens":6}"#,
        )
        .unwrap();
        assert_eq!(u.cached_tokens, 4);
        let u = read(
            r#"{"prompt_tokens":10,"prompt_cache_hit_tokens":6,"prompt_cache_miss_tokens":4}"#,
        )
        .unwrap();
        assert_eq!(u.cached_tokens, 6);
        assert_eq!(u.metering().unwrap().usage.input_tokens, 4);
        // Reasoning is reported beside the output it is part of.
        let u = read(r#"{"prompt_tokens":1,"completion_tokens":9,"completion_tokens_details":{"reasoning_tokens":7}}"#)
            .unwrap();
        assert_eq!(u.metering().unwrap().reasoning_tokens, Some(7));
        assert_eq!(u.metering().unwrap().usage.output_tokens, 9);
        // xAI's ticks are preferred to OpenRouter's cost; a charge that is no number is none.
        let u = read(r#"{"cost":1,"cost_in_usd_ticks":1466250}"#).unwrap();
        assert_eq!(u.reported_cost_nano, Some(146_625));
        let u = read(r#"{"prompt_tokens":3,"cost":"0.1"}"#).unwrap();
        assert_eq!((u.prompt_tokens, u.reported_cost_nano), (3, None));
        // More cached than prompted: read, but not billable.
        assert_eq!(
            read(r#"{"prompt_tokens":1,"prompt_tokens_details":{"cached_tokens":2}}"#)
                .unwrap()
                .metering(),
            None
        );
    }
}
