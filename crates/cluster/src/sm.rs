//! The state machine (`RaftStateMachine`): the replicated state in memory,
//! rebuilt on start from the last snapshot plus the committed log.
//!
//! `apply` runs the broker's `ReplicatedState::apply` for each command and
//! hands the resulting changes to the node's `LocalState` (the broker's
//! one applier), then publishes the applied index so that a node that
//! proposed a command can wait until it is applied *here* before
//! answering its client (SUBACK after the route exists locally).
//!
//! Snapshots are the bincode encoding of the state, written to a file
//! beside the database (fsync'd, renamed, directory fsync'd) with its
//! metadata in sled; openraft streams them to followers in chunks.
//! Installing one replaces the state and rebuilds the node's local state
//! from it. Once a snapshot's file and metadata are synced,
//! `Store::snapshot_on_disk` says so, and only then may the log be purged
//! up to it.

use std::collections::BTreeSet;
use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use parking_lot::Mutex;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use starling_broker::replicated::{
    Command, CommandResult, LocalState, QueueGroupState, ReplicatedState, StateChange,
};

use crate::storage::Store;
use crate::types::{
    BatchResult, Entry, LogId, NodeId, SnapshotData, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const SNAPSHOT_META: &[u8] = b"current";

/// What one Raft group's state machine holds: the main group's
/// `ReplicatedState`, or the queue group's `QueueGroupState` (the durable
/// queues). Applying is the broker's, and deterministic.
pub trait GroupState: Default + Serialize + DeserializeOwned + Send + Sync + 'static {
    /// Applies `cmd` at replicated time `time_ms`, appending its changes.
    fn apply(&mut self, time_ms: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult;

    /// Replicated time of the last applied entry.
    fn time_ms(&self) -> u64;

    /// A whole state was loaded (start, snapshot installed): the node's
    /// views follow it.
    fn loaded(&self, local: &LocalState);

    /// The nodes declared down (the main group keeps liveness).
    fn down(&self) -> Option<&BTreeSet<NodeId>> {
        None
    }
}

impl GroupState for ReplicatedState {
    fn apply(&mut self, time_ms: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult {
        ReplicatedState::apply(self, time_ms, cmd, out)
    }

    fn time_ms(&self) -> u64 {
        ReplicatedState::time_ms(self)
    }

    fn loaded(&self, local: &LocalState) {
        local.rebuild(self)
    }

    fn down(&self) -> Option<&BTreeSet<NodeId>> {
        Some(ReplicatedState::down(self))
    }
}

impl GroupState for QueueGroupState {
    fn apply(&mut self, time_ms: u64, cmd: Command, out: &mut Vec<StateChange>) -> CommandResult {
        QueueGroupState::apply(self, time_ms, cmd, out)
    }

    fn time_ms(&self) -> u64 {
        QueueGroupState::time_ms(self)
    }

    fn loaded(&self, local: &LocalState) {
        local.reload_queues(self.queues(), self.time_ms())
    }
}

#[derive(Default)]
struct Inner<S> {
    last_applied: Option<LogId>,
    membership: StoredMembership,
    state: S,
}

/// Shared between the Raft core (through `StateMachine`) and the node.
pub struct SmShared<S = ReplicatedState> {
    inner: Mutex<Inner<S>>,
    store: Store,
    local: Arc<LocalState>,
    applied_tx: watch::Sender<u64>,
    /// The nodes the replicated state has declared down, as applied here.
    down_tx: watch::Sender<BTreeSet<NodeId>>,
    snapshot_seq: std::sync::atomic::AtomicU64,
    /// Held while a snapshot is written (`persist_snapshot`).
    persist_lock: Mutex<()>,
    /// Time spent applying entries (ns) and entries applied, for metrics.
    pub apply_nanos: std::sync::atomic::AtomicU64,
    pub applied_entries: std::sync::atomic::AtomicU64,
}

impl<S: GroupState> SmShared<S> {
    /// Index of the last applied entry (0 before any).
    pub fn applied_index(&self) -> u64 {
        *self.applied_tx.borrow()
    }

    pub fn applied_watch(&self) -> watch::Receiver<u64> {
        self.applied_tx.subscribe()
    }

    /// Changes when the set of nodes declared down does.
    pub fn down_watch(&self) -> watch::Receiver<BTreeSet<NodeId>> {
        self.down_tx.subscribe()
    }

    fn publish_down(&self, state: &S) {
        let Some(down) = state.down() else { return };
        self.down_tx.send_if_modified(|d| {
            let changed = d != down;
            if changed {
                d.clone_from(down);
            }
            changed
        });
    }

    /// Waits until this node has applied `index`.
    pub async fn wait_applied(&self, index: u64, timeout: std::time::Duration) -> bool {
        let mut rx = self.applied_tx.subscribe();
        tokio::time::timeout(timeout, rx.wait_for(|a| *a >= index)).await.is_ok_and(|r| r.is_ok())
    }

    /// The gRPC address of a member, from the applied membership.
    pub fn member_addr(&self, node: crate::types::NodeId) -> Option<String> {
        self.inner.lock().membership.membership().get_node(&node).map(|n| n.grpc.clone())
    }

    /// The log index of the applied membership (0: none yet) and whether
    /// `node` is in it.
    pub fn membership_of(&self, node: crate::types::NodeId) -> (u64, bool) {
        let inner = self.inner.lock();
        let m = &inner.membership;
        (m.log_id().map_or(0, |l| l.index), m.membership().get_node(&node).is_some())
    }

    /// Every member and its gRPC address.
    pub fn members(&self) -> Vec<(crate::types::NodeId, String)> {
        self.inner.lock().membership.membership().nodes().map(|(id, n)| (*id, n.grpc.clone())).collect()
    }

    /// Reads the replicated state. (No change is applied meanwhile.)
    pub fn with_state<T>(&self, f: impl FnOnce(&S) -> T) -> T {
        f(&self.inner.lock().state)
    }
}

pub struct StateMachine<S = ReplicatedState> {
    pub shared: Arc<SmShared<S>>,
}

impl<S> Clone for StateMachine<S> {
    fn clone(&self) -> Self {
        StateMachine { shared: self.shared.clone() }
    }
}

fn sm_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(&e).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, &e).into()
}

#[derive(Serialize, Deserialize)]
struct StoredSnapshotMeta {
    meta: SnapshotMeta,
}

impl<S: GroupState> StateMachine<S> {
    /// Opens the state machine, loading the current snapshot if any.
    pub fn open(store: Store, local: Arc<LocalState>) -> Result<StateMachine<S>, StorageError> {
        let (applied_tx, _) = watch::channel(0);
        let (down_tx, _) = watch::channel(BTreeSet::new());
        let sm = StateMachine {
            shared: Arc::new(SmShared {
                inner: Mutex::new(Inner::default()),
                store,
                local,
                applied_tx,
                down_tx,
                snapshot_seq: std::sync::atomic::AtomicU64::new(0),
                persist_lock: Mutex::new(()),
                apply_nanos: std::sync::atomic::AtomicU64::new(0),
                applied_entries: std::sync::atomic::AtomicU64::new(0),
            }),
        };
        let current = sm.read_current_snapshot()?;
        let store = &sm.shared.store;
        store.remove_stale_snapshots(
            current.as_ref().map(|(m, _)| store.snapshot_path(&m.snapshot_id)).as_deref(),
        );
        if let Some((meta, data)) = current {
            sm.load(&meta, &data)?;
            store.snapshot_on_disk.send_modify(|s| s.last = meta.last_log_id);
            tracing::info!(last = ?meta.last_log_id, bytes = data.len(), "loaded the snapshot; replaying the log after it");
        }
        Ok(sm)
    }

    fn read_current_snapshot(&self) -> Result<Option<(SnapshotMeta, Vec<u8>)>, StorageError> {
        let s = &self.shared.store;
        let Some(raw) = s.snapshot.get(SNAPSHOT_META).map_err(snap_err)? else { return Ok(None) };
        let stored: StoredSnapshotMeta = bincode::deserialize(&raw).map_err(snap_err)?;
        let data = std::fs::read(s.snapshot_path(&stored.meta.snapshot_id)).map_err(snap_err)?;
        Ok(Some((stored.meta, data)))
    }

    /// Replaces the in-memory state with a snapshot's and rebuilds views.
    fn load(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let state: S = bincode::deserialize(data).map_err(snap_err)?;
        {
            let mut inner = self.shared.inner.lock();
            inner.last_applied = meta.last_log_id;
            inner.membership = meta.last_membership.clone();
            inner.state = state;
            inner.state.loaded(&self.shared.local);
            self.shared.publish_down(&inner.state);
        }
        self.shared.applied_tx.send_replace(meta.last_log_id.map_or(0, |l| l.index));
        Ok(())
    }

    fn persist_snapshot(&self, meta: &SnapshotMeta, data: &[u8]) -> Result<(), StorageError> {
        let s = &self.shared.store;
        // A snapshot built here and one installed from the leader can be
        // written at the same time: one at a time, and never replace a newer
        // one.
        let _one = self.shared.persist_lock.lock();
        if s.snapshot_on_disk.borrow().last > meta.last_log_id {
            tracing::info!(last = ?meta.last_log_id, "not recording a snapshot older than the current one");
            return Ok(());
        }
        let path = s.snapshot_path(&meta.snapshot_id);
        let tmp = path.with_extension("tmp");
        let written = (|| {
            {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(data)?;
                f.sync_all()?;
            }
            std::fs::rename(&tmp, &path)?;
            s.sync_dir()?;
            let stored = bincode::serialize(&StoredSnapshotMeta { meta: meta.clone() })
                .map_err(std::io::Error::other)?;
            s.snapshot.insert(SNAPSHOT_META, stored).map_err(std::io::Error::other)?;
            s.sync()
        })();
        if let Err(e) = written {
            // The Raft core stops on this error; a purge waiting for this
            // snapshot must not go ahead.
            s.snapshot_on_disk.send_modify(|s| s.failed = true);
            let _ = std::fs::remove_file(&tmp);
            return Err(snap_err(e));
        }
        // Only now may the log be purged up to it (`LogStore::purge`).
        s.snapshot_on_disk.send_modify(|s| s.last = meta.last_log_id);
        s.remove_stale_snapshots(Some(&path));
        Ok(())
    }
}

impl<S: GroupState> RaftSnapshotBuilder<TypeConfig> for StateMachine<S> {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError> {
        let (meta, data) = {
            let inner = self.shared.inner.lock();
            let data = bincode::serialize(&inner.state).map_err(snap_err)?;
            let seq = self.shared.snapshot_seq.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let snapshot_id = match inner.last_applied {
                Some(l) => format!("{}-{}-{}-{seq}", l.leader_id.term, l.leader_id.node_id, l.index),
                None => format!("none-{seq}"),
            };
            (
                SnapshotMeta {
                    last_log_id: inner.last_applied,
                    last_membership: inner.membership.clone(),
                    snapshot_id,
                },
                data,
            )
        };
        let this = self.clone();
        let (m2, d2) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || this.persist_snapshot(&m2, &d2)).await.map_err(snap_err)??;
        Ok(Snapshot { meta, snapshot: Box::new(Cursor::new(data)) })
    }
}

impl<S: GroupState> RaftStateMachine<TypeConfig> for StateMachine<S> {
    type SnapshotBuilder = Self;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        let inner = self.shared.inner.lock();
        Ok((inner.last_applied, inner.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        // Nothing is applied before it is on this node's disk: on the leader,
        // openraft may commit entries while they are being synced
        // (on_disk.rs); on a follower they are on disk already.
        if let Some(e) = entries.last() {
            if !self.shared.store.log_on_disk.wait(e.log_id.index).await {
                return Err(sm_err(std::io::Error::other("the Raft log could not be synced")));
            }
        }
        let mut replies = Vec::new();
        let mut last = None;
        let started = std::time::Instant::now();
        {
            let mut inner = self.shared.inner.lock();
            for entry in entries {
                inner.last_applied = Some(entry.log_id);
                last = Some(entry.log_id.index);
                match entry.payload {
                    EntryPayload::Blank => replies.push(BatchResult::default()),
                    EntryPayload::Membership(m) => {
                        inner.membership = StoredMembership::new(Some(entry.log_id), m);
                        replies.push(BatchResult::default());
                    }
                    EntryPayload::Normal(batch) => {
                        let mut results = Vec::with_capacity(batch.commands.len());
                        let mut changes = Vec::new();
                        // Moved out when this is the only copy; cloned when
                        // the log store's recent entries still hold it (the
                        // usual case: a durable message's clone shares its
                        // body, only the target list is copied).
                        match Arc::try_unwrap(batch.commands) {
                            Ok(cmds) => {
                                for cmd in cmds {
                                    results.push(GroupState::apply(
                                        &mut inner.state,
                                        batch.time_ms,
                                        cmd,
                                        &mut changes,
                                    ));
                                }
                            }
                            Err(shared) => {
                                for cmd in shared.iter() {
                                    let cmd = cmd.clone();
                                    results.push(GroupState::apply(
                                        &mut inner.state,
                                        batch.time_ms,
                                        cmd,
                                        &mut changes,
                                    ));
                                }
                            }
                        }
                        // A full queue's drop is counted once in the cluster:
                        // by the leader that appended the entry, which its log
                        // id names on every node (the session's holder may be
                        // moving between nodes).
                        let appender = entry.log_id.leader_id.node_id;
                        for change in &mut changes {
                            if let StateChange::QueueFull { counted_by, .. } = change {
                                *counted_by = Some(appender);
                            }
                        }
                        // Under the lock: changes reach the views in log order.
                        self.shared.local.apply(GroupState::time_ms(&inner.state), changes);
                        replies.push(BatchResult(results));
                    }
                }
            }
            self.shared.publish_down(&inner.state);
        }
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        self.shared.apply_nanos.fetch_add(started.elapsed().as_nanos() as u64, relaxed);
        self.shared.applied_entries.fetch_add(replies.len() as u64, relaxed);
        if let Some(i) = last {
            self.shared.applied_tx.send_replace(i);
        }
        Ok(replies)
    }

    async fn get_snapshot_builder(&mut self) -> Self::SnapshotBuilder {
        self.clone()
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<SnapshotData>, StorageError> {
        self.shared.store.snapshot_on_disk.send_modify(|s| s.receiving = true);
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta,
        snapshot: Box<SnapshotData>,
    ) -> Result<(), StorageError> {
        let data = snapshot.into_inner();
        let this = self.clone();
        let (m2, d2) = (meta.clone(), data.clone());
        tokio::task::spawn_blocking(move || this.persist_snapshot(&m2, &d2)).await.map_err(sm_err)??;
        self.shared.store.snapshot_on_disk.send_modify(|s| s.receiving = false);
        self.load(meta, &data)?;
        tracing::info!(last = ?meta.last_log_id, bytes = data.len(), "installed a snapshot from the leader");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError> {
        Ok(self
            .read_current_snapshot()?
            .map(|(meta, data)| Snapshot { meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}
