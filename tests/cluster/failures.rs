//! Promises 5 and 6: a node killed with -9 (wills, clean sessions,
//! persistent sessions resuming elsewhere, catching up on restart), a node
//! cut off from the majority, and a whole-cluster restart.

use std::time::Duration;

use starling_codec::{Packet, QoS, ReasonCode, Will};
use starling_tests::connect_packet;

use crate::{Cluster, RawClient, V311, V5};

/// 5. kill -9 a node: its clients' wills are published, its clean sessions
/// dropped, its persistent sessions resume on another node; restarted with
/// its data dir it catches up and serves again; nothing acknowledged is lost.
#[tokio::test(flavor = "multi_thread")]
async fn killed_node_wills_sessions_and_restart() {
    let mut c = Cluster::start(3).await;
    let (mut watcher, _) = RawClient::connect(c.node(1).mqtt, V311, "watcher", true).await;
    watcher.subscribe(1, "presence/#", QoS::AtLeastOnce).await;
    // Acknowledged state before the kill: a retained message and a
    // persistent session with a subscription, both made through node 3.
    let (mut p3, _) = RawClient::connect(c.node(3).mqtt, V311, "setter", true).await;
    p3.publish("config/mode", b"eco", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(p3.recv().await, Some(Packet::Ack(_))));
    let (mut persistent, _) = RawClient::connect(c.node(3).mqtt, V311, "sensor-7", false).await;
    persistent.subscribe(1, "commands/sensor-7", QoS::AtLeastOnce).await;
    // A client with a will, and a clean-session client, on node 3.
    let mut w = connect_packet(V311, "lamp", true);
    w.will = Some(Will {
        topic: "presence/lamp".into(),
        payload: bytes::Bytes::from_static(b"offline"),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    });
    let (_lamp, _) = RawClient::connect_with(c.node(3).mqtt, w).await;
    let (mut clean, _) = RawClient::connect(c.node(3).mqtt, V311, "ephemeral", true).await;
    clean.subscribe(1, "commands/ephemeral", QoS::AtLeastOnce).await;

    c.kill9(3);
    // The leader (or a new one) declares node 3 down and publishes the will.
    let m = watcher.recv_within(Duration::from_secs(15)).await.expect("will in time").expect("connection");
    match m {
        Packet::Publish(p) => {
            assert_eq!((p.topic.as_str(), &p.payload[..]), ("presence/lamp", &b"offline"[..]))
        }
        other => panic!("{other:?}"),
    }
    // Once node 3 is declared down its persistent sessions are adopted by
    // a live node: messages published for them now are queued there.
    let (mut p1, _) = RawClient::connect(c.node(1).mqtt, V311, "commander", true).await;
    p1.publish("commands/sensor-7", b"while away", QoS::AtLeastOnce, false, 3).await;
    assert!(matches!(p1.recv().await, Some(Packet::Ack(_))));
    // The persistent session resumes on node 2 with its subscription and
    // the queued message.
    let (mut resumed, ack) = RawClient::connect(c.node(2).mqtt, V311, "sensor-7", false).await;
    assert!(ack.session_present, "persistent session survives its node");
    assert_eq!(&resumed.recv_publish().await.payload[..], b"while away");
    p1.publish("commands/sensor-7", b"calibrate", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&resumed.recv_publish().await.payload[..], b"calibrate");
    // The clean session is gone: reconnecting finds no session.
    let (_e, ack) = RawClient::connect(c.node(1).mqtt, V311, "ephemeral", false).await;
    assert!(!ack.session_present, "clean session dropped with its node");

    // Restart node 3 with its data: it catches up and serves again.
    c.launch(3, None);
    c.wait_ready(3).await;
    c.wait_members(3).await;
    let (mut s3, _) = RawClient::connect(c.node(3).mqtt, V311, "after-restart", true).await;
    s3.subscribe(1, "config/#", QoS::AtMostOnce).await;
    assert_eq!(&s3.recv_publish().await.payload[..], b"eco", "retained state intact on the restarted node");
    s3.subscribe(2, "news/+", QoS::AtMostOnce).await;
    p1.publish("news/today", b"node 3 is back", QoS::AtLeastOnce, false, 2).await;
    assert_eq!(&s3.recv_publish().await.payload[..], b"node 3 is back");
}

/// 6. A node cut off from the majority refuses new CONNECTs with "server
/// unavailable", fails readiness, keeps local QoS 0 delivery for existing
/// clients, holds their QoS 1 messages (its routes may be stale) and
/// refuses them if it stays cut off, never crash-loops, and rejoins
/// cleanly; a QoS 1 message held while it rejoins goes out then.
#[tokio::test(flavor = "multi_thread")]
async fn minority_node_refuses_connects_but_keeps_local_delivery() {
    let mut c = Cluster::start(3).await;
    let (mut sub, _) = RawClient::connect(c.node(1).mqtt, V311, "local-sub", true).await;
    sub.subscribe(1, "local/t", QoS::AtMostOnce).await;
    let (mut publ, _) = RawClient::connect(c.node(1).mqtt, V311, "local-pub", true).await;
    let (mut publ5, _) = RawClient::connect(c.node(1).mqtt, V5, "local-pub5", true).await;

    c.freeze(2);
    c.freeze(3);
    c.wait_not_ready(1, Duration::from_secs(10)).await;
    // New CONNECTs: 0x03 (3.1.1) and 0x88 (5.0).
    let mut fresh = RawClient::tcp(c.node(1).mqtt, V311).await;
    assert_eq!(fresh.handshake(connect_packet(V311, "newcomer", true)).await.code, 0x03);
    let mut fresh5 = RawClient::tcp(c.node(1).mqtt, V5).await;
    assert_eq!(
        fresh5.handshake(connect_packet(V5, "newcomer5", true)).await.code,
        ReasonCode::SERVER_UNAVAILABLE.0
    );
    // Existing clients keep local delivery.
    publ.publish("local/t", b"still here", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&sub.recv_publish().await.payload[..], b"still here");
    // QoS 1 is held, then refused (5.0: 0x80) and delivered to no one: the
    // QoS 0 message sent after it is the next thing the subscriber gets.
    publ5.publish("local/t", b"refused", QoS::AtLeastOnce, false, 7).await;
    publ5.publish("local/t", b"after the refused one", QoS::AtMostOnce, false, 0).await;
    match publ5.recv_within(Duration::from_secs(15)).await {
        Ok(Some(Packet::Ack(a))) => {
            assert_eq!((a.packet_id, a.reason), (7, ReasonCode::UNSPECIFIED_ERROR), "{a:?}")
        }
        other => panic!("expected PUBACK 0x80 for the held message, got {other:?}"),
    }
    assert_eq!(&sub.recv_publish().await.payload[..], b"after the refused one");
    assert!(c.node_mut(1).running(), "the cut-off node must not crash");

    // Held while the node rejoins: delivered and acknowledged then.
    publ5.publish("local/t", b"held", QoS::AtLeastOnce, false, 8).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    c.thaw(2);
    c.thaw(3);
    match publ5.recv_within(Duration::from_secs(15)).await {
        Ok(Some(Packet::Ack(a))) => assert_eq!((a.packet_id, a.reason), (8, ReasonCode::SUCCESS), "{a:?}"),
        other => panic!("expected PUBACK for the held message, got {other:?}"),
    }
    assert_eq!(&sub.recv_publish().await.payload[..], b"held");

    c.wait_ready(1).await;
    c.wait_members(3).await;
    let (_n, ack) = RawClient::connect(c.node(1).mqtt, V311, "newcomer", true).await;
    assert_eq!(ack.code, 0);
}

/// 6 (end). Whole-cluster restart with all data dirs: state intact.
#[tokio::test(flavor = "multi_thread")]
async fn whole_cluster_restart_keeps_state() {
    let mut c = Cluster::start(3).await;
    let (mut p, _) = RawClient::connect(c.node(2).mqtt, V311, "before", true).await;
    p.publish("keep/retained", b"kept", QoS::AtLeastOnce, true, 1).await;
    assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    let (mut s, _) = RawClient::connect(c.node(3).mqtt, V311, "durable", false).await;
    s.subscribe(1, "keep/live", QoS::AtLeastOnce).await;
    s.disconnect().await;
    drop(p);
    for id in 1..=3 {
        assert_eq!(c.stop(id), Some(0), "clean exit on SIGTERM");
    }
    for id in 1..=3 {
        c.launch(id, None);
    }
    for id in 1..=3 {
        c.wait_ready(id).await;
    }
    let (mut s, ack) = RawClient::connect(c.node(1).mqtt, V311, "durable", false).await;
    assert!(ack.session_present, "persistent session survived the restart");
    s.subscribe(2, "keep/retained", QoS::AtMostOnce).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
    let (mut p, _) = RawClient::connect(c.node(2).mqtt, V311, "after", true).await;
    p.publish("keep/live", b"subscription kept", QoS::AtLeastOnce, false, 1).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"subscription kept");
}

/// The single-node default is a one-member cluster on sled: a restart
/// keeps sessions, subscriptions and retained messages.
#[tokio::test(flavor = "multi_thread")]
async fn single_node_restart_keeps_state() {
    let mut c = Cluster::start(1).await;
    let (mut s, _) = RawClient::connect(c.node(1).mqtt, V311, "solo", false).await;
    s.subscribe(1, "solo/#", QoS::AtLeastOnce).await;
    s.publish("solo/retained", b"r", QoS::AtLeastOnce, true, 1).await;
    // The retained message is also delivered live to our own subscription.
    let mut acked = false;
    let mut got_live = false;
    while !(acked && got_live) {
        match s.recv().await {
            Some(Packet::Ack(_)) => acked = true,
            Some(Packet::Publish(_)) => got_live = true,
            other => panic!("{other:?}"),
        }
    }
    s.disconnect().await;
    assert_eq!(c.stop(1), Some(0));
    c.launch(1, None);
    c.wait_ready(1).await;
    let (mut s, ack) = RawClient::connect(c.node(1).mqtt, V311, "solo", false).await;
    assert!(ack.session_present);
    // The live copy of the retained message was never acknowledged: it
    // outlived the restart in the session's durable queue, and comes again.
    let again = s.recv_publish().await;
    assert_eq!((&again.payload[..], again.dup), (&b"r"[..], true));
    s.puback(again.packet_id).await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "solo-pub", true).await;
    p.publish("solo/live", b"after restart", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"after restart");
    let (mut late, _) = RawClient::connect(c.node(1).mqtt, V311, "late", true).await;
    late.subscribe(1, "solo/retained", QoS::AtMostOnce).await;
    assert_eq!(&late.recv_publish().await.payload[..], b"r");
}

/// A CONNECT that reaches a follower just as the leader stops answering
/// (its claim is on its way to that leader) is carried by the next leader:
/// the client gets in once a new leader is elected, not "server
/// unavailable" after the write timeout. (A killed container does not
/// reset connections to it, so a forwarded write would otherwise wait for
/// the whole timeout.)
#[tokio::test(flavor = "multi_thread")]
async fn connect_during_a_leader_failover_is_accepted() {
    let c = Cluster::start(3).await;
    let status = tokio::task::block_in_place(|| c.status(1));
    let leader = status["leader"].as_u64().expect("a leader");
    let follower = (1..=3).find(|id| *id != leader).unwrap();
    c.freeze(leader);
    let mut fresh = RawClient::tcp(c.node(follower).mqtt, V311).await;
    let ack = fresh.handshake(connect_packet(V311, "during-failover", true)).await;
    c.thaw(leader);
    assert_eq!(ack.code, 0, "CONNECT during the failover refused\n{}", c.logs());
}
