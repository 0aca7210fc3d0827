//! The data plane: publishes for subscribers on other nodes.
//!
//! One `Link` per peer: a bounded queue and a task that keeps one
//! bidirectional `Forward` stream open, sends batches in order and reads
//! their acknowledgements. One stream per peer pair keeps each publisher's
//! order. A QoS 1/2 publisher's acknowledgement waits until every peer it
//! was forwarded to acknowledged the batch (`AckGroup`).
//!
//! Policy when a peer is slow or down (documented in operations.md):
//! - the queue holds `QUEUE_PER_PEER` messages; when full, new messages
//!   for that peer are dropped and counted;
//! - while the stream is broken (peer restarting, network blip) messages
//!   wait in the queue and the link reconnects every `RECONNECT_DELAY`;
//!   batches that were sent but not acknowledged are sent again first
//!   (at-least-once: a QoS 1/2 subscriber may see a duplicate);
//! - once the cluster declares the peer down (`set_down`), everything
//!   queued for it is dropped and counted, and new messages for it are
//!   dropped at once. In every case the waiting publishers are released:
//!   a dead peer delays QoS 1/2 acknowledgements by at most the liveness
//!   timeout and never stalls delivery to the other peers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use starling_broker::forward::{AckWaiter, Forwarder, RemotePlan, SharedTarget};
use starling_broker::ids::ClientId;
use starling_broker::message::{Delivery, Message};
use starling_codec::{MqttStr, QoS};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;

use crate::network::Channels;
use crate::pb::peer::{self as pb, ForwardBatch, ForwardedMessage};
use crate::types::{NodeId, PropsRecord};

/// Messages waiting for one peer's stream.
pub const QUEUE_PER_PEER: usize = 16 * 1024;
/// Messages per batch, and bytes per batch (soft).
const BATCH_MESSAGES: usize = 512;
const BATCH_BYTES: usize = 1024 * 1024;
/// Batches sent and not yet acknowledged per peer.
const UNACKED_BATCHES: usize = 256;
const RECONNECT_DELAY: Duration = Duration::from_millis(100);

/// Completes the publisher's waiter when every peer is done with it.
struct AckGroup {
    remaining: AtomicUsize,
    tx: Mutex<Option<oneshot::Sender<()>>>,
}

/// One peer's share of an `AckGroup`; dropping it (acknowledged, dropped,
/// or given up) counts that peer as done.
struct AckTicket(Option<Arc<AckGroup>>);

impl Drop for AckTicket {
    fn drop(&mut self) {
        if let Some(g) = self.0.take() {
            if g.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
                if let Some(tx) = g.tx.lock().take() {
                    let _ = tx.send(());
                }
            }
        }
    }
}

struct Item {
    msg: Arc<Message>,
    deliver_normal: bool,
    shared: Vec<SharedTarget>,
    /// Held for its `Drop`: releases the publisher's waiter.
    _ack: AckTicket,
}

/// Per-peer counters for `/metrics`.
#[derive(Default)]
pub struct LinkStats {
    /// The stream to the peer is open.
    pub connected: AtomicBool,
    /// The cluster declared the peer down: drop instead of queueing.
    pub down: AtomicBool,
    pub messages: AtomicU64,
    pub bytes: AtomicU64,
    pub dropped: AtomicU64,
}

struct Link {
    addr: String,
    tx: mpsc::Sender<Item>,
    stats: Arc<LinkStats>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Link {
    fn drop(&mut self) {
        self.task.abort();
    }
}

pub struct PeerForwarder {
    node_id: NodeId,
    cluster_id: Arc<Mutex<String>>,
    channels: Channels,
    links: RwLock<HashMap<NodeId, Link>>,
}

/// A snapshot of one link for metrics and status.
pub struct LinkReport {
    pub node: NodeId,
    pub connected: bool,
    pub queued: usize,
    pub messages: u64,
    pub bytes: u64,
    pub dropped: u64,
}

impl PeerForwarder {
    pub fn new(node_id: NodeId, cluster_id: Arc<Mutex<String>>, channels: Channels) -> PeerForwarder {
        PeerForwarder { node_id, cluster_id, channels, links: RwLock::new(HashMap::new()) }
    }

    /// Makes the set of links follow the membership: a link per other
    /// member, re-created when its address changes.
    pub fn set_peers(&self, peers: &[(NodeId, String)]) {
        let mut links = self.links.write();
        links.retain(|id, l| peers.iter().any(|(p, a)| p == id && *a == l.addr));
        for (id, addr) in peers {
            if *id == self.node_id || links.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_PER_PEER);
            let stats = Arc::new(LinkStats::default());
            let task = tokio::spawn(run_link(
                *id,
                addr.clone(),
                self.node_id,
                self.cluster_id.clone(),
                self.channels.clone(),
                rx,
                stats.clone(),
            ));
            links.insert(*id, Link { addr: addr.clone(), tx, stats, task });
            tracing::info!(peer = id, %addr, "forwarding link created");
        }
    }

    /// Follows the replicated liveness: peers declared down get their
    /// queued messages dropped (publishers released) until they return.
    pub fn set_down(&self, down: &std::collections::BTreeSet<NodeId>) {
        for (id, l) in self.links.read().iter() {
            l.stats.down.store(down.contains(id), Ordering::Relaxed);
        }
    }

    pub fn report(&self) -> Vec<LinkReport> {
        let links = self.links.read();
        let mut v: Vec<LinkReport> = links
            .iter()
            .map(|(id, l)| LinkReport {
                node: *id,
                connected: l.stats.connected.load(Ordering::Relaxed),
                queued: QUEUE_PER_PEER - l.tx.capacity(),
                messages: l.stats.messages.load(Ordering::Relaxed),
                bytes: l.stats.bytes.load(Ordering::Relaxed),
                dropped: l.stats.dropped.load(Ordering::Relaxed),
            })
            .collect();
        v.sort_by_key(|r| r.node);
        v
    }
}

impl Forwarder for PeerForwarder {
    fn forward(&self, msg: &Arc<Message>, plans: Vec<RemotePlan>, want_ack: bool) -> Option<AckWaiter> {
        let (group, waiter) = if want_ack {
            let (tx, rx) = oneshot::channel();
            let g = Arc::new(AckGroup { remaining: AtomicUsize::new(plans.len()), tx: Mutex::new(Some(tx)) });
            (Some(g), Some(rx))
        } else {
            (None, None)
        };
        let links = self.links.read();
        for plan in plans {
            let item = Item {
                msg: msg.clone(),
                deliver_normal: plan.deliver_normal,
                shared: plan.shared,
                _ack: AckTicket(group.clone()),
            };
            if let Some(l) = links.get(&plan.node.0) {
                // Queue full, or peer down: dropped now (the ticket completes).
                if l.stats.down.load(Ordering::Relaxed) || l.tx.try_send(item).is_err() {
                    l.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        waiter
    }
}

pub fn encode_message(msg: &Message, now: Instant) -> ForwardedMessage {
    let props = if msg.properties.is_empty() {
        Bytes::new()
    } else {
        bincode::serialize(&PropsRecord::from_props(&msg.properties)).map(Bytes::from).unwrap_or_default()
    };
    ForwardedMessage {
        topic: msg.topic.as_bytes().clone(),
        payload: msg.payload.clone(),
        qos: u32::from(msg.qos as u8),
        retain: msg.retain,
        properties: props,
        publisher: msg
            .publisher
            .as_ref()
            .map(|c| Bytes::copy_from_slice(c.as_str().as_bytes()))
            .unwrap_or_default(),
        expiry_ms: msg.expires_at.map_or(0, |t| t.saturating_duration_since(now).as_millis().max(1) as u64),
        deliver_normal: false,
        shared_targets: Vec::new(),
        only_client: String::new(),
        subscription_ids: Vec::new(),
    }
}

pub fn decode_message(m: &ForwardedMessage, now: Instant) -> Arc<Message> {
    let qos = QoS::from_u8(m.qos as u8).unwrap_or(QoS::AtMostOnce);
    // Peers of this cluster send valid UTF-8; anything else is replaced,
    // never trusted as `str`.
    let topic = MqttStr::from_bytes(m.topic.clone())
        .unwrap_or_else(|_| MqttStr::from(String::from_utf8_lossy(&m.topic).into_owned()));
    let mut msg = Message::new(topic, m.payload.clone(), qos, m.retain);
    if !m.properties.is_empty() {
        if let Ok(p) = bincode::deserialize::<PropsRecord>(&m.properties) {
            msg.properties = p.to_props();
        }
    }
    if !m.publisher.is_empty() {
        msg.publisher = Some(ClientId::new(&String::from_utf8_lossy(&m.publisher)));
    }
    if m.expiry_ms > 0 {
        msg.expires_at = Some(now + Duration::from_millis(m.expiry_ms));
    }
    Arc::new(msg)
}

/// A delivery handed from one node to another with its session.
pub fn encode_delivery(d: &Delivery, client: &str, now: Instant) -> ForwardedMessage {
    let mut m = encode_message(&d.message, now);
    m.qos = u32::from(d.qos as u8);
    m.retain = d.retain;
    m.only_client = client.to_string();
    m.subscription_ids = d.subscription_ids.clone();
    m
}

pub fn decode_delivery(m: &ForwardedMessage, now: Instant) -> Delivery {
    let message = decode_message(m, now);
    Delivery {
        qos: QoS::from_u8(m.qos as u8).unwrap_or(QoS::AtMostOnce),
        retain: m.retain,
        subscription_ids: m.subscription_ids.clone(),
        message,
    }
}

fn encode_item(item: &Item, now: Instant) -> ForwardedMessage {
    let mut m = encode_message(&item.msg, now);
    m.deliver_normal = item.deliver_normal;
    m.shared_targets = item
        .shared
        .iter()
        .map(|t| pb::SharedTarget {
            client: t.client.to_string(),
            qos: u32::from(t.qos as u8),
            subscription_id: t.subscription_id.unwrap_or(0),
        })
        .collect();
    m
}

fn batch_of(items: &[Item], cluster_id: &Mutex<String>, me: NodeId, seq: u64) -> ForwardBatch {
    let now = Instant::now();
    ForwardBatch {
        cluster_id: cluster_id.lock().clone(),
        from_node: me,
        seq,
        messages: items.iter().map(|i| encode_item(i, now)).collect(),
    }
}

async fn run_link(
    peer: NodeId,
    addr: String,
    me: NodeId,
    cluster_id: Arc<Mutex<String>>,
    channels: Channels,
    mut rx: mpsc::Receiver<Item>,
    stats: Arc<LinkStats>,
) {
    let mut seq: u64 = 0;
    // Sent on a stream that broke before acknowledging them.
    let mut resend: VecDeque<Vec<Item>> = VecDeque::new();
    loop {
        if stats.down.load(Ordering::Relaxed) {
            // Declared down: release everything that waits for it.
            let mut dropped = resend.drain(..).map(|b| b.len()).sum::<usize>();
            while let Ok(item) = rx.try_recv() {
                dropped += 1;
                drop(item);
            }
            stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        let (btx, brx) = mpsc::channel::<ForwardBatch>(64);
        let opened = match channels.peer(&addr) {
            Ok(mut c) => c.forward(ReceiverStream::new(brx)).await.map(|r| r.into_inner()),
            Err(e) => Err(tonic::Status::unavailable(e.to_string())),
        };
        let mut acks = match opened {
            Ok(s) => s,
            Err(e) => {
                tracing::debug!(peer, %addr, error = %e, "forward stream not open; retrying");
                stats.connected.store(false, Ordering::Relaxed);
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if !stats.connected.swap(true, Ordering::Relaxed) {
            tracing::info!(peer, %addr, "forward stream open");
        }
        let mut unacked: VecDeque<(u64, Vec<Item>)> = VecDeque::new();
        let mut broken = false;
        while let Some(items) = resend.pop_front() {
            seq += 1;
            if btx.send(batch_of(&items, &cluster_id, me, seq)).await.is_err() {
                resend.push_front(items);
                broken = true;
                break;
            }
            unacked.push_back((seq, items));
        }
        while !broken {
            tokio::select! {
                first = rx.recv(), if unacked.len() < UNACKED_BATCHES => {
                    let Some(first) = first else { return };
                    let mut items = vec![first];
                    let mut bytes = items[0].msg.payload.len();
                    while items.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
                        match rx.try_recv() {
                            Ok(i) => {
                                bytes += i.msg.payload.len();
                                items.push(i);
                            }
                            Err(_) => break,
                        }
                    }
                    seq += 1;
                    stats.messages.fetch_add(items.len() as u64, Ordering::Relaxed);
                    stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
                    if btx.send(batch_of(&items, &cluster_id, me, seq)).await.is_err() {
                        resend.push_back(items);
                        break;
                    }
                    unacked.push_back((seq, items));
                }
                ack = acks.message() => {
                    match ack {
                        Ok(Some(a)) => {
                            while unacked.front().is_some_and(|(s, _)| *s <= a.seq) {
                                unacked.pop_front();
                            }
                        }
                        Ok(None) | Err(_) => broken = true,
                    }
                }
                _ = tokio::time::sleep(Duration::from_millis(200)), if stats.down.load(Ordering::Relaxed) => {
                    broken = true;
                }
            }
        }
        // Unacknowledged batches go again, before anything newer.
        let pending = unacked.len();
        for (_, items) in unacked.into_iter().rev() {
            resend.push_front(items);
        }
        stats.connected.store(false, Ordering::Relaxed);
        tracing::info!(peer, %addr, unacknowledged_batches = pending, "forward stream closed");
        tokio::time::sleep(RECONNECT_DELAY).await;
    }
}
