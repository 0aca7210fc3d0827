//! Will messages: when they are published and when they are not.

use std::time::{Duration, Instant};

use starling_codec::{Disconnect, Packet, QoS, ReasonCode, Will};
use starling_tests::connect_packet;

use crate::{RawClient, TestServer, V311, V5};

fn with_will(
    v: starling_codec::ProtocolVersion,
    id: &str,
    topic: &str,
    delay: Option<u32>,
) -> starling_codec::Connect {
    let mut c = connect_packet(v, id, true);
    let mut w = Will {
        topic: topic.into(),
        payload: bytes::Bytes::from(format!("{id} is gone")),
        qos: QoS::AtLeastOnce,
        retain: false,
        properties: Default::default(),
    };
    w.properties.will_delay_interval = delay;
    c.will = Some(w);
    c
}

async fn watcher(server: &TestServer, id: &str, filter: &str) -> RawClient {
    let (mut w, _) = RawClient::connect(server.mqtt, V311, id, true).await;
    w.subscribe(1, filter, QoS::AtLeastOnce).await;
    w
}

#[tokio::test]
async fn will_published_on_abnormal_close_not_after_disconnect() {
    let server = TestServer::start().await;
    let mut w = watcher(&server, "will-watch", "wills/#").await;
    // Socket dropped without DISCONNECT: will published.
    let (c, _) = RawClient::connect_with(server.mqtt, with_will(V311, "w-drop", "wills/drop", None)).await;
    drop(c);
    let m = w.recv_publish().await;
    assert_eq!((m.topic.as_str(), &m.payload[..]), ("wills/drop", &b"w-drop is gone"[..]));
    // Normal DISCONNECT: no will.
    let (c, _) = RawClient::connect_with(server.mqtt, with_will(V311, "w-clean", "wills/clean", None)).await;
    c.disconnect().await;
    w.expect_silence(Duration::from_millis(400)).await;
    // 5.0 DISCONNECT with reason 0x04: will published.
    let (mut c, _) = RawClient::connect_with(server.mqtt, with_will(V5, "w-04", "wills/04", None)).await;
    c.send(&Packet::Disconnect(Disconnect::new(ReasonCode::DISCONNECT_WITH_WILL))).await;
    assert_eq!(w.recv_publish().await.topic.as_str(), "wills/04");
    assert_eq!(server.metric("starling_wills_published_total").await, 2.0);
}

#[tokio::test]
async fn will_published_on_protocol_error_and_keepalive_timeout() {
    let server = TestServer::start().await;
    let mut w = watcher(&server, "will-watch2", "wills2/#").await;
    let (mut c, _) =
        RawClient::connect_with(server.mqtt, with_will(V311, "w-proto", "wills2/proto", None)).await;
    c.send_bytes(&[0x00, 0x00]).await; // reserved packet type
    c.expect_closed().await;
    assert_eq!(w.recv_publish().await.topic.as_str(), "wills2/proto");
    let mut conn = with_will(V311, "w-ka", "wills2/ka", None);
    conn.keep_alive = 1;
    let (_c, _) = RawClient::connect_with(server.mqtt, conn).await;
    assert_eq!(w.recv_publish().await.topic.as_str(), "wills2/ka");
}

#[tokio::test]
async fn will_published_when_the_session_is_taken_over() {
    let server = TestServer::start().await;
    let mut w = watcher(&server, "will-watch3", "wills3/#").await;
    let (_a, _) = RawClient::connect_with(server.mqtt, with_will(V311, "w-to", "wills3/to", None)).await;
    let (_b, _) = RawClient::connect(server.mqtt, V311, "w-to", true).await;
    assert_eq!(w.recv_publish().await.topic.as_str(), "wills3/to");
}

#[tokio::test]
async fn will_delay_waits_and_is_cancelled_by_resumption() {
    let server = TestServer::start().await;
    let mut w = watcher(&server, "will-watch4", "wills4/#").await;
    let persistent = |id: &str, delay| {
        let mut c = with_will(V5, id, &format!("wills4/{id}"), Some(delay));
        c.clean_start = false;
        c.properties.session_expiry_interval = Some(60);
        c
    };
    // Delay 1 s: published about a second after the connection drops.
    let (c, _) = RawClient::connect_with(server.mqtt, persistent("delayed", 1)).await;
    let dropped = Instant::now();
    drop(c);
    let m = w.recv_publish().await;
    assert_eq!(m.topic.as_str(), "wills4/delayed");
    assert!(dropped.elapsed() >= Duration::from_millis(900), "published after the delay");
    // Resumed within the delay: never published.
    let (c, _) = RawClient::connect_with(server.mqtt, persistent("resumed", 2)).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_c, ack) = RawClient::connect_with(server.mqtt, persistent("resumed", 2)).await;
    assert!(ack.session_present);
    w.expect_silence(Duration::from_millis(2500)).await;
}

#[tokio::test]
async fn will_delay_longer_than_session_expiry_publishes_at_expiry() {
    let server = TestServer::start().await;
    let mut w = watcher(&server, "will-watch5", "wills5/#").await;
    let mut c = with_will(V5, "short", "wills5/short", Some(100));
    c.properties.session_expiry_interval = Some(1);
    let (c, _) = RawClient::connect_with(server.mqtt, c).await;
    let dropped = Instant::now();
    drop(c);
    // At the session's expiry (1 s), long before the will delay (100 s):
    // no tighter upper bound, a loaded machine may be slow.
    match w.recv_within(Duration::from_secs(60)).await {
        Ok(Some(starling_codec::Packet::Publish(p))) => assert_eq!(p.topic.as_str(), "wills5/short"),
        other => panic!("no will at session expiry: {other:?}"),
    }
    let t = dropped.elapsed();
    assert!(t >= Duration::from_millis(900), "published at session expiry, not before: {t:?}");
}

#[tokio::test]
async fn retained_will_is_stored() {
    let server = TestServer::start().await;
    let mut c = with_will(V311, "w-ret", "wills6/status", None);
    if let Some(w) = c.will.as_mut() {
        w.retain = true;
    }
    let (c, _) = RawClient::connect_with(server.mqtt, c).await;
    drop(c);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut late = watcher(&server, "will-late", "wills6/status").await;
    let m = late.recv_publish().await;
    assert!(m.retain);
    assert_eq!(&m.payload[..], b"w-ret is gone");
}
