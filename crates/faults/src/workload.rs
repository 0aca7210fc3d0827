//! The workload: MQTT clients with seeded choices, each recording what it
//! did and saw in the history.
//!
//! - publishers (QoS 1 and 2, clean sessions, 3.1.1 and 5.0) send
//!   `name/epoch/seq` payloads on `jt/p/<name>`, one at a time;
//! - persistent subscribers (QoS 1 and 2) on `jt/p/+` that also go offline
//!   on purpose; clean subscribers on `jt/p/#`; a `$share` group;
//! - a retained writer on `jt/r/<n>`;
//! - a prober that subscribes to a fresh topic, publishes to it through
//!   another node once the SUBACK is in, and waits for it;
//! - a pair of connections fighting over one client id.
//!
//! Clients connect through the load balancer or straight to a node (seeded
//! choice), reconnect after any loss, and keep their own keepalive.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;
use bytes::Bytes;
use serde_json::json;
use starling_codec::{
    Ack, AckKind, Packet, Properties, ProtocolVersion, Publish, QoS, Subscribe, SubscriptionOptions,
    Unsubscribe,
};
use tokio::sync::watch;

use crate::client::{connect_packet, Alive, Mqtt};
use crate::history::History;
use crate::rng::Rng;

/// How long a client waits for an acknowledgement before it counts the
/// operation as indeterminate and reconnects.
const ACK_WAIT: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Phase {
    /// Everything runs, faults are injected.
    Run,
    /// Publishers, the prober and the takeover pair stop; subscribers
    /// reconnect and receive what is queued for them.
    Drain,
    /// Everyone disconnects.
    End,
}

/// Where clients can connect: the load balancer and each member node.
#[derive(Clone)]
pub struct Targets {
    pub lb: Option<SocketAddr>,
    /// (slot, MQTT address) of the members, kept current by the nemesis.
    pub nodes: Arc<Mutex<Vec<(usize, SocketAddr)>>>,
}

impl Targets {
    /// A seeded choice: the load balancer 40 % of the time (when there is
    /// one), otherwise a member node. `("lb", addr)` or `(slot, addr)`.
    fn pick(&self, rng: &mut Rng, direct_only: bool) -> (String, SocketAddr) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clone();
        if let Some(lb) = self.lb {
            if !direct_only && (nodes.is_empty() || rng.chance(0.4)) {
                return ("lb".into(), lb);
            }
        }
        let (slot, addr) = *rng.pick(&nodes);
        (slot.to_string(), addr)
    }
}

#[derive(Clone)]
pub struct Ctx {
    pub hist: History,
    pub targets: Targets,
    pub phase: watch::Receiver<Phase>,
    pub seed: u64,
    /// Subscribers that finished draining.
    pub drained: Arc<std::sync::atomic::AtomicUsize>,
}

impl Ctx {
    fn phase(&self) -> Phase {
        *self.phase.borrow()
    }
}

async fn sleep_ms(rng: &mut Rng, lo: u64, hi: u64) {
    tokio::time::sleep(Duration::from_millis(rng.range(lo, hi))).await;
}

/// How a client connects.
struct Login<'a> {
    /// The name it records under.
    name: &'a str,
    id: &'a str,
    version: ProtocolVersion,
    clean: bool,
    /// Straight to a node, never through the load balancer.
    direct_only: bool,
}

impl<'a> Login<'a> {
    /// A clean session with the client id `name`, through the load
    /// balancer or straight to a node.
    fn new(name: &'a str, version: ProtocolVersion) -> Login<'a> {
        Login { name, id: name, version, clean: true, direct_only: false }
    }

    fn clean(self, clean: bool) -> Self {
        Login { clean, ..self }
    }

    fn id(self, id: &'a str) -> Self {
        Login { id, ..self }
    }

    /// Straight to a node only.
    fn direct(self) -> Self {
        Login { direct_only: true, ..self }
    }
}

/// Connects, recording the attempt; `None` after a failure (already
/// recorded, with a short back-off).
async fn connect(ctx: &Ctx, rng: &mut Rng, login: Login<'_>, epoch: u64) -> Option<(Mqtt, bool, String)> {
    let Login { name, id, version, clean, direct_only } = login;
    let (via, addr) = ctx.targets.pick(rng, direct_only);
    ctx.hist.rec(name, "connect", json!({"ep": epoch, "via": via}));
    match Mqtt::connect(addr, connect_packet(version, id, clean, 0), ACK_WAIT).await {
        Ok((m, ack)) if ack.code == 0 => {
            ctx.hist.rec(name, "connected", json!({"ep": epoch, "via": via, "sp": ack.session_present}));
            Some((m, ack.session_present, via))
        }
        Ok((_, ack)) => {
            ctx.hist.rec(name, "connect-fail", json!({"ep": epoch, "via": via, "code": ack.code}));
            sleep_ms(rng, 200, 600).await;
            None
        }
        Err(e) => {
            ctx.hist.rec(name, "connect-fail", json!({"ep": epoch, "via": via, "err": e.to_string()}));
            sleep_ms(rng, 200, 600).await;
            None
        }
    }
}

fn publish_packet(topic: &str, payload: String, qos: QoS, retain: bool, pid: u16) -> Packet {
    Packet::Publish(Publish {
        dup: false,
        qos,
        retain,
        topic: topic.into(),
        packet_id: pid,
        properties: Default::default(),
        payload: Bytes::from(payload),
    })
}

/// Waits for the ack of kind `kind` for `pid`, answering nothing else.
/// `Ok(Some(reason))`, `Ok(None)` on timeout, `Err` on loss.
async fn wait_ack(m: &mut Mqtt, kind: AckKind, pid: u16) -> Result<Option<u8>> {
    let deadline = Instant::now() + ACK_WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(None);
        }
        match m.recv(left).await? {
            Some(Packet::Ack(a)) if a.kind == kind && a.packet_id == pid => return Ok(Some(a.reason.0)),
            Some(Packet::Disconnect(d)) => anyhow::bail!("DISCONNECT 0x{:02x}", d.reason.0),
            Some(_) => {}
            None => return Ok(None),
        }
    }
}

/// Sends one QoS 1/2 PUBLISH and completes its flow. `Ok(Some(code))`: the
/// broker answered (PUBACK / PUBREC reason); `Ok(None)` or `Err`: unknown.
async fn publish_once(
    m: &mut Mqtt,
    topic: &str,
    payload: String,
    qos: QoS,
    retain: bool,
    pid: u16,
) -> Result<Option<u8>> {
    m.send(&publish_packet(topic, payload, qos, retain, pid)).await?;
    if qos == QoS::AtLeastOnce {
        return wait_ack(m, AckKind::PubAck, pid).await;
    }
    let Some(code) = wait_ack(m, AckKind::PubRec, pid).await? else { return Ok(None) };
    if code < 0x80 {
        m.send(&Packet::Ack(Ack::new(AckKind::PubRel, pid))).await?;
        // The message is acknowledged at PUBREC; PUBCOMP only ends the flow.
        let _ = wait_ack(m, AckKind::PubComp, pid).await;
    }
    Ok(Some(code))
}

/// Why an acknowledgement did not come (or was an error).
fn describe(r: Result<Option<u8>>) -> String {
    match r {
        Ok(Some(code)) => format!("reason code 0x{code:02x}"),
        Ok(None) => "no acknowledgement within 5 s".into(),
        Err(e) => e.to_string(),
    }
}

fn qos_of(n: u8) -> QoS {
    match n {
        2 => QoS::ExactlyOnce,
        _ => QoS::AtLeastOnce,
    }
}

/// A publisher: `jt/p/<name>`, sequence numbers per connection epoch.
pub async fn publisher(ctx: Ctx, name: String, qos: u8, version: ProtocolVersion) {
    let mut rng = Rng::fork(ctx.seed, &name);
    let topic = format!("jt/p/{name}");
    let mut epoch = 0u64;
    while ctx.phase() == Phase::Run {
        epoch += 1;
        let Some((mut m, _, _)) = connect(&ctx, &mut rng, Login::new(&name, version), epoch).await else {
            continue;
        };
        let mut seq = 0u64;
        loop {
            if ctx.phase() != Phase::Run {
                ctx.hist.rec(&name, "bye", json!({"ep": epoch}));
                m.disconnect().await;
                return;
            }
            seq += 1;
            let pid = (seq % 65_000) as u16 + 1;
            let payload = format!("{name}/{epoch}/{seq}");
            ctx.hist.rec(&name, "pub", json!({"p": name, "e": epoch, "s": seq, "q": qos, "topic": topic}));
            match publish_once(&mut m, &topic, payload, qos_of(qos), false, pid).await {
                Ok(Some(code)) if code < 0x80 => {
                    ctx.hist.rec(&name, "pub-ok", json!({"p": name, "e": epoch, "s": seq, "code": code}));
                }
                Ok(Some(code)) => {
                    ctx.hist.rec(&name, "pub-fail", json!({"p": name, "e": epoch, "s": seq, "code": code}));
                }
                other => {
                    let why = match other {
                        Err(e) => e.to_string(),
                        _ => "no acknowledgement within 5 s".into(),
                    };
                    ctx.hist.rec(&name, "pub-info", json!({"p": name, "e": epoch, "s": seq, "why": why}));
                    ctx.hist.rec(&name, "lost", json!({"ep": epoch, "why": why}));
                    break;
                }
            }
            sleep_ms(&mut rng, 20, 60).await;
        }
    }
}

/// A subscriber; `persistent` ones keep their session (and go offline on
/// purpose now and then); `filter` may be a `$share` filter.
pub async fn subscriber(
    ctx: Ctx,
    name: String,
    filter: String,
    qos: u8,
    persistent: bool,
    version: ProtocolVersion,
) {
    let mut rng = Rng::fork(ctx.seed, &name);
    // QoS 2 packet ids received and not yet released: kept for the life of
    // the session, as a client library does.
    let mut awaiting_rel: HashSet<u16> = HashSet::new();
    let mut subscribed_once = false;
    let mut epoch = 0u64;
    let mut drained_reported = false;
    loop {
        if ctx.phase() == Phase::End {
            return;
        }
        epoch += 1;
        let Some((mut m, session_present, _)) =
            connect(&ctx, &mut rng, Login::new(&name, version).clean(!persistent), epoch).await
        else {
            continue;
        };
        if !persistent {
            awaiting_rel.clear();
        }
        if !(persistent && session_present) {
            if persistent && subscribed_once {
                ctx.hist.rec(&name, "session-lost", json!({"ep": epoch}));
            }
            ctx.hist.rec(&name, "sub", json!({"ep": epoch, "f": filter}));
            let sub = Packet::Subscribe(Subscribe {
                packet_id: 1,
                properties: Properties::default(),
                filters: vec![(filter.as_str().into(), SubscriptionOptions::new(qos_of(qos)))],
            });
            let acked = async {
                m.send(&sub).await?;
                let deadline = Instant::now() + ACK_WAIT;
                loop {
                    let left = deadline.saturating_duration_since(Instant::now());
                    match m.recv(left).await? {
                        Some(Packet::SubAck(a)) => return Ok::<_, anyhow::Error>(Some(a)),
                        Some(_) => {}
                        None => return Ok(None),
                    }
                }
            }
            .await;
            match acked {
                Ok(Some(a)) if a.reason_codes.iter().all(|c| c.0 < 0x80) => {
                    ctx.hist.rec(&name, "suback", json!({"ep": epoch, "f": filter}));
                    subscribed_once = true;
                }
                other => {
                    ctx.hist.rec(
                        &name,
                        "lost",
                        json!({"ep": epoch, "why": format!("SUBSCRIBE not acknowledged: {other:?}")}),
                    );
                    sleep_ms(&mut rng, 200, 600).await;
                    continue;
                }
            }
        }
        // Persistent subscribers go offline on purpose every few seconds.
        let online_for =
            Duration::from_millis(if persistent { rng.range(3_000, 12_000) } else { u64::MAX / 4 });
        let since = Instant::now();
        let mut alive = Alive::default();
        let mut drain_quiet_since: Option<Instant> = None;
        let why = loop {
            let phase = ctx.phase();
            if phase == Phase::End {
                ctx.hist.rec(&name, "bye", json!({"ep": epoch}));
                m.disconnect().await;
                return;
            }
            if phase == Phase::Run && since.elapsed() > online_for {
                ctx.hist.rec(&name, "offline", json!({"ep": epoch}));
                m.disconnect().await;
                sleep_ms(&mut rng, 500, 4_000).await;
                break None;
            }
            if phase == Phase::Drain && !drained_reported {
                let quiet = *drain_quiet_since.get_or_insert(Instant::now());
                if alive.last_rx.max(quiet).elapsed() > Duration::from_secs(3) {
                    drained_reported = true;
                    ctx.hist.rec(&name, "drained", json!({"ep": epoch}));
                    ctx.drained.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            }
            match m.recv_alive(&mut alive, Duration::from_millis(250)).await {
                Err(why) => break Some(why),
                Ok(None) => {}
                Ok(Some(p)) => match p {
                    Packet::Publish(p) => {
                        let fresh = !(p.qos == QoS::ExactlyOnce && awaiting_rel.contains(&p.packet_id));
                        let text = String::from_utf8_lossy(&p.payload).into_owned();
                        ctx.hist.rec(
                            &name,
                            "recv",
                            json!({"ep": epoch, "topic": &*p.topic, "m": text, "q": p.qos as u8, "dup": p.dup,
                                       "retain": p.retain, "fresh": fresh}),
                        );
                        let ack = match p.qos {
                            QoS::AtMostOnce => None,
                            QoS::AtLeastOnce => Some(Ack::new(AckKind::PubAck, p.packet_id)),
                            QoS::ExactlyOnce => {
                                awaiting_rel.insert(p.packet_id);
                                Some(Ack::new(AckKind::PubRec, p.packet_id))
                            }
                        };
                        if let Some(a) = ack {
                            if let Err(e) = m.send(&Packet::Ack(a)).await {
                                break Some(e.to_string());
                            }
                        }
                    }
                    Packet::Ack(a) if a.kind == AckKind::PubRel => {
                        awaiting_rel.remove(&a.packet_id);
                        if let Err(e) = m.send(&Packet::Ack(Ack::new(AckKind::PubComp, a.packet_id))).await {
                            break Some(e.to_string());
                        }
                    }
                    Packet::Disconnect(d) => break Some(format!("DISCONNECT 0x{:02x}", d.reason.0)),
                    _ => {}
                },
            }
        };
        if let Some(why) = why {
            ctx.hist.rec(&name, "lost", json!({"ep": epoch, "why": why}));
            sleep_ms(&mut rng, 100, 400).await;
        }
    }
}

/// The retained writer: `jt/r/<n>` for n in 0..3, QoS 1, one at a time.
pub async fn retained_writer(ctx: Ctx, name: String) {
    let mut rng = Rng::fork(ctx.seed, &name);
    let mut epoch = 0u64;
    let mut seq = 0u64;
    while ctx.phase() == Phase::Run {
        epoch += 1;
        let Some((mut m, _, _)) =
            connect(&ctx, &mut rng, Login::new(&name, ProtocolVersion::V5), epoch).await
        else {
            continue;
        };
        loop {
            if ctx.phase() != Phase::Run {
                ctx.hist.rec(&name, "bye", json!({"ep": epoch}));
                m.disconnect().await;
                return;
            }
            seq += 1;
            let topic = format!("jt/r/{}", rng.range(0, 2));
            let payload = format!("{name}/{epoch}/{seq}");
            ctx.hist.rec(&name, "write", json!({"topic": topic, "m": payload}));
            match publish_once(
                &mut m,
                &topic,
                payload.clone(),
                QoS::AtLeastOnce,
                true,
                (seq % 65_000) as u16 + 1,
            )
            .await
            {
                Ok(Some(code)) if code < 0x80 => {
                    ctx.hist.rec(&name, "write-ok", json!({"topic": topic, "m": payload}));
                }
                Ok(Some(code)) => {
                    ctx.hist.rec(&name, "write-fail", json!({"topic": topic, "m": payload, "code": code}));
                }
                other => {
                    let why = describe(other);
                    ctx.hist.rec(&name, "write-info", json!({"topic": topic, "m": payload, "why": why}));
                    ctx.hist.rec(&name, "lost", json!({"ep": epoch, "why": why}));
                    break;
                }
            }
            sleep_ms(&mut rng, 100, 300).await;
        }
    }
}

/// The prober: SUBSCRIBE to a fresh topic on one node, and once the SUBACK
/// is in, publish to it through another node: it must arrive.
pub async fn prober(ctx: Ctx, name: String) {
    let mut rng = Rng::fork(ctx.seed, &name);
    let sub_name = format!("{name}-sub");
    let pub_name = format!("{name}-pub");
    let mut n = 0u64;
    let (mut sub_ep, mut pub_ep) = (0u64, 0u64);
    'outer: while ctx.phase() == Phase::Run {
        sub_ep += 1;
        let Some((mut sub, _, sub_via)) =
            connect(&ctx, &mut rng, Login::new(&sub_name, ProtocolVersion::V5).direct(), sub_ep).await
        else {
            continue;
        };
        let mut publ: Option<Mqtt> = None;
        loop {
            if ctx.phase() != Phase::Run {
                ctx.hist.rec(&sub_name, "bye", json!({"ep": sub_ep}));
                sub.disconnect().await;
                if let Some(p) = publ {
                    p.disconnect().await;
                }
                return;
            }
            if publ.is_none() {
                pub_ep += 1;
                // Another node than the subscriber's when there is one.
                let mut tries = 0;
                let got = loop {
                    let login = Login::new(&pub_name, ProtocolVersion::V311).direct();
                    let got = connect(&ctx, &mut rng, login, pub_ep).await;
                    tries += 1;
                    match got {
                        Some((m, _, via)) if via == sub_via && tries < 4 => {
                            ctx.hist.rec(&pub_name, "bye", json!({"ep": pub_ep}));
                            m.disconnect().await;
                            pub_ep += 1;
                        }
                        other => break other,
                    }
                };
                match got {
                    Some((m, _, _)) => publ = Some(m),
                    None => continue,
                }
            }
            n += 1;
            let topic = format!("jt/probe/{n}");
            ctx.hist.rec(&sub_name, "sub", json!({"ep": sub_ep, "f": topic}));
            let subscribe = Packet::Subscribe(Subscribe {
                packet_id: (n % 65_000) as u16 + 1,
                properties: Properties::default(),
                filters: vec![(topic.as_str().into(), SubscriptionOptions::new(QoS::AtLeastOnce))],
            });
            let suback = async {
                sub.send(&subscribe).await?;
                loop {
                    match sub.recv(ACK_WAIT).await? {
                        Some(Packet::SubAck(a)) => {
                            return Ok::<_, anyhow::Error>(a.reason_codes.iter().all(|c| c.0 < 0x80))
                        }
                        Some(_) => {}
                        None => anyhow::bail!("no SUBACK within 5 s"),
                    }
                }
            }
            .await;
            match suback {
                Ok(true) => {
                    ctx.hist.rec(&sub_name, "suback", json!({"ep": sub_ep, "f": topic}));
                }
                other => {
                    let why = match other {
                        Ok(_) => "SUBACK refused".to_string(),
                        Err(e) => e.to_string(),
                    };
                    ctx.hist.rec(&sub_name, "lost", json!({"ep": sub_ep, "why": why}));
                    if let Some(p) = publ {
                        p.disconnect().await;
                    }
                    continue 'outer;
                }
            }
            let payload = format!("{pub_name}/{pub_ep}/{n}");
            ctx.hist.rec(
                &pub_name,
                "pub",
                json!({"p": pub_name, "e": pub_ep, "s": n, "q": 1, "topic": topic}),
            );
            let m = publ.as_mut().expect("connected");
            match publish_once(m, &topic, payload, QoS::AtLeastOnce, false, (n % 65_000) as u16 + 1).await {
                Ok(Some(code)) if code < 0x80 => {
                    ctx.hist.rec(
                        &pub_name,
                        "pub-ok",
                        json!({"p": pub_name, "e": pub_ep, "s": n, "code": code}),
                    );
                }
                other => {
                    let why = describe(other);
                    ctx.hist.rec(
                        &pub_name,
                        "pub-info",
                        json!({"p": pub_name, "e": pub_ep, "s": n, "why": why}),
                    );
                    ctx.hist.rec(&pub_name, "lost", json!({"ep": pub_ep, "why": why}));
                    if let Some(p) = publ.take() {
                        p.disconnect().await;
                    }
                    continue;
                }
            }
            // Wait for it on the subscriber, for as long as its connection
            // lives (the checker decides what a missing one means).
            let mut alive = Alive::default();
            loop {
                if ctx.phase() == Phase::End {
                    ctx.hist.rec(&sub_name, "bye", json!({"ep": sub_ep}));
                    sub.disconnect().await;
                    return;
                }
                match sub.recv_alive(&mut alive, Duration::from_millis(250)).await {
                    Err(why) => {
                        ctx.hist.rec(&sub_name, "lost", json!({"ep": sub_ep, "why": why}));
                        continue 'outer;
                    }
                    Ok(None) => {}
                    Ok(Some(p)) => match p {
                        Packet::Publish(p) => {
                            let text = String::from_utf8_lossy(&p.payload).into_owned();
                            ctx.hist.rec(
                                    &sub_name,
                                    "recv",
                                    json!({"ep": sub_ep, "topic": &*p.topic, "m": text, "q": p.qos as u8, "dup": p.dup,
                                           "retain": p.retain, "fresh": true}),
                                );
                            if p.qos != QoS::AtMostOnce {
                                let _ = sub.send(&Packet::Ack(Ack::new(AckKind::PubAck, p.packet_id))).await;
                            }
                            if *p.topic == *topic.as_str() {
                                break;
                            }
                        }
                        Packet::Disconnect(d) => {
                            ctx.hist.rec(
                                &sub_name,
                                "lost",
                                json!({"ep": sub_ep, "why": format!("DISCONNECT 0x{:02x}", d.reason.0)}),
                            );
                            continue 'outer;
                        }
                        _ => {}
                    },
                }
            }
            let unsub = Packet::Unsubscribe(Unsubscribe {
                packet_id: (n % 65_000) as u16 + 1,
                properties: Properties::default(),
                filters: vec![topic.as_str().into()],
            });
            let _ = sub.send(&unsub).await;
            sleep_ms(&mut rng, 50, 200).await;
        }
    }
}

/// Two clients taking one client id from each other, each connection
/// watched until the broker closes it.
pub async fn takeover(ctx: Ctx, name: String) {
    let mut rng = Rng::fork(ctx.seed, &name);
    let id = name.clone();
    let mut epoch = 0u64;
    let mut watchers = Vec::new();
    while ctx.phase() == Phase::Run {
        epoch += 1;
        let Some((mut m, _, _)) =
            connect(&ctx, &mut rng, Login::new(&name, ProtocolVersion::V5).id(&id).direct(), epoch).await
        else {
            continue;
        };
        let ctx2 = ctx.clone();
        let name2 = name.clone();
        let ep = epoch;
        watchers.push(tokio::spawn(async move {
            loop {
                if ctx2.phase() == Phase::End {
                    ctx2.hist.rec(&name2, "bye", json!({"ep": ep}));
                    m.disconnect().await;
                    return;
                }
                match m.recv(Duration::from_millis(250)).await {
                    Err(e) => {
                        ctx2.hist.rec(&name2, "lost", json!({"ep": ep, "why": e.to_string()}));
                        return;
                    }
                    Ok(Some(Packet::Disconnect(d))) => {
                        ctx2.hist.rec(
                            &name2,
                            "lost",
                            json!({"ep": ep, "why": format!("DISCONNECT 0x{:02x}", d.reason.0)}),
                        );
                        return;
                    }
                    _ => {}
                }
            }
        }));
        sleep_ms(&mut rng, 1_000, 3_000).await;
    }
    for w in watchers {
        let _ = w.await;
    }
}

/// Reads the retained messages under `jt/r/+` from one node: topic → payload.
pub async fn read_retained(addr: SocketAddr, name: &str) -> Result<Vec<(String, String)>> {
    let (mut m, ack) =
        Mqtt::connect(addr, connect_packet(ProtocolVersion::V5, name, true, 0), ACK_WAIT).await?;
    anyhow::ensure!(ack.code == 0, "CONNACK 0x{:02x}", ack.code);
    m.send(&Packet::Subscribe(Subscribe {
        packet_id: 1,
        properties: Properties::default(),
        filters: vec![("jt/r/+".into(), SubscriptionOptions::new(QoS::AtLeastOnce))],
    }))
    .await?;
    let mut out = Vec::new();
    // A SUBACK may wait for every live member to confirm the subscription;
    // the retained messages may come before or after it. Done 1.5 s after
    // the SUBACK once nothing more comes.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut subacked = false;
    loop {
        let wait = if subacked {
            Duration::from_millis(1500)
        } else {
            deadline.saturating_duration_since(Instant::now())
        };
        match m.recv(wait).await? {
            Some(Packet::SubAck(a)) if a.reason_codes.iter().all(|c| c.0 < 0x80) => subacked = true,
            Some(Packet::SubAck(a)) => anyhow::bail!("SUBACK refused: {:?}", a.reason_codes),
            Some(Packet::Publish(p)) => {
                if p.qos == QoS::AtLeastOnce {
                    m.send(&Packet::Ack(Ack::new(AckKind::PubAck, p.packet_id))).await?;
                }
                if p.retain {
                    out.push((p.topic.to_string(), String::from_utf8_lossy(&p.payload).into_owned()));
                }
            }
            Some(_) => {}
            None if subacked => break,
            None => anyhow::bail!("no SUBACK within 15 s"),
        }
    }
    m.disconnect().await;
    Ok(out)
}
