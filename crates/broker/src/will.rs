//! Will messages: what a CONNECT asked to be published if the connection
//! ends abnormally, and the 5.0 will delay.
//!
//! A will is published when the connection closes without a DISCONNECT
//! (socket error, EOF, keep-alive timeout, protocol error, session taken
//! over) or with DISCONNECT reason 0x04. It is discarded on a normal
//! DISCONNECT and on a graceful server shutdown (the client is not gone;
//! it reconnects to another node). The will is kept with the replicated
//! session record; publishing it, waiting for its delay, cancelling it on
//! resumption and publishing it when the session ends first are rules of
//! the replicated state (`replicated/state.rs`), so a will goes out even
//! when its node dies.

use bytes::Bytes;
use starling_codec::{MqttStr, QoS, Will};

use crate::message::MessageProperties;

/// The will of one connection, as accepted from CONNECT.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct WillSpec {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: MessageProperties,
    pub message_expiry_interval: Option<u32>,
    /// 5.0 will delay interval in seconds (0 for 3.x).
    pub delay: u32,
}

impl WillSpec {
    pub fn from_connect(w: &Will) -> WillSpec {
        WillSpec {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: MessageProperties::from_publish(&w.properties),
            message_expiry_interval: w.properties.message_expiry_interval,
            delay: w.properties.will_delay_interval.unwrap_or(0),
        }
    }
}
