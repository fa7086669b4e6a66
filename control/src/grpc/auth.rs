//! Bearer-token checks for the Admin and Nodes services.

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;
use tonic::{Request, Status};

/// A token to compare presented bearer tokens against, in constant time. Comparing SHA-256
/// digests keeps the comparison's length fixed, so timing reveals neither content nor length.
#[derive(Clone)]
pub struct TokenCheck {
    digest: [u8; 32],
    what: &'static str,
}

impl TokenCheck {
    pub fn new(token: &str, what: &'static str) -> TokenCheck {
        TokenCheck {
            digest: Sha256::digest(token.as_bytes()).into(),
            what,
        }
    }

    /// Whether `presented` is the token (constant time).
    pub fn matches(&self, presented: &str) -> bool {
        let digest: [u8; 32] = Sha256::digest(presented.as_bytes()).into();
        bool::from(digest.ct_eq(&self.digest))
    }

    /// Passes the request on if it carries `authorization: Bearer <token>` with the right token.
    pub fn check<T>(&self, request: Request<T>) -> Result<Request<T>, Status> {
        let header = request.metadata().get("authorization").ok_or_else(|| {
            Status::unauthenticated(format!("missing {} (authorization: Bearer)", self.what))
        })?;
        let presented = header
            .to_str()
            .ok()
            .and_then(|v| {
                v.strip_prefix("Bearer ")
                    .or_else(|| v.strip_prefix("bearer "))
            })
            .ok_or_else(|| {
                Status::unauthenticated(format!(
                    "malformed authorization: expected Bearer {}",
                    self.what
                ))
            })?;
        if self.matches(presented.trim()) {
            Ok(request)
        } else {
            Err(Status::unauthenticated(format!("wrong {}", self.what)))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with_auth(value: &str) -> Request<()> {
        let mut req = Request::new(());
        req.metadata_mut()
            .insert("authorization", value.parse().unwrap());
        req
    }

    #[test]
    fn accepts_only_the_right_bearer_token() {
        let check = TokenCheck::new("s3cret-token-value", "admin token");
        assert!(check.check(with_auth("Bearer s3cret-token-value")).is_ok());
        let wrong = check
            .check(with_auth("Bearer s3cret-token-valuX"))
            .unwrap_err();
        assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
        assert!(!wrong.message().contains("s3cret"));
        assert!(check.check(with_auth("s3cret-token-value")).is_err());
        assert!(check.check(Request::new(())).is_err());
    }
}
