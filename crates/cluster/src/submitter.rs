//! `Submitter`: a follower's durable-queue groups to the leader, in order,
//! several in flight.
//!
//! A forwarded write (`Writer`) is one RPC per batch, and two RPCs in
//! flight may reach the leader in either order, so a follower could only
//! forward one durable group at a time. The submitter keeps one `Submit`
//! stream open to the leader and sends each group on it as it comes; the
//! leader hands them to its Raft core in stream order (the log keeps the
//! order they were submitted in) and answers in that order. Up to `WINDOW`
//! groups are unanswered on the stream.
//!
//! A group is answered once committed (applied on the leader): the
//! durable promise is a majority, not this node. When the stream breaks,
//! an answer is an error, or leadership moves, every group still
//! unanswered gets `PortError::Unknown` (it may be committed) and the next
//! group opens a new stream to whichever node leads then. A leader that
//! does not know the `Submit` RPC (an older version, during a rolling
//! upgrade) gets forwarded writes instead, one group at a time.
//!
//! Bounds: `QUEUE` groups may wait for the stream (callers then wait for
//! room), `WINDOW` are in flight on it; opening the stream and each
//! answer wait at most the write timeout (`cluster.write_timeout_ms`),
//! after which the stream is abandoned as if broken.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use starling_broker::port::PortError;
use starling_broker::replicated::{Command, CommandResult};
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::Code;

use crate::error::PeerError;
use crate::pb::peer::{SubmitRequest, SubmitResponse};
use crate::status::PeerStats;
use crate::storage::FORMAT_VERSION;
use crate::types::NodeId;
use crate::writer::{Proposer, Writer};

const QUEUE: usize = 64;
/// Groups sent on the stream and not answered yet.
const WINDOW: usize = 8;

type Outcome = Result<Vec<CommandResult>, PortError>;

struct Job {
    cmds: Vec<Command>,
    reply: oneshot::Sender<Outcome>,
}

#[derive(Clone)]
pub struct Submitter {
    tx: mpsc::Sender<Job>,
}

impl Submitter {
    /// Counts what it sends in `stats` (`submit_streamed`,
    /// `submit_forwarded`).
    pub fn start(proposer: Proposer, writer: Writer, stats: Arc<PeerStats>) -> Submitter {
        let (tx, rx) = mpsc::channel(QUEUE);
        tokio::spawn(run(proposer, writer, rx, stats));
        Submitter { tx }
    }

    /// Queues `cmds` (one entry) behind the groups submitted before; the
    /// returned receiver has their results once committed.
    pub async fn submit(&self, cmds: Vec<Command>) -> oneshot::Receiver<Outcome> {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.tx.send(Job { cmds, reply }).await {
            let _ = e.0.reply.send(Err(PortError::Unavailable("node stopping".into())));
        }
        rx
    }
}

/// The leader and its gRPC address, waiting up to the write timeout for
/// one to be known.
async fn leader(p: &Proposer) -> Option<(NodeId, String)> {
    let until = Instant::now() + p.timeout;
    loop {
        let leader = p.raft.metrics().borrow().current_leader;
        let found = leader.and_then(|l| p.member_addr(l).map(|addr| (l, addr)));
        if found.is_some() || Instant::now() >= until {
            return found;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

async fn run(p: Proposer, writer: Writer, mut rx: mpsc::Receiver<Job>, stats: Arc<PeerStats>) {
    while let Some(job) = rx.recv().await {
        let Some((leader_id, addr)) = leader(&p).await else {
            let _ = job.reply.send(Err(PortError::Unavailable(format!("no leader within {:?}", p.timeout))));
            continue;
        };
        let (out, out_rx) = mpsc::channel(WINDOW);
        let mut link = Link { p: &p, out, seq: 0, waiting: VecDeque::new(), stats: &stats };
        link.send(job);
        let opened = tokio::time::timeout(p.timeout, p.peers.open_submit(&addr, ReceiverStream::new(out_rx)));
        let inbound = match opened.await {
            Ok(Ok(s)) => s,
            Ok(Err(PeerError::Refused { code: Code::Unimplemented, .. })) => {
                // An older leader: forwarded writes, one group at a time,
                // until leadership moves.
                tracing::debug!(leader = %leader_id, "leader has no Submit stream; forwarding writes");
                let first = link.waiting.pop_front().map(|(_, _, j)| j);
                forward_writes(&p, &writer, leader_id, first, &mut rx, &stats).await;
                continue;
            }
            Ok(Err(e)) => {
                // The first group may have gone out before the call failed.
                link.fail(|| {
                    PortError::Unknown(format!("submit stream to leader {leader_id} not opened: {e}"))
                });
                continue;
            }
            Err(_) => {
                link.fail(|| {
                    PortError::Unknown(format!(
                        "submit stream to leader {leader_id} not opened within {:?}",
                        p.timeout
                    ))
                });
                continue;
            }
        };
        link.serve(leader_id, inbound, &mut rx).await;
    }
}

/// One stream to one leader.
struct Link<'a> {
    p: &'a Proposer,
    out: mpsc::Sender<SubmitRequest>,
    seq: u64,
    /// Sent and unanswered, oldest first, with their sequence numbers and
    /// when they were sent.
    waiting: VecDeque<(u64, Instant, Job)>,
    stats: &'a PeerStats,
}

impl Link<'_> {
    fn send(&mut self, job: Job) {
        let commands = match bincode::serialize(&job.cmds) {
            Ok(c) => c,
            Err(e) => {
                let _ = job.reply.send(Err(PortError::Unavailable(format!("commands not encoded: {e}"))));
                return;
            }
        };
        self.seq += 1;
        let req = SubmitRequest {
            cluster_id: self.p.peers.cluster_id().get().to_string(),
            format: FORMAT_VERSION,
            seq: self.seq,
            commands: commands.into(),
            group: self.p.group.wire(),
        };
        // Room is certain: at most `WINDOW` are unanswered. A closed
        // stream fails the job below with the others.
        let _ = self.out.try_send(req);
        self.waiting.push_back((self.seq, Instant::now(), job));
    }

    fn fail(&mut self, error: impl Fn() -> PortError) {
        for (_, _, job) in self.waiting.drain(..) {
            let _ = job.reply.send(Err(error()));
        }
    }

    /// Sends jobs and answers them until the stream fails, leadership
    /// moves or the oldest unanswered job waited the write timeout; then
    /// every unanswered job is failed as of unknown outcome.
    async fn serve(
        mut self,
        leader: NodeId,
        mut inbound: tonic::Streaming<SubmitResponse>,
        rx: &mut mpsc::Receiver<Job>,
    ) {
        let moved = self.p.leader_moves_from(leader);
        tokio::pin!(moved);
        let why = loop {
            let overdue = self.waiting.front().map(|(_, sent, _)| *sent + self.p.timeout);
            tokio::select! {
                biased;
                r = inbound.message() => match r {
                    Ok(Some(resp)) => {
                        if let Err(why) = self.answer(resp) {
                            break why;
                        }
                    }
                    Ok(None) => break "the leader closed the submit stream".to_string(),
                    Err(e) => break format!("submit stream to leader {leader} broke: {}", e.message()),
                },
                () = &mut moved => break format!("leadership moved from {leader}"),
                () = until(overdue) => {
                    break format!("no answer from leader {leader} within {:?}", self.p.timeout)
                }
                job = rx.recv(), if self.waiting.len() < WINDOW => match job {
                    Some(job) => self.send(job),
                    None => break "node stopping".to_string(),
                },
            }
        };
        if !self.waiting.is_empty() {
            tracing::debug!(%leader, unanswered = self.waiting.len(), reason = %why, "submit stream ended");
        }
        self.fail(|| PortError::Unknown(format!("{why}; the durable messages may be stored")));
    }

    /// Answers the oldest job; an error for the stream as a whole.
    fn answer(&mut self, resp: SubmitResponse) -> Result<(), String> {
        let Some((seq, _, job)) = self.waiting.pop_front() else {
            return Err(format!("an answer ({}) to no request", resp.seq));
        };
        if resp.seq != seq {
            let e = format!("answer {} out of order (expected {seq})", resp.seq);
            let _ = job.reply.send(Err(PortError::Unknown(e.clone())));
            return Err(e);
        }
        if !resp.error.is_empty() {
            let _ = job.reply.send(Err(PortError::Unknown(resp.error.clone())));
            return Err(resp.error);
        }
        match bincode::deserialize::<Vec<CommandResult>>(&resp.results) {
            Ok(results) if results.len() == job.cmds.len() => {
                self.stats.submit_streamed.fetch_add(1, Ordering::Relaxed);
                let _ = job.reply.send(Ok(results));
                Ok(())
            }
            other => {
                let e = match other {
                    Ok(r) => format!("{} results for {} commands", r.len(), job.cmds.len()),
                    Err(e) => format!("corrupt results: {e}"),
                };
                let _ = job.reply.send(Err(PortError::Unknown(e.clone())));
                Err(e)
            }
        }
    }
}

/// Completes at `deadline`; never without one.
async fn until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Forwarded writes to a leader without the `Submit` RPC, one group at a
/// time (so in order), until leadership moves or no group is waiting.
async fn forward_writes(
    p: &Proposer,
    writer: &Writer,
    leader: NodeId,
    first: Option<Job>,
    rx: &mut mpsc::Receiver<Job>,
    stats: &PeerStats,
) {
    let mut next = first;
    while let Some(job) = next.take() {
        stats.submit_forwarded.fetch_add(1, Ordering::Relaxed);
        let r = writer
            .write_all(job.cmds)
            .await
            .map(|(r, _, _)| r)
            .map_err(|e| PortError::Unknown(e.to_string()));
        let _ = job.reply.send(r);
        let still = p.raft.metrics().borrow().current_leader == Some(leader);
        if still {
            next = rx.try_recv().ok();
        }
    }
}
