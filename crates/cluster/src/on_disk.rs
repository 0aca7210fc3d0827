//! How far a Raft group's log is on this node's disk (`LogOnDisk`), so that
//! the leader can write its log while it replicates it.
//!
//! openraft 0.9 replicates a leader's new entries only once its own append
//! reported them stored: its core waits for the append's callback. With the
//! callback after the fsync, every round was the leader's fsync, *then* the
//! followers' AppendEntries and fsyncs (measured: a quarter of a millisecond
//! idle, up to two under durable load, between the leader's write and the
//! AppendEntries leaving). Raft lets the leader write its log in parallel
//! with replicating it, provided its own copy counts toward a majority
//! only once it is durable (Ongaro's dissertation, 10.2.1). Here:
//!
//! - a leader's append (`LogStore::append`: entries of this node's own
//!   term while it leads) reports them stored as soon as they are written,
//!   so openraft replicates at once and may count its copy when it commits;
//! - what that count stands for is restored before anyone acts on the
//!   commit: no state machine applies an entry before it is on its own
//!   node's disk (`wait`; on a follower it always is, since a follower
//!   answers only after its fsync), and the commit index a leader sends
//!   never passes its own log on disk (`clamp`, network.rs). So when an
//!   entry is applied anywhere (a client answered, a message delivered), the
//!   leader and the followers openraft counted hold it on disk: a majority.
//!
//! An entry the leader committed but lost in a crash of its machine before
//! its fsync was applied nowhere and acknowledged to no one; a new leader
//! may or may not have it, as with any entry not yet committed. A failed
//! fsync of a leader's append (whose callback already went) marks the log
//! failed: `wait` then fails, the state machine returns a storage error
//! and the Raft core stops (fail-stop, as when a follower's fsync fails).

use tokio::sync::watch;

use crate::types::LogId;

#[derive(Debug, Clone, Copy, Default)]
struct Durable {
    /// The last entry on disk (every one before it is too).
    last: Option<LogId>,
    /// Incremented by each truncation: a sync of entries written before
    /// one says nothing about the entries written since.
    epoch: u64,
    /// An fsync of the log failed.
    failed: bool,
}

pub struct LogOnDisk {
    durable: watch::Sender<Durable>,
}

impl LogOnDisk {
    /// A log whose entries up to `last` are on disk.
    pub fn new(last: Option<LogId>) -> LogOnDisk {
        LogOnDisk { durable: watch::Sender::new(Durable { last, epoch: 0, failed: false }) }
    }

    /// The log as opened: entries up to `last` are on disk.
    pub fn synced_at_open(&self, last: Option<LogId>) {
        self.durable.send_modify(|d| d.last = last);
    }

    /// The current truncation epoch, for entries appended now.
    pub fn epoch(&self) -> u64 {
        self.durable.borrow().epoch
    }

    /// Entries up to `last`, appended in `epoch`, are on disk.
    pub fn synced(&self, last: LogId, epoch: u64) {
        self.durable.send_if_modified(|d| {
            let later = d.last.is_none_or(|l| l.index < last.index);
            if d.epoch == epoch && later {
                d.last = Some(last);
                return true;
            }
            false
        });
    }

    /// The log was cut back to end at `last` (entries after it deleted).
    pub fn truncated(&self, last: Option<LogId>) {
        self.durable.send_modify(|d| {
            d.epoch += 1;
            if d.last.map(|l| l.index) > last.map(|l| l.index) {
                d.last = last;
            }
        });
    }

    /// An fsync failed: nothing more counts as on disk.
    pub fn failed(&self) {
        self.durable.send_modify(|d| d.failed = true);
    }

    /// Waits until entry `index` is on disk; `false` when the log failed.
    pub async fn wait(&self, index: u64) -> bool {
        let mut rx = self.durable.subscribe();
        let ok = match rx.wait_for(|d| d.failed || d.last.is_some_and(|l| l.index >= index)).await {
            Ok(d) => !d.failed,
            Err(_) => false,
        };
        ok
    }

    /// `commit`, or the last entry on disk when that is earlier: the commit
    /// index a leader may tell its followers.
    pub fn clamp(&self, commit: Option<LogId>) -> Option<LogId> {
        let last = self.durable.borrow().last;
        match (commit, last) {
            (Some(c), Some(l)) if l.index < c.index => Some(l),
            (Some(_), None) => None,
            (c, _) => c,
        }
    }

    /// Whether entry `index` is on disk.
    pub fn holds(&self, index: u64) -> bool {
        self.durable.borrow().last.is_some_and(|l| l.index >= index)
    }
}

#[cfg(test)]
mod tests {
    use openraft::CommittedLeaderId;

    use super::*;

    fn id(index: u64) -> LogId {
        LogId::new(CommittedLeaderId::new(1, starling_broker::ids::NodeId(1)), index)
    }

    #[test]
    fn a_sync_from_before_a_truncation_does_not_count() {
        let log = LogOnDisk::new(Some(id(10)));
        let before = log.epoch();
        log.truncated(Some(id(7)));
        assert!(!log.holds(8));
        // The flusher reports a sync of entries written before the cut.
        log.synced(id(12), before);
        assert!(!log.holds(8), "entries 8.. were rewritten since and are not synced");
        log.synced(id(9), log.epoch());
        assert!(log.holds(9));
        assert!(!log.holds(10));
    }

    #[test]
    fn the_commit_told_to_followers_never_passes_the_log_on_disk() {
        let log = LogOnDisk::new(None);
        assert_eq!(log.clamp(Some(id(3))), None);
        assert_eq!(log.clamp(None), None);
        log.synced(id(5), log.epoch());
        assert_eq!(log.clamp(Some(id(3))), Some(id(3)));
        assert_eq!(log.clamp(Some(id(9))), Some(id(5)));
    }

    #[tokio::test]
    async fn waiting_ends_when_the_entry_is_on_disk_or_the_log_failed() {
        let log = std::sync::Arc::new(LogOnDisk::new(Some(id(1))));
        assert!(log.wait(1).await);
        let waiter = tokio::spawn({
            let log = log.clone();
            async move { log.wait(4).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished());
        log.synced(id(4), log.epoch());
        assert!(waiter.await.unwrap());
        let failing = tokio::spawn({
            let log = log.clone();
            async move { log.wait(9).await }
        });
        log.failed();
        assert!(!failing.await.unwrap(), "a failed log ends the wait with false");
    }
}
