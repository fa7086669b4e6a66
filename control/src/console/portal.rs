//! The key holders' portal (`/portal`): sign in with a client key, see that key's budget,
//! limits, usage and recent requests, and nothing of any other key.
//!
//! The key is checked against the stored SHA-256 hashes (the key itself is never stored) and
//! never rendered; the session remembers only the key's id. A key revoked or expired after
//! sign-in ends the session at its next page.

use super::session::{Principal, Session, same};
use super::{
    CROSS_ORIGIN, Console, Fields, PORTAL_COOKIE, Peer, blocking, cookie_id, data, internal,
    named_cookie, page, refused, same_origin, see_other, views,
};
use crate::error::Error;
use crate::keys::ClientKeyRec;
use crate::store::{Store, now_ms};
use axum::extract::{Extension, Form, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::Response;
use std::collections::HashMap;
use std::sync::Arc;

const LABEL: &str = "Your Keyplane client key";

/// The key holder's session and key id, if the request has one.
fn holder(c: &Console, headers: &HeaderMap) -> Option<(Session, String)> {
    let session = c.sessions.get(&cookie_id(headers, PORTAL_COOKIE)?)?;
    match &session.principal {
        Principal::KeyHolder { key_id } => {
            let id = key_id.clone();
            Some((session, id))
        }
        Principal::Operator => None,
    }
}

/// Whether a key may still sign in: not revoked, not expired.
fn usable(key: &ClientKeyRec, now_ms: i64) -> bool {
    key.revoked_at_ms.is_none()
        && (key.policy.expires_at_ms == 0 || key.policy.expires_at_ms > now_ms)
}

/// The stored key whose hash is the presented key's, compared in constant time per key.
fn key_of(store: &Store, presented: &str) -> Result<Option<ClientKeyRec>, Error> {
    let digest = hex::encode(crate::keys::hash_key(presented));
    let mut found = None;
    for key in store.keys()? {
        if same(&key.sha256, &digest) {
            found = Some(key);
        }
    }
    Ok(found)
}

pub(super) async fn login(
    State(c): State<Arc<Console>>,
    Extension(Peer(peer)): Extension<Peer>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    if !same_origin(&c, &headers) {
        return refused(CROSS_ORIGIN);
    }
    if let Err(wait) = c.attempts.attempt(peer.ip()) {
        tracing::warn!(client = %peer.ip(), "portal sign-in attempts over the limit");
        let mut resp = page(
            StatusCode::TOO_MANY_REQUESTS,
            views::login(
                "/portal/login",
                LABEL,
                Some("Too many sign-in attempts: wait a minute and try again."),
            ),
        );
        if let Ok(v) = HeaderValue::from_str(&wait.to_string()) {
            resp.headers_mut().insert(header::RETRY_AFTER, v);
        }
        return resp;
    }
    let presented = fields
        .get("token")
        .map(|t| t.trim().to_string())
        .unwrap_or_default();
    let store = Arc::clone(&c.store);
    let key = match blocking(move || key_of(&store, &presented)).await {
        Ok(key) => key.filter(|k| usable(k, now_ms())),
        Err(e) => return internal(&e),
    };
    let Some(key) = key else {
        tracing::warn!(client = %peer.ip(), "portal sign-in with an unknown, revoked or expired key");
        return page(
            StatusCode::UNAUTHORIZED,
            views::login(
                "/portal/login",
                LABEL,
                Some("Unknown, revoked or expired key."),
            ),
        );
    };
    tracing::info!(client = %peer.ip(), client_key_id = %key.id, "portal sign-in");
    let (id, _) = c.sessions.create(Principal::KeyHolder { key_id: key.id });
    let mut resp = see_other("/portal");
    resp.headers_mut().insert(
        header::SET_COOKIE,
        named_cookie(
            &c,
            PORTAL_COOKIE,
            &id,
            super::session::SESSION_TTL.as_secs(),
        ),
    );
    resp
}

pub(super) async fn logout(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Form(fields): Form<Fields>,
) -> Response {
    if !same_origin(&c, &headers) {
        return refused(CROSS_ORIGIN);
    }
    let Some((session, _)) = holder(&c, &headers) else {
        return refused("Sign in first.");
    };
    if !same(fields.get("csrf").map_or("", String::as_str), &session.csrf) {
        return refused(
            "The form's security token is missing or stale: reload the page and try again.",
        );
    }
    if let Some(id) = cookie_id(&headers, PORTAL_COOKIE) {
        c.sessions.remove(&id);
    }
    let mut resp = see_other("/portal");
    resp.headers_mut()
        .insert(header::SET_COOKIE, named_cookie(&c, PORTAL_COOKIE, "", 0));
    resp
}

pub(super) async fn home(
    State(c): State<Arc<Console>>,
    headers: HeaderMap,
    Query(q): Query<HashMap<String, String>>,
) -> Response {
    let Some((session, key_id)) = holder(&c, &headers) else {
        return page(StatusCode::OK, views::login("/portal/login", LABEL, None));
    };
    let window = q.get("window").map_or("day", String::as_str);
    let Some(&(name, _, hours)) = data::WINDOWS.iter().find(|w| w.0 == window) else {
        return page(
            StatusCode::BAD_REQUEST,
            views::message("Bad request", "Unknown window."),
        );
    };
    let store = Arc::clone(&c.store);
    let read = blocking(move || {
        let Some(key) = store.key_by_id(&key_id)? else {
            return Ok(None);
        };
        let now = now_ms();
        if !usable(&key, now) {
            return Ok(None);
        }
        let from = crate::period::period_start_day(key.policy.period(), now);
        let spent = store.key_spend_since(&key.id, from)?;
        let overview = data::overview(&store, now, hours, Some(&key.id))?;
        let entries = store.list_requests(&crate::request_log::RequestFilter {
            key_id: Some(key.id.clone()),
            limit: crate::request_log::DEFAULT_LIMIT,
            ..Default::default()
        })?;
        let row = views::KeyRow {
            spent_nano_usd: spent.cost_nano_usd,
            spent_tokens: spent.input_tokens + spent.output_tokens,
            key,
        };
        Ok(Some((row, overview, entries)))
    })
    .await;
    match read {
        Ok(Some((row, overview, entries))) => page(
            StatusCode::OK,
            views::portal(&row, &overview, name, &entries, &session.csrf),
        ),
        Ok(None) => {
            // The key was revoked, expired or deleted since sign-in: the session ends.
            if let Some(id) = cookie_id(&headers, PORTAL_COOKIE) {
                c.sessions.remove(&id);
            }
            let mut resp = page(
                StatusCode::UNAUTHORIZED,
                views::login(
                    "/portal/login",
                    LABEL,
                    Some("This key is revoked or expired."),
                ),
            );
            resp.headers_mut()
                .insert(header::SET_COOKIE, named_cookie(&c, PORTAL_COOKIE, "", 0));
            resp
        }
        Err(e) => internal(&e),
    }
}
