//! How a usage record is stored in the `usage` tree (keyed by its request id, which is therefore
//! not repeated in the value).
//!
//! Layout version 2 writes `0x01` followed by the protobuf encoding of [`Stored`]: about a third
//! of the size of the version 1 JSON object, which matters because the ledger stores one record
//! per billable request and sled's cost per insert grows with the size of the values it moves.
//! Records written by layout version 1 (a JSON object, so starting with `{`) stay as they are
//! and are still read. Protobuf keeps the format open: a field added later is read as its
//! default from older records, and an unknown field is skipped.

use super::UsageRec;
use crate::error::{Error, Result};
use prost::Message;

/// First byte of a binary record. A JSON record starts with `{`.
const BINARY: u8 = 0x01;

/// The stored fields of a [`UsageRec`] except its request id (the tree's key). Tags are frozen.
#[derive(Clone, PartialEq, Message)]
struct Stored {
    #[prost(string, tag = "1")]
    node_id: String,
    #[prost(string, tag = "2")]
    key_id: String,
    #[prost(string, tag = "3")]
    model: String,
    #[prost(string, tag = "4")]
    provider: String,
    #[prost(string, tag = "5")]
    credential_id: String,
    #[prost(uint64, tag = "6")]
    input_tokens: u64,
    #[prost(uint64, tag = "7")]
    output_tokens: u64,
    #[prost(uint64, tag = "8")]
    cost_nano_usd: u64,
    #[prost(uint64, optional, tag = "9")]
    computed_cost_nano_usd: Option<u64>,
    #[prost(uint64, optional, tag = "10")]
    reported_cost_nano_usd: Option<u64>,
    #[prost(uint64, tag = "11")]
    cache_read_tokens: u64,
    #[prost(uint64, tag = "12")]
    cache_write_tokens: u64,
    #[prost(uint32, tag = "13")]
    latency_ms: u32,
    #[prost(uint32, tag = "14")]
    ttfb_ms: u32,
    #[prost(uint32, tag = "15")]
    status: u32,
    #[prost(int64, tag = "16")]
    started_at_ms: i64,
    #[prost(bool, tag = "17")]
    estimated: bool,
    #[prost(int64, tag = "18")]
    received_at_ms: i64,
    #[prost(string, tag = "19")]
    chain: String,
}

/// Splits `rec` into its key (the request id) and the value stored under it, moving its strings
/// rather than copying them.
pub(super) fn encode(rec: UsageRec) -> (String, Vec<u8>) {
    let stored = Stored {
        node_id: rec.node_id,
        key_id: rec.key_id,
        model: rec.model,
        provider: rec.provider,
        credential_id: rec.credential_id,
        input_tokens: rec.input_tokens,
        output_tokens: rec.output_tokens,
        cost_nano_usd: rec.cost_nano_usd,
        computed_cost_nano_usd: rec.computed_cost_nano_usd,
        reported_cost_nano_usd: rec.reported_cost_nano_usd,
        cache_read_tokens: rec.cache_read_tokens,
        cache_write_tokens: rec.cache_write_tokens,
        latency_ms: rec.latency_ms,
        ttfb_ms: rec.ttfb_ms,
        status: rec.status,
        started_at_ms: rec.started_at_ms,
        estimated: rec.estimated,
        received_at_ms: rec.received_at_ms,
        chain: rec.chain,
    };
    let mut out = Vec::with_capacity(1 + stored.encoded_len());
    out.push(BINARY);
    // A Vec grows as needed: encoding into one cannot run out of room.
    stored.encode_raw(&mut out);
    (rec.request_id, out)
}

/// The record stored under `key` (its request id) as `raw`, in either layout's form.
pub(super) fn decode(key: &[u8], raw: &[u8]) -> Result<UsageRec> {
    let corrupt = |detail: String| Error::Corrupt {
        tree: crate::store::USAGE,
        detail,
    };
    let Some((&BINARY, body)) = raw.split_first() else {
        return crate::store::decode(crate::store::USAGE, raw);
    };
    let s = Stored::decode(body).map_err(|e| corrupt(e.to_string()))?;
    let request_id = std::str::from_utf8(key)
        .map_err(|_| corrupt("a usage key is not UTF-8".into()))?
        .to_string();
    Ok(UsageRec {
        request_id,
        node_id: s.node_id,
        key_id: s.key_id,
        model: s.model,
        provider: s.provider,
        credential_id: s.credential_id,
        input_tokens: s.input_tokens,
        output_tokens: s.output_tokens,
        cost_nano_usd: s.cost_nano_usd,
        computed_cost_nano_usd: s.computed_cost_nano_usd,
        reported_cost_nano_usd: s.reported_cost_nano_usd,
        cache_read_tokens: s.cache_read_tokens,
        cache_write_tokens: s.cache_write_tokens,
        latency_ms: s.latency_ms,
        ttfb_ms: s.ttfb_ms,
        status: s.status,
        started_at_ms: s.started_at_ms,
        estimated: s.estimated,
        received_at_ms: s.received_at_ms,
        chain: s.chain,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn full() -> UsageRec {
        UsageRec {
            request_id: "0190a1b2-c3d4-7e5f-8a9b-0c1d2e3f4a5b".into(),
            node_id: "eu-1".into(),
            key_id: "k-1".into(),
            model: "deepseek/deepseek-chat".into(),
            provider: "openrouter".into(),
            credential_id: "cred-7".into(),
            input_tokens: 1_234,
            output_tokens: 567,
            cost_nano_usd: 900,
            computed_cost_nano_usd: Some(1_000),
            reported_cost_nano_usd: Some(900),
            cache_read_tokens: 10,
            cache_write_tokens: 20,
            latency_ms: 321,
            ttfb_ms: 45,
            status: 200,
            started_at_ms: 1_790_000_000_000,
            estimated: true,
            received_at_ms: 1_790_000_000_500,
            chain: "cheap".into(),
        }
    }

    #[test]
    fn binary_round_trip_and_size() {
        let rec = full();
        let (key, raw) = encode(rec.clone());
        assert_eq!(key, rec.request_id);
        assert_eq!(raw[0], BINARY);
        assert_eq!(decode(rec.request_id.as_bytes(), &raw).unwrap(), rec);
        let json = crate::store::encode(&rec);
        assert!(
            raw.len() * 3 < json.len(),
            "binary {} bytes vs JSON {}",
            raw.len(),
            json.len()
        );
        // Absent optional costs stay absent, not zero.
        let plain = UsageRec {
            computed_cost_nano_usd: None,
            reported_cost_nano_usd: None,
            ..full()
        };
        let back = decode(plain.request_id.as_bytes(), &encode(plain.clone()).1).unwrap();
        assert_eq!(back.reported_cost_nano_usd, None);
        assert_eq!(back.computed_cost_nano_usd, None);
    }

    #[test]
    fn version_1_json_records_still_read() {
        // As layout version 1 wrote it, before the cost and chain fields existed.
        let v1 = br#"{"request_id":"r1","node_id":"n","key_id":"k","model":"m","provider":"p","credential_id":"c","input_tokens":3,"output_tokens":4,"cost_nano_usd":5,"latency_ms":6,"ttfb_ms":7,"status":200,"started_at_ms":8}"#;
        let rec = decode(b"r1", v1).unwrap();
        assert_eq!(rec.request_id, "r1");
        assert_eq!(
            (rec.input_tokens, rec.output_tokens, rec.cost_nano_usd),
            (3, 4, 5)
        );
        assert_eq!(rec.computed_cost_nano_usd, None);
        assert!(rec.chain.is_empty());
    }

    #[test]
    fn damaged_values_are_errors_not_panics() {
        assert!(decode(b"r", &[BINARY, 0xff, 0xff]).is_err());
        assert!(decode(b"r", b"").is_err());
        assert!(decode(&[0xff], &encode(full()).1).is_err());
    }
}
