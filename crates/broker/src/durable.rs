//! `DurableIo`: this node's side of the durable queues (replicated/queue.rs).
//!
//! Two tasks, each committing through the state port in order, one group
//! at a time:
//! - the enqueue task takes the `Command::Enqueue`s of PUBLISHes that
//!   matched persistent sessions (up to `GROUP` waiting at a moment), and
//!   commits them as one entry; each publisher's acknowledgement waits for
//!   its message's outcome. One group at a time keeps every publisher's
//!   messages in the order they arrived.
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

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::ids::ClientId;
use crate::metrics::Metrics;
use crate::port::{PortError, StatePort};
use crate::replicated::{Command, CommandResult};

const ENQUEUE_QUEUE: usize = 65_536;
const GROUP: usize = 1024;
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
    Trim(ClientId, u64),
    Release(ClientId, u64),
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

    /// The subscriber is done with durable message `seq` (PUBACK, PUBCOMP,
    /// or it expired unsent).
    pub fn trim(&self, client: &ClientId, seq: u64) {
        if self.acks_tx.try_send(AckOp::Trim(client.clone(), seq)).is_err() {
            self.metrics.durable_acks_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The subscriber answered PUBREC for durable QoS 2 message `seq`.
    pub fn release(&self, client: &ClientId, seq: u64) {
        if self.acks_tx.try_send(AckOp::Release(client.clone(), seq)).is_err() {
            self.metrics.durable_acks_dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

async fn enqueue_loop(port: Arc<dyn StatePort>, mut rx: mpsc::Receiver<EnqueueJob>) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) => break,
            }
        }
        let (cmds, replies): (Vec<Command>, Vec<oneshot::Sender<Stored>>) =
            jobs.into_iter().map(|j| (j.cmd, j.reply)).unzip();
        match port.commit_all(cmds).await {
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
}

/// Per session: sequences to trim and to release, in arrival order.
type AckBatch = BTreeMap<ClientId, (Vec<u64>, Vec<u64>)>;

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
        for (client, (trims, releases)) in &pending {
            if !releases.is_empty() {
                cmds.push(Command::MarkReleased { client: client.clone(), seqs: releases.clone() });
            }
            if !trims.is_empty() {
                cmds.push(Command::Trim { client: client.clone(), seqs: trims.clone() });
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
        AckOp::Trim(c, seq) => batch.entry(c).or_default().0.push(seq),
        AckOp::Release(c, seq) => batch.entry(c).or_default().1.push(seq),
    }
}
