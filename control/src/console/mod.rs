//! The web console (`--console-listen`): server-rendered pages over the control plane's own
//! store, for operators who sign in with the admin token.
//!
//! Security rules every handler keeps:
//! - a page needs a live session ([`session::Sessions`]), whose id travels only in an
//!   `HttpOnly; SameSite=Strict` cookie (`Secure` over TLS);
//! - every POST carries the session's CSRF token and, when the browser says where it comes from
//!   (`Origin`, `Sec-Fetch-Site`), comes from this console;
//! - sign-in attempts are limited per client address;
//! - every response carries a Content-Security-Policy without inline script or style, and
//!   `no-store`, so a page that showed a new key is not kept in a cache;
//! - no page renders a secret, a token or a full client key, except the one response that
//!   creates a key.

mod assets;
mod data;
mod portal;
mod probe;
mod session;
mod views;

pub use session::{AttemptLimit, Principal, Sessions};

use crate::catalog::ProviderRec;
use crate::error::Error;
use crate::grpc::TokenCheck;
use crate::nodes::Registry;
use crate::routes::Routes;
use crate::store::{Store, now_ms};
use axum::Router;
use axum::body::Body;
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use maud::Markup;
use session::Session;
use std::collections::HashMap;
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use views::Notice;

/// The operator session cookie's name.
const COOKIE: &str = "keyplane_session";
/// The portal's session cookie: separate, so a key holder's sign-in never replaces an
/// operator's session in the same browser, nor the other way round.
const PORTAL_COOKIE: &str = "keyplane_portal";

/// Sign-in attempts allowed per client address per minute.
pub const SIGN_IN_ATTEMPTS_PER_MINUTE: usize = 5;

/// The policy every response carries: only this origin's files, no inline code, no framing.
const CSP: &str = "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; \
                   connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; \
                   frame-ancestors 'none'";

/// What the console's handlers share.
pub struct Console {
    pub store: Arc<Store>,
    pub routes: Arc<Routes>,
    pub registry: Arc<Registry>,
    pub syncer: Arc<crate::catalog_sync::Syncer>,
    pub admin_token: TokenCheck,
    pub sessions: Sessions,
    pub attempts: AttemptLimit,
    /// Served over HTTPS: the cookie is `Secure`, and the expected origin is `https://`.
    pub tls: bool,
    /// The route probe's client and last run.
    prober: probe::Prober,
}

impl Console {
    pub fn new(
        store: Arc<Store>,
        routes: Arc<Routes>,
        registry: Arc<Registry>,
        syncer: Arc<crate::catalog_sync::Syncer>,
        admin_token: TokenCheck,
        tls: bool,
    ) -> Console {
        Console {
            store,
            routes,
            registry,
            syncer,
            admin_token,
            sessions: Sessions::default(),
            attempts: AttemptLimit::new(SIGN_IN_ATTEMPTS_PER_MINUTE, Duration::from_secs(60)),
            tls,
            prober: probe::Prober::new(&[]),
        }
    }

    /// Lets the route probe reach data planes whose HTTPS certificates this CA signs (the
    /// control plane's `--client-ca`, which signs the nodes' certificates), besides the public
    /// web roots.
    pub fn trust_node_ca(&mut self, pem: &std::path::Path) -> Result<(), String> {
        use rustls_pki_types::CertificateDer;
        use rustls_pki_types::pem::PemObject;
        let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(pem)
            .and_then(|it| it.collect::<Result<_, _>>())
            .map_err(|e| format!("--client-ca {}: {e}", pem.display()))?;
        self.prober = probe::Prober::new(&certs);
        Ok(())
    }

    /// After a write: durable before the answer, then the route table recompiled (as the Admin
    /// service does).
    async fn committed(&self) -> Result<(), Error> {
        self.store.flush().await?;
        self.routes.changed();
        Ok(())
    }
}

/// The connecting client's address, put on each request by the accept loop.
#[derive(Clone, Copy)]
struct Peer(SocketAddr);

/// The routes of the console.
fn router(console: Arc<Console>) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/login", get(login_form).post(login))
        .route("/logout", post(logout))
        .route("/keys", get(keys).post(create_key))
        .route("/keys/revoke", post(revoke_key))
        .route("/keys/edit", get(edit_key_form).post(edit_key))
        .route("/providers", get(providers))
        .route("/credentials", post(add_credential))
        .route("/credentials/enable", post(enable_credential))
        .route("/credentials/disable", post(disable_credential))
        .route("/credentials/set", post(set_credential))
        .route("/providers/set", post(set_provider))
        .route("/probe", get(probe::show).post(probe::run))
        .route("/models", get(models))
        .route("/catalog/sync", post(sync_catalog))
        .route("/usage", get(usage))
        .route("/usage.csv", get(usage_csv))
        .route("/requests", get(requests))
        .route("/requests/view", get(request_view))
        .route("/nodes", get(nodes))
        .route("/connect", get(connect))
        .route("/portal", get(portal::home))
        .route("/portal/login", post(portal::login))
        .route("/portal/logout", post(portal::logout))
        .route("/assets/{file}", get(asset))
        .fallback(not_found)
        .with_state(console)
}

/// Serves the console until `cancel` fires: HTTPS when `tls` is given, else plain HTTP/1.1.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    console: Arc<Console>,
    cancel: CancellationToken,
) {
    let router = router(console);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "console accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let router = router.clone();
        let tls = tls.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |mut req: http::Request<_>| {
                req.extensions_mut().insert(Peer(peer));
                let router = router.clone();
                async move {
                    let resp = tower::ServiceExt::oneshot(router, req.map(Body::new)).await;
                    let mut resp = match resp {
                        Ok(resp) => resp,
                        Err(never) => match never {},
                    };
                    harden(resp.headers_mut());
                    Ok::<_, Infallible>(resp)
                }
            });
            let builder = {
                let mut b = hyper::server::conn::http1::Builder::new();
                // A client that never finishes its request head must not hold a task forever.
                b.timer(hyper_util::rt::TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(10));
                b
            };
            match tls {
                Some(acceptor) => {
                    let Ok(Ok(stream)) =
                        tokio::time::timeout(Duration::from_secs(10), acceptor.accept(stream))
                            .await
                    else {
                        return;
                    };
                    let conn =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, () = cancel.cancelled() => {} }
                }
                None => {
                    let conn =
                        builder.serve_connection(hyper_util::rt::TokioIo::new(stream), service);
                    tokio::select! { _ = conn => {}, () = cancel.cancelled() => {} }
                }
            }
        });
    }
}

/// A TLS acceptor for the console from the control plane's `--tls-cert`/`--tls-key`.
pub fn tls_acceptor(cert: &std::path::Path, key: &std::path::Path) -> Result<TlsAcceptor, String> {
    use rustls_pki_types::pem::PemObject;
    use rustls_pki_types::{CertificateDer, PrivateKeyDer};
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .and_then(|it| it.collect::<Result<_, _>>())
        .map_err(|e| format!("--tls-cert {}: {e}", cert.display()))?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| format!("--tls-key {}: {e}", key.display()))?;
    let mut config = rustls::ServerConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| format!("TLS setup: {e}"))?
    .with_no_client_auth()
    .with_single_cert(chain, key_der)
    .map_err(|e| format!("--tls-cert/--tls-key do not make a usable pair: {e}"))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// The headers every response carries.
fn harden(headers: &mut HeaderMap) {
    let set = |headers: &mut HeaderMap, name: header::HeaderName, value: &'static str| {
        headers.insert(name, HeaderValue::from_static(value));
    };
    set(headers, header::CONTENT_SECURITY_POLICY, CSP);
    set(headers, header::X_CONTENT_TYPE_OPTIONS, "nosniff");
    set(headers, header::REFERRER_POLICY, "no-referrer");
    set(headers, header::X_FRAME_OPTIONS, "DENY");
    if !headers.contains_key(header::CACHE_CONTROL) {
        set(headers, header::CACHE_CONTROL, "no-store");
    }
}

fn page(status: StatusCode, markup: Markup) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
        markup.into_string(),
    )
        .into_response()
}

fn see_other(location: &str) -> Response {
    (StatusCode::SEE_OTHER, [(header::LOCATION, location)]).into_response()
}

fn refused(why: &str) -> Response {
    page(StatusCode::FORBIDDEN, views::message("Refused", why))
}

/// An error of the store, for the operator: the message of a refusal, a generic line otherwise
/// (the details go to the log).
fn error_text(err: &Error) -> String {
    match err {
        Error::InvalidArgument(m) | Error::NotFound(m) | Error::AlreadyExists(m) => m.clone(),
        other => {
            tracing::error!(error = %other, "console request failed");
            "internal error; see the control plane's log".to_string()
        }
    }
}

fn internal(err: &Error) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        views::message("Error", &error_text(err)),
    )
}

/// The session id in the request's cookie `name`.
fn cookie_id(headers: &HeaderMap, name: &str) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|c| c.trim().strip_prefix(name)?.strip_prefix('='))
        .map(str::to_string)
        .next()
}

/// The operator's session, if the request has one.
fn operator(c: &Console, headers: &HeaderMap) -> Option<Session> {
    let session = c.sessions.get(&cookie_id(headers, COOKIE)?)?;
    (session.principal == Principal::Operator).then_some(session)
}

/// Whether a state-changing request comes from this console's own pages, as far as the browser
/// says. `Sec-Fetch-Site`, when sent, must be `same-origin`. `Origin`, when it names an origin,
/// must be this console's. Under `Referrer-Policy: no-referrer` browsers send `Origin: null`
/// even for a same-origin form, so `null` passes only with `Sec-Fetch-Site: same-origin` (a
/// sandboxed frame elsewhere also sends `null`, but never with that header).
fn same_origin(c: &Console, headers: &HeaderMap) -> bool {
    let site = headers.get("sec-fetch-site").map(HeaderValue::as_bytes);
    if site.is_some_and(|s| s != b"same-origin") {
        return false;
    }
    match headers.get(header::ORIGIN).map(HeaderValue::to_str) {
        None => true,
        Some(Ok("null")) => site.is_some(),
        Some(Ok(origin)) => {
            let host = headers
                .get(header::HOST)
                .and_then(|h| h.to_str().ok())
                .unwrap_or_default();
            let scheme = if c.tls { "https" } else { "http" };
            origin == format!("{scheme}://{host}")
        }
        Some(Err(_)) => false,
    }
}

/// A form's fields by name (the last value of a repeated name wins).
type Fields = HashMap<String, String>;

/// Why a request was refused, as the operator reads it.
const CROSS_ORIGIN: &str = "This request did not come from the console's own pages.";

/// A state-changing request of a signed-in operator, its checks passed: it comes from this
/// console's pages, with a live operator session and that session's CSRF token. Every POST
/// behind sign-in takes it (as its last argument: it reads the body), so none can forget a
/// check; a request that fails one is answered 403 before its handler runs.
struct Posted {
    session: Session,
    fields: Fields,
    headers: HeaderMap,
}

impl Posted {
    /// A form field, trimmed; empty when absent.
    fn field(&self, name: &str) -> String {
        self.fields
            .get(name)
            .map(|v| v.trim().to_string())
            .unwrap_or_default()
    }
}

impl axum::extract::FromRequest<Arc<Console>> for Posted {
    type Rejection = Response;

    async fn from_request(
        req: axum::extract::Request,
        c: &Arc<Console>,
    ) -> Result<Self, Self::Rejection> {
        let headers = req.headers().clone();
        let Form(fields) = Form::<Fields>::from_request(req, c)
            .await
            .map_err(IntoResponse::into_response)?;
        let session = guard(c, &headers, &fields).map_err(refused)?;
        Ok(Posted {
            session,
            fields,
            headers,
        })
    }
}

/// The status a refused or failed store call answers with.
fn error_status(err: &Error) -> StatusCode {
    match err {
        Error::InvalidArgument(_) => StatusCode::BAD_REQUEST,
        Error::NotFound(_) => StatusCode::NOT_FOUND,
        Error::AlreadyExists(_) => StatusCode::CONFLICT,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    }
}

/// An operator's change to the store: run off the async threads, made durable and routed (as
/// the Admin service does), and told back as the page's notice with its status. `done` words
/// the success (and logs it).
async fn change<T: Send + 'static>(
    c: &Console,
    write: impl FnOnce(&Store) -> Result<T, Error> + Send + 'static,
    done: impl FnOnce(T) -> String,
) -> (StatusCode, Notice) {
    let store = Arc::clone(&c.store);
    let result = match blocking(move || write(&store)).await {
        Ok(v) => c.committed().await.map(|()| v),
        Err(e) => Err(e),
    };
    match result {
        Ok(v) => (StatusCode::OK, Notice::Done(done(v))),
        Err(e) => (error_status(&e), Notice::Error(error_text(&e))),
    }
}

/// The checks of every POST behind sign-in: origin, session, CSRF token. The error is the
/// refusal's text (answered with 403).
fn guard(c: &Console, headers: &HeaderMap, fields: &Fields) -> Result<Session, &'static str> {
    if !same_origin(c, headers) {
        return Err(CROSS_ORIGIN);
    }
    let Some(session) = operator(c, headers) else {
        return Err("Sign in first.");
    };
    let presented = fields.get("csrf").map_or("", String::as_str);
    if !session::same(presented, &session.csrf) {
        return Err(
            "The form's security token is missing or stale: reload the page and try again.",
        );
    }
    Ok(session)
}

fn set_cookie(c: &Console, id: &str, max_age: u64) -> HeaderValue {
    named_cookie(c, COOKIE, id, max_age)
}

fn named_cookie(c: &Console, name: &str, id: &str, max_age: u64) -> HeaderValue {
    let secure = if c.tls { "; Secure" } else { "" };
    let text = format!("{name}={id}; Path=/; HttpOnly; SameSite=Strict; Max-Age={max_age}{secure}");
    // The id is hex, so the value is always a valid header value.
    HeaderValue::from_str(&text).unwrap_or_else(|_| HeaderValue::from_static(""))
}

// --- sign-in ---

async fn login_form(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    if operator(&c, &headers).is_some() {
        return see_other("/");
    }
    page(StatusCode::OK, views::login("/login", "Admin token", None))
}

async fn login(
    State(c): State<Arc<Console>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    if !same_origin(&c, &headers) {
        return refused(CROSS_ORIGIN);
    }
    if let Err(wait) = c.attempts.attempt(peer.ip()) {
        tracing::warn!(client = %peer.ip(), "console sign-in attempts over the limit");
        let mut resp = page(
            StatusCode::TOO_MANY_REQUESTS,
            views::login(
                "/login",
                "Admin token",
                Some("Too many sign-in attempts: wait a minute and try again."),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let token = fields.get("token").map_or("", String::as_str);
    if !c.admin_token.matches(token.trim()) {
        tracing::warn!(client = %peer.ip(), "console sign-in with a wrong admin token");
        return page(
            StatusCode::UNAUTHORIZED,
            views::login("/login", "Admin token", Some("Wrong admin token.")),
        );
    }
    let (id, _) = c.sessions.create(Principal::Operator);
    tracing::info!(client = %peer.ip(), "console sign-in");
    let mut resp = see_other("/");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        set_cookie(&c, &id, session::SESSION_TTL.as_secs()),
    );
    resp
}

async fn logout(State(c): State<Arc<Console>>, post: Posted) -> Response {
    if let Some(id) = cookie_id(&post.headers, COOKIE) {
        c.sessions.remove(&id);
    }
    let mut resp = see_other("/login");
    resp.headers_mut()
        .insert(header::SET_COOKIE, set_cookie(&c, "", 0));
    resp
}

// --- pages ---

/// Runs a blocking store read off the async threads.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| Error::Internal(format!("console task failed: {e}")))?
}

async fn overview(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let window = q.get("window").map_or("day", String::as_str);
    let Some(&(name, _, hours)) = data::WINDOWS.iter().find(|w| w.0 == window) else {
        return page(
            StatusCode::BAD_REQUEST,
            views::message("Bad request", "Unknown window."),
        );
    };
    let store = Arc::clone(&c.store);
    match blocking(move || data::overview(&store, now_ms(), hours, None)).await {
        Ok(o) => page(
            StatusCode::OK,
            views::layout("Overview", "/", &session.csrf, views::overview(&o, name)),
        ),
        Err(e) => internal(&e),
    }
}

/// Every key with its spend in its current budget period.
fn key_rows(store: &Store) -> Result<Vec<views::KeyRow>, Error> {
    let now = now_ms();
    store
        .keys()?
        .into_iter()
        .map(|key| {
            let from = crate::period::period_start_day(key.policy.period(), now);
            let spent = store.key_spend_since(&key.id, from)?;
            Ok(views::KeyRow {
                spent_nano_usd: spent.cost_nano_usd,
                spent_tokens: spent.input_tokens + spent.output_tokens,
                key,
            })
        })
        .collect()
}

async fn keys_page(
    c: &Console,
    session: &Session,
    status: StatusCode,
    created: Option<(&str, &str)>,
    n: Notice,
) -> Response {
    let store = Arc::clone(&c.store);
    match blocking(move || key_rows(&store)).await {
        Ok(rows) => page(
            status,
            views::layout(
                "Keys",
                "/keys",
                &session.csrf,
                views::keys(&rows, created, &n, &session.csrf),
            ),
        ),
        Err(e) => internal(&e),
    }
}

async fn keys(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    keys_page(&c, &session, StatusCode::OK, None, Notice::None).await
}

/// The policy of the create-key form, as `keyplanectl key create` takes it.
/// With `clear_empty` (the edit form, which shows every current value) a field left empty
/// clears its limit; otherwise (the create form) it leaves the default.
fn policy_of(fields: &Fields, clear_empty: bool) -> Result<crate::keys::PolicyInput, String> {
    let text = |name: &str| {
        fields
            .get(name)
            .map(|v| v.trim().to_string())
            .filter(|v| clear_empty || !v.is_empty())
    };
    fn number<T: std::str::FromStr + Default>(
        name: &str,
        v: Option<String>,
    ) -> Result<Option<T>, String> {
        v.map(|v| {
            if v.is_empty() {
                return Ok(T::default());
            }
            v.parse::<T>()
                .map_err(|_| format!("{name} {v:?} is not a whole number"))
        })
        .transpose()
    }
    let expires_at_ms = match text("expires") {
        None => None,
        Some(d) if d.is_empty() => Some(0),
        Some(d) => {
            Some(date_ms(&d).ok_or_else(|| format!("expiry {d:?} is not a date (YYYY-MM-DD)"))?)
        }
    };
    Ok(crate::keys::PolicyInput {
        budget_usd: text("budget_usd"),
        budget_tokens: number("budget (tokens)", text("budget_tokens"))?,
        period: text("period"),
        rpm: number("requests per minute", text("rpm"))?,
        tpm: number("tokens per minute", text("tpm"))?,
        concurrency: number("concurrent requests", text("concurrency"))?,
        models: text("models"),
        expires_at_ms,
        // A checkbox is sent only when ticked: unticked on the edit form turns capture off.
        capture_bodies: match fields.get("capture_bodies") {
            Some(_) => Some(true),
            None if clear_empty => Some(false),
            None => None,
        },
    })
}

async fn create_key(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let session = &post.session;
    let name = post.field("name");
    let policy = match policy_of(&post.fields, false) {
        Ok(p) => p,
        Err(m) => {
            return keys_page(&c, session, StatusCode::BAD_REQUEST, None, Notice::Error(m)).await;
        }
    };
    let store = Arc::clone(&c.store);
    let made = {
        let name = name.clone();
        blocking(move || store.create_key_with(&name, &policy)).await
    };
    let (rec, key) = match made {
        Ok(made) => made,
        Err(e) => {
            let n = Notice::Error(error_text(&e));
            return keys_page(&c, session, error_status(&e), None, n).await;
        }
    };
    if let Err(e) = c.committed().await {
        return internal(&e);
    }
    tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key created (console)");
    keys_page(
        &c,
        session,
        StatusCode::OK,
        Some((&rec.name, key.expose())),
        Notice::None,
    )
    .await
}

async fn edit_key_form(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let name = q.get("name").cloned().unwrap_or_default();
    let store = Arc::clone(&c.store);
    match blocking(move || store.key_by_name(&name)).await {
        Ok(Some(key)) => page(
            StatusCode::OK,
            views::layout(
                "Edit key",
                "/keys",
                &session.csrf,
                views::edit_key(&key, &session.csrf),
            ),
        ),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            views::message("Not found", "There is no key with that name."),
        ),
        Err(e) => internal(&e),
    }
}

/// `keyplanectl key set`: the key's whole policy from the edit form.
async fn edit_key(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let name = post.field("name");
    let policy = match policy_of(&post.fields, true) {
        Ok(p) => p,
        Err(m) => {
            let n = Notice::Error(m);
            return keys_page(&c, &post.session, StatusCode::BAD_REQUEST, None, n).await;
        }
    };
    let (status, n) = change(
        &c,
        move |store| store.set_key_policy(&name, &policy),
        |rec| {
            tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key policy set (console)");
            format!("Key {} updated.", rec.name)
        },
    )
    .await;
    keys_page(&c, &post.session, status, None, n).await
}

async fn revoke_key(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let name = post.field("name");
    let (status, n) = change(
        &c,
        move |store| store.revoke_key(&name),
        |rec| {
            tracing::info!(key_name = %rec.name, client_key_id = %rec.id, "client key revoked (console)");
            format!("Key {} revoked.", rec.name)
        },
    )
    .await;
    keys_page(&c, &post.session, status, None, n).await
}

async fn providers_page(c: &Console, session: &Session, status: StatusCode, n: Notice) -> Response {
    let store = Arc::clone(&c.store);
    let read = blocking(move || Ok((store.providers()?, store.credentials()?))).await;
    match read {
        Ok((providers, credentials)) => {
            let providers: Vec<ProviderRec> = providers;
            page(
                status,
                views::layout(
                    "Providers",
                    "/providers",
                    &session.csrf,
                    views::providers(&providers, &credentials, now_ms(), &n, &session.csrf),
                ),
            )
        }
        Err(e) => internal(&e),
    }
}

async fn providers(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    providers_page(&c, &session, StatusCode::OK, Notice::None).await
}

async fn add_credential(State(c): State<Arc<Console>>, mut post: Posted) -> Response {
    // Moved out of the form at once, into the type that zeroes and redacts it.
    let secret = crate::creds::Secret::new(post.fields.remove("secret").unwrap_or_default());
    let get = |k: &str| post.fields.get(k).cloned().unwrap_or_default();
    let (provider, label, multiplier, resets) = (
        get("provider"),
        get("label"),
        get("multiplier"),
        get("quota_resets"),
    );
    let (status, n) = change(
        &c,
        move |store| {
            if secret.expose().trim().is_empty() {
                return Err(Error::InvalidArgument("the secret is empty".into()));
            }
            store.add_credential_with(&provider, &label, &multiplier, &secret, &resets)
        },
        |rec| {
            tracing::info!(provider = %rec.provider, credential_id = %rec.id, "credential added (console)");
            format!("Credential {} added to {}.", rec.id, rec.provider)
        },
    )
    .await;
    providers_page(&c, &post.session, status, n).await
}

/// `keyplanectl credential enable`: back to active, whatever its state.
async fn enable_credential(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let id = post.field("id");
    let (status, n) = change(
        &c,
        move |store| store.enable_credential(&id),
        |rec| {
            tracing::info!(credential_id = %rec.id, "credential enabled (console)");
            format!("Credential {} enabled.", rec.id)
        },
    )
    .await;
    providers_page(&c, &post.session, status, n).await
}

/// `keyplanectl credential set`: multiplier and quota reset period (the row's form shows both,
/// so both are sent; the store checks them as `credential add` does).
async fn set_credential(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let (id, multiplier, resets) = (
        post.field("id"),
        post.field("multiplier"),
        post.field("quota_resets"),
    );
    let (status, n) = change(
        &c,
        move |store| store.set_credential(&id, Some(&multiplier), Some(&resets), None),
        |rec| {
            tracing::info!(credential_id = %rec.id, "credential set (console)");
            format!(
                "Credential {} now costs {} times the price{}.",
                rec.id,
                crate::money::format_micros(rec.multiplier_ppm),
                match rec.quota_resets.as_str() {
                    "" => String::new(),
                    p => format!(", its quota resets {p}"),
                }
            )
        },
    )
    .await;
    providers_page(&c, &post.session, status, n).await
}

/// `keyplanectl credential disable`: out of routing until enabled.
async fn disable_credential(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let (id, reason) = (post.field("id"), post.field("reason"));
    let (status, n) = change(
        &c,
        move |store| store.disable_credential(&id, &reason),
        |rec| {
            tracing::info!(credential_id = %rec.id, "credential disabled (console)");
            format!("Credential {} disabled.", rec.id)
        },
    )
    .await;
    providers_page(&c, &post.session, status, n).await
}

/// A timeout or size field of the provider form: empty leaves it unchanged, 0 is the data
/// plane's default (as `keyplanectl provider set`'s flags).
fn optional_number<T: std::str::FromStr>(
    post: &Posted,
    name: &str,
    what: &str,
) -> Result<Option<T>, String> {
    let text = post.field(name);
    if text.is_empty() {
        return Ok(None);
    }
    text.parse()
        .map(Some)
        .map_err(|_| format!("{what} {text:?} is not a whole number"))
}

/// `keyplanectl provider set`: protocol, base URL, timeouts, largest answer; an empty field
/// stays as it is.
async fn set_provider(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let numbers = (|| {
        Ok::<_, String>((
            optional_number::<u32>(&post, "connect_timeout_ms", "connect timeout")?,
            optional_number::<u32>(&post, "first_byte_timeout_ms", "first-byte timeout")?,
            optional_number::<u32>(&post, "idle_timeout_ms", "idle timeout")?,
            optional_number::<u64>(&post, "max_body_bytes", "largest answer")?,
        ))
    })();
    let (connect_ms, first_byte_ms, idle_ms, max_body_bytes) = match numbers {
        Ok(n) => n,
        Err(m) => {
            let n = Notice::Error(m);
            return providers_page(&c, &post.session, StatusCode::BAD_REQUEST, n).await;
        }
    };
    let text = |name: &str| Some(post.field(name)).filter(|v| !v.is_empty());
    let (name, protocol, base_url) = (post.field("name"), text("protocol"), text("base_url"));
    let (status, n) = change(
        &c,
        move |store| {
            store.set_provider(&crate::catalog::ProviderChange {
                name: &name,
                protocol: protocol.as_deref(),
                base_url: base_url.as_deref(),
                connect_ms,
                first_byte_ms,
                idle_ms,
                max_body_bytes,
            })
        },
        |rec| {
            tracing::info!(provider = %rec.name, protocol = rec.protocol.as_str(), base_url = %rec.base_url, "provider set (console)");
            format!("Provider {} updated.", rec.name)
        },
    )
    .await;
    providers_page(&c, &post.session, status, n).await
}

/// A `YYYY-MM-DD` date (UTC) as Unix ms at its start.
fn date_ms(text: &str) -> Option<i64> {
    let parts: Vec<i64> = text.split('-').filter_map(|p| p.parse().ok()).collect();
    let [y, m, d] = parts.as_slice() else {
        return None;
    };
    ((1..=12).contains(m) && (1..=31).contains(d))
        .then(|| crate::period::days_from_civil(*y, *m, *d) * 86_400_000)
}

/// The usage report's query from the query string (as `keyplanectl usage` takes it), with the
/// form's values to show again.
fn usage_query(
    q: &HashMap<String, String>,
) -> (
    views::UsageForm,
    Result<keyplane_proto::v1::QueryUsageRequest, String>,
) {
    let field = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let form = views::UsageForm {
        key: field("key"),
        since: field("since"),
        until: field("until"),
        by: field("by"),
    };
    let date = |text: &str, what: &str| {
        if text.is_empty() {
            Ok(0)
        } else {
            date_ms(text).ok_or_else(|| format!("{what} {text:?} is not a date (YYYY-MM-DD)."))
        }
    };
    let req = (|| {
        Ok(keyplane_proto::v1::QueryUsageRequest {
            key: form.key.clone(),
            since_ms: date(&form.since, "Since")?,
            // Until a date means through the end of that day.
            until_ms: match date(&form.until, "Until")? {
                0 => 0,
                ms => ms + 86_400_000,
            },
            by: form.by.clone(),
        })
    })();
    (form, req)
}

/// The usage rows the Admin service's `QueryUsage` answers (called in process, not over gRPC),
/// so the console's report is `keyplanectl usage`'s to the row.
async fn usage_rows(
    c: &Console,
    req: keyplane_proto::v1::QueryUsageRequest,
) -> Result<Vec<keyplane_proto::v1::UsageRow>, String> {
    use keyplane_proto::v1::admin_server::Admin;
    let admin = crate::grpc::AdminService {
        store: Arc::clone(&c.store),
        routes: Arc::clone(&c.routes),
        registry: Arc::clone(&c.registry),
        syncer: Arc::clone(&c.syncer),
    };
    admin
        .query_usage(tonic::Request::new(req))
        .await
        .map(|r| r.into_inner().rows)
        .map_err(|status| status.message().to_string())
}

async fn usage(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let (form, req) = usage_query(&q);
    let result = match req {
        Ok(req) => usage_rows(&c, req).await,
        Err(why) => Err(why),
    };
    let (status, rows, n) = match result {
        Ok(rows) => (StatusCode::OK, rows, Notice::None),
        Err(why) => (StatusCode::BAD_REQUEST, Vec::new(), Notice::Error(why)),
    };
    page(
        status,
        views::layout(
            "Usage",
            "/usage",
            &session.csrf,
            views::usage(&rows, &form, &n),
        ),
    )
}

/// The usage report as CSV, for a spreadsheet.
async fn usage_csv(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    if operator(&c, &headers).is_none() {
        return see_other("/login");
    }
    let (_, req) = usage_query(&q);
    let result = match req {
        Ok(req) => usage_rows(&c, req).await,
        Err(why) => Err(why),
    };
    match result {
        Ok(rows) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
                (
                    header::CONTENT_DISPOSITION,
                    "attachment; filename=\"keyplane-usage.csv\"",
                ),
            ],
            views::usage_csv(&rows),
        )
            .into_response(),
        Err(why) => page(StatusCode::BAD_REQUEST, views::message("Bad request", &why)),
    }
}

/// The most entries one page of the request log shows.
const MAX_PAGE: usize = 1000;

/// The request log's filter from the query string, or why it is not one.
fn request_filter(
    store: &Store,
    q: &views::RequestQuery,
) -> Result<crate::request_log::RequestFilter, String> {
    let mut f = crate::request_log::RequestFilter::default();
    if !q.key.is_empty() {
        let key = store
            .key_by_name(&q.key)
            .map_err(|e| error_text(&e))?
            .ok_or_else(|| format!("No key named {:?}.", q.key))?;
        f.key_id = Some(key.id);
    }
    if !q.model.is_empty() {
        f.model = Some(q.model.clone());
    }
    if !q.status.is_empty() {
        f.status = Some(
            q.status
                .parse()
                .map_err(|_| format!("Status {:?} is not a number.", q.status))?,
        );
    }
    let date = |text: &str, what: &str| {
        if text.is_empty() {
            Ok(0)
        } else {
            date_ms(text).ok_or_else(|| format!("{what} {text:?} is not a date (YYYY-MM-DD)."))
        }
    };
    f.since_ms = date(&q.since, "Since")?;
    // Until a date means through the end of that day.
    f.until_ms = match date(&q.until, "Until")? {
        0 => 0,
        ms => ms + 86_400_000,
    };
    f.limit = if q.limit.is_empty() {
        crate::request_log::DEFAULT_LIMIT
    } else {
        q.limit
            .parse::<usize>()
            .map_err(|_| format!("Limit {:?} is not a number.", q.limit))?
            .clamp(1, MAX_PAGE)
    };
    Ok(f)
}

/// Fills in each entry's key name (the log stores the key id only).
fn name_keys(
    store: &Store,
    entries: &mut [keyplane_proto::v1::LoggedRequest],
) -> Result<(), Error> {
    let names: HashMap<String, String> =
        store.keys()?.into_iter().map(|k| (k.id, k.name)).collect();
    for e in entries {
        if let Some(r) = &e.record {
            e.key = names.get(&r.key_id).cloned().unwrap_or_default();
        }
    }
    Ok(())
}

async fn requests(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let field = |k: &str| q.get(k).map(|v| v.trim().to_string()).unwrap_or_default();
    let query = views::RequestQuery {
        key: field("key"),
        model: field("model"),
        status: field("status"),
        since: field("since"),
        until: field("until"),
        limit: field("limit"),
    };
    let store = Arc::clone(&c.store);
    let shown = query.clone();
    let read = blocking(move || {
        let filter = match request_filter(&store, &shown) {
            Ok(f) => f,
            Err(why) => return Ok(Err(why)),
        };
        let mut entries = store.list_requests(&filter)?;
        name_keys(&store, &mut entries)?;
        Ok(Ok(entries))
    })
    .await;
    let (status, entries, n) = match read {
        Ok(Ok(entries)) => (StatusCode::OK, entries, Notice::None),
        Ok(Err(why)) => (StatusCode::BAD_REQUEST, Vec::new(), Notice::Error(why)),
        Err(e) => return internal(&e),
    };
    page(
        status,
        views::layout(
            "Requests",
            "/requests",
            &session.csrf,
            views::requests(&entries, &query, &n),
        ),
    )
}

/// One request, found by its start time and id (the log's own key, so no scan).
async fn request_view(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let id = q.get("id").cloned().unwrap_or_default();
    let Some(at) = q.get("at").and_then(|a| a.parse::<i64>().ok()) else {
        return page(
            StatusCode::BAD_REQUEST,
            views::message("Bad request", "Which request? (id and at)"),
        );
    };
    let store = Arc::clone(&c.store);
    let found = blocking(move || {
        let filter = crate::request_log::RequestFilter {
            since_ms: at,
            until_ms: at + 1,
            limit: crate::request_log::MAX_LIMIT,
            ..Default::default()
        };
        let mut entries: Vec<_> = store
            .list_requests(&filter)?
            .into_iter()
            .filter(|e| e.record.as_ref().is_some_and(|r| r.request_id == id))
            .collect();
        name_keys(&store, &mut entries)?;
        let bodies = match entries.last() {
            Some(_) => store.request_bodies(at, &id)?,
            None => None,
        };
        Ok(entries.pop().map(|e| (e, bodies)))
    })
    .await;
    match found {
        Ok(Some((entry, bodies))) => page(
            StatusCode::OK,
            views::layout(
                "Request",
                "/requests",
                &session.csrf,
                views::request(&entry, bodies.as_ref()),
            ),
        ),
        Ok(None) => page(
            StatusCode::NOT_FOUND,
            views::message(
                "Not found",
                "No such request in the log (it may have been pruned).",
            ),
        ),
        Err(e) => internal(&e),
    }
}

async fn models_page(c: &Console, session: &Session, status: StatusCode, n: Notice) -> Response {
    let store = Arc::clone(&c.store);
    let syncer = Arc::clone(&c.syncer);
    let read = blocking(move || {
        Ok(views::Models {
            offerings: store.effective_offerings(None)?,
            catalogs: syncer.status(None)?,
            aliases: store.aliases()?,
            chains: store.chains()?,
        })
    })
    .await;
    match read {
        Ok(m) => page(
            status,
            views::layout(
                "Models",
                "/models",
                &session.csrf,
                views::models(&m, now_ms(), &n, &session.csrf),
            ),
        ),
        Err(e) => internal(&e),
    }
}

async fn models(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    models_page(&c, &session, StatusCode::OK, Notice::None).await
}

/// "Sync now" for one provider's catalog, as `keyplanectl catalog sync PROVIDER`.
async fn sync_catalog(State(c): State<Arc<Console>>, post: Posted) -> Response {
    let session = &post.session;
    let provider = post.field("provider");
    let n = match c.syncer.sync_now(Some(&provider)).await {
        Ok(statuses) => match statuses.first() {
            Some(s) if s.rec.last_error.is_empty() => Notice::Done(format!(
                "Synced {}: {} models.",
                s.rec.provider,
                s.rec.models.len()
            )),
            Some(s) => Notice::Error(format!(
                "Sync of {} failed: {}",
                s.rec.provider, s.rec.last_error
            )),
            None => Notice::Error(format!("{provider} has no catalog to sync.")),
        },
        Err(e) => Notice::Error(error_text(&e)),
    };
    models_page(&c, session, StatusCode::OK, n).await
}

async fn nodes(State(c): State<Arc<Console>>, headers: HeaderMap) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let registry = Arc::clone(&c.registry);
    match blocking(move || registry.list()).await {
        Ok(list) => page(
            StatusCode::OK,
            views::layout("Nodes", "/nodes", &session.csrf, views::nodes(&list)),
        ),
        Err(e) => internal(&e),
    }
}

async fn connect(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some(session) = operator(&c, &headers) else {
        return see_other("/login");
    };
    let typed = q
        .get("url")
        .map(|u| u.trim().to_string())
        .filter(|u| !u.is_empty());
    let url = match typed {
        Some(url) => url,
        None => {
            // Untyped: where a connected data plane says it serves clients, so the settings
            // work as pasted; the demo's address when no node has said.
            let registry = Arc::clone(&c.registry);
            let nodes = blocking(move || registry.list()).await.unwrap_or_default();
            nodes
                .into_iter()
                .find(|n| n.connected && !n.serve_url.is_empty())
                .map(|n| n.serve_url)
                .unwrap_or_else(|| "https://127.0.0.1:8080".to_string())
        }
    };
    page(
        StatusCode::OK,
        views::layout(
            "Connect a tool",
            "/connect",
            &session.csrf,
            views::connect(&url),
        ),
    )
}

async fn asset(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match assets::find(&file) {
        Some((ctype, body)) => (
            StatusCode::OK,
            [
                (header::CONTENT_TYPE, ctype),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            body,
        )
            .into_response(),
        None => not_found(Method::GET).await,
    }
}

async fn not_found(_: Method) -> Response {
    page(
        StatusCode::NOT_FOUND,
        views::message("Not found", "There is no such page."),
    )
}
