//! The gRPC `Peer` service: Raft RPCs into openraft, forwarded writes,
//! the receiving end of publish forwarding, session handoff, pings. Every
//! request carries the cluster id (and Raft data its format version); a
//! different one is refused. Corrupt input is refused, counted
//! (`starling_peer_corrupt_total`) and logged, never coerced.

use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{Stream, StreamExt};
use starling_broker::ids::ClientId;
use starling_broker::replicated::Command;
use starling_broker::Broker;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::error::ServiceError;
use crate::pb::peer::peer_server::Peer;
use crate::pb::peer::{
    ForwardAck, ForwardBatch, ForwardedMessage, PingRequest, PingResponse, RaftMessage, SubmitRequest,
    SubmitResponse, TakeSessionRequest, TakeSessionResponse, WaitAppliedRequest, WaitAppliedResponse,
    WriteRequest, WriteResponse,
};
use crate::queue_group::QueueGroup;
use crate::readiness::Readiness;
use crate::sm::SmShared;
use crate::status::PeerStats;
use crate::storage::FORMAT_VERSION;
use crate::types::{Group, NodeId, Raft};
use crate::wire::{decode_delivery, decode_message, decode_shared, encode_delivery, Corrupt};
use crate::writer::{PendingWrite, Proposer, WriteError, MAX_HOPS};

/// Submitted groups of one stream handed to the Raft core and not
/// answered yet; the stream's reader waits (and so does its sender, by
/// HTTP/2 flow control) while this many are.
const SUBMIT_WINDOW: usize = 16;

/// The (link id, highest seq) of the forwarded batches delivered from one
/// node.
pub type LastBatch = (u64, u64);

#[derive(Clone)]
pub struct PeerService {
    /// The durable queues' group (Raft RPCs, writes and submit streams
    /// marked `group = 1`).
    pub queues: Arc<QueueGroup>,
    pub raft: Raft,
    pub proposer: Proposer,
    pub sm: Arc<SmShared>,
    pub broker: Broker,
    pub readiness: Arc<Readiness>,
    pub stats: Arc<PeerStats>,
    /// Per sending node: (link id, highest batch seq delivered).
    pub forwarded:
        Arc<parking_lot::Mutex<std::collections::HashMap<u64, Arc<tokio::sync::Mutex<LastBatch>>>>>,
}

impl PeerService {
    fn check(&self, cluster_id: &str, format: Option<u32>) -> Result<(), ServiceError> {
        self.proposer.peers.cluster_id().check(cluster_id, format)
    }

    fn corrupt(&self, what: &str, e: impl std::fmt::Display) -> ServiceError {
        self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
        tracing::warn!(error = %e, "{what} from a peer refused as corrupt");
        ServiceError::Corrupt(format!("{what}: {e}"))
    }

    fn decode<T: serde::de::DeserializeOwned>(&self, m: &RaftMessage) -> Result<T, ServiceError> {
        self.check(&m.cluster_id, Some(m.format))?;
        let me = self.proposer.peers.node_id();
        if m.to_node != 0 && m.to_node != me.0 {
            return Err(ServiceError::FailedPrecondition(format!(
                "Raft message for node {} refused: this is node {me} (a replaced node at the old address)",
                m.to_node
            )));
        }
        bincode::deserialize(&m.data).map_err(|e| self.corrupt("Raft message", e))
    }

    fn group(&self, n: u32) -> Result<Group, ServiceError> {
        Group::from_wire(n).ok_or_else(|| ServiceError::FailedPrecondition(format!("no Raft group {n} here")))
    }

    /// The Raft core and readiness of group `n`.
    fn core(&self, n: u32) -> Result<(&Raft, &Readiness), ServiceError> {
        Ok(match self.group(n)? {
            Group::Main => (&self.raft, &self.readiness),
            Group::Queues => (&self.queues.raft, &self.queues.readiness),
        })
    }

    /// Refuses a message of the durable queues' group from a node that is
    /// not a member of the cluster as this node's main group last saw it.
    ///
    /// The queue group's members follow the main group's voters, changed
    /// by the queue group's leader (queue_group.rs) — but a node removed
    /// from the main group is not told so (Raft stops replicating to it),
    /// and were it leading the queue group, it would keep itself a member
    /// and the group would never follow. Refused here, its heartbeats no
    /// longer count: the members elect a leader among themselves, which
    /// follows the removal. (An empty membership — a node not yet part
    /// of a cluster — refuses nothing.)
    fn admit(&self, group: u32, vote: &openraft::Vote<NodeId>) -> Result<(), ServiceError> {
        if Group::from_wire(group) != Some(Group::Queues) {
            return Ok(());
        }
        let Some(sender) = vote.leader_id().voted_for() else { return Ok(()) };
        let metrics = self.raft.metrics();
        let m = metrics.borrow();
        let members = m.membership_config.membership();
        if members.nodes().next().is_none() || members.get_node(&sender).is_some() {
            return Ok(());
        }
        Err(ServiceError::FailedPrecondition(format!(
            "node {sender} is not a member of the cluster: its messages for the durable queues' group are refused"
        )))
    }

    /// The proposer of group `n`.
    fn proposer(&self, n: u32) -> Result<&Proposer, ServiceError> {
        Ok(match self.group(n)? {
            Group::Main => &self.proposer,
            Group::Queues => &self.queues.proposer,
        })
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let data = bincode::serialize(v).map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok(Response::new(RaftMessage {
        cluster_id: String::new(),
        data: data.into(),
        format: FORMAT_VERSION,
        ..Default::default()
    }))
}

/// Delivers one forwarded message to this node's local subscribers.
fn deliver(broker: &Broker, m: &ForwardedMessage, now: Instant) -> Result<(), Corrupt> {
    if !m.only_client.is_empty() {
        if let Some(s) = broker.views().registry.get(&ClientId::new(&m.only_client)) {
            s.enqueue(decode_delivery(m, now)?);
        }
        return Ok(());
    }
    let msg = decode_message(m, now)?;
    let shared = m.shared_targets.iter().map(decode_shared).collect::<Result<Vec<_>, _>>()?;
    broker.deliver_local(&msg, m.deliver_normal, &shared);
    Ok(())
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ForwardAck, Status>> + Send>>;
type SubmitStream = Pin<Box<dyn Stream<Item = Result<SubmitResponse, Status>> + Send>>;

fn submit_response(
    seq: u64,
    outcome: Result<Vec<starling_broker::replicated::CommandResult>, WriteError>,
) -> SubmitResponse {
    let encoded = outcome
        .and_then(|results| bincode::serialize(&results).map_err(|e| WriteError::Failed(e.to_string())));
    match encoded {
        Ok(results) => SubmitResponse { seq, results: results.into(), error: String::new() },
        Err(e) => SubmitResponse { seq, results: Default::default(), error: e.to_string() },
    }
}

type RaftStream = Pin<Box<dyn Stream<Item = Result<RaftMessage, Status>> + Send>>;

impl PeerService {
    /// One AppendEntries, unary or from a stream.
    async fn append_one(&self, m: RaftMessage) -> Result<Response<RaftMessage>, Status> {
        let (raft, readiness) = self.core(m.group)?;
        let ae: openraft::raft::AppendEntriesRequest<crate::types::TypeConfig> = self.decode(&m)?;
        self.admit(m.group, &ae.vote)?;
        let leader_commit = ae.leader_commit.map(|l| l.index);
        let r = raft.append_entries(ae).await;
        if r.is_ok() {
            readiness.leader_contact(leader_commit);
        }
        encode(&r)
    }
}

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        self.append_one(req.into_inner()).await
    }

    type AppendStreamStream = RaftStream;

    /// AppendEntries one after another, each answered before the next is
    /// read (network.rs). A refusal ends the stream with its status.
    async fn append_stream(
        &self,
        req: Request<Streaming<RaftMessage>>,
    ) -> Result<Response<RaftStream>, Status> {
        let this = self.clone();
        let answers = req.into_inner().then(move |m| {
            let this = this.clone();
            async move { this.append_one(m?).await.map(Response::into_inner) }
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let (raft, _) = self.core(m.group)?;
        let v: openraft::raft::VoteRequest<NodeId> = self.decode(&m)?;
        self.admit(m.group, &v.vote)?;
        encode(&raft.vote(v).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        let (raft, readiness) = self.core(m.group)?;
        let snap: openraft::raft::InstallSnapshotRequest<crate::types::TypeConfig> = self.decode(&m)?;
        self.admit(m.group, &snap.vote)?;
        let r = raft.install_snapshot(snap).await;
        if r.is_ok() {
            readiness.leader_contact(None);
        }
        encode(&r)
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let w = req.into_inner();
        self.check(&w.cluster_id, Some(w.format))?;
        if w.hops > MAX_HOPS {
            return Err(ServiceError::Unavailable(
                "write forwarded too many times (leadership changing)".into(),
            )
            .into());
        }
        let commands: Vec<Command> =
            bincode::deserialize(&w.commands).map_err(|e| self.corrupt("write", e))?;
        let (results, log_index, applied_by) = self
            .proposer(w.group)?
            .propose_applied(commands, w.hops)
            .await
            .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        let results = bincode::serialize(&results).map_err(|e| ServiceError::Internal(e.to_string()))?;
        let applied_by = applied_by.map_or(0, |n| n.0);
        Ok(Response::new(WriteResponse { results: results.into(), log_index, applied_by }))
    }

    type SubmitStream = SubmitStream;

    /// Hands each group to the Raft core in the order it arrives (so the
    /// log keeps the sender's order) without waiting for the one before,
    /// and answers in that order. After a failure nothing more from the
    /// stream is proposed: the sender opens a new one.
    async fn submit(&self, req: Request<Streaming<SubmitRequest>>) -> Result<Response<SubmitStream>, Status> {
        let mut inbound = req.into_inner();
        let (pending_tx, mut pending_rx) = mpsc::channel::<(u64, PendingWrite)>(SUBMIT_WINDOW);
        let (tx, rx) = mpsc::channel::<Result<SubmitResponse, Status>>(SUBMIT_WINDOW);
        let (main, queues) = (self.proposer.clone(), self.queues.proposer.clone());
        let stats = self.stats.clone();
        let refusals = tx.clone();
        tokio::spawn(async move {
            while let Ok(Some(r)) = inbound.message().await {
                if let Err(e) = main.peers.cluster_id().check(&r.cluster_id, Some(r.format)) {
                    let _ = refusals.send(Err(e.into())).await;
                    return;
                }
                let proposer = match Group::from_wire(r.group) {
                    Some(Group::Main) => &main,
                    Some(Group::Queues) => &queues,
                    None => {
                        let e = ServiceError::FailedPrecondition(format!("no Raft group {} here", r.group));
                        let _ = refusals.send(Err(e.into())).await;
                        return;
                    }
                };
                let commands: Vec<Command> = match bincode::deserialize(&r.commands) {
                    Ok(c) => c,
                    Err(e) => {
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(error = %e, "submitted commands from a peer refused as corrupt");
                        let status = ServiceError::Corrupt(format!("submitted commands: {e}"));
                        let _ = refusals.send(Err(status.into())).await;
                        return;
                    }
                };
                let (pending, led) = match proposer.submit_as_leader(commands).await {
                    Ok(p) => (p, true),
                    Err(_) => {
                        let e = WriteError::Failed("not the leader".into());
                        (Box::pin(std::future::ready(Err(e))) as PendingWrite, false)
                    }
                };
                if pending_tx.send((r.seq, pending)).await.is_err() || !led {
                    return;
                }
            }
        });
        tokio::spawn(async move {
            while let Some((seq, pending)) = pending_rx.recv().await {
                let resp = submit_response(seq, pending.await);
                let failed = !resp.error.is_empty();
                // A failure ends the stream (`pending_rx` dropped: the
                // reader proposes nothing more).
                if tx.send(Ok(resp)).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type ForwardStream = AckStream;

    async fn forward(&self, req: Request<Streaming<ForwardBatch>>) -> Result<Response<AckStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ForwardAck, Status>>(64);
        let broker = self.broker.clone();
        let cluster_id = self.proposer.peers.cluster_id().clone();
        let stats = self.stats.clone();
        let delivered = self.forwarded.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                if let Err(e) = cluster_id.check(&batch.cluster_id, None) {
                    let _ = tx.send(Err(e.into())).await;
                    return;
                }
                // A batch sent again after a broken stream, already
                // delivered: acknowledged, not delivered twice. (Held
                // across the delivery: the old stream may still be on it.)
                let node = delivered.lock().entry(batch.from_node).or_default().clone();
                let mut seen = node.lock().await;
                let last = &mut *seen;
                let again = batch.link_id != 0 && last.0 == batch.link_id && batch.seq <= last.1;
                if !again && batch.link_id != 0 {
                    *last = (batch.link_id, batch.seq);
                }
                let now = Instant::now();
                for m in batch.messages.iter().filter(|_| !again) {
                    // A corrupt message is dropped alone: refusing the batch
                    // would have the sender resend it forever.
                    if let Err(e) = deliver(&broker, m, now) {
                        stats.corrupt.fetch_add(1, Ordering::Relaxed);
                        tracing::warn!(from = batch.from_node, error = %e, "forwarded message refused");
                    }
                }
                drop(seen);
                if tx.send(Ok(ForwardAck { seq: batch.seq })).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn take_session(
        &self,
        req: Request<TakeSessionRequest>,
    ) -> Result<Response<TakeSessionResponse>, Status> {
        let t = req.into_inner();
        self.check(&t.cluster_id, None)?;
        // Apply at least up to the claim, so the session has moved here
        // and nothing new is queued into the old runtime.
        self.sm.wait_applied(t.claim_index, Duration::from_secs(3)).await;
        let client = ClientId::new(&t.client);
        let now = Instant::now();
        let messages = match self.broker.local().take_handoff(&client) {
            Some(s) => {
                s.mark_ended();
                s.drain_all().iter().map(|d| encode_delivery(d, &client, now)).collect()
            }
            None => Vec::new(),
        };
        Ok(Response::new(TakeSessionResponse { messages }))
    }

    async fn wait_applied(
        &self,
        req: Request<WaitAppliedRequest>,
    ) -> Result<Response<WaitAppliedResponse>, Status> {
        let w = req.into_inner();
        self.check(&w.cluster_id, None)?;
        let timeout = Duration::from_millis(u64::from(w.timeout_ms).min(10_000));
        self.sm.wait_applied(w.index, timeout).await;
        Ok(Response::new(WaitAppliedResponse { applied_index: self.sm.applied_index() }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let req = req.into_inner();
        self.check(&req.cluster_id, None)?;
        // A node removed while it was unreachable learns it here
        // (liveness.rs, `until_removed`): Raft never tells it.
        let (membership_index, member) = self.sm.membership_of(NodeId(req.from_node));
        Ok(Response::new(PingResponse {
            node_id: self.proposer.peers.node_id().0,
            applied_index: self.sm.applied_index(),
            sender_removed: req.from_node != 0 && membership_index > 0 && !member,
            membership_index,
        }))
    }
}
