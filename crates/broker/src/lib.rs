//! Starling's MQTT domain: sessions and their QoS state machines, the
//! route table (topic filter trie with `$share` groups), retained messages,
//! wills, `$SYS`, metrics, and the connection driver that speaks MQTT 3.1,
//! 3.1.1 and 5.0 over any byte stream.
//!
//! Replicated state (`replicated/`: commands, the deterministic `apply`,
//! and the one applier of its changes) sits behind `port::StatePort`.
//! `memory::MemoryPort` implements it for a single process; the cluster
//! crate implements it on openraft + sled. This crate never depends on
//! either.

pub mod auth;
mod broker;
pub mod config;
#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
pub mod connection;
pub mod deadlines;
pub mod durable;
pub mod forward;
pub mod ids;
pub mod memory;
pub mod message;
pub mod metrics;
mod ops;
pub mod port;
pub mod registry;
pub mod replicated;
pub mod retained;
mod router;
pub mod routes;
pub mod session;
pub mod sys;
pub mod topic;
pub mod will;

pub use broker::{Broker, BrokerParts};
pub use config::{ConfigError, MqttConfig};
pub use connection::{serve, ConnectionInfo};
pub use ops::{Released, SessionClaim, SubscribeRequest};
pub use router::{PublishOutcome, RoutePlan};
