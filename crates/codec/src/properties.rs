//! MQTT 5.0 properties.
//!
//! `PublishProperties` is the small set a PUBLISH (or a will) carries and is
//! kept separate because it rides the hot path; `Properties` covers every
//! other packet. Decoding enforces the spec's rules: a property not allowed
//! in the packet, or repeated where it may appear once, is a protocol error.

use bytes::{BufMut, Bytes, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::types::MqttStr;
use crate::wire::{field_len, put_binary, put_str, put_varint, varint_len, Reader};

pub const PAYLOAD_FORMAT_INDICATOR: u8 = 0x01;
pub const MESSAGE_EXPIRY_INTERVAL: u8 = 0x02;
pub const CONTENT_TYPE: u8 = 0x03;
pub const RESPONSE_TOPIC: u8 = 0x08;
pub const CORRELATION_DATA: u8 = 0x09;
pub const SUBSCRIPTION_IDENTIFIER: u8 = 0x0B;
pub const SESSION_EXPIRY_INTERVAL: u8 = 0x11;
pub const ASSIGNED_CLIENT_IDENTIFIER: u8 = 0x12;
pub const SERVER_KEEP_ALIVE: u8 = 0x13;
pub const AUTHENTICATION_METHOD: u8 = 0x15;
pub const AUTHENTICATION_DATA: u8 = 0x16;
pub const REQUEST_PROBLEM_INFORMATION: u8 = 0x17;
pub const WILL_DELAY_INTERVAL: u8 = 0x18;
pub const REQUEST_RESPONSE_INFORMATION: u8 = 0x19;
pub const RESPONSE_INFORMATION: u8 = 0x1A;
pub const SERVER_REFERENCE: u8 = 0x1C;
pub const REASON_STRING: u8 = 0x1F;
pub const RECEIVE_MAXIMUM: u8 = 0x21;
pub const TOPIC_ALIAS_MAXIMUM: u8 = 0x22;
pub const TOPIC_ALIAS: u8 = 0x23;
pub const MAXIMUM_QOS: u8 = 0x24;
pub const RETAIN_AVAILABLE: u8 = 0x25;
pub const USER_PROPERTY: u8 = 0x26;
pub const MAXIMUM_PACKET_SIZE: u8 = 0x27;
pub const WILDCARD_SUBSCRIPTION_AVAILABLE: u8 = 0x28;
pub const SUBSCRIPTION_IDENTIFIER_AVAILABLE: u8 = 0x29;
pub const SHARED_SUBSCRIPTION_AVAILABLE: u8 = 0x2A;

/// A user property: a name/value string pair, order and duplicates kept.
pub type UserProperty = (MqttStr, MqttStr);

/// Which packet a property block belongs to; decides what is allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PropertyContext {
    Connect,
    ConnAck,
    Publish,
    Will,
    PubAck,
    Subscribe,
    SubAck,
    Unsubscribe,
    UnsubAck,
    Disconnect,
    Auth,
}

fn allowed(ctx: PropertyContext, id: u8) -> bool {
    use PropertyContext::*;
    if id == USER_PROPERTY {
        return true;
    }
    match ctx {
        Connect => matches!(
            id,
            SESSION_EXPIRY_INTERVAL
                | AUTHENTICATION_METHOD
                | AUTHENTICATION_DATA
                | REQUEST_PROBLEM_INFORMATION
                | REQUEST_RESPONSE_INFORMATION
                | RECEIVE_MAXIMUM
                | TOPIC_ALIAS_MAXIMUM
                | MAXIMUM_PACKET_SIZE
        ),
        ConnAck => matches!(
            id,
            SESSION_EXPIRY_INTERVAL
                | ASSIGNED_CLIENT_IDENTIFIER
                | SERVER_KEEP_ALIVE
                | AUTHENTICATION_METHOD
                | AUTHENTICATION_DATA
                | RESPONSE_INFORMATION
                | SERVER_REFERENCE
                | REASON_STRING
                | RECEIVE_MAXIMUM
                | TOPIC_ALIAS_MAXIMUM
                | MAXIMUM_QOS
                | RETAIN_AVAILABLE
                | MAXIMUM_PACKET_SIZE
                | WILDCARD_SUBSCRIPTION_AVAILABLE
                | SUBSCRIPTION_IDENTIFIER_AVAILABLE
                | SHARED_SUBSCRIPTION_AVAILABLE
        ),
        Publish => matches!(
            id,
            PAYLOAD_FORMAT_INDICATOR
                | MESSAGE_EXPIRY_INTERVAL
                | CONTENT_TYPE
                | RESPONSE_TOPIC
                | CORRELATION_DATA
                | SUBSCRIPTION_IDENTIFIER
                | TOPIC_ALIAS
        ),
        Will => matches!(
            id,
            PAYLOAD_FORMAT_INDICATOR
                | MESSAGE_EXPIRY_INTERVAL
                | CONTENT_TYPE
                | RESPONSE_TOPIC
                | CORRELATION_DATA
                | WILL_DELAY_INTERVAL
        ),
        PubAck | SubAck | UnsubAck => id == REASON_STRING,
        Subscribe => id == SUBSCRIPTION_IDENTIFIER,
        Unsubscribe => false,
        Disconnect => matches!(id, SESSION_EXPIRY_INTERVAL | REASON_STRING | SERVER_REFERENCE),
        Auth => matches!(id, AUTHENTICATION_METHOD | AUTHENTICATION_DATA | REASON_STRING),
    }
}

fn set_once<T>(slot: &mut Option<T>, v: T) -> Result<(), DecodeError> {
    if slot.is_some() {
        return Err(DecodeError::Protocol("property included more than once"));
    }
    *slot = Some(v);
    Ok(())
}

fn bool_byte(r: &mut Reader) -> Result<u8, DecodeError> {
    let v = r.u8()?;
    if v > 1 {
        return Err(DecodeError::Protocol("property value must be 0 or 1"));
    }
    Ok(v)
}

/// Reads the property length and returns a reader over exactly the block.
fn block(r: &mut Reader) -> Result<Reader, DecodeError> {
    let len = r.varint()? as usize;
    Ok(Reader::new(r.bytes(len)?))
}

/// Properties of a PUBLISH, or of a will message (which also has a delay).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PublishProperties {
    pub payload_format_indicator: Option<u8>,
    pub message_expiry_interval: Option<u32>,
    pub topic_alias: Option<u16>,
    pub response_topic: Option<MqttStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
    pub subscription_identifiers: Vec<u32>,
    pub content_type: Option<MqttStr>,
    /// Only in a will's properties.
    pub will_delay_interval: Option<u32>,
}

impl PublishProperties {
    pub fn is_empty(&self) -> bool {
        self == &PublishProperties::default()
    }

    pub fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<PublishProperties, DecodeError> {
        let mut b = block(r)?;
        let mut p = PublishProperties::default();
        while !b.is_empty() {
            let id = b.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            if !allowed(ctx, id) {
                return Err(if is_known(id) {
                    DecodeError::Protocol("property not allowed in this packet")
                } else {
                    DecodeError::Malformed("unknown property identifier")
                });
            }
            match id {
                PAYLOAD_FORMAT_INDICATOR => set_once(&mut p.payload_format_indicator, bool_byte(&mut b)?)?,
                MESSAGE_EXPIRY_INTERVAL => set_once(&mut p.message_expiry_interval, b.u32()?)?,
                CONTENT_TYPE => set_once(&mut p.content_type, b.string()?)?,
                RESPONSE_TOPIC => {
                    let t = b.string()?;
                    if t.contains(['+', '#']) || t.is_empty() {
                        return Err(DecodeError::Protocol("response topic is not a valid topic name"));
                    }
                    set_once(&mut p.response_topic, t)?
                }
                CORRELATION_DATA => set_once(&mut p.correlation_data, b.binary()?)?,
                SUBSCRIPTION_IDENTIFIER => {
                    let v = b.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    p.subscription_identifiers.push(v)
                }
                TOPIC_ALIAS => set_once(&mut p.topic_alias, b.u16()?)?,
                WILL_DELAY_INTERVAL => set_once(&mut p.will_delay_interval, b.u32()?)?,
                USER_PROPERTY => {
                    let k = b.string()?;
                    let v = b.string()?;
                    p.user_properties.push((k, v))
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(p)
    }

    /// Size of the property block without its length prefix.
    pub fn body_len(&self) -> usize {
        let mut n = 0;
        if self.payload_format_indicator.is_some() {
            n += 2;
        }
        if self.message_expiry_interval.is_some() {
            n += 5;
        }
        if self.topic_alias.is_some() {
            n += 3;
        }
        if let Some(t) = &self.response_topic {
            n += 1 + field_len(t.as_bytes());
        }
        if let Some(d) = &self.correlation_data {
            n += 1 + field_len(d);
        }
        for (k, v) in &self.user_properties {
            n += 1 + field_len(k.as_bytes()) + field_len(v.as_bytes());
        }
        for id in &self.subscription_identifiers {
            n += 1 + varint_len(*id as usize);
        }
        if let Some(c) = &self.content_type {
            n += 1 + field_len(c.as_bytes());
        }
        if self.will_delay_interval.is_some() {
            n += 5;
        }
        n
    }

    /// Size including the length prefix.
    pub fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_varint(out, self.body_len())?;
        if let Some(v) = self.payload_format_indicator {
            out.put_u8(PAYLOAD_FORMAT_INDICATOR);
            out.put_u8(v);
        }
        if let Some(v) = self.message_expiry_interval {
            out.put_u8(MESSAGE_EXPIRY_INTERVAL);
            out.put_u32(v);
        }
        if let Some(v) = self.topic_alias {
            out.put_u8(TOPIC_ALIAS);
            out.put_u16(v);
        }
        if let Some(v) = &self.response_topic {
            out.put_u8(RESPONSE_TOPIC);
            put_str(out, v)?;
        }
        if let Some(v) = &self.correlation_data {
            out.put_u8(CORRELATION_DATA);
            put_binary(out, v)?;
        }
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            put_str(out, k)?;
            put_str(out, v)?;
        }
        for id in &self.subscription_identifiers {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(out, *id as usize)?;
        }
        if let Some(v) = &self.content_type {
            out.put_u8(CONTENT_TYPE);
            put_str(out, v)?;
        }
        if let Some(v) = self.will_delay_interval {
            out.put_u8(WILL_DELAY_INTERVAL);
            out.put_u32(v);
        }
        Ok(())
    }
}

fn is_known(id: u8) -> bool {
    matches!(
        id,
        PAYLOAD_FORMAT_INDICATOR
            | MESSAGE_EXPIRY_INTERVAL
            | CONTENT_TYPE
            | RESPONSE_TOPIC
            | CORRELATION_DATA
            | SUBSCRIPTION_IDENTIFIER
            | SESSION_EXPIRY_INTERVAL
            | ASSIGNED_CLIENT_IDENTIFIER
            | SERVER_KEEP_ALIVE
            | AUTHENTICATION_METHOD
            | AUTHENTICATION_DATA
            | REQUEST_PROBLEM_INFORMATION
            | WILL_DELAY_INTERVAL
            | REQUEST_RESPONSE_INFORMATION
            | RESPONSE_INFORMATION
            | SERVER_REFERENCE
            | REASON_STRING
            | RECEIVE_MAXIMUM
            | TOPIC_ALIAS_MAXIMUM
            | TOPIC_ALIAS
            | MAXIMUM_QOS
            | RETAIN_AVAILABLE
            | USER_PROPERTY
            | MAXIMUM_PACKET_SIZE
            | WILDCARD_SUBSCRIPTION_AVAILABLE
            | SUBSCRIPTION_IDENTIFIER_AVAILABLE
            | SHARED_SUBSCRIPTION_AVAILABLE
    )
}

/// Properties of every packet other than PUBLISH.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    pub session_expiry_interval: Option<u32>,
    pub assigned_client_identifier: Option<MqttStr>,
    pub server_keep_alive: Option<u16>,
    pub authentication_method: Option<MqttStr>,
    pub authentication_data: Option<Bytes>,
    pub request_problem_information: Option<u8>,
    pub request_response_information: Option<u8>,
    pub response_information: Option<MqttStr>,
    pub server_reference: Option<MqttStr>,
    pub reason_string: Option<MqttStr>,
    pub receive_maximum: Option<u16>,
    pub topic_alias_maximum: Option<u16>,
    pub maximum_qos: Option<u8>,
    pub retain_available: Option<u8>,
    pub maximum_packet_size: Option<u32>,
    pub wildcard_subscription_available: Option<u8>,
    pub subscription_identifier_available: Option<u8>,
    pub shared_subscription_available: Option<u8>,
    /// Only in SUBSCRIBE.
    pub subscription_identifier: Option<u32>,
    pub user_properties: Vec<UserProperty>,
}

impl Properties {
    pub fn is_empty(&self) -> bool {
        self == &Properties::default()
    }

    pub fn decode(r: &mut Reader, ctx: PropertyContext) -> Result<Properties, DecodeError> {
        let mut b = block(r)?;
        let mut p = Properties::default();
        while !b.is_empty() {
            let id = b.varint()?;
            let id = u8::try_from(id).map_err(|_| DecodeError::Malformed("unknown property identifier"))?;
            if !allowed(ctx, id) {
                return Err(if is_known(id) {
                    DecodeError::Protocol("property not allowed in this packet")
                } else {
                    DecodeError::Malformed("unknown property identifier")
                });
            }
            match id {
                SESSION_EXPIRY_INTERVAL => set_once(&mut p.session_expiry_interval, b.u32()?)?,
                ASSIGNED_CLIENT_IDENTIFIER => set_once(&mut p.assigned_client_identifier, b.string()?)?,
                SERVER_KEEP_ALIVE => set_once(&mut p.server_keep_alive, b.u16()?)?,
                AUTHENTICATION_METHOD => set_once(&mut p.authentication_method, b.string()?)?,
                AUTHENTICATION_DATA => set_once(&mut p.authentication_data, b.binary()?)?,
                REQUEST_PROBLEM_INFORMATION => {
                    set_once(&mut p.request_problem_information, bool_byte(&mut b)?)?
                }
                REQUEST_RESPONSE_INFORMATION => {
                    set_once(&mut p.request_response_information, bool_byte(&mut b)?)?
                }
                RESPONSE_INFORMATION => set_once(&mut p.response_information, b.string()?)?,
                SERVER_REFERENCE => set_once(&mut p.server_reference, b.string()?)?,
                REASON_STRING => set_once(&mut p.reason_string, b.string()?)?,
                RECEIVE_MAXIMUM => {
                    let v = b.u16()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("receive maximum 0"));
                    }
                    set_once(&mut p.receive_maximum, v)?
                }
                TOPIC_ALIAS_MAXIMUM => set_once(&mut p.topic_alias_maximum, b.u16()?)?,
                MAXIMUM_QOS => {
                    let v = bool_byte(&mut b)?;
                    set_once(&mut p.maximum_qos, v)?
                }
                RETAIN_AVAILABLE => set_once(&mut p.retain_available, bool_byte(&mut b)?)?,
                MAXIMUM_PACKET_SIZE => {
                    let v = b.u32()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("maximum packet size 0"));
                    }
                    set_once(&mut p.maximum_packet_size, v)?
                }
                WILDCARD_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.wildcard_subscription_available, bool_byte(&mut b)?)?
                }
                SUBSCRIPTION_IDENTIFIER_AVAILABLE => {
                    set_once(&mut p.subscription_identifier_available, bool_byte(&mut b)?)?
                }
                SHARED_SUBSCRIPTION_AVAILABLE => {
                    set_once(&mut p.shared_subscription_available, bool_byte(&mut b)?)?
                }
                SUBSCRIPTION_IDENTIFIER => {
                    let v = b.varint()?;
                    if v == 0 {
                        return Err(DecodeError::Protocol("subscription identifier 0"));
                    }
                    set_once(&mut p.subscription_identifier, v)?
                }
                USER_PROPERTY => {
                    let k = b.string()?;
                    let v = b.string()?;
                    p.user_properties.push((k, v))
                }
                _ => return Err(DecodeError::Malformed("unknown property identifier")),
            }
        }
        Ok(p)
    }

    pub fn body_len(&self) -> usize {
        let s = |o: &Option<MqttStr>| o.as_ref().map_or(0, |v| 1 + field_len(v.as_bytes()));
        let mut n = 0;
        n += self.session_expiry_interval.map_or(0, |_| 5);
        n += s(&self.assigned_client_identifier);
        n += self.server_keep_alive.map_or(0, |_| 3);
        n += s(&self.authentication_method);
        n += self.authentication_data.as_ref().map_or(0, |d| 1 + field_len(d));
        n += self.request_problem_information.map_or(0, |_| 2);
        n += self.request_response_information.map_or(0, |_| 2);
        n += s(&self.response_information);
        n += s(&self.server_reference);
        n += s(&self.reason_string);
        n += self.receive_maximum.map_or(0, |_| 3);
        n += self.topic_alias_maximum.map_or(0, |_| 3);
        n += self.maximum_qos.map_or(0, |_| 2);
        n += self.retain_available.map_or(0, |_| 2);
        n += self.maximum_packet_size.map_or(0, |_| 5);
        n += self.wildcard_subscription_available.map_or(0, |_| 2);
        n += self.subscription_identifier_available.map_or(0, |_| 2);
        n += self.shared_subscription_available.map_or(0, |_| 2);
        n += self.subscription_identifier.map_or(0, |v| 1 + varint_len(v as usize));
        for (k, v) in &self.user_properties {
            n += 1 + field_len(k.as_bytes()) + field_len(v.as_bytes());
        }
        n
    }

    pub fn encoded_len(&self) -> usize {
        let n = self.body_len();
        varint_len(n) + n
    }

    pub fn encode(&self, out: &mut BytesMut) -> Result<(), EncodeError> {
        put_varint(out, self.body_len())?;
        let put_u8p = |out: &mut BytesMut, id: u8, v: Option<u8>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u8(v);
            }
        };
        let put_u16p = |out: &mut BytesMut, id: u8, v: Option<u16>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u16(v);
            }
        };
        let put_u32p = |out: &mut BytesMut, id: u8, v: Option<u32>| {
            if let Some(v) = v {
                out.put_u8(id);
                out.put_u32(v);
            }
        };
        let put_strp = |out: &mut BytesMut, id: u8, v: &Option<MqttStr>| -> Result<(), EncodeError> {
            if let Some(v) = v {
                out.put_u8(id);
                put_str(out, v)?;
            }
            Ok(())
        };
        put_u32p(out, SESSION_EXPIRY_INTERVAL, self.session_expiry_interval);
        put_strp(out, ASSIGNED_CLIENT_IDENTIFIER, &self.assigned_client_identifier)?;
        put_u16p(out, SERVER_KEEP_ALIVE, self.server_keep_alive);
        put_strp(out, AUTHENTICATION_METHOD, &self.authentication_method)?;
        if let Some(d) = &self.authentication_data {
            out.put_u8(AUTHENTICATION_DATA);
            put_binary(out, d)?;
        }
        put_u8p(out, REQUEST_PROBLEM_INFORMATION, self.request_problem_information);
        put_u8p(out, REQUEST_RESPONSE_INFORMATION, self.request_response_information);
        put_strp(out, RESPONSE_INFORMATION, &self.response_information)?;
        put_strp(out, SERVER_REFERENCE, &self.server_reference)?;
        put_strp(out, REASON_STRING, &self.reason_string)?;
        put_u16p(out, RECEIVE_MAXIMUM, self.receive_maximum);
        put_u16p(out, TOPIC_ALIAS_MAXIMUM, self.topic_alias_maximum);
        put_u8p(out, MAXIMUM_QOS, self.maximum_qos);
        put_u8p(out, RETAIN_AVAILABLE, self.retain_available);
        put_u32p(out, MAXIMUM_PACKET_SIZE, self.maximum_packet_size);
        put_u8p(out, WILDCARD_SUBSCRIPTION_AVAILABLE, self.wildcard_subscription_available);
        put_u8p(out, SUBSCRIPTION_IDENTIFIER_AVAILABLE, self.subscription_identifier_available);
        put_u8p(out, SHARED_SUBSCRIPTION_AVAILABLE, self.shared_subscription_available);
        if let Some(v) = self.subscription_identifier {
            out.put_u8(SUBSCRIPTION_IDENTIFIER);
            put_varint(out, v as usize)?;
        }
        for (k, v) in &self.user_properties {
            out.put_u8(USER_PROPERTY);
            put_str(out, k)?;
            put_str(out, v)?;
        }
        Ok(())
    }
}
