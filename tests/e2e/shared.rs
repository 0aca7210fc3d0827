//! `$share/{group}/{filter}`: one member per message, members that leave
//! are skipped, groups are independent of each other and of plain
//! subscriptions.

use std::collections::HashSet;
use std::time::Duration;

use starling_codec::{Packet, Properties, QoS, SubscriptionOptions};

use crate::{disconnect_reason, RawClient, TestServer, V311, V5};

async fn drain(c: &mut RawClient) -> Vec<String> {
    let mut v = Vec::new();
    while let Ok(Some(p)) = c.recv_within(Duration::from_millis(300)).await {
        if let Packet::Publish(p) = p {
            v.push(String::from_utf8_lossy(&p.payload).to_string());
        }
    }
    v
}

#[tokio::test]
async fn each_message_goes_to_exactly_one_member() {
    let server = TestServer::start().await;
    let mut members = Vec::new();
    for i in 0..3 {
        // Member 1 has a persistent session: offline, it stays in the group.
        let (mut m, _) = RawClient::connect(server.mqtt, V311, &format!("sh-{i}"), i != 1).await;
        m.subscribe(1, "$share/workers/jobs/+", QoS::AtLeastOnce).await;
        members.push(m);
    }
    let (mut other_group, _) = RawClient::connect(server.mqtt, V311, "sh-other", true).await;
    other_group.subscribe(1, "$share/audit/jobs/#", QoS::AtMostOnce).await;
    let (mut plain, _) = RawClient::connect(server.mqtt, V311, "sh-plain", true).await;
    plain.subscribe(1, "jobs/+", QoS::AtMostOnce).await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "sh-pub", true).await;
    for i in 0..30 {
        p.publish("jobs/x", i.to_string().as_bytes(), QoS::AtMostOnce, false, 0).await;
    }
    let mut seen = HashSet::new();
    let mut total = 0;
    for m in members.iter_mut() {
        let got = drain(m).await;
        assert!(!got.is_empty(), "round robin gives every member some");
        total += got.len();
        seen.extend(got);
    }
    assert_eq!(total, 30, "no message twice");
    assert_eq!(seen.len(), 30, "no message lost");
    assert_eq!(drain(&mut other_group).await.len(), 30, "another group gets its own copy");
    assert_eq!(drain(&mut plain).await.len(), 30, "plain subscribers are unaffected");

    // Members that leave are skipped, including an offline persistent one
    // (once the server has seen them go: wait for its connection count).
    let before = server.metric("starling_connections").await;
    for m in members.drain(1..) {
        m.disconnect().await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while server.metric("starling_connections").await > before - 2.0 {
        assert!(std::time::Instant::now() < deadline, "the server did not see the members leave");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..10 {
        p.publish("jobs/y", i.to_string().as_bytes(), QoS::AtMostOnce, false, 0).await;
    }
    assert_eq!(drain(&mut members[0]).await.len(), 10);
}

#[tokio::test]
async fn no_local_on_a_shared_subscription_is_a_protocol_error() {
    let server = TestServer::start().await;
    let (mut c, _) = RawClient::connect(server.mqtt, V5, "sh-nl", true).await;
    let o = SubscriptionOptions { no_local: true, ..SubscriptionOptions::new(QoS::AtMostOnce) };
    c.send(&Packet::Subscribe(starling_codec::Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("$share/g/t".into(), o)],
    }))
    .await;
    let seen = c.expect_closed().await;
    assert_eq!(disconnect_reason(&seen), Some(starling_codec::ReasonCode::PROTOCOL_ERROR));
}

#[tokio::test]
async fn retained_messages_are_not_sent_to_shared_subscriptions() {
    let server = TestServer::start().await;
    let (mut p, _) = RawClient::connect(server.mqtt, V311, "shr-pub", true).await;
    p.publish("shr/t", b"kept", QoS::AtMostOnce, true, 0).await;
    let (mut m, _) = RawClient::connect(server.mqtt, V311, "shr-m", true).await;
    m.subscribe(1, "$share/g/shr/t", QoS::AtMostOnce).await;
    m.expect_silence(Duration::from_millis(300)).await;
}
