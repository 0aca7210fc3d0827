//! Proposing replicated commands from any node.
//!
//! Callers hand a command to the `Writer` and wait. A batcher task takes
//! every command waiting at that moment (up to `MAX_BATCH`) and proposes
//! them as one log entry: on the leader directly, on a follower through
//! the leader's `Write` RPC (with a hop limit, in case leadership moves
//! while the request travels). The caller is answered only once the entry
//! is applied on *this* node, so what it acknowledges is visible here.
//!
//! Bounds: `QUEUE` commands may wait for a batch (callers then wait for
//! room); `IN_FLIGHT` batches may be proposed at once.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use openraft::error::{ClientWriteError, RaftError};
use tokio::sync::{mpsc, oneshot, watch, Semaphore};

use starling_broker::replicated::{wall_ms, Command, CommandResult};

use crate::peer_client::PeerClient;
use crate::types::{Batch, Group, NodeId, Raft};

const QUEUE: usize = 8192;
const MAX_BATCH: usize = 512;
const IN_FLIGHT: usize = 2;
/// Forwarding hops a write may take (follower → leader → new leader).
pub const MAX_HOPS: u32 = 2;

#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    #[error("no leader reachable within {0:?}")]
    NoLeader(Duration),
    #[error("{0}")]
    Failed(String),
}

/// Results of commands written together, the index of their entry, and
/// the node that applied it before answering (the leader; `None` when a
/// leader of an older version does not say).
pub type Written = (Vec<CommandResult>, u64, Option<NodeId>);

/// The outcome of an entry handed to the Raft core (`submit_as_leader`).
pub type PendingWrite = Pin<Box<dyn Future<Output = Result<Vec<CommandResult>, WriteError>> + Send>>;

/// Commands to commit together, in order, in one entry.
struct Job {
    cmds: Vec<Command>,
    reply: oneshot::Sender<Result<Written, WriteError>>,
}

/// What the batcher and the peer service need to propose in one Raft
/// group (`applied`: the index that group's state machine applied here).
#[derive(Clone)]
pub struct Proposer {
    pub group: Group,
    pub raft: Raft,
    pub peers: PeerClient,
    pub applied: watch::Receiver<u64>,
    pub timeout: Duration,
}

impl Proposer {
    /// Proposes `commands` as one entry: here if this node leads, else at
    /// the leader. Returns the results and the entry's log index.
    /// Proposes `commands` only if this node leads (never forwarded);
    /// fails as soon as it does not.
    pub async fn propose_as_leader(
        &self,
        commands: Vec<Command>,
    ) -> Result<(Vec<CommandResult>, u64), WriteError> {
        if !self.leads() {
            return Err(WriteError::Failed("not the leader any more".into()));
        }
        let batch = Batch { time_ms: wall_ms(), commands: Arc::new(commands) };
        match tokio::time::timeout(self.timeout, self.raft.client_write(batch)).await {
            Ok(Ok(resp)) => Ok((resp.data.0, resp.log_id.index)),
            Ok(Err(e)) => Err(WriteError::Failed(e.to_string())),
            Err(_) => Err(WriteError::NoLeader(self.timeout)),
        }
    }

    /// Waits (at most `timeout`) until this node applied `index` of the
    /// group.
    pub async fn wait_applied(&self, index: u64, timeout: Duration) -> bool {
        let mut rx = self.applied.clone();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// The gRPC address of member `node`, from the membership the Raft
    /// core last reported.
    pub(crate) fn member_addr(&self, node: NodeId) -> Option<String> {
        self.raft.metrics().borrow().membership_config.membership().get_node(&node).map(|n| n.grpc.clone())
    }

    /// Whether this node is the leader, as its Raft core last reported.
    fn leads(&self) -> bool {
        self.raft.metrics().borrow().current_leader == Some(self.peers.node_id())
    }

    /// Hands `commands` to the Raft core as one entry when this node
    /// leads, without waiting for the outcome: entries handed over one
    /// after another are in the log in that order. The returned future
    /// resolves once the entry is applied here (or failed; then it may
    /// still be committed). Gives the commands back when this node does
    /// not lead.
    pub async fn submit_as_leader(&self, commands: Vec<Command>) -> Result<PendingWrite, Vec<Command>> {
        if !self.leads() {
            return Err(commands);
        }
        let batch = Batch { time_ms: wall_ms(), commands: Arc::new(commands) };
        let timeout = self.timeout;
        Ok(match self.raft.client_write_ff(batch).await {
            Ok(rx) => Box::pin(async move {
                match tokio::time::timeout(timeout, rx).await {
                    Ok(Ok(Ok(resp))) => Ok(resp.data.0),
                    Ok(Ok(Err(e))) => Err(WriteError::Failed(e.to_string())),
                    Ok(Err(_)) => Err(WriteError::Failed("the Raft core dropped the write".into())),
                    Err(_) => Err(WriteError::NoLeader(timeout)),
                }
            }),
            Err(e) => Box::pin(std::future::ready(Err(WriteError::Failed(e.to_string())))),
        })
    }

    pub async fn propose(
        &self,
        commands: Vec<Command>,
        hops: u32,
    ) -> Result<(Vec<CommandResult>, u64), WriteError> {
        self.propose_applied(commands, hops).await.map(|(results, index, _)| (results, index))
    }

    /// `propose`, also returning the node that applied the entry before
    /// answering: this one when it leads, else the leader that answered
    /// (`None` when that node is too old to say).
    pub async fn propose_applied(&self, commands: Vec<Command>, hops: u32) -> Result<Written, WriteError> {
        let deadline = Instant::now() + self.timeout;
        let retry_safe = commands.iter().all(Command::is_idempotent);
        // Shared by every attempt (and by openraft's copies of the entry).
        let commands = Arc::new(commands);
        let unknown = || {
            WriteError::Failed(
                "outcome unknown: the leader did not answer, the write may be committed".into(),
            )
        };
        loop {
            let leader = self.raft.metrics().borrow().current_leader;
            match leader {
                Some(l) if l == self.peers.node_id() => {
                    let batch = Batch { time_ms: wall_ms(), commands: commands.clone() };
                    match tokio::time::timeout_at(deadline.into(), self.raft.client_write(batch)).await {
                        Ok(Ok(resp)) => return Ok((resp.data.0, resp.log_id.index, Some(l))),
                        // Leadership moved: perhaps after the entry was
                        // appended, so only an idempotent write is retried.
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) if !retry_safe => {
                            return Err(unknown());
                        }
                        Ok(Err(RaftError::APIError(ClientWriteError::ForwardToLeader(_)))) => {}
                        Ok(Err(e)) => return Err(WriteError::Failed(e.to_string())),
                        Err(_) => return Err(WriteError::NoLeader(self.timeout)),
                    }
                }
                Some(l) if hops < MAX_HOPS => {
                    if let Some(addr) = self.member_addr(l) {
                        // A leader that died does not answer: rather than
                        // wait for the whole deadline, give up on it as soon
                        // as this node sees leadership move, and retry with
                        // the new leader.
                        tokio::select! {
                            r = self.forward(&addr, &commands, hops + 1, deadline) => match r {
                                Ok(r) => return Ok(r),
                                Err(e) if !retry_safe => {
                                    tracing::debug!(leader = %l, error = %e, "forwarded write failed; not retried");
                                    return Err(unknown());
                                }
                                Err(e) => {
                                    tracing::debug!(leader = %l, error = %e, "forwarded write failed; retrying")
                                }
                            },
                            () = self.leader_moves_from(l) => {
                                if !retry_safe {
                                    return Err(unknown());
                                }
                                tracing::debug!(leader = %l, "leadership moved while forwarding a write; retrying");
                            }
                        }
                    }
                }
                _ => {}
            }
            if Instant::now() >= deadline {
                return Err(WriteError::NoLeader(self.timeout));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Completes once this node no longer sees `leader` as the leader.
    pub(crate) async fn leader_moves_from(&self, leader: NodeId) {
        // The server metrics change with the vote, role, leader or
        // membership only, not with every entry.
        let mut metrics = self.raft.server_metrics();
        while metrics.borrow_and_update().current_leader == Some(leader) {
            if metrics.changed().await.is_err() {
                // Raft stopped: the deadline ends the write.
                std::future::pending::<()>().await;
            }
        }
    }

    async fn forward(
        &self,
        addr: &str,
        commands: &[Command],
        hops: u32,
        deadline: Instant,
    ) -> Result<Written, WriteError> {
        let left = deadline.saturating_duration_since(Instant::now()).max(Duration::from_millis(100));
        self.peers
            .write(self.group, addr, commands, hops, left)
            .await
            .map_err(|e| WriteError::Failed(e.to_string()))
    }
}

/// The handle connections use (cheap to clone).
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::Sender<Job>,
}

impl Writer {
    pub fn start(proposer: Proposer) -> Writer {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(batcher(proposer, rx));
        Writer { tx }
    }

    /// Proposes one command and waits until it is applied on this node.
    /// Returns its result, the index of the entry that carried it and the
    /// node that applied it before answering (the leader: this node or the
    /// one the write was forwarded to; `None` from an older version).
    pub async fn write(&self, cmd: Command) -> Result<(CommandResult, u64, Option<NodeId>), WriteError> {
        let (mut results, index, applied_by) = self.write_all(vec![cmd]).await?;
        Ok((results.pop().unwrap_or(CommandResult::Done), index, applied_by))
    }

    /// Proposes `cmds` in one entry, in this order (never split between
    /// entries), and waits until it is applied on this node.
    pub async fn write_all(&self, cmds: Vec<Command>) -> Result<Written, WriteError> {
        let (reply, rx) = oneshot::channel();
        self.tx.send(Job { cmds, reply }).await.map_err(|_| WriteError::Failed("node stopping".into()))?;
        rx.await.map_err(|_| WriteError::Failed("node stopping".into()))?
    }
}

/// Takes the jobs waiting at a moment (up to `MAX_BATCH` commands; a
/// larger job goes alone, a job that does not fit waits for the next
/// batch) and proposes them as one entry, `IN_FLIGHT` entries at a time.
async fn batcher(proposer: Proposer, mut rx: mpsc::Receiver<Job>) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    let mut carry: Option<Job> = None;
    loop {
        let first = match carry.take() {
            Some(j) => j,
            None => match rx.recv().await {
                Some(j) => j,
                None => return,
            },
        };
        let mut n = first.cmds.len();
        let mut jobs = vec![first];
        while n < MAX_BATCH {
            match rx.try_recv() {
                Ok(j) if n + j.cmds.len() > MAX_BATCH => {
                    carry = Some(j);
                    break;
                }
                Ok(j) => {
                    n += j.cmds.len();
                    jobs.push(j);
                }
                Err(_) => break,
            }
        }
        let Ok(permit) = slots.clone().acquire_owned().await else { return };
        let p = proposer.clone();
        tokio::spawn(async move {
            propose_jobs(&p, jobs).await;
            drop(permit);
        });
    }
}

async fn propose_jobs(p: &Proposer, jobs: Vec<Job>) {
    let sizes: Vec<usize> = jobs.iter().map(|j| j.cmds.len()).collect();
    let (commands, replies): (Vec<Vec<Command>>, Vec<_>) =
        jobs.into_iter().map(|j| (j.cmds, j.reply)).unzip();
    let outcome = match p.propose_applied(commands.into_iter().flatten().collect(), 0).await {
        Ok((results, index, by)) if p.wait_applied(index, p.timeout).await => Ok((results, index, by)),
        Ok((_, index, _)) => {
            Err(WriteError::Failed(format!("entry {index} committed but not applied here in time")))
        }
        Err(e) => Err(e),
    };
    match outcome {
        Ok((results, index, by)) => {
            let mut results = results.into_iter();
            for (reply, size) in replies.into_iter().zip(sizes) {
                let _ = reply.send(Ok((results.by_ref().take(size).collect(), index, by)));
            }
        }
        Err(e) => {
            for reply in replies {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}
