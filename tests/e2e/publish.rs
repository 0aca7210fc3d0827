//! PUBLISH at QoS 0/1/2: the state machines in both directions, exactly
//! once inbound, granted QoS, order, flow control and the bounded queue.

use std::time::Duration;

use starling_codec::{Ack, AckKind, Packet, Publish, QoS};
use starling_tests::connect_packet;

use crate::{RawClient, TestServer, V311, V5};

fn ack(kind: AckKind, id: u16) -> Packet {
    Packet::Ack(Ack::new(kind, id))
}

#[tokio::test]
async fn granted_qos_is_the_minimum_of_published_and_subscribed() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "gq-pub", true).await;
    for sub_qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
        let (mut s, _) = RawClient::connect(server.mqtt, V311, "gq-sub", true).await;
        let suback = s.subscribe(1, "gq/t", sub_qos).await;
        assert_eq!(suback.reason_codes[0].0, sub_qos as u8);
        for (i, pub_qos) in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce].into_iter().enumerate() {
            p.publish("gq/t", b"m", pub_qos, false, 10 + i as u16).await;
            let got = s.recv_publish().await;
            assert_eq!(got.qos, pub_qos.min(sub_qos), "pub {pub_qos:?} sub {sub_qos:?}");
            match got.qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => s.puback(got.packet_id).await,
                QoS::ExactlyOnce => {
                    s.send(&ack(AckKind::PubRec, got.packet_id)).await;
                    assert_eq!(s.recv().await, Some(ack(AckKind::PubRel, got.packet_id)));
                    s.send(&ack(AckKind::PubComp, got.packet_id)).await;
                }
            }
            // Publisher side acks.
            match pub_qos {
                QoS::AtMostOnce => {}
                QoS::AtLeastOnce => assert_eq!(p.recv().await, Some(ack(AckKind::PubAck, 11))),
                QoS::ExactlyOnce => {
                    assert_eq!(p.recv().await, Some(ack(AckKind::PubRec, 12)));
                    p.send(&ack(AckKind::PubRel, 12)).await;
                    assert_eq!(p.recv().await, Some(ack(AckKind::PubComp, 12)));
                }
            }
        }
        s.disconnect().await;
    }
}

#[tokio::test]
async fn inbound_qos2_is_delivered_exactly_once() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "eo-sub", true).await;
    s.subscribe(1, "eo/t", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "eo-pub", true).await;
    p.publish("eo/t", b"once", QoS::ExactlyOnce, false, 42).await;
    assert_eq!(p.recv().await, Some(ack(AckKind::PubRec, 42)));
    // The publisher did not see the PUBREC (say) and resends with DUP.
    let dup = Publish {
        dup: true,
        qos: QoS::ExactlyOnce,
        retain: false,
        topic: "eo/t".into(),
        packet_id: 42,
        properties: Default::default(),
        payload: bytes::Bytes::from_static(b"once"),
    };
    p.send(&Packet::Publish(dup)).await;
    assert_eq!(p.recv().await, Some(ack(AckKind::PubRec, 42)));
    p.send(&ack(AckKind::PubRel, 42)).await;
    assert_eq!(p.recv().await, Some(ack(AckKind::PubComp, 42)));
    assert_eq!(&s.recv_publish().await.payload[..], b"once");
    s.expect_silence(Duration::from_millis(300)).await;
    // After PUBREL the id is free: the same id carries a new message.
    p.publish("eo/t", b"again", QoS::ExactlyOnce, false, 42).await;
    assert_eq!(p.recv().await, Some(ack(AckKind::PubRec, 42)));
    assert_eq!(&s.recv_publish().await.payload[..], b"again");
}

#[tokio::test]
async fn unacknowledged_messages_are_resent_with_dup_when_the_session_resumes() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "dup-sub", false).await;
    s.subscribe(1, "dup/#", QoS::ExactlyOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "dup-pub", true).await;
    p.publish("dup/1", b"q1", QoS::AtLeastOnce, false, 1).await;
    p.publish("dup/2", b"q2", QoS::ExactlyOnce, false, 2).await;
    let m1 = s.recv_publish().await;
    let m2 = s.recv_publish().await;
    assert!(!m1.dup && !m2.dup);
    // PUBREC the QoS 2 one, acknowledge nothing else, and drop the connection.
    s.send(&ack(AckKind::PubRec, m2.packet_id)).await;
    assert_eq!(s.recv().await, Some(ack(AckKind::PubRel, m2.packet_id)));
    drop(s);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (mut s, ack_) = RawClient::connect(server.mqtt, V311, "dup-sub", false).await;
    assert!(ack_.session_present);
    let again = s.recv_publish().await;
    assert!(again.dup, "resent PUBLISH has DUP set");
    assert_eq!((again.packet_id, &again.payload[..]), (m1.packet_id, &b"q1"[..]));
    assert_eq!(s.recv().await, Some(ack(AckKind::PubRel, m2.packet_id)), "PUBREL resent");
    s.puback(m1.packet_id).await;
    s.send(&ack(AckKind::PubComp, m2.packet_id)).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn offline_persistent_session_queues_qos1_and_2_not_qos0() {
    let server = TestServer::start().await;
    let (s, _) = RawClient::connect(server.mqtt, V311, "off-sub", false).await;
    let mut s = s;
    s.subscribe(1, "off/t", QoS::ExactlyOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "off-pub", true).await;
    p.publish("off/t", b"zero", QoS::AtMostOnce, false, 0).await;
    p.publish("off/t", b"one", QoS::AtLeastOnce, false, 1).await;
    p.publish("off/t", b"two", QoS::ExactlyOnce, false, 2).await;
    assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    let (mut s, ack_) = RawClient::connect(server.mqtt, V311, "off-sub", false).await;
    assert!(ack_.session_present);
    let a = s.recv_publish().await;
    let b = s.recv_publish().await;
    assert_eq!((&a.payload[..], a.qos), (&b"one"[..], QoS::AtLeastOnce));
    assert_eq!((&b.payload[..], b.qos), (&b"two"[..], QoS::ExactlyOnce));
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(
        server.metric("starling_messages_dropped_total{reason=\"offline_qos0\",qos=\"0\"}").await,
        1.0
    );
}

#[tokio::test]
async fn messages_from_one_publisher_arrive_in_order_at_every_qos() {
    let server = TestServer::start().await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "ord-sub", true).await;
    s.subscribe(1, "ord/t", QoS::ExactlyOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "ord-pub", true).await;
    let n = 300u16;
    for i in 0..n {
        let qos = [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce][usize::from(i % 3)];
        p.publish("ord/t", i.to_string().as_bytes(), qos, false, i + 1).await;
    }
    let mut i = 0;
    while i < n {
        match s.recv().await {
            Some(Packet::Publish(m)) => {
                assert_eq!(String::from_utf8_lossy(&m.payload), i.to_string());
                i += 1;
                match m.qos {
                    QoS::AtMostOnce => {}
                    QoS::AtLeastOnce => s.puback(m.packet_id).await,
                    QoS::ExactlyOnce => s.send(&ack(AckKind::PubRec, m.packet_id)).await,
                }
            }
            Some(Packet::Ack(a)) if a.kind == AckKind::PubRel => {
                s.send(&ack(AckKind::PubComp, a.packet_id)).await
            }
            other => panic!("{other:?}"),
        }
    }
}

#[tokio::test]
async fn client_receive_maximum_limits_unacknowledged_deliveries() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "rm-sub", true);
    c.properties.receive_maximum = Some(2);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c).await;
    s.subscribe(1, "rm/t", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "rm-pub", true).await;
    for i in 0..4u16 {
        p.publish("rm/t", &[i as u8], QoS::AtLeastOnce, false, i + 1).await;
    }
    let a = s.recv_publish().await;
    let b = s.recv_publish().await;
    s.expect_silence(Duration::from_millis(300)).await;
    s.puback(a.packet_id).await;
    let c3 = s.recv_publish().await;
    assert_eq!(c3.payload[0], 2);
    s.expect_silence(Duration::from_millis(200)).await;
    s.puback(b.packet_id).await;
    assert_eq!(s.recv_publish().await.payload[0], 3);
}

#[tokio::test]
async fn a_full_session_queue_drops_and_counts() {
    let server = TestServer::with(|c| c.mqtt.max_queued_messages = 5).await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "full-sub", false).await;
    s.subscribe(1, "full/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "full-pub", true).await;
    for i in 0..10u16 {
        p.publish("full/t", &[i as u8], QoS::AtLeastOnce, false, i + 1).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
    }
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "full-sub", false).await;
    for i in 0..5u8 {
        let m = s.recv_publish().await;
        assert_eq!(m.payload[0], i, "the oldest messages were kept");
        s.puback(m.packet_id).await;
    }
    s.expect_silence(Duration::from_millis(300)).await;
    assert_eq!(server.metric("starling_messages_dropped_total{reason=\"queue_full\",qos=\"1\"}").await, 5.0);
}

#[tokio::test]
async fn pubrel_for_an_unknown_id_gets_pubcomp_not_found_in_v5() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "relunk", true).await;
    c.send(&ack(AckKind::PubRel, 99)).await;
    match c.recv().await {
        Some(Packet::Ack(a)) => {
            assert_eq!(a.kind, AckKind::PubComp);
            assert_eq!(a.reason, starling_codec::ReasonCode::PACKET_IDENTIFIER_NOT_FOUND);
        }
        other => panic!("{other:?}"),
    }
}
