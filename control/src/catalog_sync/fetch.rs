//! The control plane's HTTP client for models lists: hyper-util over rustls (webpki roots), the
//! same stack the data plane uses. No compression is asked for, bodies are capped, and error
//! messages carry the status and a short, single-line excerpt of the body, never a header.

use bytes::Bytes;
use http_body_util::{BodyExt, Empty, Limited};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use std::time::Duration;

/// Longest models list accepted (OpenRouter's full list is about 1 MB).
pub const MAX_BODY_BYTES: usize = 64 * 1024 * 1024;

type Https = hyper_rustls::HttpsConnector<HttpConnector>;

#[derive(Clone)]
pub struct Fetcher {
    client: Client<Https, Empty<Bytes>>,
}

impl Fetcher {
    pub fn new(connect_timeout: Duration) -> Fetcher {
        let mut http = HttpConnector::new();
        http.enforce_http(false);
        http.set_connect_timeout(Some(connect_timeout));
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_webpki_roots()
            .https_or_http()
            .enable_http1()
            .enable_http2()
            .wrap_connector(http);
        Fetcher {
            client: Client::builder(TokioExecutor::new())
                .pool_idle_timeout(Duration::from_secs(30))
                .build(https),
        }
    }

    /// `GET url` with `headers`; the body of a 2xx answer, else a one-line reason.
    pub async fn get(
        &self,
        url: &str,
        headers: &[(http::HeaderName, http::HeaderValue)],
    ) -> Result<Vec<u8>, String> {
        let uri: http::Uri = url
            .parse()
            .map_err(|e| format!("URL {url:?} is invalid: {e}"))?;
        let mut req = http::Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(http::header::USER_AGENT, "keyplane-control catalog sync")
            .body(Empty::new())
            .map_err(|e| format!("cannot build the request: {e}"))?;
        for (name, value) in headers {
            req.headers_mut().insert(name.clone(), value.clone());
        }
        let resp = self
            .client
            .request(req)
            .await
            .map_err(|e| format!("GET {url} failed: {}", chain(&e)))?;
        let status = resp.status();
        let body = Limited::new(resp.into_body(), MAX_BODY_BYTES)
            .collect()
            .await
            .map_err(|e| format!("GET {url}: reading the body failed: {e}"))?
            .to_bytes();
        if !status.is_success() {
            return Err(format!(
                "GET {url} answered HTTP {}: {}",
                status.as_u16(),
                excerpt(&body)
            ));
        }
        Ok(body.to_vec())
    }
}

fn chain(err: &dyn std::error::Error) -> String {
    let mut text = err.to_string();
    let mut source = err.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// The first 200 characters of a body, on one line.
pub fn excerpt(body: &[u8]) -> String {
    let text = String::from_utf8_lossy(body);
    let one_line: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect();
    one_line.trim().to_string()
}
