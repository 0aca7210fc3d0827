//! The gRPC `Peer` service: Raft RPCs into openraft, forwarded writes,
//! the receiving end of publish forwarding, session handoff and pings.
//! Every request carries the cluster id; a different one is refused.

use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::Stream;
use parking_lot::Mutex;
use starling_broker::forward::SharedTarget;
use starling_broker::ids::ClientId;
use starling_broker::Broker;
use starling_codec::QoS;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::forwarder::{decode_delivery, decode_message, encode_delivery};
use crate::pb::peer::peer_server::Peer;
use crate::pb::peer::{
    ForwardAck, ForwardBatch, PingRequest, PingResponse, RaftMessage, TakeSessionRequest,
    TakeSessionResponse, WaitAppliedRequest, WaitAppliedResponse, WriteRequest, WriteResponse,
};
use crate::sm::SmShared;
use crate::types::{Command, Raft};
use crate::writer::{Proposer, MAX_HOPS};

pub struct PeerService {
    pub raft: Raft,
    pub cluster_id: Arc<Mutex<String>>,
    pub proposer: Proposer,
    pub sm: Arc<SmShared>,
    pub broker: Broker,
    /// When the leader last reached this node (AppendEntries), for
    /// readiness of followers.
    pub last_leader_contact: Arc<Mutex<Option<Instant>>>,
}

impl PeerService {
    fn check_cluster(&self, id: &str) -> Result<(), Status> {
        let mine = self.cluster_id.lock().clone();
        if mine.is_empty() {
            return Err(Status::failed_precondition("this node has not joined a cluster yet"));
        }
        if id != mine {
            return Err(Status::permission_denied(format!(
                "request from cluster {id} refused: this node belongs to cluster {mine}"
            )));
        }
        Ok(())
    }
}

fn encode<T: serde::Serialize>(v: &T) -> Result<Response<RaftMessage>, Status> {
    let data = bincode::serialize(v).map_err(|e| Status::internal(e.to_string()))?;
    Ok(Response::new(RaftMessage { cluster_id: String::new(), data: data.into() }))
}

fn decode<T: serde::de::DeserializeOwned>(m: &RaftMessage) -> Result<T, Status> {
    bincode::deserialize(&m.data)
        .map_err(|e| Status::invalid_argument(format!("undecodable Raft message: {e}")))
}

type AckStream = Pin<Box<dyn Stream<Item = Result<ForwardAck, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    async fn append_entries(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        self.check_cluster(&m.cluster_id)?;
        let r = self.raft.append_entries(decode(&m)?).await;
        if r.is_ok() {
            *self.last_leader_contact.lock() = Some(Instant::now());
        }
        encode(&r)
    }

    async fn vote(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        self.check_cluster(&m.cluster_id)?;
        encode(&self.raft.vote(decode(&m)?).await)
    }

    async fn install_snapshot(&self, req: Request<RaftMessage>) -> Result<Response<RaftMessage>, Status> {
        let m = req.into_inner();
        self.check_cluster(&m.cluster_id)?;
        let r = self.raft.install_snapshot(decode(&m)?).await;
        if r.is_ok() {
            *self.last_leader_contact.lock() = Some(Instant::now());
        }
        encode(&r)
    }

    async fn write(&self, req: Request<WriteRequest>) -> Result<Response<WriteResponse>, Status> {
        let w = req.into_inner();
        self.check_cluster(&w.cluster_id)?;
        if w.hops > MAX_HOPS {
            return Err(Status::unavailable("write forwarded too many times (leadership changing)"));
        }
        let commands: Vec<Command> =
            bincode::deserialize(&w.commands).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let (results, log_index) =
            self.proposer.propose(commands, w.hops).await.map_err(|e| Status::unavailable(e.to_string()))?;
        let results = bincode::serialize(&results).map_err(|e| Status::internal(e.to_string()))?;
        Ok(Response::new(WriteResponse { results: results.into(), log_index }))
    }

    type ForwardStream = AckStream;

    async fn forward(&self, req: Request<Streaming<ForwardBatch>>) -> Result<Response<AckStream>, Status> {
        let mut inbound = req.into_inner();
        let (tx, rx) = mpsc::channel::<Result<ForwardAck, Status>>(64);
        let broker = self.broker.clone();
        let cluster_id = self.cluster_id.clone();
        tokio::spawn(async move {
            while let Ok(Some(batch)) = inbound.message().await {
                if batch.cluster_id != *cluster_id.lock() {
                    let _ = tx.send(Err(Status::permission_denied("forward from another cluster"))).await;
                    return;
                }
                let now = Instant::now();
                for m in &batch.messages {
                    if !m.only_client.is_empty() {
                        if let Some(s) = broker.views().registry.get(&ClientId::new(&m.only_client)) {
                            s.enqueue(decode_delivery(m, now));
                        }
                        continue;
                    }
                    let msg = decode_message(m, now);
                    let shared: Vec<SharedTarget> = m
                        .shared_targets
                        .iter()
                        .map(|t| SharedTarget {
                            client: ClientId::new(&t.client),
                            qos: QoS::from_u8(t.qos as u8).unwrap_or(QoS::AtMostOnce),
                            subscription_id: (t.subscription_id != 0).then_some(t.subscription_id),
                        })
                        .collect();
                    broker.deliver_local(&msg, m.deliver_normal, &shared);
                }
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
        self.check_cluster(&t.cluster_id)?;
        // Apply at least up to the claim, so the session has moved here
        // and nothing new is queued into the old runtime.
        self.sm.wait_applied(t.claim_index, Duration::from_secs(3)).await;
        let now = Instant::now();
        let messages = match self.sm.views.take_handoff(&t.client) {
            Some(s) => {
                s.mark_ended();
                s.drain_all().iter().map(|d| encode_delivery(d, &t.client, now)).collect()
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
        self.check_cluster(&w.cluster_id)?;
        let timeout = Duration::from_millis(u64::from(w.timeout_ms).min(10_000));
        self.sm.wait_applied(w.index, timeout).await;
        Ok(Response::new(WaitAppliedResponse { applied_index: self.sm.applied_index() }))
    }

    async fn ping(&self, req: Request<PingRequest>) -> Result<Response<PingResponse>, Status> {
        let p = req.into_inner();
        self.check_cluster(&p.cluster_id)?;
        Ok(Response::new(PingResponse {
            node_id: self.proposer.node_id,
            applied_index: self.sm.applied_index(),
        }))
    }
}
