//! Unit tests of the deterministic apply: command by command, what the
//! state becomes and which changes come out.

use bytes::Bytes;
use starling_codec::{QoS, SubscriptionOptions};

use super::*;
use crate::auth::{Access, AclRule, Action};
use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::message::MessageProperties;
use crate::replicated::{packet_id_for, DurableTarget, QueueGroupState, QueueLimits};
use crate::topic::{TopicFilter, STORED_LIMITS};
use crate::will::WillSpec;

fn ep(node: u64, seq: u64) -> Epoch {
    Epoch { node: NodeId(node), seq }
}

fn c(s: &str) -> ClientId {
    ClientId::new(s)
}

fn f(s: &str) -> TopicFilter {
    TopicFilter::parse(s, &STORED_LIMITS).unwrap()
}

fn sub(qos: QoS) -> Subscription {
    Subscription { options: SubscriptionOptions::new(qos), id: None }
}

fn will(delay: u32) -> Box<WillSpec> {
    Box::new(crate::conformance::will("w", delay))
}

fn claim_cmd(client: &str, e: Epoch, clean: bool, expiry: u32, w: Option<Box<WillSpec>>) -> Command {
    Command::Claim { client: c(client), epoch: e, clean_start: clean, expiry_interval: expiry, will: w }
}

fn release_cmd(client: &str, e: Epoch, expiry: u32, w: WillOnRelease) -> Command {
    Command::Release { client: c(client), epoch: e, expiry_interval: expiry, will: w }
}

/// Applies `cmd` at `time`, returning its result and changes.
fn run(s: &mut ReplicatedState, time: u64, cmd: Command) -> (CommandResult, Vec<StateChange>) {
    let mut out = Vec::new();
    let r = s.apply(time, cmd, &mut out);
    (r, out)
}

fn wills(changes: &[StateChange]) -> Vec<&StoredMessage> {
    changes
        .iter()
        .filter_map(|ch| match ch {
            StateChange::WillPublished { message, .. } => Some(message),
            _ => None,
        })
        .collect()
}

#[test]
fn claim_resume_and_takeover() {
    let mut s = ReplicatedState::default();
    let (r, out) = run(&mut s, 1000, claim_cmd("c", ep(1, 1), false, 60, None));
    assert_eq!(r, CommandResult::Claimed { session_present: false, previous_owner: None });
    assert!(matches!(&out[0], StateChange::SessionClaimed { taken_over: None, .. }));
    run(
        &mut s,
        1000,
        Command::Subscribe { client: c("c"), epoch: ep(1, 1), subs: vec![(f("a/#"), sub(QoS::AtLeastOnce))] },
    );
    // Takeover from node 2 while connected on node 1: the routes follow.
    let (r, out) = run(&mut s, 1000, claim_cmd("c", ep(2, 5), false, 60, None));
    assert_eq!(r, CommandResult::Claimed { session_present: true, previous_owner: Some(NodeId(1)) });
    assert_eq!(
        out,
        vec![StateChange::SessionClaimed {
            client: c("c"),
            epoch: ep(2, 5),
            taken_over: Some(ep(1, 1)),
            filters: vec![f("a/#")],
            durable: Some(Incarnation(1)),
            queued: None,
        }]
    );
    // The old connection can no longer change the session.
    let (r, _) = run(&mut s, 1000, Command::Subscribe { client: c("c"), epoch: ep(1, 1), subs: vec![] });
    assert_eq!(r, CommandResult::NotOwner);
    let (r, _) = run(&mut s, 1000, release_cmd("c", ep(1, 1), 0, WillOnRelease::Discard));
    assert_eq!(r, CommandResult::NotOwner);
    assert!(s.session(&c("c")).is_some());
    // Clean start discards the subscriptions.
    let (r, out) = run(&mut s, 1000, claim_cmd("c", ep(3, 1), true, 0, None));
    assert_eq!(r, CommandResult::Claimed { session_present: false, previous_owner: Some(NodeId(2)) });
    assert!(out.contains(&StateChange::SubscriptionRemoved { client: c("c"), filter: f("a/#") }));
    assert!(out.contains(&StateChange::SessionEnded { client: c("c"), expired: false }));
    assert!(s.session(&c("c")).unwrap().subscriptions.is_empty());
}

#[test]
fn release_ends_clean_sessions_keeps_persistent_ones_and_a_tick_expires_them() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("clean", ep(1, 1), true, 0, None));
    run(&mut s, 1000, claim_cmd("keep", ep(1, 2), false, 10, None));
    let (r, _) = run(&mut s, 5000, release_cmd("clean", ep(1, 1), 0, WillOnRelease::Discard));
    assert_eq!(r, CommandResult::Released { ended: true });
    let (r, _) = run(&mut s, 5000, release_cmd("keep", ep(1, 2), 10, WillOnRelease::Discard));
    assert_eq!(r, CommandResult::Released { ended: false });
    assert!(s.session(&c("clean")).is_none());
    assert_eq!(s.session(&c("keep")).unwrap().disconnected_at_ms, Some(5000));
    assert_eq!(s.next_due_ms(), Some(15_000));
    // A tick before the expiry changes nothing; at it, the session ends.
    let (_, out) = run(&mut s, 14_999, Command::Tick);
    assert!(out.is_empty());
    let (_, out) = run(&mut s, 15_000, Command::Tick);
    assert_eq!(out, vec![StateChange::SessionEnded { client: c("keep"), expired: true }]);
    assert_eq!(s.next_due_ms(), None);
    // A session that never expires is never due.
    run(&mut s, 20_000, claim_cmd("forever", ep(1, 3), false, u32::MAX, None));
    run(&mut s, 20_000, release_cmd("forever", ep(1, 3), u32::MAX, WillOnRelease::Discard));
    assert_eq!(s.next_due_ms(), None);
}

#[test]
fn will_on_release_now_after_its_delay_or_never() {
    let mut s = ReplicatedState::default();
    // Published at once (no delay), with the release.
    run(&mut s, 1000, claim_cmd("a", ep(1, 1), true, 0, Some(will(0))));
    let (_, out) = run(&mut s, 2000, release_cmd("a", ep(1, 1), 0, WillOnRelease::Publish));
    assert_eq!(wills(&out).len(), 1);
    assert_eq!(wills(&out)[0].publisher, Some(c("a")));
    // Discarded on a normal disconnect.
    run(&mut s, 1000, claim_cmd("b", ep(1, 2), true, 0, Some(will(0))));
    let (_, out) = run(&mut s, 2000, release_cmd("b", ep(1, 2), 0, WillOnRelease::Discard));
    assert!(wills(&out).is_empty());
    // Delayed: due after min(delay, expiry), published by the tick.
    run(&mut s, 1000, claim_cmd("d", ep(1, 3), false, 60, Some(will(5))));
    let (_, out) = run(&mut s, 2000, release_cmd("d", ep(1, 3), 60, WillOnRelease::Publish));
    assert!(wills(&out).is_empty());
    assert_eq!(s.next_due_ms(), Some(7000));
    let (_, out) = run(&mut s, 7000, Command::Tick);
    assert_eq!(wills(&out).len(), 1);
    assert!(s.session(&c("d")).is_some(), "the session outlives its will");
    assert_eq!(s.next_due_ms(), Some(62_000), "what remains due is the expiry");
    // A session expiring before the will delay publishes it at its end.
    run(&mut s, 8000, claim_cmd("e", ep(1, 4), false, 2, Some(will(30))));
    run(&mut s, 8000, release_cmd("e", ep(1, 4), 2, WillOnRelease::Publish));
    let (_, out) = run(&mut s, 10_000, Command::Tick);
    assert_eq!(wills(&out).len(), 1);
    assert!(out.contains(&StateChange::SessionEnded { client: c("e"), expired: true }));
}

#[test]
fn resumption_cancels_a_delayed_will_and_a_clean_start_publishes_it() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("r", ep(1, 1), false, 60, Some(will(10))));
    run(&mut s, 1000, release_cmd("r", ep(1, 1), 60, WillOnRelease::Publish));
    let (_, out) = run(&mut s, 2000, claim_cmd("r", ep(2, 1), false, 60, None));
    assert!(wills(&out).is_empty());
    let (_, out) = run(&mut s, 20_000, Command::Tick);
    assert!(wills(&out).is_empty(), "cancelled by the resumption");

    run(&mut s, 1000, claim_cmd("x", ep(1, 2), false, 60, Some(will(10))));
    run(&mut s, 1000, release_cmd("x", ep(1, 2), 60, WillOnRelease::Publish));
    let (_, out) = run(&mut s, 2000, claim_cmd("x", ep(2, 2), true, 60, None));
    assert_eq!(wills(&out).len(), 1, "a clean start ends the session: its will goes out");
}

#[test]
fn takeover_publishes_the_old_connections_will_unless_resumed_within_its_delay() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("t", ep(1, 1), false, 60, Some(will(0))));
    let (_, out) = run(&mut s, 2000, claim_cmd("t", ep(2, 1), false, 60, None));
    assert_eq!(wills(&out).len(), 1, "no delay: published on takeover");
    run(&mut s, 1000, claim_cmd("u", ep(1, 2), false, 60, Some(will(5))));
    let (_, out) = run(&mut s, 2000, claim_cmd("u", ep(2, 2), false, 60, None));
    assert!(wills(&out).is_empty(), "resumed within the delay: cancelled");
    run(&mut s, 1000, claim_cmd("v", ep(1, 3), false, 60, Some(will(5))));
    let (_, out) = run(&mut s, 2000, claim_cmd("v", ep(2, 3), true, 60, None));
    assert_eq!(wills(&out).len(), 1, "clean start: the session ends, the will goes");
}

#[test]
fn node_reset_publishes_wills_ends_clean_sessions_and_moves_persistent_ones() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("a", ep(2, 1), true, 0, Some(will(0))));
    run(&mut s, 1000, claim_cmd("b", ep(2, 2), false, 60, Some(will(5))));
    run(
        &mut s,
        1000,
        Command::Subscribe { client: c("b"), epoch: ep(2, 2), subs: vec![(f("t"), sub(QoS::AtLeastOnce))] },
    );
    run(&mut s, 1000, claim_cmd("other", ep(1, 1), true, 0, None));
    let (_, out) = run(&mut s, 2000, Command::NodeReset { node: NodeId(2), adopter: Some(NodeId(1)) });
    // a: will now, session ended, its connection sent away.
    assert!(wills(&out).iter().any(|m| m.publisher == Some(c("a"))));
    assert!(out.contains(&StateChange::SessionAdopted {
        client: c("a"),
        owner: None,
        orphaned: Some(ep(2, 1)),
        filters: vec![],
        durable: None,
    }));
    assert!(s.session(&c("a")).is_none());
    // b: will scheduled, session adopted by node 1 with its routes.
    let b = s.session(&c("b")).unwrap();
    assert_eq!((b.owner, b.connected, b.will_due_ms), (Some(NodeId(1)), false, Some(7000)));
    assert!(out.contains(&StateChange::SessionAdopted {
        client: c("b"),
        owner: Some(NodeId(1)),
        orphaned: Some(ep(2, 2)),
        filters: vec![f("t")],
        durable: Some(s.session(&c("b")).unwrap().incarnation),
    }));
    assert!(s.session(&c("other")).unwrap().connected, "other nodes' sessions untouched");
    // The delayed will comes due.
    let (_, out) = run(&mut s, 7000, Command::Tick);
    assert_eq!(wills(&out).len(), 1);
    assert!(s.session(&c("b")).unwrap().will.is_none());
    // The orphaned connection's late release cannot undo the reset.
    let (r, _) = run(&mut s, 8000, release_cmd("b", ep(2, 2), 0, WillOnRelease::Discard));
    assert_eq!(r, CommandResult::NotOwner);
}

#[test]
fn retained_set_clear_expiry_on_replicated_time_and_retained_wills() {
    let mut s = ReplicatedState::default();
    let m = StoredMessage { topic: "r".into(), retain: true, ..stored(b"x") };
    run(
        &mut s,
        1000,
        Command::SetRetained { topic: "r".into(), message: Some(m.clone()), expires_in_ms: Some(500) },
    );
    assert_eq!(s.retained().get(&starling_codec::MqttStr::from("r")).unwrap().expires_at_ms, Some(1500));
    run(&mut s, 2000, Command::SetRetained { topic: "r".into(), message: None, expires_in_ms: None });
    assert!(s.retained().is_empty());
    // A zero-byte retained message clears too, whoever proposed it (found
    // by the `replicated` fuzz target: it was stored).
    let empty = StoredMessage { payload: Bytes::new(), ..m.clone() };
    run(&mut s, 2100, Command::SetRetained { topic: "r".into(), message: Some(m), expires_in_ms: None });
    run(&mut s, 2200, Command::SetRetained { topic: "r".into(), message: Some(empty), expires_in_ms: None });
    assert!(s.retained().is_empty(), "a zero-byte retained message clears");
    let mut w = will(0);
    w.retain = true;
    run(&mut s, 3000, claim_cmd("z", ep(1, 1), true, 0, Some(w)));
    run(&mut s, 4000, Command::NodeReset { node: NodeId(1), adopter: Some(NodeId(2)) });
    assert!(s.retained().contains_key(&starling_codec::MqttStr::from("w")), "a retained will is stored");
}

#[test]
fn replicated_time_never_goes_back() {
    let mut s = ReplicatedState::default();
    run(&mut s, 5000, Command::Tick);
    run(&mut s, 4000, claim_cmd("c", ep(1, 1), false, 1, None));
    run(&mut s, 4000, release_cmd("c", ep(1, 1), 1, WillOnRelease::Discard));
    assert_eq!(s.session(&c("c")).unwrap().disconnected_at_ms, Some(5000));
}

#[test]
fn users_and_rules() {
    let mut s = ReplicatedState::default();
    let (_, out) = run(&mut s, 1, Command::UserSet { name: "n".into(), hash: "h".into() });
    assert!(matches!(&out[0], StateChange::UsersChanged(u) if u.len() == 1));
    let rule = AclRule {
        access: Access::Allow,
        action: Action::Read,
        topic: "a/#".into(),
        user: None,
        client: None,
    };
    run(&mut s, 1, Command::AclAdd { rule: rule.clone(), position: None });
    run(&mut s, 1, Command::AclAdd { rule: AclRule { access: Access::Deny, ..rule }, position: Some(0) });
    assert_eq!(s.acl()[0].access, Access::Deny);
    assert_eq!(run(&mut s, 1, Command::AclRemove { index: 5 }).0, CommandResult::Removed(false));
    assert_eq!(run(&mut s, 1, Command::UserRemove { name: "n".into() }).0, CommandResult::Removed(true));
}

fn sample_commands() -> Vec<Command> {
    vec![
        claim_cmd("a", ep(1, 1), false, 5, Some(will(1))),
        Command::Subscribe { client: c("a"), epoch: ep(1, 1), subs: vec![(f("x/+"), sub(QoS::ExactlyOnce))] },
        Command::Subscribe {
            client: c("a"),
            epoch: ep(1, 1),
            subs: vec![(f("$share/g/y"), sub(QoS::AtMostOnce))],
        },
        Command::NodeReset { node: NodeId(1), adopter: Some(NodeId(3)) },
        claim_cmd("a", ep(2, 1), false, 5, None),
        release_cmd("a", ep(2, 1), 5, WillOnRelease::Publish),
        Command::Tick,
        Command::UserSet { name: "u".into(), hash: "h".into() },
    ]
}

#[test]
fn apply_is_deterministic() {
    let run_all = || {
        let mut s = ReplicatedState::default();
        let mut out = Vec::new();
        let rs: Vec<_> = sample_commands().into_iter().map(|cmd| s.apply(42, cmd, &mut out)).collect();
        (s, rs, out)
    };
    assert_eq!(run_all(), run_all());
}

/// The stored form (bincode, as the cluster stores entries and
/// snapshots) reads back equal, due index included; corrupt values are
/// refused.
#[test]
fn stored_form_round_trips_and_refuses_corrupt_values() {
    let mut s = ReplicatedState::default();
    let mut out = Vec::new();
    for (i, cmd) in sample_commands().into_iter().enumerate() {
        s.apply(1000 + i as u64, cmd, &mut out);
    }
    run(&mut s, 2000, claim_cmd("later", ep(4, 1), false, 30, None));
    run(&mut s, 2000, release_cmd("later", ep(4, 1), 30, WillOnRelease::Discard));
    let back: ReplicatedState = bincode::deserialize(&bincode::serialize(&s).unwrap()).unwrap();
    assert_eq!(back, s, "due index included");
    assert_eq!(back.next_due_ms(), Some(6005), "a's expiry, before later's");
    let cmds = sample_commands();
    let back: Vec<Command> = bincode::deserialize(&bincode::serialize(&cmds).unwrap()).unwrap();
    assert_eq!(back, cmds);
    // Subscription options with QoS 3, an invalid filter, a NUL in a
    // topic: errors, not values.
    assert!(bincode::deserialize::<Subscription>(&bincode::serialize(&(3u8, None::<u32>)).unwrap()).is_err());
    assert!(bincode::deserialize::<TopicFilter>(&bincode::serialize("a/#/b").unwrap()).is_err());
    assert!(bincode::deserialize::<starling_codec::MqttStr>(&bincode::serialize("a\0b").unwrap()).is_err());
}

fn stored(payload: &'static [u8]) -> StoredMessage {
    StoredMessage {
        topic: "q".into(),
        payload: Bytes::from_static(payload),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        publisher: None,
        expires_at_ms: None,
    }
}

/// A target of session life `life` (lives are numbered in claim order).
fn target(client: &str, life: u64, qos: QoS) -> DurableTarget {
    DurableTarget {
        client: c(client),
        incarnation: Incarnation(life),
        qos,
        retain: false,
        subscription_ids: vec![],
    }
}

fn enqueue(
    message: StoredMessage,
    targets: Vec<DurableTarget>,
    per_session: u32,
    total_bytes: u64,
) -> Command {
    Command::Enqueue {
        message: std::sync::Arc::new(message),
        expires_in_ms: Some(5000),
        targets,
        limits: QueueLimits { per_session, total_bytes },
    }
}

#[test]
fn durable_queues_store_trim_release_and_follow_the_session() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("p", ep(1, 1), false, 60, None));
    run(&mut s, 1000, claim_cmd("clean", ep(1, 2), true, 0, None));
    // Only persistent sessions get a copy; sequence numbers per session.
    let (r, out) = run(
        &mut s,
        2000,
        enqueue(
            stored(b"a"),
            vec![
                target("p", 1, QoS::AtLeastOnce),
                target("clean", 2, QoS::AtLeastOnce),
                target("gone", 3, QoS::AtLeastOnce),
            ],
            10,
            1 << 20,
        ),
    );
    assert_eq!(r, CommandResult::Enqueued { stored: 1, refused: false });
    assert!(
        matches!(&out[..], [StateChange::Queued { entry, incarnation: Incarnation(1), .. }] if entry.seq == 1 && entry.message.expires_at_ms == Some(7000))
    );
    run(&mut s, 2000, enqueue(stored(b"b"), vec![target("p", 1, QoS::ExactlyOnce)], 10, 1 << 20));
    assert_eq!(s.queues().messages(), 2);
    let bytes = s.queues().bytes();
    // PUBREC of the QoS 2 one is recorded; its PUBREL may then go.
    let life = Incarnation(1);
    let (_, out) =
        run(&mut s, 3000, Command::MarkReleased { client: c("p"), incarnation: life, seqs: vec![2, 1] });
    assert_eq!(
        out,
        vec![StateChange::Released { client: c("p"), incarnation: life, seqs: vec![2] }],
        "only QoS 2 releases"
    );
    // A takeover elsewhere carries the queue to the new owner.
    let (_, out) = run(&mut s, 4000, claim_cmd("p", ep(3, 1), false, 60, None));
    match &out[0] {
        StateChange::SessionClaimed { queued: Some(queued), durable: Some(Incarnation(1)), .. } => {
            assert_eq!(
                queued.iter().map(|e| (e.seq, e.released)).collect::<Vec<_>>(),
                vec![(1, false), (2, true)]
            );
        }
        other => panic!("{other:?}"),
    }
    // Acknowledged messages leave; the bytes follow.
    run(&mut s, 5000, Command::Trim { client: c("p"), incarnation: life, seqs: vec![1] });
    assert_eq!(s.queues().messages(), 1);
    assert!(s.queues().bytes() < bytes);
    // The session's end takes its queue.
    run(&mut s, 6000, claim_cmd("p", ep(3, 2), true, 0, None));
    assert_eq!((s.queues().messages(), s.queues().bytes()), (0, 0));
}

#[test]
fn a_message_routed_to_an_ended_session_life_is_not_queued_for_the_next() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("p", ep(1, 1), false, 60, None));
    // A clean start begins life 2; a publisher whose routes still named
    // life 1 must not fill the new session's queue.
    run(&mut s, 1000, claim_cmd("p", ep(1, 2), true, 60, None));
    assert_eq!(s.session(&c("p")).unwrap().incarnation, Incarnation(2));
    let (r, out) =
        run(&mut s, 2000, enqueue(stored(b"old"), vec![target("p", 1, QoS::AtLeastOnce)], 10, 1 << 20));
    assert_eq!((r, out), (CommandResult::Enqueued { stored: 0, refused: false }, vec![]));
    let (r, _) =
        run(&mut s, 2000, enqueue(stored(b"new"), vec![target("p", 2, QoS::AtLeastOnce)], 10, 1 << 20));
    assert_eq!(r, CommandResult::Enqueued { stored: 1, refused: false });
    // A trim of the old life leaves the new life's queue alone.
    run(&mut s, 3000, Command::Trim { client: c("p"), incarnation: Incarnation(1), seqs: vec![1] });
    assert_eq!(s.queues().messages(), 1);
}

#[test]
fn queues_apart_from_the_sessions_follow_the_newest_life() {
    // The rules a queue group applies without the session records.
    let mut g = QueueGroupState::default();
    let mut out = Vec::new();
    let mut put = |g: &mut QueueGroupState, life| {
        g.apply(1000, enqueue(stored(b"m"), vec![target("p", life, QoS::AtLeastOnce)], 10, 1 << 20), &mut out)
    };
    put(&mut g, 3);
    put(&mut g, 3);
    // An older life's message is ignored; a newer life replaces the queue.
    assert_eq!(put(&mut g, 2), CommandResult::Enqueued { stored: 0, refused: false });
    assert_eq!(g.queues().of(&c("p"), Incarnation(3)).map(|q| q.len()), Some(2));
    let before = g.queues().bytes();
    put(&mut g, 4);
    assert_eq!(g.queues().of(&c("p"), Incarnation(4)).map(|q| q.len()), Some(1));
    assert_eq!(g.queues().bytes(), before / 2, "the replaced queue's bytes are released");
    // A snapshot of the group reads back the same (the byte count derived).
    let back: QueueGroupState = bincode::deserialize(&bincode::serialize(&g).unwrap()).unwrap();
    assert_eq!((&back, back.queues().bytes()), (&g, g.queues().bytes()));
    // Dropping an older life keeps the newer queue; dropping its own ends it.
    let drop = |life| Command::DropQueues { lives: vec![(c("p"), Incarnation(life))] };
    g.apply(2000, drop(3), &mut out);
    assert_eq!(g.queues().messages(), 1);
    g.apply(2000, drop(4), &mut out);
    assert_eq!((g.queues().messages(), g.queues().bytes()), (0, 0));
    // Other commands change nothing here; time never goes back.
    assert_eq!(g.apply(500, Command::Tick, &mut out), CommandResult::Done);
    assert_eq!(g.time_ms(), 2000);
}

#[test]
fn durable_queue_bounds_per_session_and_in_bytes() {
    let mut s = ReplicatedState::default();
    run(&mut s, 1000, claim_cmd("p", ep(1, 1), false, 60, None));
    run(&mut s, 1000, claim_cmd("q", ep(1, 2), false, 60, None));
    for _ in 0..2 {
        run(&mut s, 1000, enqueue(stored(b"x"), vec![target("p", 1, QoS::AtLeastOnce)], 2, 1 << 20));
    }
    let (r, out) = run(
        &mut s,
        1000,
        enqueue(
            stored(b"x"),
            vec![target("p", 1, QoS::AtLeastOnce), target("q", 2, QoS::AtLeastOnce)],
            2,
            1 << 20,
        ),
    );
    assert_eq!(r, CommandResult::Enqueued { stored: 1, refused: false }, "p is full, q is not");
    assert!(out.iter().any(|ch| matches!(ch, StateChange::QueueFull { client, .. } if *client == c("p"))));
    // Over the byte quota nothing is stored, for anyone.
    let quota = s.queues().bytes() + 10;
    let (r, out) =
        run(&mut s, 1000, enqueue(stored(b"x"), vec![target("q", 2, QoS::AtLeastOnce)], 100, quota));
    assert_eq!(r, CommandResult::Enqueued { stored: 0, refused: true });
    assert!(out.is_empty());
    // Packet ids follow the sequence and cycle through 1..=65535.
    assert_eq!((packet_id_for(1), packet_id_for(65_535), packet_id_for(65_536)), (1, 65_535, 1));
}

/// Seed inputs for the `replicated` fuzz target (crates/fuzz): command
/// sequences with time steps, bincode-encoded as Raft entries carry them.
/// Always checked to round-trip; written to `$STARLING_FUZZ_SEEDS` when set
/// (`scripts/fuzz --seed`).
#[test]
fn fuzz_seeds_for_command_sequences() {
    let retained = |topic: &str, payload: &'static [u8], expiry: Option<u64>| Command::SetRetained {
        topic: topic.into(),
        message: Some(StoredMessage { topic: topic.into(), retain: true, ..stored(payload) }),
        expires_in_ms: expiry,
    };
    let seeds: Vec<Vec<(u16, Command)>> = vec![
        sample_commands().into_iter().map(|c| (100, c)).collect(),
        vec![
            (10, claim_cmd("p", ep(1, 1), false, 60, None)),
            (
                10,
                Command::Subscribe {
                    client: c("p"),
                    epoch: ep(1, 1),
                    subs: vec![(f("q"), sub(QoS::ExactlyOnce))],
                },
            ),
            (10, release_cmd("p", ep(1, 1), 60, WillOnRelease::Discard)),
            (10, enqueue(stored(b"1"), vec![target("p", 1, QoS::AtLeastOnce)], 10, 1 << 20)),
            (10, enqueue(stored(b"2"), vec![target("p", 1, QoS::ExactlyOnce)], 10, 1 << 20)),
            (10, claim_cmd("p", ep(2, 1), false, 60, None)),
            (10, Command::MarkReleased { client: c("p"), incarnation: Incarnation(1), seqs: vec![2] }),
            (10, Command::Trim { client: c("p"), incarnation: Incarnation(1), seqs: vec![1, 2] }),
            (6000, Command::Tick),
        ],
        vec![
            (1, retained("r/a", b"1", None)),
            (1, retained("r/b", b"2", Some(50))),
            (1, retained("r/a", b"3", None)),
            (100, Command::Tick),
            (0x8000 | 50, Command::SetRetained { topic: "r/a".into(), message: None, expires_in_ms: None }),
        ],
        vec![
            (1, claim_cmd("w", ep(1, 1), true, 0, Some(will(2)))),
            (1, Command::SetLiveness { node: NodeId(1), alive: false }),
            (1, Command::NodeReset { node: NodeId(1), adopter: None }),
            (3000, Command::Tick),
            (1, Command::Unsubscribe { client: c("w"), epoch: ep(1, 1), filters: vec![f("x")] }),
        ],
    ];
    let dir = std::env::var_os("STARLING_FUZZ_SEEDS");
    for (i, seed) in seeds.iter().enumerate() {
        let bytes = bincode::serialize(seed).unwrap();
        let back: Vec<(u16, Command)> = bincode::deserialize(&bytes).unwrap();
        assert_eq!(&back, seed);
        if let Some(dir) = &dir {
            std::fs::create_dir_all(dir).unwrap();
            std::fs::write(std::path::Path::new(dir).join(format!("seed-{i}")), bytes).unwrap();
        }
    }
}

/// A full durable queue's drop is counted by the node the change names
/// (the cluster's leader that appended the entry), whether or not it
/// holds the session; unnamed (a single process), by the node holding it.
#[test]
fn a_queue_full_drop_is_counted_by_the_node_it_names() {
    let auth = std::sync::Arc::new(crate::auth::AuthService::new(Default::default()));
    let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
    let limits = crate::session::SessionLimits { max_queued: 10, queue_qos0_offline: false };
    let local = LocalState::new(NodeId(1), auth, metrics.clone(), limits);
    let full = |counted_by| StateChange::QueueFull {
        client: c("away"),
        incarnation: Incarnation(1),
        qos: QoS::AtLeastOnce,
        counted_by,
    };
    let counted = || metrics.durable_queue_full.load(std::sync::atomic::Ordering::Relaxed);
    local.apply(0, vec![full(Some(NodeId(2)))]);
    assert_eq!(counted(), 0, "another node counts it");
    local.apply(0, vec![full(None)]);
    assert_eq!(counted(), 0, "no session held here");
    local.apply(0, vec![full(Some(NodeId(1)))]);
    assert_eq!(counted(), 1, "named: counted here without the session");
    assert_eq!(metrics.dropped_count(crate::metrics::DropReason::QueueFull, QoS::AtLeastOnce), 1);
}
