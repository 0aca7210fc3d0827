//! A small MQTT client on the project's codec, with the control a checker
//! needs: every packet is visible, acknowledgements are sent by the caller,
//! and every wait has a deadline.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Result};
use bytes::BytesMut;
use starling_codec::{decode, ConnAck, Connect, Packet, Properties, ProtocolVersion};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Silence after which a client sends PINGREQ, and how long it then waits.
const PING_AFTER: Duration = Duration::from_secs(3);
const PING_WAIT: Duration = Duration::from_secs(5);

/// A connection's keep-alive state for `Mqtt::recv_alive`.
#[derive(Debug)]
pub struct Alive {
    /// When the broker last sent something.
    pub last_rx: Instant,
    ping_sent: Option<Instant>,
}

impl Default for Alive {
    fn default() -> Alive {
        Alive { last_rx: Instant::now(), ping_sent: None }
    }
}

#[derive(Debug)]
pub struct Mqtt {
    stream: TcpStream,
    buf: BytesMut,
    pub version: ProtocolVersion,
}

pub fn connect_packet(version: ProtocolVersion, id: &str, clean: bool, keep_alive: u16) -> Connect {
    let mut properties = Properties::default();
    if version == ProtocolVersion::V5 && !clean {
        properties.session_expiry_interval = Some(86_400);
    }
    Connect {
        version,
        clean_start: clean,
        keep_alive,
        properties,
        client_id: id.into(),
        will: None,
        username: None,
        password: None,
    }
}

impl Mqtt {
    /// TCP connect + CONNECT/CONNACK within `within`. A refused CONNACK is
    /// returned, not an error.
    pub async fn connect(addr: SocketAddr, c: Connect, within: Duration) -> Result<(Mqtt, ConnAck)> {
        tokio::time::timeout(within, async {
            let stream = TcpStream::connect(addr).await?;
            stream.set_nodelay(true)?;
            let mut m = Mqtt { stream, buf: BytesMut::with_capacity(4096), version: c.version };
            m.send(&Packet::Connect(Box::new(c))).await?;
            match m.recv(within).await? {
                Some(Packet::ConnAck(a)) => Ok((m, a)),
                Some(other) => bail!("expected CONNACK, got {}", other.name()),
                None => bail!("no CONNACK"),
            }
        })
        .await
        .map_err(|_| anyhow!("connect timed out"))?
    }

    pub async fn send(&mut self, p: &Packet) -> Result<()> {
        let mut out = BytesMut::new();
        p.encode(self.version, &mut out).map_err(|e| anyhow!("encode: {e:?}"))?;
        self.stream.write_all(&out).await?;
        Ok(())
    }

    /// The next packet; `Ok(None)` when nothing came within `within`; an
    /// error when the connection closed or sent something undecodable.
    pub async fn recv(&mut self, within: Duration) -> Result<Option<Packet>> {
        let fut = async {
            loop {
                match decode(&mut self.buf, self.version, 1 << 20) {
                    Ok(Some(p)) => return Ok(p),
                    Ok(None) => {}
                    Err(e) => bail!("undecodable packet from the broker: {e}"),
                }
                if self.stream.read_buf(&mut self.buf).await? == 0 {
                    bail!("closed by the broker");
                }
            }
        };
        match tokio::time::timeout(within, fut).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// The next packet within `tick` (`Ok(None)`: nothing yet), keeping the
    /// connection's keep-alive: PINGREQ after `PING_AFTER` of silence, the
    /// connection counted lost when nothing answers within `PING_WAIT`.
    /// `Err` says why the connection is gone.
    pub async fn recv_alive(&mut self, alive: &mut Alive, tick: Duration) -> Result<Option<Packet>, String> {
        match self.recv(tick).await {
            Err(e) => Err(e.to_string()),
            Ok(Some(p)) => {
                *alive = Alive::default();
                Ok(Some(p))
            }
            Ok(None) => {
                if let Some(at) = alive.ping_sent {
                    if at.elapsed() > PING_WAIT {
                        return Err("no PINGRESP within 5 s".into());
                    }
                } else if alive.last_rx.elapsed() > PING_AFTER {
                    self.send(&Packet::PingReq).await.map_err(|e| e.to_string())?;
                    alive.ping_sent = Some(Instant::now());
                }
                Ok(None)
            }
        }
    }

    pub async fn disconnect(mut self) {
        let _ = self.send(&Packet::Disconnect(Default::default())).await;
        let _ = self.stream.shutdown().await;
    }
}
