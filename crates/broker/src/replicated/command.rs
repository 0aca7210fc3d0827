//! The replicated commands and their results.
//!
//! A command is what a node asks the cluster to agree on; `apply`
//! (state.rs) turns it into a result and a list of `StateChange`s. Every
//! command that acts for a connection carries that connection's epoch, so
//! a connection that was taken over cannot change the new owner's session.

use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_codec::MqttStr;

use crate::auth::AclRule;
use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::replicated::queue::{DurableTarget, QueueLimits};
use crate::replicated::records::{StoredMessage, Subscription};
use crate::topic::TopicFilter;
use crate::will::WillSpec;

/// What happens to the connection's will when it ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum WillOnRelease {
    /// Normal DISCONNECT, server shutdown, drain: the will is discarded.
    Discard,
    /// The client is gone (socket lost, keep-alive, protocol error,
    /// DISCONNECT 0x04): publish it now, or after its delay.
    Publish,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// CONNECT: connection `epoch` takes `client`. A connection of the
    /// client that is still live elsewhere is closed (session taken over).
    Claim {
        client: ClientId,
        epoch: Epoch,
        /// Discard any existing session (3.x clean session, 5.0 clean start).
        clean_start: bool,
        /// Seconds the session outlives the connection (`u32::MAX`: never).
        expiry_interval: u32,
        will: Option<Box<WillSpec>>,
    },
    /// Connection `epoch` ended. Expiry 0 ends the session; otherwise it
    /// stays, disconnected, until it expires or is resumed.
    Release {
        client: ClientId,
        epoch: Epoch,
        expiry_interval: u32,
        will: WillOnRelease,
    },
    Subscribe {
        client: ClientId,
        epoch: Epoch,
        subs: Vec<(TopicFilter, Subscription)>,
    },
    Unsubscribe {
        client: ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
    },
    /// Sets (`Some`) or clears the retained message of `topic`. The
    /// message's expiry is `expires_in_ms` after the entry's time.
    SetRetained {
        topic: MqttStr,
        message: Option<StoredMessage>,
        expires_in_ms: Option<u64>,
    },
    /// Every connection of `node` is gone (it died, restarted, or was
    /// removed). Wills of its connected clients go out (or wait for their
    /// delay), its clean sessions end, and its persistent sessions move,
    /// disconnected, to `adopter`, which queues their messages until their
    /// clients come back.
    NodeReset {
        node: NodeId,
        adopter: Option<NodeId>,
    },
    /// The leader's liveness verdict on a node.
    SetLiveness {
        node: NodeId,
        alive: bool,
    },
    /// Publishes the delayed wills and ends the sessions whose time has
    /// come, as of the entry's time. Proposed by whoever keeps time (the
    /// Raft leader, the in-memory port's clock) when `next_due_ms` passed.
    Tick,
    /// A QoS 1/2 message for persistent sessions, stored in their durable
    /// queues before its publisher is acknowledged. Its expiry is
    /// `expires_in_ms` after the entry's time.
    Enqueue {
        /// Shared with the queues it is stored in (and with the copies of
        /// the command a leader makes); encoded as the message itself.
        message: Arc<StoredMessage>,
        expires_in_ms: Option<u64>,
        targets: Vec<DurableTarget>,
        limits: QueueLimits,
    },
    /// These queued messages of session life `incarnation` are done with
    /// (PUBACK, PUBCOMP, expired).
    Trim {
        client: ClientId,
        incarnation: Incarnation,
        seqs: Vec<u64>,
    },
    /// The subscriber answered PUBREC for these QoS 2 messages: from now on
    /// only PUBREL is resent for them.
    MarkReleased {
        client: ClientId,
        incarnation: Incarnation,
        seqs: Vec<u64>,
    },
    /// These session lives ended: their durable queues go. (Where the
    /// queues are kept with the session records, a session's end takes its
    /// queue at once; the cluster keeps them in a Raft group of their own
    /// and proposes this for the lives that ended.)
    DropQueues {
        lives: Vec<(ClientId, Incarnation)>,
    },
    /// Adds or replaces a user (argon2id hash).
    UserSet {
        name: String,
        hash: String,
    },
    UserRemove {
        name: String,
    },
    /// Inserts an ACL rule at `position` (the end when past it).
    AclAdd {
        rule: AclRule,
        position: Option<u32>,
    },
    /// Removes the rule at `index` (0-based).
    AclRemove {
        index: u32,
    },
}

impl Command {
    /// Whether applying it twice is the same as once. A write whose first
    /// attempt may have been committed is only tried again if all its
    /// commands are (a message stored twice would be delivered twice).
    pub fn is_idempotent(&self) -> bool {
        !matches!(self, Command::Enqueue { .. } | Command::AclAdd { .. })
    }

    /// Whether a client may rely on the change being in force on every
    /// live node once it is acknowledged: a SUBACK (no subscribe race),
    /// users and ACL rules (security state).
    pub fn needs_every_node(&self) -> bool {
        matches!(
            self,
            Command::Subscribe { .. }
                | Command::UserSet { .. }
                | Command::UserRemove { .. }
                | Command::AclAdd { .. }
                | Command::AclRemove { .. }
        )
    }

    /// Whether it changes the durable queues only (what the cluster's queue
    /// group applies).
    pub fn is_queue_change(&self) -> bool {
        matches!(
            self,
            Command::Enqueue { .. }
                | Command::Trim { .. }
                | Command::MarkReleased { .. }
                | Command::DropQueues { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Claimed {
        /// A previous session was resumed (CONNACK session present).
        session_present: bool,
        /// The node that held the session before (for the handoff of
        /// what it still queues).
        previous_owner: Option<NodeId>,
    },
    Released {
        ended: bool,
    },
    /// Per entry: whether the subscription already existed.
    Subscribed(Vec<bool>),
    /// Per filter: whether the subscription existed.
    Unsubscribed(Vec<bool>),
    /// Whether the user or rule existed.
    Removed(bool),
    /// A durable message: for how many sessions it was stored, or refused
    /// because the durable queues' byte quota is reached.
    Enqueued {
        stored: u32,
        refused: bool,
    },
    /// The command named a connection that no longer owns the session.
    NotOwner,
    Done,
}
