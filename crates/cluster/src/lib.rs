//! Starling's cluster: the broker's `StatePort` on openraft (two Raft
//! groups: the main one, and one for the durable queues) and sled, with
//! tonic gRPC services for peers (Raft RPCs,
//! forwarded writes, publish forwarding, session handoff) and operators
//! (status, membership, users, rules).
//!
//! Control plane: the broker's replicated commands go through Raft in
//! leader-stamped batches (`types::Batch`); the state machine (`sm.rs`)
//! applies them with the broker's own `ReplicatedState::apply` and hands
//! the changes to the broker's `LocalState`. This crate adds storage,
//! agreement and transport, never session rules. Data plane: publishes
//! never go through Raft; they travel on one ordered stream per peer
//! (`forwarder.rs`). `node.rs` shows how the parts are wired.

// The error types in signatures are openraft's `StorageError` and tonic's
// `Status`, which the traits this crate implements dictate.
#![allow(clippy::result_large_err)]

pub mod admin_rules;
pub mod admin_service;
pub mod bulk;
pub mod error;
pub mod forwarder;
pub mod lane;
pub mod liveness;
pub mod log_store;
pub mod membership;
pub mod network;
pub mod node;
pub mod on_disk;
pub mod pb;
pub mod peer_client;
pub mod peer_service;
pub mod port;
pub mod queue_group;
pub mod readiness;
pub mod sm;
pub mod status;
pub mod storage;
pub mod submitter;
pub mod types;
pub mod wal;
pub mod wire;
pub mod writer;

pub use node::{ClusterConfig, ClusterNode};
