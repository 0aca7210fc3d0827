//! An application message as the broker holds it: one `Arc<Message>` is
//! shared by every subscriber it is delivered to, payload included.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{MqttStr, PublishProperties, QoS, UserProperty};

use crate::ids::ClientId;

/// The 5.0 properties that travel with a message from publisher to
/// subscriber (topic alias and subscription identifiers are per hop and
/// are not kept here).
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct MessageProperties {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<MqttStr>,
    pub response_topic: Option<MqttStr>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<UserProperty>,
}

impl MessageProperties {
    pub fn from_publish(p: &PublishProperties) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.clone(),
            response_topic: p.response_topic.clone(),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.clone(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.payload_format_indicator.is_none()
            && self.content_type.is_none()
            && self.response_topic.is_none()
            && self.correlation_data.is_none()
            && self.user_properties.is_empty()
    }
}

#[derive(Debug, Clone)]
pub struct Message {
    pub topic: MqttStr,
    pub payload: Bytes,
    /// QoS the publisher sent it with (the ceiling for every delivery).
    pub qos: QoS,
    /// RETAIN flag as published.
    pub retain: bool,
    pub properties: MessageProperties,
    /// Client that published it, for no-local; `None` for wills of dead
    /// nodes and `$SYS` messages.
    pub publisher: Option<ClientId>,
    /// When the message expires (5.0 message expiry interval).
    pub expires_at: Option<Instant>,
}

impl Message {
    pub fn new(topic: MqttStr, payload: Bytes, qos: QoS, retain: bool) -> Message {
        Message {
            topic,
            payload,
            qos,
            retain,
            properties: MessageProperties::default(),
            publisher: None,
            expires_at: None,
        }
    }

    /// Sets the expiry from a message expiry interval in seconds.
    pub fn with_expiry_interval(mut self, secs: Option<u32>, now: Instant) -> Message {
        self.expires_at = secs.map(|s| now + Duration::from_secs(u64::from(s)));
        self
    }

    pub fn is_expired(&self, now: Instant) -> bool {
        self.expires_at.is_some_and(|t| t <= now)
    }

    /// Seconds left before expiry, rounded up, as the outgoing 5.0
    /// message expiry interval; `None` if the message never expires.
    pub fn remaining_expiry(&self, now: Instant) -> Option<u32> {
        self.expires_at.map(|t| {
            let left = t.saturating_duration_since(now);
            let secs = left.as_secs() + u64::from(left.subsec_nanos() > 0);
            u32::try_from(secs).unwrap_or(u32::MAX).max(1)
        })
    }
}

/// One message on its way to one session: the shared message plus what
/// this subscriber's subscriptions decided.
#[derive(Debug, Clone)]
pub struct Delivery {
    pub message: Arc<Message>,
    /// min(published QoS, granted QoS).
    pub qos: QoS,
    /// RETAIN flag to send (retained-on-subscribe or retain-as-published).
    pub retain: bool,
    /// 5.0 subscription identifiers of the matching subscriptions.
    pub subscription_ids: Vec<u32>,
    /// Set when the message is in the session's durable queue (replicated):
    /// it travels with the packet identifier its sequence number gives,
    /// and is trimmed from the queue once acknowledged.
    pub durable: Option<DurableRef>,
}

/// A delivery's place in its session's durable queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DurableRef {
    pub seq: u64,
    /// It may have been sent before (loaded by a node taking the session
    /// over): it goes out with DUP set.
    pub maybe_sent: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_counts_down_and_rounds_up() {
        let now = Instant::now();
        let m = Message::new("t".into(), Bytes::new(), QoS::AtMostOnce, false)
            .with_expiry_interval(Some(10), now);
        assert_eq!(m.remaining_expiry(now), Some(10));
        assert_eq!(m.remaining_expiry(now + Duration::from_millis(2500)), Some(8));
        assert!(!m.is_expired(now + Duration::from_secs(9)));
        assert!(m.is_expired(now + Duration::from_secs(10)));
        let m = Message::new("t".into(), Bytes::new(), QoS::AtMostOnce, false);
        assert_eq!(m.remaining_expiry(now), None);
        assert!(!m.is_expired(now + Duration::from_secs(1_000_000)));
    }
}
