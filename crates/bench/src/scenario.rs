//! The scenarios: message flows (point-to-point, fan-out, fan-in, shared),
//! connection storm, idle connections and retained-heavy subscribe.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use bytes::Bytes;
use serde::Serialize;
use starling_codec::{AckKind, Packet, ProtocolVersion, Publish, QoS};
use tokio::sync::Semaphore;

use crate::client::{self, Transport};
use crate::stats::{encode_header, proc_sample, BrokerUsage, Latency, Tracker, HEADER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
pub enum Scenario {
    /// N publishers → N subscribers, each pair its own topic.
    P2p,
    /// One publisher → N subscribers on one topic.
    Fanout,
    /// N publishers → one subscriber on a wildcard.
    Fanin,
    /// N publishers → a `$share` group of M subscribers.
    Shared,
    /// Open connections as fast as possible; connects per second.
    ConnStorm,
    /// Hold idle connections; broker memory per connection.
    Idle,
    /// Subscribe to filters matching many retained messages.
    Retained,
    /// SUBSCRIBE → SUBACK latency (sequential subscribes from `subscribers`
    /// clients, `connections` subscribes each).
    SubLatency,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Params {
    pub scenario: Scenario,
    pub pub_targets: Vec<SocketAddr>,
    pub sub_targets: Vec<SocketAddr>,
    pub transport: Transport,
    pub version: ProtocolVersion,
    pub qos: QoS,
    pub payload: usize,
    /// Messages per second per publisher; 0 = as fast as possible.
    pub rate: u64,
    pub duration: Duration,
    pub publishers: usize,
    pub subscribers: usize,
    /// QoS>0 messages a publisher keeps unacknowledged.
    pub inflight: usize,
    /// Subscribers keep persistent sessions (ended after the run).
    pub persistent: bool,
    pub broker_pids: Vec<String>,
    pub connections: usize,
    pub concurrency: usize,
    pub retained: usize,
    pub progress: bool,
    pub run_id: String,
}

/// The result of a run, printed as a table or JSON.
#[derive(Debug, Clone, Serialize, Default)]
pub struct Report {
    pub scenario: String,
    pub transport: String,
    pub version: String,
    pub qos: u8,
    pub payload: usize,
    pub publishers: usize,
    pub subscribers: usize,
    pub duration_s: f64,
    pub sent: u64,
    pub expected: u64,
    pub received: u64,
    pub lost: u64,
    pub duplicates: u64,
    pub out_of_order: u64,
    pub send_rate: f64,
    /// Deliveries per second at the subscribers.
    pub recv_rate: f64,
    pub latency: Latency,
    /// QoS 1/2: PUBLISH sent → PUBACK (QoS 1) or PUBREC (QoS 2) received,
    /// at the publishers.
    pub ack_latency: Latency,
    pub broker: BrokerUsage,
    /// CPU seconds the load generator itself used, and its share of the
    /// run's wall time (1.0 = one full core).
    pub bench_cpu_s: f64,
    pub bench_cpu_share: f64,
    /// conn-storm: CONNECT→CONNACK per second; idle: connections held.
    pub connections: u64,
    pub connect_rate: f64,
    pub connect_latency: Latency,
    /// idle: broker RSS growth per connection, bytes.
    pub rss_per_connection_bytes: f64,
}

fn target(list: &[SocketAddr], i: usize) -> SocketAddr {
    list[i % list.len()]
}

fn broker_usage(pids: &[String]) -> Option<(f64, u64, u64)> {
    let mut cpu = 0.0;
    let mut rss = 0;
    let mut peak = 0;
    for p in pids {
        let s = proc_sample(p)?;
        cpu += s.cpu_s;
        rss += s.rss_kb;
        peak += s.peak_rss_kb;
    }
    Some((cpu, rss, peak))
}

fn self_cpu() -> f64 {
    proc_sample("self").map_or(0.0, |s| s.cpu_s)
}

pub async fn run(p: Params) -> anyhow::Result<Report> {
    match p.scenario {
        Scenario::P2p | Scenario::Fanout | Scenario::Fanin | Scenario::Shared => flow(p).await,
        Scenario::ConnStorm => conn_storm(p).await,
        Scenario::Idle => idle(p).await,
        Scenario::Retained => retained(p).await,
        Scenario::SubLatency => sub_latency(p).await,
    }
}

/// Topic a publisher uses and the filter each subscriber uses.
fn topics(p: &Params, publishers: usize, subscribers: usize) -> (Vec<String>, Vec<String>) {
    let id = &p.run_id;
    match p.scenario {
        Scenario::P2p => (
            (0..publishers).map(|i| format!("bench/{id}/p2p/{i}")).collect(),
            (0..subscribers).map(|i| format!("bench/{id}/p2p/{i}")).collect(),
        ),
        Scenario::Fanout => {
            (vec![format!("bench/{id}/fanout"); publishers], vec![format!("bench/{id}/fanout"); subscribers])
        }
        Scenario::Fanin => (
            (0..publishers).map(|i| format!("bench/{id}/fanin/{i}")).collect(),
            vec![format!("bench/{id}/fanin/+"); subscribers],
        ),
        _ => (
            (0..publishers).map(|i| format!("bench/{id}/shared/{i}")).collect(),
            vec![format!("$share/bench/bench/{id}/shared/+"); subscribers],
        ),
    }
}

struct Counters {
    sent: AtomicU64,
    received: AtomicU64,
    stop_publishing: AtomicBool,
    stop_receiving: AtomicBool,
}

async fn flow(p: Params) -> anyhow::Result<Report> {
    let (publishers, subscribers) = match p.scenario {
        Scenario::P2p => (p.publishers, p.publishers),
        Scenario::Fanout => (1, p.subscribers),
        Scenario::Fanin => (p.publishers, 1),
        _ => (p.publishers, p.subscribers),
    };
    let (pub_topics, sub_filters) = topics(&p, publishers, subscribers);
    let epoch = Instant::now();
    let counters = Arc::new(Counters {
        sent: AtomicU64::new(0),
        received: AtomicU64::new(0),
        stop_publishing: AtomicBool::new(false),
        stop_receiving: AtomicBool::new(false),
    });

    // Subscribers first, each subscribed before any publisher starts.
    let mut subs = Vec::new();
    for (i, filter) in sub_filters.iter().enumerate() {
        let id = format!("bench-{}-s{i}", p.run_id);
        let (mut r, mut w) =
            client::connect(target(&p.sub_targets, i), p.transport, p.version, &id, !p.persistent).await?;
        client::subscribe(&mut r, &mut w, filter, p.qos).await?;
        let counters = counters.clone();
        subs.push(tokio::spawn(subscriber(r, w, publishers, epoch, counters)));
    }
    let mut pubs = Vec::new();
    for (i, topic) in pub_topics.iter().enumerate() {
        let id = format!("bench-{}-p{i}", p.run_id);
        let conn = client::connect(target(&p.pub_targets, i), p.transport, p.version, &id, true).await?;
        pubs.push((conn, topic.clone(), i as u32));
    }

    let broker_start = broker_usage(&p.broker_pids);
    let cpu_start = self_cpu();
    let start = Instant::now();
    let mut tasks = Vec::new();
    for ((r, w), topic, idx) in pubs {
        tasks.push(tokio::spawn(publisher(r, w, topic, idx, p.clone(), epoch, counters.clone())));
    }
    let progress = spawn_progress(p.progress, counters.clone());
    tokio::time::sleep(p.duration).await;
    counters.stop_publishing.store(true, Ordering::Release);
    let mut sent = 0;
    let mut ack_hist = new_hist()?;
    for t in tasks {
        let (n, h) = t.await.context("publisher task")??;
        sent += n;
        let _ = ack_hist.add(&h);
    }
    let publish_end = Instant::now();
    let expected = match p.scenario {
        Scenario::P2p | Scenario::Shared | Scenario::Fanin => sent,
        _ => sent * subscribers as u64,
    };
    // Let deliveries drain: until everything arrived or 3 s without progress.
    let mut last = counters.received.load(Ordering::Acquire);
    let mut idle_since = Instant::now();
    while counters.received.load(Ordering::Acquire) < expected
        && idle_since.elapsed() < Duration::from_secs(3)
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = counters.received.load(Ordering::Acquire);
        if now != last {
            last = now;
            idle_since = Instant::now();
        }
    }
    counters.stop_receiving.store(true, Ordering::Release);
    if let Some(h) = progress {
        h.abort();
    }
    let mut trackers = Vec::new();
    for s in subs {
        trackers.push(s.await.context("subscriber task")??);
    }
    let broker_end = broker_usage(&p.broker_pids);
    let bench_cpu = self_cpu() - cpu_start;
    if p.persistent {
        // End the sessions: a clean connect with each subscriber's id.
        for i in 0..sub_filters.len() {
            let id = format!("bench-{}-s{i}", p.run_id);
            let (_, mut w) =
                client::connect(target(&p.sub_targets, i), p.transport, p.version, &id, true).await?;
            w.shutdown().await;
        }
    }

    // Accounting.
    let mut received = 0;
    let mut duplicates = 0;
    let mut out_of_order = 0;
    let mut unique = 0;
    let mut last_receive = start;
    let mut hist = new_hist()?;
    for t in &trackers {
        received += t.received;
        duplicates += t.duplicates;
        out_of_order += t.out_of_order;
        let _ = hist.add(&t.latency);
        if let Some(l) = t.last_receive {
            last_receive = last_receive.max(l);
        }
    }
    match p.scenario {
        Scenario::Shared => {
            let mut all = Tracker::new(publishers);
            for t in &trackers {
                all.merge_union(t);
            }
            unique = all.unique();
            duplicates = received - unique;
        }
        Scenario::P2p => {
            for (i, t) in trackers.iter().enumerate() {
                unique += t.unique_from(i);
            }
        }
        _ => {
            for t in &trackers {
                unique += t.unique();
            }
        }
    }
    let active = last_receive.duration_since(start).max(publish_end.duration_since(start)).as_secs_f64();
    let wall = publish_end.duration_since(start).as_secs_f64();
    let mut broker = BrokerUsage::default();
    if let (Some((c0, r0, _)), Some((c1, r1, peak))) = (broker_start, broker_end) {
        broker.cpu_s = c1 - c0;
        broker.cpu_us_per_msg = if received > 0 { broker.cpu_s * 1e6 / received as f64 } else { 0.0 };
        broker.rss_start_kb = r0;
        broker.rss_end_kb = r1;
        broker.peak_rss_kb = peak;
    }
    Ok(Report {
        scenario: format!("{:?}", p.scenario).to_lowercase(),
        transport: format!("{:?}", p.transport).to_lowercase(),
        version: p.version.to_string(),
        qos: p.qos as u8,
        payload: p.payload,
        publishers,
        subscribers,
        duration_s: wall,
        sent,
        expected,
        received,
        lost: expected.saturating_sub(unique),
        duplicates,
        out_of_order,
        send_rate: sent as f64 / wall,
        recv_rate: received as f64 / active,
        latency: Latency::from_hist(&hist),
        ack_latency: Latency::from_hist(&ack_hist),
        broker,
        bench_cpu_s: bench_cpu,
        bench_cpu_share: bench_cpu / active,
        ..Default::default()
    })
}

/// A latency histogram in nanoseconds, 1 ns to 60 s.
fn new_hist() -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    Ok(hdrhistogram::Histogram::new_with_bounds(1, 60_000_000_000, 3)?)
}

fn spawn_progress(on: bool, c: Arc<Counters>) -> Option<tokio::task::JoinHandle<()>> {
    if !on {
        return None;
    }
    Some(tokio::spawn(async move {
        let (mut s0, mut r0) = (0, 0);
        loop {
            tokio::time::sleep(Duration::from_secs(1)).await;
            let (s, r) = (c.sent.load(Ordering::Relaxed), c.received.load(Ordering::Relaxed));
            eprintln!("  sent {:>10}/s  received {:>10}/s", s - s0, r - r0);
            (s0, r0) = (s, r);
        }
    }))
}

async fn publisher(
    mut r: client::Reader,
    mut w: client::Writer,
    topic: String,
    index: u32,
    p: Params,
    epoch: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<(u64, hdrhistogram::Histogram<u64>)> {
    let size = p.payload.max(HEADER);
    let mut clock = AckClock::new()?;
    let topic: starling_codec::MqttStr = topic.as_str().into();
    let mut seq: u64 = 0;
    let mut inflight = 0usize;
    let mut next_id: u16 = 1;
    let window = p.inflight.max(1);
    let start = Instant::now();
    let batch_max = if p.qos == QoS::AtMostOnce { 64 } else { window.min(64) };
    let mut payload = vec![0u8; size];
    loop {
        if counters.stop_publishing.load(Ordering::Acquire) {
            break;
        }
        // How many may go now: the window, the rate, the batch size.
        let mut allowed = batch_max;
        if p.qos != QoS::AtMostOnce {
            allowed = allowed.min(window - inflight);
        }
        if p.rate > 0 {
            let due = (start.elapsed().as_secs_f64() * p.rate as f64) as u64;
            allowed = allowed.min(due.saturating_sub(seq) as usize);
        }
        for _ in 0..allowed {
            encode_header(&mut payload, epoch, index, seq);
            let packet_id = if p.qos == QoS::AtMostOnce {
                0
            } else {
                let id = next_id;
                next_id = next_id.checked_add(1).unwrap_or(1);
                clock.sent(id);
                id
            };
            w.push(&Packet::Publish(Publish {
                dup: false,
                qos: p.qos,
                retain: false,
                topic: topic.clone(),
                packet_id,
                properties: Default::default(),
                payload: Bytes::copy_from_slice(&payload),
            }))?;
            seq += 1;
            if p.qos != QoS::AtMostOnce {
                inflight += 1;
            }
        }
        w.flush().await?;
        counters.sent.fetch_add(allowed as u64, Ordering::Relaxed);
        let blocked = (p.qos != QoS::AtMostOnce && inflight >= window) || allowed == 0;
        if p.qos != QoS::AtMostOnce {
            // Read acknowledgements: wait for one when blocked, then take
            // whatever else is buffered.
            if blocked {
                let wait = if p.rate > 0 { Duration::from_millis(1) } else { Duration::from_millis(200) };
                if let Ok(pk) = tokio::time::timeout(wait, r.next()).await {
                    handle_pub_ack(pk?, &mut w, &mut inflight, &mut clock).await?;
                }
            }
            while let Some(pk) = r.try_next()? {
                handle_pub_ack(Some(pk), &mut w, &mut inflight, &mut clock).await?;
            }
        } else if allowed == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    // Collect outstanding acknowledgements so the broker's counts settle.
    let deadline = Instant::now() + Duration::from_secs(5);
    while inflight > 0 && Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(500), r.next()).await {
            Ok(pk) => handle_pub_ack(pk?, &mut w, &mut inflight, &mut clock).await?,
            Err(_) => continue,
        }
        w.flush().await?;
    }
    w.shutdown().await;
    Ok((seq, clock.hist))
}

/// Send time of each outstanding packet id, and the histogram of
/// PUBLISH → PUBACK/PUBREC times.
struct AckClock {
    sent_at: Vec<Option<Instant>>,
    hist: hdrhistogram::Histogram<u64>,
}

impl AckClock {
    fn new() -> anyhow::Result<AckClock> {
        Ok(AckClock { sent_at: vec![None; usize::from(u16::MAX) + 1], hist: new_hist()? })
    }

    fn sent(&mut self, id: u16) {
        self.sent_at[usize::from(id)] = Some(Instant::now());
    }

    fn acked(&mut self, id: u16) {
        if let Some(t) = self.sent_at[usize::from(id)].take() {
            let _ = self.hist.record(t.elapsed().as_nanos() as u64);
        }
    }
}

async fn handle_pub_ack(
    pk: Option<Packet>,
    w: &mut client::Writer,
    inflight: &mut usize,
    clock: &mut AckClock,
) -> anyhow::Result<()> {
    match pk {
        Some(Packet::Ack(a)) => match a.kind {
            AckKind::PubAck => {
                clock.acked(a.packet_id);
                *inflight = inflight.saturating_sub(1);
            }
            AckKind::PubComp => *inflight = inflight.saturating_sub(1),
            AckKind::PubRec => {
                clock.acked(a.packet_id);
                w.ack(AckKind::PubRel, a.packet_id).await?
            }
            AckKind::PubRel => {}
        },
        Some(_) => {}
        None => anyhow::bail!("broker closed a publisher's connection"),
    }
    Ok(())
}

async fn subscriber(
    mut r: client::Reader,
    mut w: client::Writer,
    publishers: usize,
    epoch: Instant,
    counters: Arc<Counters>,
) -> anyhow::Result<Tracker> {
    let mut t = Tracker::new(publishers);
    loop {
        if counters.stop_receiving.load(Ordering::Acquire) {
            break;
        }
        let pk = match tokio::time::timeout(Duration::from_millis(100), r.next()).await {
            Ok(pk) => pk?,
            Err(_) => continue,
        };
        let mut pk = pk;
        let mut n = 0;
        while let Some(packet) = pk {
            match packet {
                Packet::Publish(m) => {
                    t.record(&m.payload, epoch, Instant::now());
                    n += 1;
                    match m.qos {
                        QoS::AtMostOnce => {}
                        QoS::AtLeastOnce => w.ack(AckKind::PubAck, m.packet_id).await?,
                        QoS::ExactlyOnce => w.ack(AckKind::PubRec, m.packet_id).await?,
                    }
                }
                Packet::Ack(a) if a.kind == AckKind::PubRel => w.ack(AckKind::PubComp, a.packet_id).await?,
                _ => {}
            }
            pk = r.try_next()?;
        }
        counters.received.fetch_add(n, Ordering::Relaxed);
        w.flush().await?;
    }
    w.shutdown().await;
    Ok(t)
}

async fn conn_storm(p: Params) -> anyhow::Result<Report> {
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let broker_start = broker_usage(&p.broker_pids);
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let permit = sem.clone().acquire_owned().await?;
        let addr = target(&p.pub_targets, i);
        let (transport, version, run) = (p.transport, p.version, p.run_id.clone());
        tasks.push(tokio::spawn(async move {
            let t0 = Instant::now();
            let conn = client::connect(addr, transport, version, &format!("storm-{run}-{i}"), true).await;
            drop(permit);
            conn.map(|c| (c, t0.elapsed()))
        }));
    }
    let mut conns = Vec::new();
    let mut hist = new_hist()?;
    for t in tasks {
        let (c, d) = t.await??;
        let _ = hist.record(d.as_nanos() as u64);
        conns.push(c);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let broker_end = broker_usage(&p.broker_pids);
    for (_, mut w) in conns {
        w.shutdown().await;
    }
    let mut broker = BrokerUsage::default();
    if let (Some((c0, r0, _)), Some((c1, r1, peak))) = (broker_start, broker_end) {
        broker = BrokerUsage {
            cpu_s: c1 - c0,
            cpu_us_per_msg: 0.0,
            rss_start_kb: r0,
            rss_end_kb: r1,
            peak_rss_kb: peak,
        };
    }
    Ok(Report {
        scenario: "conn-storm".into(),
        transport: format!("{:?}", p.transport).to_lowercase(),
        version: p.version.to_string(),
        duration_s: elapsed,
        connections: p.connections as u64,
        connect_rate: p.connections as f64 / elapsed,
        connect_latency: Latency::from_hist(&hist),
        broker,
        ..Default::default()
    })
}

async fn idle(p: Params) -> anyhow::Result<Report> {
    let before = broker_usage(&p.broker_pids);
    let sem = Arc::new(Semaphore::new(p.concurrency.max(1)));
    let mut tasks = Vec::with_capacity(p.connections);
    for i in 0..p.connections {
        let permit = sem.clone().acquire_owned().await?;
        let addr = target(&p.pub_targets, i);
        let (transport, version, run) = (p.transport, p.version, p.run_id.clone());
        tasks.push(tokio::spawn(async move {
            let c = client::connect(addr, transport, version, &format!("idle-{run}-{i}"), true).await;
            drop(permit);
            c
        }));
    }
    let mut conns = Vec::new();
    for t in tasks {
        conns.push(t.await??);
    }
    // Let allocations settle, then hold for the duration.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let after = broker_usage(&p.broker_pids);
    tokio::time::sleep(p.duration).await;
    let held = broker_usage(&p.broker_pids);
    for (_, mut w) in conns {
        w.shutdown().await;
    }
    let mut report = Report {
        scenario: "idle".into(),
        transport: format!("{:?}", p.transport).to_lowercase(),
        version: p.version.to_string(),
        duration_s: p.duration.as_secs_f64(),
        connections: p.connections as u64,
        ..Default::default()
    };
    if let (Some((c0, r0, _)), Some((_, r1, _)), Some((c2, r2, peak))) = (before, after, held) {
        report.rss_per_connection_bytes = (r1.max(r2) as f64 - r0 as f64) * 1024.0 / p.connections as f64;
        report.broker = BrokerUsage {
            cpu_s: c2 - c0,
            cpu_us_per_msg: 0.0,
            rss_start_kb: r0,
            rss_end_kb: r2,
            peak_rss_kb: peak,
        };
    }
    Ok(report)
}

async fn retained(p: Params) -> anyhow::Result<Report> {
    let prefix = format!("bench/{}/retained", p.run_id);
    let (mut r, mut w) = client::connect(
        target(&p.pub_targets, 0),
        p.transport,
        p.version,
        &format!("ret-{}-p", p.run_id),
        true,
    )
    .await?;
    let epoch = Instant::now();
    let mut payload = vec![0u8; p.payload.max(HEADER)];
    // Store the retained messages (QoS 1, acknowledged one window at a time).
    let mut inflight = 0usize;
    let mut clock = AckClock::new()?;
    for i in 0..p.retained {
        encode_header(&mut payload, epoch, 0, i as u64);
        let id = (i % 60_000) as u16 + 1;
        w.push(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtLeastOnce,
            retain: true,
            topic: format!("{prefix}/{i}").as_str().into(),
            packet_id: id,
            properties: Default::default(),
            payload: Bytes::copy_from_slice(&payload),
        }))?;
        inflight += 1;
        if inflight >= 256 {
            w.flush().await?;
            while inflight > 0 {
                handle_pub_ack(r.next().await?, &mut w, &mut inflight, &mut clock).await?;
            }
        }
    }
    w.flush().await?;
    while inflight > 0 {
        handle_pub_ack(r.next().await?, &mut w, &mut inflight, &mut clock).await?;
    }
    // Subscribers fetch them all.
    let broker_start = broker_usage(&p.broker_pids);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..p.subscribers {
        let addr = target(&p.sub_targets, s);
        let (transport, version, filter, n) = (p.transport, p.version, format!("{prefix}/#"), p.retained);
        let run = p.run_id.clone();
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) =
                client::connect(addr, transport, version, &format!("ret-{run}-s{s}"), true).await?;
            let t0 = Instant::now();
            client::subscribe(&mut r, &mut w, &filter, QoS::AtMostOnce).await?;
            let mut got = 0;
            while got < n {
                match tokio::time::timeout(Duration::from_secs(10), r.next()).await {
                    Ok(Ok(Some(Packet::Publish(_)))) => got += 1,
                    Ok(Ok(Some(_))) => {}
                    _ => break,
                }
            }
            w.shutdown().await;
            anyhow::Ok((got as u64, t0.elapsed()))
        }));
    }
    let mut received = 0;
    let mut hist = hdrhistogram::Histogram::<u64>::new_with_bounds(1, 600_000_000_000, 3)?;
    for t in tasks {
        let (got, d) = t.await??;
        received += got;
        let _ = hist.record(d.as_nanos() as u64);
    }
    let elapsed = start.elapsed().as_secs_f64();
    let broker_end = broker_usage(&p.broker_pids);
    // Clean up so repeated runs start empty.
    for i in 0..p.retained {
        w.push(&Packet::Publish(Publish {
            dup: false,
            qos: QoS::AtMostOnce,
            retain: true,
            topic: format!("{prefix}/{i}").as_str().into(),
            packet_id: 0,
            properties: Default::default(),
            payload: Bytes::new(),
        }))?;
        if i % 1000 == 999 {
            w.flush().await?;
        }
    }
    w.flush().await?;
    w.shutdown().await;
    let mut broker = BrokerUsage::default();
    if let (Some((c0, r0, _)), Some((c1, r1, peak))) = (broker_start, broker_end) {
        broker = BrokerUsage {
            cpu_s: c1 - c0,
            cpu_us_per_msg: if received > 0 { (c1 - c0) * 1e6 / received as f64 } else { 0.0 },
            rss_start_kb: r0,
            rss_end_kb: r1,
            peak_rss_kb: peak,
        };
    }
    let expected = (p.retained * p.subscribers) as u64;
    Ok(Report {
        scenario: "retained".into(),
        transport: format!("{:?}", p.transport).to_lowercase(),
        version: p.version.to_string(),
        payload: p.payload,
        subscribers: p.subscribers,
        duration_s: elapsed,
        sent: p.retained as u64,
        expected,
        received,
        lost: expected.saturating_sub(received),
        recv_rate: received as f64 / elapsed,
        // Time from SUBSCRIBE to the last retained message, per subscriber.
        latency: Latency::from_hist(&hist),
        broker,
        ..Default::default()
    })
}

async fn sub_latency(p: Params) -> anyhow::Result<Report> {
    let per_client = p.connections.max(1);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for s in 0..p.subscribers {
        let addr = target(&p.sub_targets, s);
        let (transport, version, run) = (p.transport, p.version, p.run_id.clone());
        tasks.push(tokio::spawn(async move {
            let (mut r, mut w) =
                client::connect(addr, transport, version, &format!("sublat-{run}-{s}"), true).await?;
            let mut hist = new_hist()?;
            for i in 0..per_client {
                let t0 = Instant::now();
                client::subscribe(&mut r, &mut w, &format!("bench/{run}/sublat/{s}/{i}"), QoS::AtLeastOnce)
                    .await?;
                let _ = hist.record(t0.elapsed().as_nanos() as u64);
            }
            w.shutdown().await;
            anyhow::Ok(hist)
        }));
    }
    let mut hist = new_hist()?;
    for t in tasks {
        let _ = hist.add(&t.await??);
    }
    let elapsed = start.elapsed().as_secs_f64();
    Ok(Report {
        scenario: "sub-latency".into(),
        transport: format!("{:?}", p.transport).to_lowercase(),
        version: p.version.to_string(),
        subscribers: p.subscribers,
        duration_s: elapsed,
        sent: hist.len(),
        received: hist.len(),
        recv_rate: hist.len() as f64 / elapsed,
        latency: Latency::from_hist(&hist),
        ..Default::default()
    })
}
