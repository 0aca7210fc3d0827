//! CONNECT and CONNACK.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext, PublishProperties};
use crate::types::{MqttStr, ProtocolVersion, QoS};
use crate::wire::{field_len, put_binary, put_fixed_header, put_str, Reader};

/// A will message carried in CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    /// 5.0 only; `will_delay_interval` lives here too.
    pub properties: PublishProperties,
}

/// The first packet of every connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    pub version: ProtocolVersion,
    /// "Clean Session" in 3.x, "Clean Start" in 5.0.
    pub clean_start: bool,
    pub keep_alive: u16,
    pub properties: Properties,
    pub client_id: MqttStr,
    pub will: Option<Will>,
    pub username: Option<MqttStr>,
    pub password: Option<Bytes>,
}

impl Connect {
    pub(crate) fn decode(mut r: Reader) -> Result<Connect, DecodeError> {
        let name = r.string()?;
        let level = r.u8()?;
        let version = match (name.as_str(), level) {
            ("MQIsdp", 3) => ProtocolVersion::V31,
            ("MQTT", 4) => ProtocolVersion::V311,
            ("MQTT", 5) => ProtocolVersion::V5,
            _ => return Err(DecodeError::UnsupportedProtocol(level)),
        };
        let flags = r.u8()?;
        if flags & 0x01 != 0 {
            return Err(DecodeError::Malformed("CONNECT reserved flag set"));
        }
        let clean_start = flags & 0x02 != 0;
        let will_flag = flags & 0x04 != 0;
        let will_qos = (flags >> 3) & 0x03;
        let will_retain = flags & 0x20 != 0;
        let password_flag = flags & 0x40 != 0;
        let username_flag = flags & 0x80 != 0;
        let will_qos = QoS::from_u8(will_qos).ok_or(DecodeError::Malformed("will QoS 3"))?;
        if !will_flag && (will_qos != QoS::AtMostOnce || will_retain) {
            return Err(DecodeError::Malformed("will QoS or retain set without a will"));
        }
        if password_flag && !username_flag && version != ProtocolVersion::V5 {
            return Err(DecodeError::Malformed("password without user name"));
        }
        let keep_alive = r.u16()?;
        let properties = if version.is_v5() {
            Properties::decode(&mut r, PropertyContext::Connect)?
        } else {
            Properties::default()
        };
        let client_id = r.string()?;
        let will = if will_flag {
            let properties = if version.is_v5() {
                PublishProperties::decode(&mut r, PropertyContext::Will)?
            } else {
                PublishProperties::default()
            };
            let topic = r.string()?;
            crate::publish::validate_topic_name(&topic)?;
            let payload = r.binary()?;
            Some(Will { topic, payload, qos: will_qos, retain: will_retain, properties })
        } else {
            None
        };
        let username = if username_flag { Some(r.string()?) } else { None };
        let password = if password_flag { Some(r.binary()?) } else { None };
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after the CONNECT payload"));
        }
        Ok(Connect { version, clean_start, keep_alive, properties, client_id, will, username, password })
    }

    pub(crate) fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = self.version.is_v5();
        let mut len = field_len(self.version.name().as_bytes()) + 1 + 1 + 2;
        if v5 {
            len += self.properties.encoded_len();
        }
        len += field_len(self.client_id.as_bytes());
        if let Some(w) = &self.will {
            if v5 {
                len += w.properties.encoded_len();
            }
            len += field_len(w.topic.as_bytes()) + field_len(&w.payload);
        }
        if let Some(u) = &self.username {
            len += field_len(u.as_bytes());
        }
        if let Some(p) = &self.password {
            len += field_len(p);
        }
        put_fixed_header(out, 0x10, len)?;
        put_str(out, self.version.name())?;
        out.put_u8(self.version.level());
        let mut flags = 0u8;
        if self.clean_start {
            flags |= 0x02;
        }
        if let Some(w) = &self.will {
            flags |= 0x04 | (w.qos.as_u8() << 3);
            if w.retain {
                flags |= 0x20;
            }
        }
        if self.password.is_some() {
            flags |= 0x40;
        }
        if self.username.is_some() {
            flags |= 0x80;
        }
        out.put_u8(flags);
        out.put_u16(self.keep_alive);
        if v5 {
            self.properties.encode(out)?;
        }
        put_str(out, &self.client_id)?;
        if let Some(w) = &self.will {
            if v5 {
                w.properties.encode(out)?;
            }
            put_str(out, &w.topic)?;
            put_binary(out, &w.payload)?;
        }
        if let Some(u) = &self.username {
            put_str(out, u)?;
        }
        if let Some(p) = &self.password {
            put_binary(out, p)?;
        }
        Ok(())
    }
}

/// The server's answer to CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ConnAck {
    pub session_present: bool,
    /// A 5.0 reason code, or for 3.x the return code (0x00..=0x05).
    pub code: u8,
    pub properties: Properties,
}

impl ConnAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<ConnAck, DecodeError> {
        let flags = r.u8()?;
        // 3.1 has no session present flag: the whole byte is reserved.
        let reserved = if version == ProtocolVersion::V31 { 0xFF } else { 0xFE };
        if flags & reserved != 0 {
            return Err(DecodeError::Malformed("CONNACK reserved flags set"));
        }
        let code = r.u8()?;
        let properties = if version.is_v5() && !r.is_empty() {
            Properties::decode(&mut r, PropertyContext::ConnAck)?
        } else {
            Properties::default()
        };
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after CONNACK"));
        }
        Ok(ConnAck { session_present: flags & 1 != 0, code, properties })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let v5 = version.is_v5();
        let len = 2 + if v5 { self.properties.encoded_len() } else { 0 };
        put_fixed_header(out, 0x20, len)?;
        // MQTT 3.1 has no session-present flag.
        let sp = self.session_present && version != ProtocolVersion::V31;
        out.put_u8(u8::from(sp));
        out.put_u8(self.code);
        if v5 {
            self.properties.encode(out)?;
        }
        Ok(())
    }
}
