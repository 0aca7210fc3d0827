//! The HTTP listener: liveness, readiness and Prometheus metrics.

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use starling_broker::Broker;
use tokio::net::TcpListener;

/// Serves HTTP until `shutdown` resolves.
pub async fn serve(
    listener: TcpListener,
    broker: Broker,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(broker);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn live() -> &'static str {
    "ok\n"
}

async fn ready(State(broker): State<Broker>) -> impl IntoResponse {
    if broker.is_ready() {
        (StatusCode::OK, "ready\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

async fn metrics(State(broker): State<Broker>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], broker.render_metrics())
}
