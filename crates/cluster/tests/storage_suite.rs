//! openraft's storage conformance suite against the sled log store and
//! the state machine.

// The suite's error type is openraft's.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use openraft::CommittedLeaderId;
use starling_broker::auth::AuthService;
use starling_broker::ids::NodeId;
use starling_broker::metrics::Metrics;
use starling_broker::replicated::LocalState;
use starling_broker::session::SessionLimits;
use starling_cluster::log_store::LogStore;
use starling_cluster::on_disk::LogOnDisk;
use starling_cluster::sm::StateMachine;
use starling_cluster::storage::Store;
use starling_cluster::types::{LogId, StorageError, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

/// Node 1's local state (sessions, routes) for a state machine to apply to.
fn local_state() -> Arc<LocalState> {
    let limits = SessionLimits { max_queued: 100, queue_qos0_offline: false };
    let auth = Arc::new(AuthService::new(Default::default()));
    Arc::new(LocalState::new(NodeId(1), auth, Arc::new(Metrics::default()), limits))
}

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), 1).expect("open store");
        // The suite applies entries it never appended: the state machine
        // here does not wait for them to be on the log's disk (on_disk.rs;
        // that wait has tests of its own).
        let mut unlogged = store.clone();
        let end = LogId::new(CommittedLeaderId::new(u64::MAX, NodeId(u64::MAX)), u64::MAX);
        unlogged.log_on_disk = Arc::new(LogOnDisk::new(Some(end)));
        let sm = StateMachine::open(unlogged, local_state())?;
        Ok((dir, LogStore::open(store)?, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}

/// The leader reports its own entries stored before they are synced
/// (on_disk.rs): the state machine applies nothing before it is on the
/// log's disk, and fails (stopping the Raft core) if the sync failed.
#[tokio::test]
async fn nothing_is_applied_before_it_is_on_the_logs_disk() {
    use openraft::storage::RaftStateMachine;
    use openraft::{Entry, EntryPayload};
    let dir = TempDir::new().expect("temp dir");
    let store = Store::open(dir.path(), 1).expect("open store");
    let mut sm: StateMachine = StateMachine::open(store.clone(), local_state()).expect("state machine");
    let id = |i| LogId::new(CommittedLeaderId::new(1, NodeId(1)), i);
    let blank = move |i| Entry::<TypeConfig> { log_id: id(i), payload: EntryPayload::Blank };
    let mut applying = sm.clone();
    let first = tokio::spawn(async move { applying.apply([blank(1), blank(2)]).await.map(|r| r.len()) });
    store.log_on_disk.synced(id(1), store.log_on_disk.epoch());
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    assert!(!first.is_finished(), "entry 2 is not on disk yet");
    store.log_on_disk.synced(id(2), store.log_on_disk.epoch());
    assert_eq!(first.await.expect("task").expect("applied"), 2);
    let second = tokio::spawn(async move { sm.apply([blank(3)]).await.map(|r| r.len()) });
    store.log_on_disk.failed();
    assert!(second.await.expect("task").is_err(), "a failed sync fails the apply");
}
