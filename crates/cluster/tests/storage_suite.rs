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

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), 1).expect("open store");
        let limits = SessionLimits { max_queued: 100, queue_qos0_offline: false };
        let auth = Arc::new(AuthService::new(Default::default()));
        let local = Arc::new(LocalState::new(NodeId(1), auth, Arc::new(Metrics::default()), limits));
        // The suite applies entries it never appended: the state machine
        // here does not wait for them to be on the log's disk (on_disk.rs;
        // that wait has tests of its own).
        let mut unlogged = store.clone();
        let end = LogId::new(CommittedLeaderId::new(u64::MAX, NodeId(u64::MAX)), u64::MAX);
        unlogged.log_on_disk = Arc::new(LogOnDisk::new(Some(end)));
        let sm = StateMachine::open(unlogged, local)?;
        Ok((dir, LogStore::open(store)?, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}
