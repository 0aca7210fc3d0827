//! Session lifetime: clean session / clean start, expiry, subscriptions
//! kept across reconnects.

use std::time::Duration;

use starling_codec::{Disconnect, Packet, QoS, ReasonCode};
use starling_tests::connect_packet;

use crate::{disconnect_reason, RawClient, TestServer, V311, V5};

#[tokio::test]
async fn persistent_subscriptions_survive_reconnects_clean_ones_do_not() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "ps-pub", true).await;
    let (mut s, _) = RawClient::connect(server.mqtt, V311, "ps-sub", false).await;
    s.subscribe(1, "ps/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    let (mut s, ack) = RawClient::connect(server.mqtt, V311, "ps-sub", false).await;
    assert!(ack.session_present);
    p.publish("ps/t", b"kept", QoS::AtMostOnce, false, 0).await;
    assert_eq!(&s.recv_publish().await.payload[..], b"kept");
    s.disconnect().await;
    // A clean session discards the stored subscription.
    let (mut s, ack) = RawClient::connect(server.mqtt, V311, "ps-sub", true).await;
    assert!(!ack.session_present);
    p.publish("ps/t", b"gone", QoS::AtMostOnce, false, 0).await;
    s.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn v5_session_expires_after_its_interval() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "exp", false);
    c.properties.session_expiry_interval = Some(1);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c.clone()).await;
    s.subscribe(1, "exp/t", QoS::AtLeastOnce).await;
    s.disconnect().await;
    // Within the interval: resumed.
    let (s, ack) = RawClient::connect_with(server.mqtt, c.clone()).await;
    assert!(ack.session_present);
    s.disconnect().await;
    // Wait for the expiry itself (a loaded machine may tick late); a
    // reconnect would resume the session, so watch the counter instead.
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    while server.metric("starling_sessions_expired_total").await < 1.0 {
        assert!(std::time::Instant::now() < deadline, "the session never expired");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let (_s, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert!(!ack.session_present, "expired");
}

#[tokio::test]
async fn v5_expiry_zero_ends_the_session_with_the_connection() {
    let server = TestServer::start().await;
    let c = connect_packet(V5, "exp0", false);
    let (s, _) = RawClient::connect_with(server.mqtt, c.clone()).await;
    s.disconnect().await;
    let (_s, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert!(!ack.session_present);
}

#[tokio::test]
async fn disconnect_can_change_session_expiry_but_not_from_zero() {
    let server = TestServer::start().await;
    let mut c = connect_packet(V5, "dexp", false);
    c.properties.session_expiry_interval = Some(60);
    let (mut s, _) = RawClient::connect_with(server.mqtt, c.clone()).await;
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(0);
    s.send(&Packet::Disconnect(d)).await;
    s.expect_closed().await;
    let (s, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert!(!ack.session_present, "DISCONNECT set expiry 0: session ended");
    s.disconnect().await;
    // Connected with 0, DISCONNECT with non-zero: protocol error.
    let (mut s, _) = RawClient::connect(server.mqtt, V5, "dexp0", false).await;
    let mut d = Disconnect::new(ReasonCode::SUCCESS);
    d.properties.session_expiry_interval = Some(30);
    s.send(&Packet::Disconnect(d)).await;
    assert_eq!(disconnect_reason(&s.expect_closed().await), Some(ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn max_session_expiry_caps_and_reports() {
    let server = TestServer::with(|c| c.mqtt.max_session_expiry_secs = 100).await;
    let mut c = connect_packet(V5, "cap", false);
    c.properties.session_expiry_interval = Some(5000);
    let (_s, ack) = RawClient::connect_with(server.mqtt, c).await;
    assert_eq!(ack.properties.session_expiry_interval, Some(100));
}
