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

use std::collections::VecDeque;
use std::sync::Arc;

use serde::{Deserialize, Serialize};
use starling_codec::QoS;

use crate::ids::ClientId;
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

/// One persistent session's durable queue, oldest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DurableQueue {
    last_seq: u64,
    entries: VecDeque<QueuedMessage>,
}

impl DurableQueue {
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
    pub(super) fn push(&mut self, message: Arc<StoredMessage>, t: &DurableTarget) -> QueuedMessage {
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
    pub(super) fn trim(&mut self, seqs: &[u64]) -> u64 {
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
    pub(super) fn release(&mut self, seqs: &[u64]) -> Vec<u64> {
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
pub(super) fn cost_for(message: &StoredMessage, targets: usize) -> u64 {
    cost(message) * targets as u64
}
