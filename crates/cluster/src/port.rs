//! `ClusterPort`: the broker's `StatePort` on the Raft cluster. A commit
//! is proposed through the `Writer` (batched, forwarded to the leader) and
//! returns once applied on this node; the cluster's own policy on top:
//!
//! - nothing but a release is committed while the node is not ready (a
//!   minority never acknowledges what it cannot store);
//! - a subscription, a user or an ACL rule returns only once every live
//!   node applied it (no subscribe race; security state in force);
//! - a claim that moved a persistent session from another node makes
//!   every live node route to this one, then takes the messages the
//!   previous owner still queues for it (`TakeSession`);
//! - the durable queues' changes (enqueue, trim, release) go to the queue
//!   group (`queue_group.rs`), everything else to the main group; a claim
//!   of a persistent session loads its queue from the queue group's state
//!   here once the claim is applied.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_broker::ids::ClientId;
use starling_broker::port::{PendingCommit, PortError, StatePort};
use starling_broker::replicated::{Command, CommandResult, LocalState, QueueState, ReplicatedState};

use crate::peer_client::PeerClient;
use crate::queue_group::QueueGroup;
use crate::readiness::Readiness;
use crate::sm::SmShared;
use crate::status::PeerStats;
use crate::submitter::Submitter;
use crate::types::NodeId;
use crate::wire::decode_delivery;
use crate::writer::{Proposer, Writer};

/// How long one `WaitApplied` call waits for a member to apply an entry.
const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ClusterPort {
    /// The durable queues' group: enqueues, trims, releases.
    pub queues: Arc<QueueGroup>,
    pub writer: Writer,
    /// For `submit_all` on the leader (the writer's batches may be
    /// proposed out of order).
    pub proposer: Proposer,
    /// For `submit_all` on a follower: in order, several in flight.
    pub submitter: Submitter,
    pub sm: Arc<SmShared>,
    pub peers: PeerClient,
    pub readiness: Arc<Readiness>,
    pub local: Arc<LocalState>,
    pub stats: Arc<PeerStats>,
    /// How long a change that must be in force on every node (a
    /// subscription, a user, an ACL rule) waits for a member that neither
    /// confirms it nor is declared down, before the change is reported as
    /// not confirmed. Longer than the liveness timeout, so a dead member is
    /// declared down first.
    pub confirm_deadline: Duration,
}

/// Waits until every member that is not declared down has applied `index`
/// (`applied`: a member known to have applied it, not asked: the leader
/// that answered the write). A member that does not answer is asked again
/// until it answers or the cluster declares it down; `false` when
/// `deadline` passed first (a member still counted as live, e.g. reachable
/// from the leader but not from this node, may route without the change).
pub(crate) async fn propagate(
    peers: &PeerClient,
    sm: &SmShared,
    index: u64,
    applied: Option<NodeId>,
    deadline: Duration,
) -> bool {
    let until = Instant::now() + deadline;
    let asked = sm.members().into_iter().filter(|(id, _)| *id != peers.node_id() && Some(*id) != applied);
    let waits = asked.map(|(id, addr)| async move {
        loop {
            if sm.with_state(|s| s.down().contains(&id)) {
                return true;
            }
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                tracing::warn!(peer = %id, index, "a live member did not confirm a change in time");
                return false;
            }
            match peers.wait_applied(&addr, index, PROPAGATE_TIMEOUT.min(left)).await {
                Ok(applied) if applied >= index => return true,
                // Not applied yet (it answered at its timeout): ask again.
                Ok(_) => {}
                Err(_) => tokio::time::sleep(Duration::from_millis(100).min(left)).await,
            }
        }
    });
    futures_util::future::join_all(waits).await.into_iter().all(|ok| ok)
}

impl ClusterPort {
    /// A resumed session was claimed here (and, if it moved, every live
    /// node applied the claim, so its previous owner stopped delivering):
    /// its runtime takes what the queue group holds for its life, marked
    /// possibly sent. First a barrier: an empty entry committed in the
    /// queue group, applied here — everything committed before it (which a
    /// previous owner may have delivered) is in the load; anything later
    /// reaches the runtime as it applies, and no previous owner sent it.
    /// The load runs under the queue group's lock, so no entry applies
    /// meanwhile.
    async fn load_queue(&self, client: &ClientId) -> Result<(), PortError> {
        let Some(life) = self.local.views().registry.get(client).and_then(|r| r.durable()) else {
            return Ok(());
        };
        let queues = &self.queues.proposer;
        let (_, barrier) = queues
            .propose(Vec::new(), 0)
            .await
            .map_err(|e| PortError::Unavailable(format!("durable queues unavailable: {e}")))?;
        if !queues.wait_applied(barrier, queues.timeout).await {
            return Err(PortError::Unavailable("durable queues not applied here in time".into()));
        }
        // Replicated time on the leaders' clocks: the later of the two
        // groups' (the queue group's only moves with its own entries).
        let main_time = self.sm.with_state(|s| s.time_ms());
        self.queues.sm.with_state(|g| {
            let now = g.time_ms().max(main_time);
            self.local.load_queue(client, life, g.queues().of(client, life), now);
        });
        Ok(())
    }

    /// The group `cmds` are committed in (the queue group when they change
    /// the durable queues only, else the main group), once this node can
    /// commit there.
    fn group_for(&self, cmds: &[Command]) -> Result<(&Proposer, &Writer, &Submitter), PortError> {
        let queue_changes = cmds.iter().all(Command::is_queue_change);
        if !self.readiness.is_ready() || (queue_changes && !self.queues.readiness.is_ready()) {
            return Err(PortError::Unavailable("this node is not connected to a quorum".into()));
        }
        Ok(if queue_changes {
            (&self.queues.proposer, &self.queues.writer, &self.queues.submitter)
        } else {
            (&self.proposer, &self.writer, &self.submitter)
        })
    }

    /// The session moved here from `previous`: put what that node still
    /// queues for it in front of the session's queue, in order.
    async fn take_over(&self, client: &ClientId, previous: NodeId, claim_index: u64) {
        // Publishers everywhere must route here before the client is told
        // it is connected.
        propagate(&self.peers, &self.sm, claim_index, None, PROPAGATE_TIMEOUT).await;
        let Some(addr) = self.sm.member_addr(previous) else { return };
        let messages = match self.peers.take_session(&addr, client, claim_index).await {
            Ok(m) => m,
            Err(e) => {
                tracing::info!(%client, from = %previous, error = %e, "previous owner's queued messages not taken");
                return;
            }
        };
        let now = Instant::now();
        let mut handed = Vec::with_capacity(messages.len());
        for m in &messages {
            match decode_delivery(m, now) {
                Ok(d) => handed.push(d),
                Err(e) => {
                    self.stats.corrupt.fetch_add(1, Ordering::Relaxed);
                    tracing::warn!(%client, from = %previous, error = %e, "handed-over message refused");
                }
            }
        }
        tracing::debug!(%client, from = %previous, count = handed.len(), "queued messages handed over");
        if let Some(runtime) = self.local.views().registry.get(client) {
            runtime.requeue_front(handed);
        }
    }
}

#[async_trait]
impl StatePort for ClusterPort {
    async fn commit(&self, cmd: Command) -> Result<CommandResult, PortError> {
        // Releasing must work while draining or cut off (the connection is
        // gone either way): no readiness gate.
        let gated = !matches!(cmd, Command::Release { .. });
        if gated && !self.readiness.is_ready() {
            return Err(PortError::Unavailable("this node is not connected to a quorum".into()));
        }
        let every_node = cmd.needs_every_node();
        let resuming = match &cmd {
            Command::Claim { client, clean_start: false, .. } => Some(client.clone()),
            _ => None,
        };
        let (result, index, applied) =
            self.writer.write(cmd).await.map_err(|e| PortError::Unavailable(e.to_string()))?;
        if every_node
            && result != CommandResult::NotOwner
            && !propagate(&self.peers, &self.sm, index, applied, self.confirm_deadline).await
        {
            return Err(PortError::Unavailable(
                "committed, but a live member did not confirm it in time (unreachable from this node)".into(),
            ));
        }
        if let (Some(client), CommandResult::Claimed { session_present: true, previous_owner }) =
            (resuming, &result)
        {
            if let Some(prev) = previous_owner.filter(|p| *p != self.peers.node_id()) {
                self.take_over(&client, prev, index).await;
            }
            self.load_queue(&client).await?;
        }
        Ok(result)
    }

    async fn commit_all(&self, cmds: Vec<Command>) -> Result<Vec<CommandResult>, PortError> {
        let (_, writer, _) = self.group_for(&cmds)?;
        // Handed to the log: a failure from here on may still commit.
        let (results, _, _) = writer.write_all(cmds).await.map_err(|e| PortError::Unknown(e.to_string()))?;
        Ok(results)
    }

    async fn submit_all(&self, cmds: Vec<Command>) -> PendingCommit {
        let (proposer, _, submitter) = match self.group_for(&cmds) {
            Ok(parts) => parts,
            Err(e) => return Box::pin(std::future::ready(Err(e))),
        };
        // Leading: straight to the Raft core, in call order. Otherwise on
        // the submit stream to the leader, which proposes in stream order.
        // Several entries in flight either way.
        match proposer.submit_as_leader(cmds).await {
            Ok(pending) => {
                Box::pin(async move { pending.await.map_err(|e| PortError::Unknown(e.to_string())) })
            }
            Err(cmds) => {
                let answer = submitter.submit(cmds).await;
                Box::pin(async move {
                    answer.await.unwrap_or_else(|_| Err(PortError::Unknown("node stopping".into())))
                })
            }
        }
    }

    fn is_ready(&self) -> bool {
        self.readiness.is_ready() && self.queues.readiness.is_ready()
    }

    fn read(&self, f: &mut dyn FnMut(&ReplicatedState)) {
        self.sm.with_state(|s| f(s))
    }

    fn read_queues(&self, f: &mut dyn FnMut(&QueueState)) {
        self.queues.sm.with_state(|g| f(g.queues()))
    }
}
