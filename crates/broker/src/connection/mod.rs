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
//! The loop polls the stream, the kick, the session's wake-up and any
//! pending acknowledgement itself (`poll_event`) rather than through
//! `select!` over futures, so an idle connection's task holds no futures
//! and the stream is not split into two shared halves. Keep-alive and idle
//! deadlines go to the node-wide `DeadlineWheel` (no timer per
//! connection); only a throttled connection holds a timer of its own.
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
use std::io;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use starling_codec::{AckKind, MqttStr, ProtocolVersion, ReasonCode};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::time::{Instant, Sleep};

use crate::auth::ClientAcl;
use crate::broker::Broker;
use crate::deadlines::Tick;
use crate::durable::{Stored, StoredWaiter};
use crate::forward::AckWaiter;
use crate::ids::Epoch;
use crate::message::Message;
use crate::router::RoutePlan;
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
/// A connection without a read buffer reads into this much stack space
/// first, so that an idle connection holds no read buffer at all.
const READ_PROBE: usize = 512;
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

/// Serves one client connection to completion. `hold` (for example a
/// connection-limit permit) is dropped when the connection ends.
///
/// Not an `async fn`: the returned future is the state of an idle
/// connection's task, so it is built to hold little more than pointers:
/// the boxed handshake, then the boxed run loop. (An `async fn` would also
/// keep its arguments and the handshake's temporaries in the task, several
/// hundred bytes per connection for nothing.)
///
/// Taking `hold` here rather than in a wrapping future matters: a future
/// that awaits another stored in it keeps that one twice, and the spawned
/// task then no longer fits tokio's smallest task allocation (256 bytes).
pub fn serve<S, H>(
    broker: Broker,
    stream: S,
    info: ConnectionInfo,
    hold: H,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
    H: Send + 'static,
{
    broker.connection_started();
    let guard = FinishGuard(broker.clone(), hold);
    let handshake = Box::pin(handshake::accept(broker, stream, info));
    async move {
        let accepted = handshake.await;
        if let Some(conn) = accepted {
            conn.run().await;
        }
        drop(guard);
    }
}

struct FinishGuard<H>(Broker, #[allow(dead_code)] H);

impl<H> Drop for FinishGuard<H> {
    fn drop(&mut self) {
        self.0.connection_finished();
    }
}

/// What the client negotiated in CONNECT.
struct Negotiated {
    version: ProtocolVersion,
    /// Keep alive in seconds (0: none).
    keep_alive: u16,
    /// Session expiry in seconds; DISCONNECT may change it.
    session_expiry: u32,
    /// Outbound QoS>0 window: min(our max_inflight, client Receive Maximum).
    window: u16,
    /// Largest packet the client accepts.
    client_max_packet: u32,
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
    /// The limiter for the configured rates; `None` (nothing held per
    /// connection) when both are unlimited (0).
    pub(super) fn configured(msgs_per_sec: u32, bytes_per_sec: u64) -> Option<Box<RateLimiter>> {
        if msgs_per_sec == 0 && bytes_per_sec == 0 {
            return None;
        }
        Some(Box::new(RateLimiter {
            msgs_per_sec: f64::from(msgs_per_sec),
            bytes_per_sec: bytes_per_sec as f64,
            msgs: f64::from(msgs_per_sec),
            bytes: bytes_per_sec as f64,
            last: Instant::now(),
        }))
    }

    /// Takes one message of `size` bytes; returns how long reading must
    /// pause (zero when within the limit).
    pub(super) fn take(&mut self, size: usize) -> Duration {
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

/// A PUBACK/PUBREC waiting for other nodes to acknowledge the message
/// (`wait`) and for its durable copies to be stored (`stored`); and a
/// message (any QoS) not yet delivered (`route`) because it is stored
/// first, or because one ahead of it is.
pub(super) struct PendingAck {
    /// None for QoS 0: nothing to acknowledge, only kept in order.
    pub kind: Option<AckKind>,
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub wait: Option<AckWaiter>,
    pub stored: Option<StoredWaiter>,
    /// What `stored` answered, once it did.
    pub outcome: Option<Stored>,
    /// Not delivered yet; dropped if the store fails.
    pub route: Option<Held>,
    /// Whether it was stored is unknown: the connection closes instead of
    /// answering.
    pub unknown: bool,
}

/// A message held back in the acknowledgement queue.
pub(super) enum Held {
    /// Arrived while this node was not ready: planned once it is.
    Unplanned(Arc<Message>),
    /// Delivered to everyone else once stored and once everything ahead of
    /// it was delivered.
    Planned(Arc<Message>, RoutePlan),
}

/// A publisher with this many messages waiting for storage or peers is not
/// read from until some complete (TCP pushes back on it).
const PENDING_PAUSE_READS: usize = 4096;

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
    stream: S,
    rbuf: BytesMut,
    wbuf: BytesMut,
    /// The client's address, for logs.
    peer: Box<str>,
    epoch: Epoch,
    session: Arc<Session>,
    neg: Negotiated,
    will: Option<Box<WillSpec>>,
    /// The session's kick generation when we last looked.
    kick_seen: u32,
    /// 5.0 topic aliases, allocated on first use.
    aliases: Option<Box<TopicAliases>>,
    /// Acknowledgements held back until peers confirm (cluster only;
    /// allocated on first use: boxed, the empty queue would cost every
    /// connection 24 more bytes).
    #[allow(clippy::box_collection)]
    acks: Option<Box<VecDeque<PendingAck>>>,
    /// The authenticated user (None: anonymous).
    username: Option<Box<str>>,
    /// The ACL as it applies to this connection, for `acl_version`.
    acl: ClientAcl,
    acl_version: u64,
    /// Publish rate limit (None: unlimited).
    rate: Option<Box<RateLimiter>>,
    /// While reading is paused by the rate limit: the timer that ends the
    /// pause (allocated only then).
    throttle: Option<Pin<Box<Sleep>>>,
    /// Buffered packets left unprocessed while throttled.
    pending_input: bool,
    /// Whether the session queue may hold sendable deliveries.
    want_drain: bool,
    /// The last read filled the read buffer's room (a busy client).
    read_busy: bool,
    /// Everything buffered was written; the stream still needs a flush
    /// (TLS and WebSocket adapters buffer).
    need_flush: bool,
    /// Deadlines, in ticks of the node's deadline wheel: closing for
    /// keep-alive, releasing idle buffers, and the tick the wheel will
    /// wake us at (an earlier deadline registers again).
    keepalive_tick: Option<Tick>,
    shrink_tick: Option<Tick>,
    wheel_tick: Option<Tick>,
}

/// What woke the connection loop.
enum Event {
    Kick(Kick),
    Wrote(io::Result<usize>),
    Flushed(io::Result<()>),
    /// `busy`: the read filled all the room there was.
    Read {
        result: io::Result<usize>,
        busy: bool,
    },
    /// The session has deliveries, or a deadline may be due.
    Woken,
    /// The acknowledgement at the head of `acks` is confirmed.
    AckConfirmed,
    /// The rate-limit pause is over.
    ThrottleOver,
}

impl<S> Conn<S>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    /// Runs the connection to its end. Its state, the state of an idle
    /// connection's task, is kept to a few pointers and flags: the
    /// connection itself is boxed, and only rare packets that wait for
    /// the state port are awaited, in boxed futures.
    async fn run(mut self: Box<Self>) {
        // Packets pipelined behind CONNECT arrived with it.
        self.pending_input = true;
        let close = self.main_loop().await;
        Box::pin((*self).finish(close)).await;
    }

    async fn main_loop(&mut self) -> Close {
        loop {
            if self.pending_input && self.throttle.is_none() {
                self.pending_input = false;
                // Not a `match` over the result: its scrutinee would stay
                // in the task's state across the await.
                let deferred = match self.handle_buffered() {
                    Ok(d) => d,
                    Err(c) => return c,
                };
                if let Some(d) = deferred {
                    if let Err(c) = Box::pin(self.process_deferred(d)).await {
                        return c;
                    }
                }
                // A busy client gets room for a large next read; others
                // read into stack space first (`poll_read`) and keep no
                // spare room.
                if std::mem::take(&mut self.read_busy) && self.rbuf.capacity() - self.rbuf.len() < 256 {
                    self.rbuf.reserve(READ_CHUNK);
                }
            }
            if self.want_drain && self.wbuf.len() < WRITE_HIGH_WATER {
                if let Err(c) = self.drain() {
                    return c;
                }
            }
            self.arm_timers();
            let can_read = self.wbuf.len() < WRITE_PAUSE_READS
                && self.throttle.is_none()
                && self.acks.as_ref().is_none_or(|a| a.len() < PENDING_PAUSE_READS);
            let event = std::future::poll_fn(|cx| self.poll_event(cx, can_read)).await;
            if let Some(close) = self.on_event(event) {
                return close;
            }
        }
    }

    /// Acts on what woke the loop; input read is handled by the next
    /// turn of the loop (`pending_input`).
    fn on_event(&mut self, event: Event) -> Option<Close> {
        match event {
            Event::Kick(k) => {
                return Some(if k.reason == ReasonCode::SERVER_SHUTTING_DOWN {
                    Close::Shutdown
                } else {
                    Close::Kicked(k.reason)
                });
            }
            Event::Wrote(res) => match res {
                Ok(0) => return Some(Close::Lost("write returned 0".into())),
                Ok(n) => {
                    self.wbuf.advance(n);
                    self.broker.metrics().bytes_sent.fetch_add(n as u64, Ordering::Relaxed);
                    if self.wbuf.is_empty() {
                        self.need_flush = true;
                    }
                }
                Err(e) => return Some(Close::Lost(e.to_string())),
            },
            Event::Flushed(res) => {
                self.need_flush = false;
                if let Err(e) = res {
                    return Some(Close::Lost(e.to_string()));
                }
            }
            Event::Read { result, busy } => match result {
                Ok(0) => return Some(Close::Lost("connection closed by client".into())),
                Ok(n) => {
                    self.broker.metrics().bytes_received.fetch_add(n as u64, Ordering::Relaxed);
                    self.touch_keepalive();
                    self.pending_input = true;
                    // Room for the next read, once this input is handled:
                    // a read that filled the spare room means a busy
                    // client, so grow in large steps; otherwise stay small.
                    self.read_busy = busy;
                }
                Err(e) => return Some(Close::Lost(e.to_string())),
            },
            Event::Woken => {
                self.want_drain = true;
                return self.check_deadlines();
            }
            Event::AckConfirmed => {
                if let Err(c) = self.flush_ready_acks() {
                    return Some(c);
                }
            }
            Event::ThrottleOver => {
                self.throttle = None;
                // Time spent throttled is not silence from the client.
                self.touch_keepalive();
                self.pending_input = true;
            }
        }
        None
    }

    /// Polls everything the connection waits for, in priority order: a
    /// kick, writing, reading, the session's wake-up, a confirmed
    /// acknowledgement, the end of a rate-limit pause.
    fn poll_event(&mut self, cx: &mut Context<'_>, can_read: bool) -> Poll<Event> {
        // First, and before the wake slot is polled: a connection that was
        // taken over must never register its waker again, or it could take
        // the slot from its successor.
        let generation = self.session.kick_generation();
        if generation != self.kick_seen {
            if let Some(k) = self.session.kick_for(self.epoch) {
                return Poll::Ready(Event::Kick(k));
            }
            self.kick_seen = generation;
        }
        if !self.wbuf.is_empty() {
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_write(cx, &self.wbuf) {
                return Poll::Ready(Event::Wrote(r));
            }
        } else if self.need_flush {
            if let Poll::Ready(r) = Pin::new(&mut self.stream).poll_flush(cx) {
                return Poll::Ready(Event::Flushed(r));
            }
        }
        if can_read {
            let room = self.rbuf.capacity() - self.rbuf.len();
            if let Poll::Ready(result) = self.poll_read(cx) {
                let limit = if room == 0 { READ_PROBE } else { room };
                let busy = matches!(result, Ok(n) if n >= limit);
                return Poll::Ready(Event::Read { result, busy });
            }
        }
        if self.session.poll_wake(cx).is_ready() {
            return Poll::Ready(Event::Woken);
        }
        if let Some(front) = self.acks.as_mut().and_then(|a| a.front_mut()) {
            let mut progressed = false;
            if let Some(w) = front.wait.as_mut() {
                if Pin::new(w).poll(cx).is_ready() {
                    front.wait = None;
                    progressed = true;
                }
            }
            if let Some(w) = front.stored.as_mut() {
                if let Poll::Ready(r) = Pin::new(w).poll(cx) {
                    front.stored = None;
                    front.outcome = Some(r.unwrap_or(Stored::Unavailable));
                    progressed = true;
                }
            }
            if progressed {
                return Poll::Ready(Event::AckConfirmed);
            }
        }
        if let Some(t) = self.throttle.as_mut() {
            if t.as_mut().poll(cx).is_ready() {
                return Poll::Ready(Event::ThrottleOver);
            }
        }
        Poll::Pending
    }

    /// Reads into the read buffer's spare room, or, when it has none (an
    /// idle connection released it, or it is full), into stack space
    /// first: waiting for data then costs no buffer.
    fn poll_read(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        if self.rbuf.capacity() > self.rbuf.len() {
            return tokio_util::io::poll_read_buf(Pin::new(&mut self.stream), cx, &mut self.rbuf);
        }
        let mut probe = [0u8; READ_PROBE];
        let mut buf = tokio::io::ReadBuf::new(&mut probe);
        match Pin::new(&mut self.stream).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) => {
                self.rbuf.extend_from_slice(buf.filled());
                Poll::Ready(Ok(buf.filled().len()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Records client activity: moves the keep-alive deadline (1.5 × keep
    /// alive) and postpones the idle buffer release. Only fields change;
    /// the deadline wheel is told lazily (`arm_timers`).
    fn touch_keepalive(&mut self) {
        let now = Instant::now();
        let wheel = &self.broker.inner.deadlines;
        if self.neg.keep_alive > 0 {
            // 1.5 × keep alive, in milliseconds.
            let limit = Duration::from_millis(u64::from(self.neg.keep_alive) * 1500);
            self.keepalive_tick = Some(wheel.tick_at(now + limit));
        }
        self.shrink_tick = Some(wheel.tick_at(now + IDLE_SHRINK));
    }

    /// Pauses reading for `wait` (publish rate limit).
    fn throttle(&mut self, wait: Duration) {
        let until = Instant::now() + wait;
        match self.throttle.as_mut() {
            Some(t) => {
                if until > t.deadline() {
                    t.as_mut().reset(until);
                }
            }
            None => {
                self.broker.metrics().rate_limited.fetch_add(1, Ordering::Relaxed);
                self.throttle = Some(Box::pin(tokio::time::sleep_until(until)));
            }
        }
    }

    /// The connection's ACL, recompiled when the rules changed.
    fn acl(&mut self) -> &ClientAcl {
        let v = self.broker.auth().rules_version();
        if v != self.acl_version {
            self.acl =
                self.broker.auth().acl_for(self.username.as_deref(), self.session.client_id().as_str());
            self.acl_version = v;
        }
        &self.acl
    }

    /// Registers the earliest keep-alive or idle deadline with the
    /// node's deadline wheel, unless a registration at or before it is
    /// still ahead (that one wakes us early; we find the deadline moved
    /// and register again).
    fn arm_timers(&mut self) {
        if let Some(d) = [self.keepalive_tick, self.shrink_tick].into_iter().flatten().min() {
            if self.wheel_tick.is_none_or(|at| d < at) {
                self.broker.inner.deadlines.schedule(d, &self.session);
                self.wheel_tick = Some(d);
            }
        }
    }

    /// Acts on the keep-alive and idle deadlines that have passed.
    fn check_deadlines(&mut self) -> Option<Close> {
        let passed = self.broker.inner.deadlines.ticks_passed(Instant::now());
        if self.wheel_tick.is_some_and(|t| t.get() <= passed) {
            self.wheel_tick = None;
        }
        if self.keepalive_tick.is_some_and(|t| t.get() <= passed) {
            return Some(Close::KeepAlive);
        }
        if self.shrink_tick.is_some_and(|t| t.get() <= passed) {
            // An idle connection keeps no buffers: this is what holds the
            // memory of many idle clients down.
            self.shrink_tick = None;
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

#[cfg(test)]
mod tests {
    use super::*;

    /// What an idle connection costs is mostly the size of these types;
    /// the bounds catch a change that makes every connection larger.
    #[tokio::test]
    async fn idle_connection_state_stays_small() {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let s = tokio::net::TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
        let b = Broker::in_memory(Default::default());
        // The spawned task's future (connection-limit permit included):
        // above about 150 bytes tokio's task allocation doubles to 384.
        let permit = Arc::new(tokio::sync::Semaphore::new(1)).try_acquire_owned().unwrap();
        let f = serve(b, s, ConnectionInfo::new(String::new(), "tcp"), permit);
        assert!(std::mem::size_of_val(&f) <= 150, "task future {} bytes", std::mem::size_of_val(&f));
        // 264 bytes in release builds, 272 in debug ones.
        assert!(std::mem::size_of::<Conn<tokio::net::TcpStream>>() <= 272);
        assert!(std::mem::size_of::<Session>() <= 232);
        drop(f);
    }
}
