//! SUBSCRIBE, SUBACK, UNSUBSCRIBE and UNSUBACK.

use bytes::{BufMut, BytesMut};

use crate::error::{DecodeError, EncodeError};
use crate::properties::{Properties, PropertyContext};
use crate::reason::ReasonCode;
use crate::types::{MqttStr, ProtocolVersion, QoS};
use crate::wire::{field_len, put_fixed_header, put_str, Reader};

/// The options byte of one SUBSCRIBE entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Hash)]
pub struct SubscriptionOptions {
    pub qos: QoS,
    /// 5.0: do not send the subscriber its own publications.
    pub no_local: bool,
    /// 5.0: keep the RETAIN flag as the publisher set it.
    pub retain_as_published: bool,
    /// 5.0: 0 send retained on subscribe, 1 only for a new subscription, 2 never.
    pub retain_handling: u8,
}

impl SubscriptionOptions {
    pub fn new(qos: QoS) -> SubscriptionOptions {
        SubscriptionOptions { qos, ..Default::default() }
    }

    pub(crate) fn decode(b: u8, version: ProtocolVersion) -> Result<SubscriptionOptions, DecodeError> {
        let qos = QoS::from_u8(b & 0x03).ok_or(DecodeError::Malformed("subscription QoS 3"))?;
        if !version.is_v5() {
            if b & 0xFC != 0 {
                return Err(DecodeError::Malformed("reserved subscription option bits set"));
            }
            return Ok(SubscriptionOptions::new(qos));
        }
        if b & 0xC0 != 0 {
            return Err(DecodeError::Malformed("reserved subscription option bits set"));
        }
        let retain_handling = (b >> 4) & 0x03;
        if retain_handling == 3 {
            return Err(DecodeError::Protocol("retain handling 3"));
        }
        Ok(SubscriptionOptions {
            qos,
            no_local: b & 0x04 != 0,
            retain_as_published: b & 0x08 != 0,
            retain_handling,
        })
    }

    pub fn to_byte(self, version: ProtocolVersion) -> u8 {
        let mut b = self.qos.as_u8();
        if version.is_v5() {
            if self.no_local {
                b |= 0x04;
            }
            if self.retain_as_published {
                b |= 0x08;
            }
            b |= (self.retain_handling & 0x03) << 4;
        }
        b
    }
}

fn packet_id(r: &mut Reader) -> Result<u16, DecodeError> {
    let id = r.u16()?;
    if id == 0 {
        return Err(DecodeError::Protocol("packet identifier 0"));
    }
    Ok(id)
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<(MqttStr, SubscriptionOptions)>,
}

impl Subscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Subscribe, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let properties = if version.is_v5() {
            Properties::decode(&mut r, PropertyContext::Subscribe)?
        } else {
            Properties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            let f = r.string()?;
            let o = SubscriptionOptions::decode(r.u8()?, version)?;
            filters.push((f, o));
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("SUBSCRIBE without topic filters"));
        }
        Ok(Subscribe { packet_id, properties, filters })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.encoded_len();
        }
        for (f, _) in &self.filters {
            len += field_len(f.as_bytes()) + 1;
        }
        put_fixed_header(out, 0x82, len)?;
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(out)?;
        }
        for (f, o) in &self.filters {
            put_str(out, f)?;
            out.put_u8(o.to_byte(version));
        }
        Ok(())
    }
}

/// SUBACK; for 3.x the codes are 0, 1, 2 or 0x80.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reason_codes: Vec<ReasonCode>,
}

impl SubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<SubAck, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let properties = if version.is_v5() {
            Properties::decode(&mut r, PropertyContext::SubAck)?
        } else {
            Properties::default()
        };
        let mut reason_codes = Vec::new();
        while !r.is_empty() {
            let code = r.u8()?;
            // 3.1.1 §3.9.3: 0x00-0x02 and 0x80 only; 5.0 §3.9.3: the
            // granted QoS or one of its failure reasons.
            let valid = match version {
                ProtocolVersion::V5 => {
                    matches!(code, 0..=2 | 0x80 | 0x83 | 0x87 | 0x8F | 0x91 | 0x97 | 0x9E | 0xA1 | 0xA2)
                }
                _ => matches!(code, 0..=2 | 0x80),
            };
            if !valid {
                return Err(DecodeError::Malformed("reserved SUBACK return code"));
            }
            reason_codes.push(ReasonCode(code));
        }
        Ok(SubAck { packet_id, properties, reason_codes })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut len = 2 + self.reason_codes.len();
        if version.is_v5() {
            len += self.properties.encoded_len();
        }
        put_fixed_header(out, 0x90, len)?;
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(out)?;
        }
        for c in &self.reason_codes {
            let b = if version.is_v5() || !c.is_error() { c.0 } else { 0x80 };
            out.put_u8(b);
        }
        Ok(())
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    pub packet_id: u16,
    pub properties: Properties,
    pub filters: Vec<MqttStr>,
}

impl Unsubscribe {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<Unsubscribe, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let properties = if version.is_v5() {
            Properties::decode(&mut r, PropertyContext::Unsubscribe)?
        } else {
            Properties::default()
        };
        let mut filters = Vec::new();
        while !r.is_empty() {
            filters.push(r.string()?);
        }
        if filters.is_empty() {
            return Err(DecodeError::Protocol("UNSUBSCRIBE without topic filters"));
        }
        Ok(Unsubscribe { packet_id, properties, filters })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        let mut len = 2;
        if version.is_v5() {
            len += self.properties.encoded_len();
        }
        for f in &self.filters {
            len += field_len(f.as_bytes());
        }
        put_fixed_header(out, 0xA2, len)?;
        out.put_u16(self.packet_id);
        if version.is_v5() {
            self.properties.encode(out)?;
        }
        for f in &self.filters {
            put_str(out, f)?;
        }
        Ok(())
    }
}

/// UNSUBACK; reason codes exist only in 5.0.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnsubAck {
    pub packet_id: u16,
    pub properties: Properties,
    pub reason_codes: Vec<ReasonCode>,
}

impl UnsubAck {
    pub(crate) fn decode(mut r: Reader, version: ProtocolVersion) -> Result<UnsubAck, DecodeError> {
        let packet_id = packet_id(&mut r)?;
        let mut properties = Properties::default();
        let mut reason_codes = Vec::new();
        if version.is_v5() {
            properties = Properties::decode(&mut r, PropertyContext::UnsubAck)?;
            while !r.is_empty() {
                reason_codes.push(ReasonCode(r.u8()?));
            }
        }
        if !r.is_empty() {
            return Err(DecodeError::Malformed("bytes after UNSUBACK"));
        }
        Ok(UnsubAck { packet_id, properties, reason_codes })
    }

    pub(crate) fn encode(&self, version: ProtocolVersion, out: &mut BytesMut) -> Result<(), EncodeError> {
        if !version.is_v5() {
            put_fixed_header(out, 0xB0, 2)?;
            out.put_u16(self.packet_id);
            return Ok(());
        }
        let len = 2 + self.properties.encoded_len() + self.reason_codes.len();
        put_fixed_header(out, 0xB0, len)?;
        out.put_u16(self.packet_id);
        self.properties.encode(out)?;
        for c in &self.reason_codes {
            out.put_u8(c.0);
        }
        Ok(())
    }
}
