//! Errors raised while decoding or encoding packets.
//!
//! Every decode error maps to the MQTT 5.0 reason code the server sends in
//! its DISCONNECT (or CONNACK) before closing, so the connection layer never
//! has to guess which code applies.

use crate::reason::ReasonCode;

/// Why a byte sequence is not a valid MQTT packet.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The bytes violate the packet grammar (length, reserved bits, bad UTF-8 ...).
    #[error("malformed packet: {0}")]
    Malformed(&'static str),
    /// Grammatically valid but forbidden by the protocol rules.
    #[error("protocol error: {0}")]
    Protocol(&'static str),
    /// The packet is larger than the receiver's maximum packet size.
    #[error("packet of {size} bytes exceeds the maximum of {max}")]
    TooLarge { size: usize, max: usize },
    /// A topic name that is not valid (wildcards in a PUBLISH topic ...).
    #[error("invalid topic name: {0}")]
    TopicName(&'static str),
    /// CONNECT names a protocol or level this server does not speak.
    #[error("unsupported protocol name or level {0}")]
    UnsupportedProtocol(u8),
}

impl DecodeError {
    /// The MQTT 5.0 reason code for a DISCONNECT caused by this error.
    pub fn reason_code(&self) -> ReasonCode {
        match self {
            DecodeError::Malformed(_) => ReasonCode::MALFORMED_PACKET,
            DecodeError::Protocol(_) => ReasonCode::PROTOCOL_ERROR,
            DecodeError::TooLarge { .. } => ReasonCode::PACKET_TOO_LARGE,
            DecodeError::TopicName(_) => ReasonCode::TOPIC_NAME_INVALID,
            DecodeError::UnsupportedProtocol(_) => ReasonCode::UNSUPPORTED_PROTOCOL_VERSION,
        }
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// The packet's remaining length does not fit the 4-byte variable integer.
    #[error("packet too large to encode ({0} bytes)")]
    TooLarge(usize),
    /// A string or binary field is longer than 65535 bytes.
    #[error("field too long to encode ({0} bytes)")]
    FieldTooLong(usize),
}
