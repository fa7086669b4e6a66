//! Provider quirks: the wire facts that differ between upstreams of one protocol, in one place,
//! one entry per provider, keyed by the preset the provider was added with (`--preset`, the
//! control plane's `presets.json`; pushed as `RouteProvider.preset`).
//!
//! What an entry holds, and who reads it:
//! - the `anthropic-version` an Anthropic-protocol upstream gets when the client chose none
//!   (`proxy.rs`, `upstream_request`), from [`Quirks::anthropic_version`] of the candidate's
//!   provider;
//! - the error `code`/`type` values and message texts that say a credential is out of quota, its
//!   key refused, a scope or model not its own, or the prompt moderated (`attribution.rs`);
//! - the response headers that say when a rate limit resets (`health.rs`, `retry_wait_ms`).
//!
//! Error texts and rate-limit headers are matched against **every** entry, whatever the preset:
//! aggregators relay the errors and headers of the providers behind them (OpenRouter passes an
//! Anthropic "credit balance is too low" through), and a provider added without a preset (or with
//! one this data plane does not know yet) still needs its refusals told apart. A text belongs to
//! the provider that sends it so that its source is written next to it and a new provider is one
//! new entry. Texts are lower-case: `attribution.rs` lower-cases what it compares.
//!
//! Usage and reported-cost fields are read by each dialect's decoder (`protocol/`), not here.

/// The Messages API version sent to an Anthropic-protocol upstream when the client did not name
/// one: the version Anthropic's API reference and every Anthropic-compatible upstream accept.
pub const DEFAULT_ANTHROPIC_VERSION: &str = "2023-06-01";

/// How a rate-limit reset header writes its time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ResetFormat {
    /// A Go duration from now: `1s`, `6m0s`, `250ms`, `2m59.56s`.
    GoDuration,
    /// An RFC 3339 instant: `2025-06-01T12:00:30Z`.
    Rfc3339,
}

/// A response header that says when a rate limit resets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResetHeader {
    /// Lower-case, as `http::HeaderMap` looks names up.
    pub name: &'static str,
    pub format: ResetFormat,
}

/// One provider's quirks. Every list may be empty; [`Quirks::NONE`] has no quirk at all, and
/// entries spell out only what differs from it.
#[derive(Debug)]
pub struct Quirks {
    /// The presets this entry is for; empty for the entries that hold what many providers share.
    pub presets: &'static [&'static str],
    /// The `anthropic-version` to send when the client named none; `None`:
    /// [`DEFAULT_ANTHROPIC_VERSION`].
    pub anthropic_version: Option<&'static str>,
    /// Error `code` or `type` values meaning the account or key is out of quota or credit.
    pub quota_codes: &'static [&'static str],
    /// Error message texts meaning the same.
    pub quota_texts: &'static [&'static str],
    /// Error `code` or `type` values meaning the key itself is refused.
    pub key_refused_codes: &'static [&'static str],
    pub key_refused_texts: &'static [&'static str],
    /// Error `code` or `type` values meaning an organisation or project scope does not fit the key.
    pub scope_codes: &'static [&'static str],
    pub scope_texts: &'static [&'static str],
    /// The key works but may not use this model.
    pub model_access_codes: &'static [&'static str],
    pub model_access_texts: &'static [&'static str],
    /// Message texts of a moderation refusal of the prompt.
    pub moderation_texts: &'static [&'static str],
    /// Fields of the error object's `metadata` present only on a moderation refusal.
    pub moderation_metadata: &'static [&'static str],
    /// The text just before N in a "this request is too large, N tokens are affordable" refusal.
    pub affordable_mark: Option<&'static str>,
    /// Headers saying when a rate limit resets.
    pub rate_limit_resets: &'static [ResetHeader],
    /// Google `ErrorInfo.reason` values (`error.details[]`) meaning the key itself is refused.
    /// A structured field, so it is believed on a 400 too, where message texts are not (a 400's
    /// message may quote the request).
    pub key_refused_reasons: &'static [&'static str],
    /// Parts of a Google `QuotaFailure` violation's `quotaId` naming a quota that lasts until
    /// the day ends (`GenerateRequestsPerDayPerProjectPerModel-FreeTier`): out of quota, not a
    /// short rate limit.
    pub daily_quota_ids: &'static [&'static str],
    /// Message texts of a 429 saying the account has no allowance at all for this model (a free
    /// tier without it): another candidate may serve, waiting will not help.
    pub no_allowance_texts: &'static [&'static str],
    /// Error statuses of a 403 that, when nothing in it names the key, mean the key may not use
    /// this model or method (Google's `PERMISSION_DENIED`): another candidate may serve.
    pub permission_statuses: &'static [&'static str],
}

impl Quirks {
    /// No quirks: what a provider without a (known) preset has of its own.
    pub const NONE: Quirks = Quirks {
        presets: &[],
        anthropic_version: None,
        quota_codes: &[],
        quota_texts: &[],
        key_refused_codes: &[],
        key_refused_texts: &[],
        scope_codes: &[],
        scope_texts: &[],
        model_access_codes: &[],
        model_access_texts: &[],
        moderation_texts: &[],
        moderation_metadata: &[],
        affordable_mark: None,
        rate_limit_resets: &[],
        key_refused_reasons: &[],
        daily_quota_ids: &[],
        no_allowance_texts: &[],
        permission_statuses: &[],
    };

    /// The `anthropic-version` header value for a request whose client named none.
    pub fn anthropic_version(&self) -> &'static str {
        self.anthropic_version.unwrap_or(DEFAULT_ANTHROPIC_VERSION)
    }
}

/// What several providers say alike: key refusals worded the same way by many
/// OpenAI-compatible upstreams, and deactivated accounts.
static COMMON: Quirks = Quirks {
    key_refused_texts: &[
        "invalid api key",
        "api key is invalid",
        "has been deactivated",
        "has been disabled",
        "has been revoked",
    ],
    ..Quirks::NONE
};

/// OpenAI. Sources: OpenAI's error-code guide (401 `invalid_api_key` "Incorrect API key
/// provided", 429 `insufficient_quota` "You exceeded your current quota"), the
/// `mismatched_organization` 401 quoted in microsoft/foundry-dev-tools#262, the model-access 404
/// ("Project … does not have access to model …"), and its rate-limit headers
/// (`x-ratelimit-reset-requests` / `-tokens`, Go durations; docs "Rate limits").
static OPENAI: Quirks = Quirks {
    presets: &["openai"],
    quota_codes: &["insufficient_quota", "billing_hard_limit_reached"],
    quota_texts: &[
        "insufficient_quota",
        "exceeded your current quota",
        "billing_hard_limit",
    ],
    key_refused_codes: &["invalid_api_key", "account_deactivated"],
    key_refused_texts: &["incorrect api key"],
    scope_codes: &[
        "mismatched_organization",
        "mismatched_project",
        "no_such_organization",
        "no_such_project",
    ],
    scope_texts: &[
        "openai-organization header",
        "openai-project header",
        "no such organization",
        "no such project",
    ],
    model_access_codes: &["model_not_found"],
    model_access_texts: &["does not have access to model"],
    rate_limit_resets: &[
        ResetHeader {
            name: "x-ratelimit-reset-requests",
            format: ResetFormat::GoDuration,
        },
        ResetHeader {
            name: "x-ratelimit-reset-tokens",
            format: ResetFormat::GoDuration,
        },
    ],
    ..Quirks::NONE
};

/// Anthropic. Sources: its API reference (`anthropic-version: 2023-06-01`; errors
/// `authentication_error` "invalid x-api-key", `permission_error`; "Your credit balance is too
/// low"), and its rate-limit headers (`anthropic-ratelimit-*-reset`, RFC 3339; docs "Rate
/// limits"). See docs/PROVIDERS.md.
static ANTHROPIC: Quirks = Quirks {
    presets: &["anthropic"],
    anthropic_version: Some(DEFAULT_ANTHROPIC_VERSION),
    quota_texts: &["credit balance is too low"],
    key_refused_codes: &["authentication_error"],
    key_refused_texts: &["invalid x-api-key", "your api key does not have permission"],
    rate_limit_resets: &[
        ResetHeader {
            name: "anthropic-ratelimit-requests-reset",
            format: ResetFormat::Rfc3339,
        },
        ResetHeader {
            name: "anthropic-ratelimit-tokens-reset",
            format: ResetFormat::Rfc3339,
        },
        ResetHeader {
            name: "anthropic-ratelimit-input-tokens-reset",
            format: ResetFormat::Rfc3339,
        },
        ResetHeader {
            name: "anthropic-ratelimit-output-tokens-reset",
            format: ResetFormat::Rfc3339,
        },
    ],
    ..Quirks::NONE
};

/// OpenRouter. Sources: openrouter.ai/docs/errors (402 credits, 403 moderation with
/// `metadata.reasons` / `flagged_input`), the 401s quoted in musistudio/claude-code-router#227
/// and Fosowl/agenticSeek#407, the 402 "can only afford N" quoted in Gitlawb/openclaude#1125,
/// and its key spend limit ("Key limit exceeded (daily limit)").
static OPENROUTER: Quirks = Quirks {
    presets: &["openrouter"],
    quota_texts: &["insufficient credits", "key limit exceeded"],
    key_refused_texts: &["no auth credentials", "user not found"],
    moderation_texts: &["requires moderation", "input was flagged"],
    moderation_metadata: &["reasons", "flagged_input"],
    affordable_mark: Some("can only afford "),
    ..Quirks::NONE
};

/// DeepSeek: `authentication_error` "Authentication Fails, Your api key: ****abcd is invalid".
static DEEPSEEK: Quirks = Quirks {
    presets: &["deepseek"],
    key_refused_codes: &["authentication_error"],
    key_refused_texts: &["authentication fails"],
    ..Quirks::NONE
};

/// Groq and Together answer a bad key with OpenAI's `invalid_api_key`.
static GROQ_TOGETHER: Quirks = Quirks {
    presets: &["groq", "together"],
    key_refused_codes: &["invalid_api_key"],
    ..Quirks::NONE
};

/// Moonshot (Kimi): `invalid_authentication_error`.
static MOONSHOT: Quirks = Quirks {
    presets: &["moonshot"],
    key_refused_codes: &["invalid_authentication_error"],
    ..Quirks::NONE
};

/// Google's Gemini API, native (`gemini`) and behind its OpenAI-compatible endpoint
/// (`gemini-openai`). Errors are `{"error": {code, message, status, details}}` (a list of them
/// on a stream), with google.rpc details: `ErrorInfo.reason`, `QuotaFailure.violations[].quotaId`
/// and `quotaValue`, `RetryInfo.retryDelay` (read by `attribution::retry_delay_ms`; Google sends
/// no rate-limit header). Sources, in testkit/samples (SOURCES.md): a bad key is a 400
/// `INVALID_ARGUMENT` "API key not valid" with reason `API_KEY_INVALID` (also "API Key not
/// found", google-gemini/gemini-cli#25198); a suspended key a 403 `CONSUMER_SUSPENDED`; a leaked
/// one a 403 "Your API key was reported as leaked"; every 429 says "You exceeded your current
/// quota, please check your plan and billing details", per minute (with a `RetryInfo`) and per
/// day alike, so the quota ids decide; "limit: 0" when the free tier does not include the model.
static GEMINI: Quirks = Quirks {
    presets: &["gemini", "gemini-openai"],
    key_refused_codes: &["unauthenticated"],
    key_refused_texts: &[
        "api key not valid",
        "api key not found",
        "api key expired",
        "api key was reported as leaked",
    ],
    key_refused_reasons: &[
        "api_key_invalid",
        "consumer_suspended",
        "api_key_service_blocked",
    ],
    daily_quota_ids: &["perday"],
    no_allowance_texts: &["limit: 0,"],
    permission_statuses: &["permission_denied"],
    ..Quirks::NONE
};

/// What a provider without a preset, or with one this data plane does not know, has of its own.
pub static NO_QUIRKS: Quirks = Quirks::NONE;

/// Every entry, the shared one first.
pub static ALL: &[&Quirks] = &[
    &COMMON,
    &OPENAI,
    &ANTHROPIC,
    &OPENROUTER,
    &DEEPSEEK,
    &GROQ_TOGETHER,
    &MOONSHOT,
    &GEMINI,
];

/// The quirks of a provider added with `preset` (empty: none); [`NO_QUIRKS`] for no preset or
/// one this data plane does not know.
pub fn for_preset(preset: &str) -> &'static Quirks {
    if preset.is_empty() {
        return &NO_QUIRKS;
    }
    ALL.iter()
        .find(|q| q.presets.contains(&preset))
        .copied()
        .unwrap_or(&NO_QUIRKS)
}

/// One list of every entry, in [`ALL`]'s order: `every(|q| q.quota_texts)`.
pub fn every(
    list: impl Fn(&'static Quirks) -> &'static [&'static str],
) -> impl Iterator<Item = &'static str> {
    ALL.iter().flat_map(move |q| list(q)).copied()
}

/// Every entry's rate-limit reset headers.
pub fn rate_limit_resets() -> impl Iterator<Item = &'static ResetHeader> {
    ALL.iter().flat_map(|q| q.rate_limit_resets)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_preset_finds_its_entry_and_others_find_none() {
        assert!(std::ptr::eq(for_preset("openai"), &OPENAI));
        assert!(std::ptr::eq(for_preset("together"), &GROQ_TOGETHER));
        assert!(std::ptr::eq(for_preset("groq"), &GROQ_TOGETHER));
        for unknown in ["", "no-such-preset", "OpenAI"] {
            assert!(std::ptr::eq(for_preset(unknown), &NO_QUIRKS), "{unknown}");
        }
        // A preset with no quirks of its own (mistral) has none, not another provider's.
        assert!(std::ptr::eq(for_preset("mistral"), &NO_QUIRKS));
    }

    #[test]
    fn every_preset_named_here_is_one_the_control_plane_knows() {
        // The preset names are the control plane's; a misspelt one here would never match.
        let presets: serde_json::Value =
            serde_json::from_str(include_str!("../../control/src/catalog_sync/presets.json"))
                .unwrap();
        for q in ALL {
            for p in q.presets {
                assert!(presets.get(p).is_some(), "{p} is not a preset");
            }
        }
    }

    #[test]
    fn anthropic_version_defaults_and_an_entry_may_set_its_own() {
        assert_eq!(Quirks::NONE.anthropic_version(), "2023-06-01");
        assert_eq!(for_preset("anthropic").anthropic_version(), "2023-06-01");
        const PINNED: Quirks = Quirks {
            anthropic_version: Some("2099-01-01"),
            ..Quirks::NONE
        };
        assert_eq!(PINNED.anthropic_version(), "2099-01-01");
    }

    #[test]
    fn texts_are_lower_case_and_headers_valid_names() {
        // attribution.rs compares lower-cased fields; an upper-case text would never match.
        let lists: [fn(&'static Quirks) -> &'static [&'static str]; 14] = [
            |q| q.key_refused_reasons,
            |q| q.daily_quota_ids,
            |q| q.no_allowance_texts,
            |q| q.permission_statuses,
            |q| q.quota_codes,
            |q| q.quota_texts,
            |q| q.key_refused_codes,
            |q| q.key_refused_texts,
            |q| q.scope_codes,
            |q| q.scope_texts,
            |q| q.model_access_codes,
            |q| q.model_access_texts,
            |q| q.moderation_texts,
            |q| q.moderation_metadata,
        ];
        for list in lists {
            for text in every(list) {
                assert_eq!(text, text.to_lowercase());
                assert!(!text.is_empty());
            }
        }
        for h in rate_limit_resets() {
            assert_eq!(
                http::HeaderName::from_static(h.name).as_str(),
                h.name,
                "header names are lower-case"
            );
        }
        assert!(
            rate_limit_resets().any(
                |h| h.name == "x-ratelimit-reset-tokens" && h.format == ResetFormat::GoDuration
            )
        );
        assert!(
            rate_limit_resets().any(|h| h.name == "anthropic-ratelimit-tokens-reset"
                && h.format == ResetFormat::Rfc3339)
        );
    }
}
