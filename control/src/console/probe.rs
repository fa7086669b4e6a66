//! The route probe: one tiny request through every route a data plane may take (each offering
//! of a model through each credential of its provider that is in the route table), to see which
//! answer, how fast, and at what cost.
//!
//! The control plane has no proxy, so the probe goes through a real data plane, as any client's
//! request does: to the URL the node said it serves at when it subscribed (`--advertise-url`),
//! with the control plane's own probe key (`Store::probe_key`: a client key whose secret is kept
//! sealed under the master key and never rendered). Each request pins its route with
//! `x-keyplane-probe-route: PROVIDER/CREDENTIAL_ID`, a header only a key marked as the probe key
//! may send (any other key gets 403), so the data plane tries that route alone, with no failover.
//! The requests are billed like any other, to the probe key, and logged in the request log: the
//! results link there, and take their tokens and cost from it.
//!
//! Why every (offering, credential) pair rather than each offering through its cheapest
//! credential: a credential that is refused, out of quota or without access to one model is
//! exactly what an operator runs the probe to find, and the cheapest-credential choice would
//! never try the others. Each request asks for one output token, and a run probes at most
//! [`MAX_ROUTES`] routes (a provider filter narrows a larger table).

use super::{Console, Posted, blocking, error_text, views};
use crate::error::Error;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::Response;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use keyplane_proto::v1 as pb;
use maud::{Markup, html};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};
use views::Notice;

/// Most routes one run probes.
pub const MAX_ROUTES: usize = 200;
/// Probe requests in flight at once.
const CONCURRENCY: usize = 4;
/// How long one probe request may take, answer included.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a run waits for the data plane to know a new probe key, and then for the usage
/// reports of its requests to reach the request log.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(10);
/// The most of an answer read (only its status and error code are used).
const MAX_ANSWER_BYTES: usize = 256 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

/// The probe's HTTP client and its last run.
pub struct Prober {
    client: Client<Https, Full<Bytes>>,
    /// The last run, shown until the next; held for a whole run, so that runs never overlap.
    last: tokio::sync::Mutex<Option<Run>>,
}

impl Prober {
    /// A client that trusts the public web roots and `extra_roots` (the private CA of the
    /// nodes' certificates, `--client-ca`).
    pub fn new(extra_roots: &[rustls_pki_types::CertificateDer<'static>]) -> Prober {
        let mut roots = rustls::RootCertStore::empty();
        roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
        for cert in extra_roots {
            if let Err(err) = roots.add(cert.clone()) {
                tracing::warn!(error = %err, "the route probe cannot trust a CA certificate");
            }
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map(|b| b.with_root_certificates(roots).with_no_client_auth());
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(Duration::from_secs(5)));
        let https = match tls {
            Ok(config) => hyper_rustls::HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_or_http()
                .enable_http1()
                .wrap_connector(http),
            Err(err) => {
                tracing::warn!(error = %err, "route probe TLS setup failed; public roots only");
                hyper_rustls::HttpsConnectorBuilder::new()
                    .with_webpki_roots()
                    .https_or_http()
                    .enable_http1()
                    .wrap_connector(http)
            }
        };
        Prober {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
            last: tokio::sync::Mutex::new(None),
        }
    }
}

/// One probe run.
#[derive(Clone)]
pub struct Run {
    pub node_id: String,
    pub started_ms: i64,
    /// The probe key's id, to find the run's requests in the log.
    pub key_id: String,
    pub key_name: String,
    pub rows: Vec<Row>,
    /// Routes left out by [`MAX_ROUTES`].
    pub left_out: usize,
}

/// One route's answer.
#[derive(Clone)]
pub struct Row {
    pub model: String,
    pub provider: String,
    pub credential_id: String,
    pub credential_label: String,
    /// The data plane's status; 0 when it did not answer.
    pub status: u16,
    /// The error code of a refusal, or why there was no answer.
    pub error: String,
    /// As the console measured it, round trip included.
    pub latency_ms: u64,
    /// The data plane's `x-request-id`: the request's id in the log.
    pub request_id: String,
}

impl Row {
    fn ok(&self) -> bool {
        (200..300).contains(&self.status)
    }
}

/// A route to probe, and how to ask it.
struct Route {
    model: String,
    provider: String,
    protocol: String,
    credential_id: String,
    credential_label: String,
}

/// The routes a probe would take: each offering through each of its provider's credentials that
/// the route table holds (active, or cooling down: a cooling one answers with its 429).
fn routes(store: &crate::store::Store, only_provider: &str) -> Result<Vec<Route>, Error> {
    let providers: HashMap<String, String> = store
        .providers()?
        .into_iter()
        .map(|p| (p.name.clone(), p.protocol.as_str().to_string()))
        .collect();
    let now = crate::store::now_ms();
    let credentials: Vec<_> = store
        .credentials()?
        .into_iter()
        .filter(|c| {
            matches!(
                c.effective_state(now).0,
                "active" | "cooldown" | "circuit_open"
            )
        })
        .collect();
    let mut out = Vec::new();
    for offering in store.effective_offerings(None)? {
        if !only_provider.is_empty() && offering.provider != only_provider {
            continue;
        }
        let Some(protocol) = providers.get(&offering.provider) else {
            continue;
        };
        for cred in credentials
            .iter()
            .filter(|c| c.provider == offering.provider)
        {
            out.push(Route {
                model: offering.model.clone(),
                provider: offering.provider.clone(),
                protocol: protocol.clone(),
                credential_id: cred.id.clone(),
                credential_label: cred.label.clone(),
            });
        }
    }
    Ok(out)
}

/// Where a probe request carries the key: as each dialect's own clients send it.
#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyIn {
    /// `Authorization: Bearer` (OpenAI's and, as Keyplane accepts it, Anthropic's).
    Bearer,
    /// `x-goog-api-key` (Gemini's).
    Goog,
}

/// The smallest request of the client dialect that matches the upstream's protocol, so the data
/// plane passes it through unchanged and the probe tests the route itself, not a translation:
/// path, body, and where the key goes.
///
/// Every offering gets a generation request: the catalog does not say which models only embed
/// (an embeddings-only model answers it with the upstream's refusal, which the row shows), and
/// `/v1/embeddings` does not take a pinned route.
fn minimal_request(protocol: &str, model: &str) -> (String, serde_json::Value, KeyIn) {
    let hello = serde_json::json!([{ "role": "user", "content": "ping" }]);
    match protocol {
        "anthropic" => (
            "/v1/messages".into(),
            serde_json::json!({ "model": model, "max_tokens": 1, "messages": hello }),
            KeyIn::Bearer,
        ),
        // The Responses API refuses fewer than 16 output tokens.
        "openai-responses" => (
            "/v1/responses".into(),
            serde_json::json!({ "model": model, "max_output_tokens": 16, "input": "ping" }),
            KeyIn::Bearer,
        ),
        // The model is in the path (a `/` in it stays one: the data plane reads the method after
        // the last `:`); anything else outside a path segment's safe set is escaped.
        "gemini" => (
            format!("/v1beta/models/{}:generateContent", path_escape(model)),
            serde_json::json!({
                "contents": [{ "role": "user", "parts": [{ "text": "ping" }] }],
                "generationConfig": { "maxOutputTokens": 1 },
            }),
            KeyIn::Goog,
        ),
        _ => (
            "/v1/chat/completions".into(),
            serde_json::json!({ "model": model, "max_tokens": 1, "messages": hello }),
            KeyIn::Bearer,
        ),
    }
}

/// `model` for a URL path: unreserved characters, `/` and `:` as they are, the rest
/// percent-escaped byte by byte.
fn path_escape(model: &str) -> String {
    let mut out = String::with_capacity(model.len());
    for b in model.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~/:@".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The error code in an answer's body (`error.code` when it is a string, else `error.type`,
/// else Google's `error.status`), if any.
fn error_code(body: &[u8]) -> String {
    let Ok(v) = serde_json::from_slice::<serde_json::Value>(body) else {
        return String::new();
    };
    let err = &v["error"];
    err["code"]
        .as_str()
        .or_else(|| err["type"].as_str())
        .or_else(|| err["status"].as_str())
        .unwrap_or_default()
        .chars()
        .take(80)
        .collect()
}

impl Prober {
    /// Sends one request; `(status, error code, x-request-id)`, status 0 when there was no answer.
    async fn send(
        &self,
        base: &str,
        (key, key_in): (&str, KeyIn),
        path: &str,
        body: Option<&serde_json::Value>,
        pin: Option<&str>,
    ) -> (u16, String, String) {
        let uri = match format!("{base}{path}").parse::<http::Uri>() {
            Ok(uri) => uri,
            Err(_) => return (0, "the node's URL is invalid".into(), String::new()),
        };
        let mut req = http::Request::builder()
            .method(if body.is_some() { "POST" } else { "GET" })
            .uri(uri)
            .header(http::header::USER_AGENT, "keyplane-control route probe")
            .header("anthropic-version", "2023-06-01");
        let key_header = match key_in {
            KeyIn::Bearer => {
                req = req.header(http::header::AUTHORIZATION, format!("Bearer {key}"));
                http::header::AUTHORIZATION
            }
            KeyIn::Goog => {
                let name = http::HeaderName::from_static("x-goog-api-key");
                req = req.header(name.clone(), key);
                name
            }
        };
        if let Some(pin) = pin {
            req = req.header(keyplane_probe_route(), pin);
        }
        let bytes = body.map(|b| Bytes::from(b.to_string())).unwrap_or_default();
        if body.is_some() {
            req = req.header(http::header::CONTENT_TYPE, "application/json");
        }
        let Ok(mut req) = req.body(Full::new(bytes)) else {
            return (0, "cannot build the request".into(), String::new());
        };
        if let Some(v) = req.headers_mut().get_mut(key_header) {
            v.set_sensitive(true);
        }
        let answer = async {
            let resp = self.client.request(req).await.map_err(|e| {
                // Never the request (it holds the key): only what failed.
                let mut text = e.to_string();
                let mut source = std::error::Error::source(&e);
                while let Some(s) = source {
                    text = format!("{text}: {s}");
                    source = s.source();
                }
                text
            })?;
            let status = resp.status().as_u16();
            let request_id = resp
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default()
                .to_string();
            let body = Limited::new(resp.into_body(), MAX_ANSWER_BYTES)
                .collect()
                .await
                .map(|b| b.to_bytes())
                .unwrap_or_default();
            Ok::<_, String>((status, error_code(&body), request_id))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, answer).await {
            Ok(Ok(got)) => got,
            Ok(Err(why)) => (0, why.chars().take(200).collect(), String::new()),
            Err(_) => (
                0,
                format!("no answer within {} s", REQUEST_TIMEOUT.as_secs()),
                String::new(),
            ),
        }
    }
}

fn keyplane_probe_route() -> http::HeaderName {
    http::HeaderName::from_static("x-keyplane-probe-route")
}

/// The node a run goes through: the one asked for, else the first connected node that said
/// where it serves.
fn pick_node<'a>(
    nodes: &'a [crate::nodes::NodeView],
    wanted: &str,
) -> Result<&'a crate::nodes::NodeView, String> {
    let usable = |n: &&crate::nodes::NodeView| n.connected && !n.serve_url.is_empty();
    if wanted.is_empty() {
        return nodes.iter().find(usable).ok_or_else(|| {
            "No connected data plane has said where it serves (--advertise-url).".to_string()
        });
    }
    let node = nodes
        .iter()
        .find(|n| n.node_id == wanted)
        .ok_or_else(|| format!("No node named {wanted:?}."))?;
    if usable(&node) {
        Ok(node)
    } else {
        Err(format!(
            "Node {wanted:?} is not connected or has not said where it serves (--advertise-url)."
        ))
    }
}

/// `POST /probe`: runs the probe and shows its results.
pub async fn run(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let Ok(mut last) = c.prober.last.try_lock() else {
        let n = Notice::Error("A probe is running already: wait for it to finish.".into());
        return probe_page(&c, &post.session.csrf, StatusCode::CONFLICT, n, None).await;
    };
    match probe(&c, &post.field("node"), &post.field("provider")).await {
        Ok(run) => {
            let failed = run.rows.iter().filter(|r| !r.ok()).count();
            tracing::info!(
                node_id = %run.node_id,
                routes = run.rows.len(),
                failed,
                "route probe run (console)"
            );
            let n = Notice::Done(format!(
                "Probed {} routes through {}: {} answered, {} failed.",
                run.rows.len(),
                run.node_id,
                run.rows.len() - failed,
                failed
            ));
            *last = Some(run.clone());
            drop(last);
            probe_page(&c, &post.session.csrf, StatusCode::OK, n, Some(run)).await
        }
        Err((status, why)) => {
            let shown = last.clone();
            drop(last);
            probe_page(&c, &post.session.csrf, status, Notice::Error(why), shown).await
        }
    }
}

/// One run: the probe key, the node, every route in turn, then the log entries awaited.
async fn probe(c: &Console, node: &str, provider: &str) -> Result<Run, (StatusCode, String)> {
    let unavailable = |why: String| (StatusCode::SERVICE_UNAVAILABLE, why);
    let registry = Arc::clone(&c.registry);
    let nodes = blocking(move || registry.list())
        .await
        .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, error_text(&e)))?;
    let node = pick_node(&nodes, node).map_err(unavailable)?.clone();
    let store = Arc::clone(&c.store);
    let only = provider.to_string();
    let (key, secret, new, mut routes) = blocking(move || {
        let (key, secret, new) = store.probe_key()?;
        Ok((key, secret, new, routes(&store, &only)?))
    })
    .await
    .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, error_text(&e)))?;
    if new {
        // A key made just now reaches the data planes with the next route table.
        tracing::info!(key_name = %key.name, client_key_id = %key.id, "route probe key made");
        c.committed()
            .await
            .map_err(|e| (StatusCode::INTERNAL_SERVER_ERROR, error_text(&e)))?;
    }
    let base = node.serve_url.trim_end_matches('/').to_string();
    wait_for_key(c, &base, secret.expose())
        .await
        .map_err(unavailable)?;

    let left_out = routes.len().saturating_sub(MAX_ROUTES);
    routes.truncate(MAX_ROUTES);
    let started_ms = crate::store::now_ms();
    // A few at a time, in order: a slow route does not hold up the rest, and a data plane (or an
    // upstream behind several routes) never sees more than a handful of probe requests at once.
    let rows: Vec<Row> = futures_util::stream::iter(routes)
        .map(|route| {
            let (base, secret) = (&base, &secret);
            async move {
                let (path, body, key_in) = minimal_request(&route.protocol, &route.model);
                let pin = format!("{}/{}", route.provider, route.credential_id);
                let sent = Instant::now();
                let (status, error, request_id) = c
                    .prober
                    .send(
                        base,
                        (secret.expose(), key_in),
                        &path,
                        Some(&body),
                        Some(&pin),
                    )
                    .await;
                Row {
                    model: route.model,
                    provider: route.provider,
                    credential_id: route.credential_id,
                    credential_label: route.credential_label,
                    status,
                    error,
                    latency_ms: sent.elapsed().as_millis() as u64,
                    request_id,
                }
            }
        })
        .buffered(CONCURRENCY)
        .collect()
        .await;
    let run = Run {
        node_id: node.node_id,
        started_ms,
        key_id: key.id.clone(),
        key_name: key.name.clone(),
        rows,
        left_out,
    };
    wait_for_log(c, &run).await;
    Ok(run)
}

/// Waits (bounded) until the data plane accepts the probe key: a new key travels in the next
/// route table.
async fn wait_for_key(c: &Console, base: &str, key: &str) -> Result<(), String> {
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    loop {
        let (status, error, _) = c
            .prober
            .send(base, (key, KeyIn::Bearer), "/v1/models", None, None)
            .await;
        match status {
            200 => return Ok(()),
            401 if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            0 => return Err(format!("The node at {base} did not answer: {error}")),
            other => {
                return Err(format!(
                    "The node at {base} refused the probe key (HTTP {other}{}).",
                    if error.is_empty() {
                        String::new()
                    } else {
                        format!(", {error}")
                    }
                ));
            }
        }
    }
}

/// The run's entries in the request log, by request id.
async fn logged(c: &Console, run: &Run) -> HashMap<String, pb::UsageRecord> {
    let store = Arc::clone(&c.store);
    let filter = crate::request_log::RequestFilter {
        key_id: Some(run.key_id.clone()),
        // The data plane's clock starts a request after the console's did; a second of slack
        // for clocks that disagree a little.
        since_ms: run.started_ms - 1_000,
        limit: crate::request_log::MAX_LIMIT,
        ..Default::default()
    };
    let wanted: std::collections::HashSet<String> =
        run.rows.iter().map(|r| r.request_id.clone()).collect();
    blocking(move || store.list_requests(&filter))
        .await
        .unwrap_or_default()
        .into_iter()
        .filter_map(|e| e.record)
        .filter(|r| wanted.contains(&r.request_id))
        .map(|r| (r.request_id.clone(), r))
        .collect()
}

/// Waits (bounded) until every answered request of the run is in the request log, so the results
/// show their tokens and cost; whatever is still on its way shows as pending.
async fn wait_for_log(c: &Console, run: &Run) {
    let answered = run.rows.iter().filter(|r| !r.request_id.is_empty()).count();
    let deadline = Instant::now() + SETTLE_TIMEOUT;
    while logged(c, run).await.len() < answered && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// `GET /probe`: the form and the last run's results.
pub async fn show(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = super::operator(&c, &headers) else {
        return super::see_other("/login");
    };
    // While a run holds it, show the form only.
    let last = c.prober.last.try_lock().ok().and_then(|l| l.clone());
    probe_page(&c, &session.csrf, StatusCode::OK, Notice::None, last).await
}

async fn probe_page(
    c: &Console,
    csrf: &str,
    status: StatusCode,
    n: Notice,
    run: Option<Run>,
) -> Response {
    let registry = Arc::clone(&c.registry);
    let store = Arc::clone(&c.store);
    let lists = blocking(move || Ok((registry.list()?, store.providers()?))).await;
    let (nodes, providers) = match lists {
        Ok(l) => l,
        Err(e) => return super::internal(&e),
    };
    let logged = match &run {
        Some(run) => logged(c, run).await,
        None => HashMap::new(),
    };
    let providers: Vec<String> = providers.into_iter().map(|p| p.name).collect();
    super::page(
        status,
        views::layout(
            "Route probe",
            "/probe",
            csrf,
            render(&nodes, &providers, run.as_ref(), &logged, &n, csrf),
        ),
    )
}

fn render(
    nodes: &[crate::nodes::NodeView],
    providers: &[String],
    run: Option<&Run>,
    logged: &HashMap<String, pb::UsageRecord>,
    n: &Notice,
    csrf: &str,
) -> Markup {
    let usable: Vec<_> = nodes
        .iter()
        .filter(|n| n.connected && !n.serve_url.is_empty())
        .collect();
    html! {
        (views::notice(n))
        p {
            "One request of one output token through every route (each model's offering through each "
            "of its provider's credentials), sent through a data plane with the probe key and "
            "billed to it like any other request."
        }
        form.grid #probe-form method="post" action="/probe" {
            (views::csrf_field(csrf))
            label { "Through node" select name="node" {
                @for node in &usable { option value=(node.node_id) { (node.node_id) " (" (node.serve_url) ")" } }
            } }
            label { "Only provider" select name="provider" {
                option value="" { "every provider" }
                @for p in providers { option value=(p) { (p) } }
            } }
            button type="submit" disabled[usable.is_empty()] { "Probe every route" }
        }
        @if usable.is_empty() {
            p.empty { "No connected data plane has said where it serves: start one with --advertise-url." }
        }
        @if let Some(run) = run {
            h2 { "Last run" }
            p.meta {
                (views::ms_text(run.started_ms)) " through " (run.node_id) ", billed to key " (run.key_name)
                @if run.left_out > 0 { " · " (run.left_out) " more routes not probed (at most " (MAX_ROUTES) " a run): filter by provider" }
            }
            table #probe-results {
                thead { tr {
                    th { "Model" } th { "Provider" } th { "Credential" } th { "Result" } th { "Status" }
                    th { "Error" } th { "Latency" } th { "Tokens in/out" } th { "Cost" } th { "Request" }
                } }
                tbody {
                    @for row in &run.rows {
                        @let entry = logged.get(&row.request_id);
                        tr class=(if row.ok() { "ok" } else { "failed" }) {
                            td { (row.model) }
                            td { (row.provider) }
                            td.mono { (row.credential_id) @if !row.credential_label.is_empty() { " (" (row.credential_label) ")" } }
                            td.result { @if row.ok() { "ok" } @else { "failed" } }
                            td.num.status { @if row.status > 0 { (row.status) } @else { "—" } }
                            td { (row.error) }
                            td.num { (row.latency_ms) " ms" }
                            td.num { @match entry { Some(r) => { (r.input_tokens) " / " (r.output_tokens) }, None => "—" } }
                            td.num { @match entry { Some(r) => (views::cost_text(r)), None => "—" } }
                            td {
                                @match entry {
                                    Some(r) => { a href=(views::request_href(r)) { "log" } },
                                    None if row.request_id.is_empty() => { "—" },
                                    None => { "pending" },
                                }
                            }
                        }
                    }
                }
            }
        }
    }
}
