//! openraft's storage conformance suite against the sled log store and
//! the state machine.

// The suite's error type is openraft's.
#![allow(clippy::result_large_err)]

use std::sync::Arc;

use openraft::testing::{StoreBuilder, Suite};
use starling_broker::auth::AuthService;
use starling_broker::ids::NodeId;
use starling_broker::metrics::Metrics;
use starling_broker::replicated::LocalState;
use starling_broker::session::SessionLimits;
use starling_cluster::log_store::LogStore;
use starling_cluster::sm::StateMachine;
use starling_cluster::storage::Store;
use starling_cluster::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let store = Store::open(dir.path(), 1).expect("open store");
        let limits = SessionLimits { max_queued: 100, queue_qos0_offline: false };
        let auth = Arc::new(AuthService::new(Default::default()));
        let local = Arc::new(LocalState::new(NodeId(1), auth, Arc::new(Metrics::default()), limits));
        let sm = StateMachine::open(store.clone(), local)?;
        Ok((dir, LogStore::open(store)?, sm))
    }
}

#[test]
fn sled_store_passes_the_openraft_suite() -> Result<(), StorageError> {
    Suite::test_all(SledBuilder)?;
    Ok(())
}
