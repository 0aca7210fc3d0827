//! Counters and gauges the broker keeps; rendered as Prometheus text by the
//! HTTP listener and published under `$SYS`.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

use starling_codec::QoS;

/// Why a message was not delivered to a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// The session's queue held `max_queued_messages`.
    QueueFull,
    /// Its message expiry interval passed before it could be sent.
    Expired,
    /// Larger than the client's maximum packet size.
    TooLarge,
    /// QoS 0 for a session that is not connected.
    OfflineQos0,
    /// The subscriber may not read the topic (ACL).
    NotAuthorized,
}

impl DropReason {
    pub fn label(self) -> &'static str {
        match self {
            DropReason::QueueFull => "queue_full",
            DropReason::Expired => "expired",
            DropReason::TooLarge => "too_large",
            DropReason::OfflineQos0 => "offline_qos0",
            DropReason::NotAuthorized => "not_authorized",
        }
    }

    const ALL: [DropReason; 5] = [
        DropReason::QueueFull,
        DropReason::Expired,
        DropReason::TooLarge,
        DropReason::OfflineQos0,
        DropReason::NotAuthorized,
    ];

    fn index(self) -> usize {
        self as usize
    }
}

#[derive(Debug, Default)]
pub struct Metrics {
    pub connections_current: AtomicU64,
    pub connections_total: AtomicU64,
    pub connections_rejected: AtomicU64,
    pub messages_received: [AtomicU64; 3],
    pub messages_sent: [AtomicU64; 3],
    /// PUBLISH payload bytes received and sent, by QoS.
    pub payload_received: [AtomicU64; 3],
    pub payload_sent: [AtomicU64; 3],
    pub bytes_received: AtomicU64,
    pub bytes_sent: AtomicU64,
    /// Indexed by `DropReason as usize`, then QoS.
    dropped: [[AtomicU64; 3]; 5],
    pub protocol_errors: AtomicU64,
    pub wills_published: AtomicU64,
    pub sessions_expired: AtomicU64,
    pub sessions_taken_over: AtomicU64,
    pub keepalive_timeouts: AtomicU64,
    /// PUBLISHes refused by the ACL.
    pub publish_denied: AtomicU64,
    /// SUBSCRIBE filters refused by the ACL.
    pub subscribe_denied: AtomicU64,
    /// SUBSCRIBE filters refused by `max_subscriptions_per_client`.
    pub subscribe_quota: AtomicU64,
    /// Times a client's reading was paused by the publish rate limit.
    pub rate_limited: AtomicU64,
    /// Durable messages refused: byte quota or waiting line full.
    pub durable_refused: AtomicU64,
    /// Durable messages a session's queue had no room for (counted on the
    /// session's owner).
    pub durable_queue_full: AtomicU64,
    /// Durable messages not committed (no quorum) and so not acknowledged.
    pub durable_unavailable: AtomicU64,
    /// Trims/releases dropped because the acknowledgement line was full.
    pub durable_acks_dropped: AtomicU64,
    /// Retries of durable acknowledgements that could not be committed.
    pub durable_ack_retries: AtomicU64,
}

fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

impl Metrics {
    pub fn received(&self, qos: QoS, payload: usize) {
        inc(&self.messages_received[qos as usize]);
        self.payload_received[qos as usize].fetch_add(payload as u64, Ordering::Relaxed);
    }

    pub fn sent(&self, qos: QoS, payload: usize) {
        inc(&self.messages_sent[qos as usize]);
        self.payload_sent[qos as usize].fetch_add(payload as u64, Ordering::Relaxed);
    }

    pub fn dropped(&self, reason: DropReason, qos: QoS) {
        inc(&self.dropped[reason.index()][qos as usize]);
    }

    pub fn dropped_count(&self, reason: DropReason, qos: QoS) -> u64 {
        self.dropped[reason.index()][qos as usize].load(Ordering::Relaxed)
    }

    pub fn connection_opened(&self) {
        inc(&self.connections_current);
        inc(&self.connections_total);
    }

    pub fn connection_closed(&self) {
        self.connections_current.fetch_sub(1, Ordering::Relaxed);
    }

    pub fn total_received(&self) -> u64 {
        self.messages_received.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn total_sent(&self) -> u64 {
        self.messages_sent.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    /// Prometheus text exposition of the counters plus the given gauges.
    pub fn render_prometheus(&self, gauges: &Gauges) -> String {
        let mut s = String::with_capacity(4096);
        let g = |s: &mut String, name: &str, help: &str, kind: &str, v: u64| {
            let _ = writeln!(s, "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}");
        };
        let load = |c: &AtomicU64| c.load(Ordering::Relaxed);
        g(&mut s, "starling_connections", "Open MQTT connections.", "gauge", load(&self.connections_current));
        g(
            &mut s,
            "starling_connections_total",
            "MQTT connections accepted since start.",
            "counter",
            load(&self.connections_total),
        );
        g(
            &mut s,
            "starling_connections_rejected_total",
            "CONNECTs refused with an error CONNACK.",
            "counter",
            load(&self.connections_rejected),
        );
        g(&mut s, "starling_sessions", "Sessions held by this node.", "gauge", gauges.sessions);
        g(
            &mut s,
            "starling_subscriptions",
            "Subscriptions in the route table.",
            "gauge",
            gauges.subscriptions,
        );
        g(&mut s, "starling_retained_messages", "Retained messages.", "gauge", gauges.retained);
        let _ = writeln!(s, "# HELP starling_messages_received_total PUBLISH packets received, by QoS.");
        let _ = writeln!(s, "# TYPE starling_messages_received_total counter");
        for q in 0..3 {
            let _ = writeln!(
                s,
                "starling_messages_received_total{{qos=\"{q}\"}} {}",
                load(&self.messages_received[q])
            );
        }
        let _ = writeln!(s, "# HELP starling_messages_sent_total PUBLISH packets sent, by QoS.");
        let _ = writeln!(s, "# TYPE starling_messages_sent_total counter");
        for q in 0..3 {
            let _ =
                writeln!(s, "starling_messages_sent_total{{qos=\"{q}\"}} {}", load(&self.messages_sent[q]));
        }
        g(
            &mut s,
            "starling_bytes_received_total",
            "Bytes read from clients.",
            "counter",
            load(&self.bytes_received),
        );
        g(
            &mut s,
            "starling_bytes_sent_total",
            "Bytes written to clients.",
            "counter",
            load(&self.bytes_sent),
        );
        let _ = writeln!(s, "# HELP starling_messages_dropped_total Deliveries dropped, by reason and QoS.");
        let _ = writeln!(s, "# TYPE starling_messages_dropped_total counter");
        for r in DropReason::ALL {
            for q in 0..3 {
                let _ = writeln!(
                    s,
                    "starling_messages_dropped_total{{reason=\"{}\",qos=\"{q}\"}} {}",
                    r.label(),
                    load(&self.dropped[r.index()][q])
                );
            }
        }
        g(
            &mut s,
            "starling_protocol_errors_total",
            "Connections closed for a protocol violation.",
            "counter",
            load(&self.protocol_errors),
        );
        g(
            &mut s,
            "starling_wills_published_total",
            "Will messages published.",
            "counter",
            load(&self.wills_published),
        );
        g(
            &mut s,
            "starling_sessions_expired_total",
            "Persistent sessions removed at expiry.",
            "counter",
            load(&self.sessions_expired),
        );
        g(
            &mut s,
            "starling_sessions_taken_over_total",
            "Connections closed because the client id connected again.",
            "counter",
            load(&self.sessions_taken_over),
        );
        g(
            &mut s,
            "starling_publish_denied_total",
            "PUBLISHes refused by the ACL.",
            "counter",
            load(&self.publish_denied),
        );
        g(
            &mut s,
            "starling_subscribe_denied_total",
            "SUBSCRIBE filters refused by the ACL.",
            "counter",
            load(&self.subscribe_denied),
        );
        g(
            &mut s,
            "starling_subscribe_quota_exceeded_total",
            "SUBSCRIBE filters refused by max_subscriptions_per_client.",
            "counter",
            load(&self.subscribe_quota),
        );
        g(
            &mut s,
            "starling_rate_limited_total",
            "Times a client's reading was paused by its publish rate limit.",
            "counter",
            load(&self.rate_limited),
        );
        g(
            &mut s,
            "starling_keepalive_timeouts_total",
            "Connections closed for missing the keep-alive deadline.",
            "counter",
            load(&self.keepalive_timeouts),
        );
        let durable: [(&str, &str, &AtomicU64); 5] = [
            (
                "starling_durable_refused_total",
                "Durable messages refused (queue byte quota or waiting line full); MQTT 5 publishers get 0x97.",
                &self.durable_refused,
            ),
            (
                "starling_durable_queue_full_total",
                "Durable messages dropped for one session whose queue was full (counted by the leader that appended them to the log).",
                &self.durable_queue_full,
            ),
            (
                "starling_durable_unavailable_total",
                "Durable messages not committed (no quorum), so not acknowledged as stored.",
                &self.durable_unavailable,
            ),
            (
                "starling_durable_acks_dropped_total",
                "Subscriber acknowledgements of durable messages dropped (line full); resent once after a failover.",
                &self.durable_acks_dropped,
            ),
            (
                "starling_durable_ack_retries_total",
                "Retries of durable acknowledgements that could not be committed.",
                &self.durable_ack_retries,
            ),
        ];
        for (name, help, c) in durable {
            g(&mut s, name, help, "counter", load(c));
        }
        g(
            &mut s,
            "starling_durable_queued_bytes",
            "Bytes held by the durable queues (cluster-wide).",
            "gauge",
            gauges.durable_bytes,
        );
        g(
            &mut s,
            "starling_durable_queued_messages",
            "Messages in the durable queues (cluster-wide).",
            "gauge",
            gauges.durable_messages,
        );
        s
    }
}

/// Point-in-time values that are not counters.
#[derive(Debug, Default, Clone, Copy)]
pub struct Gauges {
    pub sessions: u64,
    pub subscriptions: u64,
    pub retained: u64,
    /// Durable queues, from the replicated state (the same on every node).
    pub durable_bytes: u64,
    pub durable_messages: u64,
}
