//! Test harness shared by the end-to-end tests: a real server started
//! in-process on port-0 listeners, and a raw MQTT client built on the
//! codec that gives tests byte-level control (no automatic acks, any
//! packet, any bytes).

pub mod cluster;

use std::net::SocketAddr;
use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{decode, ConnAck, Connect, Packet, Properties, ProtocolVersion, QoS, ReasonCode};
use starling_server::{Config, Listeners};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long a test waits for a packet it expects.
pub const WAIT: Duration = Duration::from_secs(5);

/// A server running in this process.
pub struct TestServer {
    pub mqtt: SocketAddr,
    pub ws: SocketAddr,
    pub http: SocketAddr,
    /// MQTT over TLS and secure WebSocket, when the config enables TLS.
    pub mqtts: Option<SocketAddr>,
    pub wss: Option<SocketAddr>,
    stop: Option<oneshot::Sender<()>>,
    handle: Option<JoinHandle<anyhow::Result<()>>>,
    _dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> TestServer {
        TestServer::with(|_| {}).await
    }

    /// Starts a server after `tweak` adjusts the default configuration.
    pub async fn with(tweak: impl FnOnce(&mut Config)) -> TestServer {
        let dir = tempfile::tempdir().expect("temp dir");
        let mut config = Config::default();
        config.node.data_dir = dir.path().join("data");
        config.mqtt.sys_interval_secs = 0;
        tweak(&mut config);
        config.validate().expect("valid test config");
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind") };
        let tls = config.tls.enabled();
        let listeners = Listeners {
            mqtt: Some(bind().await),
            ws: Some(bind().await),
            http: Some(bind().await),
            grpc: Some(bind().await),
            mqtts: if tls { Some(bind().await) } else { None },
            wss: if tls { Some(bind().await) } else { None },
        };
        let a = listeners.addresses();
        let (tx, rx) = oneshot::channel::<()>();
        let handle = tokio::spawn(starling_server::run(config, listeners, async move {
            let _ = rx.await;
        }));
        // A one-member cluster is ready once it has elected itself.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while http_get(a.http.expect("http"), "/health/ready").await.0 != 200 {
            assert!(std::time::Instant::now() < deadline, "test server not ready");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        TestServer {
            mqtt: a.mqtt.expect("mqtt"),
            ws: a.ws.expect("ws"),
            http: a.http.expect("http"),
            mqtts: a.mqtts,
            wss: a.wss,
            stop: Some(tx),
            handle: Some(handle),
            _dir: dir,
        }
    }

    /// Shuts the server down gracefully and waits for it.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(h) = self.handle.take() {
            h.await.expect("server task").expect("server result");
        }
    }

    /// GET a path on the HTTP listener; returns (status, body).
    pub async fn http_get(&self, path: &str) -> (u16, String) {
        http_get(self.http, path).await
    }

    /// The value of an unlabelled metric (or a labelled one, given in full).
    pub async fn metric(&self, name: &str) -> f64 {
        let (_, body) = self.http_get("/metrics").await;
        metric_value(&body, name).unwrap_or_else(|| panic!("metric {name} not found"))
    }
}

impl Drop for TestServer {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
    }
}

/// A minimal HTTP/1.1 GET, enough for health and metrics.
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect http");
    let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.expect("write");
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out)).await.expect("http timeout").expect("read");
    parse_http(&out)
}

/// The value of metric `name` (unlabelled, or labelled given in full) in
/// a `/metrics` body: its first line.
pub fn metric_value(body: &str, name: &str) -> Option<f64> {
    body.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Like `http_get` but a refused, stuck or failed request is status 0.
pub async fn http_get_within(addr: SocketAddr, path: &str, within: Duration) -> (u16, String) {
    let attempt = async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let req = format!("GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n");
        s.write_all(req.as_bytes()).await.ok()?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).await.ok()?;
        Some(parse_http(&out))
    };
    tokio::time::timeout(within, attempt).await.ok().flatten().unwrap_or((0, String::new()))
}

fn parse_http(out: &[u8]) -> (u16, String) {
    let text = String::from_utf8_lossy(out).to_string();
    let status = text.split_whitespace().nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
    let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default();
    (status, body)
}

/// A CONNECT with the given basics; tests adjust the rest.
pub fn connect_packet(version: ProtocolVersion, client_id: &str, clean: bool) -> Connect {
    Connect {
        version,
        clean_start: clean,
        keep_alive: 60,
        properties: Properties::default(),
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    }
}

/// An MQTT client with byte-level control over any stream.
pub struct RawClient<S = TcpStream> {
    pub stream: S,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

impl RawClient<TcpStream> {
    pub async fn tcp(addr: SocketAddr, version: ProtocolVersion) -> RawClient<TcpStream> {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient::new(stream, version)
    }

    /// Connects and completes CONNECT/CONNACK; panics if refused.
    pub async fn connect(
        addr: SocketAddr,
        version: ProtocolVersion,
        client_id: &str,
        clean: bool,
    ) -> (Self, ConnAck) {
        Self::connect_with(addr, connect_packet(version, client_id, clean)).await
    }

    pub async fn connect_with(addr: SocketAddr, c: Connect) -> (Self, ConnAck) {
        let mut client = RawClient::tcp(addr, c.version).await;
        let ack = client.handshake(c).await;
        assert_eq!(ack.code, 0, "CONNACK refused: {ack:?}");
        (client, ack)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> RawClient<S> {
    pub fn new(stream: S, version: ProtocolVersion) -> RawClient<S> {
        RawClient { stream, buf: BytesMut::with_capacity(8192), version }
    }

    /// Sends CONNECT and returns the CONNACK (whatever its code).
    pub async fn handshake(&mut self, c: Connect) -> ConnAck {
        self.version = c.version;
        self.send(&Packet::Connect(Box::new(c))).await;
        match self.recv().await {
            Some(Packet::ConnAck(a)) => a,
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    pub async fn send(&mut self, p: &Packet) {
        let mut out = BytesMut::new();
        p.encode(self.version, &mut out).expect("encode");
        self.send_bytes(&out).await;
    }

    pub async fn send_bytes(&mut self, b: &[u8]) {
        self.stream.write_all(b).await.expect("write");
        self.stream.flush().await.expect("flush");
    }

    /// Like `send_bytes` but tolerates a server that already closed.
    pub async fn try_send_bytes(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(b).await?;
        self.stream.flush().await
    }

    /// Next packet within `d`: `Ok(None)` on a clean close, `Err` on timeout.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Packet>, tokio::time::error::Elapsed> {
        tokio::time::timeout(d, async {
            loop {
                match decode(&mut self.buf, self.version, usize::MAX) {
                    Ok(Some(p)) => return Some(p),
                    Ok(None) => {}
                    Err(e) => panic!("server sent an undecodable packet: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
    }

    /// Next packet; `None` if the server closed the connection.
    pub async fn recv(&mut self) -> Option<Packet> {
        self.recv_within(WAIT).await.expect("timed out waiting for a packet")
    }

    /// Asserts nothing arrives for `d`.
    pub async fn expect_silence(&mut self, d: Duration) {
        if let Ok(p) = self.recv_within(d).await {
            panic!("expected silence, got {p:?}");
        }
    }

    /// Reads until the server closes; returns every packet seen on the way.
    pub async fn expect_closed(&mut self) -> Vec<Packet> {
        let mut seen = Vec::new();
        loop {
            match self.recv_within(WAIT).await {
                Ok(Some(p)) => seen.push(p),
                Ok(None) => return seen,
                Err(_) => panic!("server did not close the connection; saw {seen:?}"),
            }
        }
    }

    /// Next PUBLISH, skipping PINGRESP; panics on anything else.
    pub async fn recv_publish(&mut self) -> starling_codec::Publish {
        loop {
            match self.recv().await {
                Some(Packet::Publish(p)) => return p,
                Some(Packet::PingResp) => continue,
                other => panic!("expected PUBLISH, got {other:?}"),
            }
        }
    }

    pub async fn subscribe(&mut self, packet_id: u16, filter: &str, qos: QoS) -> starling_codec::SubAck {
        let opts = starling_codec::SubscriptionOptions::new(qos);
        self.subscribe_with(packet_id, vec![(filter, opts)], Properties::default()).await
    }

    pub async fn subscribe_with(
        &mut self,
        packet_id: u16,
        filters: Vec<(&str, starling_codec::SubscriptionOptions)>,
        properties: Properties,
    ) -> starling_codec::SubAck {
        let filters = filters.into_iter().map(|(f, o)| (f.into(), o)).collect();
        self.send(&Packet::Subscribe(starling_codec::Subscribe { packet_id, properties, filters })).await;
        match self.recv().await {
            Some(Packet::SubAck(a)) => {
                assert_eq!(a.packet_id, packet_id);
                a
            }
            other => panic!("expected SUBACK, got {other:?}"),
        }
    }

    pub async fn publish(&mut self, topic: &str, payload: &[u8], qos: QoS, retain: bool, packet_id: u16) {
        let p = starling_codec::Publish {
            dup: false,
            qos,
            retain,
            topic: topic.into(),
            packet_id: if qos == QoS::AtMostOnce { 0 } else { packet_id },
            properties: Default::default(),
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        self.send(&Packet::Publish(p)).await;
    }

    /// A QoS 1 PUBLISH and its PUBACK's reason code (panics on anything
    /// else).
    pub async fn publish_acked(
        &mut self,
        topic: &str,
        payload: &[u8],
        retain: bool,
        packet_id: u16,
    ) -> ReasonCode {
        self.publish(topic, payload, QoS::AtLeastOnce, retain, packet_id).await;
        match self.recv().await {
            Some(Packet::Ack(a)) if a.kind == starling_codec::AckKind::PubAck && a.packet_id == packet_id => {
                a.reason
            }
            other => panic!("expected PUBACK {packet_id}, got {other:?}"),
        }
    }

    /// Acknowledges a received QoS 1 message.
    pub async fn puback(&mut self, packet_id: u16) {
        self.send(&Packet::Ack(starling_codec::Ack::new(starling_codec::AckKind::PubAck, packet_id))).await;
    }

    pub async fn disconnect(mut self) {
        self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}
