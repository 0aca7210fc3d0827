//! MQTT 5 specifics: topic aliases both ways, message expiry, properties
//! passed through, maximum packet size both ways, CONNACK properties,
//! server-sent DISCONNECT.

use std::time::Duration;

use bytes::Bytes;
use starling_codec::{Packet, Publish, PublishProperties, QoS, ReasonCode};
use starling_tests::connect_packet;

use crate::{disconnect_reason, RawClient, TestServer, V311, V5};

fn publish(topic: &str, payload: &[u8], props: PublishProperties) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos: QoS::AtMostOnce,
        retain: false,
        topic: topic.into(),
        packet_id: 0,
        properties: props,
        payload: Bytes::copy_from_slice(payload),
    })
}

#[tokio::test]
async fn connack_advertises_the_server_limits() {
    let server = TestServer::start().await;
    let (_c, ack) = RawClient::connect(server.mqtt, V5, "limits", true).await;
    let p = ack.properties;
    assert_eq!(p.receive_maximum, Some(128));
    assert_eq!(p.topic_alias_maximum, Some(64));
    assert_eq!(p.maximum_packet_size, Some(1024 * 1024));
}

#[tokio::test]
async fn inbound_topic_aliases_are_resolved() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "ta-sub", true).await;
    s.subscribe(1, "alias/#", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "ta-pub", true).await;
    let alias = |a| PublishProperties { topic_alias: Some(a), ..Default::default() };
    p.send(&publish("alias/long/topic", b"1", alias(3))).await;
    p.send(&publish("", b"2", alias(3))).await;
    p.send(&publish("alias/other", b"3", alias(3))).await; // remap
    p.send(&publish("", b"4", alias(3))).await;
    for (t, b) in
        [("alias/long/topic", "1"), ("alias/long/topic", "2"), ("alias/other", "3"), ("alias/other", "4")]
    {
        let m = s.recv_publish().await;
        assert_eq!((m.topic.as_str(), &m.payload[..]), (t, b.as_bytes()));
    }
    // An alias never set, and one over the maximum, close the connection.
    p.send(&publish("", b"5", alias(9))).await;
    assert_eq!(disconnect_reason(&p.expect_closed().await), Some(ReasonCode::PROTOCOL_ERROR));
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "ta-pub2", true).await;
    p.send(&publish("alias/x", b"6", alias(65))).await;
    assert_eq!(disconnect_reason(&p.expect_closed().await), Some(ReasonCode::TOPIC_ALIAS_INVALID));
}

#[tokio::test]
async fn outbound_topic_aliases_are_used_when_the_client_allows() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "tao-sub", true);
    c.properties.topic_alias_maximum = Some(1);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c).await;
    s.subscribe(1, "tao/#", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "tao-pub", true).await;
    p.publish("tao/a", b"1", QoS::AtMostOnce, false, 0).await;
    p.publish("tao/a", b"2", QoS::AtMostOnce, false, 0).await;
    p.publish("tao/b", b"3", QoS::AtMostOnce, false, 0).await;
    let m1 = s.recv_publish().await;
    assert_eq!((m1.topic.as_str(), m1.properties.topic_alias), ("tao/a", Some(1)));
    let m2 = s.recv_publish().await;
    assert_eq!((m2.topic.as_str(), m2.properties.topic_alias), ("", Some(1)));
    let m3 = s.recv_publish().await;
    assert_eq!((m3.topic.as_str(), m3.properties.topic_alias), ("tao/b", None), "no alias left");
    // A client that allows none gets full topics.
    let (mut s2, _) = RawClient::connect(server.mqtt, V5, "tao-none", true).await;
    s2.subscribe(1, "tao/#", QoS::AtMostOnce).await;
    p.publish("tao/a", b"4", QoS::AtMostOnce, false, 0).await;
    let m = s2.recv_publish().await;
    assert_eq!((m.topic.as_str(), m.properties.topic_alias), ("tao/a", None));
}

#[tokio::test]
async fn properties_pass_through_to_subscribers() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V5, "pp-sub", true).await;
    s.subscribe(1, "pp/t", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "pp-pub", true).await;
    let props = PublishProperties {
        payload_format_indicator: Some(1),
        response_topic: Some("pp/reply".into()),
        correlation_data: Some(Bytes::from_static(b"\x01\x02")),
        user_properties: vec![("k".into(), "v1".into()), ("k".into(), "v2".into())],
        content_type: Some("text/plain".into()),
        ..Default::default()
    };
    p.send(&publish("pp/t", b"body", props.clone())).await;
    let m = s.recv_publish().await;
    assert_eq!(m.properties, props);
}

#[tokio::test]
async fn message_expiry_counts_down_and_drops_expired_messages() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "mx-sub", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c.clone()).await;
    s.subscribe(1, "mx/#", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "mx-pub", true).await;
    let exp = |secs| PublishProperties { message_expiry_interval: Some(secs), ..Default::default() };
    let mut short = publish("mx/short", b"s", exp(1));
    let mut long = publish("mx/long", b"l", exp(60));
    for (pk, id) in [(&mut short, 1), (&mut long, 2)] {
        if let Packet::Publish(pp) = pk {
            pp.qos = QoS::AtLeastOnce;
            pp.packet_id = id;
        }
        p.send(pk).await;
        p.recv().await;
    }
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let (mut s, _) = RawClient::connect_with(server.mqtt, c).await;
    let m = s.recv_publish().await;
    assert_eq!(m.topic.as_str(), "mx/long", "the expired message is dropped");
    let left = m.properties.message_expiry_interval.expect("expiry forwarded");
    assert!(left <= 59, "counted down: {left}");
    s.expect_silence(Duration::from_millis(200)).await;
    assert_eq!(server.metric("starling_messages_dropped_total{reason=\"expired\",qos=\"1\"}").await, 1.0);
}

#[tokio::test]
async fn maximum_packet_size_both_ways() {
    let server = TestServer::with(|c| c.mqtt.max_packet_size = 1024).await;
    // Outbound: a message over the client's limit is not sent to it.
    let mut c = connect_packet(V5, "mps-sub", true);
    c.properties.maximum_packet_size = Some(200);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c).await;
    s.subscribe(1, "mps/t", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V5, "mps-pub", true).await;
    p.publish("mps/t", &[7u8; 500], QoS::AtLeastOnce, false, 1).await;
    p.recv().await;
    p.publish("mps/t", b"small", QoS::AtLeastOnce, false, 2).await;
    p.recv().await;
    assert_eq!(&s.recv_publish().await.payload[..], b"small");
    assert_eq!(server.metric("starling_messages_dropped_total{reason=\"too_large\",qos=\"1\"}").await, 1.0);
    // Inbound: over our limit closes with 0x95.
    p.publish("mps/t", &[0u8; 2000], QoS::AtMostOnce, false, 0).await;
    assert_eq!(disconnect_reason(&p.expect_closed().await), Some(ReasonCode::PACKET_TOO_LARGE));
}

#[tokio::test]
async fn enhanced_authentication_is_refused_cleanly() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "auth", true);
    c.properties.authentication_method = Some("SCRAM-SHA-1".into());
    let mut client = RawClient::tcp(server.mqtt, V5).await;
    let ack = client.handshake(c).await;
    assert_eq!(ack.code, ReasonCode::BAD_AUTHENTICATION_METHOD.0);
}

#[tokio::test]
async fn protocol_errors_carry_a_reason_string_unless_declined() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "rs", true).await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "rs", true)))).await;
    let seen = c.expect_closed().await;
    match seen.last() {
        Some(Packet::Disconnect(d)) => {
            assert_eq!(d.reason, ReasonCode::PROTOCOL_ERROR);
            assert!(d.properties.reason_string.is_some());
        }
        other => panic!("{other:?}"),
    }
    let mut cp = connect_packet(V5, "rs2", true);
    cp.properties.request_problem_information = Some(0);
    let (mut c, _) = RawClient::connect_with(server.mqtt, cp).await;
    c.send(&Packet::Connect(Box::new(connect_packet(V5, "rs2", true)))).await;
    match c.expect_closed().await.last() {
        Some(Packet::Disconnect(d)) => assert!(d.properties.reason_string.is_none()),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn shutdown_sends_server_shutting_down() {
    let server = TestServer::start().await;
    let (mut c5, _) = RawClient::connect(server.mqtt, V5, "sd5", true).await;
    let (mut c3, _) = RawClient::connect(server.mqtt, V311, "sd3", true).await;
    let stopping = tokio::spawn(server.stop());
    assert_eq!(disconnect_reason(&c5.expect_closed().await), Some(ReasonCode::SERVER_SHUTTING_DOWN));
    assert!(c3.expect_closed().await.is_empty(), "3.1.1 has no server DISCONNECT");
    stopping.await.unwrap();
}
