//! The replicated state and the deterministic `apply`.
//!
//! `ReplicatedState::apply` is a pure function of the state, the command
//! and the leader-stamped time: no clock, no randomness, no I/O. What the
//! node must do locally as a consequence (routes, retained view, kicking a
//! connection, delivering a will) comes back as `Effect`s, which
//! `views.rs` carries out.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use starling_broker::auth::AclRule;

use crate::types::{Command, CommandResult, EpochRec, MessageRecord, NodeId, SessionRecord, SubRecord};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicatedState {
    pub sessions: BTreeMap<String, SessionRecord>,
    pub retained: BTreeMap<String, MessageRecord>,
    /// Nodes the leader found unreachable.
    pub down: BTreeSet<NodeId>,
    /// Leader time of the last applied entry.
    pub time_ms: u64,
    /// Users managed with `starling user ...`: name → argon2id hash.
    pub users: BTreeMap<String, String>,
    /// ACL rules managed with `starling acl ...`, in evaluation order.
    pub acl: Vec<AclRule>,
}

/// A local consequence of an applied command.
#[derive(Debug, Clone, PartialEq)]
pub enum Effect {
    /// A session's subscription was added or replaced.
    RouteAdd {
        client: String,
        filter: String,
        sub: SubRecord,
        owner: Option<NodeId>,
    },
    RouteRemove {
        client: String,
        filter: String,
    },
    /// A session changed owner: its routes follow.
    Owner {
        client: String,
        owner: Option<NodeId>,
        filters: Vec<String>,
    },
    RetainedSet {
        topic: String,
        message: Option<MessageRecord>,
    },
    /// `client` was claimed by `epoch`. `previous` is the connection that
    /// owned it before (to be closed), `discarded` whether the previous
    /// session state was thrown away (clean start).
    Claimed {
        client: String,
        epoch: EpochRec,
        previous: Option<(NodeId, EpochRec)>,
        discarded: bool,
    },
    /// The session no longer exists.
    Ended {
        client: String,
        owner: Option<NodeId>,
    },
    /// The session's node is gone; on that node, a live connection for it
    /// must close (the client reconnects and resumes elsewhere).
    Orphaned {
        client: String,
        old_owner: NodeId,
        epoch: EpochRec,
    },
    /// Every node delivers this will to its local subscribers.
    Will {
        message: MessageRecord,
    },
    /// The replicated users changed.
    Users,
    /// The replicated ACL rules changed.
    Acl,
}

impl ReplicatedState {
    pub fn apply(&mut self, time_ms: u64, cmd: Command, fx: &mut Vec<Effect>) -> CommandResult {
        self.time_ms = self.time_ms.max(time_ms);
        match cmd {
            Command::Claim { client, epoch, clean_start, expiry_interval, will } => {
                self.claim(client, epoch, clean_start, expiry_interval, will, fx)
            }
            Command::Release { client, epoch, expiry_interval } => {
                let Some(rec) = self.sessions.get_mut(&client) else { return CommandResult::NotOwner };
                if rec.epoch != epoch {
                    return CommandResult::NotOwner;
                }
                rec.will = None;
                rec.will_due_ms = None;
                if expiry_interval == 0 {
                    self.end_session(&client, fx);
                    CommandResult::Released { ended: true }
                } else {
                    rec.connected = false;
                    rec.expiry_interval = expiry_interval;
                    rec.disconnected_at_ms = Some(time_ms);
                    CommandResult::Released { ended: false }
                }
            }
            Command::Expire { client, epoch } => {
                let due = match self.sessions.get(&client) {
                    Some(rec) if !rec.connected => match epoch {
                        Some(e) => rec.epoch == e,
                        None => self.expired(rec, time_ms),
                    },
                    _ => false,
                };
                if due {
                    if let Some(rec) = self.sessions.get_mut(&client) {
                        if let Some(w) = rec.will.take() {
                            let msg = w.to_message_record(&client, time_ms);
                            self.publish_will(msg, fx);
                        }
                    }
                    self.end_session(&client, fx);
                }
                CommandResult::Expired(due)
            }
            Command::Subscribe { client, epoch, subs } => {
                let Some(rec) = self.sessions.get_mut(&client) else { return CommandResult::NotOwner };
                if rec.epoch != epoch {
                    return CommandResult::NotOwner;
                }
                let mut existed = Vec::with_capacity(subs.len());
                for (filter, sub) in subs {
                    existed.push(rec.subscriptions.insert(filter.clone(), sub).is_some());
                    fx.push(Effect::RouteAdd { client: client.clone(), filter, sub, owner: rec.owner });
                }
                CommandResult::Subscribed(existed)
            }
            Command::Unsubscribe { client, epoch, filters } => {
                let Some(rec) = self.sessions.get_mut(&client) else { return CommandResult::NotOwner };
                if rec.epoch != epoch {
                    return CommandResult::NotOwner;
                }
                let mut existed = Vec::with_capacity(filters.len());
                for filter in filters {
                    let had = rec.subscriptions.remove(&filter).is_some();
                    if had {
                        fx.push(Effect::RouteRemove { client: client.clone(), filter });
                    }
                    existed.push(had);
                }
                CommandResult::Unsubscribed(existed)
            }
            Command::SetRetained { topic, message } => {
                match &message {
                    Some(m) => {
                        self.retained.insert(topic.clone(), m.clone());
                    }
                    None => {
                        self.retained.remove(&topic);
                    }
                }
                fx.push(Effect::RetainedSet { topic, message });
                CommandResult::Done
            }
            Command::NodeReset { node, adopter } => {
                self.reset_node(node, adopter, time_ms, fx);
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
            Command::UserSet { name, hash } => {
                self.users.insert(name, hash);
                fx.push(Effect::Users);
                CommandResult::Done
            }
            Command::UserRemove { name } => {
                let existed = self.users.remove(&name).is_some();
                fx.push(Effect::Users);
                CommandResult::Expired(existed)
            }
            Command::AclAdd { rule, position } => {
                let at = position.map_or(self.acl.len(), |p| (p as usize).min(self.acl.len()));
                self.acl.insert(at, rule);
                fx.push(Effect::Acl);
                CommandResult::Done
            }
            Command::AclRemove { index } => {
                let existed = (index as usize) < self.acl.len();
                if existed {
                    self.acl.remove(index as usize);
                    fx.push(Effect::Acl);
                }
                CommandResult::Expired(existed)
            }
            Command::PublishWill { client } => {
                let msg = match self.sessions.get_mut(&client) {
                    Some(rec) if !rec.connected && rec.will_due_ms.is_some_and(|t| t <= time_ms) => {
                        rec.will_due_ms = None;
                        rec.will.take().map(|w| w.to_message_record(&client, time_ms))
                    }
                    _ => None,
                };
                if let Some(m) = msg {
                    self.publish_will(m, fx);
                }
                CommandResult::Done
            }
        }
    }

    fn claim(
        &mut self,
        client: String,
        epoch: EpochRec,
        clean_start: bool,
        expiry_interval: u32,
        will: Option<Box<WillRecord>>,
        fx: &mut Vec<Effect>,
    ) -> CommandResult {
        let owner = Some(epoch.node);
        let previous = self.sessions.get(&client).map(|r| (r.owner, r.epoch, r.connected));
        let prev_conn = previous.and_then(|(o, e, connected)| match o {
            Some(n) if connected && e != epoch => Some((n, e)),
            _ => None,
        });
        let resumed = !clean_start && previous.is_some();
        if resumed {
            let rec = self.sessions.get_mut(&client).expect("checked above");
            let previous_owner = rec.owner;
            rec.owner = owner;
            rec.epoch = epoch;
            rec.connected = true;
            rec.expiry_interval = expiry_interval;
            rec.disconnected_at_ms = None;
            rec.will = will;
            // A pending delayed will is cancelled by the resumption.
            rec.will_due_ms = None;
            fx.push(Effect::Claimed { client: client.clone(), epoch, previous: prev_conn, discarded: false });
            if previous_owner != owner {
                let filters = rec.subscriptions.keys().cloned().collect();
                fx.push(Effect::Owner { client, owner, filters });
            }
            return CommandResult::Claimed { session_present: true, previous_owner };
        }
        if previous.is_some() {
            // Clean start: the old session ends; a pending will goes out.
            if let Some(rec) = self.sessions.get_mut(&client) {
                if rec.will_due_ms.is_some() {
                    rec.will_due_ms = None;
                    if let Some(w) = rec.will.take() {
                        let msg = w.to_message_record(&client, self.time_ms);
                        self.publish_will(msg, fx);
                    }
                }
            }
            self.end_session(&client, fx);
        }
        self.sessions.insert(
            client.clone(),
            SessionRecord {
                owner,
                epoch,
                connected: true,
                expiry_interval,
                disconnected_at_ms: None,
                will,
                will_due_ms: None,
                subscriptions: BTreeMap::new(),
            },
        );
        fx.push(Effect::Claimed { client, epoch, previous: prev_conn, discarded: previous.is_some() });
        CommandResult::Claimed { session_present: false, previous_owner: previous.and_then(|p| p.0) }
    }

    fn end_session(&mut self, client: &str, fx: &mut Vec<Effect>) {
        if let Some(rec) = self.sessions.remove(client) {
            for filter in rec.subscriptions.into_keys() {
                fx.push(Effect::RouteRemove { client: client.to_string(), filter });
            }
            fx.push(Effect::Ended { client: client.to_string(), owner: rec.owner });
        }
    }

    fn publish_will(&mut self, msg: MessageRecord, fx: &mut Vec<Effect>) {
        if msg.retain {
            if msg.payload.is_empty() {
                self.retained.remove(&msg.topic);
                fx.push(Effect::RetainedSet { topic: msg.topic.clone(), message: None });
            } else {
                self.retained.insert(msg.topic.clone(), msg.clone());
                fx.push(Effect::RetainedSet { topic: msg.topic.clone(), message: Some(msg.clone()) });
            }
        }
        fx.push(Effect::Will { message: msg });
    }

    fn expired(&self, rec: &SessionRecord, time_ms: u64) -> bool {
        if rec.expiry_interval == u32::MAX {
            return false;
        }
        rec.disconnected_at_ms.is_some_and(|at| at + u64::from(rec.expiry_interval) * 1000 <= time_ms)
    }

    /// Every connection of `node` is gone: publish (or schedule) the wills
    /// of its connected clients, end its clean sessions, and leave its
    /// persistent sessions unowned until their clients come back.
    fn reset_node(&mut self, node: NodeId, adopter: Option<NodeId>, time_ms: u64, fx: &mut Vec<Effect>) {
        let owned: Vec<String> =
            self.sessions.iter().filter(|(_, r)| r.owner == Some(node)).map(|(c, _)| c.clone()).collect();
        for client in owned {
            let Some(rec) = self.sessions.get_mut(&client) else { continue };
            let was_connected = rec.connected;
            let mut will_now = None;
            if was_connected {
                rec.disconnected_at_ms = Some(time_ms);
                rec.connected = false;
                if let Some(w) = &rec.will {
                    let delay = u64::from(w.delay.min(rec.expiry_interval));
                    if delay == 0 || rec.expiry_interval == 0 {
                        will_now = rec.will.take().map(|w| w.to_message_record(&client, time_ms));
                    } else {
                        rec.will_due_ms = Some(time_ms + delay * 1000);
                    }
                }
            }
            let epoch = rec.epoch;
            let ends = rec.expiry_interval == 0;
            if let Some(m) = will_now {
                self.publish_will(m, fx);
            }
            if was_connected {
                fx.push(Effect::Orphaned { client: client.clone(), old_owner: node, epoch });
            }
            if ends {
                self.end_session(&client, fx);
            } else if let Some(rec) = self.sessions.get_mut(&client) {
                rec.owner = adopter;
                let filters = rec.subscriptions.keys().cloned().collect();
                fx.push(Effect::Owner { client, owner: adopter, filters });
            }
        }
    }

    /// Disconnected sessions past their expiry, and delayed wills of reset
    /// nodes that are due, as of `time_ms` (the leader's janitor proposes
    /// commands for them; a session's own node usually expires it first).
    pub fn due_work(&self, time_ms: u64) -> Vec<Command> {
        let mut out = Vec::new();
        for (client, rec) in &self.sessions {
            if rec.connected {
                continue;
            }
            if rec.will_due_ms.is_some_and(|t| t <= time_ms) {
                out.push(Command::PublishWill { client: client.clone() });
            }
            if self.expired(rec, time_ms) {
                out.push(Command::Expire { client: client.clone(), epoch: None });
            }
        }
        out
    }
}

use crate::types::WillRecord;

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn ep(node: u64, seq: u64) -> EpochRec {
        EpochRec { node, seq }
    }

    fn claim(
        s: &mut ReplicatedState,
        c: &str,
        e: EpochRec,
        clean: bool,
        expiry: u32,
    ) -> (CommandResult, Vec<Effect>) {
        let mut fx = Vec::new();
        let r = s.apply(
            1000,
            Command::Claim {
                client: c.into(),
                epoch: e,
                clean_start: clean,
                expiry_interval: expiry,
                will: None,
            },
            &mut fx,
        );
        (r, fx)
    }

    fn sub(qos: u8) -> SubRecord {
        SubRecord {
            qos,
            no_local: false,
            retain_as_published: false,
            retain_handling: 0,
            subscription_id: None,
        }
    }

    fn will(delay: u32) -> WillRecord {
        WillRecord {
            topic: "w".into(),
            payload: Bytes::from_static(b"gone"),
            qos: 1,
            retain: false,
            properties: Default::default(),
            message_expiry_interval: None,
            delay,
        }
    }

    #[test]
    fn claim_resume_and_takeover() {
        let mut s = ReplicatedState::default();
        let (r, fx) = claim(&mut s, "c", ep(1, 1), false, 60);
        assert_eq!(r, CommandResult::Claimed { session_present: false, previous_owner: None });
        assert!(matches!(&fx[0], Effect::Claimed { previous: None, discarded: false, .. }));
        let mut fx = Vec::new();
        s.apply(
            1000,
            Command::Subscribe { client: "c".into(), epoch: ep(1, 1), subs: vec![("a/#".into(), sub(1))] },
            &mut fx,
        );
        // Takeover from node 2 while connected on node 1.
        let (r, fx) = claim(&mut s, "c", ep(2, 5), false, 60);
        assert_eq!(r, CommandResult::Claimed { session_present: true, previous_owner: Some(1) });
        assert!(fx.contains(&Effect::Claimed {
            client: "c".into(),
            epoch: ep(2, 5),
            previous: Some((1, ep(1, 1))),
            discarded: false
        }));
        assert!(fx.contains(&Effect::Owner {
            client: "c".into(),
            owner: Some(2),
            filters: vec!["a/#".into()]
        }));
        // The old connection can no longer change the session.
        let mut fx = Vec::new();
        let r =
            s.apply(1000, Command::Subscribe { client: "c".into(), epoch: ep(1, 1), subs: vec![] }, &mut fx);
        assert_eq!(r, CommandResult::NotOwner);
        let r = s.apply(
            1000,
            Command::Release { client: "c".into(), epoch: ep(1, 1), expiry_interval: 0 },
            &mut fx,
        );
        assert_eq!(r, CommandResult::NotOwner);
        assert!(s.sessions.contains_key("c"));
        // Clean start discards subscriptions.
        let (r, fx) = claim(&mut s, "c", ep(3, 1), true, 0);
        assert_eq!(r, CommandResult::Claimed { session_present: false, previous_owner: Some(2) });
        assert!(fx.contains(&Effect::RouteRemove { client: "c".into(), filter: "a/#".into() }));
        assert!(s.sessions["c"].subscriptions.is_empty());
    }

    #[test]
    fn release_ends_clean_sessions_and_keeps_persistent_ones() {
        let mut s = ReplicatedState::default();
        claim(&mut s, "clean", ep(1, 1), true, 0);
        claim(&mut s, "keep", ep(1, 2), false, 10);
        let mut fx = Vec::new();
        assert_eq!(
            s.apply(
                5000,
                Command::Release { client: "clean".into(), epoch: ep(1, 1), expiry_interval: 0 },
                &mut fx
            ),
            CommandResult::Released { ended: true }
        );
        assert_eq!(
            s.apply(
                5000,
                Command::Release { client: "keep".into(), epoch: ep(1, 2), expiry_interval: 10 },
                &mut fx
            ),
            CommandResult::Released { ended: false }
        );
        assert!(!s.sessions.contains_key("clean"));
        assert_eq!(s.sessions["keep"].disconnected_at_ms, Some(5000));
        // Not yet due; then due.
        assert!(s.due_work(10_000).is_empty());
        assert!(s.due_work(14_000).is_empty());
        assert_eq!(s.due_work(15_000), vec![Command::Expire { client: "keep".into(), epoch: None }]);
    }

    #[test]
    fn node_reset_publishes_wills_ends_clean_and_orphans_persistent() {
        let mut s = ReplicatedState::default();
        let mut fx = Vec::new();
        s.apply(
            1000,
            Command::Claim {
                client: "a".into(),
                epoch: ep(2, 1),
                clean_start: true,
                expiry_interval: 0,
                will: Some(Box::new(will(0))),
            },
            &mut fx,
        );
        s.apply(
            1000,
            Command::Claim {
                client: "b".into(),
                epoch: ep(2, 2),
                clean_start: false,
                expiry_interval: 60,
                will: Some(Box::new(will(5))),
            },
            &mut fx,
        );
        s.apply(
            1000,
            Command::Subscribe { client: "b".into(), epoch: ep(2, 2), subs: vec![("t".into(), sub(1))] },
            &mut fx,
        );
        s.apply(
            1000,
            Command::Claim {
                client: "other".into(),
                epoch: ep(1, 1),
                clean_start: true,
                expiry_interval: 0,
                will: None,
            },
            &mut fx,
        );
        let mut fx = Vec::new();
        s.apply(2000, Command::NodeReset { node: 2, adopter: None }, &mut fx);
        // a: will now, session ended. b: will scheduled, session unowned.
        assert!(fx
            .iter()
            .any(|e| matches!(e, Effect::Will { message } if message.publisher.as_deref() == Some("a"))));
        assert!(!s.sessions.contains_key("a"));
        let b = &s.sessions["b"];
        assert_eq!((b.owner, b.connected, b.will_due_ms), (None, false, Some(7000)));
        assert!(fx.contains(&Effect::Owner { client: "b".into(), owner: None, filters: vec!["t".into()] }));
        assert!(s.sessions["other"].connected, "other nodes' sessions untouched");
        // The delayed will comes due; resuming before that cancels it.
        assert_eq!(s.due_work(7000), vec![Command::PublishWill { client: "b".into() }]);
        let mut fx = Vec::new();
        s.apply(7000, Command::PublishWill { client: "b".into() }, &mut fx);
        assert!(matches!(&fx[0], Effect::Will { .. }));
        assert!(s.sessions["b"].will.is_none());
    }

    #[test]
    fn retained_set_and_clear_and_retained_will() {
        let mut s = ReplicatedState::default();
        let mut fx = Vec::new();
        let m = MessageRecord {
            topic: "r".into(),
            payload: Bytes::from_static(b"x"),
            qos: 0,
            retain: true,
            properties: Default::default(),
            publisher: None,
            expires_at_ms: None,
        };
        s.apply(1, Command::SetRetained { topic: "r".into(), message: Some(m) }, &mut fx);
        assert_eq!(s.retained.len(), 1);
        s.apply(2, Command::SetRetained { topic: "r".into(), message: None }, &mut fx);
        assert!(s.retained.is_empty());
        let mut w = will(0);
        w.retain = true;
        s.apply(
            3,
            Command::Claim {
                client: "z".into(),
                epoch: ep(1, 1),
                clean_start: true,
                expiry_interval: 0,
                will: Some(Box::new(w)),
            },
            &mut fx,
        );
        s.apply(4, Command::NodeReset { node: 1, adopter: Some(2) }, &mut fx);
        assert!(s.retained.contains_key("w"), "a retained will is stored");
    }

    #[test]
    fn every_command_survives_bincode() {
        use starling_broker::auth::{Access, Action};
        let cmds = vec![
            Command::AclAdd {
                rule: AclRule {
                    access: Access::Allow,
                    action: Action::Read,
                    topic: "a/#".into(),
                    user: None,
                    client: None,
                },
                position: None,
            },
            Command::AclAdd {
                rule: AclRule {
                    access: Access::Deny,
                    action: Action::Readwrite,
                    topic: "b".into(),
                    user: Some("u".into()),
                    client: None,
                },
                position: Some(0),
            },
            Command::UserSet { name: "n".into(), hash: "h".into() },
            Command::Claim {
                client: "c".into(),
                epoch: ep(1, 2),
                clean_start: true,
                expiry_interval: 3,
                will: Some(Box::new(will(4))),
            },
        ];
        let bytes = bincode::serialize(&cmds).unwrap();
        let back: Vec<Command> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(back, cmds);
    }

    #[test]
    fn apply_is_deterministic() {
        let cmds = [
            Command::Claim {
                client: "a".into(),
                epoch: ep(1, 1),
                clean_start: false,
                expiry_interval: 5,
                will: Some(Box::new(will(1))),
            },
            Command::Subscribe { client: "a".into(), epoch: ep(1, 1), subs: vec![("x/+".into(), sub(2))] },
            Command::NodeReset { node: 1, adopter: Some(3) },
            Command::Claim {
                client: "a".into(),
                epoch: ep(2, 1),
                clean_start: false,
                expiry_interval: 5,
                will: None,
            },
        ];
        let run = || {
            let mut s = ReplicatedState::default();
            let mut fx = Vec::new();
            let rs: Vec<_> = cmds.iter().cloned().map(|c| s.apply(42, c, &mut fx)).collect();
            (s, rs, fx)
        };
        assert_eq!(run(), run());
    }
}
