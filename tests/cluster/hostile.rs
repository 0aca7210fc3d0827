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
        s.puback(m.packet_id).await;
        assert!(matches!(p.recv().await, Some(Packet::Ack(_))));
        worst = worst.max(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    worst
}

/// Runs `attack` beside a well-behaved pair; the node must not panic and
/// its RSS must grow by less than `max_growth_mib` (each attack's bound is
/// below what an unbounded buffer would take: see the callers).
async fn with_steady<F: std::future::Future<Output = ()>>(
    c: &Cluster,
    name: &str,
    max_growth_mib: u64,
    attack: F,
) {
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
    assert!(
        rss1 < rss0 + max_growth_mib * 1024,
        "{name}: memory grew from {rss0} to {rss1} KiB (bound {max_growth_mib} MiB)"
    );
}

/// What became of one CONNECT of the flood.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Flood {
    Accepted,
    Refused,
    Closed,
    Other,
    Stuck,
}

#[tokio::test(flavor = "multi_thread")]
async fn slowloris_connect_flood_and_connection_limit() {
    let mut c = node().await;
    let addr = c.node(1).mqtt;
    with_steady(&c, "slowloris", 32, async {
        // 100 sockets trickle a CONNECT one byte every 300 ms: each is cut
        // off by the 2 s connect timeout, not held open.
        let mut tasks = Vec::new();
        for _ in 0..100 {
            tasks.push(tokio::spawn(async move {
                let mut s = TcpStream::connect(addr).await.unwrap();
                let connect = [0x10u8, 13, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 60, 0, 1, b'x'];
                // Cut off: a write fails before the whole CONNECT (4.5 s
                // of trickling) is out. Held: every byte went through.
                for b in connect {
                    if s.write_all(&[b]).await.is_err() {
                        return true;
                    }
                    tokio::time::sleep(Duration::from_millis(300)).await;
                }
                false
            }));
        }
        for t in tasks {
            assert!(t.await.unwrap(), "a slowloris socket was held for its whole CONNECT");
        }
    })
    .await;
    let rejected0 = c.metric(1, "starling_connections_rejected_total").await;
    let mut flood = std::collections::BTreeMap::new();
    with_steady(&c, "CONNECT flood", 64, async {
        // 3000 CONNECTs as fast as possible, 200 at a time, under the
        // 400-connection limit (which closed sockets still count against
        // until the node has released them): each CONNECT is served, or
        // refused at the limit (closed unread, and counted); none is stuck,
        // no task fails.
        let mut outcomes = std::collections::BTreeMap::new();
        let mut set = tokio::task::JoinSet::new();
        let mut count = |r: Result<Flood, tokio::task::JoinError>| {
            *outcomes.entry(r.expect("a flood task panicked")).or_insert(0u32) += 1;
        };
        for i in 0..3000 {
            if set.len() >= 200 {
                if let Some(r) = set.join_next().await {
                    count(r);
                }
            }
            set.spawn(async move {
                let mut c = RawClient::tcp(addr, V311).await;
                // Client ids f0..f199: the same ids come back (taking over
                // connections that are closing anyway).
                let mut connect = bytes::BytesMut::new();
                Packet::Connect(Box::new(starling_tests::connect_packet(
                    V311,
                    &format!("f{}", i % 200),
                    true,
                )))
                .encode(V311, &mut connect)
                .expect("encode");
                if c.try_send_bytes(&connect).await.is_err() {
                    return Flood::Closed;
                }
                match c.recv_within(Duration::from_secs(10)).await {
                    Ok(Some(Packet::ConnAck(a))) if a.code == 0 => Flood::Accepted,
                    Ok(Some(Packet::ConnAck(_))) => Flood::Refused,
                    Ok(Some(_)) => Flood::Other,
                    Ok(None) => Flood::Closed,
                    Err(_) => Flood::Stuck,
                }
            });
        }
        while let Some(r) = set.join_next().await {
            count(r);
        }
        flood = outcomes;
    })
    .await;
    let rejected = c.metric(1, "starling_connections_rejected_total").await - rejected0;
    println!("CONNECT flood outcomes: {flood:?}; rejections counted: {rejected}");
    let n = |k| flood.get(&k).copied().unwrap_or(0);
    assert_eq!(n(Flood::Accepted) + n(Flood::Closed), 3000, "only served or refused: {flood:?}");
    assert!(f64::from(n(Flood::Closed)) <= rejected, "every refusal counted: {flood:?}, {rejected} counted");
    assert!(n(Flood::Accepted) >= 400, "at least the limit's worth served: {flood:?}");
    assert!(c.node_mut(1).running());
}

#[tokio::test(flavor = "multi_thread")]
async fn oversized_lengths_packet_bombs_and_random_bytes() {
    let c = node().await;
    let addr = c.node(1).mqtt;
    // 20 packets of 1 MiB accepted: a bound well under 20 MiB shows
    // nothing is kept.
    with_steady(&c, "size limits", 16, async {
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
    let errors0 = c.metric(1, "starling_protocol_errors_total").await;
    let mut closed = 0;
    with_steady(&c, "random bytes after CONNECT", 16, async {
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
            // Garbage is a protocol error: closed (3.1.1: without a reply).
            // A random header may also announce a length the junk does not
            // fill, and then the node waits for the rest: not closed yet.
            let mut answer = Ok(Some(Packet::PingResp));
            while let Ok(Some(_)) = answer {
                answer = x.recv_within(Duration::from_secs(2)).await;
            }
            if matches!(answer, Ok(None)) {
                closed += 1;
            }
        }
    })
    .await;
    let errors = c.metric(1, "starling_protocol_errors_total").await - errors0;
    println!("random bytes: {closed} of 100 connections closed, {errors} protocol errors counted");
    assert!(closed >= 50 && errors >= 50.0, "garbage is refused: {closed} closed, {errors} protocol errors");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_subscriber_that_never_reads_cannot_grow_memory() {
    let c = node().await;
    let addr = c.node(1).mqtt;
    // Subscribes, then never reads a byte again.
    let (mut lazy, _) = RawClient::connect(addr, V311, "never-reads", true).await;
    lazy.subscribe(1, "flood/#", QoS::AtLeastOnce).await;
    // 100 MB at a subscriber that does not read; its queue holds at most
    // 200 messages (2 MB), so the node grows far less than the flood.
    with_steady(&c, "slow consumer", 32, async {
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
