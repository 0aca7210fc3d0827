//! `Liveness`: the duties that keep the replicated state true to what
//! is alive and to the passing of time.
//!
//! - After a (re)start, the node's own reset: whatever connections it had
//!   are gone (wills, clean sessions, routes); then it becomes ready.
//! - On the leader, every `PING_EVERY`: ping the members, declare one
//!   unreachable for `node_down_after` down (its sessions reset, wills
//!   published) and bring a returning one back.
//! - On the leader, every `TICK_EVERY`: propose `Command::Tick` once the
//!   state's next delayed will or session expiry is due. This is the only
//!   clock in the cluster's session handling: no timer per session, and
//!   every decision on replicated (leader-stamped) time.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use starling_broker::replicated::{wall_ms, Command};
use tokio::sync::watch;

use crate::membership::Membership;
use crate::peer_client::PeerClient;
use crate::readiness::Readiness;
use crate::sm::SmShared;
use crate::types::{NodeId, Raft};
use crate::writer::Proposer;

const PING_EVERY: Duration = Duration::from_millis(500);
/// A delayed will or an expiry fires at most this late (plus a commit).
const TICK_EVERY: Duration = Duration::from_millis(100);
/// How often a node without a leader's word asks the members whether it
/// is still one of them.
const REMOVED_CHECK_EVERY: Duration = Duration::from_secs(2);

pub struct Liveness {
    raft: Raft,
    sm: Arc<SmShared>,
    proposer: Proposer,
    peers: PeerClient,
    membership: Arc<Membership>,
    readiness: Arc<Readiness>,
    /// A member unreachable this long is declared down.
    node_down_after: Duration,
    /// The leader's view of when each member last answered a ping.
    last_seen: Mutex<HashMap<NodeId, Instant>>,
}

impl Liveness {
    pub fn new(
        raft: Raft,
        sm: Arc<SmShared>,
        proposer: Proposer,
        membership: Arc<Membership>,
        readiness: Arc<Readiness>,
        node_down_after: Duration,
    ) -> Liveness {
        let peers = proposer.peers.clone();
        Liveness {
            raft,
            sm,
            proposer,
            peers,
            membership,
            readiness,
            node_down_after,
            last_seen: Mutex::new(HashMap::new()),
        }
    }

    fn me(&self) -> NodeId {
        self.peers.node_id()
    }

    fn is_leader(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.me())
    }

    /// Whether member `node` answers a ping now.
    pub async fn ping(&self, node: NodeId) -> bool {
        match self.sm.member_addr(node) {
            Some(addr) => self.peers.ping(&addr).await.is_ok(),
            None => false,
        }
    }

    /// Once a leader is reachable: commit this node's reset, then ready.
    pub async fn startup_reset(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        loop {
            if self.membership.members().contains_key(&self.me()) {
                let cmds = vec![
                    Command::NodeReset { node: self.me(), adopter: Some(self.me()) },
                    Command::SetLiveness { node: self.me(), alive: true },
                ];
                match self.proposer.propose(cmds, 0).await {
                    Ok((_, index)) if self.sm.wait_applied(index, Duration::from_secs(10)).await => {
                        self.readiness.reset_done();
                        let m = self.raft.metrics().borrow().clone();
                        let role = if m.current_leader == Some(self.me()) { "leader" } else { "follower" };
                        let leader = m.current_leader.map_or_else(|| "none".to_string(), |l| l.to_string());
                        tracing::info!(node = %self.me(), %role, %leader, "ready");
                        return;
                    }
                    Ok(_) => tracing::debug!("startup reset committed but not applied yet; retrying"),
                    Err(e) => tracing::debug!(error = %e, "startup reset not committed yet; retrying"),
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(200)) => {}
                _ = stop.wait_for(|s| *s) => return,
            }
        }
    }

    /// On the leader: liveness of the members.
    pub async fn watch_members(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(PING_EVERY);
        let mut was_leader = false;
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            if !self.is_leader() {
                was_leader = false;
                continue;
            }
            let peers = self.membership.peers();
            if !was_leader {
                // A new leader gives everyone a fresh grace period.
                let now = Instant::now();
                *self.last_seen.lock() = peers.iter().map(|(id, _)| (*id, now)).collect();
                was_leader = true;
            }
            let client = &self.peers;
            let pings = peers.iter().map(|(id, addr)| async move { (*id, client.ping(addr).await.is_ok()) });
            let answers = futures_util::future::join_all(pings).await;
            let cmds = self.verdicts(answers);
            if !cmds.is_empty() {
                // Only as the leader that reached the verdict: a verdict of a
                // leader cut off from the others (it sees them all "down")
                // must never be forwarded to the leader that replaced it.
                if let Err(e) = self.proposer.propose_as_leader(cmds).await {
                    tracing::debug!(error = %e, "liveness changes not committed");
                }
            }
        }
    }

    /// The liveness commands that ping `answers` call for.
    fn verdicts(&self, answers: Vec<(NodeId, bool)>) -> Vec<Command> {
        let down = self.sm.with_state(|s| s.down().clone());
        let mut cmds = Vec::new();
        if down.contains(&self.me()) {
            // Declared down while cut off; leading again proves otherwise.
            cmds.push(Command::SetLiveness { node: self.me(), alive: true });
        }
        let now = Instant::now();
        let mut seen = self.last_seen.lock();
        for (id, ok) in answers {
            if ok {
                seen.insert(id, now);
                if down.contains(&id) {
                    tracing::info!(node = %id, "node reachable again");
                    cmds.push(Command::SetLiveness { node: id, alive: true });
                }
                continue;
            }
            let last = *seen.entry(id).or_insert(now);
            if last.elapsed() >= self.node_down_after && !down.contains(&id) {
                tracing::warn!(node = %id, after = ?self.node_down_after, "node unreachable; marking it down");
                cmds.push(Command::SetLiveness { node: id, alive: false });
                cmds.push(Command::NodeReset { node: id, adopter: Some(self.me()) });
            }
        }
        cmds
    }

    /// Returns once a member says this node was removed from the cluster
    /// (`remove --force` while it could not answer: Raft stops replicating
    /// to a removed node and never tells it, so it would campaign at every
    /// election timeout until stopped); `None` once `stop` is set. Asked
    /// only while no leader reaches this node (a node catching up hears
    /// from one), it is not leaving (`leave` stops its timers itself) and
    /// its own log makes it a member; believed only from a member that
    /// applied a later membership than the latest this node's log holds,
    /// so a node joining under an id removed earlier, or one behind, is
    /// never misled by a member that applied less than it holds.
    pub async fn until_removed(self: Arc<Self>, mut stop: watch::Receiver<bool>) -> Option<u64> {
        let mut tick = tokio::time::interval(REMOVED_CHECK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return None,
            }
            if self.readiness.is_ready()
                || self.readiness.leader_heard_recently()
                || self.readiness.is_draining()
            {
                continue;
            }
            let mine = {
                let m = self.raft.metrics().borrow().membership_config.clone();
                if m.membership().get_node(&self.me()).is_none() {
                    continue;
                }
                m.log_id().map_or(0, |l| l.index)
            };
            let client = &self.peers;
            let peers = self.membership.peers();
            let asks = peers.iter().map(|(_, addr)| async move { client.ping(addr).await.ok() });
            let answers = futures_util::future::join_all(asks).await;
            let removed = answers
                .into_iter()
                .flatten()
                .filter(|a| a.sender_removed && a.membership_index > mine)
                .map(|a| (a.node_id, a.membership_index))
                .next();
            if let Some((by, index)) = removed {
                tracing::error!(
                    node = %self.me(),
                    told_by = by,
                    membership_index = index,
                    "this node was removed from the cluster (`starling cluster remove --force` while it was \
                     unreachable): it takes no clients and no longer campaigns; stop it, and to bring it back \
                     start it with an empty data directory and --join"
                );
                return Some(index);
            }
        }
    }

    /// On the leader: the cluster's clock for delayed wills and expiry.
    pub async fn keep_time(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK_EVERY);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => return,
            }
            let due = self.sm.with_state(|s| s.next_due_ms()).is_some_and(|t| t <= wall_ms());
            if due && self.is_leader() {
                if let Err(e) = self.proposer.propose(vec![Command::Tick], 0).await {
                    tracing::debug!(error = %e, "tick not committed");
                }
            }
        }
    }
}
