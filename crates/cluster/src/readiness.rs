//! Whether this node takes clients: it knows a leader and heard from it
//! recently (or, leading, a quorum acknowledged it recently), it finished
//! its startup reset, and it is not draining. The port refuses CONNECT,
//! SUBSCRIBE and the rest while not ready; `/health/ready` reports it, so
//! the load balancer moves clients away from a node cut off from the
//! majority.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::types::Raft;

pub struct Readiness {
    raft: Raft,
    /// How recent the leader's (or the quorum's) last word must be.
    fresh: Duration,
    /// When the leader last reached this node (AppendEntries, snapshot).
    leader_contact: Mutex<Option<Instant>>,
    draining: AtomicBool,
    reset_done: AtomicBool,
}

impl Readiness {
    pub fn new(raft: Raft, fresh: Duration) -> Readiness {
        Readiness {
            raft,
            fresh,
            leader_contact: Mutex::new(None),
            draining: AtomicBool::new(false),
            reset_done: AtomicBool::new(false),
        }
    }

    /// The leader just reached this node.
    pub fn leader_contact(&self) {
        *self.leader_contact.lock() = Some(Instant::now());
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

    pub fn is_ready(&self) -> bool {
        if self.draining.load(Ordering::Relaxed) || !self.reset_done.load(Ordering::Relaxed) {
            return false;
        }
        let m = self.raft.metrics().borrow().clone();
        match m.current_leader {
            Some(l) if l == m.id => {
                // A single voter has no one to ack; it is its own quorum.
                let voters = m.membership_config.membership().voter_ids().count();
                voters == 1 || m.millis_since_quorum_ack.is_some_and(|ms| ms < self.fresh.as_millis() as u64)
            }
            Some(_) => self.leader_contact.lock().is_some_and(|t| t.elapsed() < self.fresh),
            None => false,
        }
    }
}
