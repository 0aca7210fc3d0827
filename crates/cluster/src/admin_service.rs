//! The gRPC `Admin` service behind `starling cluster|user|acl ...`:
//! status, membership changes (add: learner → catch up → voter; remove;
//! leave) and the replicated users and ACL rules. Membership changes run
//! on the leader; a follower forwards them (with a hop limit).

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use openraft::error::{ClientWriteError, RaftError};
use openraft::ChangeMembers;
use starling_broker::auth::password;
use starling_broker::replicated::{Command, CommandResult};
use tonic::{Request, Response, Status};

use crate::admin_rules::{rule_from_pb, rule_to_pb};
use crate::error::ServiceError;
use crate::node::ClusterNode;
use crate::pb::admin::admin_client::AdminClient;
use crate::pb::admin::admin_server::Admin;
use crate::pb::admin::{
    AclAddRequest, AclAddResponse, AclListRequest, AclListResponse, AclRemoveRequest, AclRemoveResponse,
    AddNodeRequest, AddNodeResponse, AdoptRequest, AdoptResponse, InfoRequest, InfoResponse, LeaveRequest,
    LeaveResponse, RemoveNodeRequest, RemoveNodeResponse, StatusRequest, StatusResponse, UserListRequest,
    UserListResponse, UserRemoveRequest, UserRemoveResponse, UserSetRequest, UserSetResponse,
};
use crate::types::{NodeId, NodeInfo};
use crate::writer::MAX_HOPS;

/// How long a membership change waits for the durable queues' group to
/// follow it (a new member catches up first).
const QUEUE_GROUP_FOLLOWS: Duration = Duration::from_secs(30);
/// How long one remaining member is given to confirm that the queue group
/// followed a node that removed itself, before the next is asked.
const ASK_ELSEWHERE: Duration = Duration::from_secs(5);

#[derive(Clone)]
pub struct AdminService {
    pub node: Arc<ClusterNode>,
}

fn internal(e: impl std::fmt::Display) -> ServiceError {
    ServiceError::Internal(e.to_string())
}

type Leader = AdminClient<tonic::transport::Channel>;

impl AdminService {
    /// The leader's admin service, or `None` when this node leads.
    fn leader(&self) -> Result<Option<Leader>, ServiceError> {
        let n = &self.node;
        let leader = n.raft.metrics().borrow().current_leader;
        match leader {
            Some(l) if l == n.node_id => Ok(None),
            Some(l) => {
                let addr =
                    n.sm.member_addr(l)
                        .ok_or_else(|| ServiceError::Unavailable("leader address unknown".into()))?;
                Ok(Some(n.peers.admin(&addr).map_err(|e| ServiceError::Unavailable(e.to_string()))?))
            }
            None => Err(ServiceError::Unavailable("no leader: the cluster has no quorum right now".into())),
        }
    }

    /// The leader to forward a membership change to (`None`: this node
    /// leads), refusing once the hop limit is reached.
    fn forward_to(&self, hops: u32) -> Result<Option<Leader>, ServiceError> {
        let leader = self.leader()?;
        if leader.is_some() && hops >= MAX_HOPS {
            return Err(ServiceError::Unavailable("leadership is changing; try again".into()));
        }
        Ok(leader)
    }

    /// Commits a user or rule change; it returns once every live node
    /// enforces it (a removed user cannot log in elsewhere a moment later).
    async fn commit(&self, cmd: Command) -> Result<CommandResult, ServiceError> {
        self.node.broker.port().commit(cmd).await.map_err(|e| ServiceError::Unavailable(e.to_string()))
    }

    /// Checks the node at `addr` is node `id`, of no other cluster, and
    /// not already a member under that id; `Ok(false)`: it is already a
    /// voter with that address (a member restarting with `--join`).
    async fn check_new_node(&self, id: NodeId, addr: &str) -> Result<(bool, NodeInfo), ServiceError> {
        let n = &self.node;
        let mine = n.peers.cluster_id().get();
        let info =
            n.peers.info(addr).await.map_err(|e| {
                ServiceError::Unavailable(format!("cannot reach the new node at {addr}: {e}"))
            })?;
        if info.node_id != id.0 {
            return Err(ServiceError::InvalidArgument(format!(
                "the node at {addr} is node {}, not node {id}",
                info.node_id
            )));
        }
        if !info.cluster_id.is_empty() && info.cluster_id != mine {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {id} belongs to another cluster ({}); give it an empty data directory",
                info.cluster_id
            )));
        }
        let membership = n.raft.metrics().borrow().membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&id) {
            let is_voter = membership.voter_ids().any(|v| v == id);
            if info.cluster_id == mine && existing.grpc == addr && is_voter {
                return Ok((false, existing.clone()));
            }
            if info.cluster_id.is_empty() {
                return Err(ServiceError::AlreadyExists(format!(
                    "node id {id} is already a member (at {}); a node with an empty data directory must use a new id, \
                     or remove the old one first (`starling cluster remove {id} --force`)",
                    existing.grpc
                )));
            }
        }
        Ok((true, NodeInfo { grpc: info.grpc_addr, mqtt: info.mqtt_addr, http: info.http_addr }))
    }

    /// Takes `id` out of the membership (voter, then node) and resets what
    /// it held: its connections are gone (wills, clean sessions, routes).
    async fn remove_member(&self, id: NodeId) -> Result<(), ServiceError> {
        let n = &self.node;
        let membership = n.raft.metrics().borrow().membership_config.membership().clone();
        let voters: BTreeSet<NodeId> = membership.voter_ids().collect();
        if voters.contains(&id) && voters.len() == 1 {
            return Err(ServiceError::FailedPrecondition("cannot remove the last voter".into()));
        }
        let reset = |adopter: NodeId| {
            vec![
                Command::NodeReset { node: id, adopter: Some(adopter) },
                Command::SetLiveness { node: id, alive: true },
            ]
        };
        if id == n.node_id {
            // The leader removes itself (`leave`, drained: no client left
            // here). Its sessions go to a remaining voter now, while it
            // still leads: once out it learns no new leader (a removed
            // node is sent nothing) and could not propose anything.
            let adopter = voters.iter().copied().find(|v| *v != id).unwrap_or(id);
            n.proposer
                .propose(reset(adopter), 0)
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
        }
        if voters.contains(&id) {
            n.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), false)
                .await
                .map_err(internal)?;
        }
        if n.membership.members().contains_key(&id) {
            match n.raft.change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false).await {
                Ok(_) => {}
                // A leader out of the voters steps down once that is
                // applied, perhaps before this second change: the
                // remaining members' leader removes it (asked below).
                Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_))) if id == n.node_id => {}
                Err(e) => return Err(internal(e)),
            }
        }
        if id == n.node_id {
            self.queue_group_follows_elsewhere(id).await?;
        } else {
            // Its sessions come here (it is gone, or it left, drained).
            n.proposer
                .propose(reset(n.node_id), 0)
                .await
                .map_err(|e| ServiceError::Unavailable(e.to_string()))?;
            self.queue_group_follows().await?;
        }
        tracing::info!(node = %id, "node removed from the cluster");
        Ok(())
    }

    /// This node removed itself (it led the main group, `leave`): its own
    /// view of the queue group ends with its removal (the members refuse
    /// its messages, peer_service.rs `admit`, and Raft does not send a
    /// removed node the final membership), so a remaining member's leader
    /// waits for the queue group to follow (`remove_node` of a node that
    /// is no longer a member does just that), asked through each
    /// remaining member in turn while a new leader is elected.
    async fn queue_group_follows_elsewhere(&self, id: NodeId) -> Result<(), ServiceError> {
        let n = &self.node;
        let deadline = tokio::time::Instant::now() + QUEUE_GROUP_FOLLOWS;
        let mut last = String::from("no other member");
        loop {
            for (member, addr) in n.membership.peers() {
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                if left.is_zero() {
                    break;
                }
                let mut req = Request::new(RemoveNodeRequest { node_id: id.0, force: true, hops: 0 });
                // A member may still take this node for its leader and
                // forward the question back here, where it waits in vain.
                req.set_timeout(left.min(ASK_ELSEWHERE));
                let asked = match n.peers.admin(&addr) {
                    Ok(mut admin) => {
                        admin.remove_node(req).await.map(|_| ()).map_err(|s| s.message().to_string())
                    }
                    Err(e) => Err(e.to_string()),
                };
                match asked {
                    Ok(()) => return Ok(()),
                    Err(e) => last = format!("node {member}: {e}"),
                }
            }
            if tokio::time::Instant::now() + Duration::from_millis(200) >= deadline {
                return Err(ServiceError::Unavailable(format!(
                    "this node left the cluster, but no remaining member confirmed within {}s that the \
                     durable queues' group followed (last answer: {last}); `cluster status` on another \
                     member shows when it has",
                    QUEUE_GROUP_FOLLOWS.as_secs()
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the durable queues' group has the main group's voters
    /// (its leader makes them follow, `queue_group.rs`).
    async fn queue_group_follows(&self) -> Result<(), ServiceError> {
        let n = &self.node;
        let voters: BTreeSet<NodeId> =
            n.raft.metrics().borrow().membership_config.membership().voter_ids().collect();
        if n.queues.wait_voters(&voters, QUEUE_GROUP_FOLLOWS).await {
            return Ok(());
        }
        Err(ServiceError::Unavailable(format!(
            "the membership changed, but the durable queues' group has not followed within {}s \
             (it needs a leader and a majority of its members); `cluster status` and \
             starling_queue_group_voters show when it has",
            QUEUE_GROUP_FOLLOWS.as_secs()
        )))
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// The leader's view (it alone knows every member's replication
    /// progress); this node's own view when no leader is reachable, or
    /// when this node was removed (the leader it remembers is not its
    /// leader any more, and the operator must see the removal).
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        if self.node.readiness.is_removed() {
            return Ok(Response::new(self.node.status()));
        }
        if let Ok(Some(mut leader)) = self.leader() {
            let mut req = Request::new(StatusRequest {});
            req.set_timeout(Duration::from_secs(2));
            if let Ok(r) = leader.status(req).await {
                return Ok(r);
            }
        }
        Ok(Response::new(self.node.status()))
    }

    async fn info(&self, _req: Request<InfoRequest>) -> Result<Response<InfoResponse>, Status> {
        let n = &self.node;
        let info = n.membership.info();
        Ok(Response::new(InfoResponse {
            node_id: n.node_id.0,
            cluster_id: n.peers.cluster_id().get().to_string(),
            grpc_addr: info.grpc.clone(),
            mqtt_addr: info.mqtt.clone(),
            http_addr: info.http.clone(),
        }))
    }

    async fn adopt(&self, req: Request<AdoptRequest>) -> Result<Response<AdoptResponse>, Status> {
        let id = req.into_inner().cluster_id;
        self.node.membership.adopt(&id).map_err(|e| ServiceError::FailedPrecondition(e.to_string()))?;
        Ok(Response::new(AdoptResponse {}))
    }

    async fn add_node(&self, req: Request<AddNodeRequest>) -> Result<Response<AddNodeResponse>, Status> {
        let r = req.into_inner();
        if let Some(mut leader) = self.forward_to(r.hops)? {
            return leader.add_node(AddNodeRequest { hops: r.hops + 1, ..r }).await;
        }
        let n = &self.node;
        let id = NodeId(r.node_id);
        let cluster_id = n.peers.cluster_id().get().to_string();
        let (new, info) = self.check_new_node(id, &r.grpc_addr).await?;
        if new {
            n.peers.adopt(&r.grpc_addr).await?;
            tracing::info!(node = %id, node_info = %info, "adding node as learner");
            n.raft.add_learner(id, info, true).await.map_err(internal)?;
            tracing::info!(node = %id, "learner caught up; promoting to voter");
            n.raft
                .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
                .await
                .map_err(internal)?;
            self.queue_group_follows().await?;
        }
        Ok(Response::new(AddNodeResponse { cluster_id }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let r = req.into_inner();
        if let Some(mut leader) = self.forward_to(r.hops)? {
            return leader.remove_node(RemoveNodeRequest { hops: r.hops + 1, ..r }).await;
        }
        let id = NodeId(r.node_id);
        if !self.node.membership.members().contains_key(&id) {
            // Already removed (a retry, or a node that removed itself):
            // answers once the queue group followed, as the removal does.
            self.queue_group_follows().await?;
            return Ok(Response::new(RemoveNodeResponse {}));
        }
        if !r.force && self.node.liveness.ping(id).await {
            return Err(ServiceError::FailedPrecondition(format!(
                "node {id} is alive: run `starling cluster leave` on it to drain it, or use --force"
            ))
            .into());
        }
        self.remove_member(id).await?;
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn leave(&self, _req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let n = self.node.clone();
        let disconnected = n.drain(Duration::from_secs(10)).await;
        // Ask the leader (possibly this node) to take us out.
        match self.leader()? {
            Some(mut leader) => {
                leader.remove_node(RemoveNodeRequest { node_id: n.node_id.0, force: true, hops: 0 }).await?;
            }
            None => self.remove_member(n.node_id).await?,
        }
        n.stop_campaigning();
        tracing::info!(
            "left the cluster: stop this process; to come back, start it with an empty data directory"
        );
        Ok(Response::new(LeaveResponse { disconnected: disconnected as u64 }))
    }

    async fn user_set(&self, req: Request<UserSetRequest>) -> Result<Response<UserSetResponse>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() || r.name.contains(':') || r.name.contains('\0') {
            return Err(
                ServiceError::InvalidArgument("a user name must be non-empty, without ':'".into()).into()
            );
        }
        if r.password.is_empty() {
            return Err(ServiceError::InvalidArgument("empty password".into()).into());
        }
        let password = r.password;
        let hash = tokio::task::spawn_blocking(move || password::hash_password(&password))
            .await
            .map_err(internal)?
            .map_err(internal)?;
        self.commit(Command::UserSet { name: r.name, hash }).await?;
        Ok(Response::new(UserSetResponse {}))
    }

    async fn user_remove(
        &self,
        req: Request<UserRemoveRequest>,
    ) -> Result<Response<UserRemoveResponse>, Status> {
        let name = req.into_inner().name;
        let existed = self.commit(Command::UserRemove { name }).await? == CommandResult::Removed(true);
        Ok(Response::new(UserRemoveResponse { existed }))
    }

    async fn user_list(&self, _req: Request<UserListRequest>) -> Result<Response<UserListResponse>, Status> {
        let names = self.node.sm.with_state(|s| s.users().keys().cloned().collect());
        let file_names = self.node.file_users();
        Ok(Response::new(UserListResponse { names, file_names }))
    }

    async fn acl_add(&self, req: Request<AclAddRequest>) -> Result<Response<AclAddResponse>, Status> {
        let r = req.into_inner();
        let rule = r.rule.ok_or_else(|| ServiceError::InvalidArgument("missing rule".into()))?;
        let rule = rule_from_pb(&rule)?;
        let position = r.has_position.then_some(r.position);
        self.commit(Command::AclAdd { rule, position }).await?;
        Ok(Response::new(AclAddResponse {}))
    }

    async fn acl_remove(
        &self,
        req: Request<AclRemoveRequest>,
    ) -> Result<Response<AclRemoveResponse>, Status> {
        let index = req.into_inner().index;
        let existed = self.commit(Command::AclRemove { index }).await? == CommandResult::Removed(true);
        Ok(Response::new(AclRemoveResponse { existed }))
    }

    async fn acl_list(&self, _req: Request<AclListRequest>) -> Result<Response<AclListResponse>, Status> {
        let (replicated, n): (Vec<_>, usize) =
            self.node.sm.with_state(|s| (s.acl().iter().map(rule_to_pb).collect(), s.acl().len()));
        let from_file = self.node.broker.auth().rules().iter().skip(n).map(rule_to_pb).collect();
        Ok(Response::new(AclListResponse { replicated, from_file }))
    }
}
