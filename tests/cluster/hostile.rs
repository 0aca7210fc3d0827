//! Hostile clients against a real node process: slowloris, CONNECT
//! floods, oversized lengths, packet bombs around the size limit, random
//! bytes, and a subscriber that never reads under a flood. For each, a
//! well-behaved client keeps getting served while the attack runs, the
//! node's memory stays bounded, and nothing panics. Latencies and memory
//! are printed (the benchmarks, not these tests, hold performance
//! targets).

use std::time::{Duration, Instant};

use starling_codec::{Packet, QoS, ReasonCode};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

use crate::{disconnect_reason, Cluster, RawClient, V311, V5};

/// A node with tighter limits than the defaults, to reach them quickly.
async fn node() -> Cluster {
    let mut c = Cluster::start(0).await;
    c.add_node(
        1,
        ["mqtt.connect_timeout_secs=2", "listeners.max_connections=400", "mqtt.max_queued_messages=200"]
            .iter()
            .flat_map(|s| ["--set".to_string(), s.to_string()])
            .collect(),
    );
    c.launch(1, None);
    c.wait_ready(1).await;
    c
}

/// Runs round trips (publish QoS 1 → receive) for a well-behaved pair
/// until `stop`; returns the slowest round trip.
async fn steady_client(c: &Cluster, stop: tokio::sync::watch::Receiver<bool>) -> Duration {
    let (mut s, _) = RawClient::connect(c.node(1).mqtt, V311, "steady-sub", true).await;
    s.subscribe(1, "steady/t", QoS::AtLeastOnce).await;
    let (mut p, _) = RawClient::connect(c.node(1).mqtt, V311, "steady-pub", true).await;
    let mut worst = Duration::ZERO;
    let mut i: u16 = 0;
    while !*stop.borrow() {
        i = i.wrapping_add(1).max(1);
        let t0 = Instant::now();
        p.publish("steady/t", b"ping", QoS::AtLeastOnce, false, i).await;
        let m = s.recv_publish().await;
        s.send(&Packet::Ack(starling_codec::Ack::new(starling_codec::AckKind::PubAck, m.packet_id))).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worst
}

async fn with_steady<F: std::future::Future<Output = ()>>(c: &Cluster, name: &str, attack: F) {
    let rss0 = c.node(1).rss_kb();
    let (tx, rx) = tokio::sync::watch::channel(false);
    let steady = steady_client(c, rx);
    let attack = async {
        attack.await;
        let _ = tx.send(true);
    };
    let (worst, ()) = tokio::join!(steady, attack);
    let rss1 = c.node(1).rss_kb();
    println!("{name}: slowest well-behaved round trip {worst:?}; node RSS {rss0} KiB -> {rss1} KiB");
    assert!(!c.node(1).panicked(), "{name}: the node panicked:\n{}", c.node(1).log_tail());
    assert!(rss1 < rss0 + 200 * 1024, "{name}: memory grew from {rss0} to {rss1} KiB");
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connect_flood_and_connection_limit() {
    let mut c = node().await;
    let addr = c.node(1).mqtt;
    with_steady(&c, "slowloris", async {
        // 100 sockets trickle a CONNECT one byte every 300 ms: each is cut
        // off by the 2 s connect timeout, not held open.
        let mut tasks = Vec::new();
        for _ in 0..100 {
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let connect = [0x10u8, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x'];
                let started = Instant::now();
                for b in connect {
                    if s.write_all(&[b]).await.is_err() {
                        return started.elapsed();
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                started.elapsed()
            }));
        }
        for t in tasks {
            let held = t.await.unwrap();
            assert!(held < Duration::from_secs(4), "a slowloris socket was held {held:?}");
        }
    })
    .await;
    with_steady(&c, "CONNECT flood", async {
        // 3000 CONNECTs as fast as possible, 200 at a time, over the
        // 400-connection limit: refused or served, never stuck.
        let mut ok = 0;
        let mut set = tokio::task::JoinSet::new();
        for i in 0..3000 {
            if set.len() >= 200 {
                if let Some(Ok(true)) = set.join_next().await {
                    ok += 1;
                }
            }
            set.spawn(async move {
                let mut c = RawClient::tcp(addr, V311).await;
                let r = c.recv_within(Duration::ZERO).await;
                drop(r);
                c.try_send_bytes(&[
                    0x10,
                    15,
                    0,
                    4,
                    b'M',
                    b'Q',
                    b'T',
                    b'T',
                    4,
                    2,
                    0,
                    60,
                    0,
                    3,
                    b'f',
                    (i % 200) as u8,
                    b'x',
                ])
                .await
                .is_ok()
                    && matches!(
                        c.recv_within(Duration::from_secs(10)).await,
                        Ok(Some(Packet::ConnAck(_))) | Ok(None)
                    )
            });
        }
        while let Some(r) = set.join_next().await {
            if let Ok(true) = r {
                ok += 1;
            }
        }
        assert!(ok > 0);
    })
    .await;
    assert!(c.node_mut(1).running());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_lengths_packet_bombs_and_random_bytes() {
    let c = node().await;
    let addr = c.node(1).mqtt;
    with_steady(&c, "size limits", async {
        for _ in 0..20 {
            // Announces 256 MiB: refused from the header, nothing buffered.
            let (mut x, _) = RawClient::connect(addr, V5, "bomb", true).await;
            let _ = x.try_send_bytes(&[0x30, 0xFF, 0xFF, 0xFF, 0x7F]).await;
            assert_eq!(disconnect_reason(&x.expect_closed().await), Some(ReasonCode::PACKET_TOO_LARGE));
            // Just under the 1 MiB limit: accepted.
            let (mut y, _) = RawClient::connect(addr, V5, "under", true).await;
            let payload = vec![7u8; 1024 * 1024 - 64];
            y.publish("big/under", &payload, QoS::AtLeastOnce, false, 1).await;
            assert!(matches!(y.recv().await, Some(Packet::Ack(_))));
            // Just over: DISCONNECT 0x95.
            let payload = vec![7u8; 1024 * 1024 + 16];
            y.publish("big/over", &payload, QoS::AtLeastOnce, false, 2).await;
            assert_eq!(disconnect_reason(&y.expect_closed().await), Some(ReasonCode::PACKET_TOO_LARGE));
        }
    })
    .await;
    with_steady(&c, "random bytes after CONNECT", async {
        let mut seed = 0x9E37_79B9_7F4A_7C15u64;
        for i in 0..100 {
            let (mut x, _) = RawClient::connect(addr, V311, &format!("noise-{i}"), true).await;
            let junk: Vec<u8> = (0..65536)
                .map(|_| {
                    seed ^= seed << 13;
                    seed ^= seed >> 7;
                    seed ^= seed << 17;
                    (seed >> 32) as u8
                })
                .collect();
            let _ = x.try_send_bytes(&junk).await;
            let _ = x.recv_within(Duration::from_millis(200)).await;
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_cannot_grow_memory() {
    let c = node().await;
    let addr = c.node(1).mqtt;
    // Subscribes, then never reads a byte again.
    let (mut lazy, _) = RawClient::connect(addr, V311, "never-reads", true).await;
    lazy.subscribe(1, "flood/#", QoS::AtLeastOnce).await;
    with_steady(&c, "slow consumer", async {
        let (mut p, _) = RawClient::connect(addr, V311, "flooder", true).await;
        let payload = vec![1u8; 10 * 1024];
        // 100 MB of QoS 0 at the subscriber that does not read.
        for _ in 0..10_000 {
            p.publish("flood/x", &payload, QoS::AtMostOnce, false, 0).await;
        }
        p.send(&Packet::PingReq).await;
        assert_eq!(p.recv().await, Some(Packet::PingResp), "the flooder is still served");
    })
    .await;
    let (_, body) = starling_tests::http_get(c.node(1).http, "/metrics").await;
    let dropped: f64 = body
        .lines()
        .find(|l| l.starts_with("starling_messages_dropped_total{reason=\"queue_full\",qos=\"0\"}"))
        .and_then(|l| l.split_whitespace().last()?.parse().ok())
        .unwrap_or(0.0);
    assert!(dropped > 0.0, "the bounded queue dropped and counted");
    drop(lazy);
}
