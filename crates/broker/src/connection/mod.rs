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

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{AckKind, MqttStr, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use crate::auth::ClientAcl;
use crate::broker::Broker;
use crate::forward::AckWaiter;
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
/// Read buffer growth step.
const READ_CHUNK: usize = 8 * 1024;
/// A connection quiet for this long releases its read and write buffers.
const IDLE_SHRINK: Duration = Duration::from_secs(2);
/// How long a closing connection may take to flush its last packets.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a connection came from, for logs.
#[derive(Debug, Clone)]
pub struct ConnectionInfo {
    pub peer: String,
    pub transport: &'static str,
    /// Common name of a verified TLS client certificate.
    pub cert_cn: Option<String>,
}

impl ConnectionInfo {
    pub fn new(peer: String, transport: &'static str) -> ConnectionInfo {
        ConnectionInfo { peer, transport, cert_cn: None }
    }

    fn peer_ip(&self) -> Option<std::net::IpAddr> {
        self.peer.parse::<std::net::SocketAddr>().ok().map(|a| a.ip())
    }
}

/// Serves one client connection to completion.
///
/// Not an `async fn`: the returned future is the state of an idle
/// connection's task, so it is built to hold little more than pointers:
/// the boxed handshake, then the boxed run loop. (An `async fn` would also
/// keep its arguments and the handshake's temporaries in the task, several
/// hundred bytes per connection for nothing.)
pub fn serve<S>(broker: Broker, stream: S, info: ConnectionInfo) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    broker.connection_started();
    let guard = FinishGuard(broker.clone());
    let (reader, writer) = tokio::io::split(stream);
    let handshake = Box::pin(handshake::accept(broker, reader, writer, info));
    async move {
        let accepted = handshake.await;
        if let Some(conn) = accepted {
            // Boxed too: awaited inline, the run loop's state is laid out
            // twice in this block (measured 576 bytes instead of 272).
            Box::pin(conn.run()).await;
        }
        drop(guard);
    }
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

/// Per-connection publish rate limit (token buckets of one second's
/// worth). When a client publishes faster, reading from it pauses until
/// the buckets refill: TCP back-pressure slows the client down instead of
/// the broker buffering or dropping.
pub(super) struct RateLimiter {
    msgs_per_sec: f64,
    bytes_per_sec: f64,
    msgs: f64,
    bytes: f64,
    last: Instant,
}

impl RateLimiter {
    pub(super) fn new(msgs_per_sec: u32, bytes_per_sec: u64) -> RateLimiter {
        RateLimiter {
            msgs_per_sec: f64::from(msgs_per_sec),
            bytes_per_sec: bytes_per_sec as f64,
            msgs: f64::from(msgs_per_sec),
            bytes: bytes_per_sec as f64,
            last: Instant::now(),
        }
    }

    fn enabled(&self) -> bool {
        self.msgs_per_sec > 0.0 || self.bytes_per_sec > 0.0
    }

    /// Takes one message of `size` bytes; returns how long reading must
    /// pause (zero when within the limit).
    pub(super) fn take(&mut self, size: usize) -> Duration {
        if !self.enabled() {
            return Duration::ZERO;
        }
        let now = Instant::now();
        let dt = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        let mut wait: f64 = 0.0;
        if self.msgs_per_sec > 0.0 {
            self.msgs = (self.msgs + dt * self.msgs_per_sec).min(self.msgs_per_sec) - 1.0;
            if self.msgs < 0.0 {
                wait = wait.max(-self.msgs / self.msgs_per_sec);
            }
        }
        if self.bytes_per_sec > 0.0 {
            let cap = self.bytes_per_sec.max(size as f64);
            self.bytes = (self.bytes + dt * self.bytes_per_sec).min(cap) - size as f64;
            if self.bytes < 0.0 {
                wait = wait.max(-self.bytes / self.bytes_per_sec);
            }
        }
        Duration::from_secs_f64(wait)
    }
}

/// A PUBACK/PUBREC waiting for other nodes to acknowledge the message.
pub(super) struct PendingAck {
    pub kind: AckKind,
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub wait: Option<AckWaiter>,
}

/// 5.0 topic aliases of one connection.
#[derive(Default)]
struct TopicAliases {
    /// Set by the client: alias → topic.
    inbound: HashMap<u16, MqttStr>,
    /// Assigned by us towards the client: topic → alias.
    outbound: HashMap<MqttStr, u16>,
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
    will: Option<Box<WillSpec>>,
    kick: oneshot::Receiver<Kick>,
    /// 5.0 topic aliases, allocated on first use.
    aliases: Option<Box<TopicAliases>>,
    /// Acknowledgements held back until peers confirm (cluster only).
    acks: VecDeque<PendingAck>,
    /// The authenticated user (None: anonymous).
    username: Option<String>,
    /// The ACL as it applies to this connection, for `acl_version`.
    acl: ClientAcl,
    acl_version: u64,
    rate: RateLimiter,
    /// Reading paused by the rate limit until then.
    throttled_until: Option<Instant>,
    /// Buffered packets left unprocessed while throttled.
    pending_input: bool,
    /// Whether the session queue may hold sendable deliveries.
    want_drain: bool,
    keepalive_deadline: Option<Instant>,
    /// When idle buffers are released.
    shrink_at: Option<Instant>,
    /// One timer for the keep-alive deadline and the idle release; armed
    /// for `timer_at`.
    timer: Pin<Box<Sleep>>,
    timer_at: Option<Instant>,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Boxed so the long-lived task holds a pointer, not the state.
    async fn run(mut self: Box<Self>) {
        let max_packet = self.broker.config().max_packet_size as usize;
        // Packets pipelined behind CONNECT arrived with it.
        let close = match self.process_input(max_packet).await {
            Ok(()) => self.main_loop().await,
            Err(c) => c,
        };
        Box::pin((*self).finish(close)).await;
    }

    async fn main_loop(&mut self) -> Close {
        let max_packet = self.broker.config().max_packet_size as usize;
        loop {
            if self.pending_input && self.throttled_until.is_none() {
                self.pending_input = false;
                if let Err(c) = self.process_input(max_packet).await {
                    return c;
                }
            }
            if self.want_drain && self.wbuf.len() < WRITE_HIGH_WATER {
                if let Err(c) = self.drain() {
                    return c;
                }
            }
            self.arm_timer();
            let can_read = self.wbuf.len() < WRITE_PAUSE_READS && self.throttled_until.is_none();
            let spare = self.rbuf.capacity() - self.rbuf.len();
            let timer_armed = self.timer_at.is_some();
            let waiting_ack = self.acks.front().is_some_and(|a| a.wait.is_some());
            tokio::select! {
                biased;
                kick = &mut self.kick => {
                    return match kick {
                        Ok(k) if k.reason == ReasonCode::SERVER_SHUTTING_DOWN => Close::Shutdown,
                        Ok(k) => Close::Kicked(k.reason),
                        // The session dropped our kick handle: another
                        // connection owns it now.
                        Err(_) => Close::Kicked(ReasonCode::SESSION_TAKEN_OVER),
                    };
                }
                res = self.writer.write_buf(&mut self.wbuf), if !self.wbuf.is_empty() => {
                    match res {
                        Ok(0) => return Close::Lost("write returned 0".into()),
                        Ok(n) => {
                            self.broker.metrics().bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
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
                            self.broker.metrics().bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                            self.touch_keepalive();
                            // A read that filled the spare room means a busy
                            // client: grow in large steps. Otherwise stay small.
                            let busy = n >= spare;
                            if let Err(c) = self.process_input(max_packet).await {
                                return c;
                            }
                            if self.rbuf.capacity() - self.rbuf.len() < 256 {
                                self.rbuf.reserve(if busy { READ_CHUNK } else { 512 });
                            }
                        }
                        Err(e) => return Close::Lost(e.to_string()),
                    }
                }
                _ = self.session.notified(), if self.wbuf.len() < WRITE_HIGH_WATER => {
                    self.want_drain = true;
                }
                _ = front_ack(&mut self.acks), if waiting_ack => {
                    if let Some(front) = self.acks.front_mut() {
                        front.wait = None;
                    }
                    self.flush_ready_acks();
                }
                _ = &mut self.timer, if timer_armed => {
                    if let Some(close) = self.on_timer() {
                        return close;
                    }
                }
            }
        }
    }

    /// Records client activity: moves the keep-alive deadline (1.5 × keep
    /// alive) and postpones the idle buffer release. Only fields change;
    /// the timer is re-armed lazily (`arm_timer`).
    fn touch_keepalive(&mut self) {
        let now = Instant::now();
        if !self.neg.keep_alive.is_zero() {
            self.keepalive_deadline = Some(now + self.neg.keep_alive.mul_f32(1.5));
        }
        self.shrink_at = Some(now + IDLE_SHRINK);
    }

    /// Pauses reading for `wait` (publish rate limit).
    fn throttle(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        if self.throttled_until.is_none() {
            self.broker.metrics().rate_limited.fetch_add(1, Ordering::Relaxed);
        }
        self.throttled_until = Some(self.throttled_until.map_or(until, |t| t.max(until)));
    }

    /// The connection's ACL, recompiled when the rules changed.
    fn acl(&mut self) -> &ClientAcl {
        let v = self.broker.auth().rules_version();
        if v != self.acl_version {
            self.acl = self.broker.auth().acl_for(self.username.as_deref(), self.client.as_str());
            self.acl_version = v;
        }
        &self.acl
    }

    /// Arms the timer for the earliest pending deadline, unless it is
    /// already armed for an earlier one (it then fires early, finds the
    /// deadline moved, and is re-armed).
    fn arm_timer(&mut self) {
        let desired =
            [self.keepalive_deadline, self.shrink_at, self.throttled_until].into_iter().flatten().min();
        if let Some(d) = desired {
            if self.timer_at.is_none_or(|at| d < at) {
                self.timer.as_mut().reset(d);
                self.timer_at = Some(d);
            }
        }
    }

    fn on_timer(&mut self) -> Option<Close> {
        self.timer_at = None;
        let now = Instant::now();
        if self.throttled_until.is_some_and(|t| t <= now) {
            self.throttled_until = None;
            // Time spent throttled is not silence from the client.
            self.touch_keepalive();
            self.pending_input = true;
        }
        if self.keepalive_deadline.is_some_and(|d| d <= now) {
            return Some(Close::KeepAlive);
        }
        if self.shrink_at.is_some_and(|t| t <= now) {
            // An idle connection keeps no buffers: this is what holds the
            // memory of many idle clients down.
            self.shrink_at = None;
            if self.rbuf.is_empty() {
                self.rbuf = BytesMut::new();
            }
            if self.wbuf.is_empty() {
                self.wbuf = BytesMut::new();
            }
            self.session.shrink();
        }
        None
    }
}

/// Waits for the acknowledgement at the head of the queue.
async fn front_ack(acks: &mut VecDeque<PendingAck>) {
    if let Some(w) = acks.front_mut().and_then(|a| a.wait.as_mut()) {
        let _ = w.await;
    }
}
