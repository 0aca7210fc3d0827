//! Promises 1–4 and 7: subscribe race, retained everywhere, takeover
//! across nodes, a persistent session moving with its queued messages,
//! shared subscriptions cluster-wide.

use std::collections::HashSet;
use std::time::Duration;

use starling_codec::{Packet, QoS, ReasonCode};
use starling_tests::connect_packet;

use crate::{disconnect_reason, Cluster, RawClient, V311, V5};

/// 1. Once SUBACK arrives, a publish on any other node right afterwards
/// is delivered (no asynchronous route propagation).
#[tokio::test(flavor = "multi_thread")]
async fn subscribe_then_publish_elsewhere_is_never_lost() {
    let c = Cluster::start(3).await;
    let (mut p2, _) = RawClient::connect(c.node(2).mqtt, V311, "race-pub2", true).await;
    let (mut p3, _) = RawClient::connect(c.node(3).mqtt, V311, "race-pub3", true).await;
    for round in 0..20u16 {
        let (mut s, _) = RawClient::connect(
            c.node(1 + u64::from(round % 3)).mqtt,
            V311,
            &format!("race-sub-{round}"),
            true,
        )
        .await;
        let topic = format!("race/{round}");
        s.subscribe(1, &topic, QoS::AtLeastOnce).await;
        // Immediately after SUBACK, publish on the other nodes.
        p2.publish(&topic, b"from2", QoS::AtLeastOnce, false, 1).await;
        p3.publish(&topic, b"from3", QoS::AtMostOnce, false, 0).await;
        let mut got = HashSet::new();
        for _ in 0..2 {
            got.insert(s.recv_publish().await.payload.to_vec());
        }
        assert_eq!(got, HashSet::from([b"from2".to_vec(), b"from3".to_vec()]), "round {round}");
        assert!(matches!(p2.recv().await, Some(Packet::Ack(_))));
        s.disconnect().await;
    }
}

/// A subscription is in force on the node that read the SUBSCRIBE before
/// its SUBACK, which waits for the cluster-wide commit: a message another
/// client publishes through that node in between is delivered (the Paho
/// 5.0 suite's test_request_response and test_subscribe_options do this).
/// With the leader frozen, the commit waits for a new election, so only a
/// subscription in force before it can deliver the message.
#[tokio::test(flavor = "multi_thread")]
async fn a_subscription_is_live_on_its_node_before_the_suback() {
    let c = Cluster::start(3).await;
    let leader = c.status(1)["leader"].as_u64().expect("a leader");
    let f = (1..=3).find(|n| *n != leader).expect("a follower");
    let (mut sub, _) = RawClient::connect(c.node(f).mqtt, V5, "early-sub", true).await;
    let (mut publisher, _) = RawClient::connect(c.node(f).mqtt, V5, "early-pub", true).await;
    c.freeze(leader);
    let filters = vec![("early/t".into(), starling_codec::SubscriptionOptions::new(QoS::AtLeastOnce))];
    sub.send(&Packet::Subscribe(starling_codec::Subscribe {
        packet_id: 7,
        properties: Default::default(),
        filters,
    }))
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    publisher.publish("early/t", b"before the suback", QoS::AtMostOnce, false, 0).await;
    let mut got = Vec::new();
    while got.len() < 2 {
        match sub.recv_within(Duration::from_secs(15)).await {
            Ok(Some(p)) => got.push(p),
            other => panic!("after {got:?}: {other:?}\n{}", c.logs()),
        }
    }
    c.thaw(leader);
    match &got[0] {
        Packet::SubAck(a) => assert_eq!((a.packet_id, a.reason_codes[0]), (7, ReasonCode(1))),
        other => panic!("expected the SUBACK first, got {other:?}"),
    }
    match &got[1] {
        Packet::Publish(p) => assert_eq!(&p.payload[..], b"before the suback"),
        other => panic!("expected the message, got {other:?}"),
    }
}

/// 2. The retained message set on one node is what a subscriber on any
/// node gets; a clear is never undone.
#[tokio::test(flavor = "multi_thread")]
async fn retained_latest_wins_everywhere_and_clears_stick() {
    let c = Cluster::start(3).await;
    let (mut p1, _) = RawClient::connect(c.node(1).mqtt, V311, "ret-p1", true).await;
    let (mut p3, _) = RawClient::connect(c.node(3).mqtt, V311, "ret-p3", true).await;
    p1.publish("status/door", b"open", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(p1.recv().await, Some(Packet::Ack(_))));
    p3.publish("status/door", b"closed", QoS::AtLeastOnce, true, 2).await;
    assert!(matches!(p3.recv().await, Some(Packet::Ack(_))));
    for n in 1..=3 {
        let (mut s, _) = RawClient::connect(c.node(n).mqtt, V311, &format!("ret-s{n}"), true).await;
        s.subscribe(1, "status/+", QoS::AtMostOnce).await;
        let m = s.recv_publish().await;
        assert_eq!((&m.payload[..], m.retain), (&b"closed"[..], true), "node {n}");
        s.expect_silence(Duration::from_millis(200)).await;
    }
    // Clear on node 1; no node ever delivers it again.
    p1.publish("status/door", b"", QoS::AtLeastOnce, true, 3).await;
    assert!(matches!(p1.recv().await, Some(Packet::Ack(_))));
    for n in 1..=3 {
        let (mut s, _) = RawClient::connect(c.node(n).mqtt, V311, &format!("ret-c{n}"), true).await;
        s.subscribe(1, "status/#", QoS::AtMostOnce).await;
        s.expect_silence(Duration::from_millis(300)).await;
    }
}

/// 3. A CONNECT with an id live on another node takes the session over:
/// the old connection gets 0x8E, the session continues on the new node.
#[tokio::test(flavor = "multi_thread")]
async fn takeover_across_nodes() {
    let c = Cluster::start(3).await;
    let mut conn = connect_packet(V5, "roaming", false);
    conn.properties.session_expiry_interval = Some(300);
    let (mut first, _) = RawClient::connect_with(c.node(1).mqtt, conn.clone()).await;
    first.subscribe(1, "roam/t", QoS::AtLeastOnce).await;
    let (mut second, ack) = RawClient::connect_with(c.node(2).mqtt, conn).await;
    assert!(ack.session_present);
    assert_eq!(disconnect_reason(&first.expect_closed().await), Some(ReasonCode::SESSION_TAKEN_OVER));
    let (mut p, _) = RawClient::connect(c.node(3).mqtt, V311, "roam-pub", true).await;
    p.publish("roam/t", b"to the new node", QoS::AtLeastOnce, false, 1).await;
    let m = second.recv_publish().await;
    assert_eq!(&m.payload[..], b"to the new node");
    second.puback(m.packet_id).await;
    // The old connection cannot come back as a second owner: reconnecting
    // it takes the session over again, closing `second`.
    let mut again = connect_packet(V5, "roaming", false);
    again.properties.session_expiry_interval = Some(300);
    let (_third, ack) = RawClient::connect_with(c.node(1).mqtt, again).await;
    assert!(ack.session_present);
    assert_eq!(disconnect_reason(&second.expect_closed().await), Some(ReasonCode::SESSION_TAKEN_OVER));
}

/// 4. A persistent session created on A, offline while B publishes, resumed
/// on C: session present, subscriptions intact, and the messages queued on
/// A move to C and arrive in order.
#[tokio::test(flavor = "multi_thread")]
async fn persistent_session_resumes_elsewhere_with_its_queue_in_order() {
    let c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(1).mqtt, V311, "traveller", false).await;
    s.subscribe(1, "mail/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut p, _) = RawClient::connect(c.node(2).mqtt, V311, "mailer", true).await;
    for i in 0..25u16 {
        p.publish("mail/box", format!("m{i}").as_bytes(), QoS::AtLeastOnce, false, i + 1).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    }
    let (mut s, ack) = RawClient::connect(c.node(3).mqtt, V311, "traveller", false).await;
    assert!(ack.session_present);
    for i in 0..25 {
        let m = s.recv_publish().await;
        assert_eq!(String::from_utf8_lossy(&m.payload), format!("m{i}"));
        s.puback(m.packet_id).await;
    }
    // And the subscription now lives on C.
    p.publish("mail/box", b"live", QoS::AtLeastOnce, false, 100).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"live");
}

/// 7. `$share/g/t` with members on different nodes: each message reaches
/// exactly one member cluster-wide.
#[tokio::test(flavor = "multi_thread")]
async fn shared_subscription_members_on_different_nodes() {
    let c = Cluster::start(3).await;
    let mut members = share_members(&c).await;
    dispatch_jobs(&c).await;
    let shares = collect_shares(&mut members).await;
    assert!(shares.iter().all(|s| !s.is_empty()), "every member gets a share");
    let all: Vec<&String> = shares.iter().flatten().collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!(all.len(), 60, "each message once");
    assert_eq!(unique.len(), 60, "no message lost");
}

/// One `$share/workers/jobs/+` member on each of nodes 1..=3.
async fn share_members(c: &Cluster) -> Vec<RawClient> {
    let mut members = Vec::new();
    for n in 1..=3 {
        let (mut m, _) = RawClient::connect(c.node(n).mqtt, V5, &format!("worker-{n}"), true).await;
        m.subscribe(1, "$share/workers/jobs/+", QoS::AtLeastOnce).await;
        members.push(m);
    }
    members
}

/// Publishes jobs "0".."59" through node 1, each acknowledged.
async fn dispatch_jobs(c: &Cluster) {
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "dispatcher", true).await;
    for i in 0..60u16 {
        p.publish("jobs/new", format!("{i}").as_bytes(), QoS::AtLeastOnce, false, i + 1).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    }
}

/// What each member received (and acknowledged) until it went quiet.
async fn collect_shares(members: &mut [RawClient]) -> Vec<Vec<String>> {
    let mut shares = Vec::new();
    for m in members.iter_mut() {
        let mut mine = Vec::new();
        while let Ok(Some(Packet::Publish(x))) = m.recv_within(Duration::from_millis(500)).await {
            mine.push(String::from_utf8_lossy(&x.payload).to_string());
            m.puback(x.packet_id).await;
        }
        shares.push(mine);
    }
    shares
}

/// 7b. A `$share` group whose member's node dies: once that node is
/// declared down, every message reaches one of the surviving members; none
/// is sent to the dead one.
#[tokio::test(flavor = "multi_thread")]
async fn shared_subscription_survives_a_member_node_dying() {
    let mut c = Cluster::start(3).await;
    let mut members = share_members(&c).await;
    c.kill9(3);
    let _dead = members.pop();
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        let s = c.status(1);
        let down =
            s["members"].as_array().is_some_and(|m| m.iter().any(|m| m["id"] == 3 && m["alive"] == false));
        if down {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "node 3 not declared down: {s}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    dispatch_jobs(&c).await;
    let all: Vec<String> = collect_shares(&mut members).await.into_iter().flatten().collect();
    let unique: HashSet<_> = all.iter().collect();
    assert_eq!((all.len(), unique.len()), (60, 60), "each message once, to a surviving member");
}
