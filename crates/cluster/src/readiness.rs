//! Whether this node takes clients: it knows a leader and heard from it
//! recently (or, leading, a quorum acknowledged it recently), it has applied
//! what the leader had committed when contact was (re)established (a node
//! back from a partition routes with the subscriptions made meanwhile), it
//! finished its startup reset, and it is not draining. The port refuses CONNECT,
//! SUBSCRIBE and the rest while not ready; `/health/ready` reports it, so
//! the load balancer moves clients away from a node cut off from the
//! majority.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::types::Raft;

#[derive(Default)]
struct Contact {
    /// When the leader last reached this node (AppendEntries, snapshot).
    at: Option<Instant>,
    /// The leader's commit index in its first AppendEntries after contact
    /// was (re)established: applied up to it, the node is caught up.
    target: Option<u64>,
    caught_up: bool,
}

pub struct Readiness {
    raft: Raft,
    /// How recent the leader's (or the quorum's) last word must be.
    fresh: Duration,
    leader_contact: Mutex<Contact>,
    draining: AtomicBool,
    reset_done: AtomicBool,
    /// The replicated state has this node declared down: the others drop
    /// what they would forward to it, so it takes no clients until the
    /// leader declares it alive again.
    declared_down: AtomicBool,
    /// A member said this node was removed from the cluster
    /// (`Liveness::until_removed`): it takes no clients until stopped.
    removed: AtomicBool,
    /// `leader_word`'s last answer and when it was taken (nanoseconds
    /// after `born`; 0: never).
    in_contact: AtomicBool,
    checked_at: AtomicU64,
    born: Instant,
}

/// How long `is_ready` reuses its reading of the leader's word.
const RECHECK: Duration = Duration::from_millis(1);

impl Readiness {
    pub fn new(raft: Raft, fresh: Duration) -> Readiness {
        Readiness {
            raft,
            fresh,
            leader_contact: Mutex::new(Contact::default()),
            draining: AtomicBool::new(false),
            reset_done: AtomicBool::new(false),
            declared_down: AtomicBool::new(false),
            removed: AtomicBool::new(false),
            in_contact: AtomicBool::new(false),
            checked_at: AtomicU64::new(0),
            born: Instant::now(),
        }
    }

    /// The leader just reached this node; `leader_commit` is the commit
    /// index it announced (AppendEntries).
    pub fn leader_contact(&self, leader_commit: Option<u64>) {
        let mut c = self.leader_contact.lock();
        if c.at.is_none_or(|t| t.elapsed() >= self.fresh) {
            // Contact was lost (or never there): catch up again.
            c.caught_up = false;
            c.target = None;
        }
        if !c.caught_up && c.target.is_none() {
            c.target = leader_commit;
        }
        c.at = Some(Instant::now());
    }

    /// The startup reset committed: this node's old connections are
    /// accounted for.
    pub fn reset_done(&self) {
        self.reset_done.store(true, Ordering::Relaxed);
    }

    /// Stop taking clients (leave).
    pub fn drain(&self) {
        self.draining.store(true, Ordering::Relaxed);
    }

    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::Relaxed)
    }

    /// Follows the replicated liveness of this node.
    pub fn set_declared_down(&self, down: bool) {
        self.declared_down.store(down, Ordering::Relaxed);
    }

    /// This node is no longer a member (for good: until stopped).
    pub fn set_removed(&self) {
        self.removed.store(true, Ordering::Relaxed);
    }

    pub fn is_removed(&self) -> bool {
        self.removed.load(Ordering::Relaxed)
    }

    /// Whether a leader reached this node within the freshness window
    /// (ready or still catching up).
    pub fn leader_heard_recently(&self) -> bool {
        self.leader_contact.lock().at.is_some_and(|t| t.elapsed() < self.fresh)
    }

    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed)
            || self.removed.load(Ordering::Relaxed)
            || !self.reset_done.load(Ordering::Relaxed)
            || self.declared_down.load(Ordering::Relaxed)
        {
            return false;
        }
        // This runs for every QoS 1/2 PUBLISH: the leader's word is read
        // from openraft's metrics (a lock its core takes for every update)
        // at most once per `RECHECK`.
        let now = self.born.elapsed().as_nanos() as u64;
        let last = self.checked_at.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < RECHECK.as_nanos() as u64 {
            return self.in_contact.load(Ordering::Relaxed);
        }
        let ready = self.leader_word();
        self.in_contact.store(ready, Ordering::Relaxed);
        self.checked_at.store(now.max(1), Ordering::Relaxed);
        ready
    }

    /// Whether this node heard from the leader (or, leading, from a
    /// quorum) recently enough, and caught up with it.
    fn leader_word(&self) -> bool {
        let rx = self.raft.metrics();
        let m = rx.borrow();
        match m.current_leader {
            Some(l) if l == m.id => {
                // A single voter has no one to ack; it is its own quorum.
                let voters = m.membership_config.membership().voter_ids().count();
                voters == 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms < self.fresh.as_millis() as u64)
            }
            Some(_) => {
                let mut c = self.leader_contact.lock();
                if c.at.is_none_or(|t| t.elapsed() >= self.fresh) {
                    return false;
                }
                if !c.caught_up {
                    let applied = m.last_applied.map_or(0, |l| l.index);
                    match c.target {
                        Some(t) if applied >= t => c.caught_up = true,
                        _ => return false,
                    }
                }
                true
            }
            None => false,
        }
    }
}
