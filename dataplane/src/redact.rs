//! Removing the gateway's own upstream secret from what an upstream sends back: an upstream that
//! echoes its request (headers in an error body, say) must not hand a client the credential the
//! gateway called it with.
//!
//! The secret's bytes are searched with a `memchr::memmem::Finder` built once per credential
//! when the route table is compiled, so a scan costs about what `memchr` does over the same
//! bytes. Only the token is searched: `Bearer TOKEN` becomes `Bearer [redacted]`.

use bytes::Bytes;
use memchr::memmem::Finder;
use std::borrow::Cow;

/// What replaces the secret.
pub const MARKER: &[u8] = b"[redacted]";

/// Secrets shorter than this are not searched for: replacing every occurrence of a very short
/// string would mangle bodies, and no provider issues keys that short.
pub const MIN_SECRET_BYTES: usize = 8;

/// Finds and replaces one credential's secret. Its `Debug` never shows the secret.
pub struct Redactor {
    finder: Option<Finder<'static>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Redactor(..)")
    }
}

impl Redactor {
    pub fn new(secret: &[u8]) -> Redactor {
        Redactor {
            finder: (secret.len() >= MIN_SECRET_BYTES).then(|| Finder::new(secret).into_owned()),
        }
    }

    /// Whether `data` holds the secret.
    pub fn found_in(&self, data: &[u8]) -> bool {
        self.finder.as_ref().is_some_and(|f| f.find(data).is_some())
    }

    /// `data` with every occurrence of the secret replaced by [`MARKER`]; the same `Bytes`
    /// (no copy) when it holds none.
    pub fn bytes(&self, data: Bytes) -> Bytes {
        match self.replaced(&data) {
            Some(out) => Bytes::from(out),
            None => data,
        }
    }

    /// `text` with every occurrence of the secret replaced by [`MARKER`].
    pub fn text<'a>(&self, text: &'a str) -> Cow<'a, str> {
        match self.replaced(text.as_bytes()) {
            // Replacing a whole valid UTF-8 needle by ASCII keeps the text valid UTF-8.
            Some(out) => Cow::Owned(String::from_utf8_lossy(&out).into_owned()),
            None => Cow::Borrowed(text),
        }
    }

    fn replaced(&self, data: &[u8]) -> Option<Vec<u8>> {
        let finder = self.finder.as_ref()?;
        let mut hits = finder.find_iter(data).peekable();
        hits.peek()?;
        let needle = finder.needle().len();
        let mut out = Vec::with_capacity(data.len());
        let mut at = 0;
        for hit in hits {
            // find_iter reports non-overlapping matches, left to right.
            out.extend_from_slice(&data[at..hit]);
            out.extend_from_slice(MARKER);
            at = hit + needle;
        }
        out.extend_from_slice(&data[at..]);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_every_occurrence_and_nothing_else() {
        let r = Redactor::new(b"sk-live-0123456789");
        let body = Bytes::from_static(
            b"{\"headers\":{\"authorization\":\"Bearer sk-live-0123456789\",\"x\":\"sk-live-0123456789sk-live-0123456789\"}}",
        );
        let out = r.bytes(body);
        assert_eq!(
            &out[..],
            b"{\"headers\":{\"authorization\":\"Bearer [redacted]\",\"x\":\"[redacted][redacted]\"}}"
        );
        assert!(!r.found_in(&out));
        assert_eq!(r.text("key sk-live-0123456789."), "key [redacted].");
    }

    #[test]
    fn a_body_without_the_secret_is_the_same_bytes() {
        let r = Redactor::new(b"sk-live-0123456789");
        let body = Bytes::from_static(b"{\"ok\":\"sk-live-012345678\"}");
        let out = r.bytes(body.clone());
        assert_eq!(out.as_ptr(), body.as_ptr(), "no copy");
        assert!(matches!(r.text("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn short_secrets_are_not_searched() {
        let r = Redactor::new(b"abc");
        assert_eq!(&r.bytes(Bytes::from_static(b"abcabc"))[..], b"abcabc");
        assert!(!format!("{r:?}").contains("abc"));
    }
}
