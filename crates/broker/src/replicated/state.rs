//! `ReplicatedState` and its deterministic `apply`.
//!
//! `apply` is a pure function of the state, the command and the entry's
//! replicated time: no clock, no randomness, no I/O. Every node applies the
//! same entries in the same order and reaches the same state; what that
//! means for a node's own sessions and views comes out as `StateChange`s.
//!
//! Time-driven changes (a delayed will, a session's expiry) are kept in a
//! due index; whoever keeps time proposes `Command::Tick` once
//! `next_due_ms` has passed, and the tick applies everything due as of its
//! entry's time. There is no timer per session anywhere.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};
use starling_codec::MqttStr;

use crate::auth::AclRule;
use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::replicated::change::StateChange;
use crate::replicated::command::{Command, CommandResult, WillOnRelease};
use crate::replicated::queue::QueueState;
use crate::replicated::records::{SessionRecord, StoredMessage, Subscription};
use crate::topic::TopicFilter;
use crate::will::WillSpec;

/// Everything the cluster agrees on.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(from = "StateData")]
pub struct ReplicatedState {
    sessions: BTreeMap<ClientId, SessionRecord>,
    retained: BTreeMap<MqttStr, StoredMessage>,
    /// Nodes the leader found unreachable.
    down: BTreeSet<NodeId>,
    /// Replicated time of the last applied entry (never goes back).
    time_ms: u64,
    /// Users managed with `starling user ...`: name → argon2id hash.
    users: BTreeMap<String, String>,
    /// ACL rules managed with `starling acl ...`, in evaluation order.
    acl: Vec<AclRule>,
    /// Session lives begun so far: the last `Incarnation` handed out.
    sessions_begun: u64,
    /// Durable queues of persistent sessions (queue.rs). The cluster keeps
    /// them in a Raft group of their own; a single process keeps them here.
    queues: QueueState,
    /// (due time, client) of every session with a delayed will or an
    /// expiry ahead. Derived from `sessions`; rebuilt when read back.
    #[serde(skip)]
    due: BTreeSet<(u64, ClientId)>,
}

/// The stored form: the state without its derived index.
#[derive(Deserialize)]
struct StateData {
    sessions: BTreeMap<ClientId, SessionRecord>,
    retained: BTreeMap<MqttStr, StoredMessage>,
    down: BTreeSet<NodeId>,
    time_ms: u64,
    users: BTreeMap<String, String>,
    acl: Vec<AclRule>,
    sessions_begun: u64,
    queues: QueueState,
}

impl From<StateData> for ReplicatedState {
    fn from(d: StateData) -> ReplicatedState {
        let due = d.sessions.iter().filter_map(|(c, r)| r.next_due_ms().map(|t| (t, c.clone()))).collect();
        ReplicatedState {
            sessions: d.sessions,
            retained: d.retained,
            down: d.down,
            time_ms: d.time_ms,
            users: d.users,
            acl: d.acl,
            sessions_begun: d.sessions_begun,
            queues: d.queues,
            due,
        }
    }
}

/// A CONNECT's claim, as applied.
struct Claim {
    client: ClientId,
    epoch: Epoch,
    clean_start: bool,
    expiry_interval: u32,
    will: Option<Box<WillSpec>>,
}

impl ReplicatedState {
    pub fn sessions(&self) -> &BTreeMap<ClientId, SessionRecord> {
        &self.sessions
    }

    pub fn session(&self, client: &ClientId) -> Option<&SessionRecord> {
        self.sessions.get(client)
    }

    pub fn retained(&self) -> &BTreeMap<MqttStr, StoredMessage> {
        &self.retained
    }

    pub fn down(&self) -> &BTreeSet<NodeId> {
        &self.down
    }

    pub fn time_ms(&self) -> u64 {
        self.time_ms
    }

    pub fn users(&self) -> &BTreeMap<String, String> {
        &self.users
    }

    pub fn acl(&self) -> &[AclRule] {
        &self.acl
    }

    /// Session lives begun so far: every `Incarnation` up to this one was
    /// handed out by a claim applied here.
    pub fn sessions_begun(&self) -> u64 {
        self.sessions_begun
    }

    /// The durable queues kept in this state.
    pub fn queues(&self) -> &QueueState {
        &self.queues
    }

    /// The earliest delayed will or session expiry ahead (replicated time).
    pub fn next_due_ms(&self) -> Option<u64> {
        self.due.first().map(|(t, _)| *t)
    }

    /// Applies `cmd` at replicated time `time_ms`, appending what it
    /// changes to `out`.
    pub fn apply(&mut self, time_ms: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult {
        self.time_ms = self.time_ms.max(time_ms);
        let now = self.time_ms;
        match cmd {
            Command::Claim { client, epoch, clean_start, expiry_interval, will } => {
                self.claim(now, Claim { client, epoch, clean_start, expiry_interval, will }, out)
            }
            Command::Release { client, epoch, expiry_interval, will } => {
                self.release(now, client, epoch, expiry_interval, will, out)
            }
            Command::Subscribe { client, epoch, subs } => self.subscribe(client, epoch, subs, out),
            Command::Unsubscribe { client, epoch, filters } => self.unsubscribe(client, epoch, filters, out),
            Command::SetRetained { topic, message, expires_in_ms } => {
                // A zero-byte retained message clears (MQTT-3.3.1-6), whoever
                // proposed it.
                let message = message.filter(|m| !m.payload.is_empty()).map(|mut m| {
                    m.expires_at_ms = expires_in_ms.map(|ms| now.saturating_add(ms));
                    m
                });
                self.set_retained(topic, message, out);
                CommandResult::Done
            }
            Command::NodeReset { node, adopter } => {
                self.reset_node(now, node, adopter, out);
                CommandResult::Done
            }
            Command::SetLiveness { node, alive } => {
                if alive {
                    self.down.remove(&node);
                } else {
                    self.down.insert(node);
                }
                CommandResult::Done
            }
            Command::Tick => {
                self.tick(now, out);
                CommandResult::Done
            }
            Command::Enqueue { message, expires_in_ms, targets, limits } => {
                // Here the session records are at hand: only the current
                // life of a persistent session gets the message.
                let targets = targets
                    .into_iter()
                    .filter(|t| {
                        self.sessions
                            .get(&t.client)
                            .is_some_and(|r| r.expiry_interval > 0 && r.incarnation == t.incarnation)
                    })
                    .collect();
                self.queues.apply(now, Command::Enqueue { message, expires_in_ms, targets, limits }, out)
            }
            cmd @ (Command::Trim { .. } | Command::MarkReleased { .. } | Command::DropQueues { .. }) => {
                self.queues.apply(now, cmd, out)
            }
            Command::UserSet { name, hash } => {
                self.users.insert(name, hash);
                out.push(StateChange::UsersChanged(self.users.clone()));
                CommandResult::Done
            }
            Command::UserRemove { name } => {
                let existed = self.users.remove(&name).is_some();
                out.push(StateChange::UsersChanged(self.users.clone()));
                CommandResult::Removed(existed)
            }
            Command::AclAdd { rule, position } => {
                let at = position.map_or(self.acl.len(), |p| (p as usize).min(self.acl.len()));
                self.acl.insert(at, rule);
                out.push(StateChange::AclChanged(self.acl.clone()));
                CommandResult::Done
            }
            Command::AclRemove { index } => {
                let existed = (index as usize) < self.acl.len();
                if existed {
                    self.acl.remove(index as usize);
                    out.push(StateChange::AclChanged(self.acl.clone()));
                }
                CommandResult::Removed(existed)
            }
        }
    }

    fn claim(&mut self, now: u64, c: Claim, out: &mut Vec<StateChange>) -> CommandResult {
        let persistent = c.expiry_interval > 0;
        let Some(prev) = self.sessions.get(&c.client) else {
            let rec = self.new_record(&c);
            let durable = persistent.then_some(rec.incarnation);
            self.insert_session(c.client.clone(), rec);
            out.push(StateChange::SessionClaimed {
                client: c.client,
                epoch: c.epoch,
                taken_over: None,
                filters: Vec::new(),
                durable,
                queued: None,
            });
            return CommandResult::Claimed { session_present: false, previous_owner: None };
        };
        let taken_over = (prev.connected && prev.epoch != c.epoch).then_some(prev.epoch);
        let previous_owner = prev.owner;
        // The previous will. A live connection that is taken over publishes
        // its will, unless the session resumes within the will's delay; a
        // delayed will of a disconnected session goes out if the session
        // ends now, and is cancelled if it resumes (MQTT 5.0 §3.1.2.5).
        let old_will_goes = match &prev.will {
            Some(w) if prev.connected => {
                taken_over.is_some() && (c.clean_start || w.delay == 0 || prev.expiry_interval == 0)
            }
            Some(_) => c.clean_start,
            None => false,
        };
        let old_will = prev.will.clone().filter(|_| old_will_goes);
        if let Some(w) = old_will {
            self.publish_will(StoredMessage::from_will(&w, &c.client, now), previous_owner, out);
        }
        if c.clean_start {
            self.end_session(&c.client, false, out);
            let rec = self.new_record(&c);
            let durable = persistent.then_some(rec.incarnation);
            self.insert_session(c.client.clone(), rec);
            out.push(StateChange::SessionClaimed {
                client: c.client,
                epoch: c.epoch,
                taken_over,
                filters: Vec::new(),
                durable,
                queued: None,
            });
            return CommandResult::Claimed { session_present: false, previous_owner };
        }
        let (filters, incarnation) = self
            .update_session(&c.client, |rec| {
                rec.owner = Some(c.epoch.node);
                rec.epoch = c.epoch;
                rec.connected = true;
                rec.expiry_interval = c.expiry_interval;
                rec.disconnected_at_ms = None;
                rec.will = c.will;
                rec.will_due_ms = None;
                (rec.filters(), rec.incarnation)
            })
            .unwrap_or_default();
        let durable = persistent.then_some(incarnation);
        let queued = self.queues.of(&c.client, incarnation).map(|q| q.entries().iter().cloned().collect());
        out.push(StateChange::SessionClaimed {
            client: c.client,
            epoch: c.epoch,
            taken_over,
            filters,
            durable,
            queued,
        });
        CommandResult::Claimed { session_present: true, previous_owner }
    }

    fn release(
        &mut self,
        now: u64,
        client: ClientId,
        epoch: Epoch,
        expiry_interval: u32,
        will: WillOnRelease,
        out: &mut Vec<StateChange>,
    ) -> CommandResult {
        let Some(rec) = self.sessions.get(&client).filter(|r| r.connected && r.epoch == epoch) else {
            return CommandResult::NotOwner;
        };
        let owner = rec.owner;
        let will = match will {
            WillOnRelease::Publish => rec.will.clone(),
            WillOnRelease::Discard => None,
        };
        // The will waits for its delay, or the session's end if sooner.
        let delay = will.as_ref().map_or(0, |w| w.delay.min(expiry_interval));
        if expiry_interval == 0 || delay == 0 {
            if let Some(w) = &will {
                self.publish_will(StoredMessage::from_will(w, &client, now), owner, out);
            }
        }
        if expiry_interval == 0 {
            self.end_session(&client, false, out);
            return CommandResult::Released { ended: true };
        }
        self.update_session(&client, |rec| {
            rec.connected = false;
            rec.expiry_interval = expiry_interval;
            rec.disconnected_at_ms = Some(now);
            (rec.will, rec.will_due_ms) = match will {
                Some(w) if delay > 0 => (Some(w), Some(now + u64::from(delay) * 1000)),
                _ => (None, None),
            };
        });
        CommandResult::Released { ended: false }
    }

    fn subscribe(
        &mut self,
        client: ClientId,
        epoch: Epoch,
        subs: Vec<(TopicFilter, Subscription)>,
        out: &mut Vec<StateChange>,
    ) -> CommandResult {
        let Some(rec) = self.sessions.get_mut(&client).filter(|r| r.connected && r.epoch == epoch) else {
            return CommandResult::NotOwner;
        };
        let mut existed = Vec::with_capacity(subs.len());
        let durable = (rec.expiry_interval > 0).then_some(rec.incarnation);
        for (filter, subscription) in subs {
            existed.push(rec.subscriptions.insert(filter.clone(), subscription).is_some());
            out.push(StateChange::SubscriptionAdded {
                client: client.clone(),
                owner: rec.owner,
                filter,
                subscription,
                durable,
            });
        }
        CommandResult::Subscribed(existed)
    }

    fn unsubscribe(
        &mut self,
        client: ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
        out: &mut Vec<StateChange>,
    ) -> CommandResult {
        let Some(rec) = self.sessions.get_mut(&client).filter(|r| r.connected && r.epoch == epoch) else {
            return CommandResult::NotOwner;
        };
        let mut existed = Vec::with_capacity(filters.len());
        for filter in filters {
            let had = rec.subscriptions.remove(&filter).is_some();
            if had {
                out.push(StateChange::SubscriptionRemoved { client: client.clone(), filter });
            }
            existed.push(had);
        }
        CommandResult::Unsubscribed(existed)
    }

    fn set_retained(&mut self, topic: MqttStr, message: Option<StoredMessage>, out: &mut Vec<StateChange>) {
        match &message {
            Some(m) => {
                self.retained.insert(topic.clone(), m.clone());
            }
            None => {
                self.retained.remove(&topic);
            }
        }
        out.push(StateChange::RetainedSet { topic, message });
    }

    /// Every connection of `node` is gone: publish (or schedule) the wills
    /// of its connected clients, end its clean sessions, and move its
    /// persistent sessions to `adopter`.
    fn reset_node(&mut self, now: u64, node: NodeId, adopter: Option<NodeId>, out: &mut Vec<StateChange>) {
        let owned: Vec<ClientId> =
            self.sessions.iter().filter(|(_, r)| r.owner == Some(node)).map(|(c, _)| c.clone()).collect();
        for client in owned {
            let Some(rec) = self.sessions.get(&client) else { continue };
            let orphaned = rec.connected.then_some(rec.epoch);
            let expiry = rec.expiry_interval;
            let mut will_now = None;
            let mut will_due = rec.will_due_ms;
            if rec.connected {
                if let Some(w) = &rec.will {
                    let delay = u64::from(w.delay.min(expiry));
                    if delay == 0 || expiry == 0 {
                        will_now = Some(StoredMessage::from_will(w, &client, now));
                    } else {
                        will_due = Some(now + delay * 1000);
                    }
                }
            }
            if let Some(m) = will_now {
                self.publish_will(m, adopter, out);
            }
            if expiry == 0 {
                if let Some(epoch) = orphaned {
                    out.push(StateChange::SessionAdopted {
                        client: client.clone(),
                        owner: None,
                        orphaned: Some(epoch),
                        filters: Vec::new(),
                        durable: None,
                    });
                }
                self.end_session(&client, false, out);
                continue;
            }
            let (filters, incarnation) = self
                .update_session(&client, |rec| {
                    if rec.connected {
                        rec.connected = false;
                        rec.disconnected_at_ms = Some(now);
                        if will_due.is_none() {
                            rec.will = None;
                        }
                        rec.will_due_ms = will_due;
                    }
                    rec.owner = adopter;
                    (rec.filters(), rec.incarnation)
                })
                .unwrap_or_default();
            out.push(StateChange::SessionAdopted {
                client,
                owner: adopter,
                orphaned,
                filters,
                durable: Some(incarnation),
            });
        }
    }

    /// Publishes the delayed wills that are due and ends the sessions
    /// that expired, as of `now`.
    fn tick(&mut self, now: u64, out: &mut Vec<StateChange>) {
        let due: Vec<ClientId> =
            self.due.iter().take_while(|(t, _)| *t <= now).map(|(_, c)| c.clone()).collect();
        for client in due {
            let Some(rec) = self.sessions.get(&client) else { continue };
            let owner = rec.owner;
            let expired = rec.expires_at_ms().is_some_and(|t| t <= now);
            let will_due = !rec.connected && rec.will_due_ms.is_some_and(|t| t <= now);
            if will_due || expired {
                // A session that ends publishes its pending will with it.
                let will = self
                    .update_session(&client, |rec| {
                        rec.will_due_ms = None;
                        rec.will.take()
                    })
                    .flatten();
                if let Some(w) = will {
                    self.publish_will(StoredMessage::from_will(&w, &client, now), owner, out);
                }
            }
            if expired {
                self.end_session(&client, true, out);
            }
        }
    }

    fn end_session(&mut self, client: &ClientId, expired: bool, out: &mut Vec<StateChange>) {
        if let Some(rec) = self.remove_session(client) {
            self.queues.drop_queue(client, rec.incarnation);
            for filter in rec.subscriptions.into_keys() {
                out.push(StateChange::SubscriptionRemoved { client: client.clone(), filter });
            }
            out.push(StateChange::SessionEnded { client: client.clone(), expired });
        }
    }

    fn publish_will(&mut self, msg: StoredMessage, counted_by: Option<NodeId>, out: &mut Vec<StateChange>) {
        if msg.retain {
            let stored = (!msg.payload.is_empty()).then(|| msg.clone());
            self.set_retained(msg.topic.clone(), stored, out);
        }
        out.push(StateChange::WillPublished { message: msg, counted_by });
    }

    fn insert_session(&mut self, client: ClientId, rec: SessionRecord) {
        if let Some(t) = rec.next_due_ms() {
            self.due.insert((t, client.clone()));
        }
        if let Some(old) = self.sessions.insert(client.clone(), rec) {
            if let Some(t) = old.next_due_ms() {
                self.due.remove(&(t, client));
            }
        }
    }

    fn remove_session(&mut self, client: &ClientId) -> Option<SessionRecord> {
        let rec = self.sessions.remove(client)?;
        if let Some(t) = rec.next_due_ms() {
            self.due.remove(&(t, client.clone()));
        }
        Some(rec)
    }

    /// Changes a session's record, keeping the due index in step.
    fn update_session<R>(&mut self, client: &ClientId, f: impl FnOnce(&mut SessionRecord) -> R) -> Option<R> {
        let rec = self.sessions.get_mut(client)?;
        let before = rec.next_due_ms();
        let r = f(rec);
        let after = rec.next_due_ms();
        if before != after {
            if let Some(t) = before {
                self.due.remove(&(t, client.clone()));
            }
            if let Some(t) = after {
                self.due.insert((t, client.clone()));
            }
        }
        Some(r)
    }

    /// The record of a session life that begins with claim `c`.
    fn new_record(&mut self, c: &Claim) -> SessionRecord {
        self.sessions_begun += 1;
        SessionRecord {
            owner: Some(c.epoch.node),
            epoch: c.epoch,
            incarnation: Incarnation(self.sessions_begun),
            connected: true,
            expiry_interval: c.expiry_interval,
            disconnected_at_ms: None,
            will: c.will.clone(),
            will_due_ms: None,
            subscriptions: BTreeMap::new(),
        }
    }
}
