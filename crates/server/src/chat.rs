//! `starling chat`: the terminal chat client. MQTT 5 over TCP (or TLS) on
//! the same topics and payloads as the web app (crates/server/chat/chat.js,
//! docs/chat.md), so the two talk to each other:
//!
//! - `chat/rooms/<room>/<sender>`: room messages, QoS 1
//! - `chat/presence/<user>`: `online` (retained), will `offline` (retained)
//! - `chat/roomlist/<room>`: a room exists (retained)
//! - `chat/inbox/<recipient>/<sender>`: direct messages, QoS 1
//!
//! The session is persistent (client id `chat-term-<user>`, expiry 7 days),
//! so direct messages and room messages sent while the client is away are
//! delivered when it comes back. Messages carry an id; a QoS 1 duplicate
//! (after a failover) is shown once. Lost connections are retried with
//! back-off; messages typed meanwhile are sent once connected.

use std::collections::{BTreeMap, BTreeSet, HashSet, VecDeque};
use std::io::BufReader;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use starling_codec::{
    decode, Ack, AckKind, Connect, Disconnect, Packet, Properties, ProtocolVersion, Publish,
    PublishProperties, QoS, ReasonCode, Subscribe, SubscriptionOptions, Unsubscribe, Will,
};
use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;

const KEEP_ALIVE: u16 = 30;
const SESSION_EXPIRY: u32 = 7 * 24 * 3600;
const BACKOFF_MIN: Duration = Duration::from_millis(500);
const BACKOFF_MAX: Duration = Duration::from_secs(15);
/// Messages typed but not yet acknowledged by the broker; beyond this a
/// new message is refused with a note (the broker is unreachable).
const MAX_PENDING: usize = 1000;
/// Message ids remembered to show each message once.
const SEEN: usize = 10_000;
const MAX_TEXT: usize = 4000;

/// Where and as whom to chat.
#[derive(Debug, Clone)]
pub struct ChatOptions {
    /// host:port of a node or load balancer.
    pub server: String,
    pub user: String,
    pub password: Option<String>,
    /// The room joined at start.
    pub room: String,
    /// TLS, trusting this CA file (PEM) or else the system's CA bundle.
    pub tls: bool,
    pub ca: Option<String>,
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}
type Stream = Pin<Box<dyn Io>>;

/// Whether `name` can be a user or room name in a topic level (and so in
/// an ACL rule's `%u`).
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 64
        && name.chars().all(|c| c.is_ascii_alphanumeric() || "_.@-".contains(c))
}

/// A message as the web app and this client send it.
#[derive(serde::Serialize, serde::Deserialize)]
struct Body {
    #[serde(default)]
    id: Option<String>,
    text: String,
    #[serde(default)]
    ts: Option<u64>,
}

struct Pending {
    topic: String,
    payload: Bytes,
    /// What to print once the broker acknowledged it.
    shown: String,
}

struct Chat {
    opts: ChatOptions,
    room: String,
    joined: BTreeSet<String>,
    /// Rooms left while offline, unsubscribed on the next connection.
    left: BTreeSet<String>,
    /// SUBSCRIBEs of rooms being joined, by packet id (announced on SUBACK).
    joining: BTreeMap<u16, String>,
    rooms: BTreeSet<String>,
    presence: BTreeMap<String, String>,
    seen: HashSet<String>,
    seen_order: VecDeque<String>,
    /// Unacknowledged QoS 1 messages by packet id, resent (DUP) after a
    /// reconnect.
    pending: BTreeMap<u16, Pending>,
    next_id: u16,
    connected: bool,
}

enum Input {
    Line(String),
    Eof,
}

/// Runs the client until `/quit` or end of input.
pub async fn run(opts: ChatOptions) -> anyhow::Result<()> {
    if !valid_name(&opts.user) {
        bail!("user names are letters, digits and . _ @ - (at most 64): {:?}", opts.user);
    }
    if !valid_name(&opts.room) {
        bail!("room names are letters, digits and . _ @ - (at most 64): {:?}", opts.room);
    }
    let tls = if opts.tls { Some(tls_connector(opts.ca.as_deref())?) } else { None };
    let (tx, mut input) = mpsc::channel(64);
    tokio::spawn(read_stdin(tx));
    let room = opts.room.clone();
    let mut chat = Chat {
        joined: BTreeSet::from([room.clone()]),
        left: BTreeSet::new(),
        joining: BTreeMap::new(),
        rooms: BTreeSet::from([room.clone()]),
        room,
        opts,
        presence: BTreeMap::new(),
        seen: HashSet::new(),
        seen_order: VecDeque::new(),
        pending: BTreeMap::new(),
        next_id: 0,
        connected: false,
    };
    println!("* Starling chat as {} on {} — /help for commands", chat.opts.user, chat.opts.server);
    let mut backoff = BACKOFF_MIN;
    loop {
        match connect(&chat.opts, tls.as_ref()).await {
            Ok((stream, session_present)) => {
                backoff = BACKOFF_MIN;
                println!("* connected{}", if session_present { " (session resumed)" } else { "" });
                match chat.session(stream, &mut input).await {
                    Ok(Ended::Quit) => return Ok(()),
                    Ok(Ended::TakenOver) => bail!(
                        "signed in elsewhere with the same user (client id chat-term-{})",
                        chat.opts.user
                    ),
                    Ok(Ended::Lost(why)) => println!("* connection lost: {why}"),
                    Err(e) => println!("* connection lost: {e:#}"),
                }
                chat.connected = false;
            }
            Err(Refused::Fatal(e)) => return Err(e),
            Err(Refused::Retry(e)) => println!("* cannot connect to {}: {e:#}", chat.opts.server),
        }
        println!("* retrying in {:.1} s", backoff.as_secs_f32());
        // Lines typed while offline are queued (sent once connected).
        let wake = tokio::time::sleep(backoff);
        tokio::pin!(wake);
        loop {
            tokio::select! {
                _ = &mut wake => break,
                line = input.recv() => match line {
                    Some(Input::Line(l)) => { if chat.command(None, &l).await? { return Ok(()); } }
                    Some(Input::Eof) | None => return Ok(()),
                },
            }
        }
        backoff = (backoff * 2).min(BACKOFF_MAX);
    }
}

async fn read_stdin(tx: mpsc::Sender<Input>) {
    let mut lines = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let msg = match lines.next_line().await {
            Ok(Some(l)) => Input::Line(l),
            Ok(None) | Err(_) => Input::Eof,
        };
        let eof = matches!(msg, Input::Eof);
        if tx.send(msg).await.is_err() || eof {
            return;
        }
    }
}

enum Refused {
    /// Wrong credentials or not authorized: retrying will not help.
    Fatal(anyhow::Error),
    Retry(anyhow::Error),
}

enum Ended {
    Quit,
    TakenOver,
    Lost(String),
}

fn tls_connector(ca: Option<&str>) -> anyhow::Result<tokio_rustls::TlsConnector> {
    let path = ca.unwrap_or("/etc/ssl/certs/ca-certificates.crt");
    let f = std::fs::File::open(path).with_context(|| format!("cannot read CA file {path} (--ca)"))?;
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut BufReader::new(f)) {
        roots.add(c.with_context(|| format!("bad certificate in {path}"))?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(tokio_rustls::TlsConnector::from(Arc::new(config)))
}

async fn connect(
    opts: &ChatOptions,
    tls: Option<&tokio_rustls::TlsConnector>,
) -> Result<(Conn, bool), Refused> {
    let retry = |e: anyhow::Error| Refused::Retry(e);
    let tcp = tokio::time::timeout(Duration::from_secs(10), TcpStream::connect(&opts.server))
        .await
        .map_err(|_| retry(anyhow::anyhow!("timed out")))?
        .map_err(|e| retry(e.into()))?;
    let _ = tcp.set_nodelay(true);
    let stream: Stream = match tls {
        Some(c) => {
            let host = opts.server.rsplit_once(':').map_or(opts.server.as_str(), |(h, _)| h);
            let host = host.trim_start_matches('[').trim_end_matches(']');
            let name = rustls::pki_types::ServerName::try_from(host.to_string())
                .map_err(|e| Refused::Fatal(anyhow::anyhow!("bad server name {host}: {e}")))?;
            Box::pin(c.connect(name, tcp).await.map_err(|e| retry(anyhow::anyhow!("TLS: {e}")))?)
        }
        None => Box::pin(tcp),
    };
    let mut conn = Conn { stream, buf: BytesMut::with_capacity(16 * 1024), out: BytesMut::new() };
    let user = &opts.user;
    let connect = Connect {
        version: ProtocolVersion::V5,
        clean_start: false,
        keep_alive: KEEP_ALIVE,
        properties: Properties { session_expiry_interval: Some(SESSION_EXPIRY), ..Default::default() },
        client_id: format!("chat-term-{user}").into(),
        will: Some(Will {
            topic: format!("chat/presence/{user}").into(),
            payload: Bytes::from_static(b"offline"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: PublishProperties::default(),
        }),
        username: Some(user.as_str().into()),
        password: opts.password.as_ref().map(|p| Bytes::from(p.clone())),
    };
    conn.send(&Packet::Connect(Box::new(connect))).await.map_err(retry)?;
    let ack = tokio::time::timeout(Duration::from_secs(10), conn.next())
        .await
        .map_err(|_| retry(anyhow::anyhow!("no CONNACK within 10 s")))?
        .map_err(retry)?;
    match ack {
        Some(Packet::ConnAck(a)) if a.code == 0 => Ok((conn, a.session_present)),
        Some(Packet::ConnAck(a)) => {
            let why = a.properties.reason_string.as_ref().map(|s| format!(" ({s})")).unwrap_or_default();
            match a.code {
                0x86 => Err(Refused::Fatal(anyhow::anyhow!("wrong user name or password{why}"))),
                0x87 => Err(Refused::Fatal(anyhow::anyhow!("not authorized{why}"))),
                c => Err(retry(anyhow::anyhow!("refused with 0x{c:02X}{why}"))),
            }
        }
        Some(other) => Err(retry(anyhow::anyhow!("expected CONNACK, got {}", other.name()))),
        None => Err(retry(anyhow::anyhow!("closed before CONNACK"))),
    }
}

/// One connection: a buffered packet reader and writer.
struct Conn {
    stream: Stream,
    buf: BytesMut,
    out: BytesMut,
}

impl Conn {
    /// The next packet; cancel-safe (bytes read stay in the buffer).
    async fn next(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(p) = decode(&mut self.buf, ProtocolVersion::V5, 1 << 20)? {
                return Ok(Some(p));
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    fn push(&mut self, p: &Packet) -> anyhow::Result<()> {
        p.encode(ProtocolVersion::V5, &mut self.out)?;
        Ok(())
    }

    async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.out.is_empty() {
            self.stream.write_all(&self.out).await?;
            self.out.clear();
        }
        Ok(())
    }

    async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        self.push(p)?;
        self.flush().await
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// HH:MM (UTC) of a time in milliseconds since the epoch.
fn clock(ms: u64) -> String {
    let mins = ms / 60_000;
    format!("{:02}:{:02}", (mins / 60) % 24, mins % 60)
}

fn new_id() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(now_ms());
    format!("{:x}-{:016x}", now_ms(), h.finish())
}

impl Chat {
    async fn session(&mut self, mut conn: Conn, input: &mut mpsc::Receiver<Input>) -> anyhow::Result<Ended> {
        self.connected = true;
        let user = self.opts.user.clone();
        // Subscribing again is harmless when the session kept the
        // subscriptions, and covers rooms joined or left while offline
        // (and a session that expired).
        {
            let mut filters = vec![
                ("chat/presence/+".to_string(), QoS::AtLeastOnce),
                ("chat/roomlist/+".to_string(), QoS::AtLeastOnce),
                (format!("chat/inbox/{user}/+"), QoS::AtLeastOnce),
            ];
            for r in &self.joined {
                filters.push((format!("chat/rooms/{r}/+"), QoS::AtLeastOnce));
            }
            let id = self.packet_id();
            conn.push(&Packet::Subscribe(Subscribe {
                packet_id: id,
                properties: Properties::default(),
                filters: filters.into_iter().map(|(f, q)| (f.into(), SubscriptionOptions::new(q))).collect(),
            }))?;
        }
        if !self.left.is_empty() {
            let id = self.packet_id();
            let filters = std::mem::take(&mut self.left)
                .into_iter()
                .map(|r| format!("chat/rooms/{r}/+").into())
                .collect();
            conn.push(&Packet::Unsubscribe(Unsubscribe {
                packet_id: id,
                properties: Properties::default(),
                filters,
            }))?;
        }
        // Whatever the broker has not acknowledged yet goes again, in order.
        for (id, p) in &self.pending {
            conn.push(&publish(&p.topic, p.payload.clone(), *id, true, false))?;
        }
        let id = self.packet_id();
        conn.push(&publish(
            &format!("chat/presence/{user}"),
            Bytes::from_static(b"online"),
            id,
            false,
            true,
        ))?;
        conn.flush().await?;
        let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE) / 2));
        ping.tick().await;
        let mut heard = tokio::time::Instant::now();
        loop {
            tokio::select! {
                p = conn.next() => {
                    heard = tokio::time::Instant::now();
                    match p? {
                        None => return Ok(Ended::Lost("closed by the server".into())),
                        Some(p) => {
                            if let Some(end) = self.packet(&mut conn, p)? {
                                return Ok(end);
                            }
                        }
                    }
                }
                line = input.recv() => match line {
                    Some(Input::Line(l)) => {
                        if self.command(Some(&mut conn), &l).await? {
                            let _ = conn.send(&Packet::Disconnect(Disconnect::default())).await;
                            return Ok(Ended::Quit);
                        }
                    }
                    Some(Input::Eof) | None => {
                        // End of input: wait briefly for what is unacknowledged.
                        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
                        while !self.pending.is_empty() {
                            match tokio::time::timeout_at(deadline, conn.next()).await {
                                Ok(Ok(Some(p))) => { self.packet(&mut conn, p)?; }
                                _ => break,
                            }
                        }
                        let _ = conn.send(&Packet::Disconnect(Disconnect::default())).await;
                        return Ok(Ended::Quit);
                    }
                },
                _ = ping.tick() => {
                    if heard.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE) * 3 / 2) {
                        return Ok(Ended::Lost("no answer from the server".into()));
                    }
                    conn.push(&Packet::PingReq)?;
                }
            }
            conn.flush().await?;
        }
    }

    fn packet(&mut self, conn: &mut Conn, p: Packet) -> anyhow::Result<Option<Ended>> {
        match p {
            Packet::Publish(p) => {
                if p.qos == QoS::AtLeastOnce {
                    conn.push(&Packet::Ack(Ack::new(AckKind::PubAck, p.packet_id)))?;
                }
                self.message(p.topic.as_str(), &p.payload);
            }
            Packet::Ack(a) if a.kind == AckKind::PubAck => {
                if let Some(m) = self.pending.remove(&a.packet_id) {
                    if a.reason.is_error() {
                        println!("! not sent ({:?}): {}", a.reason, m.shown);
                    } else {
                        println!("{} ✓", m.shown);
                    }
                }
            }
            Packet::SubAck(a) => {
                let room = self.joining.remove(&a.packet_id);
                if a.reason_codes.iter().any(|c| c.is_error()) {
                    println!("! a subscription was refused (not allowed to read it?)");
                } else if let Some(room) = room {
                    println!("* joined #{room}");
                }
            }
            Packet::Disconnect(d) => {
                if d.reason == ReasonCode::SESSION_TAKEN_OVER {
                    return Ok(Some(Ended::TakenOver));
                }
                let why = d.properties.reason_string.as_ref().map(|s| s.to_string()).unwrap_or_default();
                return Ok(Some(Ended::Lost(format!("server said {:?} {why}", d.reason))));
            }
            _ => {}
        }
        Ok(None)
    }

    /// Records a message id; false when it was seen before.
    fn remember(&mut self, id: String) -> bool {
        if !self.seen.insert(id.clone()) {
            return false;
        }
        self.seen_order.push_back(id);
        if self.seen_order.len() > SEEN {
            if let Some(old) = self.seen_order.pop_front() {
                self.seen.remove(&old);
            }
        }
        true
    }

    fn message(&mut self, topic: &str, payload: &[u8]) {
        let parts: Vec<&str> = topic.split('/').collect();
        let text = String::from_utf8_lossy(payload);
        match parts.as_slice() {
            ["chat", "presence", who] => {
                let status = if text == "online" { "online" } else { "offline" };
                let before = self.presence.insert(who.to_string(), status.to_string());
                if before.as_deref() != Some(status) && *who != self.opts.user {
                    println!("* {who} is {status}");
                }
            }
            ["chat", "roomlist", room] if !text.is_empty() && valid_name(room) => {
                self.rooms.insert(room.to_string());
            }
            ["chat", "rooms", room, from] => {
                if let Some((ts, body)) = self.body(from, &text) {
                    println!("[{}] #{room} {from}: {body}", clock(ts));
                }
            }
            ["chat", "inbox", me, from] if *me == self.opts.user => {
                if let Some((ts, body)) = self.body(from, &text) {
                    println!("[{}] @{from} → you: {body}", clock(ts));
                }
            }
            _ => {}
        }
    }

    /// The text and time of a message, or None if it was shown already.
    fn body(&mut self, from: &str, raw: &str) -> Option<(u64, String)> {
        let (id, ts, text) = match serde_json::from_str::<Body>(raw) {
            Ok(b) => {
                let ts = b.ts.unwrap_or_else(now_ms);
                (b.id.unwrap_or_else(|| format!("{from}|{ts}|{}", b.text)), ts, b.text)
            }
            // Any other client's plain text.
            Err(_) => (String::new(), now_ms(), raw.to_string()),
        };
        if !id.is_empty() && !self.remember(id) {
            return None;
        }
        Some((ts, text))
    }

    fn packet_id(&mut self) -> u16 {
        loop {
            self.next_id = self.next_id.checked_add(1).unwrap_or(1);
            if !self.pending.contains_key(&self.next_id) {
                return self.next_id;
            }
        }
    }

    /// Handles one input line; true to quit.
    async fn command(&mut self, conn: Option<&mut Conn>, line: &str) -> anyhow::Result<bool> {
        let line = line.trim();
        if line.is_empty() {
            return Ok(false);
        }
        let (cmd, rest) = match line.strip_prefix('/') {
            Some(c) => c.split_once(' ').map_or((c, ""), |(a, b)| (a, b.trim())),
            None => ("say", line),
        };
        let user = self.opts.user.clone();
        match cmd {
            "quit" | "exit" => return Ok(true),
            "help" => {
                println!("* text          send to the current room (#{})", self.room);
                println!("* /join ROOM    join a room and make it current");
                println!("* /leave        leave the current room");
                println!("* /rooms        rooms known and joined");
                println!("* /who          who is online");
                println!("* /dm USER TEXT a direct message (delivered when USER comes back)");
                println!("* /quit         sign out (messages to you wait for the next time)");
            }
            "rooms" => {
                for r in &self.rooms {
                    let mark = if *r == self.room {
                        "*"
                    } else if self.joined.contains(r) {
                        "+"
                    } else {
                        " "
                    };
                    println!("{mark} #{r}");
                }
            }
            "who" => {
                for (u, s) in &self.presence {
                    println!("  {u}: {s}");
                }
            }
            "join" => {
                if !valid_name(rest) {
                    println!("! room names are letters, digits and . _ @ -");
                    return Ok(false);
                }
                let room = rest.to_string();
                self.left.remove(&room);
                if self.joined.insert(room.clone()) {
                    if let Some(conn) = conn {
                        let id = self.packet_id();
                        self.joining.insert(id, room.clone());
                        conn.push(&Packet::Subscribe(Subscribe {
                            packet_id: id,
                            properties: Properties::default(),
                            filters: vec![(
                                format!("chat/rooms/{room}/+").into(),
                                SubscriptionOptions::new(QoS::AtLeastOnce),
                            )],
                        }))?;
                        if self.rooms.insert(room.clone()) {
                            let id = self.packet_id();
                            let body = serde_json::json!({ "by": user, "ts": now_ms() }).to_string();
                            conn.push(&publish(
                                &format!("chat/roomlist/{room}"),
                                Bytes::from(body),
                                id,
                                false,
                                true,
                            ))?;
                        }
                    }
                }
                println!("* now in #{room}");
                self.room = room;
            }
            "leave" => {
                let room = self.room.clone();
                if self.joined.len() == 1 {
                    println!("! #{room} is the only room joined; /join another first");
                    return Ok(false);
                }
                self.joined.remove(&room);
                match conn {
                    Some(conn) if self.connected => {
                        let id = self.packet_id();
                        conn.push(&Packet::Unsubscribe(Unsubscribe {
                            packet_id: id,
                            properties: Properties::default(),
                            filters: vec![format!("chat/rooms/{room}/+").into()],
                        }))?;
                    }
                    _ => {
                        self.left.insert(room.clone());
                    }
                }
                self.room = self.joined.iter().next().cloned().unwrap_or_default();
                println!("* left #{room}; now in #{}", self.room);
            }
            "dm" | "msg" => {
                let Some((to, text)) = rest.split_once(' ') else {
                    println!("! /dm USER TEXT");
                    return Ok(false);
                };
                if !valid_name(to) {
                    println!("! no such user name: {to}");
                    return Ok(false);
                }
                let shown = format!("[{}] @you → {to}: {}", clock(now_ms()), text.trim());
                self.say(conn, format!("chat/inbox/{to}/{user}"), text.trim(), shown)?;
            }
            "say" => {
                let shown = format!("[{}] #{} {user}: {rest}", clock(now_ms()), self.room);
                self.say(conn, format!("chat/rooms/{}/{user}", self.room), rest, shown)?;
            }
            other => println!("! unknown command /{other}; /help lists them"),
        }
        Ok(false)
    }

    fn say(
        &mut self,
        conn: Option<&mut Conn>,
        topic: String,
        text: &str,
        shown: String,
    ) -> anyhow::Result<()> {
        if text.is_empty() {
            return Ok(());
        }
        if text.len() > MAX_TEXT {
            println!("! at most {MAX_TEXT} bytes per message");
            return Ok(());
        }
        if self.pending.len() >= MAX_PENDING {
            println!("! {MAX_PENDING} messages are waiting for the broker already; not sent");
            return Ok(());
        }
        let id = new_id();
        self.remember(id.clone());
        let body = serde_json::to_vec(&Body { id: Some(id), text: text.to_string(), ts: Some(now_ms()) })?;
        let payload = Bytes::from(body);
        let packet_id = self.packet_id();
        match conn {
            Some(conn) if self.connected => {
                conn.push(&publish(&topic, payload.clone(), packet_id, false, false))?
            }
            _ => println!("* offline: will send when connected"),
        }
        self.pending.insert(packet_id, Pending { topic, payload, shown });
        Ok(())
    }
}

fn publish(topic: &str, payload: Bytes, packet_id: u16, dup: bool, retain: bool) -> Packet {
    Packet::Publish(Publish {
        dup,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id,
        properties: PublishProperties::default(),
        payload,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_fit_one_topic_level() {
        assert!(valid_name("alice") && valid_name("bob.smith@example-1"));
        for bad in ["", "a/b", "a+", "#", "a b", &"x".repeat(65)] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn clock_is_hours_and_minutes() {
        assert_eq!(clock(0), "00:00");
        assert_eq!(clock((13 * 60 + 7) * 60_000 + 59_999), "13:07");
        assert_eq!(clock(25 * 3_600_000), "01:00");
    }
}
