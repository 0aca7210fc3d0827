//! The replicated vocabulary: records kept in the state machine, the
//! commands that change them, their results, and openraft's type config.
//!
//! Everything here is serialized with bincode (total, no maps with
//! non-string keys in a text format), so a storage error cannot come from
//! an unencodable value.

use std::collections::BTreeMap;
use std::io::Cursor;
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use starling_broker::auth::AclRule;
use starling_broker::ids::{ClientId, Epoch};
use starling_broker::message::{Message, MessageProperties};
use starling_broker::will::WillSpec;
use starling_codec::{MqttStr, QoS, SubscriptionOptions};

pub type NodeId = u64;

/// A member's addresses, stored in the Raft membership.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// gRPC (peer and admin services).
    pub grpc: String,
    pub mqtt: String,
    pub http: String,
}

impl std::fmt::Display for NodeInfo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "grpc={} mqtt={} http={}", self.grpc, self.mqtt, self.http)
    }
}

/// Connection epoch as stored (see `starling_broker::ids::Epoch`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct EpochRec {
    pub node: NodeId,
    pub seq: u64,
}

impl From<Epoch> for EpochRec {
    fn from(e: Epoch) -> Self {
        EpochRec { node: e.node.0, seq: e.seq }
    }
}

impl From<EpochRec> for Epoch {
    fn from(e: EpochRec) -> Self {
        Epoch { node: starling_broker::ids::NodeId(e.node), seq: e.seq }
    }
}

/// 5.0 properties carried with a message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct PropsRecord {
    pub payload_format_indicator: Option<u8>,
    pub content_type: Option<String>,
    pub response_topic: Option<String>,
    pub correlation_data: Option<Bytes>,
    pub user_properties: Vec<(String, String)>,
}

impl PropsRecord {
    pub fn from_props(p: &MessageProperties) -> PropsRecord {
        PropsRecord {
            payload_format_indicator: p.payload_format_indicator,
            content_type: p.content_type.as_ref().map(|s| s.to_string()),
            response_topic: p.response_topic.as_ref().map(|s| s.to_string()),
            correlation_data: p.correlation_data.clone(),
            user_properties: p.user_properties.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        }
    }

    pub fn to_props(&self) -> MessageProperties {
        MessageProperties {
            payload_format_indicator: self.payload_format_indicator,
            content_type: self.content_type.as_deref().map(MqttStr::from),
            response_topic: self.response_topic.as_deref().map(MqttStr::from),
            correlation_data: self.correlation_data.clone(),
            user_properties: self
                .user_properties
                .iter()
                .map(|(k, v)| (MqttStr::from(k.as_str()), MqttStr::from(v.as_str())))
                .collect(),
        }
    }
}

/// A message stored in replicated state (retained messages, wills).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MessageRecord {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: PropsRecord,
    pub publisher: Option<String>,
    /// Wall-clock expiry (leader time, ms since the Unix epoch).
    pub expires_at_ms: Option<u64>,
}

pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl MessageRecord {
    pub fn from_message(m: &Message, now_wall_ms: u64, now: Instant) -> MessageRecord {
        MessageRecord {
            topic: m.topic.to_string(),
            payload: m.payload.clone(),
            qos: m.qos as u8,
            retain: m.retain,
            properties: PropsRecord::from_props(&m.properties),
            publisher: m.publisher.as_ref().map(|c| c.to_string()),
            expires_at_ms: m
                .expires_at
                .map(|t| now_wall_ms + t.saturating_duration_since(now).as_millis() as u64),
        }
    }

    /// The broker's view of the message, expiry mapped to this process's
    /// monotonic clock.
    pub fn to_message(&self, now_wall_ms: u64, now: Instant) -> Arc<Message> {
        let mut m = Message::new(
            MqttStr::from(self.topic.as_str()),
            self.payload.clone(),
            QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            self.retain,
        );
        m.properties = self.properties.to_props();
        m.publisher = self.publisher.as_deref().map(ClientId::new);
        m.expires_at = self
            .expires_at_ms
            .map(|at| now + std::time::Duration::from_millis(at.saturating_sub(now_wall_ms)));
        Arc::new(m)
    }
}

/// A will kept with its session so it survives the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WillRecord {
    pub topic: String,
    pub payload: Bytes,
    pub qos: u8,
    pub retain: bool,
    pub properties: PropsRecord,
    pub message_expiry_interval: Option<u32>,
    pub delay: u32,
}

impl WillRecord {
    pub fn from_spec(w: &WillSpec) -> WillRecord {
        WillRecord {
            topic: w.topic.to_string(),
            payload: w.payload.clone(),
            qos: w.qos as u8,
            retain: w.retain,
            properties: PropsRecord::from_props(&w.properties),
            message_expiry_interval: w.message_expiry_interval,
            delay: w.delay,
        }
    }

    /// The will as published at leader time `time_ms` by `client`.
    pub fn to_message_record(&self, client: &str, time_ms: u64) -> MessageRecord {
        MessageRecord {
            topic: self.topic.clone(),
            payload: self.payload.clone(),
            qos: self.qos,
            retain: self.retain,
            properties: self.properties.clone(),
            publisher: Some(client.to_string()),
            expires_at_ms: self.message_expiry_interval.map(|s| time_ms + u64::from(s) * 1000),
        }
    }
}

/// Options of one subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct SubRecord {
    pub qos: u8,
    pub no_local: bool,
    pub retain_as_published: bool,
    pub retain_handling: u8,
    pub subscription_id: Option<u32>,
}

impl SubRecord {
    pub fn new(o: &SubscriptionOptions, subscription_id: Option<u32>) -> SubRecord {
        SubRecord {
            qos: o.qos as u8,
            no_local: o.no_local,
            retain_as_published: o.retain_as_published,
            retain_handling: o.retain_handling,
            subscription_id,
        }
    }

    pub fn options(&self) -> SubscriptionOptions {
        SubscriptionOptions {
            qos: QoS::from_u8(self.qos).unwrap_or(QoS::AtMostOnce),
            no_local: self.no_local,
            retain_as_published: self.retain_as_published,
            retain_handling: self.retain_handling,
        }
    }
}

/// One client id's session as every node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The node holding the session's runtime; `None` once that node died
    /// (the session waits for its client, or for expiry).
    pub owner: Option<NodeId>,
    /// The connection that last claimed the session.
    pub epoch: EpochRec,
    pub connected: bool,
    /// Seconds after disconnect before the session ends (u32::MAX never).
    pub expiry_interval: u32,
    pub disconnected_at_ms: Option<u64>,
    /// Boxed: most sessions have no will, and records are kept for every
    /// session in the cluster.
    pub will: Option<Box<WillRecord>>,
    /// A delayed will waiting to be published (leader time).
    pub will_due_ms: Option<u64>,
    pub subscriptions: BTreeMap<String, SubRecord>,
}

/// A replicated change. Each carries the connection epoch it acts for, so
/// a connection that was taken over cannot change the new owner's session.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Claim {
        client: String,
        epoch: EpochRec,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<Box<WillRecord>>,
    },
    Release {
        client: String,
        epoch: EpochRec,
        expiry_interval: u32,
    },
    /// Ends a disconnected session whose expiry passed; `epoch: None` is
    /// the leader's sweep of sessions no node owns.
    Expire {
        client: String,
        epoch: Option<EpochRec>,
    },
    Subscribe {
        client: String,
        epoch: EpochRec,
        subs: Vec<(String, SubRecord)>,
    },
    Unsubscribe {
        client: String,
        epoch: EpochRec,
        filters: Vec<String>,
    },
    SetRetained {
        topic: String,
        message: Option<MessageRecord>,
    },
    /// Every connection of `node` is gone (it died, or restarted). Its
    /// persistent sessions move, disconnected, to `adopter` (the leader
    /// that declared it down, or the node itself after a restart), which
    /// queues their messages until their clients come back.
    NodeReset {
        node: NodeId,
        adopter: Option<NodeId>,
    },
    SetLiveness {
        node: NodeId,
        alive: bool,
    },
    /// A delayed will of an unowned session is due.
    PublishWill {
        client: String,
    },
    /// Adds or replaces a user (argon2id hash).
    UserSet {
        name: String,
        hash: String,
    },
    UserRemove {
        name: String,
    },
    /// Inserts an ACL rule at `position` (end when past it).
    AclAdd {
        rule: AclRule,
        position: Option<u32>,
    },
    /// Removes the rule at `index` (0-based).
    AclRemove {
        index: u32,
    },
}

/// One Raft log entry: commands batched by the leader, stamped with the
/// leader's wall clock so `apply` never reads a clock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub time_ms: u64,
    pub commands: Vec<Command>,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} at {}", self.commands.len(), self.time_ms)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Claimed {
        session_present: bool,
        previous_owner: Option<NodeId>,
    },
    Released {
        ended: bool,
    },
    Expired(bool),
    Subscribed(Vec<bool>),
    Unsubscribed(Vec<bool>),
    /// The command named a connection that no longer owns the session.
    NotOwner,
    Done,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult(pub Vec<CommandResult>);

pub type SnapshotData = Cursor<Vec<u8>>;

openraft::declare_raft_types!(
    /// Starling's openraft type configuration.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = NodeInfo,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = SnapshotData,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type StoredMembership = openraft::StoredMembership<NodeId, NodeInfo>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, NodeInfo>;
pub type Entry = openraft::Entry<TypeConfig>;
