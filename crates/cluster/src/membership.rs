//! `Membership`: which cluster this node belongs to and who its members
//! are. First boot is explicit — a node bootstraps a new one-member
//! cluster only with an empty data directory and no `--join`; with
//! `--join` it asks a member to add it and never initializes a cluster of
//! its own. It also keeps the forwarder's links equal to the replicated
//! membership and liveness.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use tokio::sync::watch;

use crate::error::PeerError;
use crate::forwarder::PeerForwarder;
use crate::peer_client::PeerClient;
use crate::sm::SmShared;
use crate::storage::{new_cluster_id, Store};
use crate::types::{NodeId, NodeInfo, Raft};

pub struct Membership {
    node_id: NodeId,
    /// How other nodes and clients reach this node.
    info: NodeInfo,
    raft: Raft,
    /// The durable queues' group: started with the cluster (its members
    /// follow the main group's afterwards, `queue_group.rs`).
    queues: Raft,
    store: Store,
    peers: PeerClient,
    /// A member's gRPC address to join through (empty data dir only).
    join: Option<String>,
    /// With an empty data dir and no `join`, start a new cluster.
    bootstrap: bool,
}

impl Membership {
    pub fn new(
        info: NodeInfo,
        raft: Raft,
        queues: Raft,
        store: Store,
        peers: PeerClient,
        join: Option<String>,
        bootstrap: bool,
    ) -> Membership {
        Membership { node_id: peers.node_id(), info, raft, queues, store, peers, join, bootstrap }
    }

    pub fn info(&self) -> &NodeInfo {
        &self.info
    }

    /// Every member and its addresses, as this node last saw the membership.
    pub fn members(&self) -> BTreeMap<NodeId, NodeInfo> {
        let m = self.raft.metrics().borrow().membership_config.clone();
        m.membership().nodes().map(|(id, n)| (*id, n.clone())).collect()
    }

    /// The other members' gRPC addresses.
    pub fn peers(&self) -> Vec<(NodeId, String)> {
        self.members().into_iter().filter(|(id, _)| *id != self.node_id).map(|(id, n)| (id, n.grpc)).collect()
    }

    /// Makes this (empty) node part of `cluster_id`.
    pub fn adopt(&self, cluster_id: &str) -> anyhow::Result<()> {
        self.store.set_cluster_id(cluster_id)?;
        self.peers.cluster_id().set(cluster_id).map_err(anyhow::Error::msg)
    }

    /// Joins, bootstraps or resumes, as the data directory and the
    /// configuration say.
    pub async fn bootstrap_or_join(&self) -> anyhow::Result<()> {
        let have_cluster = self.peers.cluster_id().is_known();
        match (&self.join, have_cluster) {
            (Some(join), true) => {
                self.check_join_address(join).await?;
                self.log_member();
                Ok(())
            }
            (Some(join), false) => self.join(join).await,
            (None, true) => {
                if !self.raft.is_initialized().await? && self.bootstrap {
                    self.initialize().await?;
                }
                self.log_member();
                Ok(())
            }
            (None, false) if self.bootstrap => {
                let id = new_cluster_id();
                self.adopt(&id)?;
                self.initialize().await?;
                tracing::info!(cluster = %id, node = %self.node_id, "initialized a new one-member cluster");
                Ok(())
            }
            (None, false) => {
                tracing::info!(node = %self.node_id, "waiting to be added to a cluster (`starling cluster add`)");
                Ok(())
            }
        }
    }

    fn log_member(&self) {
        let members = self.members().len();
        tracing::info!(cluster = %self.peers.cluster_id().get(), node = %self.node_id, members, "member of an existing cluster");
    }

    /// A member restarting with `--join`: make sure the address is of
    /// our own cluster.
    async fn check_join_address(&self, join: &str) -> anyhow::Result<()> {
        let mine = self.peers.cluster_id().get();
        match self.peers.info(join).await {
            Ok(info) if !info.cluster_id.is_empty() && info.cluster_id != mine => {
                bail!(
                    "--join {join} points at cluster {}, but this data directory belongs to cluster {mine}",
                    info.cluster_id
                );
            }
            Ok(_) => Ok(()),
            Err(e) => {
                tracing::warn!(%join, error = %e, "cannot check the join address; continuing with local state");
                Ok(())
            }
        }
    }

    /// Starts both Raft groups with this node as their one member (nodes
    /// that join before the queue group's leader looked at the membership
    /// must find it started).
    async fn initialize(&self) -> anyhow::Result<()> {
        for (raft, what) in [(&self.raft, "the cluster"), (&self.queues, "the durable queues' group")] {
            let members = BTreeMap::from([(self.node_id, self.info.clone())]);
            match raft.initialize(members).await {
                Ok(()) => {}
                Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(
                    _,
                ))) => {}
                Err(e) => return Err(anyhow::anyhow!("cannot initialize {what}: {e}")),
            }
        }
        Ok(())
    }

    /// Asks the member at `join` to add this node, retrying (with back-off)
    /// while it cannot be reached; a refusal ends the attempt.
    async fn join(&self, join: &str) -> anyhow::Result<()> {
        tracing::info!(%join, node = %self.node_id, "joining the cluster");
        let mut delay = Duration::from_millis(200);
        loop {
            match self.peers.add_me(join, &self.info.grpc).await {
                Ok(r) => {
                    self.adopt(&r.cluster_id)?;
                    tracing::info!(cluster = %r.cluster_id, "joined");
                    return Ok(());
                }
                Err(PeerError::Refused {
                    code:
                        tonic::Code::AlreadyExists
                        | tonic::Code::FailedPrecondition
                        | tonic::Code::InvalidArgument,
                    message,
                }) => {
                    bail!("cannot join through {join}: {message}");
                }
                Err(e) => tracing::warn!(%join, error = %e, "join failed; retrying"),
            }
            tokio::time::sleep(delay).await;
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Keeps the forwarder's links equal to the membership, and their
    /// down flags (and this node's readiness) equal to the replicated
    /// liveness.
    pub async fn follow(
        self: Arc<Self>,
        forwarder: Arc<PeerForwarder>,
        sm: Arc<SmShared>,
        readiness: Arc<crate::readiness::Readiness>,
        mut stop: watch::Receiver<bool>,
    ) {
        // Woken by changes of the membership (server metrics) and of the
        // declared-down set only, not by every entry.
        let mut metrics = self.raft.server_metrics();
        let mut down_rx = sm.down_watch();
        let me = self.raft.metrics().borrow().id;
        loop {
            forwarder.set_peers(&self.peers());
            let down = down_rx.borrow_and_update().clone();
            readiness.set_declared_down(down.contains(&me));
            forwarder.set_down(&down);
            tokio::select! {
                r = metrics.changed() => if r.is_err() { return },
                r = down_rx.changed() => if r.is_err() { return },
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }
}
