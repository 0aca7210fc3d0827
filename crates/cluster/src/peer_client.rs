//! `PeerClient`: every call this node makes to another node goes through
//! here. It owns the channels (one lazily connecting tonic `Channel` per
//! address, reused: openraft creates clients often), the cluster id and
//! format version stamped on every request, a deadline per call, and the
//! mapping of failures to `PeerError`.

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use starling_broker::ids::ClientId;
use starling_broker::replicated::{Command, CommandResult};
use tonic::transport::{Channel, Endpoint};
use tonic::Streaming;

use crate::error::{PeerError, ServiceError};
use crate::pb::admin::admin_client::AdminClient;
use crate::pb::admin::{AddNodeRequest, AddNodeResponse, AdoptRequest, InfoRequest, InfoResponse};
use crate::pb::peer::peer_client::PeerClient as PeerGrpc;
use crate::pb::peer::{
    ForwardAck, ForwardBatch, ForwardedMessage, PingRequest, PingResponse, RaftMessage, SubmitRequest,
    SubmitResponse, TakeSessionRequest, WaitAppliedRequest, WriteRequest,
};
use crate::storage::FORMAT_VERSION;
use crate::types::{Group, NodeId};

/// Largest gRPC message accepted or sent between peers (log batches and
/// snapshot chunks stay far below it).
pub const MAX_MESSAGE: usize = 64 * 1024 * 1024;
/// A ping is answered within this, or the peer counts as unreachable.
const PING_TIMEOUT: Duration = Duration::from_secs(1);
/// How long a new owner waits for the previous owner's queued messages.
const TAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// Admin calls between nodes (info, adopt).
const ADMIN_TIMEOUT: Duration = Duration::from_secs(5);

/// The cluster this node belongs to: unknown until it bootstraps a
/// cluster or is adopted by one, then fixed for the life of the process
/// (the data directory records it).
#[derive(Clone, Default)]
pub struct ClusterId(Arc<OnceLock<String>>);

impl ClusterId {
    pub fn new(known: Option<String>) -> ClusterId {
        let cell = OnceLock::new();
        if let Some(id) = known {
            let _ = cell.set(id);
        }
        ClusterId(Arc::new(cell))
    }

    /// The id, or "" before the node joined a cluster.
    pub fn get(&self) -> &str {
        self.0.get().map_or("", String::as_str)
    }

    pub fn is_known(&self) -> bool {
        self.0.get().is_some()
    }

    /// Records the id; a different one than already recorded is refused.
    pub fn set(&self, id: &str) -> Result<(), String> {
        let now = self.0.get_or_init(|| id.to_string());
        if now == id {
            Ok(())
        } else {
            Err(format!("this node belongs to cluster {now}, not {id}"))
        }
    }

    /// Checks the cluster id and format a peer stamped on its request.
    pub fn check(&self, theirs: &str, format: Option<u32>) -> Result<(), ServiceError> {
        let Some(mine) = self.0.get() else { return Err(ServiceError::NotJoined) };
        if theirs != mine {
            return Err(ServiceError::WrongCluster { theirs: theirs.to_string(), mine: mine.clone() });
        }
        match format {
            Some(f) if f != FORMAT_VERSION => {
                Err(ServiceError::WrongFormat { theirs: f, mine: FORMAT_VERSION })
            }
            _ => Ok(()),
        }
    }
}

/// Which openraft RPC a `RaftMessage` carries.
#[derive(Debug, Clone, Copy)]
pub enum RaftRpc {
    Append,
    Vote,
    Snapshot,
}

/// Which connection to a peer a call uses. Forwarded publishes and the
/// bulk traffic (the durable queues' Raft group, durable groups submitted
/// to its leader) have connections of their own, so that a large batch in
/// flight never holds up a main-group round (a SUBSCRIBE, a CONNECT) in
/// the same TCP stream; the bulk connections run on the bulk runtime at
/// both ends (bulk.rs, lane.rs), the others on the main one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Lane {
    Control,
    Forward,
    Bulk,
}

impl Lane {
    fn of(group: Group) -> Lane {
        match group {
            Group::Main => Lane::Control,
            Group::Queues => Lane::Bulk,
        }
    }
}

#[derive(Clone)]
pub struct PeerClient {
    node_id: NodeId,
    cluster_id: ClusterId,
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
}

impl PeerClient {
    pub fn new(node_id: NodeId, cluster_id: ClusterId) -> PeerClient {
        PeerClient { node_id, cluster_id, channels: Arc::default() }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn cluster_id(&self) -> &ClusterId {
        &self.cluster_id
    }

    fn channel(&self, addr: &str, lane: Lane) -> Result<Channel, PeerError> {
        let mut map = self.channels.lock();
        let key = (addr.to_string(), lane);
        if let Some(c) = map.get(&key) {
            return Ok(c.clone());
        }
        let endpoint = Endpoint::from_shared(format!("http://{addr}"))?
            .connect_timeout(Duration::from_secs(2))
            .tcp_nodelay(true)
            .tcp_keepalive(Some(Duration::from_secs(10)))
            .http2_keep_alive_interval(Duration::from_secs(5))
            .keep_alive_timeout(Duration::from_secs(5))
            .keep_alive_while_idle(true);
        let ch = match lane {
            Lane::Control | Lane::Forward => endpoint.connect_lazy(),
            // Announced as bulk (lane.rs); its tasks run on the bulk
            // runtime (bulk.rs), as the other end's do.
            Lane::Bulk => {
                let bulk = crate::bulk::handle();
                let _bulk = bulk.enter();
                endpoint.connect_with_connector_lazy(crate::lane::BulkConnector)
            }
        };
        map.insert(key, ch.clone());
        Ok(ch)
    }

    fn peer(&self, addr: &str) -> Result<PeerGrpc<Channel>, PeerError> {
        self.peer_on(addr, Lane::Control)
    }

    fn peer_on(&self, addr: &str, lane: Lane) -> Result<PeerGrpc<Channel>, PeerError> {
        Ok(PeerGrpc::new(self.channel(addr, lane)?)
            .max_decoding_message_size(MAX_MESSAGE)
            .max_encoding_message_size(MAX_MESSAGE))
    }

    /// The admin service of the node at `addr` (for forwarding an
    /// operator's request to the leader).
    pub fn admin(&self, addr: &str) -> Result<AdminClient<Channel>, PeerError> {
        Ok(AdminClient::new(self.channel(addr, Lane::Control)?))
    }

    fn request<T>(msg: T, timeout: Duration) -> tonic::Request<T> {
        let mut req = tonic::Request::new(msg);
        req.set_timeout(timeout);
        req
    }

    /// One openraft RPC of `group`; `data` and the answer are bincode.
    pub async fn raft(
        &self,
        group: Group,
        to: NodeId,
        addr: &str,
        rpc: RaftRpc,
        data: Bytes,
        timeout: Duration,
    ) -> Result<Bytes, PeerError> {
        let mut c = self.peer_on(addr, Lane::of(group))?;
        let req = Self::request(self.raft_message(group, to, data), timeout);
        let resp = match rpc {
            RaftRpc::Append => c.append_entries(req).await,
            RaftRpc::Vote => c.vote(req).await,
            RaftRpc::Snapshot => c.install_snapshot(req).await,
        }?;
        Ok(resp.into_inner().data)
    }

    /// Proposes `commands` in `group` at its leader at `addr`; returns
    /// their results, the log index of the entry that carried them and
    /// the node that applied it before answering (unknown from an older
    /// version).
    pub async fn write(
        &self,
        group: Group,
        addr: &str,
        commands: &[Command],
        hops: u32,
        timeout: Duration,
    ) -> Result<(Vec<CommandResult>, u64, Option<NodeId>), PeerError> {
        let data = bincode::serialize(commands).map_err(|e| PeerError::Corrupt(e.to_string()))?;
        let msg = WriteRequest {
            cluster_id: self.cluster_id.get().to_string(),
            commands: data.into(),
            hops,
            format: FORMAT_VERSION,
            group: group.wire(),
        };
        let resp =
            self.peer_on(addr, Lane::of(group))?.write(Self::request(msg, timeout)).await?.into_inner();
        let results = bincode::deserialize(&resp.results).map_err(|e| PeerError::Corrupt(e.to_string()))?;
        Ok((results, resp.log_index, (resp.applied_by != 0).then_some(NodeId(resp.applied_by))))
    }

    /// Whether the node at `addr` answers (and belongs to this cluster).
    pub async fn ping(&self, addr: &str) -> Result<PingResponse, PeerError> {
        let msg = PingRequest { cluster_id: self.cluster_id.get().to_string(), from_node: self.node_id.0 };
        Ok(self.peer(addr)?.ping(Self::request(msg, PING_TIMEOUT)).await?.into_inner())
    }

    /// Waits (at most `timeout`) until the node at `addr` applied `index`.
    pub async fn wait_applied(&self, addr: &str, index: u64, timeout: Duration) -> Result<u64, PeerError> {
        let msg = WaitAppliedRequest {
            cluster_id: self.cluster_id.get().to_string(),
            index,
            timeout_ms: timeout.as_millis() as u32,
        };
        let req = Self::request(msg, timeout + Duration::from_millis(200));
        Ok(self.peer(addr)?.wait_applied(req).await?.into_inner().applied_index)
    }

    /// What the previous owner at `addr` still queues for `client`.
    pub async fn take_session(
        &self,
        addr: &str,
        client: &ClientId,
        claim_index: u64,
    ) -> Result<Vec<ForwardedMessage>, PeerError> {
        let msg = TakeSessionRequest {
            cluster_id: self.cluster_id.get().to_string(),
            client: client.to_string(),
            claim_index,
        };
        Ok(self.peer(addr)?.take_session(Self::request(msg, TAKE_TIMEOUT)).await?.into_inner().messages)
    }

    /// Opens the publish-forwarding stream to the node at `addr`.
    pub async fn open_forward(
        &self,
        addr: &str,
        batches: impl tonic::IntoStreamingRequest<Message = ForwardBatch>,
    ) -> Result<Streaming<ForwardAck>, PeerError> {
        Ok(self.peer_on(addr, Lane::Forward)?.forward(batches).await?.into_inner())
    }

    /// Opens an AppendEntries stream of `group` to the node at `addr`.
    pub async fn open_append(
        &self,
        group: Group,
        addr: &str,
        requests: impl tonic::IntoStreamingRequest<Message = RaftMessage>,
    ) -> Result<Streaming<RaftMessage>, PeerError> {
        Ok(self.peer_on(addr, Lane::of(group))?.append_stream(requests).await?.into_inner())
    }

    /// The envelope of a Raft message of `group` for node `to`.
    pub fn raft_message(&self, group: Group, to: NodeId, data: Bytes) -> RaftMessage {
        RaftMessage {
            cluster_id: self.cluster_id.get().to_string(),
            data,
            format: FORMAT_VERSION,
            to_node: to.0,
            group: group.wire(),
        }
    }

    /// Opens an ordered submit stream to the leader at `addr`.
    pub async fn open_submit(
        &self,
        addr: &str,
        requests: impl tonic::IntoStreamingRequest<Message = SubmitRequest>,
    ) -> Result<Streaming<SubmitResponse>, PeerError> {
        Ok(self.peer_on(addr, Lane::Bulk)?.submit(requests).await?.into_inner())
    }

    /// The identity and addresses of the node at `addr`.
    pub async fn info(&self, addr: &str) -> Result<InfoResponse, PeerError> {
        Ok(self.admin(addr)?.info(Self::request(InfoRequest {}, ADMIN_TIMEOUT)).await?.into_inner())
    }

    /// Makes the (empty) node at `addr` part of this cluster.
    pub async fn adopt(&self, addr: &str) -> Result<(), PeerError> {
        let msg = AdoptRequest { cluster_id: self.cluster_id.get().to_string() };
        self.admin(addr)?.adopt(Self::request(msg, ADMIN_TIMEOUT)).await?;
        Ok(())
    }

    /// Asks the member at `addr` to add this node (joining). No deadline:
    /// the leader adds a learner and waits for it to catch up.
    pub async fn add_me(&self, addr: &str, my_grpc: &str) -> Result<AddNodeResponse, PeerError> {
        let msg = AddNodeRequest { node_id: self.node_id.0, grpc_addr: my_grpc.to_string(), hops: 0 };
        Ok(self.admin(addr)?.add_node(msg).await?.into_inner())
    }
}
