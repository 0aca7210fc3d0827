//! Durable queues: the QoS 1/2 messages of persistent sessions, kept in
//! the replicated state so that an acknowledged message outlives the node
//! its session was on.
//!
//! A publishing node commits one `Command::Enqueue` per message for all
//! its matching persistent subscribers before it acknowledges the PUBLISH;
//! the session's owner delivers from its applied copy and commits
//! `Command::Trim` once the subscriber acknowledged (PUBACK, PUBCOMP) and
//! `Command::Release` when it answered PUBREC. Any node that takes the
//! session over finds the queue in its own state.
//!
//! A message's packet identifier is a function of its sequence number in
//! the queue (`packet_id_for`), so a new owner resends it with the
//! identifier the client already saw: a QoS 2 message the client received
//! but did not complete is recognised as a duplicate, never delivered
//! twice.

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_codec::QoS;

use crate::ids::{ClientId, Incarnation};
use crate::replicated::change::StateChange;
use crate::replicated::command::{Command, CommandResult};
use crate::replicated::records::StoredMessage;

/// The packet identifier of the message with sequence number `seq`
/// (1-based): identifiers cycle through 1..=65535, and a queue never holds
/// more than `MAX_PER_SESSION` messages, so two live messages never share
/// one.
pub fn packet_id_for(seq: u64) -> u16 {
    ((seq.saturating_sub(1) % 65_535) + 1) as u16
}

/// The most messages a durable queue may hold, whatever the configuration.
pub const MAX_PER_SESSION: u32 = 60_000;

/// Bytes a queued message is counted for against the total quota.
fn cost(m: &StoredMessage) -> u64 {
    (m.payload.len() + m.topic.len()) as u64 + 64
}

/// A message waiting in a persistent session's queue, with what the
/// session's subscriptions decided for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueuedMessage {
    pub seq: u64,
    pub message: Arc<StoredMessage>,
    /// min(published QoS, granted QoS); 1 or 2.
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
    /// The subscriber answered PUBREC (QoS 2): only PUBREL and PUBCOMP
    /// remain, the message itself is delivered.
    pub released: bool,
}

impl QueuedMessage {
    pub fn packet_id(&self) -> u16 {
        packet_id_for(self.seq)
    }
}

/// One persistent session's durable queue, oldest first, for one life of
/// the session.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableQueue {
    incarnation: Incarnation,
    last_seq: u64,
    entries: VecDeque<QueuedMessage>,
}

impl DurableQueue {
    /// The session life this queue belongs to.
    pub fn incarnation(&self) -> Incarnation {
        self.incarnation
    }

    pub fn entries(&self) -> &VecDeque<QueuedMessage> {
        &self.entries
    }

    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Bytes the queue is counted for.
    pub fn bytes(&self) -> u64 {
        self.entries.iter().map(|e| cost(&e.message)).sum()
    }

    /// Appends `message` for this session; returns the entry.
    fn push(&mut self, message: Arc<StoredMessage>, t: &DurableTarget) -> QueuedMessage {
        self.last_seq += 1;
        let e = QueuedMessage {
            seq: self.last_seq,
            message,
            qos: t.qos,
            retain: t.retain,
            subscription_ids: t.subscription_ids.clone(),
            released: false,
        };
        self.entries.push_back(e.clone());
        e
    }

    fn position(&self, seq: u64) -> Option<usize> {
        self.entries.binary_search_by_key(&seq, |e| e.seq).ok()
    }

    /// Removes the messages with these sequence numbers; returns the
    /// bytes freed.
    fn trim(&mut self, seqs: &[u64]) -> u64 {
        let mut freed = 0;
        for seq in seqs {
            if let Some(i) = self.position(*seq) {
                if let Some(e) = self.entries.remove(i) {
                    freed += cost(&e.message);
                }
            }
        }
        freed
    }

    /// Marks messages as released (PUBREC received); returns those that
    /// were queued and not yet released.
    fn release(&mut self, seqs: &[u64]) -> Vec<u64> {
        let mut done = Vec::new();
        for seq in seqs {
            if let Some(i) = self.position(*seq) {
                let e = &mut self.entries[i];
                if !e.released && e.qos == QoS::ExactlyOnce {
                    e.released = true;
                    done.push(*seq);
                }
            }
        }
        done
    }
}

/// A persistent session a message is queued for, and how.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableTarget {
    pub client: ClientId,
    /// The session life the publishing node routed to.
    pub incarnation: Incarnation,
    pub qos: QoS,
    pub retain: bool,
    pub subscription_ids: Vec<u32>,
}

/// Bounds of the durable queues, from the proposing node's configuration
/// (carried in the command, so every node applies the same).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLimits {
    /// Messages one session's queue may hold; a message for a full queue
    /// is dropped for that session and counted.
    pub per_session: u32,
    /// Bytes all durable queues together may hold; a message that would
    /// pass it is refused (the publisher is told: 0x97 for MQTT 5).
    pub total_bytes: u64,
}

/// The cost `message` would add for `targets` queues.
fn cost_for(message: &StoredMessage, targets: usize) -> u64 {
    cost(message) * targets as u64
}

/// Every persistent session's durable queue, by client id, each for one
/// session life (`Incarnation`). The rules need nothing but the commands:
/// a target of a newer life replaces the queue of an older one (that life
/// ended), a target of an older life is ignored (a route that was out of
/// date), so the queues can be kept apart from the session records.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "QueueData")]
pub struct QueueState {
    queues: BTreeMap<ClientId, DurableQueue>,
    /// Bytes the queues are counted for (derived).
    #[serde(skip)]
    bytes: u64,
}

#[derive(Deserialize)]
struct QueueData {
    queues: BTreeMap<ClientId, DurableQueue>,
}

impl From<QueueData> for QueueState {
    fn from(d: QueueData) -> QueueState {
        let bytes = d.queues.values().map(DurableQueue::bytes).sum();
        QueueState { queues: d.queues, bytes }
    }
}

impl QueueState {
    /// Applies a queue change (`Command::is_queue_change`) at replicated
    /// time `now`; any other command changes nothing here.
    pub fn apply(&mut self, now: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult {
        match cmd {
            Command::Enqueue { mut message, expires_in_ms, targets, limits } => {
                let expires_at_ms = expires_in_ms.map(|ms| now.saturating_add(ms));
                if message.expires_at_ms != expires_at_ms {
                    Arc::make_mut(&mut message).expires_at_ms = expires_at_ms;
                }
                self.enqueue(message, targets, limits, out)
            }
            Command::Trim { client, incarnation, seqs } => {
                self.trim(&client, incarnation, &seqs);
                CommandResult::Done
            }
            Command::MarkReleased { client, incarnation, seqs } => {
                self.release(client, incarnation, &seqs, out);
                CommandResult::Done
            }
            Command::DropQueues { lives } => {
                for (client, incarnation) in lives {
                    self.drop_queue(&client, incarnation);
                }
                CommandResult::Done
            }
            _ => CommandResult::Done,
        }
    }

    /// The queue of `client`, if it has one.
    pub fn get(&self, client: &ClientId) -> Option<&DurableQueue> {
        self.queues.get(client)
    }

    /// The queue of `client` for session life `incarnation`, if it has one.
    pub fn of(&self, client: &ClientId, incarnation: Incarnation) -> Option<&DurableQueue> {
        self.queues.get(client).filter(|q| q.incarnation == incarnation)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&ClientId, &DurableQueue)> {
        self.queues.iter()
    }

    /// Bytes all queues are counted for.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Messages all queues hold.
    pub fn messages(&self) -> u64 {
        self.queues.values().map(|q| q.len() as u64).sum()
    }

    /// Stores `message` for `targets`, unless it would pass the byte quota
    /// (then for none: `refused`).
    fn enqueue(
        &mut self,
        message: Arc<StoredMessage>,
        targets: Vec<DurableTarget>,
        limits: QueueLimits,
        out: &mut Vec<StateChange>,
    ) -> CommandResult {
        if self.bytes + cost_for(&message, targets.len()) > limits.total_bytes {
            return CommandResult::Enqueued { stored: 0, refused: true };
        }
        let per_session = limits.per_session.min(MAX_PER_SESSION) as usize;
        let mut stored = 0;
        for t in targets {
            let q = self
                .queues
                .entry(t.client.clone())
                .or_insert_with(|| DurableQueue { incarnation: t.incarnation, ..DurableQueue::default() });
            if q.incarnation > t.incarnation {
                continue;
            }
            if q.incarnation < t.incarnation {
                self.bytes -= q.bytes();
                *q = DurableQueue { incarnation: t.incarnation, ..DurableQueue::default() };
            }
            if q.len() >= per_session {
                out.push(StateChange::QueueFull {
                    client: t.client,
                    incarnation: t.incarnation,
                    qos: t.qos,
                    counted_by: None,
                });
                continue;
            }
            let entry = q.push(message.clone(), &t);
            self.bytes += cost(&message);
            stored += 1;
            out.push(StateChange::Queued { client: t.client, incarnation: t.incarnation, entry });
        }
        CommandResult::Enqueued { stored, refused: false }
    }

    /// The subscriber is done with these messages (PUBACK, PUBCOMP, expired).
    fn trim(&mut self, client: &ClientId, incarnation: Incarnation, seqs: &[u64]) {
        if let Some(q) = self.queues.get_mut(client).filter(|q| q.incarnation == incarnation) {
            self.bytes -= q.trim(seqs);
        }
    }

    /// The subscriber answered PUBREC for these QoS 2 messages.
    fn release(
        &mut self,
        client: ClientId,
        incarnation: Incarnation,
        seqs: &[u64],
        out: &mut Vec<StateChange>,
    ) {
        if let Some(q) = self.queues.get_mut(&client).filter(|q| q.incarnation == incarnation) {
            let seqs = q.release(seqs);
            if !seqs.is_empty() {
                out.push(StateChange::Released { client, incarnation, seqs });
            }
        }
    }

    /// Drops the queue of `client` if it belongs to `incarnation` or an
    /// earlier life (the session ended).
    pub fn drop_queue(&mut self, client: &ClientId, incarnation: Incarnation) {
        if self.queues.get(client).is_some_and(|q| q.incarnation <= incarnation) {
            if let Some(q) = self.queues.remove(client) {
                self.bytes -= q.bytes();
            }
        }
    }
}

/// The durable queues as a group of their own replicates them (the
/// cluster's queue group): the queues and the group's replicated time
/// (the latest entry's, never going back).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueGroupState {
    time_ms: u64,
    queues: QueueState,
}

impl QueueGroupState {
    /// Applies `cmd` at replicated time `time_ms` (queue changes only; any
    /// other command changes nothing).
    pub fn apply(&mut self, time_ms: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult {
        self.time_ms = self.time_ms.max(time_ms);
        self.queues.apply(self.time_ms, cmd, out)
    }

    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    pub fn queues(&self) -> &QueueState {
        &self.queues
    }
}
