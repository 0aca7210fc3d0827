//! The HTTP listener: liveness, readiness, Prometheus metrics, and the
//! chat web app (`/chat/`, files embedded in the binary).

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::Router;
use serde::Serialize;
use starling_cluster::ClusterNode;
use tokio::net::TcpListener;

/// What the chat page needs to reach this node's WebSocket listeners
/// (served as `/chat/config.json`; the page uses its own host name).
#[derive(Debug, Clone, Serialize)]
pub struct ChatSettings {
    pub ws_port: Option<u16>,
    pub wss_port: Option<u16>,
    pub ws_path: String,
}

/// Serves HTTP until `shutdown` resolves; the chat app only with `chat`.
pub async fn serve(
    listener: TcpListener,
    node: Arc<ClusterNode>,
    chat: Option<ChatSettings>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let mut app = Router::new()
        .route("/health/live", get(live))
        .route("/health/ready", get(ready))
        .route("/metrics", get(metrics))
        .with_state(node);
    if let Some(settings) = chat {
        app = app.merge(chat_routes(settings));
    }
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

const CHAT_HTML: &[u8] = include_bytes!("../chat/index.html");
const CHAT_JS: &[u8] = include_bytes!("../chat/chat.js");
const CHAT_CSS: &[u8] = include_bytes!("../chat/chat.css");
const MQTT_JS: &[u8] = include_bytes!("../chat/vendor/mqtt.min.js");

/// The page may talk to any WebSocket endpoint (`?ws=` chooses another
/// node or a proxy); everything else comes from this origin.
const CHAT_CSP: &str = "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; \
                        object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

fn chat_routes(settings: ChatSettings) -> Router {
    fn file(body: &'static [u8], content_type: &'static str) -> Response {
        (
            [
                (header::CONTENT_TYPE, content_type),
                // Small files, embedded: revalidate rather than cache stale
                // copies across upgrades.
                (header::CACHE_CONTROL, "no-cache"),
                (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
                (header::CONTENT_SECURITY_POLICY, CHAT_CSP),
            ],
            body,
        )
            .into_response()
    }
    Router::new()
        .route("/chat", get(|| async { Redirect::permanent("/chat/") }))
        .route("/chat/", get(|| async { file(CHAT_HTML, "text/html; charset=utf-8") }))
        .route("/chat/chat.js", get(|| async { file(CHAT_JS, "text/javascript; charset=utf-8") }))
        .route("/chat/chat.css", get(|| async { file(CHAT_CSS, "text/css; charset=utf-8") }))
        .route("/chat/vendor/mqtt.min.js", get(|| async { file(MQTT_JS, "text/javascript; charset=utf-8") }))
        .route(
            "/chat/config.json",
            get(move || {
                let body = serde_json::to_string(&settings).unwrap_or_default();
                async move { ([(header::CONTENT_TYPE, "application/json")], body) }
            }),
        )
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
