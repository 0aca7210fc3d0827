//! Serde for the value types the broker keeps in replicated state.
//!
//! Deserializing validates exactly as the wire decoder does: a QoS of 3,
//! a string with U+0000 or subscription options with reserved bits are
//! refused as corrupt input, never coerced into something valid.

use bytes::Bytes;
use serde::de::{Error as _, Unexpected};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::subscribe::SubscriptionOptions;
use crate::types::{MqttStr, ProtocolVersion, QoS};

impl Serialize for QoS {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.as_u8())
    }
}

impl<'de> Deserialize<'de> for QoS {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<QoS, D::Error> {
        let v = u8::deserialize(d)?;
        QoS::from_u8(v)
            .ok_or_else(|| D::Error::invalid_value(Unexpected::Unsigned(v.into()), &"QoS 0, 1 or 2"))
    }
}

impl Serialize for MqttStr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl<'de> Deserialize<'de> for MqttStr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MqttStr, D::Error> {
        let s = String::deserialize(d)?;
        MqttStr::from_bytes(Bytes::from(s.into_bytes())).map_err(D::Error::custom)
    }
}

/// Stored as the 5.0 options byte.
impl Serialize for SubscriptionOptions {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u8(self.to_byte(ProtocolVersion::V5))
    }
}

impl<'de> Deserialize<'de> for SubscriptionOptions {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<SubscriptionOptions, D::Error> {
        let b = u8::deserialize(d)?;
        SubscriptionOptions::decode(b, ProtocolVersion::V5).map_err(D::Error::custom)
    }
}
