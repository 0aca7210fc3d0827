//! openraft's network over gRPC: Raft messages bincode-encoded inside a
//! small protobuf envelope (`PeerClient::raft`), which also carries the
//! cluster id and the format version, so a node of another cluster or of
//! an incompatible version is refused rather than misread.

use openraft::error::{InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Unreachable};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse,
    VoteRequest, VoteResponse,
};
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::error::PeerError;
use crate::peer_client::{PeerClient, RaftRpc};
use crate::types::{Group, NodeId, NodeInfo, TypeConfig};

/// Creates per-target clients for openraft, for one Raft group.
#[derive(Clone)]
pub struct Network {
    pub peers: PeerClient,
    pub group: Group,
}

pub struct Connection {
    group: Group,
    target: NodeId,
    addr: String,
    peers: PeerClient,
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = Connection;

    async fn new_client(&mut self, target: NodeId, node: &NodeInfo) -> Connection {
        Connection { group: self.group, target, addr: node.grpc.clone(), peers: self.peers.clone() }
    }
}

#[derive(Debug)]
struct Msg(String);

impl std::fmt::Display for Msg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Msg {}

impl Connection {
    async fn call<Req, Resp, E>(
        &mut self,
        rpc: RaftRpc,
        req: &Req,
        option: &RPCOption,
    ) -> Result<Resp, RPCError<NodeId, NodeInfo, RaftError<NodeId, E>>>
    where
        Req: Serialize,
        Resp: DeserializeOwned,
        E: std::error::Error + DeserializeOwned,
    {
        let data = bincode::serialize(req).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        let answer = match self
            .peers
            .raft(self.group, self.target, &self.addr, rpc, data.into(), option.hard_ttl())
            .await
        {
            Ok(a) => a,
            Err(PeerError::Unreachable(why)) => {
                return Err(RPCError::Unreachable(Unreachable::new(&Msg(why))))
            }
            Err(e) => return Err(RPCError::Network(NetworkError::new(&Msg(e.to_string())))),
        };
        let result: Result<Resp, RaftError<NodeId, E>> =
            bincode::deserialize(&answer).map_err(|e| RPCError::Network(NetworkError::new(&e)))?;
        result.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
    }
}

impl RaftNetwork<TypeConfig> for Connection {
    async fn append_entries(
        &mut self,
        req: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call::<_, _, openraft::error::Infallible>(RaftRpc::Append, &req, &option).await
    }

    async fn install_snapshot(
        &mut self,
        req: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<
        InstallSnapshotResponse<NodeId>,
        RPCError<NodeId, NodeInfo, RaftError<NodeId, InstallSnapshotError>>,
    > {
        self.call(RaftRpc::Snapshot, &req, &option).await
    }

    async fn vote(
        &mut self,
        req: VoteRequest<NodeId>,
        option: RPCOption,
    ) -> Result<VoteResponse<NodeId>, RPCError<NodeId, NodeInfo, RaftError<NodeId>>> {
        self.call::<_, _, openraft::error::Infallible>(RaftRpc::Vote, &req, &option).await
    }
}
