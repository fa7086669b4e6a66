//! Token counts in Keyplane's billing terms, and the bounds within which an upstream's counts are
//! believed. Every dialect's decoder reports usage as [`Usage`]; the ledger bills nothing else.

/// Token counts in Keyplane's billing terms: `input_tokens` excludes cached input.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Usage {
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub cache_read_tokens: u64,
    pub cache_write_tokens: u64,
}

/// Most tokens one bucket (input, output, cache read, cache write) of one request may hold. No
/// model's context or output comes near it; a count beyond it is an upstream's lie or bug.
pub const MAX_TOKENS_PER_BUCKET: u64 = 10_000_000;

/// Most prompt tokens (input and cache together) per byte of the client's request. A token is
/// about 4 bytes of text; an image by URL costs up to a few thousand tokens for ~100 bytes, which
/// the floor below and this ratio both cover.
pub const MAX_PROMPT_TOKENS_PER_REQUEST_BYTE: u64 = 100;

/// Prompt tokens always believable, however short the request.
pub const MIN_PROMPT_TOKENS_BOUND: u64 = 16_384;

impl Usage {
    /// An OpenAI-shaped count (`prompt_tokens` including `cached_tokens`) in billing terms;
    /// `None` when more is cached than was prompted, which no upstream truthfully reports.
    pub fn from_openai(prompt: u64, completion: u64, cached: u64) -> Option<Usage> {
        Some(Usage {
            input_tokens: prompt.checked_sub(cached)?,
            output_tokens: completion,
            cache_read_tokens: cached,
            cache_write_tokens: 0,
        })
    }

    /// Whether an upstream's counts are believable for a request of `request_bytes` bytes:
    /// every bucket within [`MAX_TOKENS_PER_BUCKET`], and the prompt within
    /// [`MAX_PROMPT_TOKENS_PER_REQUEST_BYTE`] per byte (at least [`MIN_PROMPT_TOKENS_BOUND`]).
    /// Counts that are not are never billed: the request is billed at the estimate instead,
    /// flagged as estimated. Every usage a record bills passes here (`proxy::Record::finish`).
    pub fn is_plausible(&self, request_bytes: u64) -> bool {
        let buckets = [
            self.input_tokens,
            self.output_tokens,
            self.cache_read_tokens,
            self.cache_write_tokens,
        ];
        if buckets.iter().any(|b| *b > MAX_TOKENS_PER_BUCKET) {
            return false;
        }
        // Each bucket is at most 10^7 here: the sum cannot overflow.
        let prompt = self.input_tokens + self.cache_read_tokens + self.cache_write_tokens;
        let bound = request_bytes
            .saturating_mul(MAX_PROMPT_TOKENS_PER_REQUEST_BYTE)
            .max(MIN_PROMPT_TOKENS_BOUND);
        prompt <= bound
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn usage_beyond_the_bounds_is_not_plausible() {
        let u = |input, output, read, write| Usage {
            input_tokens: input,
            output_tokens: output,
            cache_read_tokens: read,
            cache_write_tokens: write,
        };
        // A 1 KiB request: up to 102,400 prompt tokens.
        assert!(u(100_000, 2_000, 2_400, 0).is_plausible(1024));
        assert!(!u(100_000, 2_000, 2_401, 0).is_plausible(1024));
        assert!(!u(0, 0, 0, 102_401).is_plausible(1024));
        // A tiny request still may bill the floor (an image by URL).
        assert!(u(MIN_PROMPT_TOKENS_BOUND, 1, 0, 0).is_plausible(10));
        assert!(!u(MIN_PROMPT_TOKENS_BOUND + 1, 1, 0, 0).is_plausible(10));
        // Every bucket is capped, whatever the request's size.
        assert!(u(0, MAX_TOKENS_PER_BUCKET, 0, 0).is_plausible(10));
        assert!(!u(0, MAX_TOKENS_PER_BUCKET + 1, 0, 0).is_plausible(10));
        assert!(!u(u64::MAX, 0, 0, 0).is_plausible(u64::MAX));
        assert!(!u(0, 0, u64::MAX, 0).is_plausible(u64::MAX));
        assert!(!u(1, 1, 1, u64::MAX).is_plausible(u64::MAX));
        // The sum of capped buckets cannot overflow.
        let max = MAX_TOKENS_PER_BUCKET;
        assert!(u(max, max, max, max).is_plausible(u64::MAX));
        assert_eq!(Usage::from_openai(5, 1, 6), None);
        assert_eq!(Usage::from_openai(5, 1, 5).unwrap().input_tokens, 0);
    }
}
