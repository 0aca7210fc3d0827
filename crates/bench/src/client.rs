//! A lean MQTT client for load generation, on the Starling codec: no
//! automatic behaviour beyond what a scenario asks, batched writes, and
//! either TCP or WebSocket underneath.

use std::net::SocketAddr;
use std::pin::Pin;

use anyhow::{bail, Context};
use bytes::BytesMut;
use starling_codec::{
    decode, Ack, AckKind, Connect, Packet, Properties, ProtocolVersion, QoS, Subscribe, SubscriptionOptions,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;

/// Which transport to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum Transport {
    Tcp,
    Ws,
}

/// Any byte stream a client runs over.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin + 'static> Stream for T {}

pub type BoxStream = Pin<Box<dyn Stream>>;

pub async fn open(addr: SocketAddr, transport: Transport) -> anyhow::Result<BoxStream> {
    let tcp = TcpStream::connect(addr).await.with_context(|| format!("connect {addr}"))?;
    tcp.set_nodelay(true)?;
    match transport {
        Transport::Tcp => Ok(Box::pin(tcp)),
        Transport::Ws => {
            use tokio_tungstenite::tungstenite::client::IntoClientRequest;
            let mut req = format!("ws://{addr}/mqtt").into_client_request()?;
            req.headers_mut().insert("sec-websocket-protocol", "mqtt".parse()?);
            let (ws, _) = tokio_tungstenite::client_async(req, tcp).await?;
            Ok(Box::pin(starling_ws::WsStream::new(ws)))
        }
    }
}

/// The read side: decodes packets from a buffered stream.
pub struct Reader {
    inner: ReadHalf<BoxStream>,
    buf: BytesMut,
    version: ProtocolVersion,
}

impl Reader {
    pub async fn next(&mut self) -> anyhow::Result<Option<Packet>> {
        loop {
            if let Some(p) = decode(&mut self.buf, self.version, usize::MAX)? {
                return Ok(Some(p));
            }
            if self.buf.capacity() - self.buf.len() < 4096 {
                self.buf.reserve(64 * 1024);
            }
            if self.inner.read_buf(&mut self.buf).await? == 0 {
                return Ok(None);
            }
        }
    }

    /// Decodes whatever is buffered without reading more.
    pub fn try_next(&mut self) -> anyhow::Result<Option<Packet>> {
        Ok(decode(&mut self.buf, self.version, usize::MAX)?)
    }
}

/// The write side: encodes into a buffer, written on `flush`.
pub struct Writer {
    inner: WriteHalf<BoxStream>,
    pub buf: BytesMut,
    pub version: ProtocolVersion,
}

impl Writer {
    pub fn push(&mut self, p: &Packet) -> anyhow::Result<()> {
        p.encode(self.version, &mut self.buf)?;
        Ok(())
    }

    pub async fn flush(&mut self) -> anyhow::Result<()> {
        if !self.buf.is_empty() {
            self.inner.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    pub async fn send(&mut self, p: &Packet) -> anyhow::Result<()> {
        self.push(p)?;
        self.flush().await
    }

    pub async fn ack(&mut self, kind: AckKind, id: u16) -> anyhow::Result<()> {
        self.push(&Packet::Ack(Ack::new(kind, id)))?;
        Ok(())
    }

    pub async fn shutdown(&mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.inner.shutdown().await;
    }
}

/// Connects and completes CONNECT/CONNACK.
pub async fn connect(
    addr: SocketAddr,
    transport: Transport,
    version: ProtocolVersion,
    client_id: &str,
    clean: bool,
) -> anyhow::Result<(Reader, Writer)> {
    let stream = open(addr, transport).await?;
    let (r, w) = tokio::io::split(stream);
    let mut reader = Reader { inner: r, buf: BytesMut::with_capacity(64 * 1024), version };
    let mut writer = Writer { inner: w, buf: BytesMut::with_capacity(64 * 1024), version };
    let mut properties = Properties::default();
    if version.is_v5() {
        properties.receive_maximum = Some(u16::MAX);
        if !clean {
            properties.session_expiry_interval = Some(300);
        }
    }
    let c = Connect {
        version,
        clean_start: clean,
        keep_alive: 120,
        properties,
        client_id: client_id.into(),
        will: None,
        username: None,
        password: None,
    };
    writer.send(&Packet::Connect(Box::new(c))).await?;
    match reader.next().await? {
        Some(Packet::ConnAck(a)) if a.code == 0 => Ok((reader, writer)),
        Some(Packet::ConnAck(a)) => bail!("{client_id}: CONNACK refused with 0x{:02X}", a.code),
        other => bail!("{client_id}: expected CONNACK, got {other:?}"),
    }
}

/// Subscribes and waits for the SUBACK.
pub async fn subscribe(r: &mut Reader, w: &mut Writer, filter: &str, qos: QoS) -> anyhow::Result<()> {
    let s = Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![(filter.into(), SubscriptionOptions::new(qos))],
    };
    w.send(&Packet::Subscribe(s)).await?;
    loop {
        match r.next().await? {
            Some(Packet::SubAck(a)) => {
                if a.reason_codes.iter().any(|c| c.is_error()) {
                    bail!("subscription to {filter} refused: {:?}", a.reason_codes);
                }
                return Ok(());
            }
            Some(Packet::Publish(_)) => continue,
            other => bail!("expected SUBACK, got {other:?}"),
        }
    }
}
