//! Prometheus metrics of the control plane, served by `--metrics-listen ADDR` at `GET /metrics`
//! on a plain HTTP listener of its own (metrics hold no secret).
//!
//! Counters are process-wide statics bumped where things happen; gauges that describe the store
//! (catalog sizes, nodes, route version) are read at scrape time.

use crate::nodes::Registry;
use crate::routes::Routes;
use crate::store::Store;
use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;
use std::convert::Infallible;
use std::sync::{Arc, LazyLock};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct NodeLabel {
    node: String,
}

/// Counters bumped by the services.
pub struct Counters {
    /// Usage records stored for the first time.
    pub usage_ingested: Counter,
    /// Usage records received again (already stored): harmless re-sends.
    pub usage_duplicates: Counter,
    pub usage_rejected: Counter,
    pub route_tables_compiled: Counter,
    /// Route tables sent to subscribers.
    route_tables_sent: Family<NodeLabel, Counter>,
}

pub static COUNTERS: LazyLock<Counters> = LazyLock::new(|| Counters {
    usage_ingested: Counter::default(),
    usage_duplicates: Counter::default(),
    usage_rejected: Counter::default(),
    route_tables_compiled: Counter::default(),
    route_tables_sent: Family::default(),
});

impl Counters {
    pub fn table_sent(&self, node: &str) {
        self.route_tables_sent
            .get_or_create(&NodeLabel {
                node: node.to_string(),
            })
            .inc();
    }
}

/// What a scrape reads.
pub struct Source {
    pub store: Arc<Store>,
    pub routes: Arc<Routes>,
    pub registry: Arc<Registry>,
}

impl Source {
    /// The Prometheus text exposition, gauges read now.
    pub fn encode(&self) -> String {
        let mut reg = PromRegistry::with_prefix("keyplane_control");
        let gauge = |v: usize| {
            let g: Gauge = Gauge::default();
            g.set(i64::try_from(v).unwrap_or(i64::MAX));
            g
        };
        let nodes = self.registry.list().unwrap_or_default();
        let connected = nodes.iter().filter(|n| n.connected).count();
        reg.register(
            "nodes_connected",
            "Data planes subscribed now",
            gauge(connected),
        );
        reg.register("nodes_known", "Data planes ever seen", gauge(nodes.len()));
        let table = self.routes.current();
        let version: Gauge = Gauge::default();
        version.set(i64::try_from(table.route_version).unwrap_or(i64::MAX));
        reg.register(
            "route_version",
            "Version of the newest route table",
            version,
        );
        let generated: Gauge = Gauge::default();
        generated.set(table.generated_at_ms / 1000);
        reg.register(
            "route_table_generated_timestamp_seconds",
            "When the newest route table was compiled (Unix seconds)",
            generated,
        );
        reg.register(
            "providers",
            "Providers in the catalog",
            gauge(self.store.providers().map(|v| v.len()).unwrap_or(0)),
        );
        reg.register(
            "credentials",
            "Upstream credentials in the catalog",
            gauge(self.store.credentials().map(|v| v.len()).unwrap_or(0)),
        );
        reg.register(
            "model_offerings",
            "Model offerings in the catalog",
            gauge(self.store.offerings(None).map(|v| v.len()).unwrap_or(0)),
        );
        reg.register(
            "client_keys",
            "Client keys, revoked ones included",
            gauge(self.store.keys().map(|v| v.len()).unwrap_or(0)),
        );
        let c = &*COUNTERS;
        reg.register(
            "usage_records_ingested",
            "Usage records stored (each request once)",
            c.usage_ingested.clone(),
        );
        reg.register(
            "usage_records_duplicate",
            "Usage records received again and ignored (safe re-sends)",
            c.usage_duplicates.clone(),
        );
        reg.register(
            "usage_records_rejected",
            "Malformed usage records refused",
            c.usage_rejected.clone(),
        );
        reg.register(
            "route_tables_compiled",
            "Route tables compiled",
            c.route_tables_compiled.clone(),
        );
        reg.register(
            "route_tables_sent",
            "Route tables sent to data planes, by node",
            c.route_tables_sent.clone(),
        );
        let mut out = String::new();
        if prometheus_client::encoding::text::encode(&mut out, &reg).is_err() {
            out.clear();
        }
        out
    }
}

/// Serves `GET /metrics` (and `GET /healthz`) over HTTP/1.1 until `cancel` fires.
pub async fn serve(listener: TcpListener, source: Arc<Source>, cancel: CancellationToken) {
    loop {
        let (stream, _) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(conn) => conn,
                Err(err) => {
                    tracing::warn!(error = %err, "metrics accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = cancel.cancelled() => return,
        };
        let source = Arc::clone(&source);
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let source = Arc::clone(&source);
            async move { Ok::<_, Infallible>(respond(&source, &req).await) }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(stream);
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, service)
                .await;
        });
    }
}

async fn respond(source: &Arc<Source>, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => {
            let src = Arc::clone(source);
            let text = tokio::task::spawn_blocking(move || src.encode())
                .await
                .unwrap_or_default();
            (
                StatusCode::OK,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                text,
            )
        }
        (&Method::GET, "/healthz") => (StatusCode::OK, "text/plain", "ok\n".to_string()),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found\n".to_string(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    if let Ok(v) = ctype.parse() {
        resp.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    resp
}
