//! `DurableIo`: this node's side of the durable queues (replicated/queue.rs).
//!
//! Two tasks, each committing through the state port in order:
//! - the enqueue task takes the `Command::Enqueue`s of PUBLISHes that
//!   matched persistent sessions (up to `GROUP` waiting at a moment), and
//!   hands them to the log as one entry (`StatePort::submit_all`); each
//!   publisher's acknowledgement waits for its message's outcome. Groups
//!   are handed over in the order their messages arrived and the port
//!   commits them in that order, which keeps every publisher's messages in
//!   order; up to `PIPELINE` groups are in flight (measured, durable QoS 1
//!   with one publisher on the three-node bench: about 1.3× the rate of
//!   one group at a time on the leader, 1.4–1.6× through a follower,
//!   docs/bench/notes.md).
//! - the acknowledgement task turns subscribers' PUBACK/PUBCOMP (trim) and
//!   PUBREC (release) into `Trim` / `MarkReleased` commands, batched per
//!   session. Trims linger up to `TRIM_LINGER` for company (a release
//!   ends the wait at once, since the PUBREL waits for it): fewer, larger
//!   entries leave the log to the enqueues (measured: durable QoS 1 one
//!   pair 62–70k → 80k/s, four pairs 37k → 75–99k/s on the three-node
//!   bench). The cost: a message acknowledged in the last 20 ms before its
//!   owner dies is sent again (with DUP) after the failover.
//!
//! Bounds: `ENQUEUE_QUEUE` messages may wait to be committed (a PUBLISH
//! arriving when it is full is refused like one over the quota: 0x97 for
//! MQTT 5, dropped and counted for 3.x); `ACK_QUEUE` acknowledgements may
//! wait (when full, a trim is dropped and counted — the message is then
//! resent once more after a failover; a release is retried by the client's
//! next PUBREC).

use std::collections::{BTreeMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ids::{ClientId, Incarnation};
use crate::metrics::Metrics;
use crate::port::{PendingCommit, PortError, StatePort};
use crate::replicated::{Command, CommandResult};
use crate::session::Session;

const ENQUEUE_QUEUE: usize = 65_536;
const GROUP: usize = 1024;
/// Groups handed to the log and not answered yet.
const PIPELINE: usize = 4;
const ACK_QUEUE: usize = 262_144;
const ACK_GROUP: usize = 4096;
const RETRY: Duration = Duration::from_millis(200);
const TRIM_LINGER: Duration = Duration::from_millis(20);

/// What became of a durable message, for its publisher's acknowledgement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stored {
    /// In the durable queues of a majority (or of no session: none
    /// matched any more).
    Yes,
    /// The durable queues are full (byte quota or this node's waiting
    /// line): MQTT 5 publishers get 0x97.
    QuotaExceeded,
    /// Not committed (no quorum): not acknowledged as stored.
    Unavailable,
    /// Handed to the replicated log without a known outcome (a timeout, a
    /// leader change): it may be stored.
    Unknown,
}

pub type StoredWaiter = oneshot::Receiver<Stored>;

struct EnqueueJob {
    cmd: Command,
    reply: oneshot::Sender<Stored>,
}

enum AckOp {
    Trim(ClientId, Incarnation, u64),
    Release(ClientId, Incarnation, u64),
}

#[derive(Debug, Clone)]
pub struct DurableIo {
    enqueue_tx: mpsc::Sender<EnqueueJob>,
    acks_tx: mpsc::Sender<AckOp>,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for EnqueueJob {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("EnqueueJob")
    }
}

impl std::fmt::Debug for AckOp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AckOp")
    }
}

impl DurableIo {
    /// Starts the two tasks on the current runtime (without one, every
    /// durable message is answered `Unavailable`).
    pub fn start(port: Arc<dyn StatePort>, metrics: Arc<Metrics>) -> DurableIo {
        let (enqueue_tx, enqueue_rx) = mpsc::channel(ENQUEUE_QUEUE);
        let (acks_tx, acks_rx) = mpsc::channel(ACK_QUEUE);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(enqueue_loop(port.clone(), enqueue_rx));
            rt.spawn(ack_loop(port, acks_rx, metrics.clone()));
        }
        DurableIo { enqueue_tx, acks_tx, metrics }
    }

    /// Commits `cmd` (an `Enqueue`) in order with the others; the waiter
    /// tells the publisher's acknowledgement what became of it.
    pub fn enqueue(&self, cmd: Command) -> StoredWaiter {
        let (reply, rx) = oneshot::channel();
        if let Err(e) = self.enqueue_tx.try_send(EnqueueJob { cmd, reply }) {
            // Counted where the publisher's acknowledgement is decided.
            let job = match e {
                mpsc::error::TrySendError::Full(j) => (j, Stored::QuotaExceeded),
                mpsc::error::TrySendError::Closed(j) => (j, Stored::Unavailable),
            };
            let _ = job.0.reply.send(job.1);
        }
        rx
    }

    /// The subscriber of `session` is done with durable message `seq`
    /// (PUBACK, PUBCOMP, or it expired unsent).
    pub fn trim(&self, session: &Session, seq: u64) {
        let Some(life) = session.durable() else { return };
        if self.acks_tx.try_send(AckOp::Trim(session.client_id().clone(), life, seq)).is_err() {
            self.metrics.durable_acks_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The subscriber of `session` answered PUBREC for durable QoS 2
    /// message `seq`.
    pub fn release(&self, session: &Session, seq: u64) {
        let Some(life) = session.durable() else { return };
        if self.acks_tx.try_send(AckOp::Release(session.client_id().clone(), life, seq)).is_err() {
            self.metrics.durable_acks_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn enqueue_loop(port: Arc<dyn StatePort>, mut rx: mpsc::Receiver<EnqueueJob>) {
    // Groups handed to the log, oldest first, with their publishers'
    // waiters. They complete in the order they were handed over.
    let mut inflight: VecDeque<(PendingCommit, Vec<oneshot::Sender<Stored>>)> = VecDeque::new();
    loop {
        let first = if inflight.len() >= PIPELINE {
            None
        } else if let Some((oldest, _)) = inflight.front_mut() {
            // Answer the oldest group as soon as it is done; meanwhile take
            // new messages into the next group.
            tokio::select! {
                biased;
                r = oldest => {
                    if let Some((_, replies)) = inflight.pop_front() {
                        answer(replies, r);
                    }
                    continue;
                }
                j = rx.recv() => j,
            }
        } else {
            match rx.recv().await {
                Some(j) => Some(j),
                None => return,
            }
        };
        let Some(first) = first else {
            // Full pipeline, or the channel closed: wait for the oldest.
            match inflight.pop_front() {
                Some((pending, replies)) => answer(replies, pending.await),
                None => return,
            }
            continue;
        };
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Stored>>) =
            jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
        inflight.push_back((port.submit_all(cmds).await, replies));
    }
}

fn answer(replies: Vec<oneshot::Sender<Stored>>, outcome: Result<Vec<CommandResult>, PortError>) {
    match outcome {
        Ok(results) => {
            for (reply, r) in replies.into_iter().zip(results) {
                let outcome = match r {
                    CommandResult::Enqueued { refused: true, .. } => Stored::QuotaExceeded,
                    _ => Stored::Yes,
                };
                let _ = reply.send(outcome);
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "durable messages not committed");
            let outcome =
                if matches!(e, PortError::Unknown(_)) { Stored::Unknown } else { Stored::Unavailable };
            for reply in replies {
                let _ = reply.send(outcome);
            }
        }
    }
}

/// Per session life: sequences to trim and to release, in arrival order.
type AckBatch = BTreeMap<(ClientId, Incarnation), (Vec<u64>, Vec<u64>)>;

async fn ack_loop(port: Arc<dyn StatePort>, mut rx: mpsc::Receiver<AckOp>, metrics: Arc<Metrics>) {
    let mut pending: AckBatch = BTreeMap::new();
    let mut held = 0usize;
    loop {
        if pending.is_empty() {
            match rx.recv().await {
                Some(op) => add(&mut pending, op),
                None => return,
            }
            held = 1;
            // Trims wait a little for company (fewer, larger entries);
            // a release ends the wait, a PUBREL waits for it.
            let until = tokio::time::Instant::now() + TRIM_LINGER;
            while held < ACK_GROUP && !has_release(&pending) {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(op)) => add(&mut pending, op),
                    Ok(None) | Err(_) => break,
                }
                held += 1;
            }
        }
        // While commits fail, at most `ACK_GROUP` acknowledgements are held
        // here; the rest wait in the (bounded) channel.
        while held < ACK_GROUP {
            match rx.try_recv() {
                Ok(op) => add(&mut pending, op),
                Err(_) => break,
            }
            held += 1;
        }
        let mut cmds = Vec::new();
        for ((client, incarnation), (trims, releases)) in &pending {
            let (client, incarnation) = (client.clone(), *incarnation);
            if !releases.is_empty() {
                cmds.push(Command::MarkReleased {
                    client: client.clone(),
                    incarnation,
                    seqs: releases.clone(),
                });
            }
            if !trims.is_empty() {
                cmds.push(Command::Trim { client, incarnation, seqs: trims.clone() });
            }
        }
        match port.commit_all(cmds).await {
            Ok(_) => {
                pending.clear();
                held = 0;
            }
            Err(e) => {
                // Kept and retried.
                tracing::debug!(error = %e, "durable acknowledgements not committed; retrying");
                metrics.durable_ack_retries.fetch_add(1, Ordering::Relaxed);
                tokio::time::sleep(RETRY).await;
            }
        }
    }
}

fn has_release(batch: &AckBatch) -> bool {
    batch.values().any(|(_, releases)| !releases.is_empty())
}

fn add(batch: &mut AckBatch, op: AckOp) {
    match op {
        AckOp::Trim(c, life, seq) => batch.entry((c, life)).or_default().0.push(seq),
        AckOp::Release(c, life, seq) => batch.entry((c, life)).or_default().1.push(seq),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use async_trait::async_trait;
    use parking_lot::Mutex;
    use tokio::sync::oneshot;

    use bytes::Bytes;
    use starling_codec::QoS;

    use super::*;
    use crate::port::PendingCommit;
    use crate::replicated::{QueueLimits, ReplicatedState, StoredMessage};

    type Outcome = Result<Vec<CommandResult>, PortError>;

    /// A port that records the groups handed to it and completes each one
    /// when the test says so.
    #[derive(Default)]
    struct HeldPort {
        /// Per group handed over: its size and how to complete it.
        groups: Mutex<Vec<(usize, oneshot::Sender<Outcome>)>>,
    }

    #[async_trait]
    impl StatePort for HeldPort {
        async fn commit(&self, _: Command) -> Result<CommandResult, PortError> {
            Err(PortError::Unavailable("not used".into()))
        }
        async fn commit_all(&self, _: Vec<Command>) -> Result<Vec<CommandResult>, PortError> {
            Err(PortError::Unavailable("not used".into()))
        }
        async fn submit_all(&self, cmds: Vec<Command>) -> PendingCommit {
            let (tx, rx) = oneshot::channel();
            self.groups.lock().push((cmds.len(), tx));
            Box::pin(async move { rx.await.unwrap_or_else(|_| Err(PortError::Unknown("dropped".into()))) })
        }
        fn is_ready(&self) -> bool {
            true
        }
        fn read(&self, f: &mut dyn FnMut(&ReplicatedState)) {
            f(&ReplicatedState::default())
        }
    }

    fn message(n: u8) -> Command {
        Command::Enqueue {
            message: Arc::new(StoredMessage {
                topic: "t".into(),
                payload: Bytes::from(vec![n]),
                qos: QoS::AtLeastOnce,
                retain: false,
                properties: Default::default(),
                publisher: None,
                expires_at_ms: None,
            }),
            expires_in_ms: None,
            targets: Vec::new(),
            limits: QueueLimits { per_session: 10, total_bytes: 1 << 20 },
        }
    }

    async fn until(what: &str, f: impl Fn() -> bool) {
        for _ in 0..1000 {
            if f() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        panic!("timed out waiting for {what}");
    }

    fn sizes(port: &HeldPort) -> Vec<usize> {
        port.groups.lock().iter().map(|(n, _)| *n).collect()
    }

    fn complete(port: &HeldPort, group: usize, outcome: Outcome) {
        let (_, tx) = std::mem::replace(&mut port.groups.lock()[group], (0, oneshot::channel().0));
        tx.send(outcome).unwrap();
    }

    #[tokio::test]
    async fn groups_go_to_the_log_in_arrival_order_without_waiting_for_the_one_before() {
        let port = Arc::new(HeldPort::default());
        let io = DurableIo::start(port.clone(), Arc::new(Metrics::default()));
        let w1 = io.enqueue(message(1));
        until("the first group", || sizes(&port).len() == 1).await;
        // The first group is not committed yet: the next ones go out anyway.
        let (w2, w3) = (io.enqueue(message(2)), io.enqueue(message(3)));
        until("the second and third messages", || sizes(&port).iter().sum::<usize>() == 3).await;
        assert_eq!(sizes(&port)[0], 1);
        let refused = CommandResult::Enqueued { stored: 0, refused: true };
        let stored = CommandResult::Enqueued { stored: 1, refused: false };
        let later: Vec<usize> = (1..sizes(&port).len()).collect();
        // Each waiter gets the outcome of its own message.
        let results = if later.len() == 1 {
            vec![Ok(vec![refused, stored])]
        } else {
            vec![Ok(vec![refused]), Ok(vec![stored])]
        };
        for (g, r) in later.into_iter().zip(results) {
            complete(&port, g, r);
        }
        complete(&port, 0, Err(PortError::Unknown("leader changed".into())));
        assert_eq!(w1.await.unwrap(), Stored::Unknown);
        assert_eq!(w2.await.unwrap(), Stored::QuotaExceeded);
        assert_eq!(w3.await.unwrap(), Stored::Yes);
    }

    #[tokio::test]
    async fn at_most_pipeline_groups_wait_for_the_log() {
        let port = Arc::new(HeldPort::default());
        let io = DurableIo::start(port.clone(), Arc::new(Metrics::default()));
        let mut waiters = Vec::new();
        for n in 0..PIPELINE {
            waiters.push(io.enqueue(message(n as u8)));
            until("a group per message", || sizes(&port).len() == n + 1).await;
        }
        let _last = io.enqueue(message(99));
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(sizes(&port).len(), PIPELINE, "a full pipeline hands nothing more over");
        complete(&port, 0, Ok(vec![CommandResult::Enqueued { stored: 1, refused: false }]));
        until("the waiting message handed over", || sizes(&port).len() == PIPELINE + 1).await;
        assert_eq!(waiters.remove(0).await.unwrap(), Stored::Yes);
    }
}
