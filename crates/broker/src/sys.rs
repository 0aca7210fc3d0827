//! `$SYS/broker/...` statistics, published as node-local retained
//! messages every `sys_interval_secs`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use starling_codec::QoS;

use crate::broker::Broker;
use crate::message::Message;

/// Current values of every `$SYS` topic.
pub fn sys_values(broker: &Broker) -> Vec<(&'static str, String)> {
    let m = broker.metrics();
    let load = |c: &std::sync::atomic::AtomicU64| c.load(std::sync::atomic::Ordering::Relaxed);
    let g = broker.gauges();
    vec![
        ("$SYS/broker/version", format!("starling {}", env!("CARGO_PKG_VERSION"))),
        ("$SYS/broker/uptime", format!("{} seconds", broker.uptime().as_secs())),
        ("$SYS/broker/clients/connected", load(&m.connections_current).to_string()),
        ("$SYS/broker/clients/total", g.sessions.to_string()),
        ("$SYS/broker/messages/received", m.total_received().to_string()),
        ("$SYS/broker/messages/sent", m.total_sent().to_string()),
        ("$SYS/broker/bytes/received", load(&m.bytes_received).to_string()),
        ("$SYS/broker/bytes/sent", load(&m.bytes_sent).to_string()),
        ("$SYS/broker/subscriptions/count", g.subscriptions.to_string()),
        ("$SYS/broker/retained messages/count", g.retained.to_string()),
    ]
}

/// Publishes the `$SYS` topics once.
pub fn publish_sys_once(broker: &Broker) {
    for (topic, value) in sys_values(broker) {
        let msg = Message::new(topic.into(), Bytes::from(value), QoS::AtMostOnce, true);
        broker.publish_sys(Arc::new(msg));
    }
}

/// Runs until shutdown, publishing every `interval`.
pub async fn run_sys_publisher(broker: Broker, interval: Duration) {
    let mut shutdown = broker.shutdown_signal();
    let mut tick = tokio::time::interval(interval);
    loop {
        tokio::select! {
            _ = tick.tick() => publish_sys_once(&broker),
            _ = shutdown.changed() => return,
        }
    }
}
