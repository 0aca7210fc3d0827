//! The replicated state: what every node of a cluster agrees on, and what
//! that agreement means for each node.
//!
//! - `command`: the `Command`s a node proposes, and their results.
//! - `state`: `ReplicatedState` and its deterministic `apply`, which turns
//!   a command into a result and a list of `StateChange`s.
//! - `change`: the `StateChange` vocabulary (session claimed, adopted,
//!   ended; subscription added, removed; retained set; will published;
//!   users, rules).
//! - `queue`: the durable queues of persistent sessions (QoS 1/2 messages
//!   stored on a majority before their publisher is acknowledged).
//! - `applier`: `LocalState`, which carries the changes out on this node's
//!   sessions and views — the broker's rules, written once.
//!
//! A `StatePort` implementation only decides how commands are agreed on
//! (one process, or Raft): both ports run the same `apply` and the same
//! applier, so their semantics cannot drift.

mod applier;
mod change;
mod command;
mod queue;
mod records;
mod state;
#[cfg(test)]
mod tests;

pub use applier::{LocalState, Views};
pub use change::StateChange;
pub use command::{Command, CommandResult, WillOnRelease};
pub use queue::{
    packet_id_for, DurableQueue, DurableTarget, QueueGroupState, QueueLimits, QueueState, QueuedMessage,
    MAX_PER_SESSION,
};
pub use records::{expires_in_ms, SessionRecord, StoredMessage, Subscription};
pub use state::ReplicatedState;

/// This process's wall clock in milliseconds since the Unix epoch: the
/// replicated time a proposer (the Raft leader, the in-memory port)
/// stamps on what it commits.
pub fn wall_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}
