//! Which runtime serves a peer connection. A node's bulk connections
//! (the durable queues' Raft group, durable groups submitted to its
//! leader: `peer_client::Lane::Bulk`) open with `BULK_MARKER` before
//! HTTP/2; the gRPC listener's accept loop (`sort_incoming`) reads it and
//! hands such a connection to a second tonic server running on the bulk
//! runtime (bulk.rs), so that their HTTP/2 framing and handlers run
//! there, at the bulk threads' priority. Every other connection (the main
//! group's, forwarded publishes, an operator's `starling cluster ...`, any
//! standard gRPC client: HTTP/2 begins with "PRI * HTTP/2.0") goes to the
//! server on the main runtime.
//!
//! A tokio socket is served by the reactor of the runtime it was
//! registered with; both ends of a bulk connection are registered with
//! the bulk runtime's (`into_bulk_reactor`, and the connector connects
//! there), or every read and write of the durable rounds would wake a
//! main-runtime thread first, which then wakes a bulk thread (measured on
//! a pure follower at 100 durable messages/s: two such cross-runtime
//! wake-ups per queue-group entry, about 270/s).

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tonic::transport::Uri;

/// What a bulk connection sends before its HTTP/2 preface.
pub const BULK_MARKER: &[u8; 16] = b"STARLING-BULK/1\n";
/// A connection that sent nothing this long after it opened is closed.
const FIRST_BYTES: Duration = Duration::from_secs(10);
/// Sorted connections waiting for their server to take them; beyond
/// this, a connection's sorting task waits (the accept loop does not).
const WAITING: usize = 64;
/// Connections accepted and not sorted yet (silent so far, or waiting
/// for their server); one accepted beyond this is closed at once. Peers
/// keep a few connections each, so only something that is not a peer
/// fills it. Sorted connections are not capped here, as with any gRPC
/// listener: keep the port on a private network (docs/operations.md).
const SORTING: usize = 1024;

/// Connects a bulk channel: TCP (Nagle off), then `BULK_MARKER`.
#[derive(Clone, Copy, Default)]
pub struct BulkConnector;

impl tower_service::Service<Uri> for BulkConnector {
    type Response = TokioIo<TcpStream>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<TokioIo<TcpStream>>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: Uri) -> Self::Future {
        // Connected on the bulk runtime, whoever polls the returned future.
        let connecting = crate::bulk::handle().spawn(async move {
            let host = uri.host().ok_or_else(|| io::Error::other(format!("no host in {uri}")))?;
            let port = uri.port_u16().ok_or_else(|| io::Error::other(format!("no port in {uri}")))?;
            let mut stream = TcpStream::connect((host, port)).await?;
            stream.set_nodelay(true)?;
            stream.write_all(BULK_MARKER).await?;
            Ok(TokioIo::new(stream))
        });
        Box::pin(async move { connecting.await.map_err(io::Error::other)? })
    }
}

/// The two servers' incoming connections.
pub struct Sorted {
    pub main: mpsc::Receiver<io::Result<TcpStream>>,
    pub bulk: mpsc::Receiver<io::Result<TcpStream>>,
}

/// Accepts on `listener` until `stop`, each connection sorted by its
/// first bytes (on a task of its own: a slow client holds up no other).
pub fn sort_incoming(listener: TcpListener, stop: watch::Receiver<bool>) -> Sorted {
    sort_incoming_at_most(listener, stop, SORTING)
}

fn sort_incoming_at_most(listener: TcpListener, mut stop: watch::Receiver<bool>, sorting: usize) -> Sorted {
    let (main_tx, main) = mpsc::channel(WAITING);
    let (bulk_tx, bulk) = mpsc::channel(WAITING);
    let slots = Arc::new(Semaphore::new(sorting));
    tokio::spawn(async move {
        let mut refused: u64 = 0;
        loop {
            let accepted = tokio::select! {
                a = listener.accept() => a,
                _ = stop.wait_for(|s| *s) => return,
            };
            match accepted {
                Ok((stream, from)) => {
                    let Ok(slot) = slots.clone().try_acquire_owned() else {
                        // Logged at the first and then every 1,024th.
                        if refused.is_multiple_of(1024) {
                            tracing::warn!(%from, refused = refused + 1, limit = sorting,
                                "peer connection closed: too many connections not sorted yet");
                        }
                        refused += 1;
                        continue;
                    };
                    let (main_tx, bulk_tx) = (main_tx.clone(), bulk_tx.clone());
                    tokio::spawn(async move {
                        let _slot = slot;
                        match tokio::time::timeout(FIRST_BYTES, lane_of(stream)).await {
                            Ok(Ok((stream, true))) => match into_bulk_reactor(stream) {
                                Ok(stream) => drop(bulk_tx.send(Ok(stream)).await),
                                Err(e) => {
                                    tracing::warn!(error = %e, "cannot move a bulk connection to its runtime")
                                }
                            },
                            Ok(Ok((stream, false))) => drop(main_tx.send(Ok(stream)).await),
                            Ok(Err(e)) => tracing::debug!(error = %e, "peer connection refused"),
                            Err(_) => tracing::debug!("peer connection closed: too slow to say what it is"),
                        }
                    });
                }
                // Out of descriptors and the like: the listener stays,
                // the next accept may succeed.
                Err(e) => {
                    tracing::warn!(error = %e, "cannot accept a peer connection");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    });
    Sorted { main, bulk }
}

/// `stream`, accepted on the main runtime, moved to the bulk runtime's
/// reactor (the module's note).
fn into_bulk_reactor(stream: TcpStream) -> io::Result<TcpStream> {
    let stream = stream.into_std()?;
    let bulk = crate::bulk::handle();
    let _bulk = bulk.enter();
    TcpStream::from_std(stream)
}

/// Whether `stream` is a bulk connection (its marker read off), by its
/// first bytes.
async fn lane_of(mut stream: TcpStream) -> io::Result<(TcpStream, bool)> {
    stream.set_nodelay(true)?;
    let mut first = [0u8; 1];
    if stream.peek(&mut first).await? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "closed before sending anything"));
    }
    if first[0] != BULK_MARKER[0] {
        return Ok((stream, false));
    }
    let mut marker = [0u8; BULK_MARKER.len()];
    stream.read_exact(&mut marker).await?;
    if &marker != BULK_MARKER {
        return Err(io::Error::new(io::ErrorKind::InvalidData, "neither HTTP/2 nor a bulk connection"));
    }
    Ok((stream, true))
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower_service::Service;

    async fn sorted() -> (Sorted, Uri, watch::Sender<bool>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let uri: Uri = format!("http://{}", listener.local_addr().expect("addr")).parse().expect("uri");
        let (stop_tx, stop) = watch::channel(false);
        (sort_incoming(listener, stop), uri, stop_tx)
    }

    async fn first_bytes(stream: io::Result<TcpStream>, n: usize) -> Vec<u8> {
        let mut buf = vec![0u8; n];
        stream.expect("accepted").read_exact(&mut buf).await.expect("read");
        buf
    }

    #[tokio::test]
    async fn connections_not_sorted_yet_are_capped() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let (_stop_tx, stop) = watch::channel(false);
        let mut s = sort_incoming_at_most(listener, stop, 1);
        // A silent connection holds the one slot: the next is closed at once.
        let mut silent = TcpStream::connect(addr).await.expect("connect");
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut over = TcpStream::connect(addr).await.expect("connect");
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf)).await.expect("closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "over the cap: closed, {closed:?}");
        // Once sorted, the slot is free again.
        silent.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), s.main.recv()).await.expect("main").unwrap();
        assert_eq!(first_bytes(got, 16).await, b"PRI * HTTP/2.0\r\n");
        let mut next = TcpStream::connect(addr).await.expect("connect");
        next.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), s.main.recv()).await.expect("main").unwrap();
        assert_eq!(first_bytes(got, 16).await, b"PRI * HTTP/2.0\r\n");
    }

    #[tokio::test]
    async fn connections_are_sorted_by_their_first_bytes() {
        let (mut s, uri, _stop) = sorted().await;
        let addr = format!("{}:{}", uri.host().unwrap(), uri.port_u16().unwrap());

        // A standard HTTP/2 client: the main server, its bytes untouched.
        let mut plain = TcpStream::connect(&addr).await.expect("connect");
        plain.write_all(b"PRI * HTTP/2.0\r\n").await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), s.main.recv()).await.expect("main").unwrap();
        assert_eq!(first_bytes(got, 16).await, b"PRI * HTTP/2.0\r\n");

        // A bulk connection: the bulk server, the marker read off.
        let mut bulk = BulkConnector.call(uri.clone()).await.expect("bulk connect").into_inner();
        bulk.write_all(b"PRI").await.expect("write");
        let got = tokio::time::timeout(Duration::from_secs(5), s.bulk.recv()).await.expect("bulk").unwrap();
        assert_eq!(first_bytes(got, 3).await, b"PRI");

        // Neither HTTP/2 nor the marker, or closed at once: refused.
        let mut odd = TcpStream::connect(&addr).await.expect("connect");
        odd.write_all(b"SOMETHING-ELSE/1").await.expect("write");
        drop(TcpStream::connect(&addr).await.expect("connect"));
        let mut buf = [0u8; 1];
        let closed = tokio::time::timeout(Duration::from_secs(5), odd.read(&mut buf)).await.expect("closed");
        assert!(matches!(closed, Ok(0) | Err(_)), "the odd connection is closed: {closed:?}");
        // The one closed at once reaches neither server either.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(s.main.try_recv().is_err() && s.bulk.try_recv().is_err());
    }
}
