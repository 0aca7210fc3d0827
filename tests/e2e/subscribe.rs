//! SUBSCRIBE and UNSUBSCRIBE: wildcards, `$` topics, overlapping
//! subscriptions, no-local, retain-as-published, subscription identifiers,
//! invalid filters.

use std::time::Duration;

use starling_codec::{Packet, Properties, QoS, ReasonCode, SubscriptionOptions, UnsubAck, Unsubscribe};

use crate::{RawClient, TestServer, V311, V5};

async fn received_topics(c: &mut RawClient, n: usize) -> Vec<String> {
    let mut v = Vec::new();
    for _ in 0..n {
        v.push(c.recv_publish().await.topic.to_string());
    }
    c.expect_silence(Duration::from_millis(200)).await;
    v.sort();
    v
}

#[tokio::test]
async fn wildcards_match_per_spec_and_skip_dollar_topics() {
    let server = TestServer::start().await;
    let (mut hash, _) = RawClient::connect(server.mqtt, V311, "w-hash", true).await;
    hash.subscribe(1, "#", QoS::AtMostOnce).await;
    let (mut plus, _) = RawClient::connect(server.mqtt, V311, "w-plus", true).await;
    plus.subscribe(1, "sport/+/player1", QoS::AtMostOnce).await;
    let (mut multi, _) = RawClient::connect(server.mqtt, V311, "w-multi", true).await;
    multi.subscribe(1, "sport/#", QoS::AtMostOnce).await;
    let (mut dollar, _) = RawClient::connect(server.mqtt, V311, "w-dollar", true).await;
    dollar.subscribe(1, "$internal/+", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "w-pub", true).await;
    for t in ["sport", "sport/tennis/player1", "sport/tennis/player2", "other", "$internal/x"] {
        p.publish(t, b"x", QoS::AtMostOnce, false, 0).await;
    }
    assert_eq!(
        received_topics(&mut hash, 4).await,
        ["other", "sport", "sport/tennis/player1", "sport/tennis/player2"]
    );
    assert_eq!(received_topics(&mut plus, 1).await, ["sport/tennis/player1"]);
    assert_eq!(
        received_topics(&mut multi, 3).await,
        ["sport", "sport/tennis/player1", "sport/tennis/player2"]
    );
    assert_eq!(received_topics(&mut dollar, 1).await, ["$internal/x"]);
}

#[tokio::test]
async fn overlapping_subscriptions_deliver_once_at_the_highest_qos() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "ov-sub", true).await;
    s.subscribe(1, "ov/#", QoS::AtMostOnce).await;
    s.subscribe(2, "ov/+", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "ov-pub", true).await;
    p.publish("ov/a", b"x", QoS::ExactlyOnce, false, 1).await;
    let m = s.recv_publish().await;
    assert_eq!(m.qos, QoS::AtLeastOnce);
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v5_overlap_carries_every_subscription_identifier() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V5, "sid-sub", true).await;
    let props = |id| Properties { subscription_identifier: Some(id), ..Default::default() };
    s.subscribe_with(1, vec![("sid/#", SubscriptionOptions::new(QoS::AtMostOnce))], props(7)).await;
    s.subscribe_with(2, vec![("sid/+", SubscriptionOptions::new(QoS::AtMostOnce))], props(300)).await;
    s.subscribe_with(3, vec![("sid/a/b", SubscriptionOptions::new(QoS::AtMostOnce))], Properties::default())
        .await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "sid-pub", true).await;
    p.publish("sid/x", b"1", QoS::AtMostOnce, false, 0).await;
    let mut ids = s.recv_publish().await.properties.subscription_identifiers;
    ids.sort();
    assert_eq!(ids, vec![7, 300]);
    p.publish("sid/a/b", b"2", QoS::AtMostOnce, false, 0).await;
    assert_eq!(s.recv_publish().await.properties.subscription_identifiers, vec![7]);
    s.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn no_local_and_retain_as_published() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "nl", true).await;
    let nl = SubscriptionOptions { no_local: true, ..SubscriptionOptions::new(QoS::AtMostOnce) };
    c.subscribe_with(1, vec![("nl/t", nl)], Properties::default()).await;
    c.publish("nl/t", b"mine", QoS::AtMostOnce, false, 0).await;
    c.expect_silence(Duration::from_millis(300)).await;
    let (mut other, _) = RawClient::connect(server.mqtt, V5, "nl-other", true).await;
    other.publish("nl/t", b"theirs", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"theirs");

    // Retain flag on live delivery: 0 unless retain-as-published.
    let (mut plain, _) = RawClient::connect(server.mqtt, V5, "rap-plain", true).await;
    plain.subscribe(1, "rap/t", QoS::AtMostOnce).await;
    let (mut rap, _) = RawClient::connect(server.mqtt, V5, "rap-yes", true).await;
    let o = SubscriptionOptions { retain_as_published: true, ..SubscriptionOptions::new(QoS::AtMostOnce) };
    rap.subscribe_with(1, vec![("rap/t", o)], Properties::default()).await;
    other.publish("rap/t", b"r", QoS::AtMostOnce, true, 0).await;
    assert!(!plain.recv_publish().await.retain);
    assert!(rap.recv_publish().await.retain);
}

#[tokio::test]
async fn unsubscribe_stops_delivery_and_reports_missing_subscriptions() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "uns", true).await;
    c.subscribe(1, "uns/t", QoS::AtMostOnce).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 2,
        properties: Properties::default(),
        filters: vec!["uns/t".into(), "never/subscribed".into()],
    }))
    .await;
    match c.recv().await {
        Some(Packet::UnsubAck(UnsubAck { packet_id: 2, reason_codes, .. })) => {
            assert_eq!(reason_codes, vec![ReasonCode::SUCCESS, ReasonCode::NO_SUBSCRIPTION_EXISTED]);
        }
        other => panic!("{other:?}"),
    }
    c.publish("uns/t", b"x", QoS::AtMostOnce, false, 0).await;
    c.expect_silence(Duration::from_millis(300)).await;
    // 3.1.1: UNSUBACK has no codes.
    let (mut c, _) = RawClient::connect(server.mqtt, V311, "uns311", true).await;
    c.send(&Packet::Unsubscribe(Unsubscribe {
        packet_id: 3,
        properties: Properties::default(),
        filters: vec!["x".into()],
    }))
    .await;
    assert!(matches!(c.recv().await, Some(Packet::UnsubAck(UnsubAck { packet_id: 3, .. }))));
}

#[tokio::test]
async fn invalid_filters_fail_in_the_suback_only() {
    let server = TestServer::start().await;
    for (v, bad) in [(V311, ReasonCode::UNSPECIFIED_ERROR), (V5, ReasonCode::TOPIC_FILTER_INVALID)] {
        let (mut c, _) = RawClient::connect(server.mqtt, v, "badf", true).await;
        let o = SubscriptionOptions::new(QoS::AtLeastOnce);
        let ack =
            c.subscribe_with(1, vec![("ok/+", o), ("bad/#/x", o), ("a+b", o)], Properties::default()).await;
        assert_eq!(ack.reason_codes, vec![ReasonCode::GRANTED_QOS_1, bad, bad]);
        c.publish("ok/1", b"still works", QoS::AtMostOnce, false, 0).await;
        assert_eq!(&c.recv_publish().await.payload[..], b"still works");
        c.disconnect().await;
    }
}

#[tokio::test]
async fn max_qos_caps_granted_qos() {
    let server = TestServer::with(|c| c.mqtt.max_qos = 1).await;
    let (mut c, ack) = RawClient::connect(server.mqtt, V5, "mq", true).await;
    assert_eq!(ack.properties.maximum_qos, Some(1));
    assert_eq!(c.subscribe(1, "mq/t", QoS::ExactlyOnce).await.reason_codes, vec![ReasonCode::GRANTED_QOS_1]);
}
