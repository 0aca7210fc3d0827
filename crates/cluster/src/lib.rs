//! Starling's cluster: the replicated state behind the broker's
//! `StatePort`, on openraft (one Raft group) and sled, with tonic gRPC
//! services for peers (Raft RPCs, forwarded writes, publish forwarding,
//! session handoff) and operators (status, membership).
//!
//! Control plane: small commands through Raft (`types::Command`), applied
//! deterministically (`state.rs`) with leader-stamped time; every node
//! derives its route table and retained view from what it applied
//! (`views.rs`). Data plane: publishes never go through Raft; they travel
//! on one ordered stream per peer (`forwarder.rs`).

// The error types in signatures are openraft's `StorageError` and tonic's
// `Status`, which the traits this crate implements dictate.
#![allow(clippy::result_large_err)]

pub mod admin_service;
pub mod forwarder;
pub mod log_store;
pub mod network;
pub mod node;
pub mod pb;
pub mod peer_service;
pub mod port;
pub mod sm;
pub mod state;
pub mod storage;
pub mod types;
pub mod views;
pub mod writer;

pub use node::{ClusterConfig, ClusterNode};
