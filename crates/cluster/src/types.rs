//! openraft's type configuration for Starling: a log entry is a `Batch` of
//! the broker's replicated commands, stamped with the leader's clock, and
//! a member carries its addresses (`NodeInfo`).
//!
//! Entries, snapshots and forwarded writes are encoded with bincode:
//! total (no maps with non-string keys in a text format), so a storage
//! error cannot come from an unencodable value; decoding validates ids,
//! QoS values and topic filters, so a corrupt entry is an error, never a
//! coerced value.

use std::io::Cursor;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_broker::replicated::{Command, CommandResult};

pub use starling_broker::ids::NodeId;

/// The node's Raft groups. Both have the same members (the queue group
/// follows the main group's membership, `queue_group.rs`); the durable
/// queues have a group of their own so that their rounds never hold up a
/// CONNECT or a SUBSCRIBE.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Group {
    /// Sessions, subscriptions, retained messages, liveness, users, ACL
    /// rules; its membership is the cluster's.
    Main,
    /// The durable queues of persistent sessions.
    Queues,
}

impl Group {
    /// The number on the wire (peer.proto, `group`).
    pub fn wire(self) -> u32 {
        match self {
            Group::Main => 0,
            Group::Queues => 1,
        }
    }

    pub fn from_wire(n: u32) -> Option<Group> {
        match n {
            0 => Some(Group::Main),
            1 => Some(Group::Queues),
            _ => None,
        }
    }
}

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

/// One Raft log entry: commands batched by the leader, stamped with the
/// leader's wall clock so `apply` never reads a clock.
///
/// The commands are shared: openraft copies an entry for every follower it
/// replicates to and for the state machine, and the leader keeps recent
/// entries in memory; a copy is a reference count, not the messages again.
/// (Encoded exactly as the plain list: the log format does not change.)
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub time_ms: u64,
    pub commands: Arc<Vec<Command>>,
}

impl std::fmt::Display for Batch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "batch of {} at {}", self.commands.len(), self.time_ms)
    }
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
