//! The Raft log on sled (`RaftLogStorage`).
//!
//! Entries are keyed by their big-endian index, so sled's ordering is log
//! order. Appends are written at once and made durable by one flusher
//! thread that groups every append waiting at that moment into one
//! flush + fsync (group commit) before completing their callbacks in
//! order: openraft counts an entry as stored only after that.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{OptionalSend, RaftLogReader, StorageIOError};

use crate::storage::Store;
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

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

#[derive(Clone)]
pub struct LogStore {
    store: Store,
    flusher: SyncSender<LogFlushed<TypeConfig>>,
    /// Last committed index openraft reported, for status and metrics.
    pub committed: Arc<AtomicU64>,
}

impl Debug for LogStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LogStore").finish()
    }
}

impl LogStore {
    pub fn new(store: Store) -> LogStore {
        let (tx, rx) = sync_channel::<LogFlushed<TypeConfig>>(FLUSH_QUEUE);
        let s = store.clone();
        std::thread::Builder::new()
            .name("starling-log-flush".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let mut batch = vec![first];
                    while let Ok(more) = rx.try_recv() {
                        batch.push(more);
                    }
                    let result = s.sync();
                    for cb in batch {
                        let r = match &result {
                            Ok(()) => Ok(()),
                            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
                        };
                        cb.log_io_completed(r);
                    }
                }
            })
            .expect("spawn the log flusher thread");
        LogStore { store, flusher: tx, committed: Arc::new(AtomicU64::new(0)) }
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

    /// Runs a blocking fsync off the async threads.
    async fn sync(&self) -> std::io::Result<()> {
        let s = self.store.clone();
        tokio::task::spawn_blocking(move || s.sync()).await.map_err(std::io::Error::other)?
    }
}

fn key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
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
        let mut out = Vec::new();
        for item in self.store.log.range(key(start)..) {
            let (k, v) = item.map_err(read_err)?;
            let index = u64::from_be_bytes(k.as_ref().try_into().unwrap_or([0xFF; 8]));
            if !range.contains(&index) {
                break;
            }
            out.push(bincode::deserialize(&v).map_err(read_err)?);
        }
        Ok(out)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = Self;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged: Option<LogId> = self.get(PURGED)?;
        let last = match self.store.log.last().map_err(read_err)? {
            Some((_, v)) => Some(bincode::deserialize::<Entry>(&v).map_err(read_err)?.log_id),
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
        let mut batch = sled::Batch::default();
        for e in entries {
            let bytes = bincode::serialize(&e).map_err(write_err)?;
            batch.insert(&key(e.log_id.index), bytes);
        }
        self.store.log.apply_batch(batch).map_err(write_err)?;
        match self.flusher.try_send(callback) {
            Ok(()) => Ok(()),
            Err(std::sync::mpsc::TrySendError::Full(callback)) => {
                // The disk is behind: wait for room off the async threads.
                let flusher = self.flusher.clone();
                tokio::task::spawn_blocking(move || flusher.send(callback))
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
        let mut batch = sled::Batch::default();
        for item in self.store.log.range(key(log_id.index)..) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.store.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        self.put(PURGED, &log_id)?;
        let mut batch = sled::Batch::default();
        for item in self.store.log.range(..=key(log_id.index)) {
            let (k, _) = item.map_err(read_err)?;
            batch.remove(k);
        }
        self.store.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
