//! Retained messages: set, replace, clear, wildcard delivery, retain flag,
//! retain handling.

use std::time::Duration;

use starling_codec::{Properties, QoS, SubscriptionOptions};

use crate::{RawClient, TestServer, V311, V5};

#[tokio::test]
async fn set_replace_and_clear() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "ret-pub", true).await;
    p.publish("ret/a", b"first", QoS::AtLeastOnce, true, 1).await;
    p.recv().await;
    p.publish("ret/a", b"second", QoS::AtLeastOnce, true, 2).await;
    p.recv().await;
    p.publish("ret/b", b"other", QoS::AtMostOnce, true, 0).await;

    let (mut s, _) = RawClient::connect(server.mqtt, V311, "ret-sub", true).await;
    s.subscribe(1, "ret/+", QoS::AtLeastOnce).await;
    let mut got = [s.recv_publish().await, s.recv_publish().await];
    got.sort_by(|a, b| a.topic.cmp(&b.topic));
    assert_eq!(&got[0].payload[..], b"second", "latest retained wins");
    assert!(got.iter().all(|m| m.retain), "delivered with the retain flag");
    assert_eq!(got[0].qos, QoS::AtLeastOnce);
    assert_eq!(got[1].qos, QoS::AtMostOnce, "QoS is min(published, granted)");
    s.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.metric("starling_retained_messages").await, 2.0);

    // Clear with an empty payload; a new subscriber gets nothing.
    p.publish("ret/a", b"", QoS::AtMostOnce, true, 0).await;
    tokio::time::sleep(Duration::from_millis(100)).await;
    let (mut s2, _) = RawClient::connect(server.mqtt, V311, "ret-sub2", true).await;
    s2.subscribe(1, "ret/a", QoS::AtMostOnce).await;
    s2.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(server.metric("starling_retained_messages").await, 1.0);
}

#[tokio::test]
async fn live_delivery_clears_the_retain_flag_in_311() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "rl-sub", true).await;
    s.subscribe(1, "rl/t", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "rl-pub", true).await;
    p.publish("rl/t", b"x", QoS::AtMostOnce, true, 0).await;
    assert!(!s.recv_publish().await.retain);
    // Resubscribing sends the stored copy with the flag.
    s.subscribe(2, "rl/t", QoS::AtMostOnce).await;
    assert!(s.recv_publish().await.retain);
}

#[tokio::test]
async fn retain_handling_0_1_2() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "rh-pub", true).await;
    p.publish("rh/t", b"kept", QoS::AtMostOnce, true, 0).await;
    let (mut s, _) = RawClient::connect(server.mqtt, V5, "rh-sub", true).await;
    let opts = |rh| SubscriptionOptions { retain_handling: rh, ..SubscriptionOptions::new(QoS::AtMostOnce) };
    // 2: never.
    s.subscribe_with(1, vec![("rh/t", opts(2))], Properties::default()).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // 1: only when the subscription is new -- it exists now, so nothing.
    s.subscribe_with(2, vec![("rh/t", opts(1))], Properties::default()).await;
    s.expect_silence(Duration::from_millis(200)).await;
    // 1 on a new subscription: sent.
    s.subscribe_with(3, vec![("rh/+", opts(1))], Properties::default()).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
    // 0: always.
    s.subscribe_with(4, vec![("rh/+", opts(0))], Properties::default()).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
}

/// A subscription is in force as soon as its SUBSCRIBE is read, but the
/// retained message still comes before any live message on the topic
/// published after it: a publisher streaming live messages while others
/// subscribe never overtakes the retained one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retained_comes_before_newer_live_messages() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "order-pub", true).await;
    p.publish("order/t", b"retained", QoS::AtLeastOnce, true, 1).await;
    p.recv().await;
    let streaming = tokio::spawn(async move {
        for _ in 0..4000 {
            p.publish("order/t", b"live", QoS::AtMostOnce, false, 0).await;
            tokio::task::yield_now().await;
        }
        p
    });
    for round in 0..20 {
        let (mut s, _) = RawClient::connect(server.mqtt, V311, &format!("order-sub-{round}"), true).await;
        s.subscribe(1, "order/t", QoS::AtMostOnce).await;
        let first = s.recv_publish().await;
        assert_eq!((&first.payload[..], first.retain), (&b"retained"[..], true), "round {round}");
        s.disconnect().await;
    }
    streaming.await.unwrap().disconnect().await;
}
