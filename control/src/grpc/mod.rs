//! The gRPC server: the Admin and Nodes services behind their token checks.

mod admin;
mod auth;
pub(crate) mod convert;
mod nodes;

pub use admin::AdminService;
pub use auth::TokenCheck;
pub use convert::policy as convert_policy;

use crate::catalog_sync::Syncer;
use crate::nodes::Registry;
use crate::routes::Routes;
use crate::store::Store;
use keyplane_proto::MAX_MESSAGE_BYTES;
use keyplane_proto::v1::admin_server::AdminServer;
use keyplane_proto::v1::nodes_server::NodesServer;
use std::sync::Arc;
use std::time::Duration;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::codec::CompressionEncoding;
use tonic::service::interceptor::InterceptedService;

pub struct Services {
    pub store: Arc<Store>,
    pub routes: Arc<Routes>,
    pub registry: Arc<Registry>,
    pub syncer: Arc<Syncer>,
    pub admin_token: TokenCheck,
    pub node_token: TokenCheck,
    /// gRPC over TLS when set.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// Mutual TLS: a Nodes call without a verified client certificate is refused (the Admin
    /// service keeps its bearer token alone, so `keyplanectl` needs no certificate).
    pub require_node_cert: bool,
    /// Keep the request log (`--request-log-retention` not 0); off, usage reports feed the
    /// ledger only.
    pub request_log: bool,
    /// Keep captured bodies (`--request-body-retention` not 0, and the request log on).
    pub request_bodies: bool,
}

/// Serves until `cancel` fires, then stops accepting, ends subscriptions and waits for in-flight
/// calls (a usage report being made durable, say) to finish.
pub async fn serve(
    listener: TcpListener,
    services: Services,
    cancel: CancellationToken,
) -> Result<(), tonic::transport::Error> {
    let admin = AdminServer::new(admin::AdminService {
        store: Arc::clone(&services.store),
        routes: Arc::clone(&services.routes),
        registry: Arc::clone(&services.registry),
        syncer: Arc::clone(&services.syncer),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let nodes = NodesServer::new(nodes::NodesService {
        leases: Arc::new(crate::leases::Leases::new(Arc::clone(&services.store))),
        store: services.store,
        routes: services.routes,
        registry: services.registry,
        cancel: cancel.clone(),
        request_log: services.request_log,
        request_bodies: services.request_bodies,
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES)
    // zstd for data planes that offer it (several times cheaper than gzip to compress usage
    // batches and their acks); gzip for older ones and other clients.
    .accept_compressed(CompressionEncoding::Zstd)
    .accept_compressed(CompressionEncoding::Gzip)
    .send_compressed(CompressionEncoding::Zstd)
    .send_compressed(CompressionEncoding::Gzip);

    let admin_token = services.admin_token;
    let node_token = services.node_token;
    let require_node_cert = services.require_node_cert;
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = services.tls {
        builder = builder.tls_config(tls)?;
    }
    builder
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .http2_keepalive_timeout(Some(Duration::from_secs(20)))
        .tcp_nodelay(true)
        .add_service(InterceptedService::new(admin, move |req| {
            admin_token.check(req)
        }))
        .add_service(InterceptedService::new(
            nodes,
            move |req: tonic::Request<()>| {
                if require_node_cert && req.peer_certs().is_none_or(|c| c.is_empty()) {
                    return Err(tonic::Status::unauthenticated(
                        "a client certificate is required (mutual TLS)",
                    ));
                }
                node_token.check(req)
            },
        ))
        .serve_with_incoming_shutdown(
            // The builder's `tcp_nodelay` applies only to listeners tonic binds itself: with
            // Nagle on, a reply of more than one segment waited for the client's delayed ACK
            // (40 ms on Linux) before its last segment went out.
            tokio_stream::StreamExt::map(
                tokio_stream::wrappers::TcpListenerStream::new(listener),
                |conn| {
                    if let Ok(stream) = &conn {
                        let _ = stream.set_nodelay(true);
                    }
                    conn
                },
            ),
            cancel.cancelled_owned(),
        )
        .await
}
