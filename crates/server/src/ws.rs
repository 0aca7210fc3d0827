//! MQTT over WebSocket: the HTTP upgrade (path and subprotocol checks);
//! the upgraded connection is a byte stream (`starling_ws::WsStream`) for
//! the MQTT connection driver.

use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;

pub use starling_ws::WsStream;

/// Subprotocols MQTT clients offer, in our order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the server side of the WebSocket handshake on `stream`.
// The callback's error type is tungstenite's HTTP response.
#[allow(clippy::result_large_err)]
pub async fn accept<S>(stream: S, path: &str, max_message: usize) -> Result<WsStream<S>, String>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = path.to_string();
    let callback = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut e = ErrorResponse::new(Some(format!("no WebSocket endpoint at {}\n", req.uri().path())));
            *e.status_mut() = StatusCode::NOT_FOUND;
            return Err(e);
        }
        let offered: Vec<String> = req
            .headers()
            .get_all("sec-websocket-protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(|s| s.trim().to_ascii_lowercase()))
            .collect();
        if !offered.is_empty() {
            let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.iter().any(|o| o == *p)) else {
                let mut e = ErrorResponse::new(Some("subprotocol must be mqtt or mqttv3.1\n".into()));
                *e.status_mut() = StatusCode::BAD_REQUEST;
                return Err(e);
            };
            resp.headers_mut().insert("sec-websocket-protocol", HeaderValue::from_static(chosen));
        }
        Ok(resp)
    };
    let config = WebSocketConfig {
        max_message_size: Some(max_message),
        max_frame_size: Some(max_message),
        ..Default::default()
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, callback, Some(config))
        .await
        .map_err(|e| e.to_string())?;
    Ok(WsStream::new(ws))
}
