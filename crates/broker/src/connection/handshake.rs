//! From the first byte to CONNACK: read CONNECT within the connect
//! timeout, validate it, claim the session through the state port, attach
//! to the session runtime and resend what was unacknowledged.

use std::time::Duration;

use bytes::BytesMut;
use starling_codec::{
    decode, peek_header, ConnAck, Connect, DecodeError, MqttStr, Packet, Properties, ProtocolVersion, QoS,
    ReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{Conn, ConnectionInfo, Negotiated, RateLimiter};
use crate::auth::{Action, AuthOutcome, Credentials};
use crate::broker::Broker;
use crate::ids::ClientId;
use crate::ops::SessionClaim;
use crate::port::PortError;
use crate::replicated::WillOnRelease;
use crate::topic::validate_topic_name;
use crate::will::WillSpec;

enum First {
    Connect(Box<Connect>),
    /// Closed, timed out, or not an MQTT CONNECT: close silently.
    Gone(String),
    /// A CONNECT we can answer with an error CONNACK before closing.
    Refuse {
        v5: bool,
        code: ReasonCode,
        why: String,
    },
}

/// The protocol level byte of a CONNECT still in the buffer, if visible.
fn connect_level(buf: &[u8]) -> Option<u8> {
    let h = peek_header(buf).ok()??;
    let body = buf.get(h.header_len..)?;
    let name_len = usize::from(u16::from_be_bytes([*body.first()?, *body.get(1)?]));
    body.get(2 + name_len).copied()
}

async fn read_first<R: AsyncRead + Unpin>(reader: &mut R, rbuf: &mut BytesMut, max: usize) -> First {
    loop {
        // Seen before decoding, which consumes the frame.
        let v5_connect = rbuf.first().is_some_and(|b| b >> 4 == 1) && connect_level(rbuf) == Some(5);
        match decode(rbuf, ProtocolVersion::V311, max) {
            Ok(Some(Packet::Connect(c))) => return First::Connect(c),
            Ok(Some(p)) => return First::Gone(format!("first packet was {}, not CONNECT", p.name())),
            Ok(None) => {}
            Err(DecodeError::UnsupportedProtocol(level)) => {
                let v5 = level >= 5;
                let code = ReasonCode::UNSUPPORTED_PROTOCOL_VERSION;
                return First::Refuse { v5, code, why: format!("unsupported protocol level {level}") };
            }
            Err(e) => {
                // 5.0 lets the server answer a bad CONNECT with a CONNACK
                // carrying the reason; only when the level says 5.0.
                if v5_connect {
                    return First::Refuse { v5: true, code: e.reason_code(), why: e.to_string() };
                }
                return First::Gone(e.to_string());
            }
        }
        if rbuf.first().is_some_and(|b| b >> 4 != 1) {
            return First::Gone("first packet is not CONNECT".into());
        }
        rbuf.reserve(512);
        match reader.read_buf(rbuf).await {
            Ok(0) => return First::Gone("closed before CONNECT".into()),
            Ok(_) => {}
            Err(e) => return First::Gone(e.to_string()),
        }
    }
}

async fn send_connack<W: AsyncWrite + Unpin>(writer: &mut W, version: ProtocolVersion, ack: ConnAck) {
    let mut out = BytesMut::with_capacity(64);
    let ack =
        if version.is_v5() { ack } else { ConnAck { code: ReasonCode(ack.code).to_v3_connack(), ..ack } };
    if Packet::ConnAck(ack).encode(version, &mut out).is_ok() {
        let _ = tokio::time::timeout(Duration::from_secs(2), async {
            let _ = writer.write_all(&out).await;
            let _ = writer.flush().await;
            let _ = writer.shutdown().await;
        })
        .await;
    }
}

fn refuse_ack(code: ReasonCode, problem_info: bool, why: &str) -> ConnAck {
    let mut properties = Properties::default();
    if problem_info {
        properties.reason_string = Some(MqttStr::from(why));
    }
    ConnAck { session_present: false, code: code.0, properties }
}

/// Reads and answers CONNECT. Returns the connection ready for its main
/// loop, or `None` once the socket has been answered and closed.
pub(super) async fn accept<S>(broker: Broker, mut stream: S, info: ConnectionInfo) -> Option<Box<Conn<S>>>
where
    S: AsyncRead + AsyncWrite + Send + Unpin + 'static,
{
    let cfg = broker.config().clone();
    let mut rbuf = BytesMut::with_capacity(512);
    let timeout = Duration::from_secs(cfg.connect_timeout_secs);
    let first =
        match tokio::time::timeout(timeout, read_first(&mut stream, &mut rbuf, cfg.max_packet_size as usize))
            .await
        {
            Ok(f) => f,
            Err(_) => First::Gone("no CONNECT within the connect timeout".into()),
        };
    let connect = match first {
        First::Connect(c) => c,
        First::Gone(why) => {
            tracing::debug!(peer = %info.peer, transport = info.transport, %why, "connection closed before CONNECT");
            let _ = stream.shutdown().await;
            return None;
        }
        First::Refuse { v5, code, why } => {
            tracing::info!(peer = %info.peer, %why, "CONNECT refused");
            broker.metrics().connections_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let version = if v5 { ProtocolVersion::V5 } else { ProtocolVersion::V311 };
            send_connack(&mut stream, version, refuse_ack(code, v5, &why)).await;
            return None;
        }
    };
    let version = connect.version;
    let v5 = version.is_v5();
    let problem_info = connect.properties.request_problem_information != Some(0);
    macro_rules! refuse {
        ($code:expr, $why:expr) => {{
            let why: String = $why.into();
            tracing::info!(peer = %info.peer, client = %connect.client_id, code = %$code, %why, "CONNECT refused");
            broker.metrics().connections_rejected.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            send_connack(&mut stream, version, refuse_ack($code, problem_info && v5, &why)).await;
            return None;
        }};
    }

    if broker.is_shutting_down() {
        refuse!(ReasonCode::SERVER_UNAVAILABLE, "server shutting down");
    }
    if v5 && connect.properties.authentication_method.is_some() {
        refuse!(ReasonCode::BAD_AUTHENTICATION_METHOD, "enhanced authentication is not supported");
    }

    // Client identifier: assign one where the protocol allows.
    let mut assigned = None;
    let client_id = if connect.client_id.is_empty() {
        let allowed = match version {
            ProtocolVersion::V31 => false,
            ProtocolVersion::V311 => connect.clean_start,
            ProtocolVersion::V5 => true,
        };
        if !allowed {
            refuse!(ReasonCode::CLIENT_IDENTIFIER_NOT_VALID, "empty client identifier needs a clean session");
        }
        let id = broker.assign_client_id();
        assigned = Some(id.clone());
        ClientId::new(&id)
    } else {
        ClientId::new(&connect.client_id)
    };

    // Authentication (slowed down after repeated failures from one address).
    let creds = Credentials {
        username: connect.username.as_ref().map(|u| u.to_string()),
        password: connect.password.clone(),
        cert_cn: info.cert_cn.clone(),
        peer: info.peer_ip(),
    };
    let username = match broker.auth().authenticate(&creds).await {
        AuthOutcome::Allowed { username } => username,
        AuthOutcome::Refused { reason, delay } => {
            tracing::warn!(peer = %info.peer, client = %client_id, user = ?creds.username, code = %reason, "authentication failed");
            tokio::time::sleep(delay).await;
            refuse!(reason, "not authorized");
        }
    };
    let acl = broker.auth().acl_for(username.as_deref(), client_id.as_str());
    let acl_version = broker.auth().rules_version();

    // Will: checked like a PUBLISH.
    let will = match &connect.will {
        Some(w) => {
            if !acl.check(Action::Write, &w.topic) {
                refuse!(ReasonCode::NOT_AUTHORIZED, "the will topic may not be published to");
            }
            if validate_topic_name(&w.topic, &broker.inner.topic_limits).is_err() {
                refuse!(ReasonCode::TOPIC_NAME_INVALID, "invalid will topic");
            }
            if w.qos > broker.inner.max_qos {
                refuse!(ReasonCode::QOS_NOT_SUPPORTED, "will QoS above the server maximum");
            }
            if w.retain && !cfg.retain_available {
                refuse!(ReasonCode::RETAIN_NOT_SUPPORTED, "retained wills are not available");
            }
            Some(Box::new(WillSpec::from_connect(w)))
        }
        None => None,
    };

    // Keep alive and session expiry.
    let mut server_keep_alive = None;
    let mut keep_alive = connect.keep_alive;
    if v5 && cfg.max_keepalive > 0 && (keep_alive == 0 || keep_alive > cfg.max_keepalive) {
        keep_alive = cfg.max_keepalive;
        server_keep_alive = Some(keep_alive);
    }
    let mut expiry_capped = None;
    let session_expiry = if v5 {
        let asked = connect.properties.session_expiry_interval.unwrap_or(0);
        if asked > cfg.max_session_expiry_secs {
            expiry_capped = Some(cfg.max_session_expiry_secs);
        }
        asked.min(cfg.max_session_expiry_secs)
    } else if connect.clean_start {
        0
    } else {
        cfg.max_session_expiry_secs
    };

    // Claim the session.
    let epoch = broker.next_epoch();
    let existing = broker.views().registry.get(&client_id);
    let runtime = match (&existing, connect.clean_start) {
        (Some(s), false) if !s.is_ended() => s.clone(),
        _ => broker.new_session(client_id.clone()),
    };
    let claim = SessionClaim {
        client: client_id.clone(),
        epoch,
        clean_start: connect.clean_start,
        expiry_interval: session_expiry,
        runtime: runtime.clone(),
        will: will.clone(),
    };
    let session_present = match broker.claim_session(claim).await {
        Ok(present) => present,
        Err(PortError::Unavailable(why)) => refuse!(ReasonCode::SERVER_UNAVAILABLE, why),
        Err(e) => refuse!(ReasonCode::UNSPECIFIED_ERROR, e.to_string()),
    };
    let (resend, kick_seen) = runtime.attach(epoch);
    if broker.is_shutting_down() {
        // Shutdown began while we were claiming: close right after CONNACK.
        runtime.kick(Some(epoch), ReasonCode::SERVER_SHUTTING_DOWN);
    }

    let mut ack = ConnAck { session_present, code: 0, properties: Properties::default() };
    if v5 {
        let p = &mut ack.properties;
        p.assigned_client_identifier = assigned.map(MqttStr::from);
        p.server_keep_alive = server_keep_alive;
        p.session_expiry_interval = expiry_capped;
        p.receive_maximum = Some(cfg.receive_maximum);
        p.topic_alias_maximum = Some(cfg.topic_alias_maximum);
        p.maximum_packet_size = Some(cfg.max_packet_size);
        if !cfg.retain_available {
            p.retain_available = Some(0);
        }
        if broker.inner.max_qos < QoS::ExactlyOnce {
            p.maximum_qos = Some(broker.inner.max_qos.as_u8());
        }
    }
    // CONNACK goes out directly: the connection holds no write buffer
    // until it has something to send.
    let mut out = BytesMut::with_capacity(64);
    if Packet::ConnAck(ack).encode(version, &mut out).is_err() {
        return None;
    }
    if stream.write_all(&out).await.is_err() || stream.flush().await.is_err() {
        runtime.detach(epoch);
        let _ = broker.release_session(&client_id, epoch, session_expiry, WillOnRelease::Publish).await;
        return None;
    }
    broker.metrics().bytes_sent.fetch_add(out.len() as u64, std::sync::atomic::Ordering::Relaxed);
    drop(out);
    broker.metrics().connection_opened();
    tracing::debug!(
        peer = %info.peer, transport = info.transport, client = %client_id, %version,
        clean_start = connect.clean_start, session_present, "client connected"
    );

    let neg = Negotiated {
        version,
        keep_alive,
        session_expiry,
        window: cfg.max_inflight.min(connect.properties.receive_maximum.unwrap_or(u16::MAX)),
        client_max_packet: connect.properties.maximum_packet_size.unwrap_or(u32::MAX),
        client_alias_max: if v5 { connect.properties.topic_alias_maximum.unwrap_or(0) } else { 0 },
        problem_info,
    };
    let mut conn = Box::new(Conn {
        broker,
        stream,
        rbuf,
        wbuf: BytesMut::new(),
        peer: info.peer.into_boxed_str(),
        epoch,
        session: runtime,
        neg,
        will,
        kick_seen,
        aliases: None,
        username: username.map(String::into_boxed_str),
        acl,
        acl_version,
        rate: RateLimiter::configured(cfg.publish_rate, cfg.publish_bytes_rate),
        pending_input: false,
        read_busy: false,
        acks: None,
        want_drain: true,
        keepalive_tick: None,
        shrink_tick: None,
        need_flush: false,
        wheel_tick: None,
        throttle: None,
    });
    // Most clients send nothing right after CONNECT: hold no read buffer
    // until they do (the first read allocates a small one).
    if conn.rbuf.is_empty() {
        conn.rbuf = BytesMut::new();
    }
    conn.touch_keepalive();
    conn.resend(resend);
    Some(conn)
}
