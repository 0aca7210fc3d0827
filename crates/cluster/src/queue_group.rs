//! The durable queues' Raft group.
//!
//! Every node runs a second openraft `Raft` beside the main group's, with
//! its own log and snapshots (`<data_dir>/queues`) and a state machine
//! holding the durable queues only (`QueueGroupState`). Enqueues, trims and
//! releases are proposed here; everything else stays in the main group, so
//! a CONNECT or a SUBSCRIBE never waits behind a round of queued messages
//! (openraft 0.9 replicates one AppendEntries at a time per follower, and
//! a control entry in the same log waited for the data rounds ahead of it).
//!
//! The two groups share nothing in their logs; what ties them:
//! - each queue belongs to one session life (`Incarnation`), numbered by
//!   the main group; the publishing node names the life it routed to, and
//!   the queue rules need nothing else (replicated/queue.rs);
//! - a claim, once committed in the main group, loads the claimed life's
//!   queue from this group's state on the claiming node (`ClusterPort`);
//!   later entries reach the session's runtime as they apply;
//! - a session life that ended in the main group leaves its queue here:
//!   the queue group's leader drops such queues (`DropQueues`) every
//!   `DROP_EVERY`, comparing with the main group's state as applied on its
//!   node (a life numbered above what that node applied is left alone: its
//!   claim is not applied there yet);
//! - the queue group's members follow the main group's voters: its leader
//!   adds a new voter as a learner, waits until it caught up, then makes
//!   the voters equal (`follow`); a node removed from the main group is
//!   removed here the same way. The node that starts a cluster starts
//!   both groups (`Membership`); one that leads a main group it alone
//!   belongs to and has no queue group yet starts it too (a restart
//!   between the two).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::ChangeMembers;
use starling_broker::ids::{ClientId, Incarnation};
use starling_broker::replicated::{Command, LocalState, QueueGroupState};
use tokio::sync::watch;

use crate::log_store::LogStore;
use crate::network::Network;
use crate::peer_client::PeerClient;
use crate::readiness::Readiness;
use crate::sm::{SmShared, StateMachine};
use crate::status::PeerStats;
use crate::storage::Store;
use crate::submitter::Submitter;
use crate::types::{Group, NodeId, NodeInfo, Raft};
use crate::writer::{Proposer, Writer};

/// How often the queue group's leader looks for queues of ended lives.
const DROP_EVERY: Duration = Duration::from_secs(2);
/// Queues dropped per entry at most.
const DROP_BATCH: usize = 4096;
/// How often the membership is compared when nothing changed.
const FOLLOW_EVERY: Duration = Duration::from_secs(1);
/// How long a new member may take to catch up before the next attempt.
const CATCH_UP: Duration = Duration::from_secs(60);

/// The queue group's parts on this node.
pub struct QueueGroup {
    pub raft: Raft,
    pub sm: Arc<SmShared<QueueGroupState>>,
    pub store: Store,
    /// Whether this node can commit queue changes now (a leader heard
    /// from recently, caught up).
    pub readiness: Arc<Readiness>,
    pub proposer: Proposer,
    pub writer: Writer,
    pub submitter: Submitter,
    /// Last committed index openraft reported (metrics).
    pub committed: Arc<AtomicU64>,
}

impl QueueGroup {
    /// Opens the group's storage under `<data_dir>/queues` and starts its
    /// Raft core.
    pub async fn open(
        data_dir: std::path::PathBuf,
        config: Arc<openraft::Config>,
        peers: PeerClient,
        local: Arc<LocalState>,
        stats: Arc<PeerStats>,
        fresh: Duration,
        timeout: Duration,
    ) -> anyhow::Result<QueueGroup> {
        let node_id = peers.node_id();
        let store = Store::open(&data_dir.join("queues"), node_id.0)?;
        let sm = StateMachine::<QueueGroupState>::open(store.clone(), local)
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot load the durable queues' snapshot")?;
        let shared = sm.shared.clone();
        let log_store = LogStore::open(store.clone())
            .map_err(|e| anyhow::anyhow!("{e}"))
            .context("cannot open the durable queues' Raft log")?;
        let committed = log_store.committed.clone();
        let progress = log_store.progress.clone();
        let network =
            Network { peers: peers.clone(), group: Group::Queues, log_on_disk: store.log_on_disk.clone() };
        let raft = Raft::new(node_id, config, network, log_store, sm)
            .await
            .context("cannot read the durable queues' Raft log")?;
        progress.follow(raft.data_metrics());
        let readiness = Arc::new(Readiness::new(raft.clone(), fresh));
        // The node-wide conditions (startup reset, draining, declared down)
        // are the main group's readiness; this one only follows the leader.
        readiness.reset_done();
        let proposer = Proposer {
            group: Group::Queues,
            raft: raft.clone(),
            peers,
            applied: shared.applied_watch(),
            timeout,
        };
        let writer = Writer::start(proposer.clone());
        let submitter = Submitter::start(proposer.clone(), writer.clone(), stats);
        Ok(QueueGroup { raft, sm: shared, store, readiness, proposer, writer, submitter, committed })
    }

    /// Keeps the group's membership equal to the main group's voters and
    /// drops the queues of ended session lives, while this node leads the
    /// queue group; starts the group on a new one-member cluster. Until
    /// `stop`.
    pub async fn follow(
        self: Arc<Self>,
        main: Raft,
        main_sm: Arc<SmShared>,
        me: NodeInfo,
        mut stop: watch::Receiver<bool>,
    ) {
        let mut main_metrics = main.server_metrics();
        let mut own_metrics = self.raft.server_metrics();
        let mut drop_tick = tokio::time::interval(DROP_EVERY);
        drop_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.start_if_alone(&main, &me).await;
            if self.leads() {
                self.match_members(&main).await;
            }
            let drop_now = tokio::select! {
                r = main_metrics.changed() => if r.is_err() { return } else { false },
                r = own_metrics.changed() => if r.is_err() { return } else { false },
                _ = tokio::time::sleep(FOLLOW_EVERY) => false,
                _ = drop_tick.tick() => true,
                _ = stop.wait_for(|s| *s) => return,
            };
            if drop_now && self.leads() {
                self.drop_ended(&main_sm).await;
            }
        }
    }

    /// Waits (at most `timeout`) until the group's voters are `voters`,
    /// as this node last learned its membership. A membership change in
    /// the main group returns only after this (`AdminService`): an
    /// operator who removes one dead node and then loses another must not
    /// find the queue group still counting the first.
    pub async fn wait_voters(&self, voters: &BTreeSet<NodeId>, timeout: Duration) -> bool {
        let mut rx = self.raft.server_metrics();
        let matched = async move {
            rx.wait_for(|m| {
                let have: BTreeSet<NodeId> = m.membership_config.membership().voter_ids().collect();
                &have == voters
            })
            .await
            .is_ok()
        };
        tokio::time::timeout(timeout, matched).await.unwrap_or(false)
    }

    fn leads(&self) -> bool {
        let m = self.raft.metrics();
        let m = m.borrow();
        m.current_leader == Some(m.id)
    }

    /// A new cluster: this node leads a main group it alone belongs to and
    /// has no queue group yet (bootstrap, or a restart right after it).
    async fn start_if_alone(&self, main: &Raft, me: &NodeInfo) {
        let alone = {
            let m = main.metrics();
            let m = m.borrow();
            let voters: Vec<NodeId> = m.membership_config.membership().voter_ids().collect();
            m.current_leader == Some(m.id) && voters == [m.id]
        };
        if !alone || self.raft.is_initialized().await.unwrap_or(true) {
            return;
        }
        let members = BTreeMap::from([(self.proposer.peers.node_id(), me.clone())]);
        match self.raft.initialize(members).await {
            Ok(()) => tracing::info!("started the durable queues' group"),
            Err(openraft::error::RaftError::APIError(openraft::error::InitializeError::NotAllowed(_))) => {}
            Err(e) => tracing::warn!(error = %e, "cannot start the durable queues' group"),
        }
    }

    /// Makes this group's voters the main group's: new ones join as
    /// learners first (and catch up), then the voter set is replaced.
    async fn match_members(&self, main: &Raft) {
        let want: BTreeMap<NodeId, NodeInfo> = {
            let m = main.metrics();
            let m = m.borrow();
            let ms = m.membership_config.membership();
            let voters: BTreeSet<NodeId> = ms.voter_ids().collect();
            ms.nodes().filter(|(id, _)| voters.contains(id)).map(|(id, n)| (*id, n.clone())).collect()
        };
        if want.is_empty() {
            return;
        }
        let (have_nodes, have_voters): (BTreeSet<NodeId>, BTreeSet<NodeId>) = {
            let m = self.raft.metrics();
            let m = m.borrow();
            let ms = m.membership_config.membership();
            (ms.nodes().map(|(id, _)| *id).collect(), ms.voter_ids().collect())
        };
        for (id, info) in want.iter().filter(|(id, _)| !have_nodes.contains(id)) {
            tracing::info!(node = %id, "adding a member to the durable queues' group");
            match tokio::time::timeout(CATCH_UP, self.raft.add_learner(*id, info.clone(), true)).await {
                Ok(Ok(_)) => {}
                Ok(Err(e)) => {
                    tracing::warn!(node = %id, error = %e, "cannot add a member to the durable queues' group");
                    return;
                }
                Err(_) => {
                    tracing::warn!(node = %id, "a new member of the durable queues' group has not caught up yet");
                    return;
                }
            }
        }
        let want_voters: BTreeSet<NodeId> = want.keys().copied().collect();
        if want_voters != have_voters {
            tracing::info!(voters = ?want_voters, "durable queues' group follows the cluster's voters");
            if let Err(e) =
                self.raft.change_membership(ChangeMembers::ReplaceAllVoters(want_voters), false).await
            {
                tracing::warn!(error = %e, "cannot change the durable queues' group's voters");
            }
        }
    }

    /// Proposes `DropQueues` for the queues whose session life ended, as
    /// the main group's state applied here says.
    async fn drop_ended(&self, main_sm: &SmShared) {
        let lives: Vec<(ClientId, Incarnation)> =
            self.sm.with_state(|g| g.queues().iter().map(|(c, q)| (c.clone(), q.incarnation())).collect());
        if lives.is_empty() {
            return;
        }
        let ended: Vec<(ClientId, Incarnation)> = main_sm.with_state(|s| {
            lives
                .into_iter()
                .filter(|(c, life)| {
                    life.0 <= s.sessions_begun() && s.session(c).is_none_or(|r| r.incarnation != *life)
                })
                .collect()
        });
        for chunk in ended.chunks(DROP_BATCH) {
            let cmd = Command::DropQueues { lives: chunk.to_vec() };
            match self.proposer.propose(vec![cmd], 0).await {
                Ok(_) => tracing::debug!(count = chunk.len(), "dropped the queues of ended session lives"),
                Err(e) => {
                    tracing::debug!(error = %e, "queues of ended session lives not dropped yet");
                    return;
                }
            }
        }
    }
}
