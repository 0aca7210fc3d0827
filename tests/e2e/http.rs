//! The HTTP listener and `$SYS`.

use std::time::Duration;

use starling_codec::QoS;

use crate::{RawClient, TestServer, V311};

#[tokio::test]
async fn health_and_metrics() {
    let server = TestServer::start().await;
    assert_eq!(server.http_get("/health/live").await, (200, "ok\n".into()));
    assert_eq!(server.http_get("/health/ready").await, (200, "ready\n".into()));
    let (mut c, _) = RawClient::connect(server.mqtt, V311, "metrics", true).await;
    c.subscribe(1, "m/t", QoS::AtLeastOnce).await;
    c.publish("m/t", b"12345", QoS::AtLeastOnce, false, 1).await;
    c.recv().await;
    c.recv().await;
    let (status, body) = server.http_get("/metrics").await;
    assert_eq!(status, 200);
    for name in [
        "starling_connections 1",
        "starling_sessions 1",
        "starling_subscriptions 1",
        "starling_messages_received_total{qos=\"1\"} 1",
        "starling_messages_sent_total{qos=\"1\"} 1",
        "# TYPE starling_messages_dropped_total counter",
    ] {
        assert!(body.contains(name), "missing {name} in\n{body}");
    }
    assert!(server.metric("starling_bytes_received_total").await > 0.0);
    assert_eq!(server.http_get("/nope").await.0, 404);
}

#[tokio::test]
async fn sys_topics_are_published_at_the_interval() {
    let server = TestServer::with(|c| c.mqtt.sys_interval_secs = 1).await;
    let (mut c, _) = RawClient::connect(server.mqtt, V311, "sys", true).await;
    // `#` does not match $SYS; an explicit subscription does.
    c.subscribe(1, "#", QoS::AtMostOnce).await;
    c.expect_silence(Duration::from_millis(1500)).await;
    c.subscribe(2, "$SYS/broker/#", QoS::AtMostOnce).await;
    let mut topics = std::collections::BTreeMap::new();
    while topics.len() < 10 {
        let m = c.recv_publish().await;
        topics.insert(m.topic.to_string(), String::from_utf8_lossy(&m.payload).to_string());
    }
    assert!(topics["$SYS/broker/version"].starts_with("starling "));
    assert!(topics["$SYS/broker/uptime"].ends_with(" seconds"));
    assert_eq!(topics["$SYS/broker/clients/connected"], "1");
    for t in [
        "$SYS/broker/messages/received",
        "$SYS/broker/messages/sent",
        "$SYS/broker/bytes/received",
        "$SYS/broker/bytes/sent",
        "$SYS/broker/subscriptions/count",
        "$SYS/broker/retained messages/count",
        "$SYS/broker/clients/total",
    ] {
        assert!(topics[t].parse::<u64>().is_ok(), "{t} = {}", topics[t]);
    }
}
