//! Promise 5 for persistent sessions: a QoS 1/2 message the broker
//! acknowledged is stored on a majority, so it reaches its subscriber
//! after the node its session was on is killed, after a handoff, and after
//! the whole cluster restarts — in order, duplicates only at QoS 1 with
//! DUP set, QoS 2 exactly once, and its expiry counted down throughout.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use starling_codec::{Ack, AckKind, Packet, QoS};
use starling_tests::connect_packet;

use crate::{Cluster, RawClient, V311, V5};

fn ack(kind: AckKind, id: u16) -> Packet {
    Packet::Ack(Ack::new(kind, id))
}

/// Publishes `n` QoS `qos` messages "0".."n-1" on `topic`, waiting for
/// each acknowledgement (PUBACK, or PUBREC then PUBCOMP).
async fn publish_acknowledged(p: &mut RawClient, topic: &str, n: u32, qos: QoS) {
    for i in 0..n {
        let id = (i % 60_000 + 1) as u16;
        p.publish(topic, i.to_string().as_bytes(), qos, false, id).await;
        match (qos, p.recv().await) {
            (QoS::AtLeastOnce, Some(Packet::Ack(a))) if a.kind == AckKind::PubAck && a.packet_id == id => {}
            (QoS::ExactlyOnce, Some(Packet::Ack(a))) if a.kind == AckKind::PubRec && a.packet_id == id => {
                assert!(!a.reason.is_error(), "PUBREC {a:?}");
                p.send(&ack(AckKind::PubRel, id)).await;
                assert_eq!(p.recv().await, Some(ack(AckKind::PubComp, id)));
            }
            (_, other) => panic!("message {i}: {other:?}"),
        }
    }
}

/// A QoS 2 receiver with the state a real client keeps across
/// reconnections: packet ids received and not yet released. Delivers a
/// message once, on its first PUBLISH.
#[derive(Default)]
struct Qos2Receiver {
    pending: HashSet<u16>,
    delivered: Vec<u32>,
}

impl Qos2Receiver {
    /// Handles one packet; PUBCOMP for a PUBREL unless `hold_pubcomp`.
    async fn handle(&mut self, c: &mut RawClient, p: Packet, hold_pubcomp: bool) {
        match p {
            Packet::Publish(m) => {
                assert_eq!(m.qos, QoS::ExactlyOnce);
                if self.pending.insert(m.packet_id) {
                    self.delivered.push(std::str::from_utf8(&m.payload).unwrap().parse().unwrap());
                } else {
                    assert!(m.dup, "a repeated PUBLISH carries DUP");
                }
                c.send(&ack(AckKind::PubRec, m.packet_id)).await;
            }
            Packet::Ack(a) if a.kind == AckKind::PubRel => {
                self.pending.remove(&a.packet_id);
                if !hold_pubcomp {
                    c.send(&ack(AckKind::PubComp, a.packet_id)).await;
                }
            }
            other => panic!("{other:?}"),
        }
    }
}

/// Receives QoS 1 messages until `total` distinct ones arrived,
/// acknowledging each (e.g. "0".."n-1"). A payload is "i" or "tag-i": per tag, the first
/// arrival of each i comes in order 0, 1, 2, ..., and every repeat has
/// DUP set.
async fn receive_qos1_in_order(s: &mut RawClient, total: u32) {
    let mut next: HashMap<String, u32> = HashMap::new();
    let mut received = 0u32;
    let deadline = Instant::now() + Duration::from_secs(60);
    while received < total {
        let left = deadline.saturating_duration_since(Instant::now());
        let p = s.recv_within(left).await.expect("messages in time").expect("connection");
        let Packet::Publish(m) = p else { panic!("{p:?}") };
        let text = std::str::from_utf8(&m.payload).unwrap();
        let (tag, i) = text.split_once('-').unwrap_or(("", text));
        let i: u32 = i.parse().unwrap();
        let expected = next.entry(tag.to_string()).or_default();
        if i < *expected {
            assert!(m.dup, "duplicate {text} without DUP");
        } else {
            assert_eq!(i, *expected, "in publisher order ({text})");
            *expected += 1;
            received += 1;
        }
        s.puback(m.packet_id).await;
    }
}

/// Waits until `node` accepts CONNECT again after a failover.
async fn reconnect(c: &Cluster, node: u64, connect: starling_codec::Connect) -> (RawClient, bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut cl = RawClient::tcp(c.node(node).mqtt, connect.version).await;
        let ack = cl.handshake(connect.clone()).await;
        if ack.code == 0 {
            return (cl, ack.session_present);
        }
        assert!(Instant::now() < deadline, "node {node} kept refusing CONNECT: {:#x}", ack.code);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The scenario of the durable-sessions issue: 1,000 QoS 1 messages
/// acknowledged while the subscriber was away, then `kill -9` of the node
/// that held its session; all of them arrive on another node, in order.
#[tokio::test(flavor = "multi_thread")]
async fn qos1_messages_outlive_the_node_that_held_the_session() {
    let mut c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(2).mqtt, V311, "dur-sub", false).await;
    s.subscribe(1, "dur/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "dur-pub", true).await;
    publish_acknowledged(&mut p, "dur/t", 1000, QoS::AtLeastOnce).await;
    c.kill9(2);
    let (mut s, present) = reconnect(&c, 3, connect_packet(V311, "dur-sub", false)).await;
    assert!(present, "session present after its node died");
    receive_qos1_in_order(&mut s, 1000).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

/// QoS 2 exactly once across a failover: the subscriber is mid-way
/// through (some messages released and not completed, some received and
/// not released) when its node is killed; it resumes on another node.
#[tokio::test(flavor = "multi_thread")]
async fn qos2_is_exactly_once_across_a_failover() {
    let mut c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(2).mqtt, V311, "dur2-sub", false).await;
    s.subscribe(1, "dur2/t", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "dur2-pub", true).await;
    publish_acknowledged(&mut p, "dur2/t", 200, QoS::ExactlyOnce).await;
    // Receive the first messages on node 2, holding back PUBCOMPs.
    let (mut s, _) = RawClient::connect(c.node(2).mqtt, V311, "dur2-sub", false).await;
    let mut r = Qos2Receiver::default();
    while r.delivered.len() < 20 {
        let pkt = s.recv_within(Duration::from_secs(10)).await.expect("in time").expect("open");
        r.handle(&mut s, pkt, true).await;
    }
    // Let some releases commit and PUBRELs arrive, then kill the node.
    let settle = Instant::now() + Duration::from_millis(300);
    while let Ok(Some(pkt)) = s.recv_within(settle.saturating_duration_since(Instant::now())).await {
        r.handle(&mut s, pkt, true).await;
    }
    c.kill9(2);
    drop(s);
    let (mut s, present) = reconnect(&c, 3, connect_packet(V311, "dur2-sub", false)).await;
    assert!(present);
    let deadline = Instant::now() + Duration::from_secs(60);
    while r.delivered.len() < 200 || !r.pending.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        let pkt = s.recv_within(left).await.expect("the rest in time").expect("open");
        r.handle(&mut s, pkt, false).await;
    }
    assert_eq!(r.delivered, (0..200).collect::<Vec<u32>>(), "each message exactly once, in order");
    s.expect_silence(Duration::from_millis(300)).await;
}

/// The expiry bug of the issue: a message with a 1 s expiry queued for an
/// offline session is not delivered 2 s later on another node; one with a
/// longer expiry is, with the time it spent in the cluster deducted.
#[tokio::test(flavor = "multi_thread")]
async fn message_expiry_counts_down_across_a_handoff() {
    let c = Cluster::start(3).await;
    let mut conn = connect_packet(V5, "exp-sub", false);
    conn.properties.session_expiry_interval = Some(300);
    let (mut s, _) = RawClient::connect_with(c.node(2).mqtt, conn.clone()).await;
    s.subscribe(1, "exp/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V5, "exp-pub", true).await;
    for (payload, expiry, id) in [(&b"short"[..], 1u32, 1u16), (&b"long"[..], 30, 2)] {
        let mut m = starling_codec::Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: false,
            topic: "exp/t".into(),
            packet_id: id,
            properties: Default::default(),
            payload: bytes::Bytes::copy_from_slice(payload),
        };
        m.properties.message_expiry_interval = Some(expiry);
        p.send(&Packet::Publish(m)).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (mut s, connack) = RawClient::connect_with(c.node(3).mqtt, conn).await;
    assert!(connack.session_present);
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], b"long", "the 1 s message expired in the cluster");
    let left = m.properties.message_expiry_interval.expect("expiry travels");
    assert!((1..=28).contains(&left), "about 2 s deducted from 30: {left}");
    s.puback(m.packet_id).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

/// A persistent session's durable queue holds `max_queued_messages`: the
/// oldest are kept, the rest dropped for that session and counted once in
/// the cluster, by the queue group's leader that appended them — not by
/// the node holding the session, which here is another node.
#[tokio::test(flavor = "multi_thread")]
async fn a_full_durable_queue_keeps_the_oldest_and_counts_the_rest() {
    let c = Cluster::start_with(3, &["--set", "mqtt.max_queued_messages=5"]).await;
    wait_queue_group_voters(&c, 1, 3).await;
    let (_, leader) = agreed_leaders(&c).await;
    let holder = if leader == 2 { 3 } else { 2 };
    let (mut s, _) = RawClient::connect(c.node(holder).mqtt, V311, "full-dur", false).await;
    s.subscribe(1, "full/dur", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "full-pub", true).await;
    publish_acknowledged(&mut p, "full/dur", 8, QoS::AtLeastOnce).await;
    // Acknowledged means committed on a majority; every node counts what
    // it applies, so wait until all three applied everything committed.
    let mut committed = 0.0f64;
    for id in 1..=3 {
        committed = committed.max(c.metric(id, "starling_queue_group_commit_index").await);
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    for id in 1..=3 {
        while c.metric(id, "starling_queue_group_applied_index").await < committed {
            assert!(Instant::now() < deadline, "node {id} did not apply the durable queues' entries");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    let mut counts = Vec::new();
    for id in 1..=3 {
        counts.push(c.metric(id, "starling_durable_queue_full_total").await);
    }
    assert_eq!(counts.iter().sum::<f64>(), 3.0, "counted once in the cluster: {counts:?}");
    // Unless leadership moved meanwhile (then two leaders counted a part
    // each), all three are on the leader, none on the session's node.
    if agreed_leaders(&c).await.1 == leader {
        let mut expected = vec![0.0; 3];
        expected[leader as usize - 1] = 3.0;
        assert_eq!(counts, expected, "counted by the queue group's leader (node {leader})");
        let dropped = "starling_messages_dropped_total{reason=\"queue_full\",qos=\"1\"}";
        assert_eq!(c.metric(leader, dropped).await, 3.0);
    }
    let (mut s, _) = RawClient::connect(c.node(3).mqtt, V311, "full-dur", false).await;
    receive_qos1_in_order(&mut s, 5).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

/// Every node stopped and started again: what was queued is still there.
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restart_keeps_queued_messages() {
    let mut c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(3).mqtt, V311, "restart-sub", false).await;
    s.subscribe(1, "restart/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "restart-pub", true).await;
    publish_acknowledged(&mut p, "restart/t", 100, QoS::AtLeastOnce).await;
    drop(p);
    for id in 1..=3 {
        c.kill9(id);
    }
    for id in 1..=3 {
        c.launch(id, None);
    }
    for id in 1..=3 {
        c.wait_ready(id).await;
    }
    let (mut s, present) = reconnect(&c, 1, connect_packet(V311, "restart-sub", false)).await;
    assert!(present);
    receive_qos1_in_order(&mut s, 100).await;
}

/// Messages sent to a connected subscriber but not yet acknowledged are
/// durable too: the subscriber holds its PUBACKs, its node is killed, its
/// disk is lost and the node removed with `cluster remove --force`; the
/// unacknowledged messages come again (with DUP) on another node, followed
/// by the ones still queued.
#[tokio::test(flavor = "multi_thread")]
async fn sent_unacknowledged_messages_survive_a_lost_node() {
    let mut c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(2).mqtt, V311, "lost-sub", false).await;
    s.subscribe(1, "lost/t", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "lost-pub", true).await;
    publish_acknowledged(&mut p, "lost/t", 300, QoS::AtLeastOnce).await;
    // Take the first 20 (within the inflight window) and acknowledge none.
    for i in 0..20u32 {
        let m = s.recv_publish().await;
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), i.to_string());
    }
    c.kill9(2);
    drop(s);
    std::fs::remove_dir_all(&c.node(2).dir).unwrap();
    let (ok, out, err) = c.cli(1, &["remove", "2", "--force"]);
    assert!(ok, "remove failed: {out}{err}");
    c.wait_members(2).await;
    let (mut s, present) = reconnect(&c, 3, connect_packet(V311, "lost-sub", false)).await;
    assert!(present, "session present after its node was removed");
    for i in 0..300u32 {
        let m = s.recv_publish().await;
        assert_eq!(std::str::from_utf8(&m.payload).unwrap(), i.to_string(), "in publisher order");
        if i < 20 {
            assert!(m.dup, "message {i} was sent before and comes again with DUP");
        }
        s.puback(m.packet_id).await;
    }
    s.expect_silence(Duration::from_millis(300)).await;
}

/// Publishes `n` QoS 1 messages "`tag`-0".."`tag`-(n-1)" with up to
/// `window` unacknowledged at a time, until every one is acknowledged.
async fn publish_windowed(p: &mut RawClient, topic: &str, tag: &str, n: u32, window: u32) {
    let (mut sent, mut acked) = (0u32, 0u32);
    while acked < n {
        while sent < n && sent - acked < window {
            let id = (sent % 60_000 + 1) as u16;
            p.publish(topic, format!("{tag}-{sent}").as_bytes(), QoS::AtLeastOnce, false, id).await;
            sent += 1;
        }
        match p.recv().await {
            Some(Packet::Ack(a)) if a.kind == AckKind::PubAck && !a.reason.is_error() => acked += 1,
            other => panic!("{tag}: after {acked} acknowledgements: {other:?}"),
        }
    }
}

/// Publishers on a follower with many messages in flight: their durable
/// groups go to the leader on the follower's ordered submit stream,
/// several at a time, and every acknowledged message reaches the
/// subscriber, in each publisher's order.
#[tokio::test(flavor = "multi_thread")]
async fn durable_publishes_through_a_follower_arrive_complete_and_in_order() {
    const N: u32 = 3000;
    let c = Cluster::start_with(3, &["--set", "mqtt.max_queued_messages=100000"]).await;
    let leader = c.status(1)["leader"].as_u64().expect("a leader");
    let mut followers = (1..=3u64).filter(|&n| n != leader);
    let (via, sub_node) = (followers.next().unwrap(), followers.next().unwrap());
    let (mut s, _) = RawClient::connect(c.node(sub_node).mqtt, V311, "order-sub", false).await;
    s.subscribe(1, "order/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let before = c.metric(via, "starling_durable_submit_streamed_total").await;
    let publishers = ["a", "b", "c"].map(|tag| {
        let addr = c.node(via).mqtt;
        tokio::spawn(async move {
            let (mut p, _) = RawClient::connect(addr, V311, &format!("order-pub-{tag}"), true).await;
            publish_windowed(&mut p, &format!("order/{tag}"), tag, N, 200).await;
        })
    });
    for p in publishers {
        p.await.unwrap();
    }
    let streamed = c.metric(via, "starling_durable_submit_streamed_total").await - before;
    assert!(streamed > 0.0, "the follower used its submit stream");
    let (mut s, ack) = RawClient::connect(c.node(sub_node).mqtt, V311, "order-sub", false).await;
    assert!(ack.session_present);
    receive_qos1_in_order(&mut s, 3 * N).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

/// Waits until `node` counts `want` voters in the durable queues' group.
async fn wait_queue_group_voters(c: &Cluster, node: u64, want: u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    c.wait_metric(node, "starling_queue_group_voters", want as f64, deadline).await;
}

/// The durable queues have a Raft group of their own, whose members
/// follow the cluster's: a node added with the CLI becomes one of them,
/// nodes removed with `--force` leave it. Messages acknowledged while the
/// first three nodes were the majority survive both of them being killed
/// and removed, and reach the subscriber on the node added last.
#[tokio::test(flavor = "multi_thread")]
async fn the_queue_group_follows_membership_and_keeps_what_it_acknowledged() {
    let mut c = Cluster::start(3).await;
    wait_queue_group_voters(&c, 1, 3).await;
    c.add_node(4, vec!["--no-bootstrap".into()]);
    c.launch(4, None);
    let deadline = Instant::now() + Duration::from_secs(30);
    while starling_tests::http_get_within(c.node(4).http, "/health/live", Duration::from_secs(1)).await.0
        != 200
    {
        assert!(Instant::now() < deadline, "node 4 never answered /health/live");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let grpc4 = c.node(4).grpc.to_string();
    let (ok, out, err) = c.cli(2, &["add", "4", &grpc4]);
    assert!(ok, "add failed: {out}{err}");
    c.wait_ready(4).await;
    c.wait_members(4).await;
    wait_queue_group_voters(&c, 4, 4).await;

    let (mut s, _) = RawClient::connect(c.node(4).mqtt, V311, "grow-sub", false).await;
    s.subscribe(1, "grow/q", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "grow-pub", true).await;
    publish_acknowledged(&mut p, "grow/q", 500, QoS::AtLeastOnce).await;

    for gone in [1, 2] {
        c.kill9(gone);
        let survivor = if gone == 1 { 3 } else { 4 };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (ok, out, err) = c.cli(survivor, &["remove", &gone.to_string(), "--force"]);
            if ok {
                break;
            }
            assert!(Instant::now() < deadline, "remove {gone} failed: {out}{err}");
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        c.wait_members_seen_by(survivor, 4 - gone as usize).await;
    }
    wait_queue_group_voters(&c, 4, 2).await;

    let (mut s, present) = reconnect(&c, 4, connect_packet(V311, "grow-sub", false)).await;
    assert!(present, "session present");
    receive_qos1_in_order(&mut s, 500).await;
    // The two remaining members still store new durable messages.
    let (mut p, _) = RawClient::connect(c.node(3).mqtt, V311, "grow-pub2", true).await;
    p.publish("grow/q", b"late", QoS::AtLeastOnce, false, 1).await;
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"late");
    s.puback(got.packet_id).await;
}

/// The leaders of the main group and of the durable queues' group, as
/// node `observer` sees them (0: none).
async fn leaders(c: &Cluster, observer: u64) -> (u64, u64) {
    let (_, body) =
        starling_tests::http_get_within(c.node(observer).http, "/metrics", Duration::from_secs(2)).await;
    let get = |name| starling_tests::metric_value(&body, name).unwrap_or(0.0) as u64;
    (get("starling_raft_leader"), get("starling_queue_group_leader"))
}

/// The two groups' leaders once all three nodes agree on them and both
/// groups have one.
async fn agreed_leaders(c: &Cluster) -> (u64, u64) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let seen = [leaders(c, 1).await, leaders(c, 2).await, leaders(c, 3).await];
        let (main, queues) = seen[0];
        if seen.iter().all(|s| *s == seen[0]) && main != 0 && queues != 0 {
            return (main, queues);
        }
        assert!(Instant::now() < deadline, "no agreed leaders: {seen:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A three-node cluster whose two groups have different leaders:
/// (cluster, main group's leader, queue group's leader).
async fn split_cluster() -> (Cluster, u64, u64) {
    let c = Cluster::start(3).await;
    wait_queue_group_voters(&c, 1, 3).await;
    let (main, queues) = split_leaders(&c).await;
    (c, main, queues)
}

/// Moves the two groups' leaderships apart (they start on the node that
/// bootstrapped both, and a failover tends to elect one node for both):
/// freezes the node leading both until one group has elected another
/// leader, then thaws it at once, so that it may still lead the other
/// group; again until two different nodes lead, as every node sees.
/// Returns (main group's leader, queue group's leader).
async fn split_leaders(c: &Cluster) -> (u64, u64) {
    for _ in 0..30 {
        let (main, queues) = agreed_leaders(c).await;
        if main != queues {
            return (main, queues);
        }
        c.freeze(main);
        let observer = (1..=3).find(|n| *n != main).unwrap();
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (m, q) = leaders(c, observer).await;
            if (m != 0 && m != main) || (q != 0 && q != main) {
                break;
            }
            assert!(Instant::now() < deadline, "no new leader while node {main} was frozen");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        c.thaw(main);
        c.wait_ready(main).await;
        // Let the elections the freeze started settle.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    panic!("the two groups kept electing the same leader");
}

/// Persistent subscriber offline on node `stays`, 200 QoS 1 messages
/// acknowledged, then `cluster leave` on node `leaving` (of three): the
/// leave succeeds, two members remain and the durable queues' group
/// follows (two voters, a leader other than `leaving`); the messages
/// acknowledged before all arrive, and the two members store new ones.
async fn leave_keeps_the_durable_queues(c: &Cluster, leaving: u64, stays: u64) {
    let (mut s, _) = RawClient::connect(c.node(stays).mqtt, V311, "leave-sub", false).await;
    s.subscribe(1, "leave/q", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(stays).mqtt, V311, "leave-pub", true).await;
    publish_acknowledged(&mut p, "leave/q", 200, QoS::AtLeastOnce).await;

    let (ok, out, err) = tokio::task::block_in_place(|| c.cli(leaving, &["leave"]));
    assert!(ok, "leave of node {leaving} failed: {out}{err}\n{}", c.logs());
    c.wait_members_seen_by(stays, 2).await;
    wait_queue_group_voters(c, stays, 2).await;
    let (_, queues) = leaders(c, stays).await;
    assert!(queues != 0 && queues != leaving, "queue group's leader after the leave: {queues}");

    let (mut s, present) = reconnect(c, stays, connect_packet(V311, "leave-sub", false)).await;
    assert!(present, "session present");
    receive_qos1_in_order(&mut s, 200).await;
    p.publish("leave/q", b"after", QoS::AtLeastOnce, false, 1).await;
    assert!(
        matches!(p.recv().await, Some(Packet::Ack(a)) if a.kind == AckKind::PubAck && !a.reason.is_error())
    );
    let got = s.recv_publish().await;
    assert_eq!(&got.payload[..], b"after");
    s.puback(got.packet_id).await;
}

/// `cluster leave` on the node that leads the durable queues' group but
/// not the cluster: a removed node is never told its removal, so it would
/// keep leading the queue group with itself a member; the members refuse
/// its queue-group messages and elect another leader, which follows.
#[tokio::test(flavor = "multi_thread")]
async fn leave_of_the_queue_groups_leader_completes_and_the_group_follows() {
    let (c, main, queues) = split_cluster().await;
    leave_keeps_the_durable_queues(&c, queues, main).await;
}

/// `cluster leave` on the node that leads the cluster: it removes itself
/// (and steps down), so it cannot watch the queue group follow from its
/// own view (the members refuse its messages once it is out); a
/// remaining member's leader waits for that. Both when it leads the queue
/// group too (a new cluster: the node that started it leads both, unless
/// an election already moved one) and when another node does.
#[tokio::test(flavor = "multi_thread")]
async fn leave_of_the_clusters_leader_completes_and_the_queue_group_follows() {
    let c = Cluster::start(3).await;
    wait_queue_group_voters(&c, 1, 3).await;
    let (main, _) = agreed_leaders(&c).await;
    let stays = (1..=3).find(|n| *n != main).unwrap();
    leave_keeps_the_durable_queues(&c, main, stays).await;

    let (c, main, queues) = split_cluster().await;
    leave_keeps_the_durable_queues(&c, main, queues).await;
}

/// A session that ends takes its durable queue with it, although the
/// queues live in their own Raft group: the queue group's leader drops the
/// queues of ended session lives (seen in every node's gauge).
#[tokio::test(flavor = "multi_thread")]
async fn an_ended_session_leaves_no_durable_queue_behind() {
    let c = Cluster::start(3).await;
    let (mut s, _) = RawClient::connect(c.node(2).mqtt, V311, "ends-sub", false).await;
    s.subscribe(1, "ends/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "ends-pub", true).await;
    publish_acknowledged(&mut p, "ends/t", 20, QoS::AtLeastOnce).await;
    let queued = "starling_durable_queued_messages";
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in 1..=3 {
        // Acknowledged once committed; each node applies it in its time.
        c.wait_metric(node, queued, 20.0, deadline).await;
    }
    // A clean session (3.1.1) discards the persistent one.
    let (s, ack) = RawClient::connect(c.node(3).mqtt, V311, "ends-sub", true).await;
    assert!(!ack.session_present);
    let deadline = Instant::now() + Duration::from_secs(15);
    for node in 1..=3 {
        c.wait_metric(node, queued, 0.0, deadline).await;
        assert_eq!(c.metric(node, "starling_durable_queued_bytes").await, 0.0);
    }
    drop(s);
}
