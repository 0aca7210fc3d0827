//! The Raft log (`RaftLogStorage`): entries in the append-only segment
//! files of `wal.rs`, the vote, commit and purge markers as typed keys in
//! sled's `raft` tree.
//!
//! Appends are written at once and made durable by one flusher thread
//! that groups every append waiting at that moment into one `sync_data`
//! per touched segment (group commit) before completing their callbacks
//! in order: openraft counts an entry as stored only after that. The vote
//! and the purge marker are fsync'd before their calls return.

use std::fmt::Debug;
use std::fs::File;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};
use parking_lot::Mutex;

use crate::storage::Store;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};
use crate::wal::Wal;

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"last_purged";

/// Appends waiting for the flusher. Full means the disk is behind:
/// `append` then waits for room.
const FLUSH_QUEUE: usize = 4096;

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(&e).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(&e).into()
}

fn vote_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_vote(&e).into()
}

/// An append waiting to be made durable: its callback and the segment
/// files it wrote to.
type Pending = (LogFlushed<TypeConfig>, Vec<Arc<File>>);

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    wal: Arc<Mutex<Wal>>,
    flusher: SyncSender<Pending>,
    /// Last committed index openraft reported, for status and metrics.
    pub committed: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish()
    }
}

/// The group-commit loop: syncs every file the waiting appends touched,
/// once, then completes them in order.
fn flush_loop(rx: Receiver<Pending>) {
    while let Ok(first) = rx.recv() {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let mut files: Vec<&Arc<File>> = Vec::new();
        for (_, touched) in &batch {
            for f in touched {
                if !files.iter().any(|g| Arc::ptr_eq(g, f)) {
                    files.push(f);
                }
            }
        }
        let result = files.iter().try_for_each(|f| f.sync_data());
        for (cb, _) in batch {
            let r = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
            };
            cb.log_io_completed(r);
        }
    }
}

impl LogStore {
    /// Opens the log of `store` (segments in `<data_dir>/raft/log`).
    pub fn open(store: Store) -> Result<LogStore, StorageError> {
        let purged: Option<LogId> = match store.raft.get(PURGED).map_err(read_err)? {
            Some(v) => bincode::deserialize(&v).map_err(read_err)?,
            None => None,
        };
        let wal =
            Wal::open(&store.dir.join("raft").join("log"), purged.map(|p| p.index)).map_err(read_err)?;
        let (tx, rx) = sync_channel::<Pending>(FLUSH_QUEUE);
        std::thread::Builder::new()
            .name("starling-log-flush".into())
            .spawn(move || flush_loop(rx))
            .map_err(write_err)?;
        Ok(LogStore {
            store,
            wal: Arc::new(Mutex::new(wal)),
            flusher: tx,
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

    fn decode(payloads: Vec<Vec<u8>>) -> Result<Vec<Entry>, StorageError> {
        payloads.iter().map(|p| bincode::deserialize(p).map_err(read_err)).collect()
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
        let payloads = self.wal.lock().read(start, end).map_err(read_err)?;
        Self::decode(payloads)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get(PURGED)?;
        let last_payload = {
            let wal = self.wal.lock();
            match wal.last_index() {
                Some(i) => wal.read(i, i + 1).map_err(read_err)?.pop(),
                None => None,
            }
        };
        let last = match last_payload {
            Some(p) => Some(bincode::deserialize::<Entry>(&p).map_err(read_err)?.log_id),
            None => last_purged,
        };
        Ok(LogState { last_purged_log_id: last_purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = bincode::serialize(vote).map_err(vote_err)?;
        self.store.raft.insert(VOTE, bytes).map_err(vote_err)?;
        // A vote must be on disk before it is sent.
        self.sync().await.map_err(vote_err)
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        self.get(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        if let Some(c) = committed {
            self.committed.fetch_max(c.index, Ordering::Relaxed);
        }
        self.put(COMMITTED, &committed)
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        Ok(self.get::<Option<LogId>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records = entries
            .into_iter()
            .map(|e| Ok((e.log_id.index, bincode::serialize(&e).map_err(write_err)?)))
            .collect::<Result<Vec<_>, StorageError>>()?;
        let touched = self.wal.lock().append(&records).map_err(write_err)?;
        match self.flusher.try_send((callback, touched)) {
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
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.lock().truncate(log_id.index))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The purge point is durable before any segment goes: reading the
        // log back skips what it covers.
        self.put(PURGED, &log_id)?;
        self.sync().await.map_err(write_err)?;
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || wal.lock().purge(log_id.index))
            .await
            .map_err(write_err)?
            .map_err(write_err)
    }
}
