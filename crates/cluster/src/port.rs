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
//!   previous owner still queues for it (`TakeSession`).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_broker::ids::ClientId;
use starling_broker::port::{PortError, StatePort};
use starling_broker::replicated::{Command, CommandResult, LocalState, ReplicatedState};

use crate::peer_client::PeerClient;
use crate::readiness::Readiness;
use crate::sm::SmShared;
use crate::status::PeerStats;
use crate::types::NodeId;
use crate::wire::decode_delivery;
use crate::writer::Writer;

/// How long a commit waits for one member to apply it.
const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(2);

pub struct ClusterPort {
    pub writer: Writer,
    pub sm: Arc<SmShared>,
    pub peers: PeerClient,
    pub readiness: Arc<Readiness>,
    pub local: Arc<LocalState>,
    pub stats: Arc<PeerStats>,
}

/// Waits until every live member has applied `index` (each for at most
/// `PROPAGATE_TIMEOUT`; a member that does not answer is skipped: it is
/// down or cut off, and catches up before it is ready again).
pub(crate) async fn propagate(peers: &PeerClient, sm: &SmShared, index: u64) {
    let down = sm.with_state(|s| s.down().clone());
    let waits = sm.members().into_iter().filter(|(id, _)| *id != peers.node_id() && !down.contains(id)).map(
        |(_, addr)| async move {
            let _ = peers.wait_applied(&addr, index, PROPAGATE_TIMEOUT).await;
        },
    );
    futures_util::future::join_all(waits).await;
}

impl ClusterPort {
    /// The session moved here from `previous`: put what that node still
    /// queues for it in front of the session's queue, in order.
    async fn take_over(&self, client: &ClientId, previous: NodeId, claim_index: u64) {
        // Publishers everywhere must route here before the client is told
        // it is connected.
        propagate(&self.peers, &self.sm, claim_index).await;
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
        let (result, index) =
            self.writer.write(cmd).await.map_err(|e| PortError::Unavailable(e.to_string()))?;
        if every_node && result != CommandResult::NotOwner {
            propagate(&self.peers, &self.sm, index).await;
        }
        if let (Some(client), CommandResult::Claimed { session_present: true, previous_owner: Some(prev) }) =
            (resuming, &result)
        {
            if *prev != self.peers.node_id() {
                self.take_over(&client, *prev, index).await;
            }
        }
        Ok(result)
    }

    async fn commit_all(&self, cmds: Vec<Command>) -> Result<Vec<CommandResult>, PortError> {
        if !self.readiness.is_ready() {
            return Err(PortError::Unavailable("this node is not connected to a quorum".into()));
        }
        let (results, _) =
            self.writer.write_all(cmds).await.map_err(|e| PortError::Unavailable(e.to_string()))?;
        Ok(results)
    }

    fn is_ready(&self) -> bool {
        self.readiness.is_ready()
    }

    fn read(&self, f: &mut dyn FnMut(&ReplicatedState)) {
        self.sm.with_state(|s| f(s))
    }
}
