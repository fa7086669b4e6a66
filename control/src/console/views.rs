//! The console's pages, as maud templates: every value is escaped by the template, and no page
//! carries inline script or style (the Content-Security-Policy forbids both).

use super::data::{Histogram, Overview, Totals, WINDOWS};
use crate::catalog::{CredentialRec, ProviderRec};
use crate::keys::ClientKeyRec;
use crate::nodes::NodeView;
use keyplane_proto::v1 as pb;
use maud::{DOCTYPE, Markup, html};

/// Navigation entries: (path, label).
const NAV: [(&str, &str); 9] = [
    ("/", "Overview"),
    ("/usage", "Usage"),
    ("/requests", "Requests"),
    ("/models", "Models"),
    ("/keys", "Keys"),
    ("/providers", "Providers"),
    ("/nodes", "Nodes"),
    ("/probe", "Route probe"),
    ("/connect", "Connect a tool"),
];

/// A message shown above a page's content.
pub enum Notice {
    None,
    Error(String),
    Done(String),
}

pub(super) fn notice(n: &Notice) -> Markup {
    html! {
        @match n {
            Notice::None => {},
            Notice::Error(m) => p.notice.error role="alert" { (m) },
            Notice::Done(m) => p.notice.done role="status" { (m) },
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            title { (title) " · Keyplane" }
            link rel="stylesheet" href="/assets/uPlot.min.css";
            link rel="stylesheet" href="/assets/console.css";
            script src="/assets/uPlot.iife.min.js" defer {}
            script src="/assets/console.js" defer {}
        }
    }
}

/// The hidden field every state-changing form carries.
pub fn csrf_field(csrf: &str) -> Markup {
    html! { input type="hidden" name="csrf" value=(csrf); }
}

/// The signed-in layout: navigation, sign-out, the page.
pub fn layout(title: &str, active: &str, csrf: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                header.top {
                    span.brand { "Keyplane" }
                    nav {
                        @for (path, label) in NAV {
                            a href=(path) class=[(path == active).then_some("active")] { (label) }
                        }
                    }
                    form.signout method="post" action="/logout" {
                        (csrf_field(csrf))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { (title) }
                    (body)
                }
            }
        }
    }
}

pub fn login(action: &str, what: &str, error: Option<&str>) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Sign in"))
            body.login {
                main {
                    h1 { "Keyplane" }
                    form method="post" action=(action) {
                        @if let Some(e) = error { p.notice.error role="alert" { (e) } }
                        label for="token" { (what) }
                        input #token type="password" name="token" autocomplete="off" required autofocus;
                        button type="submit" { "Sign in" }
                    }
                }
            }
        }
    }
}

/// A short error page (not signed in, refused, not found).
pub fn message(title: &str, text: &str) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.login { main { h1 { (title) } p { (text) } p { a href="/" { "Back" } } } }
        }
    }
}

/// Nano-USD as dollars with up to six decimals.
pub fn usd(nano: u64) -> String {
    format!("${}", crate::money::format_micros(nano / 1000))
}

pub(super) fn ms_text(ms: i64) -> String {
    if ms <= 0 {
        return "—".to_string();
    }
    let day = crate::period::day_of(ms);
    let in_day = ms.rem_euclid(86_400_000) / 1000;
    format!(
        "{} {:02}:{:02}:{:02} UTC",
        crate::period::day_text(day),
        in_day / 3600,
        in_day / 60 % 60,
        in_day % 60
    )
}

fn totals_cells(t: &Totals) -> Markup {
    html! {
        td.num { (t.requests) }
        td.num { (usd(t.cost_nano_usd)) }
        td.num { (t.input_tokens) }
        td.num { (t.output_tokens) }
        td.num { (per_mille_text(t.error_per_mille())) }
    }
}

fn per_mille_text(per_mille: u64) -> String {
    format!("{}.{}%", per_mille / 10, per_mille % 10)
}

/// A latency percentile. Latencies are recorded in whole milliseconds, so the lowest bucket
/// holds everything under one: it reads "<1 ms", not "0 ms".
fn ms_or_dash(h: &Histogram, per_mille: u64) -> String {
    match h.percentile(per_mille) {
        None => "—".to_string(),
        Some(0) => "<1 ms".to_string(),
        Some(ms) => format!("{ms} ms"),
    }
}

/// Totals and latency percentiles of each window.
fn windows_table(o: &Overview) -> Markup {
    html! {
        table.windows #windows {
            thead { tr {
                th { "Window" }
                th title="Every request a data plane answered or refused" { "Requests" }
                th title="Status outside 2xx, refusals included" { "Errors" }
                th title="Refused by the data plane without trying an upstream (limits, unknown model, ...)" { "Refused" }
                th { "Spend" } th { "Input tokens" } th { "Output tokens" }
                th title="Of requests an upstream was tried for; from histograms, at most 19% above the true value" { "Latency p50" } th { "p99" }
                th { "First token p50" } th { "p99" }
            } }
            tbody {
                @for (w, win) in WINDOWS.iter().zip(&o.windows) {
                    tr {
                        td { (w.1) }
                        td.num.logged-requests { (win.totals.requests) }
                        td.num.logged-errors { (win.totals.errors) " (" (per_mille_text(win.totals.error_per_mille())) ")" }
                        td.num.refused { (win.totals.refused) }
                        td.num { (usd(win.totals.cost_nano_usd)) }
                        td.num { (win.totals.input_tokens) }
                        td.num { (win.totals.output_tokens) }
                        td.num { (ms_or_dash(&win.latency, 500)) }
                        td.num { (ms_or_dash(&win.latency, 990)) }
                        td.num { (ms_or_dash(&win.ttfb, 500)) }
                        td.num { (ms_or_dash(&win.ttfb, 990)) }
                    }
                }
            }
        }
    }
}

/// The chart points of a series, as JSON: per point `[unix seconds, requests, spend nano-USD,
/// errors, latency p50, p99, first token p50, p99]` (a percentile `null` with no sample).
fn series_json(o: &Overview) -> String {
    let points: Vec<serde_json::Value> = o
        .series
        .iter()
        .map(|(at, w)| {
            serde_json::json!([
                at / 1000,
                w.totals.requests,
                w.totals.cost_nano_usd,
                w.totals.errors,
                w.latency.percentile(500),
                w.latency.percentile(990),
                w.ttfb.percentile(500),
                w.ttfb.percentile(990),
            ])
        })
        .collect();
    serde_json::to_string(&points).unwrap_or_default()
}

/// The overview's two charts over the chosen window: requests and spend; error rate and
/// latency percentiles.
fn charts(o: &Overview, step: &str) -> Markup {
    let series = series_json(o);
    html! {
        section {
            h2 { "Requests and spend per " (step) }
            div #chart data-series=(series) {}
        }
        section {
            h2 { "Error rate and latency per " (step) }
            div #chart-health {}
        }
    }
}

/// What one point of the chosen window's series covers.
fn step_of(window: &str) -> &'static str {
    if window == "hour" { "minute" } else { "hour" }
}

fn breakdown(title: &str, rows: &[(String, Totals)]) -> Markup {
    html! {
        section {
            h2 { "Spend by " (title) }
            @if rows.is_empty() { p.empty { "No usage in this window." } } @else {
                table {
                    thead { tr { th { (title) } th { "Requests" } th { "Spend" } th { "Input tokens" } th { "Output tokens" } th { "Errors" } } }
                    tbody {
                        @for (name, t) in rows { tr { td { (name) } (totals_cells(t)) } }
                    }
                }
            }
        }
    }
}

pub fn overview(o: &Overview, window: &str) -> Markup {
    html! {
        section {
            (windows_table(o))
        }
        nav.windows {
            "Breakdown over: "
            @for w in WINDOWS {
                a href={ "/?window=" (w.0) } class=[(w.0 == window).then_some("active")] { (w.1) }
            }
        }
        (charts(o, step_of(window)))
        (breakdown("model", &o.by_model))
        (breakdown("provider", &o.by_provider))
        (breakdown("key", &o.by_key))
    }
}

/// A key row: the key, and its spend in its current budget period.
pub struct KeyRow {
    pub key: ClientKeyRec,
    pub spent_nano_usd: u64,
    pub spent_tokens: u64,
}

fn policy_text(k: &ClientKeyRec) -> String {
    let p = &k.policy;
    let mut parts = Vec::new();
    if p.rpm > 0 {
        parts.push(format!("{} rpm", p.rpm));
    }
    if p.tpm > 0 {
        parts.push(format!("{} tpm", p.tpm));
    }
    if p.concurrency > 0 {
        parts.push(format!("{} concurrent", p.concurrency));
    }
    if !p.models.is_empty() {
        parts.push(format!("models {}", p.models.join(",")));
    }
    if p.expires_at_ms > 0 {
        parts.push(format!("expires {}", ms_text(p.expires_at_ms)));
    }
    if p.capture_bodies {
        parts.push("captures bodies".to_string());
    }
    if parts.is_empty() {
        "no limits".to_string()
    } else {
        parts.join(", ")
    }
}

fn budget_text(r: &KeyRow) -> String {
    let p = &r.key.policy;
    let mut parts = Vec::new();
    if p.budget_nano_usd > 0 {
        parts.push(format!(
            "{} of {} ({})",
            usd(r.spent_nano_usd),
            usd(p.budget_nano_usd),
            p.period()
        ));
    } else {
        parts.push(format!("{} ({})", usd(r.spent_nano_usd), p.period()));
    }
    if p.budget_tokens > 0 {
        parts.push(format!("{} of {} tokens", r.spent_tokens, p.budget_tokens));
    }
    parts.join("; ")
}

/// The keys page; `created` is (name, full key) right after a creation, the only time a key is
/// ever rendered.
pub fn keys(rows: &[KeyRow], created: Option<(&str, &str)>, n: &Notice, csrf: &str) -> Markup {
    html! {
        (notice(n))
        @if let Some((name, secret)) = created {
            section.created {
                h2 { "Key " (name) " created" }
                p { "Copy it now: it is shown this once and never again." }
                input.secret #new-key readonly value=(secret) aria-label="The new client key";
                button.copy type="button" data-copy="new-key" { "Copy" }
            }
        }
        section {
            table #keys {
                thead { tr { th { "Name" } th { "Key" } th { "Spend (period)" } th { "Limits" } th { "Created" } th { "State" } th {} } }
                tbody {
                    @for r in rows {
                        tr {
                            td.name { (r.key.name) }
                            td.mono { (crate::keys::KEY_PREFIX) "…" }
                            td { (budget_text(r)) }
                            td { (policy_text(&r.key)) }
                            td { (ms_text(r.key.created_at_ms)) }
                            td { @if r.key.revoked_at_ms.is_some() { "revoked" } @else { "active" } }
                            td {
                                @if r.key.revoked_at_ms.is_none() {
                                    a.edit href={ "/keys/edit?name=" (query_escape(&r.key.name)) } { "Edit" }
                                    form method="post" action="/keys/revoke" {
                                        (csrf_field(csrf))
                                        input type="hidden" name="name" value=(r.key.name);
                                        button.danger type="submit" { "Revoke" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Create a key" }
            form.grid #create-key method="post" action="/keys" {
                (csrf_field(csrf))
                label { "Name" input name="name" required pattern="[A-Za-z0-9._-]+"; }
                label { "Budget (USD)" input name="budget_usd" inputmode="decimal"; }
                label { "Budget (tokens)" input name="budget_tokens" inputmode="numeric"; }
                label { "Period" select name="period" {
                    option value="" { "total" } option value="daily" { "daily" }
                    option value="weekly" { "weekly" } option value="monthly" { "monthly" }
                } }
                label { "Requests per minute" input name="rpm" inputmode="numeric"; }
                label { "Tokens per minute" input name="tpm" inputmode="numeric"; }
                label { "Concurrent requests" input name="concurrency" inputmode="numeric"; }
                label { "Models (globs, comma-separated)" input name="models"; }
                label { "Expires (UTC date)" input name="expires" type="date"; }
                label { input name="capture_bodies" type="checkbox" value="on"; " Keep prompt and completion bodies (capped; shown only here)" }
                button type="submit" { "Create key" }
            }
        }
    }
}

pub fn providers(
    providers: &[ProviderRec],
    credentials: &[CredentialRec],
    now_ms: i64,
    n: &Notice,
    csrf: &str,
) -> Markup {
    html! {
        (notice(n))
        @for p in providers {
            section.provider {
                h2 { (p.name) }
                p.meta {
                    (p.protocol.as_str()) " · " (p.base_url)
                    " · timeouts: connect " (limit_text(p.timeouts.connect_ms.into(), " ms")) ", first byte "
                    (limit_text(p.timeouts.first_byte_ms.into(), " ms")) ", idle "
                    (limit_text(p.timeouts.idle_ms.into(), " ms")) " · largest answer "
                    (limit_text(p.timeouts.max_body_bytes, " bytes"))
                }
                details.provider-set {
                    summary { "Change protocol, URL, timeouts" }
                    form.grid.provider-set method="post" action="/providers/set" {
                        (csrf_field(csrf))
                        input type="hidden" name="name" value=(p.name);
                        label { "Protocol" select name="protocol" {
                            @for proto in crate::catalog::Protocol::ALL {
                                option value=(proto.as_str()) selected[proto == p.protocol] { (proto.as_str()) }
                            }
                        } }
                        label { "Base URL" input name="base_url" value=(p.base_url); }
                        label { "Connect timeout (ms, 0: default)" input name="connect_timeout_ms" value=(p.timeouts.connect_ms) inputmode="numeric"; }
                        label { "First-byte timeout (ms, 0: default)" input name="first_byte_timeout_ms" value=(p.timeouts.first_byte_ms) inputmode="numeric"; }
                        label { "Idle timeout (ms, 0: default)" input name="idle_timeout_ms" value=(p.timeouts.idle_ms) inputmode="numeric"; }
                        label { "Largest answer (bytes, 0: default)" input name="max_body_bytes" value=(p.timeouts.max_body_bytes) inputmode="numeric"; }
                        button type="submit" { "Save" }
                    }
                }
                table.credentials {
                    thead { tr { th { "Credential" } th { "Label" } th { "Multiplier · quota resets" } th { "State" } th { "Since" } th { "Until" } th { "Reason" } th {} } }
                    tbody {
                        @for c in credentials.iter().filter(|c| c.provider == p.name) {
                            @let (state, since) = c.effective_state(now_ms);
                            tr {
                                td.mono { (c.id) }
                                td { (c.label) }
                                td.num {
                                    form.credential-set.inline method="post" action="/credentials/set" {
                                        (csrf_field(csrf))
                                        input type="hidden" name="id" value=(c.id);
                                        input name="multiplier" value=(crate::money::format_micros(c.multiplier_ppm)) size="6" inputmode="decimal" aria-label="Multiplier";
                                        select name="quota_resets" aria-label="Quota resets" {
                                            @for (v, text) in [("", "never"), ("daily", "daily"), ("weekly", "weekly"), ("monthly", "monthly")] {
                                                option value=(v) selected[v == c.quota_resets] { (text) }
                                            }
                                        }
                                        button type="submit" { "Set" }
                                    }
                                }
                                td class={ "state " (state) } { (state) }
                                td { (ms_text(since)) }
                                td { @if state != "active" { (ms_text(c.state_until_ms)) } }
                                td { @if state != "active" { (c.state_reason) } }
                                td {
                                    @if state != "active" {
                                        form.enable method="post" action="/credentials/enable" {
                                            (csrf_field(csrf))
                                            input type="hidden" name="id" value=(c.id);
                                            button type="submit" { "Enable" }
                                        }
                                    }
                                    @if state != crate::catalog::DISABLED {
                                        form.disable.inline method="post" action="/credentials/disable" {
                                            (csrf_field(csrf))
                                            input type="hidden" name="id" value=(c.id);
                                            input name="reason" placeholder="reason (optional)" aria-label="Why disable it";
                                            button type="submit" { "Disable" }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        @if providers.is_empty() { p.empty { "No providers yet: add one with keyplanectl provider add." } }
        @else {
            section {
                h2 { "Add a credential" }
                form.grid #add-credential method="post" action="/credentials" {
                    (csrf_field(csrf))
                    label { "Provider" select name="provider" {
                        @for p in providers { option value=(p.name) { (p.name) } }
                    } }
                    label { "Label" input name="label"; }
                    label { "Multiplier" input name="multiplier" placeholder="1" inputmode="decimal"; }
                    label { "Quota resets" select name="quota_resets" {
                        option value="" { "never" } option value="daily" { "daily" }
                        option value="weekly" { "weekly" } option value="monthly" { "monthly" }
                    } }
                    label { "Secret (stored sealed, never shown again)"
                        input type="password" name="secret" autocomplete="off" required; }
                    button type="submit" { "Add credential" }
                }
            }
        }
    }
}

/// A limit that 0 leaves to the data plane's default.
fn limit_text(v: u64, unit: &str) -> String {
    if v == 0 {
        "default".to_string()
    } else {
        format!("{v}{unit}")
    }
}

pub fn nodes(nodes: &[NodeView]) -> Markup {
    html! {
        p.meta { "The usage backlog is what each data plane's spool held unacknowledged besides the batch it was reporting, as of that report." }
        @if nodes.is_empty() { p.empty { "No data plane has connected yet." } } @else {
            table #nodes {
                thead { tr {
                    th { "Node" } th { "Connected" } th { "Route version" } th { "Connected since" }
                    th { "Last seen" } th { "Usage backlog" } th { "Oldest unacknowledged" }
                    th { "Backlog reported" } th { "Serves at" }
                } }
                tbody {
                    @for n in nodes {
                        tr {
                            td { (n.node_id) }
                            td { @if n.connected { "yes" } @else { "no" } }
                            td.num { (n.route_version) }
                            td { (ms_text(n.connected_since_ms)) }
                            td { (ms_text(n.last_seen_ms)) }
                            td.num.backlog { @if n.backlog.reported_ms > 0 { (n.backlog.records) } @else { "—" } }
                            td { (ms_text(n.backlog.oldest_ms)) }
                            td { (ms_text(n.backlog.reported_ms)) }
                            td.mono { (n.serve_url) }
                        }
                    }
                }
            }
        }
    }
}

/// Ready-to-paste settings for each tool README's "Point your tools at it" covers, pointed at
/// `url` (a data plane's base URL), in the same words README uses. The key is always the
/// placeholder `kp_...`: the page is for anyone signed in, and a key is shown once, at creation.
pub fn connect(url: &str) -> Markup {
    let base = url.trim_end_matches('/');
    let claude = format!(
        "export ANTHROPIC_BASE_URL={base}\n\
         export ANTHROPIC_AUTH_TOKEN=kp_...   # a Keyplane client key\n\
         export ANTHROPIC_MODEL=anthropic/claude-sonnet-4.5   # any client-facing model name\n\
         export ANTHROPIC_SMALL_FAST_MODEL=anthropic/claude-haiku-4.5\n\
         # with a private CA: export NODE_EXTRA_CA_CERTS=/path/to/ca.pem\n\
         claude"
    );
    let codex = format!(
        "# ~/.codex/config.toml (or $CODEX_HOME/config.toml)\n\
         model = \"demo/chat\"   # any client-facing model name\n\
         model_provider = \"keyplane\"\n\n\
         [model_providers.keyplane]\n\
         name = \"Keyplane\"\n\
         base_url = \"{base}/v1\"\n\
         env_key = \"KEYPLANE_API_KEY\"\n\
         wire_api = \"responses\"\n\n\
         # then, in the shell:\n\
         export KEYPLANE_API_KEY=kp_...   # a Keyplane client key\n\
         # with a private CA: export CODEX_CA_CERTIFICATE=/path/to/ca.pem\n\
         codex"
    );
    let gemini = format!(
        "// ~/.gemini/settings.json: without the auth type, Gemini CLI picks its gateway auth and -p refuses it\n\
         {{\n  \"security\": {{ \"auth\": {{ \"selectedType\": \"gemini-api-key\" }} }},\n  \
         \"privacy\": {{ \"usageStatisticsEnabled\": false }},\n  \
         \"telemetry\": {{ \"enabled\": false }},\n  \
         \"general\": {{ \"enableAutoUpdate\": false, \"enableAutoUpdateNotification\": false }}\n}}\n\n\
         # then, in the shell:\n\
         export GOOGLE_GEMINI_BASE_URL={base}   # the data plane's root, no /v1beta\n\
         export GEMINI_API_KEY=kp_...   # a Keyplane client key\n\
         export GEMINI_MODEL=demo/chat   # any client-facing model name\n\
         # with a private CA: export NODE_EXTRA_CA_CERTS=/path/to/ca.pem\n\
         gemini -p \"Say hello\""
    );
    let cursor = format!(
        "Settings → Models → OpenAI API Key:\n\
         \x20 API key:                   kp_...   (a Keyplane client key)\n\
         \x20 Override OpenAI Base URL:  {base}/v1\n\
         then add a model by its client-facing name (e.g. demo/chat)."
    );
    let aider = format!(
        "export OPENAI_API_KEY=kp_...   # a Keyplane client key\n\
         aider --model openai/demo/chat --openai-api-base {base}/v1"
    );
    let opencode = format!(
        "// opencode.json (an OpenAI-compatible provider)\n{{\n  \"$schema\": \"https://opencode.ai/config.json\",\n  \"provider\": {{\n    \"keyplane\": {{\n      \"npm\": \"@ai-sdk/openai-compatible\",\n      \"name\": \"Keyplane\",\n      \"options\": {{ \"baseURL\": \"{base}/v1\", \"apiKey\": \"{{env:KEYPLANE_API_KEY}}\" }},\n      \"models\": {{ \"demo/chat\": {{}} }}\n    }}\n  }}\n}}\n\n# then, in the shell:\nexport KEYPLANE_API_KEY=kp_...   # a Keyplane client key"
    );
    let sdk = format!(
        "from openai import OpenAI\n\
         client = OpenAI(base_url=\"{base}/v1\", api_key=\"kp_...\")\n\n\
         from anthropic import Anthropic\n\
         client = Anthropic(base_url=\"{base}\", api_key=\"kp_...\")\n\n\
         from google import genai\n\
         client = genai.Client(api_key=\"kp_...\", http_options=genai.types.HttpOptions(base_url=\"{base}\"))\n\n\
         # with a private CA: export SSL_CERT_FILE=/path/to/ca.pem"
    );
    let tools = [
        ("claude", "Claude Code", &claude),
        ("codex", "Codex CLI", &codex),
        ("gemini", "Gemini CLI", &gemini),
        ("cursor", "Cursor", &cursor),
        ("aider", "aider", &aider),
        ("opencode", "opencode", &opencode),
        ("sdk", "OpenAI, Anthropic and google-genai SDKs", &sdk),
    ];
    html! {
        form.inline method="get" action="/connect" {
            label { "Data plane URL " input name="url" value=(base) placeholder="https://gateway.example.com:8080"; }
            button type="submit" { "Show settings" }
        }
        p { "Replace " code { "kp_..." } " with a client key from the Keys page." }
        @for (id, title, text) in tools {
            section {
                h2 { (title) }
                pre #(id) { (text) }
                button.copy type="button" data-copy=(id) { "Copy" }
            }
        }
    }
}

/// The request log's filter as the form shows it.
#[derive(Debug, Default, Clone)]
pub struct RequestQuery {
    pub key: String,
    pub model: String,
    pub status: String,
    pub since: String,
    pub until: String,
    pub limit: String,
}

fn attempts_text(rec: &pb::UsageRecord) -> String {
    rec.attempts
        .iter()
        .map(|a| format!("{}/{}: {}", a.provider, a.credential_id, a.outcome))
        .collect::<Vec<_>>()
        .join(" → ")
}

pub(super) fn cost_text(rec: &pb::UsageRecord) -> String {
    match rec.reported_cost_nano_usd {
        Some(reported) => format!("{} (computed {})", usd(reported), usd(rec.cost_nano_usd)),
        None => usd(rec.cost_nano_usd),
    }
}

/// The link to one request's own page.
pub(super) fn request_href(rec: &pb::UsageRecord) -> String {
    format!(
        "/requests/view?id={}&at={}",
        rec.request_id
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
            .collect::<String>(),
        rec.started_at_ms
    )
}

pub fn requests(entries: &[pb::LoggedRequest], q: &RequestQuery, n: &Notice) -> Markup {
    html! {
        (notice(n))
        form.grid #request-filter method="get" action="/requests" {
            label { "Key" input name="key" value=(q.key); }
            label { "Model" input name="model" value=(q.model); }
            label { "Status" input name="status" value=(q.status) inputmode="numeric"; }
            label { "Since (UTC date)" input name="since" type="date" value=(q.since); }
            label { "Until (UTC date)" input name="until" type="date" value=(q.until); }
            label { "Limit" input name="limit" value=(q.limit) placeholder="50" inputmode="numeric"; }
            button type="submit" { "Filter" }
        }
        @if entries.is_empty() { p.empty { "No request matches." } } @else {
            table #requests {
                thead { tr {
                    th { "Time" } th { "Key" } th { "Dialect" } th { "Model" } th { "Provider" }
                    th { "Status" } th { "Error" } th { "Tokens in/out" } th { "Cost" }
                    th { "Latency" } th { "TTFT" } th { "Attempts" }
                } }
                tbody {
                    @for e in entries {
                        @if let Some(r) = &e.record {
                            tr class=[(r.status >= 400).then_some("failed")] {
                                td { a href=(request_href(r)) { (ms_text(r.started_at_ms)) } }
                                td { (e.key) }
                                td { (r.dialect) }
                                td { (r.model) }
                                td { (r.provider) }
                                td.num { (r.status) }
                                td { (r.error) }
                                td.num { (r.input_tokens) " / " (r.output_tokens) }
                                td.num { (cost_text(r)) }
                                td.num { (r.latency_ms) " ms" }
                                td.num { @if r.stream { (r.ttfb_ms) " ms" } @else { "—" } }
                                td { (attempts_text(r)) }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// A captured body as text for a `<pre>`: its UTF-8 text, with every control character but tab
/// and line ends shown as U+FFFD, and whether the bytes were not valid UTF-8 (then each invalid
/// sequence is shown as U+FFFD too). A multi-byte character cut by the capture cap at the end of
/// a truncated body does not make it invalid.
pub fn body_text(bytes: &[u8], truncated: bool) -> (String, bool) {
    let (text, invalid) = match std::str::from_utf8(bytes) {
        Ok(text) => (std::borrow::Cow::Borrowed(text), false),
        Err(e) if truncated && e.error_len().is_none() => (
            std::borrow::Cow::Borrowed(
                std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
            ),
            false,
        ),
        Err(_) => (String::from_utf8_lossy(bytes), true),
    };
    let shown = text
        .chars()
        .map(|c| {
            if c.is_control() && !matches!(c, '\t' | '\n' | '\r') {
                char::REPLACEMENT_CHARACTER
            } else {
                c
            }
        })
        .collect();
    (shown, invalid)
}

/// One captured body: its size, whether the cap cut it, and its text.
fn captured(title: &str, id: &str, bytes: &[u8], truncated: bool) -> Markup {
    let (text, invalid) = body_text(bytes, truncated);
    html! {
        h3 { (title) }
        p.meta {
            (bytes.len()) " bytes"
            @if truncated { ", truncated at the capture cap" }
            @if invalid { "; not valid UTF-8 (invalid bytes shown as \u{FFFD})" }
        }
        @if bytes.is_empty() { p.empty { "Empty." } } @else {
            pre.body id=(id) data-truncated=(truncated) { (text) }
        }
    }
}

pub fn request(e: &pb::LoggedRequest, bodies: Option<&pb::CapturedBodies>) -> Markup {
    let Some(r) = &e.record else {
        return html! { p.empty { "This entry has no record." } };
    };
    html! {
        table.detail #request {
            tbody {
                tr { th { "Request id" } td.mono { (r.request_id) } }
                tr { th { "Time" } td { (ms_text(r.started_at_ms)) } }
                tr { th { "Key" } td { (e.key) } }
                tr { th { "Node" } td { (e.node_id) } }
                tr { th { "Dialect" } td { (r.dialect) @if r.stream { " (streamed)" } } }
                tr { th { "Model" } td { (r.model) @if !r.chain.is_empty() { " (chain " (r.chain) ")" } } }
                tr { th { "Answered by" } td { (r.provider) " / " (r.credential_id) } }
                tr { th { "Status" } td { (r.status) @if !r.error.is_empty() { " " (r.error) } } }
                tr { th { "Tokens" } td { (r.input_tokens) " in, " (r.output_tokens) " out, " (r.cache_read_tokens) " cache read, " (r.cache_write_tokens) " cache write" @if r.estimated { " (estimated)" } } }
                tr { th { "Cost" } td { (cost_text(r)) @if r.unbilled { " (not billed)" } } }
                tr { th { "Latency" } td { (r.latency_ms) " ms" @if r.stream { ", first token after " (r.ttfb_ms) " ms" } } }
            }
        }
        h2 { "Upstream attempts, in order" }
        @if r.attempts.is_empty() { p.empty { "No upstream was tried." } } @else {
            table #attempts {
                thead { tr { th { "#" } th { "Provider" } th { "Credential" } th { "Outcome" } } }
                tbody {
                    @for (i, a) in r.attempts.iter().enumerate() {
                        tr { td.num { (i + 1) } td { (a.provider) } td.mono { (a.credential_id) } td { (a.outcome) } }
                    }
                }
            }
        }
        h2 { "Prompt and completion" }
        @if let Some(b) = bodies {
            (captured("Request body", "request-body", &b.request, b.request_truncated))
            (captured("Response body", "response-body", &b.response, b.response_truncated))
        } @else {
            p.empty { "Not captured: the key does not keep bodies, or they are past their retention." }
        }
        p { a href="/requests" { "All requests" } }
    }
}

/// The portal's page for one key holder: their key's budget, limits, usage and requests, and
/// nothing of any other key.
pub fn portal(
    row: &KeyRow,
    o: &Overview,
    window: &str,
    entries: &[pb::LoggedRequest],
    csrf: &str,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head("Your key"))
            body {
                header.top {
                    span.brand { "Keyplane" }
                    nav { a.active href="/portal" { "Your key: " (row.key.name) } }
                    form.signout method="post" action="/portal/logout" {
                        (csrf_field(csrf))
                        button type="submit" { "Sign out" }
                    }
                }
                main {
                    h1 { "Key " (row.key.name) }
                    table.detail #budget {
                        tbody {
                            tr { th { "Spend this period" } td { (budget_text(row)) } }
                            tr { th { "Limits" } td { (policy_text(&row.key)) } }
                            tr { th { "State" } td { @if row.key.revoked_at_ms.is_some() { "revoked" } @else { "active" } } }
                        }
                    }
                    section {
                        (windows_table(o))
                    }
                    nav.windows {
                        "Usage over: "
                        @for w in WINDOWS {
                            a href={ "/portal?window=" (w.0) } class=[(w.0 == window).then_some("active")] { (w.1) }
                        }
                    }
                    (charts(o, step_of(window)))
                    (breakdown("model", &o.by_model))
                    section {
                        h2 { "Recent requests" }
                        @if entries.is_empty() { p.empty { "No requests yet." } } @else {
                            table #requests {
                                thead { tr { th { "Time" } th { "Model" } th { "Status" } th { "Error" } th { "Tokens in/out" } th { "Cost" } th { "Latency" } } }
                                tbody {
                                    @for e in entries {
                                        @if let Some(r) = &e.record {
                                            tr {
                                                td { (ms_text(r.started_at_ms)) }
                                                td { (r.model) }
                                                td.num { (r.status) }
                                                td { (r.error) }
                                                td.num { (r.input_tokens) " / " (r.output_tokens) }
                                                td.num { (cost_text(r)) }
                                                td.num { (r.latency_ms) " ms" }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}

/// What the models page shows.
pub struct Models {
    pub offerings: Vec<crate::prices::Effective>,
    pub catalogs: Vec<crate::catalog_sync::Status>,
    pub aliases: Vec<crate::prices::AliasRec>,
    pub chains: Vec<crate::chains::ChainRec>,
}

/// Micro-units per million tokens as a price.
fn per_mtok(micros: u64) -> String {
    crate::money::format_micros(micros)
}

pub fn models(m: &Models, now_ms: i64, n: &Notice, csrf: &str) -> Markup {
    html! {
        (notice(n))
        section {
            h2 { "Offerings" }
            @if m.offerings.is_empty() { p.empty { "No model offerings yet." } } @else {
                table #offerings {
                    thead { tr {
                        th { "Model" } th { "Provider" } th { "Upstream model" }
                        th { "Input / Mtok" } th { "Output / Mtok" } th { "Currency" }
                        th { "Source" } th { "Synced" }
                    } }
                    tbody {
                        @for o in &m.offerings {
                            tr {
                                td { (o.model) } td { (o.provider) } td { (o.upstream_model) }
                                @match (&o.usd, &o.native) {
                                    (Some(usd), _) => {
                                        td.num { "$" (per_mtok(usd.input)) }
                                        td.num { "$" (per_mtok(usd.output)) }
                                    }
                                    (None, _) => { td.num { "unknown" } td.num { "unknown" } }
                                }
                                td { (o.native.as_ref().map_or("USD", |p| p.currency.as_str())) }
                                td { (o.source) }
                                td { (ms_text(o.synced_at_ms)) }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Catalogs" }
            @if m.catalogs.is_empty() { p.empty { "No provider has a catalog adapter." } } @else {
                table #catalogs {
                    thead { tr {
                        th { "Provider" } th { "Adapter" } th { "Models" } th { "Last success" }
                        th { "Last error" } th { "Failures in a row" } th { "Next sync" } th {}
                    } }
                    tbody {
                        @for s in &m.catalogs {
                            tr {
                                td { (s.rec.provider) } td { (s.rec.adapter) }
                                td.num { (s.rec.models.len()) }
                                td { (ms_text(s.rec.last_success_ms)) }
                                td { (s.rec.last_error) }
                                td.num { (s.rec.consecutive_failures) }
                                td { @if s.next_sync_ms > now_ms { (ms_text(s.next_sync_ms)) } @else { "due" } }
                                td {
                                    form method="post" action="/catalog/sync" {
                                        (csrf_field(csrf))
                                        input type="hidden" name="provider" value=(s.rec.provider);
                                        button type="submit" { "Sync now" }
                                    }
                                }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Aliases" }
            @if m.aliases.is_empty() { p.empty { "No aliases." } } @else {
                table #aliases {
                    thead { tr { th { "Alias" } th { "Model" } } }
                    tbody { @for a in &m.aliases { tr { td { (a.alias) } td { (a.target) } } } }
                }
            }
        }
        section {
            h2 { "Fallback chains" }
            @if m.chains.is_empty() { p.empty { "No chains." } } @else {
                table #chains {
                    thead { tr { th { "Chain" } th { "Models, in order" } } }
                    tbody { @for c in &m.chains { tr { td { (c.name) } td { (c.models.join(" → ")) } } } }
                }
            }
        }
    }
}

/// The usage report's form as the page shows it.
#[derive(Debug, Default, Clone)]
pub struct UsageForm {
    pub key: String,
    pub since: String,
    pub until: String,
    pub by: String,
}

/// The columns naming a usage row's group, by `by`.
fn usage_names(by: &str) -> &'static [&'static str] {
    match by {
        "key" => &["Key"],
        "model" => &["Model"],
        "provider" => &["Provider"],
        "credential" => &["Provider", "Credential", "Label"],
        "day" => &["Day"],
        _ => &["Key", "Model", "Provider", "Credential", "Label"],
    }
}

fn usage_name_values(by: &str, r: &pb::UsageRow) -> Vec<String> {
    match by {
        "key" => vec![r.key.clone()],
        "model" => vec![r.model.clone()],
        "provider" => vec![r.provider.clone()],
        "credential" => vec![
            r.provider.clone(),
            r.credential.clone(),
            r.credential_label.clone(),
        ],
        "day" => vec![r.group.clone()],
        _ => vec![
            r.key.clone(),
            r.model.clone(),
            r.provider.clone(),
            r.credential.clone(),
            r.credential_label.clone(),
        ],
    }
}

pub fn usage(rows: &[pb::UsageRow], f: &UsageForm, n: &Notice) -> Markup {
    let query = format!(
        "key={}&since={}&until={}&by={}",
        query_escape(&f.key),
        query_escape(&f.since),
        query_escape(&f.until),
        query_escape(&f.by)
    );
    html! {
        (notice(n))
        form.grid #usage-filter method="get" action="/usage" {
            label { "Key" input name="key" value=(f.key); }
            label { "Since (UTC date)" input name="since" type="date" value=(f.since); }
            label { "Until (UTC date)" input name="until" type="date" value=(f.until); }
            label { "Group by" select name="by" {
                @for (v, label) in [("", "key, model, provider, credential"), ("key", "key"), ("model", "model"), ("provider", "provider"), ("credential", "credential"), ("day", "day")] {
                    option value=(v) selected[f.by == v] { (label) }
                }
            } }
            button type="submit" { "Show" }
        }
        p { a #usage-csv href={ "/usage.csv?" (query) } { "Download CSV" } }
        @if rows.is_empty() { p.empty { "No usage matches." } } @else {
            table #usage {
                thead { tr {
                    @for name in usage_names(&f.by) { th { (name) } }
                    th { "Requests" } th { "Input tokens" } th { "Output tokens" } th { "Billed" } th { "Computed" }
                } }
                tbody {
                    @for r in rows {
                        tr {
                            @for v in usage_name_values(&f.by, r) { td { (v) } }
                            td.num { (r.requests) }
                            td.num { (r.input_tokens) }
                            td.num { (r.output_tokens) }
                            td.num { (usd(r.cost_nano_usd)) }
                            td.num { (usd(r.computed_cost_nano_usd)) }
                        }
                    }
                }
            }
        }
    }
}

/// Percent-encodes a query value (everything but unreserved characters).
fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One CSV field: quoted when it holds a separator, quote or line break, and with a leading `'`
/// when a spreadsheet would read it as a formula (a model name like `=HYPERLINK(...)`).
fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@', '\t', '\r']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// The usage rows as CSV with a header line; costs in USD with up to nine decimals.
pub fn usage_csv(rows: &[pb::UsageRow]) -> String {
    let mut out = String::from(
        "key,model,provider,credential,credential_label,group,requests,input_tokens,output_tokens,cost_usd,computed_cost_usd\n",
    );
    let dollars = |nano: u64| {
        let text = format!("{}.{:09}", nano / 1_000_000_000, nano % 1_000_000_000);
        text.trim_end_matches('0').trim_end_matches('.').to_string()
    };
    for r in rows {
        let fields = [
            csv_field(&r.key),
            csv_field(&r.model),
            csv_field(&r.provider),
            csv_field(&r.credential),
            csv_field(&r.credential_label),
            csv_field(&r.group),
            r.requests.to_string(),
            r.input_tokens.to_string(),
            r.output_tokens.to_string(),
            dollars(r.cost_nano_usd),
            dollars(r.computed_cost_nano_usd),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

fn date_text(ms: i64) -> String {
    if ms <= 0 {
        String::new()
    } else {
        crate::period::day_text(crate::period::day_of(ms))
    }
}

/// The edit form of a key's policy, every field showing its current value (empty: no limit).
pub fn edit_key(k: &ClientKeyRec, csrf: &str) -> Markup {
    let p = &k.policy;
    let num = |v: u64| if v == 0 { String::new() } else { v.to_string() };
    let budget = if p.budget_nano_usd == 0 {
        String::new()
    } else {
        crate::money::format_micros(p.budget_nano_usd / 1000)
    };
    html! {
        p { "Empty fields mean no limit." }
        form.grid #edit-key method="post" action="/keys/edit" {
            (csrf_field(csrf))
            input type="hidden" name="name" value=(k.name);
            label { "Budget (USD)" input name="budget_usd" value=(budget) inputmode="decimal"; }
            label { "Budget (tokens)" input name="budget_tokens" value=(num(p.budget_tokens)) inputmode="numeric"; }
            label { "Period" select name="period" {
                @for (v, label) in [("", "total"), ("daily", "daily"), ("weekly", "weekly"), ("monthly", "monthly")] {
                    option value=(v) selected[p.period == v] { (label) }
                }
            } }
            label { "Requests per minute" input name="rpm" value=(num(u64::from(p.rpm))) inputmode="numeric"; }
            label { "Tokens per minute" input name="tpm" value=(num(p.tpm)) inputmode="numeric"; }
            label { "Concurrent requests" input name="concurrency" value=(num(u64::from(p.concurrency))) inputmode="numeric"; }
            label { "Models (globs, comma-separated)" input name="models" value=(p.models.join(",")); }
            label { "Expires (UTC date)" input name="expires" type="date" value=(date_text(p.expires_at_ms)); }
            label { input name="capture_bodies" type="checkbox" value="on" checked[p.capture_bodies]; " Keep prompt and completion bodies (capped; shown only here)" }
            button type="submit" { "Save" }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn captured_bodies_show_as_safe_text() {
        assert_eq!(
            body_text(b"{\"a\":\"<b>\"}\n", false),
            ("{\"a\":\"<b>\"}\n".into(), false)
        );
        // Control characters (a terminal escape, NUL) never reach the page as they are.
        assert_eq!(
            body_text(b"a\x1b[31mb\x00", false),
            ("a\u{FFFD}[31mb\u{FFFD}".into(), false)
        );
        // Invalid UTF-8 is flagged and replaced.
        assert_eq!(
            body_text(b"ok\xff\xfe", false),
            ("ok\u{FFFD}\u{FFFD}".into(), true)
        );
        // A character cut by the cap at the end of a truncated body is not an error.
        let cut = &"h\u{e9}".as_bytes()[..2];
        assert_eq!(body_text(cut, true), ("h".into(), false));
        assert!(body_text(cut, false).1);
        // Rendered, markup is escaped inside the <pre>.
        let html =
            captured("Request body", "request-body", b"<script>x</script>", false).into_string();
        assert!(
            html.contains("&lt;script&gt;") && !html.contains("<script>"),
            "{html}"
        );
    }

    #[test]
    fn sub_millisecond_latencies_read_as_under_one_millisecond() {
        let mut h = Histogram::default();
        assert_eq!(ms_or_dash(&h, 500), "—");
        h.add(0);
        assert_eq!(ms_or_dash(&h, 500), "<1 ms");
        h.add(700);
        h.add(700);
        assert!(ms_or_dash(&h, 990).ends_with(" ms"));
        assert_ne!(ms_or_dash(&h, 990), "<1 ms");
    }

    #[test]
    fn csv_fields_are_quoted_and_formulas_defused() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("=1+1"), "'=1+1");
        assert_eq!(csv_field("-x,y"), "\"'-x,y\"");
        let rows = [pb::UsageRow {
            key: "alice".into(),
            requests: 2,
            cost_nano_usd: 1_500_000_000,
            computed_cost_nano_usd: 42,
            ..Default::default()
        }];
        let csv = usage_csv(&rows);
        let lines: Vec<&str> = csv.lines().collect();
        assert_eq!(lines.len(), 2);
        assert_eq!(lines[1], "alice,,,,,,2,0,0,1.5,0.000000042");
        assert_eq!(usage_csv(&[]).lines().count(), 1);
    }
}
