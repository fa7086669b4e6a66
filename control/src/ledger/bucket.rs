//! Usage records whose request id is a UUIDv7, stored many to a sled entry (layout version 3).
//!
//! A sled insert costs about the same whatever it stores (a leaf holds at most 16 entries and
//! each insert links a new version of it), and one insert per record was most of the control
//! plane's work under load. A UUIDv7 starts with its millisecond, so the records of one
//! millisecond share an entry in `usage_ms`: the key is those 6 bytes, the value a sorted list
//! of the ids' other 10 bytes, each with the record's stored form (see `codec`). A batch of
//! records from a busy node touches a few dozen entries instead of a thousand, and a request id
//! is still found, and deduplicated, by one lookup.
//!
//! Value: [`FORMAT`], then per record, ascending by suffix and without repeats: the 10-byte
//! suffix, the stored form's length as a protobuf varint, the stored form.

use crate::error::{Error, Result};

/// First byte of a bucket value.
const FORMAT: u8 = 0x01;
/// Bytes of a UUID after its 6-byte millisecond.
pub(super) const SUFFIX: usize = 10;
/// Bytes of a bucket key: the millisecond a UUIDv7 starts with.
pub(super) const KEY: usize = 6;

/// The id's 16 bytes if `id` is a UUIDv7 in its canonical form (lowercase, hyphenated): only
/// then does the string round-trip through the bytes, which the bucket stores instead of it.
pub(super) fn v7_id(id: &str) -> Option<[u8; 16]> {
    if id.len() != 36 {
        return None;
    }
    let uuid = uuid::Uuid::try_parse(id).ok()?;
    if uuid.get_version_num() != 7 {
        return None;
    }
    let mut buf = [0u8; 36];
    if uuid.hyphenated().encode_lower(&mut buf).as_bytes() != id.as_bytes() {
        return None;
    }
    Some(*uuid.as_bytes())
}

/// The bucket key of an id: its 6-byte millisecond.
pub(super) fn key_of(id: &[u8; 16]) -> [u8; KEY] {
    let mut key = [0u8; KEY];
    key.copy_from_slice(&id[..KEY]);
    key
}

/// The millisecond of an id.
pub(super) fn ms_of(id: &[u8; 16]) -> u64 {
    let mut ms = [0u8; 8];
    ms[8 - KEY..].copy_from_slice(&id[..KEY]);
    u64::from_be_bytes(ms)
}

/// The canonical string of the id stored under `key` with `suffix`.
pub(super) fn id_string(key: &[u8], suffix: &[u8]) -> Result<String> {
    let bytes: [u8; 16] = [key, suffix]
        .concat()
        .try_into()
        .map_err(|_| corrupt(format!("a bucket key is not {KEY} bytes")))?;
    Ok(uuid::Uuid::from_bytes(bytes).hyphenated().to_string())
}

fn corrupt(detail: String) -> Error {
    Error::Corrupt {
        tree: crate::store::USAGE_MS,
        detail,
    }
}

/// A bucket's records as slices of its value: (suffix, stored form), ascending by suffix.
pub(super) struct Bucket<'a> {
    entries: Vec<(&'a [u8], &'a [u8])>,
}

impl<'a> Bucket<'a> {
    /// An absent entry is an empty bucket.
    pub(super) fn parse(raw: Option<&'a [u8]>) -> Result<Bucket<'a>> {
        let mut entries = Vec::new();
        let Some(raw) = raw else {
            return Ok(Bucket { entries });
        };
        let Some((&FORMAT, mut rest)) = raw.split_first() else {
            return Err(corrupt("unknown bucket format".into()));
        };
        while !rest.is_empty() {
            if rest.len() < SUFFIX {
                return Err(corrupt("a bucket ends inside an id".into()));
            }
            let (suffix, after) = rest.split_at(SUFFIX);
            let mut after_len = after;
            let len = prost::encoding::decode_varint(&mut after_len)
                .map_err(|e| corrupt(format!("a bucket's record length: {e}")))?;
            let len = usize::try_from(len)
                .ok()
                .filter(|&len| len <= after_len.len())
                .ok_or_else(|| corrupt("a bucket ends inside a record".into()))?;
            let (value, next) = after_len.split_at(len);
            if entries
                .last()
                .is_some_and(|(last, _): &(&[u8], &[u8])| *last >= suffix)
            {
                return Err(corrupt("a bucket's ids are not ascending".into()));
            }
            entries.push((suffix, value));
            rest = next;
        }
        Ok(Bucket { entries })
    }

    pub(super) fn find(&self, suffix: &[u8]) -> Option<&'a [u8]> {
        self.entries
            .binary_search_by(|(s, _)| (*s).cmp(suffix))
            .ok()
            .map(|i| self.entries[i].1)
    }

    /// (suffix, stored form) of every record, ascending.
    pub(super) fn entries(&self) -> &[(&'a [u8], &'a [u8])] {
        &self.entries
    }

    /// The value of this bucket with `added` (suffix, stored form) records, none of which it
    /// holds and none repeated.
    pub(super) fn with(&self, added: &[(&[u8], &[u8])]) -> Vec<u8> {
        let mut all: Vec<(&[u8], &[u8])> = Vec::with_capacity(self.entries.len() + added.len());
        all.extend_from_slice(&self.entries);
        all.extend_from_slice(added);
        all.sort_unstable_by(|a, b| a.0.cmp(b.0));
        let size: usize = all.iter().map(|(s, v)| s.len() + 5 + v.len()).sum();
        let mut out = Vec::with_capacity(1 + size);
        out.push(FORMAT);
        for (suffix, value) in all {
            out.extend_from_slice(suffix);
            prost::encoding::encode_varint(value.len() as u64, &mut out);
            out.extend_from_slice(value);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn only_canonical_v7_ids_qualify() {
        let id = uuid::Uuid::now_v7();
        let text = id.to_string();
        let bytes = v7_id(&text).unwrap();
        assert_eq!(&bytes, id.as_bytes());
        assert_eq!(id_string(&key_of(&bytes), &bytes[6..]).unwrap(), text);
        let (secs, nanos) = id.get_timestamp().unwrap().to_unix();
        assert_eq!(ms_of(&bytes), secs * 1000 + u64::from(nanos / 1_000_000));
        // Same bytes, other spellings: not canonical, so not bucketed.
        assert!(v7_id(&text.to_uppercase()).is_none());
        assert!(v7_id(&id.simple().to_string()).is_none());
        assert!(v7_id(&format!("{{{text}}}")).is_none());
        assert!(v7_id(&uuid::Uuid::new_v4().to_string()).is_none());
        assert!(v7_id("r1").is_none());
    }

    #[test]
    fn buckets_merge_sorted_and_find() {
        let empty = Bucket::parse(None).unwrap();
        let one = empty.with(&[(b"bbbbbbbbbb", b"\x01two"), (b"aaaaaaaaaa", b"\x01one")]);
        let parsed = Bucket::parse(Some(&one)).unwrap();
        assert_eq!(parsed.entries().len(), 2);
        assert_eq!(parsed.find(b"aaaaaaaaaa"), Some(&b"\x01one"[..]));
        assert_eq!(parsed.find(b"cccccccccc"), None);
        let big = vec![7u8; 300];
        let two = parsed.with(&[(b"abababab00", &big)]);
        let parsed = Bucket::parse(Some(&two)).unwrap();
        let suffixes: Vec<&[u8]> = parsed.entries().iter().map(|(s, _)| *s).collect();
        assert_eq!(
            suffixes,
            vec![&b"aaaaaaaaaa"[..], b"abababab00", b"bbbbbbbbbb"]
        );
        assert_eq!(parsed.find(b"abababab00"), Some(&big[..]));
    }

    #[test]
    fn damaged_buckets_are_errors() {
        let good = Bucket::parse(None)
            .unwrap()
            .with(&[(b"aaaaaaaaaa", b"x"), (b"bbbbbbbbbb", b"y")]);
        for bad in [
            &b""[..],
            &[0x09, 1, 2][..],
            &good[..good.len() - 1],
            &good[..5],
            &[
                FORMAT, b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', b'a', 0xff,
            ][..],
        ] {
            assert!(Bucket::parse(Some(bad)).is_err(), "{bad:?}");
        }
        // Out of order.
        let mut swapped = vec![FORMAT];
        swapped.extend_from_slice(b"bbbbbbbbbb\x01y");
        swapped.extend_from_slice(b"aaaaaaaaaa\x01x");
        assert!(Bucket::parse(Some(&swapped)).is_err());
    }
}
