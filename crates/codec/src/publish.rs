//! PUBLISH and its acknowledgements (PUBACK, PUBREC, PUBREL, PUBCOMP).

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext, PublishProperties};
use crate::reason::ReasonCode;
use crate::types::{MqttStr, ProtocolVersion, QoS};
use crate::wire::{field_len, put_fixed_header, put_str, varint_len, Reader};

/// A topic name must not contain wildcards (MQTT-3.3.2-2).
pub fn validate_topic_name(topic: &str) -> Result<(), DecodeError> {
    if topic.contains(['+', '#']) {
        return Err(DecodeError::TopicName("wildcard in a topic name"));
    }
    Ok(())
}

/// An application message in flight between a client and the server.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Publish {
    pub dup: bool,
    pub qos: QoS,
    pub retain: bool,
    /// Empty only in 5.0 when a topic alias stands for it.
    pub topic: MqttStr,
    /// 0 for QoS 0, otherwise non-zero.
    pub packet_id: u16,
    pub properties: PublishProperties,
    pub payload: Bytes,
}

impl Publish {
    pub(crate) fn decode(flags: u8, mut r: Reader, version: ProtocolVersion) -> Result<Publish, DecodeError> {
        let dup = flags & 0x08 != 0;
        let qos = QoS::from_u8((flags >> 1) & 0x03).ok_or(DecodeError::Malformed("PUBLISH QoS 3"))?;
        let retain = flags & 0x01 != 0;
        if qos == QoS::AtMostOnce && dup {
            return Err(DecodeError::Malformed("DUP set on a QoS 0 PUBLISH"));
        }
        let topic = r.string()?;
        validate_topic_name(&topic)?;
        let packet_id = if qos != QoS::AtMostOnce {
            let id = r.u16()?;
            if id == 0 {
                return Err(DecodeError::Protocol("packet identifier 0"));
            }
            id
        } else {
            0
        };
        let properties = if version.is_v5() {
            PublishProperties::decode(&mut r, PropertyContext::Publish)?
        } else {
            PublishProperties::default()
        };
        if topic.is_empty() {
            if !version.is_v5() {
                return Err(DecodeError::TopicName("empty topic name"));
            }
            if properties.topic_alias.is_none() {
                return Err(DecodeError::Protocol("empty topic name without a topic alias"));
            }
        }
        let payload = r.rest();
        Ok(Publish { dup, qos, retain, topic, packet_id, properties, payload })
    }

    fn remaining_len(&self, version: ProtocolVersion) -> usize {
        let mut n = field_len(self.topic.as_bytes()) + self.payload.len();
        if self.qos != QoS::AtMostOnce {
            n += 2;
        }
        if version.is_v5() {
            n += self.properties.encoded_len();
        }
        n
    }

    /// Size of the whole packet on the wire, for maximum-packet-size checks.
    pub fn encoded_len(&self, version: ProtocolVersion) -> usize {
        let n = self.remaining_len(version);
        1 + varint_len(n) + n
    }

    pub fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut first = 0x30 | (self.qos.as_u8() << 1);
        if self.dup {
            first |= 0x08;
        }
        if self.retain {
            first |= 0x01;
        }
        put_fixed_header(out, first, self.remaining_len(version))?;
        put_str(out, &self.topic)?;
        if self.qos != QoS::AtMostOnce {
            out.put_u16(self.packet_id);
        }
        if version.is_v5() {
            self.properties.encode(out)?;
        }
        out.put_slice(&self.payload);
        Ok(())
    }
}

/// Which of the four acknowledgement packets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AckKind {
    PubAck,
    PubRec,
    PubRel,
    PubComp,
}

impl AckKind {
    fn first_byte(self) -> u8 {
        match self {
            AckKind::PubAck => 0x40,
            AckKind::PubRec => 0x50,
            AckKind::PubRel => 0x62,
            AckKind::PubComp => 0x70,
        }
    }
}

/// PUBACK, PUBREC, PUBREL or PUBCOMP: a packet id, and in 5.0 a reason code
/// and properties (omitted on the wire when they are the defaults).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    pub kind: AckKind,
    pub packet_id: u16,
    pub reason: ReasonCode,
    pub properties: Properties,
}

impl Ack {
    pub fn new(kind: AckKind, packet_id: u16) -> Ack {
        Ack { kind, packet_id, reason: ReasonCode::SUCCESS, properties: Properties::default() }
    }

    pub fn with_reason(kind: AckKind, packet_id: u16, reason: ReasonCode) -> Ack {
        Ack { kind, packet_id, reason, properties: Properties::default() }
    }

    pub(crate) fn decode(kind: AckKind, mut r: Reader, version: ProtocolVersion) -> Result<Ack, DecodeError> {
        let packet_id = r.u16()?;
        if packet_id == 0 {
            return Err(DecodeError::Protocol("packet identifier 0"));
        }
        let mut reason = ReasonCode::SUCCESS;
        let mut properties = Properties::default();
        if version.is_v5() {
            if !r.is_empty() {
                reason = ReasonCode(r.u8()?);
            }
            if !r.is_empty() {
                properties = Properties::decode(&mut r, PropertyContext::PubAck)?;
            }
        }
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after the acknowledgement"));
        }
        Ok(Ack { kind, packet_id, reason, properties })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let short = !version.is_v5() || (self.reason == ReasonCode::SUCCESS && self.properties.is_empty());
        if short {
            put_fixed_header(out, self.kind.first_byte(), 2)?;
            out.put_u16(self.packet_id);
            return Ok(());
        }
        let props = if self.properties.is_empty() { 0 } else { self.properties.encoded_len() };
        put_fixed_header(out, self.kind.first_byte(), 3 + props)?;
        out.put_u16(self.packet_id);
        out.put_u8(self.reason.0);
        if props > 0 {
            self.properties.encode(out)?;
        }
        Ok(())
    }
}
