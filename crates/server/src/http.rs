//! The HTTP listener: liveness, readiness and Prometheus metrics.

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use starling_cluster::ClusterNode;
use tokio::net::TcpListener;

/// Serves HTTP until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    node: Arc<ClusterNode>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn live() -> &'static str {
    "ok\n"
}

/// 200 when this node accepts clients: it knows a leader it heard from
/// recently, finished its startup reset, and is neither draining nor
/// shutting down.
async fn ready(State(node): State<Arc<ClusterNode>>) -> impl IntoResponse {
    if node.broker.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(node): State<Arc<ClusterNode>>) -> impl IntoResponse {
    let mut body = node.broker.render_metrics();
    body.push_str(&node.render_metrics());
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body)
}
