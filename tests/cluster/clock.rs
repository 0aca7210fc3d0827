//! A node whose clock is off by minutes (libfaketime, Debian's faketime):
//! message expiry is counted on replicated time (the leader's clock in the
//! log), so retained messages, forwarded messages and durable queued
//! messages keep their remaining lifetime on that node — none is expired
//! early or kept late because of its clock.

use bytes::Bytes;
use starling_codec::{Packet, PublishProperties, QoS};
use starling_tests::connect_packet;

use crate::{Cluster, RawClient, V5};

const FAKETIME: &str = "/usr/lib/x86_64-linux-gnu/faketime/libfaketimeMT.so.1";

fn publish(topic: &str, payload: &'static [u8], retain: bool, expiry: u32, id: u16) -> Packet {
    Packet::Publish(starling_codec::Publish {
        dup: false,
        qos: QoS::AtLeastOnce,
        retain,
        topic: topic.into(),
        packet_id: id,
        properties: PublishProperties { message_expiry_interval: Some(expiry), ..Default::default() },
        payload: Bytes::from_static(payload),
    })
}

/// The remaining expiry of the next message, which must be `payload`.
async fn next_expiry(s: &mut RawClient, payload: &[u8]) -> u32 {
    let m = s.recv_publish().await;
    assert_eq!(&m.payload[..], payload);
    if m.qos == QoS::AtLeastOnce {
        s.puback(m.packet_id).await;
    }
    m.properties.message_expiry_interval.expect("an expiry interval")
}

async fn skewed(offset: &str) {
    assert!(std::path::Path::new(FAKETIME).exists(), "libfaketime missing (Debian package faketime)");
    let mut c = Cluster::start(2).await;
    let n3 = c.add_node(3, Vec::new());
    // The wall clock only (what NTP trouble looks like); monotonic time
    // (timers) runs normally.
    n3.env = vec![
        ("LD_PRELOAD".into(), FAKETIME.into()),
        ("FAKETIME".into(), offset.into()),
        ("DONT_FAKE_MONOTONIC".into(), "1".into()),
    ];
    let join = c.node(1).grpc;
    c.launch(3, Some(join));
    c.wait_ready(3).await;
    c.wait_members(3).await;
    // Its log's timestamps show the skew.
    let log3 = std::fs::read_to_string(&c.node(3).log).unwrap();
    println!("node 3 ({offset}): {}", log3.lines().next().unwrap_or_default());

    // A persistent session on node 3, away.
    let mut away = connect_packet(V5, "away", false);
    away.properties.session_expiry_interval = Some(600);
    let (mut s, _) = RawClient::connect_with(c.node(3).mqtt, away.clone()).await;
    s.subscribe(1, "clock/queued", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut live, _) = RawClient::connect(c.node(3).mqtt, V5, "live", true).await;
    live.subscribe(1, "clock/live", QoS::AtLeastOnce).await;

    // Published through node 1 (the leader, right clock), 120 s each.
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V5, "pub", true).await;
    for (i, (topic, payload, retain)) in
        [("clock/retained", &b"r"[..], true), ("clock/live", b"l", false), ("clock/queued", b"q", false)]
            .into_iter()
            .enumerate()
    {
        p.send(&publish(topic, payload, retain, 120, i as u16 + 1)).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(a)) if !a.reason.is_error()));
    }
    let ok = |e: u32| (100..=120).contains(&e);
    let e = next_expiry(&mut live, b"l").await;
    assert!(ok(e), "forwarded to node 3: {e} s left");
    let (mut r, _) = RawClient::connect(c.node(3).mqtt, V5, "late", true).await;
    r.subscribe(1, "clock/retained", QoS::AtLeastOnce).await;
    let e = next_expiry(&mut r, b"r").await;
    assert!(ok(e), "retained, read on node 3: {e} s left");
    let (mut s, ack) = RawClient::connect_with(c.node(3).mqtt, away).await;
    assert!(ack.session_present);
    let e = next_expiry(&mut s, b"q").await;
    assert!(ok(e), "queued durably, delivered by node 3: {e} s left");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_five_minutes_ahead_keeps_expiry_right() {
    skewed("+5m").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_node_five_minutes_behind_keeps_expiry_right() {
    skewed("-5m").await;
}
