//! One MQTT connection, from the first byte to the close, over any byte
//! stream (TCP, TLS, WebSocket adapters).
//!
//! `serve` reads the CONNECT (`handshake.rs`), claims the session through
//! the state port and then runs one task that multiplexes: bytes from the
//! client (`inbound.rs`), deliveries from the session queue
//! (`outbound.rs`), the keep-alive deadline, a kick (takeover, admin) and
//! server shutdown. How it ends decides the will and the session's fate
//! (`close.rs`).
//!
//! Buffers are bounded: the read buffer holds at most one maximum-size
//! packet plus one read; the write buffer stops taking deliveries at
//! `WRITE_HIGH_WATER` (they stay in the session queue, itself bounded) and
//! reading pauses while it is above `WRITE_PAUSE_READS`, so a client that
//! does not read cannot make the broker buffer without bound.

mod close;
mod handshake;
mod inbound;
mod outbound;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{MqttStr, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::{oneshot, watch};
use tokio::time::Instant;

use crate::broker::Broker;
use crate::ids::{ClientId, Epoch};
use crate::session::{Kick, Session};
use crate::will::WillSpec;

pub use close::Close;

/// Stop moving deliveries into the write buffer above this many bytes.
const WRITE_HIGH_WATER: usize = 64 * 1024;
/// Stop reading from the client while this many bytes wait to be written.
const WRITE_PAUSE_READS: usize = 256 * 1024;
/// Deliveries taken from the session queue per lock.
const DRAIN_BATCH: usize = 64;
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection came from, for logs.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: String,
    pub transport: &'static str,
}

/// Serves one client connection to completion.
pub async fn serve<S>(broker: Broker, stream: S, info: ConnectionInfo)
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    broker.connection_started();
    let guard = FinishGuard(broker.clone());
    let (reader, writer) = tokio::io::split(stream);
    if let Some(conn) = handshake::accept(&broker, reader, writer, &info).await {
        conn.run().await;
    }
    drop(guard);
}

struct FinishGuard(Broker);

impl Drop for FinishGuard {
    fn drop(&mut self) {
        self.0.connection_finished();
    }
}

/// What the client negotiated in CONNECT.
struct Negotiated {
    version: ProtocolVersion,
    keep_alive: Duration,
    /// Session expiry in seconds; DISCONNECT may change it.
    session_expiry: u32,
    /// Outbound QoS>0 window: min(our max_inflight, client Receive Maximum).
    window: usize,
    /// Largest packet the client accepts.
    client_max_packet: usize,
    /// Topic aliases the client accepts from us.
    client_alias_max: u16,
    /// 5.0 Request Problem Information (reason strings allowed).
    problem_info: bool,
}

/// A connected, authenticated client.
struct Conn<S> {
    broker: Broker,
    reader: ReadHalf<S>,
    writer: WriteHalf<S>,
    rbuf: BytesMut,
    wbuf: BytesMut,
    info: ConnectionInfo,
    client: ClientId,
    epoch: Epoch,
    session: Arc<Session>,
    neg: Negotiated,
    will: Option<WillSpec>,
    kick: oneshot::Receiver<Kick>,
    shutdown: watch::Receiver<bool>,
    /// 5.0 topic aliases the client set: alias → topic.
    inbound_aliases: HashMap<u16, MqttStr>,
    /// Topic aliases we assigned towards the client.
    outbound_aliases: HashMap<MqttStr, u16>,
    /// Whether the session queue may hold sendable deliveries.
    want_drain: bool,
    keepalive_deadline: Option<Instant>,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    async fn run(mut self) {
        let max_packet = self.broker.config().max_packet_size as usize;
        // Packets pipelined behind CONNECT arrived with it.
        let close = match self.process_input(max_packet).await {
            Ok(()) => self.main_loop().await,
            Err(c) => c,
        };
        self.finish(close).await;
    }

    async fn main_loop(&mut self) -> Close {
        let max_packet = self.broker.config().max_packet_size as usize;
        loop {
            if self.want_drain && self.wbuf.len() < WRITE_HIGH_WATER {
                if let Err(c) = self.drain() {
                    return c;
                }
            }
            let can_read = self.wbuf.len() < WRITE_PAUSE_READS;
            let deadline = self.keepalive_deadline;
            let session = self.session.clone();
            tokio::select! {
                biased;
                kick = &mut self.kick => {
                    return match kick {
                        Ok(k) => Close::Kicked(k.reason),
                        // The session dropped our kick handle: another
                        // connection owns it now.
                        Err(_) => Close::Kicked(ReasonCode::SESSION_TAKEN_OVER),
                    };
                }
                _ = self.shutdown.changed() => return Close::Shutdown,
                res = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    match res {
                        Ok(0) => return Close::Lost("write returned 0".into()),
                        Ok(n) => {
                            self.broker.metrics().bytes_sent.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            if self.wbuf.is_empty() {
                                if let Err(e) = self.writer.flush().await {
                                    return Close::Lost(e.to_string());
                                }
                            }
                        }
                        Err(e) => return Close::Lost(e.to_string()),
                    }
                }
                res = self.reader.read_buf(&mut self.rbuf), if can_read => {
                    match res {
                        Ok(0) => return Close::Lost("connection closed by client".into()),
                        Ok(n) => {
                            self.broker.metrics().bytes_received.fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
                            if let Err(c) = self.process_input(max_packet).await {
                                return c;
                            }
                            if self.rbuf.capacity() - self.rbuf.len() < 1024 {
                                self.rbuf.reserve(8 * 1024);
                            }
                        }
                        Err(e) => return Close::Lost(e.to_string()),
                    }
                }
                _ = session.notified(), if self.wbuf.len() < WRITE_HIGH_WATER => {
                    self.want_drain = true;
                }
                _ = sleep_until_opt(deadline) => {
                    return Close::KeepAlive;
                }
            }
        }
    }

    fn touch_keepalive(&mut self) {
        if !self.neg.keep_alive.is_zero() {
            self.keepalive_deadline = Some(Instant::now() + self.neg.keep_alive.mul_f32(1.5));
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
