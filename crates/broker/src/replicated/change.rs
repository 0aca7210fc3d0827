//! `StateChange`: what an applied command means for the nodes' local
//! state. `ReplicatedState::apply` emits them in order; every node hands
//! them to its `LocalState` (applier.rs), which alone decides what they do
//! to its sessions, routes, retained view, wills and auth data.
//!
//! Each change is self-contained (ids, filters, messages), so the applier
//! never reads the replicated state back.

use std::collections::BTreeMap;

use starling_codec::{MqttStr, QoS};

use crate::auth::AclRule;
use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::replicated::queue::QueuedMessage;
use crate::replicated::records::{StoredMessage, Subscription};
use crate::topic::TopicFilter;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StateChange {
    /// Connection `epoch` (on node `epoch.node`) now owns `client`. A
    /// connection that was still live (`taken_over`) must close with
    /// "session taken over". `filters`: the subscriptions the session
    /// kept (resumed), whose routes now lead to the new owner; `durable`:
    /// the session is persistent (its QoS 1/2 messages are queued in the
    /// replicated state), and which life of it this is; `queued`: what its
    /// durable queue holds, for the new owner to deliver (`None` when this
    /// state holds no queue for it — where the queues are kept apart from
    /// the session records, the claiming node loads them from there).
    SessionClaimed {
        client: ClientId,
        epoch: Epoch,
        taken_over: Option<Epoch>,
        filters: Vec<TopicFilter>,
        durable: Option<Incarnation>,
        queued: Option<Vec<QueuedMessage>>,
    },
    /// The session changed hands without a connection (its node was
    /// reset): `owner` queues for it now (`None`: nobody). A connection
    /// that was still live on the reset node (`orphaned`) must close with
    /// "use another server"; its client resumes elsewhere.
    SessionAdopted {
        client: ClientId,
        owner: Option<NodeId>,
        orphaned: Option<Epoch>,
        filters: Vec<TopicFilter>,
        durable: Option<Incarnation>,
    },
    /// The session no longer exists (expiry 0 release, clean start,
    /// expiry, node reset of a clean session).
    SessionEnded {
        client: ClientId,
        expired: bool,
    },
    SubscriptionAdded {
        client: ClientId,
        owner: Option<NodeId>,
        filter: TopicFilter,
        subscription: Subscription,
        durable: Option<Incarnation>,
    },
    SubscriptionRemoved {
        client: ClientId,
        filter: TopicFilter,
    },
    RetainedSet {
        topic: MqttStr,
        message: Option<StoredMessage>,
    },
    /// A will goes out: every node delivers it to its own subscribers.
    /// `counted_by` is the node that counts it in its metrics (the
    /// session's owner, or the node that adopted a dead node's sessions).
    WillPublished {
        message: StoredMessage,
        counted_by: Option<NodeId>,
    },
    /// A message entered the durable queue of `client` (session life
    /// `incarnation`); the node holding that session's runtime delivers it.
    Queued {
        client: ClientId,
        incarnation: Incarnation,
        entry: QueuedMessage,
    },
    /// A message for `client` was dropped: its durable queue is full.
    /// `counted_by` is the node that counts it in its metrics: in the
    /// cluster the leader that appended the entry (its log id names it;
    /// every node applies the entry, whichever holds the session, even one
    /// moving to another node); `None` (a single process): the node
    /// holding the session.
    QueueFull {
        client: ClientId,
        incarnation: Incarnation,
        qos: QoS,
        counted_by: Option<NodeId>,
    },
    /// PUBREC of these QoS 2 messages is recorded: the session's runtime
    /// may send PUBREL.
    Released {
        client: ClientId,
        incarnation: Incarnation,
        seqs: Vec<u64>,
    },
    UsersChanged(BTreeMap<String, String>),
    AclChanged(Vec<AclRule>),
}
