//! Accept loops for the MQTT listeners (TCP and WebSocket).
//!
//! Connections are bounded by a semaphore shared by all MQTT listeners
//! (`listeners.max_connections`): a socket accepted over the limit is
//! closed at once, before anything is read from it, and counted in
//! `starling_connections_rejected_total`.

use std::sync::Arc;
use std::time::Duration;

use starling_broker::{serve, Broker, ConnectionInfo};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio_rustls::TlsAcceptor;

/// Which protocol a listener speaks.
#[derive(Clone)]
pub enum Transport {
    Tcp,
    WebSocket { path: String },
    Tls { acceptor: TlsAcceptor },
    SecureWebSocket { acceptor: TlsAcceptor, path: String },
}

/// Accepts connections until `stop` changes.
pub async fn accept_loop(
    listener: TcpListener,
    transport: Transport,
    broker: Broker,
    limit: Arc<Semaphore>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let accepted = tokio::select! {
            _ = stop.changed() => return,
            r = listener.accept() => r,
        };
        let (socket, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and similar: back off briefly
                // instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            broker.metrics().connections_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::warn!(%peer, "connection refused: listeners.max_connections reached");
            drop(socket);
            continue;
        };
        let _ = socket.set_nodelay(true);
        let peer = peer.to_string();
        // One spawn per transport: each task is sized by its own future
        // (the WebSocket handshake's state is much larger than a TCP
        // connection's, and idle connections are what the memory is for).
        match &transport {
            Transport::Tcp => {
                let info = ConnectionInfo::new(peer, "tcp");
                tokio::spawn(serve(broker.clone(), socket, info, permit));
            }
            Transport::WebSocket { path } => {
                tokio::spawn(Box::pin(serve_ws(broker.clone(), socket, peer, path.clone(), permit)));
            }
            Transport::Tls { acceptor } => {
                tokio::spawn(Box::pin(serve_tls(
                    broker.clone(),
                    socket,
                    peer,
                    acceptor.clone(),
                    None,
                    permit,
                )));
            }
            Transport::SecureWebSocket { acceptor, path } => {
                let (a, p) = (acceptor.clone(), Some(path.clone()));
                tokio::spawn(Box::pin(serve_tls(broker.clone(), socket, peer, a, p, permit)));
            }
        }
    }
}

async fn serve_ws(
    broker: Broker,
    socket: TcpStream,
    peer: String,
    path: String,
    permit: OwnedSemaphorePermit,
) {
    let max = broker.config().max_packet_size as usize + 16;
    let timeout = Duration::from_secs(broker.config().connect_timeout_secs);
    match tokio::time::timeout(timeout, crate::ws::accept(socket, &path, max)).await {
        Ok(Ok(ws)) => {
            let info = ConnectionInfo::new(peer, "ws");
            Box::pin(serve(broker, ws, info, permit)).await
        }
        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "WebSocket handshake failed"),
        Err(_) => tracing::debug!(%peer, "WebSocket handshake timed out"),
    }
}

/// TLS handshake (within the connect timeout), then MQTT directly or over
/// a WebSocket (`ws_path`).
async fn serve_tls(
    broker: Broker,
    socket: TcpStream,
    peer: String,
    acceptor: TlsAcceptor,
    ws_path: Option<String>,
    permit: OwnedSemaphorePermit,
) {
    let timeout = Duration::from_secs(broker.config().connect_timeout_secs);
    let tls = match tokio::time::timeout(timeout, acceptor.accept(socket)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "TLS handshake failed");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "TLS handshake timed out");
            return;
        }
    };
    let cert_cn = crate::tls::peer_common_name(tls.get_ref().1);
    match ws_path {
        None => {
            let info = ConnectionInfo { peer, transport: "tls", cert_cn };
            Box::pin(serve(broker, tls, info, permit)).await
        }
        Some(path) => {
            let max = broker.config().max_packet_size as usize + 16;
            match tokio::time::timeout(timeout, crate::ws::accept(tls, &path, max)).await {
                Ok(Ok(ws)) => {
                    let info = ConnectionInfo { peer, transport: "wss", cert_cn };
                    Box::pin(serve(broker, ws, info, permit)).await
                }
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "secure WebSocket handshake failed"),
                Err(_) => tracing::debug!(%peer, "secure WebSocket handshake timed out"),
            }
        }
    }
}
