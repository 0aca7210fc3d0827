//! The `StatePort` conformance suite: one set of scenarios, observed as
//! the broker sees them (session runtimes, route tables, retained views,
//! deliveries), run against every port implementation — the in-memory
//! port here, a one-node and a three-node Raft cluster in the cluster
//! crate's tests — so that the implementations cannot drift apart.
//!
//! A harness hands over the brokers of the system under test; scenarios
//! act on the first ("A") and the last ("B") and look at all of them. With
//! one broker, A and B are the same node. Each scenario uses its own
//! client ids and topics, so they can share one running cluster.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use starling_codec::{QoS, ReasonCode, SubscriptionOptions};

use crate::broker::Broker;
use crate::ids::{ClientId, Epoch};
use crate::message::{Message, MessageProperties};
use crate::ops::{Released, SessionClaim, SubscribeRequest};
use crate::replicated::{Command, CommandResult, WillOnRelease};
use crate::routes::{Matched, RouteTarget};
use crate::session::Session;
use crate::topic::{TopicFilter, TopicLimits};
use crate::will::WillSpec;

/// How long a scenario waits for a change to reach every node.
const EVENTUALLY: Duration = Duration::from_secs(10);

/// The system under test.
pub trait Harness {
    /// Every node's broker; at least one.
    fn brokers(&self) -> Vec<Broker>;
}

/// Runs every scenario, logging each, panicking on the first failure.
pub async fn run_all(h: &impl Harness) {
    let b = h.brokers();
    assert!(!b.is_empty(), "a harness has at least one broker");
    macro_rules! scenario {
        ($name:ident) => {
            eprintln!("conformance: {}", stringify!($name));
            $name(&b).await;
        };
    }
    scenario!(claim_release_and_resume);
    scenario!(takeover_closes_the_previous_connection);
    scenario!(subscription_is_in_force_everywhere_when_acknowledged);
    scenario!(unsubscribe_and_clean_start_remove_routes_everywhere);
    scenario!(retained_set_and_clear_reach_every_node);
    scenario!(will_of_a_lost_connection_reaches_every_node);
    scenario!(delayed_will_and_expiry_follow_replicated_time);
    scenario!(resumption_cancels_a_delayed_will);
    scenario!(users_and_rules_are_in_force_everywhere_when_acknowledged);
}

fn a(b: &[Broker]) -> &Broker {
    &b[0]
}

fn last(b: &[Broker]) -> &Broker {
    &b[b.len() - 1]
}

async fn eventually<F: Fn() -> bool>(what: &str, check: F) {
    let deadline = Instant::now() + EVENTUALLY;
    while !check() {
        assert!(Instant::now() < deadline, "not within {EVENTUALLY:?}: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Waits `d`, then asserts `check` held all along (sampled).
async fn stays<F: Fn() -> bool>(what: &str, d: Duration, check: F) {
    let end = Instant::now() + d;
    while Instant::now() < end {
        assert!(check(), "{what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A connection of `client` to `broker`, as the handshake makes one.
struct Conn {
    broker: Broker,
    client: ClientId,
    epoch: Epoch,
    runtime: Arc<Session>,
}

impl Conn {
    async fn connect(
        broker: &Broker,
        client: &str,
        clean: bool,
        expiry: u32,
        will: Option<WillSpec>,
    ) -> (Conn, bool) {
        let client = ClientId::new(client);
        let epoch = broker.next_epoch();
        let existing = broker.views().registry.get(&client).filter(|s| !clean && !s.is_ended());
        let runtime = existing.unwrap_or_else(|| broker.new_session(client.clone()));
        let claim = SessionClaim {
            client: client.clone(),
            epoch,
            clean_start: clean,
            expiry_interval: expiry,
            runtime: runtime.clone(),
            will: will.map(Box::new),
        };
        let present = broker.claim_session(claim).await.expect("claim");
        runtime.attach(epoch);
        (Conn { broker: broker.clone(), client, epoch, runtime }, present)
    }

    async fn subscribe(&self, filter: &str, qos: QoS) -> Vec<bool> {
        let filter = TopicFilter::parse(filter, &TopicLimits::default()).expect("filter");
        let req = SubscribeRequest { filter, options: SubscriptionOptions::new(qos), subscription_id: None };
        self.broker.subscribe(&self.client, self.epoch, vec![req]).await.expect("subscribe")
    }

    async fn close(self, expiry: u32, will: WillOnRelease) -> Released {
        self.runtime.detach(self.epoch);
        self.broker.release_session(&self.client, self.epoch, expiry, will).await.expect("release")
    }
}

fn message(topic: &str, payload: &'static [u8], qos: QoS, retain: bool) -> Arc<Message> {
    Arc::new(Message::new(topic.into(), Bytes::from_static(payload), qos, retain))
}

/// A QoS 1 will on `topic` with `delay` seconds of will delay.
pub(crate) fn will(topic: &str, delay: u32) -> WillSpec {
    WillSpec {
        topic: topic.into(),
        payload: Bytes::from_static(b"gone"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: MessageProperties::default(),
        message_expiry_interval: None,
        delay,
    }
}

/// Where `broker` routes a message on `topic` for `client`, if anywhere.
fn route_of(broker: &Broker, topic: &str, client: &ClientId) -> Option<RouteTarget> {
    let mut found = None;
    broker.views().routes.for_each_match(topic, |m| {
        if let Matched::Route(r) = m {
            if &r.client == client {
                found = Some(r.target.clone());
            }
        }
    });
    found
}

fn routes_to_owner(b: &[Broker], topic: &str, conn: &Conn) -> bool {
    b.iter().all(|x| match route_of(x, topic, &conn.client) {
        Some(RouteTarget::Local(s)) => x.node_id() == conn.broker.node_id() && Arc::ptr_eq(&s, &conn.runtime),
        Some(RouteTarget::Remote(n)) => x.node_id() != conn.broker.node_id() && n == conn.broker.node_id(),
        _ => false,
    })
}

fn session_known(broker: &Broker, client: &ClientId) -> bool {
    let mut known = false;
    broker.port().read(&mut |s| known = s.session(client).is_some());
    known
}

async fn claim_release_and_resume(b: &[Broker]) {
    let (c, present) = Conn::connect(a(b), "conf-resume", false, 60, None).await;
    assert!(!present, "a new session is not present");
    assert_eq!(c.close(60, WillOnRelease::Discard).await, Released::Kept);
    let (c, present) = Conn::connect(last(b), "conf-resume", false, 60, None).await;
    assert!(present, "the kept session resumes on any node");
    assert_eq!(c.close(0, WillOnRelease::Discard).await, Released::Ended);
    let id = ClientId::new("conf-resume");
    eventually("an ended session is gone everywhere", || b.iter().all(|x| !session_known(x, &id))).await;
    let (c, present) = Conn::connect(a(b), "conf-resume", false, 60, None).await;
    assert!(!present, "an ended session does not come back");
    c.close(0, WillOnRelease::Discard).await;
}

async fn takeover_closes_the_previous_connection(b: &[Broker]) {
    let (old, _) = Conn::connect(a(b), "conf-takeover", false, 60, None).await;
    let (new, present) = Conn::connect(last(b), "conf-takeover", false, 60, None).await;
    assert!(present);
    eventually("the old connection is told the session was taken over", || {
        old.runtime.kick_for(old.epoch).map(|k| k.reason) == Some(ReasonCode::SESSION_TAKEN_OVER)
    })
    .await;
    assert_eq!(old.close(60, WillOnRelease::Publish).await, Released::NotOwner, "the old connection lost it");
    let req = SubscribeRequest {
        filter: TopicFilter::parse("conf/x", &TopicLimits::default()).unwrap(),
        options: SubscriptionOptions::new(QoS::AtMostOnce),
        subscription_id: None,
    };
    assert!(b[0]
        .subscribe(&ClientId::new("conf-takeover"), Epoch { seq: 1, ..new.epoch }, vec![req])
        .await
        .is_err());
    new.close(0, WillOnRelease::Discard).await;
}

async fn subscription_is_in_force_everywhere_when_acknowledged(b: &[Broker]) {
    let (sub, _) = Conn::connect(a(b), "conf-sub", true, 0, None).await;
    assert_eq!(sub.subscribe("conf/sub/+", QoS::AtLeastOnce).await, vec![false]);
    // No waiting: once acknowledged, every node routes to the owner.
    assert!(routes_to_owner(b, "conf/sub/1", &sub), "SUBACK means routed on every node");
    assert_eq!(sub.subscribe("conf/sub/+", QoS::AtLeastOnce).await, vec![true], "re-subscribing replaces");
    // A publish on the other node reaches the subscriber.
    last(b).route(&message("conf/sub/1", b"hello", QoS::AtLeastOnce, false));
    eventually("a publish elsewhere is delivered", || sub.runtime.queue_len() == 1).await;
    sub.close(0, WillOnRelease::Discard).await;
}

async fn unsubscribe_and_clean_start_remove_routes_everywhere(b: &[Broker]) {
    let (s, _) = Conn::connect(a(b), "conf-unsub", false, 60, None).await;
    s.subscribe("conf/unsub/a", QoS::AtMostOnce).await;
    s.subscribe("conf/unsub/b", QoS::AtMostOnce).await;
    let existed = s
        .broker
        .unsubscribe(
            &s.client,
            s.epoch,
            vec![TopicFilter::parse("conf/unsub/a", &TopicLimits::default()).unwrap()],
        )
        .await
        .unwrap();
    assert_eq!(existed, vec![true]);
    eventually("unsubscribed everywhere", || {
        b.iter().all(|x| route_of(x, "conf/unsub/a", &s.client).is_none())
    })
    .await;
    assert!(routes_to_owner(b, "conf/unsub/b", &s));
    let (fresh, present) = Conn::connect(last(b), "conf-unsub", true, 60, None).await;
    assert!(!present, "clean start: no session present");
    eventually("a clean start drops the old subscriptions everywhere", || {
        b.iter().all(|x| route_of(x, "conf/unsub/b", &fresh.client).is_none())
    })
    .await;
    assert!(last(b).subscription_filters(&fresh.client).is_empty());
    fresh.close(0, WillOnRelease::Discard).await;
}

async fn retained_set_and_clear_reach_every_node(b: &[Broker]) {
    let m = message("conf/retained", b"v1", QoS::AtLeastOnce, true);
    a(b).retain(&m).await.unwrap();
    assert_eq!(a(b).retained_matching("conf/retained").len(), 1, "stored here when acknowledged");
    let v2 = message("conf/retained", b"v2", QoS::AtLeastOnce, true);
    last(b).retain(&v2).await.unwrap();
    eventually("the latest retained message everywhere", || {
        b.iter().all(|x| {
            x.retained_matching("conf/retained").iter().map(|m| m.payload.clone()).eq([v2.payload.clone()])
        })
    })
    .await;
    a(b).retain(&message("conf/retained", b"", QoS::AtMostOnce, true)).await.unwrap();
    eventually("a clear sticks everywhere", || {
        b.iter().all(|x| x.retained_matching("conf/retained").is_empty())
    })
    .await;
}

async fn subscriber(b: &[Broker], client: &str, filter: &str) -> Conn {
    let (s, _) = Conn::connect(last(b), client, true, 0, None).await;
    s.subscribe(filter, QoS::AtLeastOnce).await;
    s
}

async fn will_of_a_lost_connection_reaches_every_node(b: &[Broker]) {
    let watcher = subscriber(b, "conf-will-watch", "conf/will/lost").await;
    let (w, _) = Conn::connect(a(b), "conf-will", true, 0, Some(will("conf/will/lost", 0))).await;
    w.close(0, WillOnRelease::Publish).await;
    eventually("the will is delivered", || watcher.runtime.queue_len() == 1).await;
    let (w, _) = Conn::connect(a(b), "conf-will", true, 0, Some(will("conf/will/lost", 0))).await;
    w.close(0, WillOnRelease::Discard).await;
    stays("a normal disconnect sends no will", Duration::from_millis(500), || {
        watcher.runtime.queue_len() == 1
    })
    .await;
    watcher.close(0, WillOnRelease::Discard).await;
}

async fn delayed_will_and_expiry_follow_replicated_time(b: &[Broker]) {
    let watcher = subscriber(b, "conf-delay-watch", "conf/will/delayed").await;
    let (w, _) = Conn::connect(a(b), "conf-delay", false, 2, Some(will("conf/will/delayed", 1))).await;
    let released = Instant::now();
    w.close(2, WillOnRelease::Publish).await;
    stays("not before its delay", Duration::from_millis(700), || watcher.runtime.queue_len() == 0).await;
    eventually("after its delay", || watcher.runtime.queue_len() == 1).await;
    assert!(released.elapsed() >= Duration::from_secs(1));
    let id = ClientId::new("conf-delay");
    eventually("the session expires everywhere", || b.iter().all(|x| !session_known(x, &id))).await;
    assert!(released.elapsed() >= Duration::from_secs(2), "not before its expiry");
    watcher.close(0, WillOnRelease::Discard).await;
}

async fn resumption_cancels_a_delayed_will(b: &[Broker]) {
    let watcher = subscriber(b, "conf-cancel-watch", "conf/will/cancelled").await;
    let (w, _) = Conn::connect(a(b), "conf-cancel", false, 60, Some(will("conf/will/cancelled", 1))).await;
    w.close(60, WillOnRelease::Publish).await;
    let (w, present) = Conn::connect(last(b), "conf-cancel", false, 60, None).await;
    assert!(present);
    stays("a resumed session's delayed will never goes out", Duration::from_millis(1800), || {
        watcher.runtime.queue_len() == 0
    })
    .await;
    w.close(0, WillOnRelease::Discard).await;
    watcher.close(0, WillOnRelease::Discard).await;
}

async fn users_and_rules_are_in_force_everywhere_when_acknowledged(b: &[Broker]) {
    let set = Command::UserSet { name: "conf-user".into(), hash: "$argon2id$x".into() };
    assert_eq!(a(b).port().commit(set).await.unwrap(), CommandResult::Done);
    for x in b {
        let mut has = false;
        x.port().read(&mut |s| has = s.users().contains_key("conf-user"));
        assert!(has, "node {} knows the user when acknowledged", x.node_id());
    }
    let removed = last(b).port().commit(Command::UserRemove { name: "conf-user".into() }).await.unwrap();
    assert_eq!(removed, CommandResult::Removed(true));
}
