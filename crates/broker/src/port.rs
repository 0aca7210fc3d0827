//! The port between the MQTT domain and replicated state.
//!
//! Everything that must be the same on every node is a `Command`
//! (replicated/command.rs) committed through `StatePort`. A commit returns
//! once the command is applied on this node (for the cluster: committed
//! through Raft and applied locally), which is what lets the broker
//! acknowledge only what is stored. Implementations apply commands with
//! `ReplicatedState::apply` and hand the resulting changes to the node's
//! `LocalState`; the rules live there, once, for every implementation.

use std::future::Future;
use std::pin::Pin;

use async_trait::async_trait;

use crate::replicated::{Command, CommandResult, QueueState, ReplicatedState};

#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// The change cannot be committed now (no quorum, no leader). CONNECT
    /// answers "server unavailable"; other requests close the connection.
    #[error("replicated state unavailable: {0}")]
    Unavailable(String),
    /// The change was handed to the replicated log, but whether it was
    /// committed is unknown (a timeout, a leader change): it may still
    /// take effect.
    #[error("outcome unknown: {0}")]
    Unknown(String),
    /// The connection no longer owns the session (it was taken over).
    #[error("session is owned by another connection")]
    NotOwner,
}

/// The outcome of commands handed to the log by `StatePort::submit_all`.
pub type PendingCommit = Pin<Box<dyn Future<Output = Result<Vec<CommandResult>, PortError>> + Send>>;

#[async_trait]
pub trait StatePort: Send + Sync + 'static {
    /// Commits `cmd` and returns its result once it is applied on this
    /// node. What the implementation adds beyond that is its own policy
    /// (the cluster, for instance, waits until every live node applied a
    /// subscription before returning).
    async fn commit(&self, cmd: Command) -> Result<CommandResult, PortError>;

    /// Commits `cmds` together and in this order (one log entry in the
    /// cluster): the durable path keeps a publisher's messages in order
    /// this way. Results in the same order.
    async fn commit_all(&self, cmds: Vec<Command>) -> Result<Vec<CommandResult>, PortError>;

    /// Hands `cmds` to the log as one entry and returns the wait for their
    /// results: groups handed over one after another are committed in
    /// that order even when the caller does not wait for one before
    /// handing over the next (the durable path keeps several groups in
    /// flight this way). An implementation that cannot keep pending
    /// groups in order commits before returning (this default).
    async fn submit_all(&self, cmds: Vec<Command>) -> PendingCommit {
        let r = self.commit_all(cmds).await;
        Box::pin(std::future::ready(r))
    }

    /// Whether this node can commit changes now (readiness).
    fn is_ready(&self) -> bool;

    /// Reads the replicated state as applied on this node.
    fn read(&self, f: &mut dyn FnMut(&ReplicatedState));

    /// Reads the durable queues as applied on this node (kept in the
    /// replicated state unless the implementation keeps them apart).
    fn read_queues(&self, f: &mut dyn FnMut(&QueueState)) {
        self.read(&mut |s| f(s.queues()))
    }
}
