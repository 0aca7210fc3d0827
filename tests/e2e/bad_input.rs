//! Malformed and forbidden input on raw sockets: each gets the spec's
//! reason code (5.0) and a disconnect, never a panic, a hang, or an effect
//! on other clients.

use std::time::Duration;

use starling_codec::{Packet, QoS, ReasonCode};

use crate::{disconnect_reason, RawClient, TestServer, V311, V5};

/// Connects a 5.0 client, sends `bytes`, and returns the DISCONNECT reason.
async fn v5_reaction(server: &TestServer, id: &str, bytes: &[u8]) -> Option<ReasonCode> {
    let (mut c, _) = RawClient::connect(server.mqtt, V5, id, true).await;
    let _ = c.try_send_bytes(bytes).await;
    disconnect_reason(&c.expect_closed().await)
}

#[tokio::test]
async fn each_malformed_packet_gets_its_reason_code_and_a_disconnect() {
    let server = TestServer::start().await;
    let cases: Vec<(&str, Vec<u8>, ReasonCode)> = vec![
        (
            "remaining length of 5 bytes",
            vec![0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01],
            ReasonCode::MALFORMED_PACKET,
        ),
        ("reserved flags on PINGREQ", vec![0xC1, 0x00], ReasonCode::MALFORMED_PACKET),
        ("reserved packet type 0", vec![0x00, 0x00], ReasonCode::MALFORMED_PACKET),
        ("invalid UTF-8 in a topic", vec![0x30, 0x05, 0, 2, 0xC3, 0x28, 0], ReasonCode::MALFORMED_PACKET),
        ("U+0000 in a topic", vec![0x30, 0x05, 0, 2, b'a', 0, 0], ReasonCode::MALFORMED_PACKET),
        (
            "wildcard in a PUBLISH topic",
            vec![0x30, 0x05, 0, 2, b'a', b'#', 0],
            ReasonCode::TOPIC_NAME_INVALID,
        ),
        ("packet id 0 on QoS 1", vec![0x32, 0x06, 0, 1, b'a', 0, 0, 0], ReasonCode::PROTOCOL_ERROR),
        ("QoS 3 PUBLISH", vec![0x36, 0x06, 0, 1, b'a', 0, 1, 0], ReasonCode::MALFORMED_PACKET),
        ("SUBSCRIBE without filters", vec![0x82, 0x03, 0, 1, 0], ReasonCode::PROTOCOL_ERROR),
        (
            "SUBSCRIBE with wrong flags",
            vec![0x80, 0x07, 0, 1, 0, 0, 1, b'a', 0],
            ReasonCode::MALFORMED_PACKET,
        ),
        ("string longer than the packet", vec![0x30, 0x04, 0, 9, b'a', 0], ReasonCode::MALFORMED_PACKET),
        ("unknown property", vec![0x30, 0x06, 0, 1, b'a', 1, 0x7F, 0], ReasonCode::MALFORMED_PACKET),
        ("CONNACK from a client", vec![0x20, 0x03, 0, 0, 0], ReasonCode::PROTOCOL_ERROR),
        ("empty topic without alias", vec![0x30, 0x03, 0, 0, 0], ReasonCode::PROTOCOL_ERROR),
        // Header announces 2 MiB; the server refuses before buffering it.
        ("packet over the maximum size", vec![0x30, 0x80, 0x80, 0x80, 0x01], ReasonCode::PACKET_TOO_LARGE),
    ];
    for (i, (name, bytes, want)) in cases.into_iter().enumerate() {
        let got = v5_reaction(&server, &format!("bad-{i}"), &bytes).await;
        assert_eq!(got, Some(want), "{name}");
    }
    // A second CONNECT.
    let mut second = Vec::new();
    Packet::Connect(Box::new(starling_tests::connect_packet(V5, "again", true)))
        .encode(V5, &mut bytes::BytesMut::new())
        .unwrap();
    {
        let mut b = bytes::BytesMut::new();
        Packet::Connect(Box::new(starling_tests::connect_packet(V5, "again", true)))
            .encode(V5, &mut b)
            .unwrap();
        second.extend_from_slice(&b);
    }
    assert_eq!(v5_reaction(&server, "bad-connect", &second).await, Some(ReasonCode::PROTOCOL_ERROR));
    assert!(server.metric("starling_protocol_errors_total").await >= 16.0);
}

#[tokio::test]
async fn malformed_input_on_311_closes_without_a_reply() {
    let server = TestServer::start().await;
    for bytes in [vec![0x30u8, 0x03, 0, 1, b'#'], vec![0xF0, 0x00], vec![0x60, 0x02, 0, 1]] {
        let (mut c, _) = RawClient::connect(server.mqtt, V311, "bad311", true).await;
        c.send_bytes(&bytes).await;
        assert!(c.expect_closed().await.is_empty());
    }
}

#[tokio::test]
async fn anything_before_connect_is_closed_without_connack() {
    let server = TestServer::start().await;
    for first in [vec![0xC0u8, 0x00], vec![0x30, 0x03, 0, 1, b'a'], b"GET / HTTP/1.1\r\n\r\n".to_vec()] {
        let mut c = RawClient::tcp(server.mqtt, V311).await;
        c.send_bytes(&first).await;
        assert!(c.expect_closed().await.is_empty(), "{first:?}");
    }
}

#[tokio::test]
async fn a_malformed_v5_connect_is_answered_with_a_reason() {
    let server = TestServer::start().await;
    // CONNECT, "MQTT" level 5, reserved flag bit set.
    let bytes = [0x10, 13, 0, 4, b'M', b'Q', b'T', b'T', 5, 0x03, 0, 60, 0, 0, 0];
    let mut c = RawClient::tcp(server.mqtt, V5).await;
    c.send_bytes(&bytes).await;
    match c.expect_closed().await.first() {
        Some(Packet::ConnAck(a)) => assert_eq!(a.code, ReasonCode::MALFORMED_PACKET.0),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn garbage_after_connect_does_not_disturb_other_clients() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "calm-sub", true).await;
    s.subscribe(1, "calm/t", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "calm-pub", true).await;
    // A deterministic pseudo-random byte stream per attempt.
    let mut seed = 0x2545_F491_4F6C_DD1Du64;
    for round in 0..40 {
        let (mut bad, _) = RawClient::connect(server.mqtt, V311, &format!("noise-{round}"), true).await;
        let junk: Vec<u8> = (0..256)
            .map(|_| {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                (seed >> 24) as u8
            })
            .collect();
        let _ = bad.try_send_bytes(&junk).await;
        // The well-behaved pair keeps working while the noise goes on.
        p.publish("calm/t", format!("m{round}").as_bytes(), QoS::AtLeastOnce, false, round + 1).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
        let m = s.recv_publish().await;
        assert_eq!(m.payload, format!("m{round}").as_bytes());
        s.puback(m.packet_id).await;
        // Junk that happens to be a valid prefix may just wait for more
        // bytes; either way the connection must not take the server down.
        let _ = bad.recv_within(Duration::from_millis(50)).await;
    }
    let (status, _) = server.http_get("/health/live").await;
    assert_eq!(status, 200);
}

#[tokio::test]
async fn inbound_qos2_over_receive_maximum_is_refused() {
    let server = TestServer::with(|c| c.mqtt.receive_maximum = 2).await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "rmx", true).await;
    for id in 1..=3u16 {
        c.publish("rmx/t", b"x", QoS::ExactlyOnce, false, id).await;
    }
    let seen = c.expect_closed().await;
    assert_eq!(disconnect_reason(&seen), Some(ReasonCode::RECEIVE_MAXIMUM_EXCEEDED));
}

#[tokio::test]
async fn a_client_still_writing_reads_the_reason_not_a_reset() {
    // A pipelining client keeps sending after its protocol error, before it
    // reads: the broker sends DISCONNECT, then keeps reading (and
    // discarding) for a while, so those writes do not meet a reset and the
    // client reads why it was closed.
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "still-writing", true).await;
    c.send_bytes(&[0x32, 0x06, 0, 1, b'a', 0, 0, 0]).await; // QoS 1 with packet id 0
    let publish = [0x30, 0x05, 0, 1, b'a', 0, b'x'];
    let chunk: Vec<u8> = publish.iter().copied().cycle().take(publish.len() * 1000).collect();
    for i in 0..30 {
        if let Err(e) = c.try_send_bytes(&chunk).await {
            panic!("write {i} after the protocol error failed ({e}): the broker closed without lingering");
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let packets = c.expect_closed().await;
    assert_eq!(disconnect_reason(&packets), Some(ReasonCode::PROTOCOL_ERROR), "{packets:?}");
}
