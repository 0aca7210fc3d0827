//! The Raft log (`RaftLogStorage`): entries in the append-only segment
//! files of `wal.rs`, the vote, commit and purge markers as typed keys in
//! sled's `raft` tree.
//!
//! Appends are written at once and made durable by one flusher thread
//! that groups every append waiting at that moment into one `sync_data`
//! per touched segment (group commit) before completing their callbacks
//! in order: openraft counts an entry as stored only after that — except
//! a leader's own new entries, reported stored once written and synced
//! while they are replicated; nothing acts on them before the sync
//! (on_disk.rs). The vote
//! is fsync'd before `save_vote` returns; the purge marker is fsync'd in
//! the background before any purged segment is deleted (`purge`); it
//! never passes the snapshot on disk (`SnapshotOnDisk`),
//! and opening a log whose marker does (a store damaged otherwise) fails
//! with what is missing.
//!
//! The newest entries are also kept decoded in memory (`Recent`, at most
//! `RECENT_ENTRIES` entries and `RECENT_BYTES` of their encoded size):
//! openraft reads every entry back soon after appending it (the leader
//! once per follower to replicate it, every node to apply it), and
//! decoding it from the file each time was the largest CPU cost of a
//! durable message (measured: about a sixth of the leader's CPU). An entry
//! leaves them once nothing is going to read it soon: applied here and,
//! on the leader, matched by every follower (`Progress`). Kept to the
//! bounds instead, they held the session claims of the last few thousand
//! CONNECTs, about 500 bytes per idle connection (10,000 connections, 200
//! connecting at a time).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use openraft::metrics::RaftDataMetrics;
use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;
use tokio::sync::watch;

use crate::on_disk::LogOnDisk;
use crate::storage::Store;
use crate::types::{Entry, LogId, NodeId, StorageError, TypeConfig, Vote};
use crate::wal::Wal;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// Appends waiting for the flusher. Full means the disk is behind:
/// `append` then waits for room.
const FLUSH_QUEUE: usize = 4096;
/// Bounds of the decoded copies of the newest entries.
const RECENT_ENTRIES: usize = 4096;
const RECENT_BYTES: usize = 32 * 1024 * 1024;
/// Entries forgotten at once beyond this are freed on a blocking thread.
const FORGET_INLINE: usize = 64;

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn vote_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_vote(&e).into()
}

/// Held by a test to keep the flusher from syncing (`None` otherwise).
type FlushGate = Option<Arc<Mutex<()>>>;

/// An append waiting to be made durable.
struct Pending {
    /// openraft's callback; `None` when it was called at once (a leader's
    /// append, see on_disk.rs).
    callback: Option<LogFlushed<TypeConfig>>,
    /// The segment files it wrote to.
    files: Vec<Arc<File>>,
    /// Its last entry, and the truncation epoch it was written in.
    last: LogId,
    epoch: u64,
}

/// Decoded copies of a suffix of the log: the entries appended last, with
/// contiguous indexes (an append that does not follow on restarts it).
#[derive(Default)]
struct Recent {
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl Recent {
    fn first(&self) -> Option<u64> {
        self.entries.front().map(|(e, _)| e.log_id.index)
    }

    fn next(&self) -> Option<u64> {
        self.entries.back().map(|(e, _)| e.log_id.index + 1)
    }

    /// Adds an appended entry of `size` encoded bytes, dropping the oldest
    /// beyond the bounds.
    fn push(&mut self, entry: Entry, size: usize) {
        if self.next().is_some_and(|n| n != entry.log_id.index) {
            self.entries.clear();
            self.bytes = 0;
        }
        self.bytes += size;
        self.entries.push_back((entry, size));
        while self.entries.len() > RECENT_ENTRIES || (self.bytes > RECENT_BYTES && self.entries.len() > 1) {
            if let Some((_, n)) = self.entries.pop_front() {
                self.bytes -= n;
            }
        }
    }

    /// Drops entries from `index` on (a truncated log).
    fn truncate(&mut self, index: u64) {
        while self.next().is_some_and(|n| n > index) {
            if let Some((_, n)) = self.entries.pop_back() {
                self.bytes -= n;
            }
        }
    }

    /// Takes out entries up to `index` (a purged log, or entries nothing
    /// reads soon) and returns them, for the caller to free off the Raft
    /// core: a purge can release thousands of entries, tens of thousands
    /// of messages.
    fn purge(&mut self, index: u64) -> Vec<(Entry, usize)> {
        let n = self.entries.iter().take_while(|(e, _)| e.log_id.index <= index).count();
        let gone: Vec<(Entry, usize)> = self.entries.drain(..n).collect();
        self.bytes -= gone.iter().map(|(_, size)| size).sum::<usize>();
        gone
    }

    /// Copies of entries `start..end` when `start` is held here; the index
    /// after the last one copied.
    fn copy(&self, start: u64, end: u64) -> Option<(Vec<Entry>, u64)> {
        let first = self.first()?;
        let next = self.next()?;
        if start < first || start >= next {
            return None;
        }
        let to = end.min(next);
        let skip = (start - first) as usize;
        let out =
            self.entries.iter().skip(skip).take((to - start) as usize).map(|(e, _)| e.clone()).collect();
        Some((out, to))
    }
}

/// Longest a purge waits for the snapshot from the leader that covers it
/// to be on disk (its data is already in memory: this is the time to write
/// and sync it); then the node stops rather than purge entries nothing else
/// holds.
const PURGE_WAIT: std::time::Duration = std::time::Duration::from_secs(300);

/// How far the group's state machine and, on the leader, every follower
/// are: openraft's data metrics, once the Raft core runs (`follow`).
#[derive(Clone, Default)]
pub struct Progress(Arc<std::sync::OnceLock<watch::Receiver<RaftDataMetrics<NodeId>>>>);

impl Progress {
    /// Reads `metrics` (the group's `Raft::data_metrics()`) from now on.
    pub fn follow(&self, metrics: watch::Receiver<RaftDataMetrics<NodeId>>) {
        let _ = self.0.set(metrics);
    }

    /// The last index nothing is going to read soon: applied here and, on
    /// a leader, matched by every follower. `None` until known.
    fn done(&self) -> Option<u64> {
        let m = self.0.get()?.borrow();
        let applied = m.last_applied?.index;
        let matched = match &m.replication {
            None => applied,
            // A follower that matched nothing yet reads from the start.
            Some(targets) => targets.values().map(|l| l.map(|l| l.index)).min().unwrap_or(Some(applied))?,
        };
        Some(applied.min(matched))
    }
}

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    wal: Arc<Mutex<Wal>>,
    recent: Arc<Mutex<Recent>>,
    /// Which entries `recent` may forget.
    pub progress: Progress,
    flusher: SyncSender<Pending>,
    /// The vote last saved (`append` tells a leader's entries by it).
    vote: Arc<Mutex<Option<Vote>>>,
    /// Held while a purge's sync and segment deletion run (`purge`).
    retiring: Arc<Mutex<()>>,
    /// Last committed index openraft reported, for status and metrics.
    pub committed: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish()
    }
}

/// The group-commit loop: syncs every file the waiting appends touched,
/// once, then records them on disk and completes them in order.
fn flush_loop(rx: Receiver<Pending>, on_disk: Arc<LogOnDisk>, gate: FlushGate) {
    while let Ok(first) = rx.recv() {
        let _gate = gate.as_ref().map(|g| g.lock());
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut files: Vec<&Arc<File>> = Vec::new();
        for p in &batch {
            for f in &p.files {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f);
                }
            }
        }
        let result = files.iter().try_for_each(|f| f.sync_data());
        match &result {
            Ok(()) => batch.iter().for_each(|p| on_disk.synced(p.last, p.epoch)),
            Err(e) => {
                tracing::error!(error = %e, "cannot sync the Raft log");
                on_disk.failed();
            }
        }
        for p in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            if let Some(cb) = p.callback {
                cb.log_io_completed(r);
            }
        }
    }
}

impl LogStore {
    /// Opens the log of `store` (segments in `<data_dir>/raft/log`).
    pub fn open(store: Store) -> Result<LogStore, StorageError> {
        LogStore::open_gated(store, None)
    }

    fn open_gated(store: Store, gate: FlushGate) -> Result<LogStore, StorageError> {
        // Stored as a `LogId` (see `purge`), not an `Option`.
        let purged: Option<LogId> = match store.raft.get(PURGED).map_err(read_err)? {
            Some(v) => Some(bincode::deserialize::<LogId>(&v).map_err(read_err)?),
            None => None,
        };
        // Everything up to the purge point must be in the snapshot
        // (`purge`); otherwise entries are missing for good.
        let snapshot = store.snapshot_on_disk.borrow().last;
        if let Some(p) = purged.filter(|p| snapshot.is_none_or(|s| p.index > s.index)) {
            let ends =
                snapshot.map_or("there is no snapshot".to_string(), |s| format!("the snapshot ends at {s}"));
            return Err(read_err(std::io::Error::other(format!(
                "the Raft log was purged up to {p} but {ends}: the entries between are missing"
            ))));
        }
        let wal =
            Wal::open(&store.dir.join("raft").join("log"), purged.map(|p| p.index)).map_err(read_err)?;
        // What the log holds now is on disk (`Wal::open` synced its tail).
        store.log_on_disk.synced_at_open(last_log_id(&wal)?.or(purged));
        let vote = store.raft.get(VOTE).map_err(read_err)?;
        let vote = vote.map(|v| bincode::deserialize::<Vote>(&v)).transpose().map_err(read_err)?;
        let (tx, rx) = sync_channel::<Pending>(FLUSH_QUEUE);
        let on_disk = store.log_on_disk.clone();
        std::thread::Builder::new()
            .name("starling-log-flush".into())
            .spawn(move || flush_loop(rx, on_disk, gate))
            .map_err(write_err)?;
        Ok(LogStore {
            store,
            wal: Arc::new(Mutex::new(wal)),
            recent: Arc::new(Mutex::new(Recent::default())),
            progress: Progress::default(),
            flusher: tx,
            vote: Arc::new(Mutex::new(vote)),
            retiring: Arc::new(Mutex::new(())),
            committed: Arc::new(AtomicU64::new(0)),
        })
    }

    fn get<T: serde::de::DeserializeOwned>(&self, key: &[u8]) -> Result<Option<T>, StorageError> {
        match self.store.raft.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(bincode::deserialize(&v).map_err(read_err)?)),
            None => Ok(None),
        }
    }

    fn put<T: serde::Serialize>(&self, key: &[u8], v: &T) -> Result<(), StorageError> {
        let bytes = bincode::serialize(v).map_err(write_err)?;
        self.store.raft.insert(key, bytes).map_err(write_err)?;
        Ok(())
    }

    /// Runs a blocking sled fsync off the async threads.
    async fn sync(&self) -> std::io::Result<()> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || s.sync()).await.map_err(std::io::Error::other)?
    }

    /// While a snapshot from the leader is being received or installed,
    /// waits until the snapshot on disk covers `log_id` (`SnapshotOnDisk`).
    async fn snapshot_covering(&self, log_id: LogId) -> Result<(), StorageError> {
        let mut rx = self.store.snapshot_on_disk.subscribe();
        let settled = async move {
            rx.wait_for(|s| !s.receiving || s.failed || s.last.is_some_and(|l| l.index >= log_id.index))
                .await
                .map(|s| *s)
                .ok()
        };
        match tokio::time::timeout(PURGE_WAIT, settled).await {
            Ok(Some(s)) if !s.failed => Ok(()),
            Ok(_) => Err(write_err(std::io::Error::other(format!(
                "not purging the log up to {log_id}: the snapshot covering it could not be written"
            )))),
            Err(_) => Err(write_err(std::io::Error::other(format!(
                "not purging the log up to {log_id}: no snapshot covering it on disk after {}s",
                PURGE_WAIT.as_secs()
            )))),
        }
    }

    fn decode(payloads: Vec<Vec<u8>>) -> Result<Vec<Entry>, StorageError> {
        payloads.iter().map(|p| bincode::deserialize(p).map_err(read_err)).collect()
    }
}

/// The id of the last entry in `wal`.
fn last_log_id(wal: &Wal) -> Result<Option<LogId>, StorageError> {
    let Some(i) = wal.last_index() else { return Ok(None) };
    match wal.read(i, i + 1).map_err(read_err)?.pop() {
        Some(p) => Ok(Some(bincode::deserialize::<Entry>(&p).map_err(read_err)?.log_id)),
        None => Ok(None),
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(x) => *x,
            Bound::Excluded(x) => x.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(x) => x.saturating_add(1),
            Bound::Excluded(x) => *x,
            Bound::Unbounded => u64::MAX,
        };
        let cached = self.recent.lock().copy(start, end);
        match cached {
            Some((mut entries, to)) if to < end => {
                // Appended after the copy was taken: the rest from the file.
                entries.extend(Self::decode(self.wal.lock().read(to, end).map_err(read_err)?)?);
                Ok(entries)
            }
            Some((entries, _)) => Ok(entries),
            None => Self::decode(self.wal.lock().read(start, end).map_err(read_err)?),
        }
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get(PURGED)?;
        let last = last_log_id(&self.wal.lock())?.or(last_purged);
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote).map_err(vote_err)?;
        self.store.raft.insert(VOTE, bytes).map_err(vote_err)?;
        // A vote must be on disk before it is sent.
        self.sync().await.map_err(vote_err)?;
        *self.vote.lock() = Some(*vote);
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        Ok(*self.vote.lock())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        // A leader may commit entries it is still syncing (on_disk.rs): the
        // marker read back at start never passes the log on disk.
        self.put(COMMITTED, &self.store.log_on_disk.clamp(committed))
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records = entries
            .iter()
            .map(|e| Ok((e.log_id.index, bincode::serialize(e).map_err(write_err)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let Some(last) = entries.last().map(|e| e.log_id) else {
            callback.log_io_completed(Ok(()));
            return Ok(());
        };
        // A leader's own entries (this node's term, this node leading):
        // reported stored once written, so openraft replicates them while
        // they are synced (on_disk.rs).
        let leading = self.vote.lock().is_some_and(|v| {
            v.is_committed()
                && v.leader_id().voted_for().map(|n| n.0) == Some(self.store.node_id)
                && entries.iter().all(|e| e.log_id.leader_id == *v.leader_id())
        });
        let done = self.progress.done();
        let (files, epoch, forgotten) = {
            // Both under the WAL's lock, so the copies follow the file (and
            // a truncation, which takes it too, ends this epoch after).
            let mut wal = self.wal.lock();
            let files = wal.append(&records).map_err(write_err)?;
            let mut recent = self.recent.lock();
            let forgotten = done.map(|d| recent.purge(d)).unwrap_or_default();
            for (e, (_, bytes)) in entries.into_iter().zip(&records) {
                recent.push(e, bytes.len());
            }
            (files, self.store.log_on_disk.epoch(), forgotten)
        };
        // A few entries an append as a rule; many at once (a follower that
        // caught up after a long lag) are freed off the Raft core, as a
        // purge's are.
        if forgotten.len() > FORGET_INLINE {
            tokio::task::spawn_blocking(move || drop(forgotten));
        }
        let callback = if leading {
            callback.log_io_completed(Ok(()));
            None
        } else {
            Some(callback)
        };
        let pending = Pending { callback, files, last, epoch };
        match self.flusher.try_send(pending) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(pending)) => {
                // The disk is behind: wait for room off the async threads.
                let flusher = self.flusher.clone();
                tokio::task::spawn_blocking(move || flusher.send(pending))
                    .await
                    .map_err(write_err)?
                    .map_err(|_| write_err(std::io::Error::other("log flusher stopped")))
            }
            Err(std::sync::mpsc::TrySendError::Disconnected(_)) => {
                Err(write_err(std::io::Error::other("log flusher stopped")))
            }
        }
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.recent.lock().truncate(log_id.index);
        let wal = self.wal.clone();
        let on_disk = self.store.log_on_disk.clone();
        let purged: Option<LogId> = self.get(PURGED)?;
        tokio::task::spawn_blocking(move || {
            let mut wal = wal.lock();
            wal.truncate(log_id.index).map_err(write_err)?;
            on_disk.truncated(last_log_id(&wal)?.or(purged));
            Ok(())
        })
        .await
        .map_err(write_err)?
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // openraft purges as soon as it starts installing a snapshot from
        // the leader, while the state machine is still writing it: then the
        // entries stay until that snapshot is on disk.
        self.snapshot_covering(log_id).await?;
        self.put(PURGED, &log_id)?;
        let released = self.recent.lock().purge(log_id.index);
        let (dir, doomed) = {
            let mut w = self.wal.lock();
            (w.dir().to_path_buf(), w.purge(log_id.index))
        };
        // The rest in the background, one purge at a time: the Raft core
        // waited for it before, and every commit of the group stalled (the
        // purge point's sync 12-26 ms, deleting a 64 MiB segment about
        // 150 ms here, on every node at the same entry). The purge point is
        // synced before any segment goes, so the log read back after a
        // crash never misses an entry it does not skip; until then an older
        // purge point on disk only means more entries read back.
        let store = self.store.clone();
        let one_at_a_time = self.retiring.clone();
        tokio::task::spawn_blocking(move || {
            // Freed here, not in the Raft core: the first purge after the
            // queue group's first snapshot freed about 2,000 entries
            // (tens of thousands of messages) at once, on every node at the
            // same entry, and every durable delivery waited 25-40 ms
            // behind it.
            drop(released);
            let _one = one_at_a_time.lock();
            let done = store.sync().and_then(|()| crate::wal::remove_segments(&dir, &doomed));
            if let Err(e) = done {
                tracing::warn!(error = %e, dir = %dir.display(), "cannot delete purged Raft log segments");
            }
        });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use openraft::{CommittedLeaderId, EntryPayload};

    use super::*;

    fn entry(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(CommittedLeaderId::new(1, starling_broker::ids::NodeId(1)), index),
            payload: EntryPayload::Blank,
        }
    }

    fn indexes(v: &[Entry]) -> Vec<u64> {
        v.iter().map(|e| e.log_id.index).collect()
    }

    /// Opens the store in `dir` again once the previous one let go: its log
    /// flusher thread holds the database a moment after the store is
    /// dropped (a process restart has no such overlap).
    fn reopen(dir: &std::path::Path) -> Store {
        let mut tries = 0;
        loop {
            match Store::open(dir, 1) {
                Ok(s) => return s,
                Err(_) if tries < 100 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(20));
                }
                Err(e) => panic!("reopen: {e}"),
            }
        }
    }

    fn on_disk(store: &Store, last: Option<u64>) {
        store.snapshot_on_disk.send_modify(|s| s.last = last.map(|i| entry(i).log_id));
    }

    fn receiving(store: &Store, yes: bool) {
        store.snapshot_on_disk.send_modify(|s| s.receiving = yes);
    }

    /// A log holding entries 1..=10, its store's snapshot on disk ending at
    /// `snapshot`.
    fn log_of_ten(dir: &std::path::Path, snapshot: Option<u64>) -> LogStore {
        let store = Store::open(dir, 1).unwrap();
        on_disk(&store, snapshot);
        let log = LogStore::open(store).unwrap();
        let records: Vec<(u64, Vec<u8>)> =
            (1..=10).map(|i| (i, bincode::serialize(&entry(i)).unwrap())).collect();
        log.wal.lock().append(&records).unwrap();
        log
    }

    /// A leader's own entries count as stored once written (openraft then
    /// replicates them while they are synced); anyone else's only once
    /// synced. Either way the log records them on disk only after the sync.
    // The gate is held across awaits on purpose: it stalls the flusher's
    // thread, not a task.
    #[allow(clippy::await_holding_lock)]
    #[tokio::test]
    async fn only_a_leaders_own_entries_are_reported_stored_before_the_sync() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path(), 1).unwrap();
        let on_disk = store.log_on_disk.clone();
        let gate = Arc::new(Mutex::new(()));
        let mut log = LogStore::open_gated(store, Some(gate.clone())).unwrap();
        let stalled = gate.lock();
        // Node 1 leads term 1: entries 1..=3 are its own.
        log.save_vote(&Vote::new_committed(1, starling_broker::ids::NodeId(1))).await.unwrap();
        let appended = tokio::time::timeout(Duration::from_secs(5), log.blocking_append((1..=3).map(entry)));
        appended.await.expect("a leader's append is reported stored without the sync").unwrap();
        assert!(!on_disk.holds(1), "nothing is on disk while the flusher is held");
        assert_eq!(indexes(&log.try_get_log_entries(1..=3).await.unwrap()), vec![1, 2, 3]);
        // Node 2 leads term 2: entries from it wait for the sync.
        log.save_vote(&Vote::new_committed(2, starling_broker::ids::NodeId(2))).await.unwrap();
        let theirs = |i| Entry {
            log_id: LogId::new(CommittedLeaderId::new(2, starling_broker::ids::NodeId(2)), i),
            payload: EntryPayload::Blank,
        };
        drop(stalled);
        stored_only_once_synced(&log, &gate, (4..=5).map(theirs).collect(), "a follower's append").await;
        assert!(on_disk.holds(5), "synced before reported stored");
        // And the leader's entries of term 1 are now a term behind: any
        // more of them wait for the sync too.
        log.save_vote(&Vote::new_committed(3, starling_broker::ids::NodeId(1))).await.unwrap();
        stored_only_once_synced(&log, &gate, vec![entry(6)], "entries of an earlier term").await;
    }

    /// With the flusher held, appending `entries` is not reported stored
    /// until it is let go.
    // The gate stalls the flusher's thread, not a task.
    #[allow(clippy::await_holding_lock)]
    async fn stored_only_once_synced(log: &LogStore, gate: &Mutex<()>, entries: Vec<Entry>, what: &str) {
        use openraft::storage::RaftLogStorageExt;
        let stalled = gate.lock();
        let mut log = log.clone();
        let appending = tokio::spawn(async move { log.blocking_append(entries).await });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!appending.is_finished(), "{what} is reported stored before it is synced");
        drop(stalled);
        appending.await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_purged_log_opens_again() {
        let dir = tempfile::tempdir().unwrap();
        log_of_ten(dir.path(), Some(5)).purge(entry(5).log_id).await.unwrap();
        let store = reopen(dir.path());
        on_disk(&store, Some(5));
        let mut log = LogStore::open(store).expect("a log with a purge point opens");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, Some(entry(5).log_id));
        assert_eq!(state.last_log_id, Some(entry(10).log_id));
        assert_eq!(indexes(&log.try_get_log_entries(6..=10).await.unwrap()), vec![6, 7, 8, 9, 10]);
    }

    /// openraft purges the log as soon as it starts installing a snapshot
    /// received from the leader. The purge waits for that snapshot to be on
    /// disk;
    /// if writing it fails (a full disk), nothing is purged and the node
    /// comes back with the entries its older snapshot does not cover
    /// (found by fault schedule 2004).
    #[tokio::test]
    async fn the_log_is_not_purged_past_the_snapshot_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        {
            let mut log = log_of_ten(dir.path(), Some(3));
            let store = log.store.clone();
            receiving(&store, true);
            let purge = tokio::spawn(async move { log.purge(entry(8).log_id).await });
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            assert!(!purge.is_finished(), "the purge waits for the snapshot up to 8");
            store.snapshot_on_disk.send_modify(|s| s.failed = true);
            let err = purge.await.unwrap().expect_err("the snapshot was not written").to_string();
            assert!(err.contains("could not be written"), "{err}");
        }
        let store = reopen(dir.path());
        on_disk(&store, Some(3));
        let mut log = LogStore::open(store.clone()).expect("the log opens: nothing is missing");
        let state = log.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id, None);
        assert_eq!(indexes(&log.try_get_log_entries(4..=10).await.unwrap()), vec![4, 5, 6, 7, 8, 9, 10]);

        // Once the snapshot up to 8 is on disk the waiting purge goes on.
        receiving(&store, true);
        let mut waiting = log.clone();
        let purge = tokio::spawn(async move { waiting.purge(entry(8).log_id).await });
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        assert!(!purge.is_finished(), "the purge waits for the snapshot up to 8");
        on_disk(&store, Some(8));
        purge.await.unwrap().expect("purged once covered");
        assert_eq!(log.get_log_state().await.unwrap().last_purged_log_id, Some(entry(8).log_id));
        assert_eq!(indexes(&log.try_get_log_entries(9..=10).await.unwrap()), vec![9, 10]);
    }

    #[tokio::test]
    async fn a_log_purged_past_its_snapshot_is_refused_with_what_is_missing() {
        let dir = tempfile::tempdir().unwrap();
        {
            let log = log_of_ten(dir.path(), None);
            log.put(PURGED, &entry(6).log_id).unwrap();
            log.store.sync().unwrap();
        }
        let store = reopen(dir.path());
        on_disk(&store, Some(2));
        let err = LogStore::open(store).expect_err("entries 3..=6 are missing").to_string();
        assert!(err.contains("purged up to") && err.contains("snapshot ends at"), "{err}");
    }

    /// The decoded copies go once nothing reads them soon: applied here
    /// and matched by every follower (the session claims of thousands of
    /// idle connections stayed in memory until the bounds pushed them out).
    #[tokio::test]
    async fn recent_forgets_what_nothing_reads_soon() {
        use openraft::storage::RaftLogStorageExt;
        let dir = tempfile::tempdir().unwrap();
        let mut log = LogStore::open(Store::open(dir.path(), 1).unwrap()).unwrap();
        log.blocking_append((1..=10).map(entry)).await.unwrap();
        // Before the Raft core runs: kept to the bounds.
        log.blocking_append([entry(11)]).await.unwrap();
        assert_eq!(log.recent.lock().first(), Some(1));
        let (tx, rx) = watch::channel(RaftDataMetrics::default());
        log.progress.follow(rx);
        let at = |i: u64| Some(entry(i).log_id);
        // A leader: applied 6, its followers matched 4 and 7: up to 4 go.
        tx.send_replace(RaftDataMetrics {
            last_applied: at(6),
            replication: Some([(NodeId(2), at(4)), (NodeId(3), at(7))].into()),
            ..Default::default()
        });
        log.blocking_append([entry(12)]).await.unwrap();
        assert_eq!(log.recent.lock().first(), Some(5));
        // One follower matched nothing yet: nothing more goes.
        tx.send_replace(RaftDataMetrics {
            last_applied: at(9),
            replication: Some([(NodeId(2), None), (NodeId(3), at(9))].into()),
            ..Default::default()
        });
        log.blocking_append([entry(13)]).await.unwrap();
        assert_eq!(log.recent.lock().first(), Some(5));
        // A follower: what it applied goes.
        tx.send_replace(RaftDataMetrics { last_applied: at(9), ..Default::default() });
        log.blocking_append([entry(14)]).await.unwrap();
        assert_eq!(log.recent.lock().first(), Some(10));
        // What went is read from the file.
        let all = log.try_get_log_entries(1..=14).await.unwrap();
        assert_eq!(indexes(&all), (1..=14).collect::<Vec<_>>());
    }

    #[test]
    fn recent_holds_a_contiguous_suffix_within_its_bounds() {
        let mut r = Recent::default();
        for i in 1..=10 {
            r.push(entry(i), 100);
        }
        let (v, to) = r.copy(4, 8).unwrap();
        assert_eq!((indexes(&v), to), (vec![4, 5, 6, 7], 8));
        // Past the end: what is held, and where the file must take over.
        let (v, to) = r.copy(9, 20).unwrap();
        assert_eq!((indexes(&v), to), (vec![9, 10], 11));
        assert!(r.copy(11, 12).is_none() && r.copy(0, 3).is_none());

        // Truncated from 6: 6.. gone, and the next append follows on.
        r.truncate(6);
        assert_eq!(r.next(), Some(6));
        r.push(entry(6), 100);
        assert_eq!(indexes(&r.copy(5, 7).unwrap().0), vec![5, 6]);
        // Purged up to 3: what went is handed back (freed elsewhere).
        let released: Vec<Entry> = r.purge(3).into_iter().map(|(e, _)| e).collect();
        assert_eq!(indexes(&released), vec![1, 2, 3]);
        assert_eq!(r.first(), Some(4));
        assert_eq!(r.bytes, 300);
        // An append that does not follow on starts again.
        r.push(entry(50), 100);
        assert_eq!((r.first(), r.next(), r.bytes), (Some(50), Some(51), 100));

        // Bounds: entries, then bytes (the newest is always kept).
        let mut r = Recent::default();
        for i in 0..(RECENT_ENTRIES as u64 + 5) {
            r.push(entry(i), 1);
        }
        assert_eq!((r.entries.len(), r.first()), (RECENT_ENTRIES, Some(5)));
        let mut r = Recent::default();
        r.push(entry(1), RECENT_BYTES / 2);
        r.push(entry(2), RECENT_BYTES / 2);
        r.push(entry(3), RECENT_BYTES);
        assert_eq!((r.first(), r.bytes), (Some(3), RECENT_BYTES));
        r.push(entry(4), RECENT_BYTES * 2);
        assert_eq!((r.first(), r.entries.len()), (Some(4), 1));
    }
}
