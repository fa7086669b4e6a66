//! What an upstream's refusal is about: the credential, the upstream, or the client's request.
//!
//! A credential's health is shared by every client key and, through the control plane, every
//! node. So it changes only for failures that are the credential's or the upstream's own (its key
//! refused, its quota spent, the upstream down), never for what one client's request caused
//! (content a provider's moderation refused, a parameter it rejected, a header the client chose):
//! otherwise one client could take a pooled credential away from everyone. [`classify`] reads the
//! status and the short error body (at most [`ERROR_BODY_LIMIT`] bytes) and names the [`Cause`];
//! `proxy.rs` acts on it.
//!
//! Only the error object's own fields are read (`code`, `type`, `message`, `status` and whether
//! `metadata` carries moderation details), never the rest of the body: an upstream may quote the
//! request in it (OpenRouter's `metadata.flagged_input`, `metadata.raw`), and text a client wrote
//! must not be able to pass for "your API key is invalid".
//!
//! The codes and texts each provider uses are its quirks, kept per provider in `providers.rs`;
//! this module holds the rule that weighs them, and matches every provider's (an aggregator
//! relays the errors of the providers behind it).

use crate::providers;
use http::StatusCode;
use serde_json::Value;

/// The most of an error body read to classify it. Error objects are a few hundred bytes; a body
/// longer than this is classified on its status alone.
pub const ERROR_BODY_LIMIT: usize = 64 * 1024;

/// Why an upstream did not serve a request, as far as the credential's health is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cause {
    /// The upstream refused the credential's key (wrong, revoked, deactivated): `invalid` until
    /// an operator enables it again; the request moves on to the next candidate.
    KeyRefused,
    /// The credential's account or key is out of money or quota: `exhausted`.
    Exhausted,
    /// Rate limited: `cooldown`.
    RateLimited,
    /// The upstream failed (5xx), or refused with a 401/403 whose body names neither the key nor
    /// the request. Counts toward the circuit breaker, unless the request itself looks to blame:
    /// it failed on every candidate while they served others (see `proxy.rs`, `blame`). A key
    /// refused in a shape this module does not know is benched by the breaker this way, not
    /// marked invalid for good.
    Upstream,
    /// This candidate cannot serve this request, and that says nothing against the credential:
    /// the model is not offered here, an organisation or project scope does not match, or the
    /// account's credit does not cover this request's `max_tokens`. The next candidate serves;
    /// health is untouched.
    NotHere,
    /// The provider refused the request's content (OpenRouter's moderation 403). Relayed to the
    /// client as its own error and not tried elsewhere: the verdict is about the prompt, and
    /// passing a flagged prompt on to every other account of the pool would put those accounts'
    /// standing at risk with their providers (repeated flagged inputs get accounts suspended).
    Content,
    /// The request is wrong (400, 413, 422, …): relayed to the client as its own error.
    Request,
}

/// Classifies a non-2xx upstream answer by its status and (the first [`ERROR_BODY_LIMIT`] bytes
/// of) its body; an empty body when it was not read.
pub fn classify(status: StatusCode, body: &[u8]) -> Cause {
    if status.is_server_error() {
        return Cause::Upstream;
    }
    let code = status.as_u16();
    if !matches!(code, 401 | 402 | 403 | 429) {
        return match code {
            // Another candidate may have the model, or answer in time.
            404 | 408 | 409 => Cause::NotHere,
            _ => Cause::Request,
        };
    }
    let err = ErrorFields::parse(body);
    match code {
        429 if err.says_quota() => Cause::Exhausted,
        429 => Cause::RateLimited,
        402 => match err.affordable_tokens() {
            // OpenRouter: "requires more credits, or fewer max_tokens … can only afford N":
            // this request is too large for what is left, a smaller one still fits.
            Some(n) if n > 0 => Cause::NotHere,
            _ => Cause::Exhausted,
        },
        _ => {
            if code == 403 && err.is_moderation() {
                Cause::Content
            } else if err.is_scope_mismatch() || err.is_model_access() {
                Cause::NotHere
            } else if err.says_quota() {
                Cause::Exhausted
            } else if err.says_key_refused() {
                Cause::KeyRefused
            } else {
                Cause::Upstream
            }
        }
    }
}

/// The fields of an upstream error object, lower-cased, from any of the shapes providers use:
/// OpenAI `{"error": {message, type, code}}`, Anthropic `{"type": "error", "error": {type,
/// message}}`, OpenRouter `{"error": {code: 401, message, metadata}}`, Google
/// `[{"error": {code, message, status}}]`, a bare `{"message": …}` or `{"error": "…"}`, or a body
/// that is not JSON at all (its text as the message).
#[derive(Debug, Default)]
struct ErrorFields {
    code: String,
    kind: String,
    message: String,
    /// `metadata` has a field only a moderation refusal carries (OpenRouter's `reasons`,
    /// `flagged_input`).
    flagged: bool,
}

impl ErrorFields {
    fn parse(body: &[u8]) -> ErrorFields {
        let Ok(value) = serde_json::from_slice::<Value>(body) else {
            return ErrorFields {
                message: String::from_utf8_lossy(body).to_lowercase(),
                ..ErrorFields::default()
            };
        };
        let root = match &value {
            Value::Array(items) => items.first().unwrap_or(&Value::Null),
            other => other,
        };
        let text = |v: Option<&Value>| match v {
            Some(Value::String(s)) => s.to_lowercase(),
            Some(Value::Number(n)) => n.to_string(),
            _ => String::new(),
        };
        match root.get("error") {
            Some(obj @ Value::Object(_)) => {
                let metadata = obj.get("metadata");
                let mut kind = text(obj.get("type"));
                if kind.is_empty() {
                    kind = text(obj.get("status"));
                }
                ErrorFields {
                    code: text(obj.get("code")),
                    kind,
                    message: text(obj.get("message")),
                    flagged: metadata.is_some_and(|m| {
                        providers::every(|q| q.moderation_metadata).any(|f| m.get(f).is_some())
                    }),
                }
            }
            Some(Value::String(s)) => ErrorFields {
                message: s.to_lowercase(),
                ..ErrorFields::default()
            },
            _ => ErrorFields {
                code: text(root.get("code")),
                kind: text(root.get("type")),
                message: text(root.get("message").or_else(|| root.get("detail"))),
                flagged: false,
            },
        }
    }

    fn message_has(&self, needles: impl IntoIterator<Item = &'static str>) -> bool {
        needles.into_iter().any(|n| self.message.contains(n))
    }

    fn code_or_kind_is(&self, names: impl IntoIterator<Item = &'static str>) -> bool {
        names.into_iter().any(|n| self.code == n || self.kind == n)
    }

    /// A moderation refusal of the prompt (OpenRouter: `metadata.reasons` / `flagged_input`, or
    /// "… requires moderation on Azure. Your input was flagged for \"violence\".").
    fn is_moderation(&self) -> bool {
        self.flagged || self.message_has(providers::every(|q| q.moderation_texts))
    }

    /// A scope the request named that does not fit the key: OpenAI's organisation and project
    /// headers. The gateway no longer forwards them, so these can only come from an upstream's
    /// own setup; either way they say nothing about whether the key works.
    fn is_scope_mismatch(&self) -> bool {
        self.code_or_kind_is(providers::every(|q| q.scope_codes))
            || self.message_has(providers::every(|q| q.scope_texts))
    }

    /// The key works but may not use this model (OpenAI: "Project … does not have access to
    /// model …"): another candidate may serve it.
    fn is_model_access(&self) -> bool {
        self.code_or_kind_is(providers::every(|q| q.model_access_codes))
            || self.message_has(providers::every(|q| q.model_access_texts))
    }

    /// Out of quota or credit (OpenAI `insufficient_quota`, Anthropic "credit balance is too
    /// low", OpenRouter "Insufficient credits" and a key's own spend limit, …).
    fn says_quota(&self) -> bool {
        self.code_or_kind_is(providers::every(|q| q.quota_codes))
            || self.message_has(providers::every(|q| q.quota_texts))
    }

    /// The key itself is refused (OpenAI `invalid_api_key`, Anthropic "invalid x-api-key",
    /// DeepSeek "Authentication Fails", Google "API key not valid", deactivated accounts, …).
    fn says_key_refused(&self) -> bool {
        self.code_or_kind_is(providers::every(|q| q.key_refused_codes))
            || self.message_has(providers::every(|q| q.key_refused_texts))
    }

    /// N of OpenRouter's "… but can only afford N."
    fn affordable_tokens(&self) -> Option<u64> {
        providers::ALL
            .iter()
            .filter_map(|q| q.affordable_mark)
            .find_map(|mark| {
                let at = self.message.find(mark)? + mark.len();
                let digits: String = self.message[at..]
                    .chars()
                    .take_while(char::is_ascii_digit)
                    .collect();
                digits.parse().ok()
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn of(status: u16, body: &str) -> Cause {
        classify(
            StatusCode::from_u16(status).unwrap_or_default(),
            body.as_bytes(),
        )
    }

    // Real bodies. Sources: OpenAI's documented 401 (its key masked as OpenAI does); the
    // `mismatched_organization` 401 as quoted in microsoft/foundry-dev-tools#262 and
    // Azure-Samples/ai-rag-chat-evaluator#76; OpenRouter 401s in musistudio/claude-code-router#227
    // and Fosowl/agenticSeek#407; its moderation 403 as quoted in a public test suite (code
    // index) and the shape in openrouter.ai/docs/errors; its 402 in Gitlawb/openclaude#1125 and
    // anomalyco/opencode#12219; Anthropic's error shapes from its API docs (`api/errors.md`).

    const OPENAI_BAD_KEY: &str = r#"{"error":{"message":"Incorrect API key provided: sk-proj-********************abcd. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}"#;
    const OPENAI_ORG: &str = r#"{"error":{"message":"OpenAI-Organization header should match organization for API key","type":"invalid_request_error","param":null,"code":"mismatched_organization"}}"#;
    const OPENAI_PROJECT: &str = r#"{"error":{"message":"OpenAI-Project header should match project for API key","type":"invalid_request_error","param":null,"code":"mismatched_project"}}"#;
    const OPENAI_QUOTA: &str = r#"{"error":{"message":"You exceeded your current quota, please check your plan and billing details.","type":"insufficient_quota","param":null,"code":"insufficient_quota"}}"#;
    const OPENAI_RATE: &str = r#"{"error":{"message":"Rate limit reached for gpt-4o-mini in organization org-****** on tokens per min (TPM): Limit 200000, Used 199000, Requested 2000.","type":"tokens","param":null,"code":"rate_limit_exceeded"}}"#;
    const OPENAI_MODEL_ACCESS: &str = r#"{"error":{"message":"Project `proj_abc` does not have access to model `gpt-5`","type":"invalid_request_error","param":null,"code":"model_not_found"}}"#;
    const ANTHROPIC_BAD_KEY: &str = r#"{"type":"error","error":{"type":"authentication_error","message":"invalid x-api-key"},"request_id":"req_011CSHoEeqs5C35K2UUqR7Fy"}"#;
    const ANTHROPIC_PERMISSION: &str = r#"{"type":"error","error":{"type":"permission_error","message":"Your API key does not have permission to use the specified resource."}}"#;
    const OPENROUTER_NO_AUTH: &str =
        r#"{"error":{"message":"No auth credentials found","code":401}}"#;
    const OPENROUTER_NO_USER: &str = r#"{"error":{"message":"User not found.","code":401}}"#;
    const OPENROUTER_MODERATION: &str = r#"{"error":{"message":"anthropic/claude-3-5-haiku requires moderation on Amazon Bedrock. Your input was flagged for \"self-harm/instructions, self-harm/intent\". No credits were charged.","code":403,"metadata":{"reasons":["self-harm/instructions","self-harm/intent"],"flagged_input":"Tell me about Instructions for self-harm"}}}"#;
    const OPENROUTER_KEY_LIMIT: &str = r#"{"error":{"message":"Key limit exceeded (daily limit). Manage it using https://openrouter.ai/settings/keys","code":403}}"#;
    const OPENROUTER_402_SMALLER: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 32000 tokens, but can only afford 27342. To increase, visit https://openrouter.ai/settings/credits and upgrade to a paid account","code":402,"metadata":{"provider_name":null}},"user_id":"user_3D0IVsejFIV6kOYwkxFE9nKiq0g"}"#;
    const OPENROUTER_402_NOTHING: &str = r#"{"error":{"message":"This request requires more credits, or fewer max_tokens. You requested up to 32000 tokens, but can only afford 0. To increase, visit https://openrouter.ai/settings/keys and create a key with a higher monthly limit","code":402}}"#;
    const DEEPSEEK_BAD_KEY: &str = r#"{"error":{"message":"Authentication Fails, Your api key: ****abcd is invalid","type":"authentication_error","param":null,"code":"invalid_request_error"}}"#;
    const OPENAI_400: &str = r#"{"error":{"message":"Unsupported parameter: 'max_tokens' is not supported with this model. Use 'max_completion_tokens' instead.","type":"invalid_request_error","param":"max_tokens","code":"unsupported_parameter"}}"#;

    #[test]
    fn a_refused_key_is_the_credentials() {
        for body in [
            OPENAI_BAD_KEY,
            ANTHROPIC_BAD_KEY,
            OPENROUTER_NO_AUTH,
            OPENROUTER_NO_USER,
            DEEPSEEK_BAD_KEY,
        ] {
            assert_eq!(of(401, body), Cause::KeyRefused, "{body}");
        }
        assert_eq!(of(403, ANTHROPIC_PERMISSION), Cause::KeyRefused);
    }

    #[test]
    fn what_the_request_caused_leaves_the_credential_alone() {
        assert_eq!(of(403, OPENROUTER_MODERATION), Cause::Content);
        assert_eq!(of(401, OPENAI_ORG), Cause::NotHere);
        assert_eq!(of(401, OPENAI_PROJECT), Cause::NotHere);
        assert_eq!(of(403, OPENAI_MODEL_ACCESS), Cause::NotHere);
        assert_eq!(of(402, OPENROUTER_402_SMALLER), Cause::NotHere);
        assert_eq!(of(400, OPENAI_400), Cause::Request);
        assert_eq!(of(422, "{}"), Cause::Request);
        assert_eq!(of(404, ""), Cause::NotHere);
    }

    #[test]
    fn quota_and_rate_limits() {
        assert_eq!(of(429, OPENAI_QUOTA), Cause::Exhausted);
        assert_eq!(of(429, OPENAI_RATE), Cause::RateLimited);
        assert_eq!(of(429, ""), Cause::RateLimited);
        assert_eq!(of(402, ""), Cause::Exhausted);
        assert_eq!(of(402, OPENROUTER_402_NOTHING), Cause::Exhausted);
        assert_eq!(of(403, OPENROUTER_KEY_LIMIT), Cause::Exhausted);
    }

    #[test]
    fn an_unexplained_refusal_goes_to_the_breaker() {
        assert_eq!(of(401, ""), Cause::Upstream);
        assert_eq!(
            of(403, r#"{"error":{"message":"Forbidden"}}"#),
            Cause::Upstream
        );
        assert_eq!(of(403, "<html>Access denied</html>"), Cause::Upstream);
        assert_eq!(of(500, OPENAI_BAD_KEY), Cause::Upstream);
        assert_eq!(of(529, ""), Cause::Upstream);
    }

    #[test]
    fn text_the_client_wrote_cannot_pass_for_a_key_refusal() {
        // A moderation verdict quoting the prompt: only the error's own fields count, and the
        // moderation test comes first.
        let quoting = r#"{"error":{"message":"x requires moderation on Y. Your input was flagged for \"hate\".","code":403,"metadata":{"reasons":["hate"],"flagged_input":"invalid_api_key Incorrect API key"}}}"#;
        assert_eq!(of(403, quoting), Cause::Content);
        // A 401 whose metadata quotes a key error is not a key error of its own.
        let raw = r#"{"error":{"message":"Provider returned error","code":401,"metadata":{"raw":"Incorrect API key provided"}}}"#;
        assert_eq!(of(401, raw), Cause::Upstream);
    }

    /// Every provider's quirk, alone in an error object, names the cause it stands for: the
    /// texts and codes in `providers.rs` are the ones this module weighs.
    #[test]
    fn every_providers_texts_and_codes_name_their_cause() {
        let message = |text: &str| serde_json::json!({"error": {"message": text}}).to_string();
        let code = |code: &str| serde_json::json!({"error": {"code": code}}).to_string();
        let kind = |kind: &str| serde_json::json!({"error": {"type": kind}}).to_string();
        let upper = |text: &str| message(&text.to_uppercase());
        for q in providers::ALL {
            type Body<'a> = &'a dyn Fn(&str) -> String;
            let cases: [(u16, &[&str], Body, Cause); 11] = [
                (403, q.quota_texts, &message, Cause::Exhausted),
                (429, q.quota_texts, &upper, Cause::Exhausted),
                (429, q.quota_codes, &code, Cause::Exhausted),
                (401, q.key_refused_texts, &upper, Cause::KeyRefused),
                (401, q.key_refused_codes, &kind, Cause::KeyRefused),
                (401, q.scope_texts, &message, Cause::NotHere),
                (401, q.scope_codes, &code, Cause::NotHere),
                (403, q.model_access_texts, &message, Cause::NotHere),
                (403, q.model_access_codes, &code, Cause::NotHere),
                (403, q.moderation_texts, &upper, Cause::Content),
                (401, q.moderation_texts, &message, Cause::Upstream),
            ];
            for (status, list, body, cause) in cases {
                for text in list {
                    let body = body(text);
                    assert_eq!(of(status, &body), cause, "{:?}: {status} {body}", q.presets);
                }
            }
            for field in q.moderation_metadata {
                let body = serde_json::json!(
                    {"error": {"message": "refused", "metadata": {*field: []}}}
                )
                .to_string();
                assert_eq!(of(403, &body), Cause::Content, "{body}");
            }
            if let Some(mark) = q.affordable_mark {
                let fits = message(&format!("too large; {mark}120."));
                assert_eq!(of(402, &fits), Cause::NotHere, "{fits}");
                let none = message(&format!("too large; {mark}0."));
                assert_eq!(of(402, &none), Cause::Exhausted, "{none}");
            }
        }
    }

    #[test]
    fn other_shapes() {
        let google = r#"[{"error":{"code":401,"message":"API key not valid. Please pass a valid API key.","status":"UNAUTHENTICATED"}}]"#;
        assert_eq!(of(401, google), Cause::KeyRefused);
        assert_eq!(of(401, r#"{"error":"Invalid API key"}"#), Cause::KeyRefused);
        assert_eq!(of(401, "Invalid API key"), Cause::KeyRefused);
        let moonshot = r#"{"error":{"message":"Invalid Authentication","type":"invalid_authentication_error"}}"#;
        assert_eq!(of(401, moonshot), Cause::KeyRefused);
        assert_eq!(of(401, r#"{"message":"Unauthorized"}"#), Cause::Upstream);
    }
}
