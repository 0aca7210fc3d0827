//! MQTT 3.1, 3.1.1 and 5.0 packets to and from bytes.
//!
//! No I/O: `decode` takes whatever bytes have arrived and either returns one
//! packet (consuming exactly its bytes), says more are needed, or returns a
//! `DecodeError` carrying the reason code to disconnect with. Payloads and
//! topics are `Bytes` slices of the input buffer, so a PUBLISH is never
//! copied on the way in.

mod connect;
mod disconnect;
mod error;
pub mod properties;
mod publish;
mod reason;
#[cfg(feature = "serde")]
mod serde_impls;
mod subscribe;
mod types;
pub mod wire;

use bytes::{Buf, BufMut, BytesMut};

pub use connect::{ConnAck, Connect, Will};
pub use disconnect::{Auth, Disconnect};
pub use error::{DecodeError, EncodeError};
pub use properties::{Properties, PublishProperties, UserProperty};
pub use publish::{validate_topic_name, Ack, AckKind, Publish};
pub use reason::ReasonCode;
pub use subscribe::{SubAck, Subscribe, SubscriptionOptions, UnsubAck, Unsubscribe};
pub use types::{MqttStr, ProtocolVersion, QoS};

use wire::Reader;

/// Every MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    Connect(Box<Connect>),
    ConnAck(ConnAck),
    Publish(Publish),
    Ack(Ack),
    Subscribe(Subscribe),
    SubAck(SubAck),
    Unsubscribe(Unsubscribe),
    UnsubAck(UnsubAck),
    PingReq,
    PingResp,
    Disconnect(Disconnect),
    Auth(Auth),
}

impl Packet {
    /// A short name for logs.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::Ack(a) => match a.kind {
                AckKind::PubAck => "PUBACK",
                AckKind::PubRec => "PUBREC",
                AckKind::PubRel => "PUBREL",
                AckKind::PubComp => "PUBCOMP",
            },
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }

    /// Appends the packet's bytes to `out`.
    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        match self {
            Packet::Connect(c) => c.encode(out),
            Packet::ConnAck(c) => c.encode(version, out),
            Packet::Publish(p) => p.encode(version, out),
            Packet::Ack(a) => a.encode(version, out),
            Packet::Subscribe(s) => s.encode(version, out),
            Packet::SubAck(s) => s.encode(version, out),
            Packet::Unsubscribe(u) => u.encode(version, out),
            Packet::UnsubAck(u) => u.encode(version, out),
            Packet::PingReq => {
                out.put_slice(&[0xC0, 0]);
                Ok(())
            }
            Packet::PingResp => {
                out.put_slice(&[0xD0, 0]);
                Ok(())
            }
            Packet::Disconnect(d) => d.encode(version, out),
            Packet::Auth(a) => a.encode(out),
        }
    }
}

/// The fixed header of a packet whose bytes have (at least partly) arrived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FixedHeader {
    pub first_byte: u8,
    /// Bytes of the fixed header itself (1 + length of the varint).
    pub header_len: usize,
    pub remaining_len: usize,
}

impl FixedHeader {
    pub fn packet_len(&self) -> usize {
        self.header_len + self.remaining_len
    }
}

/// Parses the fixed header, or `Ok(None)` if more bytes are needed.
pub fn peek_header(buf: &[u8]) -> Result<Option<FixedHeader>, DecodeError> {
    if buf.len() < 2 {
        return Ok(None);
    }
    let mut value = 0usize;
    for i in 0..4 {
        let Some(&byte) = buf.get(1 + i) else {
            return Ok(None);
        };
        value |= usize::from(byte & 0x7F) << (7 * i);
        if byte & 0x80 == 0 {
            return Ok(Some(FixedHeader { first_byte: buf[0], header_len: 2 + i, remaining_len: value }));
        }
    }
    Err(DecodeError::Malformed("remaining length longer than 4 bytes"))
}

/// Decodes one packet from the front of `buf`.
///
/// `version` is the connection's protocol level (ignored for CONNECT, which
/// carries its own). A packet longer than `max_packet_size` is rejected as
/// soon as its header is seen, before its body is buffered.
pub fn decode(
    buf: &mut BytesMut,
    version: ProtocolVersion,
    max_packet_size: usize,
) -> Result<Option<Packet>, DecodeError> {
    let Some(h) = peek_header(buf)? else {
        return Ok(None);
    };
    let size = h.packet_len();
    if size > max_packet_size {
        return Err(DecodeError::TooLarge { size, max: max_packet_size });
    }
    if buf.len() < size {
        buf.reserve(size - buf.len());
        return Ok(None);
    }
    let mut frame = buf.split_to(size).freeze();
    frame.advance(h.header_len);
    decode_body(h.first_byte, frame, version).map(Some)
}

fn decode_body(first: u8, body: bytes::Bytes, version: ProtocolVersion) -> Result<Packet, DecodeError> {
    let kind = first >> 4;
    let flags = first & 0x0F;
    let r = Reader::new(body);
    let need_flags = |expected: u8| -> Result<(), DecodeError> {
        if flags != expected {
            Err(DecodeError::Malformed("invalid fixed header flags"))
        } else {
            Ok(())
        }
    };
    let empty = |r: &Reader| -> Result<(), DecodeError> {
        if r.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::Malformed("packet must have no body"))
        }
    };
    Ok(match kind {
        1 => {
            need_flags(0)?;
            Packet::Connect(Box::new(Connect::decode(r)?))
        }
        2 => {
            need_flags(0)?;
            Packet::ConnAck(ConnAck::decode(r, version)?)
        }
        3 => Packet::Publish(Publish::decode(flags, r, version)?),
        4 => {
            need_flags(0)?;
            Packet::Ack(Ack::decode(AckKind::PubAck, r, version)?)
        }
        5 => {
            need_flags(0)?;
            Packet::Ack(Ack::decode(AckKind::PubRec, r, version)?)
        }
        6 => {
            need_flags(2)?;
            Packet::Ack(Ack::decode(AckKind::PubRel, r, version)?)
        }
        7 => {
            need_flags(0)?;
            Packet::Ack(Ack::decode(AckKind::PubComp, r, version)?)
        }
        8 => {
            need_flags(2)?;
            Packet::Subscribe(Subscribe::decode(r, version)?)
        }
        9 => {
            need_flags(0)?;
            Packet::SubAck(SubAck::decode(r, version)?)
        }
        10 => {
            need_flags(2)?;
            Packet::Unsubscribe(Unsubscribe::decode(r, version)?)
        }
        11 => {
            need_flags(0)?;
            Packet::UnsubAck(UnsubAck::decode(r, version)?)
        }
        12 => {
            need_flags(0)?;
            empty(&r)?;
            Packet::PingReq
        }
        13 => {
            need_flags(0)?;
            empty(&r)?;
            Packet::PingResp
        }
        14 => {
            need_flags(0)?;
            Packet::Disconnect(Disconnect::decode(r, version)?)
        }
        15 if version.is_v5() => {
            need_flags(0)?;
            Packet::Auth(Auth::decode(r)?)
        }
        _ => return Err(DecodeError::Malformed("reserved packet type")),
    })
}

#[cfg(test)]
mod tests;
