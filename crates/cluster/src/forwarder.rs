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
//!   batches that were sent but not acknowledged are sent again first,
//!   under their original seq (the receiver skips batches of this link it
//!   already delivered, so a subscriber does not get them twice);
//! - once the cluster declares the peer down (`set_down`), everything
//!   queued for it is dropped and counted, and new messages for it are
//!   dropped at once. In every case the waiting publishers are released:
//!   a dead peer delays QoS 1/2 acknowledgements by at most the liveness
//!   timeout and never stalls delivery to the other peers.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};
use starling_broker::forward::{AckWaiter, Forwarder, RemotePlan, SharedTarget};
use starling_broker::message::Message;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

use crate::pb::peer::{ForwardAck, ForwardBatch, ForwardedMessage};
use crate::peer_client::PeerClient;
use crate::types::NodeId;
use crate::wire::{encode_message, encode_shared};

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
    peers: PeerClient,
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
    pub fn new(peers: PeerClient) -> PeerForwarder {
        PeerForwarder { peers, links: RwLock::new(HashMap::new()) }
    }

    /// Makes the set of links follow the membership: a link per other
    /// member, re-created when its address changes.
    pub fn set_peers(&self, peers: &[(NodeId, String)]) {
        let mut links = self.links.write();
        links.retain(|id, l| peers.iter().any(|(p, a)| p == id && *a == l.addr));
        for (id, addr) in peers {
            if *id == self.peers.node_id() || links.contains_key(id) {
                continue;
            }
            let (tx, rx) = mpsc::channel(QUEUE_PER_PEER);
            let stats = Arc::new(LinkStats::default());
            let task = tokio::spawn(run_link(*id, addr.clone(), self.peers.clone(), rx, stats.clone()));
            links.insert(*id, Link { addr: addr.clone(), tx, stats, task });
            tracing::info!(peer = %id, %addr, "forwarding link created");
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
            if let Some(l) = links.get(&plan.node) {
                // Queue full, or peer down: dropped now (the ticket completes).
                if l.stats.down.load(Ordering::Relaxed) || l.tx.try_send(item).is_err() {
                    l.stats.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        waiter
    }
}

fn encode_item(item: &Item, now: Instant) -> ForwardedMessage {
    let mut m = encode_message(&item.msg, now);
    m.deliver_normal = item.deliver_normal;
    m.shared_targets = item.shared.iter().map(encode_shared).collect();
    m
}

fn batch_of(items: &[Item], peers: &PeerClient, seq: u64, link_id: u64) -> ForwardBatch {
    let now = Instant::now();
    ForwardBatch {
        cluster_id: peers.cluster_id().get().to_string(),
        from_node: peers.node_id().0,
        seq,
        link_id,
        messages: items.iter().map(|i| encode_item(i, now)).collect(),
    }
}

/// One peer's sending side: the queue it drains, batch numbering, and
/// the batches a broken stream left unacknowledged.
struct LinkTask {
    peer: NodeId,
    addr: String,
    peers: PeerClient,
    rx: mpsc::Receiver<Item>,
    stats: Arc<LinkStats>,
    seq: u64,
    /// This link's incarnation, sent with every batch.
    link_id: u64,
    /// Sent on a stream that broke before acknowledging them, with the
    /// seq they were sent under (sent again under it: the receiver skips
    /// what it already delivered).
    resend: VecDeque<(u64, Vec<Item>)>,
}

/// How a stream ended.
enum Ended {
    /// Broken, or the peer was declared down: reconnect (or drop).
    Broken(VecDeque<(u64, Vec<Item>)>),
    /// The forwarder dropped the link.
    Closed,
}

async fn run_link(
    peer: NodeId,
    addr: String,
    peers: PeerClient,
    rx: mpsc::Receiver<Item>,
    stats: Arc<LinkStats>,
) {
    let link_id = {
        use std::hash::{BuildHasher, Hasher};
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u64(peer.0);
        h.finish() | 1
    };
    let task = LinkTask { peer, addr, peers, rx, stats, seq: 0, link_id, resend: VecDeque::new() };
    task.run().await
}

impl LinkTask {
    async fn run(mut self) {
        loop {
            if self.stats.down.load(Ordering::Relaxed) {
                self.release_all();
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
            let (btx, brx) = mpsc::channel::<ForwardBatch>(64);
            let acks = match self.peers.open_forward(&self.addr, ReceiverStream::new(brx)).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(peer = %self.peer, addr = %self.addr, error = %e, "forward stream not open; retrying");
                    self.stats.connected.store(false, Ordering::Relaxed);
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    continue;
                }
            };
            if !self.stats.connected.swap(true, Ordering::Relaxed) {
                tracing::info!(peer = %self.peer, addr = %self.addr, "forward stream open");
            }
            let Ended::Broken(unacked) = self.stream(btx, acks).await else { return };
            // Unacknowledged batches go again, before anything newer.
            let pending = unacked.len();
            for batch in unacked.into_iter().rev() {
                self.resend.push_front(batch);
            }
            self.stats.connected.store(false, Ordering::Relaxed);
            tracing::info!(peer = %self.peer, addr = %self.addr, unacknowledged_batches = pending, "forward stream closed");
            tokio::time::sleep(RECONNECT_DELAY).await;
        }
    }

    /// Declared down: releases everything that waits for the peer.
    fn release_all(&mut self) {
        let mut dropped = self.resend.drain(..).map(|(_, b)| b.len()).sum::<usize>();
        while let Ok(item) = self.rx.try_recv() {
            dropped += 1;
            drop(item);
        }
        self.stats.dropped.fetch_add(dropped as u64, Ordering::Relaxed);
    }

    /// Sends batches on an open stream (what must be resent first) and
    /// reads their acknowledgements until it breaks.
    async fn stream(&mut self, btx: mpsc::Sender<ForwardBatch>, mut acks: Streaming<ForwardAck>) -> Ended {
        let mut unacked: VecDeque<(u64, Vec<Item>)> = VecDeque::new();
        while let Some((seq, items)) = self.resend.pop_front() {
            if btx.send(batch_of(&items, &self.peers, seq, self.link_id)).await.is_err() {
                self.resend.push_front((seq, items));
                return Ended::Broken(unacked);
            }
            unacked.push_back((seq, items));
        }
        loop {
            tokio::select! {
                first = self.rx.recv(), if unacked.len() < UNACKED_BATCHES => {
                    let Some(first) = first else { return Ended::Closed };
                    let items = self.batch_from(first);
                    self.seq += 1;
                    if btx.send(batch_of(&items, &self.peers, self.seq, self.link_id)).await.is_err() {
                        self.resend.push_back((self.seq, items));
                        return Ended::Broken(unacked);
                    }
                    unacked.push_back((self.seq, items));
                }
                ack = acks.message() => match ack {
                    Ok(Some(a)) => {
                        while unacked.front().is_some_and(|(s, _)| *s <= a.seq) {
                            unacked.pop_front();
                        }
                    }
                    Ok(None) | Err(_) => return Ended::Broken(unacked),
                },
                _ = tokio::time::sleep(Duration::from_millis(200)), if self.stats.down.load(Ordering::Relaxed) => {
                    return Ended::Broken(unacked);
                }
            }
        }
    }

    /// `first` and whatever else is queued, up to a batch's bounds.
    fn batch_from(&mut self, first: Item) -> Vec<Item> {
        let mut bytes = first.msg.payload.len();
        let mut items = vec![first];
        while items.len() < BATCH_MESSAGES && bytes < BATCH_BYTES {
            match self.rx.try_recv() {
                Ok(i) => {
                    bytes += i.msg.payload.len();
                    items.push(i);
                }
                Err(_) => break,
            }
        }
        self.stats.messages.fetch_add(items.len() as u64, Ordering::Relaxed);
        self.stats.bytes.fetch_add(bytes as u64, Ordering::Relaxed);
        items
    }
}
