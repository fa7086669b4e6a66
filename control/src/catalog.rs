//! Providers, their credentials and the models they offer, with the validation of each.

use crate::creds::Secret;
use crate::error::{Error, Result, invalid};
use crate::money;
use crate::store::{self, CREDENTIALS, OFFERINGS, PROVIDERS, Store, composite, now_ms};
use serde::{Deserialize, Serialize};

/// The wire protocol an upstream speaks. Stored by its name (`as_str`), so records written
/// before a protocol was added still load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// OpenAI Chat Completions: `{base}/chat/completions`, Bearer auth.
    #[serde(rename = "openai")]
    Openai,
    /// Anthropic Messages: `{base}/v1/messages`, `x-api-key` auth.
    #[serde(rename = "anthropic")]
    Anthropic,
    /// OpenAI's Responses API: `{base}/responses` (the base URL ends in `/v1`), Bearer auth.
    #[serde(rename = "openai-responses")]
    OpenaiResponses,
    /// Google's Gemini API: the base URL has no path (`https://generativelanguage.googleapis.com`);
    /// the data plane calls `{base}/v1beta/models/{id}:generateContent` and its siblings, and the
    /// secret goes in `x-goog-api-key`.
    #[serde(rename = "gemini")]
    Gemini,
}

impl Protocol {
    /// Every protocol, in the order help and error texts list them.
    pub const ALL: [Protocol; 4] = [
        Protocol::Openai,
        Protocol::Anthropic,
        Protocol::OpenaiResponses,
        Protocol::Gemini,
    ];

    pub fn parse(text: &str) -> Result<Protocol> {
        let text = text.trim();
        Protocol::ALL
            .into_iter()
            .find(|p| p.as_str() == text)
            .ok_or_else(|| {
                let names: Vec<&str> = Protocol::ALL.iter().map(|p| p.as_str()).collect();
                invalid(format!(
                    "protocol {text:?} is not supported: use one of {}",
                    names.join(", ")
                ))
            })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Openai => "openai",
            Protocol::Anthropic => "anthropic",
            Protocol::OpenaiResponses => "openai-responses",
            Protocol::Gemini => "gemini",
        }
    }

    /// Whether the upstream takes its secret as `Authorization: Bearer` (OpenAI's APIs) rather
    /// than in a header of its own ([`Protocol::secret_header`]).
    pub fn bearer_auth(self) -> bool {
        match self {
            Protocol::Openai | Protocol::OpenaiResponses => true,
            Protocol::Anthropic | Protocol::Gemini => false,
        }
    }

    /// The header that carries the secret: `authorization` (as `Bearer …`), Anthropic's
    /// `x-api-key` or Google's `x-goog-api-key`. Google also takes `?key=`, never used: a URL
    /// ends up in logs.
    pub fn secret_header(self) -> http::HeaderName {
        match self {
            Protocol::Openai | Protocol::OpenaiResponses => http::header::AUTHORIZATION,
            Protocol::Anthropic => http::HeaderName::from_static("x-api-key"),
            Protocol::Gemini => http::HeaderName::from_static("x-goog-api-key"),
        }
    }
}

/// Refuses a base URL that cannot be right for `protocol`: a Gemini base URL ending in the API
/// version the gateway appends itself (`…/v1beta` would be called as `…/v1beta/v1beta/models/…`).
/// A path before it is fine (a proxy serving Gemini under a prefix).
fn check_protocol_base_url(protocol: Protocol, base_url: &str) -> Result<()> {
    if protocol == Protocol::Gemini {
        let path = base_url.trim_end_matches('/');
        if let Some(version) = ["/v1beta", "/v1", "/v1alpha"]
            .into_iter()
            .find(|v| path.ends_with(v))
        {
            return Err(invalid(format!(
                "a gemini base URL has no API version: the gateway appends /v1beta/models/{{id}}:generateContent itself; use {:?} without {version:?}",
                &path[..path.len() - version.len()]
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProviderRec {
    pub name: String,
    pub protocol: Protocol,
    pub base_url: String,
    pub created_at_ms: i64,
    /// Catalog adapter (`catalog_sync::ADAPTERS`); `None`: the catalog is not synced.
    #[serde(default)]
    pub catalog: Option<String>,
    /// The preset the provider was added with; also names its id → canonical mapping table.
    #[serde(default)]
    pub preset: Option<String>,
    /// Per-provider timeouts in ms; 0: the data plane's default.
    #[serde(default)]
    pub timeouts: Timeouts,
}

/// A provider's timeouts in ms and its body limit; 0 means the data plane's default.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeouts {
    #[serde(default)]
    pub connect_ms: u32,
    #[serde(default)]
    pub first_byte_ms: u32,
    #[serde(default)]
    pub idle_ms: u32,
    /// Largest non-streamed answer read from the provider, in bytes.
    #[serde(default)]
    pub max_body_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CredentialRec {
    pub id: String,
    pub provider: String,
    #[serde(default)]
    pub label: String,
    pub multiplier_ppm: u64,
    /// The upstream secret, sealed with the credential's id as associated data.
    pub secret_sealed: String,
    #[serde(default = "active")]
    pub state: String,
    #[serde(default)]
    pub state_since_ms: i64,
    pub created_at_ms: i64,
    /// Why the state was entered, as a node reported it.
    #[serde(default)]
    pub state_reason: String,
    /// For `cooldown` and `circuit_open`: when it ends.
    #[serde(default)]
    pub state_until_ms: i64,
    /// "", daily, weekly or monthly: when an `exhausted` state ends by itself.
    #[serde(default)]
    pub quota_resets: String,
}

fn check_quota_resets(text: &str) -> Result<&str> {
    let text = text.trim();
    if !matches!(text, "" | "daily" | "weekly" | "monthly") {
        return Err(invalid(format!(
            "quota reset {text:?} is not one of daily, weekly, monthly"
        )));
    }
    Ok(text)
}

fn check_label(text: &str) -> Result<&str> {
    let text = text.trim();
    if text.len() > 64 || text.chars().any(char::is_control) {
        return Err(invalid(
            "the label is invalid: use at most 64 characters, no control characters",
        ));
    }
    Ok(text)
}

/// A credential's cost multiplier (decimal; empty means 1) in parts per million.
fn check_multiplier(text: &str) -> Result<u64> {
    let ppm = if text.trim().is_empty() {
        money::SCALE
    } else {
        money::parse_micros(text).map_err(|e| invalid(format!("multiplier {text:?} {e}")))?
    };
    if ppm == 0 {
        return Err(invalid("multiplier must be greater than 0"));
    }
    Ok(ppm)
}

/// The state an operator's `credential disable` sets; no node may report it, nor replace it.
pub const DISABLED: &str = "disabled";

/// Health states a node may report (`active` clears).
pub const HEALTH_STATES: &[&str] = &["active", "cooldown", "circuit_open", "invalid", "exhausted"];

impl CredentialRec {
    /// The state as operators see it now: a cooldown or open circuit whose time has passed is
    /// `active` again (since its end).
    pub fn effective_state(&self, now_ms: i64) -> (&str, i64) {
        match self.state.as_str() {
            "cooldown" | "circuit_open" if self.state_until_ms <= now_ms => {
                ("active", self.state_until_ms)
            }
            "exhausted" if !self.quota_resets.is_empty() => {
                let reset = crate::period::period_start_ms(&self.quota_resets, now_ms);
                if reset > self.state_since_ms {
                    ("active", reset)
                } else {
                    ("exhausted", self.state_since_ms)
                }
            }
            s => (s, self.state_since_ms),
        }
    }
}

fn active() -> String {
    "active".to_string()
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OfferingRec {
    pub model: String,
    pub provider: String,
    pub upstream_model: String,
    pub input_micro_usd_per_mtok: u64,
    pub output_micro_usd_per_mtok: u64,
    #[serde(default)]
    pub cache_read_micro_usd_per_mtok: Option<u64>,
    #[serde(default)]
    pub cache_write_micro_usd_per_mtok: Option<u64>,
    #[serde(default = "usd")]
    pub currency: String,
    #[serde(default = "manual")]
    pub source: String,
    pub updated_at_ms: i64,
}

fn usd() -> String {
    "USD".to_string()
}

fn manual() -> String {
    "manual".to_string()
}

/// What `model set` asks for, before validation.
pub struct SetModel<'a> {
    pub model: &'a str,
    pub provider: &'a str,
    pub upstream_model: &'a str,
    pub input_usd_per_mtok: &'a str,
    pub output_usd_per_mtok: &'a str,
    /// Empty: cached input is priced as input.
    pub cache_read_usd_per_mtok: &'a str,
    pub cache_write_usd_per_mtok: &'a str,
}

/// How much of a caller's value an error message quotes.
const QUOTED_CHARS: usize = 64;

/// `value` quoted for an error message: in full when short, else its first [`QUOTED_CHARS`]
/// characters and its length, so that an oversized input is not echoed back whole.
pub(crate) fn quoted(value: &str) -> String {
    match value.char_indices().nth(QUOTED_CHARS) {
        None => format!("{value:?}"),
        Some((cut, _)) => format!("{:?}… ({} bytes)", &value[..cut], value.len()),
    }
}

/// The longest name of a provider, key, chain or node.
const MAX_NAME_BYTES: usize = 64;

/// The longest model name or upstream model id.
const MAX_MODEL_NAME_BYTES: usize = 256;

/// Names of providers and client keys: short, and safe in a URL path, a log and a table.
pub(crate) fn check_name(what: &str, name: &str) -> Result<()> {
    if name.len() > MAX_NAME_BYTES {
        return Err(invalid(format!(
            "{what} name is {} bytes; at most {MAX_NAME_BYTES} allowed",
            name.len()
        )));
    }
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    if name.is_empty() || !ok_chars || !name.as_bytes()[0].is_ascii_alphanumeric() {
        return Err(invalid(format!(
            "{what} name {name:?} is invalid: use 1 to {MAX_NAME_BYTES} letters, digits, '-', \
             '_' or '.', starting with a letter or digit"
        )));
    }
    Ok(())
}

/// Model names are freer (`deepseek/deepseek-chat`, `gpt-4o-mini:free`) but never contain
/// whitespace, control characters or the key separator.
fn check_model_name(what: &str, name: &str) -> Result<()> {
    if name.len() > MAX_MODEL_NAME_BYTES {
        return Err(invalid(format!(
            "{what} is {} bytes; at most {MAX_MODEL_NAME_BYTES} allowed",
            name.len()
        )));
    }
    if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(format!(
            "{what} {} is invalid: use 1 to {MAX_MODEL_NAME_BYTES} characters without spaces",
            quoted(name)
        )));
    }
    Ok(())
}

fn check_base_url(text: &str) -> Result<String> {
    let url = url::Url::parse(text.trim())
        .map_err(|e| invalid(format!("base URL {text:?} is not a valid URL: {e}")))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(invalid(format!(
            "base URL {text:?} must start with http:// or https://"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) {
        return Err(invalid(format!("base URL {text:?} has no host")));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid(format!(
            "base URL {text:?} must not have a query or a fragment"
        )));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid(
            "base URL must not carry credentials: add them with `credential add`",
        ));
    }
    Ok(url.as_str().trim_end_matches('/').to_string())
}

fn check_secret(secret: &str) -> Result<()> {
    if secret.is_empty() {
        return Err(invalid("the secret is empty"));
    }
    if secret.len() > 8192 {
        return Err(invalid("the secret is longer than 8192 bytes"));
    }
    if secret.chars().any(|c| c.is_control() || c.is_whitespace()) {
        // Never echo the secret itself, not even in an error.
        return Err(invalid(
            "the secret contains whitespace or control characters",
        ));
    }
    Ok(())
}

fn parse_price(what: &str, text: &str) -> Result<u64> {
    money::parse_micros(text).map_err(|e| {
        invalid(format!(
            "{what} price {text:?} {e}: give USD per million tokens, e.g. 0.15"
        ))
    })
}

/// What `provider set` changes: `None` leaves a field as it is; a timeout of 0 means the data
/// plane's default.
#[derive(Default, Clone, Copy)]
pub struct ProviderChange<'a> {
    pub name: &'a str,
    pub protocol: Option<&'a str>,
    pub base_url: Option<&'a str>,
    pub connect_ms: Option<u32>,
    pub first_byte_ms: Option<u32>,
    pub idle_ms: Option<u32>,
    pub max_body_bytes: Option<u64>,
}

/// What `provider add` asks for: explicit fields override the preset's.
#[derive(Default)]
pub struct AddProvider<'a> {
    pub name: &'a str,
    pub protocol: &'a str,
    pub base_url: &'a str,
    pub preset: &'a str,
    /// Empty: the preset's adapter (or none); `none`: no adapter even with a preset.
    pub catalog: &'a str,
    /// Per-provider timeouts; 0: the data plane's default.
    pub timeouts: Timeouts,
}

impl Store {
    pub fn add_provider(&self, name: &str, protocol: &str, base_url: &str) -> Result<ProviderRec> {
        self.add_provider_with(&AddProvider {
            name,
            protocol,
            base_url,
            ..AddProvider::default()
        })
    }

    pub fn add_provider_with<'a>(&self, req: &AddProvider<'a>) -> Result<ProviderRec> {
        let name = req.name;
        check_name("provider", name)?;
        let preset = match req.preset.trim() {
            "" => None,
            p => Some(crate::catalog_sync::presets::preset(p).ok_or_else(|| {
                invalid(format!(
                    "preset {p:?} is unknown: use one of {}",
                    crate::catalog_sync::presets::preset_names().join(", ")
                ))
            })?),
        };
        let pick = |given: &'a str, from_preset: Option<&'a str>| -> &'a str {
            if given.trim().is_empty() {
                from_preset.unwrap_or("")
            } else {
                given
            }
        };
        let protocol_text = pick(req.protocol, preset.map(|p| p.protocol.as_str()));
        if protocol_text.trim().is_empty() {
            return Err(invalid("give --protocol (or --preset)"));
        }
        let base_url_text = pick(req.base_url, preset.map(|p| p.base_url.as_str()));
        if base_url_text.trim().is_empty() {
            return Err(invalid("give --base-url (or --preset)"));
        }
        let protocol = Protocol::parse(protocol_text)?;
        let base_url = check_base_url(base_url_text)?;
        check_protocol_base_url(protocol, &base_url)?;
        let catalog = match pick(req.catalog, preset.map(|p| p.catalog.as_str())).trim() {
            "" | "none" => None,
            a if crate::catalog_sync::adapter_known(a) => Some(a.to_string()),
            a => {
                return Err(invalid(format!(
                    "catalog adapter {a:?} is unknown: use one of {} (or none)",
                    crate::catalog_sync::ADAPTERS.join(", ")
                )));
            }
        };
        let rec = ProviderRec {
            name: name.to_string(),
            protocol,
            base_url,
            created_at_ms: now_ms(),
            catalog,
            preset: preset.map(|_| req.preset.trim().to_string()),
            timeouts: req.timeouts,
        };
        let _guard = self.admin_guard();
        let swapped = self.providers.compare_and_swap(
            name,
            None as Option<&[u8]>,
            Some(store::encode(&rec)),
        )?;
        if swapped.is_err() {
            return Err(Error::AlreadyExists(format!(
                "provider {name:?} already exists"
            )));
        }
        Ok(rec)
    }

    pub fn provider(&self, name: &str) -> Result<Option<ProviderRec>> {
        store::get(&self.providers, PROVIDERS, name)
    }

    fn require_provider(&self, name: &str) -> Result<ProviderRec> {
        self.provider(name)?
            .ok_or_else(|| Error::NotFound(format!("provider {name:?} does not exist")))
    }

    pub fn providers(&self) -> Result<Vec<ProviderRec>> {
        store::scan(&self.providers, PROVIDERS, b"")
    }

    pub fn add_credential(
        &self,
        provider: &str,
        label: &str,
        multiplier: &str,
        secret: &Secret,
    ) -> Result<CredentialRec> {
        self.add_credential_with(provider, label, multiplier, secret, "")
    }

    /// `credential add` with `--quota-resets` (daily, weekly, monthly or empty).
    pub fn add_credential_with(
        &self,
        provider: &str,
        label: &str,
        multiplier: &str,
        secret: &Secret,
        quota_resets: &str,
    ) -> Result<CredentialRec> {
        let quota_resets = check_quota_resets(quota_resets)?;
        let label = check_label(label)?;
        let multiplier_ppm = check_multiplier(multiplier)?;
        check_secret(secret.expose())?;

        let _guard = self.admin_guard();
        self.require_provider(provider)?;
        if !label.is_empty()
            && self
                .credentials()?
                .iter()
                .any(|c| c.provider == provider && c.label == label)
        {
            return Err(Error::AlreadyExists(format!(
                "provider {provider:?} already has a credential labelled {label:?}"
            )));
        }
        let id = uuid::Uuid::now_v7().to_string();
        let now = now_ms();
        let rec = CredentialRec {
            secret_sealed: self.cipher.seal(&id, secret.expose().as_bytes())?,
            id: id.clone(),
            provider: provider.to_string(),
            label: label.to_string(),
            multiplier_ppm,
            state: active(),
            state_since_ms: now,
            created_at_ms: now,
            state_reason: String::new(),
            state_until_ms: 0,
            quota_resets: quota_resets.to_string(),
        };
        self.credentials
            .insert(id.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    /// Changes a provider's timeouts (`None`: unchanged).
    /// `provider set`: changes what is given, all or nothing; credentials, offerings and the
    /// synced catalog stay with the provider.
    pub fn set_provider(&self, change: &ProviderChange<'_>) -> Result<ProviderRec> {
        let ProviderChange {
            name,
            protocol,
            base_url,
            connect_ms,
            first_byte_ms,
            idle_ms,
            max_body_bytes,
        } = *change;
        // Validate before taking the lock: a refused change writes nothing.
        let protocol = protocol.map(Protocol::parse).transpose()?;
        let base_url = base_url.map(check_base_url).transpose()?;
        let _guard = self.admin_guard();
        let mut rec = self.require_provider(name)?;
        if let Some(p) = protocol {
            rec.protocol = p;
        }
        if let Some(url) = base_url {
            rec.base_url = url;
        }
        check_protocol_base_url(rec.protocol, &rec.base_url)?;
        if let Some(v) = connect_ms {
            rec.timeouts.connect_ms = v;
        }
        if let Some(v) = first_byte_ms {
            rec.timeouts.first_byte_ms = v;
        }
        if let Some(v) = idle_ms {
            rec.timeouts.idle_ms = v;
        }
        if let Some(v) = max_body_bytes {
            rec.timeouts.max_body_bytes = v;
        }
        self.providers.insert(name, store::encode(&rec))?;
        Ok(rec)
    }

    fn credential(&self, id: &str) -> Result<Option<CredentialRec>> {
        store::get(&self.credentials, CREDENTIALS, id)
    }

    /// `credential enable`: back to `active`, now, whatever a node reported.
    pub fn enable_credential(&self, id: &str) -> Result<CredentialRec> {
        let _guard = self.admin_guard();
        let mut rec = self
            .credential(id)?
            .ok_or_else(|| Error::NotFound(format!("no credential with id {id:?}")))?;
        rec.state = active();
        rec.state_since_ms = now_ms().max(rec.state_since_ms + 1);
        rec.state_reason = "enabled by an operator".to_string();
        rec.state_until_ms = 0;
        self.credentials
            .insert(id.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    /// `credential set`: a credential's multiplier, quota reset period or label (`None`:
    /// unchanged), checked as `credential add` checks them; all or nothing. Its secret, health
    /// and usage stay.
    pub fn set_credential(
        &self,
        id: &str,
        multiplier: Option<&str>,
        quota_resets: Option<&str>,
        label: Option<&str>,
    ) -> Result<CredentialRec> {
        let multiplier_ppm = multiplier.map(check_multiplier).transpose()?;
        let quota_resets = quota_resets.map(check_quota_resets).transpose()?;
        let label = label.map(check_label).transpose()?;
        let _guard = self.admin_guard();
        let mut rec = self
            .credential(id)?
            .ok_or_else(|| Error::NotFound(format!("no credential with id {id:?}")))?;
        if let Some(label) = label.filter(|l| !l.is_empty() && *l != rec.label)
            && self
                .credentials()?
                .iter()
                .any(|c| c.provider == rec.provider && c.label == label)
        {
            return Err(Error::AlreadyExists(format!(
                "provider {:?} already has a credential labelled {label:?}",
                rec.provider
            )));
        }
        if let Some(v) = multiplier_ppm {
            rec.multiplier_ppm = v;
        }
        if let Some(v) = quota_resets {
            rec.quota_resets = v.to_string();
        }
        if let Some(v) = label {
            rec.label = v.to_string();
        }
        self.credentials
            .insert(id.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    /// `credential disable`: out of every route table from now until `enable`, whatever a node
    /// reports meanwhile (a node with an older table may still report on it).
    pub fn disable_credential(&self, id: &str, reason: &str) -> Result<CredentialRec> {
        let reason = reason.trim();
        if reason.len() > 200 || reason.chars().any(char::is_control) {
            return Err(invalid(
                "the reason is invalid: use at most 200 characters, no control characters",
            ));
        }
        let _guard = self.admin_guard();
        let mut rec = self
            .credential(id)?
            .ok_or_else(|| Error::NotFound(format!("no credential with id {id:?}")))?;
        rec.state = DISABLED.to_string();
        rec.state_since_ms = now_ms().max(rec.state_since_ms + 1);
        rec.state_reason = if reason.is_empty() {
            "disabled by an operator".to_string()
        } else {
            reason.to_string()
        };
        rec.state_until_ms = 0;
        self.credentials
            .insert(id.as_bytes(), store::encode(&rec))?;
        Ok(rec)
    }

    /// A node's health report. Applied only if it is newer than the stored state (an operator's
    /// later `enable` wins over an older report) and the credential is not disabled (only an
    /// operator's `enable` ends that). Returns whether anything changed.
    pub fn apply_health(
        &self,
        id: &str,
        state: &str,
        since_ms: i64,
        until_ms: i64,
        reason: &str,
    ) -> Result<bool> {
        if !HEALTH_STATES.contains(&state) {
            return Err(invalid(format!("unknown credential state {state:?}")));
        }
        let _guard = self.admin_guard();
        let Some(mut rec) = self.credential(id)? else {
            return Ok(false);
        };
        if rec.state == DISABLED
            || since_ms <= rec.state_since_ms
            || (rec.state == state && rec.state_until_ms == until_ms)
        {
            return Ok(false);
        }
        rec.state = state.to_string();
        rec.state_since_ms = since_ms;
        rec.state_until_ms = until_ms;
        rec.state_reason = reason.chars().take(200).collect();
        self.credentials
            .insert(id.as_bytes(), store::encode(&rec))?;
        Ok(true)
    }

    pub fn credentials(&self) -> Result<Vec<CredentialRec>> {
        store::scan(&self.credentials, CREDENTIALS, b"")
    }

    pub fn credential_secret(&self, rec: &CredentialRec) -> Result<Secret> {
        let plain = self.cipher.open(&rec.id, &rec.secret_sealed)?;
        String::from_utf8(plain)
            .map(Secret::new)
            .map_err(|_| Error::Corrupt {
                tree: CREDENTIALS,
                detail: format!("credential {} has a secret that is not UTF-8", rec.id),
            })
    }

    pub fn set_model(&self, req: &SetModel<'_>) -> Result<OfferingRec> {
        check_model_name("model name", req.model)?;
        let upstream_model = if req.upstream_model.trim().is_empty() {
            req.model
        } else {
            req.upstream_model.trim()
        };
        check_model_name("upstream model id", upstream_model)?;
        let input = parse_price("input", req.input_usd_per_mtok)?;
        let output = parse_price("output", req.output_usd_per_mtok)?;
        let optional = |what, text: &str| {
            if text.trim().is_empty() {
                Ok(None)
            } else {
                parse_price(what, text).map(Some)
            }
        };
        let cache_read = optional("cache read", req.cache_read_usd_per_mtok)?;
        let cache_write = optional("cache write", req.cache_write_usd_per_mtok)?;

        let _guard = self.admin_guard();
        self.require_provider(req.provider)?;
        let rec = OfferingRec {
            model: req.model.to_string(),
            provider: req.provider.to_string(),
            upstream_model: upstream_model.to_string(),
            input_micro_usd_per_mtok: input,
            output_micro_usd_per_mtok: output,
            cache_read_micro_usd_per_mtok: cache_read,
            cache_write_micro_usd_per_mtok: cache_write,
            currency: usd(),
            source: manual(),
            updated_at_ms: now_ms(),
        };
        self.offerings
            .insert(composite(&[req.model, req.provider]), store::encode(&rec))?;
        Ok(rec)
    }

    /// Every offering, or those of one client-facing model, ordered by model then provider.
    pub fn offerings(&self, model: Option<&str>) -> Result<Vec<OfferingRec>> {
        match model {
            Some(model) => {
                let mut prefix = model.as_bytes().to_vec();
                prefix.push(store::SEP);
                store::scan(&self.offerings, OFFERINGS, &prefix)
            }
            None => store::scan(&self.offerings, OFFERINGS, b""),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::open_temp;

    fn secret(s: &str) -> Secret {
        Secret::new(s.to_string())
    }

    #[test]
    fn provider_validation() {
        let (_d, store) = open_temp();
        let p = store
            .add_provider("openrouter", "openai", "https://openrouter.ai/api/v1/")
            .unwrap();
        assert_eq!(p.base_url, "https://openrouter.ai/api/v1");
        assert!(matches!(
            store.add_provider("openrouter", "openai", "https://x.example/v1"),
            Err(Error::AlreadyExists(_))
        ));
        for (name, proto, url) in [
            ("bad name", "openai", "http://x"),
            ("", "openai", "http://x"),
            ("ok", "grpc", "http://x"),
            ("ok", "openai", "ftp://x"),
            ("ok", "openai", "not a url"),
            ("ok", "openai", "http://x/v1?q=1"),
            ("ok", "openai", "http://user:pw@x/v1"),
        ] {
            assert!(
                matches!(
                    store.add_provider(name, proto, url),
                    Err(Error::InvalidArgument(_))
                ),
                "{name} {proto} {url}"
            );
        }
        assert_eq!(store.providers().unwrap().len(), 1);
    }

    #[test]
    fn protocols_parse_print_and_store_by_name() {
        for p in Protocol::ALL {
            assert_eq!(Protocol::parse(p.as_str()).unwrap(), p);
            assert_eq!(
                serde_json::to_string(&p).unwrap(),
                format!("\"{}\"", p.as_str())
            );
        }
        assert_eq!(
            Protocol::parse(" openai-responses ").unwrap(),
            Protocol::OpenaiResponses
        );
        assert!(Protocol::OpenaiResponses.bearer_auth());
        assert!(!Protocol::Anthropic.bearer_auth());
        let Err(Error::InvalidArgument(msg)) = Protocol::parse("responses") else {
            panic!("an unknown protocol is refused")
        };
        assert!(
            msg.contains("openai, anthropic, openai-responses, gemini"),
            "the refusal names every protocol: {msg}"
        );
        assert!(!Protocol::Gemini.bearer_auth());
        assert_eq!(Protocol::Gemini.secret_header(), "x-goog-api-key");
        assert_eq!(Protocol::Anthropic.secret_header(), "x-api-key");
        assert_eq!(Protocol::Openai.secret_header(), "authorization");

        // A record stored before `openai-responses` existed still loads, and a new one is
        // stored under the protocol's own name.
        let old = br#"{"name":"p","protocol":"anthropic","base_url":"https://api.anthropic.com","created_at_ms":1}"#;
        let rec: ProviderRec = crate::store::decode(PROVIDERS, old).unwrap();
        assert_eq!(rec.protocol, Protocol::Anthropic);
        let (_d, store) = open_temp();
        store
            .add_provider("r", "openai-responses", "https://api.openai.com/v1")
            .unwrap();
        let raw = store.providers.get("r").unwrap().unwrap();
        assert!(
            std::str::from_utf8(&raw)
                .unwrap()
                .contains(r#""protocol":"openai-responses""#)
        );
        assert_eq!(
            store.provider("r").unwrap().unwrap().protocol,
            Protocol::OpenaiResponses
        );
    }

    #[test]
    fn a_gemini_base_url_carries_no_api_version() {
        let (_d, store) = open_temp();
        let rec = store
            .add_provider("g", "gemini", "https://generativelanguage.googleapis.com/")
            .unwrap();
        assert_eq!(rec.protocol, Protocol::Gemini);
        assert_eq!(rec.base_url, "https://generativelanguage.googleapis.com");
        // A proxy serving Gemini under a prefix is fine.
        store
            .add_provider("z", "gemini", "https://zenmux.ai/api/vertex-ai")
            .unwrap();
        for url in [
            "https://generativelanguage.googleapis.com/v1beta",
            "https://generativelanguage.googleapis.com/v1beta/",
            "https://generativelanguage.googleapis.com/v1",
        ] {
            let Err(Error::InvalidArgument(msg)) = store.add_provider("bad", "gemini", url) else {
                panic!("{url} is refused")
            };
            assert!(
                msg.contains("\"https://generativelanguage.googleapis.com\""),
                "the refusal names the URL to use: {msg}"
            );
        }
        // An OpenAI-protocol URL may end in /v1beta (Google's OpenAI-compatible layer).
        store
            .add_provider(
                "o",
                "openai",
                "https://generativelanguage.googleapis.com/v1beta/openai",
            )
            .unwrap();
        // Moving a provider to gemini checks the URL it keeps; nothing is written when refused.
        store
            .add_provider("m", "openai", "https://llm.example/v1")
            .unwrap();
        assert!(matches!(
            store.set_provider(&ProviderChange {
                name: "m",
                protocol: Some("gemini"),
                ..ProviderChange::default()
            }),
            Err(Error::InvalidArgument(_))
        ));
        assert_eq!(
            store.provider("m").unwrap().unwrap().protocol,
            Protocol::Openai
        );
        let moved = store
            .set_provider(&ProviderChange {
                name: "m",
                protocol: Some("gemini"),
                base_url: Some("https://llm.example"),
                ..ProviderChange::default()
            })
            .unwrap();
        assert_eq!(moved.protocol, Protocol::Gemini);
    }

    #[test]
    fn provider_set_changes_what_is_given_or_nothing() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "https://api.openai.com/v1")
            .unwrap();
        store.add_credential("p", "", "", &secret("sk-1")).unwrap();
        let rec = store
            .set_provider(&ProviderChange {
                name: "p",
                protocol: Some("openai-responses"),
                idle_ms: Some(5),
                ..ProviderChange::default()
            })
            .unwrap();
        assert_eq!(rec.protocol, Protocol::OpenaiResponses);
        assert_eq!(rec.base_url, "https://api.openai.com/v1", "unchanged");
        assert_eq!(rec.timeouts.idle_ms, 5);
        let rec = store
            .set_provider(&ProviderChange {
                name: "p",
                base_url: Some("https://gateway.example/v1/"),
                ..ProviderChange::default()
            })
            .unwrap();
        assert_eq!(rec.base_url, "https://gateway.example/v1");
        assert_eq!(rec.protocol, Protocol::OpenaiResponses, "unchanged");

        // A refused change writes nothing, not even the valid parts given with it.
        for (protocol, base_url) in [(Some("grpc"), None), (None, Some("ftp://x"))] {
            assert!(matches!(
                store.set_provider(&ProviderChange {
                    name: "p",
                    protocol,
                    base_url,
                    idle_ms: Some(9),
                    ..ProviderChange::default()
                }),
                Err(Error::InvalidArgument(_))
            ));
        }
        let stored = store.provider("p").unwrap().unwrap();
        assert_eq!(stored.timeouts.idle_ms, 5);
        assert_eq!(stored.base_url, "https://gateway.example/v1");
        assert!(matches!(
            store.set_provider(&ProviderChange {
                name: "nope",
                protocol: Some("openai"),
                ..ProviderChange::default()
            }),
            Err(Error::NotFound(_))
        ));
        assert_eq!(store.credentials().unwrap().len(), 1, "credentials stay");
    }

    #[test]
    fn credential_validation_and_sealing() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        assert!(matches!(
            store.add_credential("nope", "", "", &secret("sk-1")),
            Err(Error::NotFound(_))
        ));
        let bad = [
            ("", "", ""),
            ("", "-1", "sk"),
            ("", "abc", "sk"),
            ("", "0", "sk"),
            ("", "", "a b"),
        ];
        for (label, mult, sec) in bad {
            assert!(matches!(
                store.add_credential("p", label, mult, &secret(sec)),
                Err(Error::InvalidArgument(_))
            ));
        }
        let c = store
            .add_credential("p", "main", "0.8", &secret("sk-live-1"))
            .unwrap();
        assert_eq!(c.multiplier_ppm, 800_000);
        assert!(!c.secret_sealed.contains("sk-live-1"));
        assert_eq!(store.credential_secret(&c).unwrap().expose(), "sk-live-1");
        assert!(matches!(
            store.add_credential("p", "main", "", &secret("sk-2")),
            Err(Error::AlreadyExists(_))
        ));
        assert_eq!(store.credentials().unwrap().len(), 1);
    }

    #[test]
    fn model_set_upserts_and_validates() {
        let (_d, store) = open_temp();
        store
            .add_provider("p", "openai", "http://127.0.0.1:1/v1")
            .unwrap();
        let set = |model, input, output| {
            store.set_model(&SetModel {
                model,
                provider: "p",
                upstream_model: "",
                input_usd_per_mtok: input,
                output_usd_per_mtok: output,
                cache_read_usd_per_mtok: "",
                cache_write_usd_per_mtok: "",
            })
        };
        let o = set("openai/gpt-4o-mini", "0.15", "0.6").unwrap();
        assert_eq!(o.upstream_model, "openai/gpt-4o-mini");
        assert_eq!(o.input_micro_usd_per_mtok, 150_000);
        set("openai/gpt-4o-mini", "0.2", "0.6").unwrap();
        let all = store.offerings(Some("openai/gpt-4o-mini")).unwrap();
        assert_eq!(all.len(), 1);
        assert_eq!(all[0].input_micro_usd_per_mtok, 200_000);
        assert!(matches!(
            set("m", "-1", "1"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(set("m", "x", "1"), Err(Error::InvalidArgument(_))));
        assert!(matches!(
            set("has space", "1", "1"),
            Err(Error::InvalidArgument(_))
        ));
        assert!(store.offerings(Some("openai/gpt-4o")).unwrap().is_empty());
        let cached = store
            .set_model(&SetModel {
                model: "claude",
                provider: "p",
                upstream_model: "",
                input_usd_per_mtok: "3",
                output_usd_per_mtok: "15",
                cache_read_usd_per_mtok: "0.3",
                cache_write_usd_per_mtok: "3.75",
            })
            .unwrap();
        assert_eq!(cached.cache_read_micro_usd_per_mtok, Some(300_000));
        assert_eq!(cached.cache_write_micro_usd_per_mtok, Some(3_750_000));
        assert!(matches!(
            store.set_model(&SetModel {
                model: "claude",
                provider: "p",
                upstream_model: "",
                input_usd_per_mtok: "3",
                output_usd_per_mtok: "15",
                cache_read_usd_per_mtok: "-1",
                cache_write_usd_per_mtok: "",
            }),
            Err(Error::InvalidArgument(_))
        ));
    }
}
