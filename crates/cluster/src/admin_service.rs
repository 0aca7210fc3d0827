//! The gRPC `Admin` service behind `starling cluster ...`: status, and
//! membership changes (add: learner → catch up → voter; remove; leave).
//! Membership changes run on the leader; a follower forwards them.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use openraft::ChangeMembers;
use tonic::{Request, Response, Status};

use crate::node::ClusterNode;
use crate::pb::admin::admin_client::AdminClient;
use crate::pb::admin::admin_server::Admin;
use crate::pb::admin::{
    self as pb, AclAddRequest, AclAddResponse, AclListRequest, AclListResponse, AclRemoveRequest,
    AclRemoveResponse, AddNodeRequest, AddNodeResponse, AdoptRequest, AdoptResponse, InfoRequest,
    InfoResponse, LeaveRequest, LeaveResponse, RemoveNodeRequest, RemoveNodeResponse, StatusRequest,
    StatusResponse, UserListRequest, UserListResponse, UserRemoveRequest, UserRemoveResponse, UserSetRequest,
    UserSetResponse,
};
use crate::types::{Command, NodeInfo};
use crate::writer::MAX_HOPS;
use starling_broker::auth::{password, Access, AclRule, Action};

pub struct AdminService {
    pub node: Arc<ClusterNode>,
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

impl AdminService {
    async fn leader_client(&self) -> Result<Option<AdminClient<tonic::transport::Channel>>, Status> {
        let n = &self.node;
        let m = n.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == n.node_id => Ok(None),
            Some(l) => {
                let addr = m
                    .membership_config
                    .membership()
                    .get_node(&l)
                    .map(|i| i.grpc.clone())
                    .ok_or_else(|| Status::unavailable("leader address unknown"))?;
                let ch = n.channels.get(&addr).map_err(internal)?;
                Ok(Some(AdminClient::new(ch)))
            }
            None => Err(Status::unavailable("no leader: the cluster has no quorum right now")),
        }
    }
}

#[tonic::async_trait]
impl Admin for AdminService {
    /// The leader's view (it alone knows every member's replication
    /// progress); this node's own view when no leader is reachable.
    async fn status(&self, _req: Request<StatusRequest>) -> Result<Response<StatusResponse>, Status> {
        if let Ok(Some(mut leader)) = self.leader_client().await {
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
        Ok(Response::new(InfoResponse {
            node_id: n.node_id,
            cluster_id: n.cluster_id.lock().clone(),
            grpc_addr: n.info.grpc.clone(),
            mqtt_addr: n.info.mqtt.clone(),
            http_addr: n.info.http.clone(),
        }))
    }

    async fn adopt(&self, req: Request<AdoptRequest>) -> Result<Response<AdoptResponse>, Status> {
        let id = req.into_inner().cluster_id;
        self.node.adopt(&id).map_err(|e| Status::failed_precondition(e.to_string()))?;
        Ok(Response::new(AdoptResponse {}))
    }

    async fn add_node(&self, req: Request<AddNodeRequest>) -> Result<Response<AddNodeResponse>, Status> {
        let r = req.into_inner();
        if let Some(mut leader) = self.leader_client().await? {
            if r.hops >= MAX_HOPS {
                return Err(Status::unavailable("leadership is changing; try again"));
            }
            return leader.add_node(AddNodeRequest { hops: r.hops + 1, ..r }).await;
        }
        let n = &self.node;
        let mine = n.cluster_id.lock().clone();
        // Ask the new node who it is.
        let ch = n.channels.get(&r.grpc_addr).map_err(internal)?;
        let mut target = AdminClient::new(ch);
        let info = target
            .info(InfoRequest {})
            .await
            .map_err(|e| {
                Status::unavailable(format!("cannot reach the new node at {}: {}", r.grpc_addr, e.message()))
            })?
            .into_inner();
        if info.node_id != r.node_id {
            return Err(Status::invalid_argument(format!(
                "the node at {} is node {}, not node {}",
                r.grpc_addr, info.node_id, r.node_id
            )));
        }
        if !info.cluster_id.is_empty() && info.cluster_id != mine {
            return Err(Status::failed_precondition(format!(
                "node {} belongs to another cluster ({}); give it an empty data directory",
                r.node_id, info.cluster_id
            )));
        }
        let membership = n.raft.metrics().borrow().membership_config.membership().clone();
        if let Some(existing) = membership.get_node(&r.node_id) {
            let is_voter = membership.voter_ids().any(|v| v == r.node_id);
            if info.cluster_id == mine && existing.grpc == r.grpc_addr && is_voter {
                // A member restarting with --join: nothing to do.
                return Ok(Response::new(AddNodeResponse { cluster_id: mine }));
            }
            if info.cluster_id.is_empty() {
                return Err(Status::already_exists(format!(
                    "node id {} is already a member (at {}); a node with an empty data directory must use a new id, \
                     or remove the old one first (`starling cluster remove {} --force`)",
                    r.node_id, existing.grpc, r.node_id
                )));
            }
        }
        target.adopt(AdoptRequest { cluster_id: mine.clone() }).await?;
        let node = NodeInfo { grpc: info.grpc_addr, mqtt: info.mqtt_addr, http: info.http_addr };
        tracing::info!(node = r.node_id, %node, "adding node as learner");
        n.raft.add_learner(r.node_id, node, true).await.map_err(internal)?;
        tracing::info!(node = r.node_id, "learner caught up; promoting to voter");
        n.raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([r.node_id])), false)
            .await
            .map_err(internal)?;
        Ok(Response::new(AddNodeResponse { cluster_id: mine }))
    }

    async fn remove_node(
        &self,
        req: Request<RemoveNodeRequest>,
    ) -> Result<Response<RemoveNodeResponse>, Status> {
        let r = req.into_inner();
        if let Some(mut leader) = self.leader_client().await? {
            if r.hops >= MAX_HOPS {
                return Err(Status::unavailable("leadership is changing; try again"));
            }
            return leader.remove_node(RemoveNodeRequest { hops: r.hops + 1, ..r }).await;
        }
        let n = &self.node;
        let membership = n.raft.metrics().borrow().membership_config.membership().clone();
        if membership.get_node(&r.node_id).is_none() {
            return Ok(Response::new(RemoveNodeResponse {}));
        }
        if !r.force && n.ping(r.node_id).await {
            return Err(Status::failed_precondition(format!(
                "node {} is alive: run `starling cluster leave` on it to drain it, or use --force",
                r.node_id
            )));
        }
        let voters: BTreeSet<u64> = membership.voter_ids().collect();
        if voters.contains(&r.node_id) {
            if voters.len() == 1 {
                return Err(Status::failed_precondition("cannot remove the last voter"));
            }
            n.raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([r.node_id])), false)
                .await
                .map_err(internal)?;
        }
        let still = n.raft.metrics().borrow().membership_config.membership().get_node(&r.node_id).is_some();
        if still {
            n.raft
                .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([r.node_id])), false)
                .await
                .map_err(internal)?;
        }
        // Its connections are gone: wills, clean sessions, routes.
        n.proposer
            .propose(
                vec![
                    Command::NodeReset { node: r.node_id, adopter: Some(n.node_id) },
                    Command::SetLiveness { node: r.node_id, alive: true },
                ],
                0,
            )
            .await
            .map_err(|e| Status::unavailable(e.to_string()))?;
        tracing::info!(node = r.node_id, "node removed from the cluster");
        Ok(Response::new(RemoveNodeResponse {}))
    }

    async fn leave(&self, _req: Request<LeaveRequest>) -> Result<Response<LeaveResponse>, Status> {
        let n = self.node.clone();
        let disconnected = n.drain(Duration::from_secs(10)).await;
        // Ask the leader (possibly this node) to take us out.
        let req = RemoveNodeRequest { node_id: n.node_id, force: true, hops: 0 };
        match self.leader_client().await? {
            Some(mut leader) => {
                leader.remove_node(req).await?;
            }
            None => {
                self.remove_node(Request::new(req)).await?;
            }
        }
        Ok(Response::new(LeaveResponse { disconnected: disconnected as u64 }))
    }

    async fn user_set(&self, req: Request<UserSetRequest>) -> Result<Response<UserSetResponse>, Status> {
        let r = req.into_inner();
        if r.name.is_empty() || r.name.contains(':') || r.name.contains('\0') {
            return Err(Status::invalid_argument("a user name must be non-empty, without ':'"));
        }
        if r.password.is_empty() {
            return Err(Status::invalid_argument("empty password"));
        }
        let password = r.password;
        let hash = tokio::task::spawn_blocking(move || password::hash_password(&password))
            .await
            .map_err(internal)?
            .map_err(Status::internal)?;
        self.propose(Command::UserSet { name: r.name, hash }).await?;
        Ok(Response::new(UserSetResponse {}))
    }

    async fn user_remove(
        &self,
        req: Request<UserRemoveRequest>,
    ) -> Result<Response<UserRemoveResponse>, Status> {
        let name = req.into_inner().name;
        let existed = matches!(
            self.propose(Command::UserRemove { name }).await?,
            crate::types::CommandResult::Expired(true)
        );
        Ok(Response::new(UserRemoveResponse { existed }))
    }

    async fn user_list(&self, _req: Request<UserListRequest>) -> Result<Response<UserListResponse>, Status> {
        let names = self.node.sm.with_state(|s| s.users.keys().cloned().collect());
        let file_names = self.node.file_users();
        Ok(Response::new(UserListResponse { names, file_names }))
    }

    async fn acl_add(&self, req: Request<AclAddRequest>) -> Result<Response<AclAddResponse>, Status> {
        let r = req.into_inner();
        let rule = rule_from_pb(&r.rule.ok_or_else(|| Status::invalid_argument("missing rule"))?)?;
        let position = r.has_position.then_some(r.position);
        self.propose(Command::AclAdd { rule, position }).await?;
        Ok(Response::new(AclAddResponse {}))
    }

    async fn acl_remove(
        &self,
        req: Request<AclRemoveRequest>,
    ) -> Result<Response<AclRemoveResponse>, Status> {
        let index = req.into_inner().index;
        let existed = matches!(
            self.propose(Command::AclRemove { index }).await?,
            crate::types::CommandResult::Expired(true)
        );
        Ok(Response::new(AclRemoveResponse { existed }))
    }

    async fn acl_list(&self, _req: Request<AclListRequest>) -> Result<Response<AclListResponse>, Status> {
        let replicated = self.node.sm.with_state(|s| s.acl.iter().map(rule_to_pb).collect());
        let all = self.node.broker.auth().rules();
        let n = self.node.sm.with_state(|s| s.acl.len());
        let from_file = all.iter().skip(n).map(rule_to_pb).collect();
        Ok(Response::new(AclListResponse { replicated, from_file }))
    }
}

fn rule_to_pb(r: &AclRule) -> pb::AclRule {
    let access = if r.access == Access::Allow { "allow" } else { "deny" };
    let action = match r.action {
        Action::Read => "read",
        Action::Write => "write",
        Action::Readwrite => "readwrite",
    };
    pb::AclRule {
        access: access.into(),
        action: action.into(),
        topic: r.topic.clone(),
        user: r.user.clone().unwrap_or_default(),
        client: r.client.clone().unwrap_or_default(),
    }
}

fn rule_from_pb(r: &pb::AclRule) -> Result<AclRule, Status> {
    let access = match r.access.as_str() {
        "allow" => Access::Allow,
        "deny" => Access::Deny,
        other => {
            return Err(Status::invalid_argument(format!("access must be allow or deny, not {other:?}")))
        }
    };
    let action = match r.action.as_str() {
        "read" => Action::Read,
        "write" => Action::Write,
        "readwrite" => Action::Readwrite,
        other => {
            return Err(Status::invalid_argument(format!(
                "action must be read, write or readwrite, not {other:?}"
            )))
        }
    };
    let rule = AclRule {
        access,
        action,
        topic: r.topic.clone(),
        user: (!r.user.is_empty()).then(|| r.user.clone()),
        client: (!r.client.is_empty()).then(|| r.client.clone()),
    };
    rule.validate().map_err(Status::invalid_argument)?;
    Ok(rule)
}

impl AdminService {
    async fn propose(&self, cmd: Command) -> Result<crate::types::CommandResult, Status> {
        let (mut results, index) =
            self.node.proposer.propose(vec![cmd], 0).await.map_err(|e| Status::unavailable(e.to_string()))?;
        self.node.sm.wait_applied(index, Duration::from_secs(5)).await;
        // Users and ACL rules are security state: when the command returns,
        // every live node enforces the change (a removed user cannot log in
        // on another node a moment later).
        let n = &self.node;
        crate::port::propagate(n.node_id, &n.sm, &n.channels, &n.cluster_id, index).await;
        results.pop().ok_or_else(|| Status::internal("no result"))
    }
}

/// Members and their addresses, for the CLI and status.
pub fn members(m: &openraft::Membership<u64, NodeInfo>) -> BTreeMap<u64, NodeInfo> {
    m.nodes().map(|(id, n)| (*id, n.clone())).collect()
}
