//! The records the replicated state keeps: a session as every node knows
//! it, a subscription's options, and a stored message (retained, or a will
//! being published).
//!
//! Times are replicated time: milliseconds since the Unix epoch as stamped
//! by the Raft leader on the entry that made the change (the in-memory
//! port stamps its own clock). A node never compares them with its own
//! wall clock; it converts them to its monotonic clock relative to the
//! replicated time of the entry it is applying (`StoredMessage::to_message`).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_codec::{MqttStr, QoS, SubscriptionOptions};

use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::message::{Message, MessageProperties};
use crate::topic::TopicFilter;
use crate::will::WillSpec;

/// One subscription of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Subscription {
    pub options: SubscriptionOptions,
    /// 5.0 subscription identifier.
    pub id: Option<u32>,
}

/// One client id's session as every node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The node holding the session's runtime (its queue); `None` once
    /// that node is gone and no node adopted it.
    pub owner: Option<NodeId>,
    /// The connection that last claimed the session.
    pub epoch: Epoch,
    /// This life of the session (a clean start begins another).
    pub incarnation: Incarnation,
    pub connected: bool,
    /// Seconds after disconnect before the session ends (`u32::MAX`: never).
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    /// While connected: the connection's will, kept here so that it is
    /// published even if the node dies. While disconnected: a delayed
    /// will waiting for `will_due_ms` (or for the session to end). Boxed:
    /// most sessions have none, and every node keeps every record.
    pub will: Option<Box<WillSpec>>,
    pub will_due_ms: Option<u64>,
    pub subscriptions: BTreeMap<TopicFilter, Subscription>,
}

impl SessionRecord {
    /// When the session expires, if it is disconnected and can.
    pub fn expires_at_ms(&self) -> Option<u64> {
        if self.connected || self.expiry_interval == u32::MAX {
            return None;
        }
        self.disconnected_at_ms.map(|at| at + u64::from(self.expiry_interval) * 1000)
    }

    /// The earliest time-driven change due for this session: a delayed
    /// will or the session's expiry.
    pub fn next_due_ms(&self) -> Option<u64> {
        match (self.will_due_ms.filter(|_| !self.connected), self.expires_at_ms()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn filters(&self) -> Vec<TopicFilter> {
        self.subscriptions.keys().cloned().collect()
    }
}

/// An application message kept in replicated state: a retained message,
/// or a will on its way to every node's subscribers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StoredMessage {
    pub topic: MqttStr,
    pub payload: Bytes,
    pub qos: QoS,
    pub retain: bool,
    pub properties: MessageProperties,
    pub publisher: Option<ClientId>,
    /// When it expires, in replicated time.
    pub expires_at_ms: Option<u64>,
}

impl StoredMessage {
    /// The body of `m`, without its expiry (which the caller stamps in
    /// replicated time).
    pub fn from_message(m: &Message) -> StoredMessage {
        StoredMessage {
            topic: m.topic.clone(),
            payload: m.payload.clone(),
            qos: m.qos,
            retain: m.retain,
            properties: m.properties.clone(),
            publisher: m.publisher.clone(),
            expires_at_ms: None,
        }
    }

    /// A will as published by `client` at replicated time `time_ms`.
    pub fn from_will(w: &WillSpec, client: &ClientId, time_ms: u64) -> StoredMessage {
        StoredMessage {
            topic: w.topic.clone(),
            payload: w.payload.clone(),
            qos: w.qos,
            retain: w.retain,
            properties: w.properties.clone(),
            publisher: Some(client.clone()),
            expires_at_ms: w.message_expiry_interval.map(|s| time_ms + u64::from(s) * 1000),
        }
    }

    /// The broker's message, its expiry mapped onto this process's
    /// monotonic clock: `time_ms` (replicated) corresponds to `now`.
    pub fn to_message(&self, time_ms: u64, now: Instant) -> Arc<Message> {
        let mut m = Message::new(self.topic.clone(), self.payload.clone(), self.qos, self.retain);
        m.properties = self.properties.clone();
        m.publisher = self.publisher.clone();
        m.expires_at = self.expires_at_ms.map(|at| now + Duration::from_millis(at.saturating_sub(time_ms)));
        Arc::new(m)
    }
}

/// Milliseconds until `m` expires as of `now`, for a command that stores
/// it (the applier stamps the expiry in replicated time).
pub fn expires_in_ms(m: &Message, now: Instant) -> Option<u64> {
    m.expires_at.map(|t| t.saturating_duration_since(now).as_millis() as u64)
}
