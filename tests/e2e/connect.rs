//! CONNECT handling: protocol levels, client ids, session present,
//! takeover, keep alive, connect timeout.

use std::time::{Duration, Instant};

use bytes::BytesMut;
use starling_codec::{Packet, QoS, ReasonCode};
use starling_tests::connect_packet;

use crate::{disconnect_reason, RawClient, TestServer, V31, V311, V5};

#[tokio::test]
async fn all_three_protocol_levels_connect_and_exchange_messages() {
    let server = TestServer::start().await;
    for (i, v) in [V31, V311, V5].into_iter().enumerate() {
        let (mut sub, ack) = RawClient::connect(server.mqtt, v, &format!("lvl-sub-{i}"), true).await;
        assert!(!ack.session_present);
        sub.subscribe(1, "levels/#", QoS::AtLeastOnce).await;
        let (mut publ, _) = RawClient::connect(server.mqtt, v, &format!("lvl-pub-{i}"), true).await;
        publ.publish("levels/x", b"hi", QoS::AtLeastOnce, false, 7).await;
        assert!(matches!(publ.recv().await, Some(Packet::Ack(a)) if a.packet_id == 7));
        let p = sub.recv_publish().await;
        assert_eq!((p.topic.as_str(), &p.payload[..], p.qos), ("levels/x", &b"hi"[..], QoS::AtLeastOnce));
    }
}

/// Builds a CONNECT by hand with an arbitrary protocol name and level.
fn raw_connect(name: &str, level: u8) -> Vec<u8> {
    let mut body = vec![0, name.len() as u8];
    body.extend_from_slice(name.as_bytes());
    body.extend_from_slice(&[level, 0x02, 0, 60]);
    if level >= 5 {
        body.push(0);
    }
    body.extend_from_slice(&[0, 1, b'x']);
    let mut out = vec![0x10, body.len() as u8];
    out.extend(body);
    out
}

#[tokio::test]
async fn unsupported_protocol_level_is_refused_with_the_right_connack() {
    let server = TestServer::start().await;
    // Level 6 is answered in 5.0 form with 0x84.
    let mut c = RawClient::tcp(server.mqtt, V5).await;
    c.send_bytes(&raw_connect("MQTT", 6)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0x84),
        other => panic!("{other:?}"),
    }
    assert!(c.expect_closed().await.is_empty());
    // "MQTT" at level 3 (3.1 uses MQIsdp) is answered in 3.x form with 0x01.
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    c.send_bytes(&raw_connect("MQTT", 3)).await;
    match c.recv().await {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, 0x01),
        other => panic!("{other:?}"),
    }
    assert!(c.expect_closed().await.is_empty());
}

#[tokio::test]
async fn empty_client_id_rules_per_version() {
    let server = TestServer::start().await;
    // 3.1.1 with clean session: accepted.
    let (_c, ack) = RawClient::connect(server.mqtt, V311, "", true).await;
    assert_eq!(ack.code, 0);
    // 3.1.1 without clean session: identifier rejected.
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    assert_eq!(c.handshake(connect_packet(V311, "", false)).await.code, 0x02);
    // 3.1: identifier rejected.
    let mut c = RawClient::tcp(server.mqtt, V31).await;
    assert_eq!(c.handshake(connect_packet(V31, "", true)).await.code, 0x02);
    // 5.0: an Assigned Client Identifier comes back, and it works as an id.
    let (mut c, ack) = RawClient::connect(server.mqtt, V5, "", false).await;
    let assigned = ack.properties.assigned_client_identifier.expect("assigned id").to_string();
    assert!(!assigned.is_empty());
    c.subscribe(1, "assigned/t", QoS::AtMostOnce).await;
    c.publish("assigned/t", b"me", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&c.recv_publish().await.payload[..], b"me");
    // Two assigned ids are distinct.
    let (_d, ack2) = RawClient::connect(server.mqtt, V5, "", true).await;
    assert_ne!(ack2.properties.assigned_client_identifier.unwrap().to_string(), assigned);
}

#[tokio::test]
async fn session_present_reflects_a_resumed_session() {
    let server = TestServer::start().await;
    for v in [V311, V5] {
        let id = format!("sp-{v}");
        let mut c = connect_packet(v, &id, false);
        if v == V5 {
            c.properties.session_expiry_interval = Some(60);
        }
        let (first, ack) = RawClient::connect_with(server.mqtt, c.clone()).await;
        assert!(!ack.session_present);
        first.disconnect().await;
        let (second, ack) = RawClient::connect_with(server.mqtt, c.clone()).await;
        assert!(ack.session_present, "{v}: persistent session resumed");
        second.disconnect().await;
        let mut clean = c.clone();
        clean.clean_start = true;
        let (third, ack) = RawClient::connect_with(server.mqtt, clean).await;
        assert!(!ack.session_present, "{v}: clean start discards the session");
        third.disconnect().await;
    }
    // MQTT 3.1 has no session-present flag.
    let (c, _) = RawClient::connect(server.mqtt, V31, "sp-31", false).await;
    c.disconnect().await;
    let (_c, ack) = RawClient::connect(server.mqtt, V31, "sp-31", false).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn second_connection_with_the_same_id_takes_over() {
    let server = TestServer::start().await;
    // 5.0: the first connection gets DISCONNECT 0x8E.
    let (mut first, _) = RawClient::connect(server.mqtt, V5, "dup-id", false).await;
    first.subscribe(1, "takeover/t", QoS::AtLeastOnce).await;
    let (mut second, ack) = RawClient::connect(server.mqtt, V5, "dup-id", false).await;
    assert!(ack.session_present);
    let seen = first.expect_closed().await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::SESSION_TAKEN_OVER));
    // The session (its subscription) continues on the new connection.
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "takeover-pub", true).await;
    p.publish("takeover/t", b"after", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&second.recv_publish().await.payload[..], b"after");
    // 3.1.1: the old connection is simply closed.
    let (mut a, _) = RawClient::connect(server.mqtt, V311, "dup-311", true).await;
    let (_b, _) = RawClient::connect(server.mqtt, V311, "dup-311", true).await;
    assert!(a.expect_closed().await.is_empty());
    assert!(server.metric("starling_sessions_taken_over_total").await >= 2.0);
}

#[tokio::test]
async fn keep_alive_is_enforced_at_one_and_a_half_times() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "ka", true);
    c.keep_alive = 1;
    let (mut client, _) = RawClient::connect_with(server.mqtt, c).await;
    let start = Instant::now();
    let seen = client.expect_closed().await;
    let waited = start.elapsed();
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::KEEP_ALIVE_TIMEOUT));
    assert!(waited >= Duration::from_millis(1400), "closed too early: {waited:?}");
    // A client that pings stays connected past the deadline.
    let mut c = connect_packet(V311, "ka-ping", true);
    c.keep_alive = 1;
    let (mut client, _) = RawClient::connect_with(server.mqtt, c).await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(700)).await;
        client.send(&Packet::PingReq).await;
        assert_eq!(client.recv().await, Some(Packet::PingResp));
    }
}

#[tokio::test]
async fn server_keep_alive_replaces_a_too_long_keep_alive() {
    let server = TestServer::with(|c| c.mqtt.max_keepalive = 30).await;
    let mut c = connect_packet(V5, "ska", true);
    c.keep_alive = 0;
    let (_client, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert_eq!(ack.properties.server_keep_alive, Some(30));
    let mut c = connect_packet(V5, "ska2", true);
    c.keep_alive = 10;
    let (_client, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert_eq!(ack.properties.server_keep_alive, None);
}

#[tokio::test]
async fn a_socket_that_never_sends_connect_is_closed() {
    let server = TestServer::with(|c| c.mqtt.connect_timeout_secs = 1).await;
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    let start = Instant::now();
    assert!(c.expect_closed().await.is_empty());
    assert!(start.elapsed() >= Duration::from_millis(900));
}

#[tokio::test]
async fn packets_pipelined_behind_connect_are_processed() {
    let server = TestServer::start().await;
    let mut out = BytesMut::new();
    Packet::Connect(Box::new(connect_packet(V311, "pipe", true))).encode(V311, &mut out).unwrap();
    Packet::PingReq.encode(V311, &mut out).unwrap();
    let mut c = RawClient::tcp(server.mqtt, V311).await;
    c.send_bytes(&out).await;
    assert!(matches!(c.recv().await, Some(Packet::ConnAck(a)) if a.code == 0));
    assert_eq!(c.recv().await, Some(Packet::PingResp));
}
