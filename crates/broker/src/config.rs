//! The broker's MQTT settings (the `[mqtt]` table of the server config).

use serde::{Deserialize, Serialize};

use crate::topic::TopicLimits;

/// MQTT behaviour and per-connection limits. Every field has a default;
/// `validate` names the offending key.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct MqttConfig {
    /// Largest packet accepted from or sent to a client, in bytes. Larger
    /// inbound packets close the connection (5.0: DISCONNECT 0x95).
    pub max_packet_size: u32,
    /// Outbound QoS 1/2 messages unacknowledged per session (lowered to
    /// the client's 5.0 Receive Maximum).
    pub max_inflight: u16,
    /// Inbound QoS 2 exchanges a client may leave open (our 5.0 Receive
    /// Maximum). Exceeding it closes the connection (0x93).
    pub receive_maximum: u16,
    /// Messages queued per session beyond the inflight window. When full,
    /// new messages for that session are dropped and counted, whatever
    /// their QoS (`starling_messages_dropped_total{reason="queue_full"}`).
    pub max_queued_messages: usize,
    /// Queue QoS 0 messages for disconnected persistent sessions.
    pub queue_qos0_offline: bool,
    /// Bytes all durable queues together may hold (QoS 1/2 messages of
    /// persistent sessions, replicated on every node; the same figure is
    /// each node's memory and snapshot share for them). A message that
    /// would pass it is refused: MQTT 5 publishers get 0x97, 3.x messages
    /// are dropped and counted (`starling_durable_refused_total`).
    pub max_durable_bytes: u64,
    /// Topic aliases a 5.0 client may use towards us.
    pub topic_alias_maximum: u16,
    /// Highest keep alive accepted from 5.0 clients, in seconds; a larger
    /// (or zero) request is replaced by Server Keep Alive. 0 = no limit.
    pub max_keepalive: u16,
    /// Seconds a new socket has to send CONNECT before it is closed.
    pub connect_timeout_secs: u64,
    /// Upper bound on session expiry, in seconds; also the expiry of 3.x
    /// persistent sessions. 4294967295 = never expire.
    pub max_session_expiry_secs: u32,
    /// Accept retained messages (5.0 Retain Available).
    pub retain_available: bool,
    /// Highest QoS granted and accepted (5.0 Maximum QoS).
    pub max_qos: u8,
    /// Seconds between `$SYS/broker/...` updates; 0 disables them.
    pub sys_interval_secs: u64,
    /// Longest topic name or filter, in bytes.
    pub max_topic_length: usize,
    /// Most levels in a topic name or filter.
    pub max_topic_levels: usize,
    /// Most subscriptions one client may hold (0 = unlimited). Filters
    /// over the limit fail in the SUBACK (5.0 0x97, 3.x 0x80).
    pub max_subscriptions_per_client: usize,
    /// PUBLISH packets per second one connection may send (0 = no
    /// limit). Above it the broker stops reading from the connection until
    /// it is within the limit again (TCP back-pressure).
    pub publish_rate: u32,
    /// PUBLISH payload bytes per second one connection may send (0 = no
    /// limit); same back-pressure.
    pub publish_bytes_rate: u64,
    /// Prefix of client identifiers the server assigns.
    pub assigned_client_id_prefix: String,
}

impl Default for MqttConfig {
    fn default() -> Self {
        MqttConfig {
            max_packet_size: 1024 * 1024,
            max_inflight: 32,
            receive_maximum: 128,
            max_queued_messages: 1000,
            queue_qos0_offline: false,
            max_durable_bytes: 256 * 1024 * 1024,
            topic_alias_maximum: 64,
            max_keepalive: 0,
            connect_timeout_secs: 10,
            max_session_expiry_secs: u32::MAX,
            retain_available: true,
            max_qos: 2,
            sys_interval_secs: 10,
            max_topic_length: 1024,
            max_topic_levels: 32,
            max_subscriptions_per_client: 0,
            publish_rate: 0,
            publish_bytes_rate: 0,
            assigned_client_id_prefix: "auto-".into(),
        }
    }
}

/// A configuration value that is out of range; names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid value for `{key}`: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

impl ConfigError {
    pub fn new(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
        ConfigError { key: key.into(), reason: reason.into() }
    }
}

impl MqttConfig {
    pub fn validate(&self, prefix: &str) -> Result<(), ConfigError> {
        let key = |k: &str| format!("{prefix}{k}");
        if self.max_packet_size < 64 || self.max_packet_size > 268_435_460 {
            return Err(ConfigError::new(key("max_packet_size"), "must be between 64 and 268435460"));
        }
        if self.max_inflight == 0 {
            return Err(ConfigError::new(key("max_inflight"), "must be at least 1"));
        }
        if self.receive_maximum == 0 {
            return Err(ConfigError::new(key("receive_maximum"), "must be at least 1"));
        }
        if self.max_queued_messages == 0 {
            return Err(ConfigError::new(key("max_queued_messages"), "must be at least 1"));
        }
        if self.max_durable_bytes < 1024 * 1024 {
            return Err(ConfigError::new(key("max_durable_bytes"), "must be at least 1048576 (1 MiB)"));
        }
        if self.connect_timeout_secs == 0 {
            return Err(ConfigError::new(key("connect_timeout_secs"), "must be at least 1"));
        }
        if self.max_qos > 2 {
            return Err(ConfigError::new(key("max_qos"), "must be 0, 1 or 2"));
        }
        if self.max_topic_length == 0 || self.max_topic_length > 65_535 {
            return Err(ConfigError::new(key("max_topic_length"), "must be between 1 and 65535"));
        }
        if self.max_topic_levels == 0 {
            return Err(ConfigError::new(key("max_topic_levels"), "must be at least 1"));
        }
        if self.assigned_client_id_prefix.len() > 32 || self.assigned_client_id_prefix.contains('\0') {
            return Err(ConfigError::new(
                key("assigned_client_id_prefix"),
                "must be at most 32 bytes, no NUL",
            ));
        }
        Ok(())
    }

    pub fn topic_limits(&self) -> TopicLimits {
        TopicLimits { max_len: self.max_topic_length, max_levels: self.max_topic_levels }
    }
}
