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
    if code == 400 {
        // Google answers a bad key with a 400; only its structured reason is believed here.
        return if ErrorFields::parse(body).reason_says_key_refused() {
            Cause::KeyRefused
        } else {
            Cause::Request
        };
    }
    if !matches!(code, 401 | 402 | 403 | 429) {
        return match code {
            // Another candidate may have the model, or answer in time.
            404 | 408 | 409 => Cause::NotHere,
            _ => Cause::Request,
        };
    }
    let err = ErrorFields::parse(body);
    match code {
        // Google's 429s all say "exceeded your current quota"; which quota is in the details.
        429 if err.quota_ids_have(providers::every(|q| q.daily_quota_ids)) => Cause::Exhausted,
        429 if err.quota_zero || err.message_has(providers::every(|q| q.no_allowance_texts)) => {
            Cause::NotHere
        }
        429 if !err.quota_ids.is_empty() || err.retry_delay_ms.is_some() => Cause::RateLimited,
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
            } else if code == 403
                && err.code_or_kind_is(providers::every(|q| q.permission_statuses))
            {
                // Google's PERMISSION_DENIED that names no key: this model or this API is not
                // the key's to use (a tuned model of another project, the API not enabled for
                // the key's project). Another candidate may serve.
                Cause::NotHere
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
    /// Google's `details[]` (google.rpc): every `ErrorInfo.reason`, lower-cased.
    reasons: Vec<String>,
    /// Every `QuotaFailure.violations[].quotaId`, lower-cased.
    quota_ids: Vec<String>,
    /// A violated quota's `quotaValue` is `"0"`: no allowance at all.
    quota_zero: bool,
    /// `RetryInfo.retryDelay` in ms.
    retry_delay_ms: Option<i64>,
}

/// The most `details` entries read: Google sends two or three.
const MAX_DETAILS: usize = 16;

/// Fills `fields` from Google's `error.details` list: `ErrorInfo`, `QuotaFailure` and
/// `RetryInfo`, recognised by the end of their `@type`.
fn read_details(details: &Value, fields: &mut ErrorFields) {
    let Some(items) = details.as_array() else {
        return;
    };
    for d in items.iter().take(MAX_DETAILS) {
        let kind = d.get("@type").and_then(Value::as_str).unwrap_or("");
        if kind.ends_with("google.rpc.ErrorInfo") {
            if let Some(reason) = d.get("reason").and_then(Value::as_str) {
                fields.reasons.push(reason.to_lowercase());
            }
        } else if kind.ends_with("google.rpc.QuotaFailure") {
            let violations = d.get("violations").and_then(Value::as_array);
            for v in violations.into_iter().flatten().take(MAX_DETAILS) {
                if let Some(id) = v.get("quotaId").and_then(Value::as_str) {
                    fields.quota_ids.push(id.to_lowercase());
                }
                if v.get("quotaValue").and_then(Value::as_str) == Some("0") {
                    fields.quota_zero = true;
                }
            }
        } else if kind.ends_with("google.rpc.RetryInfo") {
            fields.retry_delay_ms = d
                .get("retryDelay")
                .and_then(Value::as_str)
                .and_then(parse_duration_ms);
        }
    }
}

/// A protobuf `Duration` in its JSON form (`"17s"`, `"0.5s"`, `"38.962214405s"`) in ms,
/// rounded up; `None` unless it is a non-negative number of seconds.
fn parse_duration_ms(text: &str) -> Option<i64> {
    let secs: f64 = text.trim().strip_suffix('s')?.parse().ok()?;
    if !secs.is_finite() || secs < 0.0 {
        return None;
    }
    Some((secs * 1000.0).ceil().min(i64::MAX as f64) as i64)
}

/// How long a 429's body asks to wait (Google's `RetryInfo.retryDelay`), in ms; `None` when it
/// does not say. Google sends no `Retry-After` header: this is where its delay is.
pub fn retry_delay_ms(body: &[u8]) -> Option<i64> {
    ErrorFields::parse(body).retry_delay_ms
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
                let mut fields = ErrorFields {
                    code: text(obj.get("code")),
                    kind,
                    message: text(obj.get("message")),
                    flagged: metadata.is_some_and(|m| {
                        providers::every(|q| q.moderation_metadata).any(|f| m.get(f).is_some())
                    }),
                    ..ErrorFields::default()
                };
                if let Some(details) = obj.get("details") {
                    read_details(details, &mut fields);
                }
                fields
            }
            Some(Value::String(s)) => ErrorFields {
                message: s.to_lowercase(),
                ..ErrorFields::default()
            },
            _ => ErrorFields {
                code: text(root.get("code")),
                kind: text(root.get("type")),
                message: text(root.get("message").or_else(|| root.get("detail"))),
                ..ErrorFields::default()
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
        self.reason_says_key_refused()
            || self.code_or_kind_is(providers::every(|q| q.key_refused_codes))
            || self.message_has(providers::every(|q| q.key_refused_texts))
    }

    /// Google's `ErrorInfo.reason` says the key is refused.
    fn reason_says_key_refused(&self) -> bool {
        providers::every(|q| q.key_refused_reasons).any(|r| self.reasons.iter().any(|x| x == r))
    }

    /// A violated quota's id contains one of `marks`.
    fn quota_ids_have(&self, marks: impl IntoIterator<Item = &'static str>) -> bool {
        marks
            .into_iter()
            .any(|m| self.quota_ids.iter().any(|id| id.contains(m)))
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
            let reason = |reason: &str| {
                serde_json::json!({"error": {"details": [
                    {"@type": "type.googleapis.com/google.rpc.ErrorInfo", "reason": reason.to_uppercase()}
                ]}})
                .to_string()
            };
            let quota_id = |id: &str| {
                serde_json::json!({"error": {"details": [
                    {"@type": "type.googleapis.com/google.rpc.QuotaFailure", "violations": [{"quotaId": format!("Generate{id}Quota")}]}
                ]}})
                .to_string()
            };
            let cases: [(u16, &[&str], Body, Cause); 17] = [
                (400, q.key_refused_reasons, &reason, Cause::KeyRefused),
                (403, q.key_refused_reasons, &reason, Cause::KeyRefused),
                (429, q.daily_quota_ids, &quota_id, Cause::Exhausted),
                (429, q.no_allowance_texts, &message, Cause::NotHere),
                (403, q.permission_statuses, &kind, Cause::NotHere),
                (401, q.permission_statuses, &kind, Cause::Upstream),
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

    fn sample(name: &str) -> &'static str {
        keyplane_testkit::samples::text(name)
    }

    /// Google's refusals, from the recorded bodies in testkit/samples (SOURCES.md).
    #[test]
    fn googles_refusals_by_their_details() {
        // A bad key is a 400 with ErrorInfo API_KEY_INVALID: the credential's, not the request's.
        assert_eq!(
            of(400, sample("gemini-error-400-api-key-invalid.json")),
            Cause::KeyRefused
        );
        // On a 400 only the structured reason counts: a message naming a bad key could be
        // quoting the request.
        assert_eq!(
            of(
                400,
                r#"{"error":{"code":400,"message":"Invalid value at 'contents[0]': API key not valid","status":"INVALID_ARGUMENT"}}"#
            ),
            Cause::Request
        );
        assert_eq!(
            of(403, sample("gemini-error-403-consumer-suspended.json")),
            Cause::KeyRefused
        );
        assert_eq!(
            of(403, sample("gemini-error-403-leaked-key.json")),
            Cause::KeyRefused
        );
        // PERMISSION_DENIED that names no key: not this key's model or API; another may serve.
        for body in [
            r#"{"error":{"code":403,"message":"You do not have permission to access tuned model tunedModels/x.","status":"PERMISSION_DENIED"}}"#,
            r#"{"error":{"code":403,"message":"Generative Language API has not been used in project 411082643095 before or it is disabled.","status":"PERMISSION_DENIED","details":[{"@type":"type.googleapis.com/google.rpc.ErrorInfo","reason":"SERVICE_DISABLED","domain":"googleapis.com"}]}}"#,
        ] {
            assert_eq!(of(403, body), Cause::NotHere, "{body}");
        }
        // Every Google 429 says "exceeded your current quota": the quota ids decide.
        assert_eq!(
            of(429, sample("gemini-error-429-per-minute.json")),
            Cause::RateLimited
        );
        assert_eq!(
            of(429, sample("gemini-error-429-per-day.json")),
            Cause::Exhausted
        );
        assert_eq!(
            of(429, sample("gemini-error-429-no-allowance.json")),
            Cause::NotHere
        );
        // Without details the words still count (google/python-genai#1427: tier 3, daily).
        assert_eq!(
            of(
                429,
                r#"{"error":{"code":429,"message":"You exceeded your current quota, please check your plan and billing details.","status":"RESOURCE_EXHAUSTED","details":[{"@type":"type.googleapis.com/google.rpc.Help","links":[]}]}}"#
            ),
            Cause::Exhausted
        );
        assert_eq!(
            of(
                429,
                r#"{"error":{"code":429,"message":"Resource has been exhausted (e.g. check quota).","status":"RESOURCE_EXHAUSTED"}}"#
            ),
            Cause::RateLimited
        );
        assert_eq!(
            of(503, sample("gemini-error-429-per-minute.json")),
            Cause::Upstream
        );
    }

    #[test]
    fn googles_retry_delay_is_read_from_the_body() {
        assert_eq!(
            retry_delay_ms(sample("gemini-error-429-per-minute.json").as_bytes()),
            Some(26_000)
        );
        let with = |delay: &str| {
            format!(
                r#"{{"error":{{"code":429,"status":"RESOURCE_EXHAUSTED","details":[{{"@type":"type.googleapis.com/google.rpc.RetryInfo","retryDelay":"{delay}"}}]}}}}"#
            )
        };
        assert_eq!(retry_delay_ms(with("0.5s").as_bytes()), Some(500));
        assert_eq!(
            retry_delay_ms(with("38.962214405s").as_bytes()),
            Some(38_963)
        );
        for bad in ["17", "-1s", "s", "soon", "NaNs"] {
            assert_eq!(retry_delay_ms(with(bad).as_bytes()), None, "{bad}");
        }
        assert_eq!(
            retry_delay_ms(sample("gemini-error-429-per-day.json").as_bytes()),
            None
        );
        assert_eq!(retry_delay_ms(b"not json"), None);
        // A delay alone makes a 429 a rate limit, whatever its words.
        assert_eq!(
            of(
                429,
                &with("3s").replace(
                    r#""code":429"#,
                    r#""code":429,"message":"exceeded your current quota""#
                )
            ),
            Cause::RateLimited
        );
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
