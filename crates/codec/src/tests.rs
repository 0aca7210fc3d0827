//! Codec unit tests: round trips for every packet at every protocol level,
//! the malformed inputs the spec names, and property tests of the decoder.

use bytes::{Bytes, BytesMut};
use proptest::prelude::*;

use super::*;

const MAX: usize = 1 << 20;
const ALL: [ProtocolVersion; 3] = [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5];

fn round_trip(p: &Packet, v: ProtocolVersion) -> Packet {
    let mut out = BytesMut::new();
    p.encode(v, &mut out).unwrap();
    let len = out.len();
    // Feed it one byte at a time first: the decoder must wait, not fail.
    let mut partial = BytesMut::new();
    for b in &out[..len - 1] {
        partial.extend_from_slice(&[*b]);
        assert_eq!(decode(&mut partial.clone(), v, MAX).unwrap(), None);
    }
    let got = decode(&mut out, v, MAX).unwrap().unwrap();
    assert!(out.is_empty(), "decoder left {} bytes", out.len());
    got
}

fn s(x: &str) -> MqttStr {
    MqttStr::from(x)
}

fn decode_bytes(bytes: &[u8], v: ProtocolVersion) -> Result<Option<Packet>, DecodeError> {
    decode(&mut BytesMut::from(bytes), v, MAX)
}

#[test]
fn connect_round_trips_at_every_level() {
    for v in ALL {
        let mut c = Connect {
            version: v,
            clean_start: true,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: s("client-1"),
            will: Some(Will {
                topic: s("last/will"),
                payload: Bytes::from_static(b"gone"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: PublishProperties::default(),
            }),
            username: Some(s("user")),
            password: Some(Bytes::from_static(b"secret")),
        };
        if v.is_v5() {
            c.properties.session_expiry_interval = Some(3600);
            c.properties.receive_maximum = Some(10);
            c.properties.user_properties.push((s("k"), s("v")));
            if let Some(w) = c.will.as_mut() {
                w.properties.will_delay_interval = Some(5);
                w.properties.content_type = Some(s("text/plain"));
            }
        }
        let p = Packet::Connect(Box::new(c));
        assert_eq!(round_trip(&p, v), p);
    }
}

#[test]
fn connack_round_trips_and_31_has_no_session_present() {
    let mut c = ConnAck { session_present: true, code: 0, properties: Properties::default() };
    assert_eq!(round_trip(&Packet::ConnAck(c.clone()), ProtocolVersion::V311), Packet::ConnAck(c.clone()));
    let Packet::ConnAck(got) = round_trip(&Packet::ConnAck(c.clone()), ProtocolVersion::V31) else {
        panic!()
    };
    assert!(!got.session_present);
    c.properties.assigned_client_identifier = Some(s("auto-1"));
    c.properties.topic_alias_maximum = Some(16);
    c.properties.reason_string = Some(s("welcome"));
    assert_eq!(round_trip(&Packet::ConnAck(c.clone()), ProtocolVersion::V5), Packet::ConnAck(c));
}

#[test]
fn publish_round_trips() {
    for v in ALL {
        for qos in [QoS::AtMostOnce, QoS::AtLeastOnce, QoS::ExactlyOnce] {
            let mut p = Publish {
                dup: qos != QoS::AtMostOnce,
                qos,
                retain: true,
                topic: s("a/b/c"),
                packet_id: if qos == QoS::AtMostOnce { 0 } else { 77 },
                properties: PublishProperties::default(),
                payload: Bytes::from_static(b"hello"),
            };
            if v.is_v5() {
                p.properties.message_expiry_interval = Some(10);
                p.properties.topic_alias = Some(3);
                p.properties.response_topic = Some(s("reply/here"));
                p.properties.correlation_data = Some(Bytes::from_static(b"\x00\x01"));
                p.properties.subscription_identifiers = vec![1, 268_435_455];
                p.properties.user_properties = vec![(s("a"), s("1")), (s("a"), s("2"))];
                p.properties.payload_format_indicator = Some(1);
            }
            let pk = Packet::Publish(p.clone());
            assert_eq!(round_trip(&pk, v), pk);
            assert_eq!(p.encoded_len(v), {
                let mut o = BytesMut::new();
                p.encode(v, &mut o).unwrap();
                o.len()
            });
        }
    }
}

#[test]
fn acks_round_trip_short_and_long_forms() {
    for kind in [AckKind::PubAck, AckKind::PubRec, AckKind::PubRel, AckKind::PubComp] {
        for v in ALL {
            let a = Packet::Ack(Ack::new(kind, 9));
            assert_eq!(round_trip(&a, v), a);
        }
        let mut a = Ack::with_reason(kind, 9, ReasonCode::NOT_AUTHORIZED);
        a.properties.reason_string = Some(s("no"));
        let p = Packet::Ack(a);
        assert_eq!(round_trip(&p, ProtocolVersion::V5), p);
    }
    // 5.0 success with no properties is the two-byte form.
    let mut out = BytesMut::new();
    Packet::Ack(Ack::new(AckKind::PubAck, 1)).encode(ProtocolVersion::V5, &mut out).unwrap();
    assert_eq!(&out[..], &[0x40, 2, 0, 1]);
}

#[test]
fn subscribe_family_round_trips() {
    for v in ALL {
        let mut opts = SubscriptionOptions::new(QoS::ExactlyOnce);
        let mut props = Properties::default();
        if v.is_v5() {
            opts.no_local = true;
            opts.retain_as_published = true;
            opts.retain_handling = 2;
            props.subscription_identifier = Some(42);
        }
        let sub = Packet::Subscribe(Subscribe {
            packet_id: 5,
            properties: props,
            filters: vec![(s("a/+/c"), opts), (s("#"), SubscriptionOptions::new(QoS::AtMostOnce))],
        });
        assert_eq!(round_trip(&sub, v), sub);
        let codes = vec![ReasonCode::GRANTED_QOS_2, ReasonCode::UNSPECIFIED_ERROR];
        let suback =
            Packet::SubAck(SubAck { packet_id: 5, properties: Properties::default(), reason_codes: codes });
        assert_eq!(round_trip(&suback, v), suback);
        let unsub = Packet::Unsubscribe(Unsubscribe {
            packet_id: 6,
            properties: Properties::default(),
            filters: vec![s("a/+/c")],
        });
        assert_eq!(round_trip(&unsub, v), unsub);
        let codes = if v.is_v5() { vec![ReasonCode::NO_SUBSCRIPTION_EXISTED] } else { vec![] };
        let unsuback = Packet::UnsubAck(UnsubAck {
            packet_id: 6,
            properties: Properties::default(),
            reason_codes: codes,
        });
        assert_eq!(round_trip(&unsuback, v), unsuback);
    }
}

#[test]
fn ping_disconnect_auth_round_trip() {
    for v in ALL {
        assert_eq!(round_trip(&Packet::PingReq, v), Packet::PingReq);
        assert_eq!(round_trip(&Packet::PingResp, v), Packet::PingResp);
        let d = Packet::Disconnect(Disconnect::default());
        assert_eq!(round_trip(&d, v), d);
    }
    let mut d = Disconnect::new(ReasonCode::SERVER_SHUTTING_DOWN);
    d.properties.reason_string = Some(s("bye"));
    let d = Packet::Disconnect(d);
    assert_eq!(round_trip(&d, ProtocolVersion::V5), d);
    let a =
        Packet::Auth(Auth { reason: ReasonCode::CONTINUE_AUTHENTICATION, properties: Properties::default() });
    assert_eq!(round_trip(&a, ProtocolVersion::V5), a);
}

#[test]
fn two_packets_in_one_buffer_decode_in_order() {
    let mut out = BytesMut::new();
    Packet::PingReq.encode(ProtocolVersion::V311, &mut out).unwrap();
    Packet::Disconnect(Disconnect::default()).encode(ProtocolVersion::V311, &mut out).unwrap();
    assert_eq!(decode(&mut out, ProtocolVersion::V311, MAX).unwrap(), Some(Packet::PingReq));
    assert!(matches!(decode(&mut out, ProtocolVersion::V311, MAX).unwrap(), Some(Packet::Disconnect(_))));
    assert!(out.is_empty());
}

#[test]
fn malformed_inputs_are_rejected_with_the_right_code() {
    use ProtocolVersion::*;
    let cases: Vec<(&[u8], ProtocolVersion, ReasonCode)> = vec![
        // remaining length with 5 bytes
        (&[0x30, 0xFF, 0xFF, 0xFF, 0xFF, 0x01], V311, ReasonCode::MALFORMED_PACKET),
        // reserved packet type 0 and (in 3.1.1) 15
        (&[0x00, 0x00], V311, ReasonCode::MALFORMED_PACKET),
        (&[0xF0, 0x00], V311, ReasonCode::MALFORMED_PACKET),
        // PINGREQ with flags, SUBSCRIBE with wrong flags, PUBREL with flags 0
        (&[0xC1, 0x00], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x80, 0x06, 0, 1, 0, 1, b'a', 0], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x60, 0x02, 0, 1], V311, ReasonCode::MALFORMED_PACKET),
        // PUBLISH QoS 3, QoS 0 with DUP, wildcard topic, packet id 0
        (&[0x36, 0x05, 0, 1, b'a', 0, 1], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x38, 0x03, 0, 1, b'a'], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x30, 0x03, 0, 1, b'#'], V311, ReasonCode::TOPIC_NAME_INVALID),
        (&[0x32, 0x05, 0, 1, b'a', 0, 0], V311, ReasonCode::PROTOCOL_ERROR),
        // invalid UTF-8 and U+0000 in a topic
        (&[0x30, 0x04, 0, 2, 0xC3, 0x28], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x30, 0x04, 0, 2, b'a', 0], V311, ReasonCode::MALFORMED_PACKET),
        // string longer than the packet
        (&[0x30, 0x03, 0, 9, b'a'], V311, ReasonCode::MALFORMED_PACKET),
        // SUBSCRIBE with reserved option bits (3.1.1), with no filters, with QoS 3
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x04], V311, ReasonCode::MALFORMED_PACKET),
        (&[0x82, 0x02, 0, 1], V311, ReasonCode::PROTOCOL_ERROR),
        (&[0x82, 0x06, 0, 1, 0, 1, b'a', 0x03], V311, ReasonCode::MALFORMED_PACKET),
        // 5.0: retain handling 3, duplicated property, unknown property
        (&[0x82, 0x07, 0, 1, 0, 0, 1, b'a', 0x30], V5, ReasonCode::PROTOCOL_ERROR),
        (&[0x30, 0x0E, 0, 1, b'a', 10, 0x02, 0, 0, 0, 1, 0x02, 0, 0, 0, 2], V5, ReasonCode::PROTOCOL_ERROR),
        (&[0x30, 0x06, 0, 1, b'a', 1, 0x7F, 0], V5, ReasonCode::MALFORMED_PACKET),
        // 5.0: empty topic without alias
        (&[0x30, 0x03, 0, 0, 0], V5, ReasonCode::PROTOCOL_ERROR),
        // PINGREQ with a body
        (&[0xC0, 0x01, 0x00], V311, ReasonCode::MALFORMED_PACKET),
        // UNSUBSCRIBE packet id 0
        (&[0xA2, 0x05, 0, 0, 0, 1, b'a'], V311, ReasonCode::PROTOCOL_ERROR),
    ];
    for (i, (bytes, v, code)) in cases.into_iter().enumerate() {
        match decode_bytes(bytes, v) {
            Err(e) => assert_eq!(e.reason_code(), code, "case {i}: {e}"),
            Ok(p) => panic!("case {i} decoded to {p:?}"),
        }
    }
}

#[test]
fn connect_validation() {
    // Builds a CONNECT by hand: name, level, flags, keep alive, then payload.
    fn connect(name: &str, level: u8, flags: u8, payload: &[u8]) -> Vec<u8> {
        let mut body = vec![0, name.len() as u8];
        body.extend_from_slice(name.as_bytes());
        body.extend_from_slice(&[level, flags, 0, 60]);
        if level == 5 {
            body.push(0);
        }
        body.extend_from_slice(payload);
        let mut out = vec![0x10, body.len() as u8];
        out.extend(body);
        out
    }
    let id = [0u8, 1, b'c'];
    assert!(matches!(decode_bytes(&connect("MQTT", 4, 0x02, &id), ProtocolVersion::V311), Ok(Some(_))));
    assert!(matches!(decode_bytes(&connect("MQIsdp", 3, 0x02, &id), ProtocolVersion::V311), Ok(Some(_))));
    assert_eq!(
        decode_bytes(&connect("MQTT", 6, 0x02, &id), ProtocolVersion::V311),
        Err(DecodeError::UnsupportedProtocol(6))
    );
    assert_eq!(
        decode_bytes(&connect("MQTT", 3, 0x02, &id), ProtocolVersion::V311),
        Err(DecodeError::UnsupportedProtocol(3))
    );
    // reserved flag
    assert!(matches!(
        decode_bytes(&connect("MQTT", 4, 0x03, &id), ProtocolVersion::V311),
        Err(DecodeError::Malformed(_))
    ));
    // will QoS without will flag
    assert!(matches!(
        decode_bytes(&connect("MQTT", 4, 0x08, &id), ProtocolVersion::V311),
        Err(DecodeError::Malformed(_))
    ));
    // password without username in 3.1.1 (allowed in 5.0)
    let with_pw = [0u8, 1, b'c', 0, 2, b'p', b'w'];
    assert!(matches!(
        decode_bytes(&connect("MQTT", 4, 0x40, &with_pw), ProtocolVersion::V311),
        Err(DecodeError::Malformed(_))
    ));
    assert!(matches!(decode_bytes(&connect("MQTT", 5, 0x40, &with_pw), ProtocolVersion::V5), Ok(Some(_))));
    // trailing bytes
    assert!(matches!(
        decode_bytes(&connect("MQTT", 4, 0x02, &[0, 1, b'c', 9]), ProtocolVersion::V311),
        Err(DecodeError::Malformed(_))
    ));
    // will topic with a wildcard
    let will = [0u8, 1, b'c', 0, 1, b'#', 0, 0];
    assert!(matches!(
        decode_bytes(&connect("MQTT", 4, 0x04, &will), ProtocolVersion::V311),
        Err(DecodeError::TopicName(_))
    ));
}

#[test]
fn oversized_packet_is_rejected_from_its_header() {
    // Header says 1 MiB; only 5 bytes arrived. Rejected now, not buffered.
    let mut buf = BytesMut::from(&[0x30u8, 0x80, 0x80, 0x40, 0x00][..]);
    assert_eq!(
        decode(&mut buf, ProtocolVersion::V311, 1000),
        Err(DecodeError::TooLarge { size: 1_048_580, max: 1000 })
    );
}

fn arb_str() -> impl Strategy<Value = MqttStr> {
    "[a-zA-Z0-9/ _é€-]{0,12}".prop_map(MqttStr::from)
}

fn arb_topic() -> impl Strategy<Value = MqttStr> {
    "[a-z0-9/]{1,12}".prop_map(MqttStr::from)
}

fn arb_bytes() -> impl Strategy<Value = Bytes> {
    proptest::collection::vec(any::<u8>(), 0..40).prop_map(Bytes::from)
}

fn arb_qos() -> impl Strategy<Value = QoS> {
    prop_oneof![Just(QoS::AtMostOnce), Just(QoS::AtLeastOnce), Just(QoS::ExactlyOnce)]
}

fn arb_pub_props() -> impl Strategy<Value = PublishProperties> {
    (
        proptest::option::of(0u8..=1),
        proptest::option::of(any::<u32>()),
        proptest::option::of(1u16..),
        proptest::option::of(arb_topic()),
        proptest::option::of(arb_bytes()),
        proptest::collection::vec((arb_str(), arb_str()), 0..3),
        proptest::collection::vec(1u32..268_435_455, 0..3),
        proptest::option::of(arb_str()),
    )
        .prop_map(|(pfi, mei, ta, rt, cd, up, si, ct)| PublishProperties {
            payload_format_indicator: pfi,
            message_expiry_interval: mei,
            topic_alias: ta,
            response_topic: rt,
            correlation_data: cd,
            user_properties: up,
            subscription_identifiers: si,
            content_type: ct,
            will_delay_interval: None,
        })
}

fn arb_publish(v5: bool) -> impl Strategy<Value = Publish> {
    (arb_qos(), any::<bool>(), any::<bool>(), arb_topic(), 1u16.., arb_pub_props(), arb_bytes()).prop_map(
        move |(qos, dup, retain, topic, pid, props, payload)| Publish {
            dup: dup && qos != QoS::AtMostOnce,
            qos,
            retain,
            topic,
            packet_id: if qos == QoS::AtMostOnce { 0 } else { pid },
            properties: if v5 { props } else { PublishProperties::default() },
            payload,
        },
    )
}

proptest! {
    #[test]
    fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..300), level in 0usize..3) {
        let v = ALL[level];
        let mut buf = BytesMut::from(&bytes[..]);
        // Decode until the decoder stops making progress; it must end in
        // `Ok(None)` or an error, never a panic or an endless loop.
        for _ in 0..300 {
            match decode(&mut buf, v, 256) {
                Ok(Some(_)) => continue,
                Ok(None) | Err(_) => break,
            }
        }
    }

    #[test]
    fn publish_encode_decode_is_identity(p3 in arb_publish(false), p5 in arb_publish(true)) {
        for (p, v) in [(p3.clone(), ProtocolVersion::V311), (p3, ProtocolVersion::V31), (p5, ProtocolVersion::V5)] {
            let pk = Packet::Publish(p);
            let mut out = BytesMut::new();
            pk.encode(v, &mut out).unwrap();
            let got = decode(&mut out, v, MAX).unwrap().unwrap();
            prop_assert_eq!(got, pk);
            prop_assert!(out.is_empty());
        }
    }

    #[test]
    fn subscribe_encode_decode_is_identity(
        pid in 1u16..,
        filters in proptest::collection::vec((arb_topic(), arb_qos(), any::<bool>(), any::<bool>(), 0u8..3), 1..5),
        sub_id in proptest::option::of(1u32..268_435_455),
    ) {
        let filters = filters.into_iter().map(|(f, qos, nl, rap, rh)| {
            (f, SubscriptionOptions { qos, no_local: nl, retain_as_published: rap, retain_handling: rh })
        }).collect();
        let properties = Properties { subscription_identifier: sub_id, ..Default::default() };
        let pk = Packet::Subscribe(Subscribe { packet_id: pid, properties, filters });
        let mut out = BytesMut::new();
        pk.encode(ProtocolVersion::V5, &mut out).unwrap();
        prop_assert_eq!(decode(&mut out, ProtocolVersion::V5, MAX).unwrap().unwrap(), pk);
    }

    #[test]
    fn connect_encode_decode_is_identity(
        level in 0usize..3, clean in any::<bool>(), ka in any::<u16>(), id in arb_str(),
        will in proptest::option::of((arb_topic(), arb_bytes(), arb_qos(), any::<bool>())),
        user in proptest::option::of(arb_str()), pass in proptest::option::of(arb_bytes()),
        expiry in proptest::option::of(any::<u32>()),
    ) {
        let v = ALL[level];
        let pass = if user.is_none() && !v.is_v5() { None } else { pass };
        let mut properties = Properties::default();
        if v.is_v5() { properties.session_expiry_interval = expiry; }
        let c = Connect {
            version: v, clean_start: clean, keep_alive: ka, properties, client_id: id,
            will: will.map(|(topic, payload, qos, retain)| Will { topic, payload, qos, retain, properties: PublishProperties::default() }),
            username: user, password: pass,
        };
        let pk = Packet::Connect(Box::new(c));
        let mut out = BytesMut::new();
        pk.encode(v, &mut out).unwrap();
        prop_assert_eq!(decode(&mut out, v, MAX).unwrap().unwrap(), pk);
    }
}

/// Seed inputs for the `codec` and `connection` fuzz targets (crates/fuzz):
/// one valid stream of every kind of packet per protocol version, behind
/// the targets' control byte (version, piece size). Written to
/// `$STARLING_FUZZ_SEEDS/{codec,connection}` when set (`scripts/fuzz --seed`).
#[test]
fn fuzz_seeds_for_packet_streams() {
    let versions = [ProtocolVersion::V31, ProtocolVersion::V311, ProtocolVersion::V5];
    for (vi, v) in versions.into_iter().enumerate() {
        let mut props = PublishProperties::default();
        if v.is_v5() {
            props.message_expiry_interval = Some(30);
            props.user_properties.push((s("k"), s("v")));
            props.topic_alias = Some(1);
        }
        let publish = |qos, id: u16, topic: &str| {
            Packet::Publish(Publish {
                dup: false,
                qos,
                retain: id.is_multiple_of(2),
                topic: s(topic),
                packet_id: id,
                properties: props.clone(),
                payload: Bytes::from_static(b"hello"),
            })
        };
        let mut disconnect = Disconnect::new(ReasonCode::NORMAL_DISCONNECTION);
        if v.is_v5() {
            disconnect.properties.session_expiry_interval = Some(0);
        }
        let after_connect = vec![
            Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![
                    (s("a/+"), SubscriptionOptions::new(QoS::ExactlyOnce)),
                    (s("#"), SubscriptionOptions::new(QoS::AtMostOnce)),
                ],
            }),
            publish(QoS::AtMostOnce, 0, "a/b"),
            publish(QoS::AtLeastOnce, 2, "a/c"),
            publish(QoS::ExactlyOnce, 3, "a/d"),
            Packet::Ack(Ack::new(AckKind::PubRel, 3)),
            Packet::Ack(Ack::new(AckKind::PubAck, 1)),
            Packet::Ack(Ack::new(AckKind::PubRec, 2)),
            Packet::Ack(Ack::new(AckKind::PubComp, 2)),
            Packet::Unsubscribe(Unsubscribe {
                packet_id: 4,
                properties: Properties::default(),
                filters: vec![s("a/+")],
            }),
            Packet::PingReq,
            Packet::Disconnect(disconnect),
        ];
        let mut stream = BytesMut::new();
        for p in &after_connect {
            p.encode(v, &mut stream).unwrap();
        }
        let mut connect = BytesMut::new();
        let c = Connect {
            version: v,
            clean_start: false,
            keep_alive: 30,
            properties: Properties::default(),
            client_id: s("seed"),
            will: Some(Will {
                topic: s("w"),
                payload: Bytes::from_static(b"bye"),
                qos: QoS::AtLeastOnce,
                retain: true,
                properties: PublishProperties::default(),
            }),
            username: Some(s("u")),
            password: Some(Bytes::from_static(b"p")),
        };
        Packet::Connect(Box::new(c)).encode(v, &mut connect).unwrap();
        // Every stream decodes back, packet by packet.
        let mut check = stream.clone();
        for p in &after_connect {
            assert_eq!(decode(&mut check, v, usize::MAX).unwrap().as_ref(), Some(p));
        }
        if let Some(dir) = std::env::var_os("STARLING_FUZZ_SEEDS") {
            let dir = std::path::Path::new(&dir);
            for (target, body) in
                [("codec", [&connect[..], &stream[..]].concat()), ("connection", stream.to_vec())]
            {
                std::fs::create_dir_all(dir.join(target)).unwrap();
                // Control byte: the version, and (codec) pieces of 1 and 64 bytes.
                for piece in [0u8, 63] {
                    let mut seed = vec![(piece << 2) | vi as u8];
                    seed.extend_from_slice(&body);
                    std::fs::write(dir.join(target).join(format!("v{vi}-p{piece}")), seed).unwrap();
                }
            }
        }
    }
}

/// Found by the `codec` fuzz target: these decoded, then encoded to
/// something else.
#[test]
fn reserved_suback_codes_and_31_connack_flags_are_malformed() {
    for (v, code) in
        [(ProtocolVersion::V311, 0xFF), (ProtocolVersion::V311, 0x03), (ProtocolVersion::V5, 0x05)]
    {
        assert!(decode_bytes(&[0x90, 0x03, 0, 1, code], v).is_err(), "{v:?} SUBACK code {code:#x}");
    }
    assert!(decode_bytes(&[0x90, 0x04, 0, 1, 0x00, 0x80], ProtocolVersion::V311).unwrap().is_some());
    assert!(decode_bytes(&[0x90, 0x04, 0, 1, 0, 0x97], ProtocolVersion::V5).unwrap().is_some());
    assert!(
        decode_bytes(&[0x20, 0x02, 0x01, 0x00], ProtocolVersion::V31).is_err(),
        "3.1 has no session present"
    );
    assert!(decode_bytes(&[0x20, 0x02, 0x01, 0x00], ProtocolVersion::V311).unwrap().is_some());
}
