//! The port between the MQTT domain and replicated state.
//!
//! Everything that must be the same on every node goes through `StatePort`:
//! who owns a client id, which subscriptions exist, which retained message
//! each topic has. A call returns once the change is applied on this node
//! (for the cluster: committed through Raft and applied locally), which is
//! what lets the broker acknowledge only what is stored. The implementation
//! keeps the derived views (`RouteTable`, `RetainedStore`,
//! `SessionRegistry`) up to date as it applies changes, including changes
//! that other nodes made.

use std::sync::Arc;

use async_trait::async_trait;
use starling_codec::SubscriptionOptions;

use crate::ids::{ClientId, Epoch};
use crate::message::Message;
use crate::session::Session;
use crate::topic::TopicFilter;
use crate::will::WillSpec;

#[derive(Debug, Clone, thiserror::Error)]
pub enum PortError {
    /// The change cannot be committed now (no quorum, no leader). CONNECT
    /// answers "server unavailable"; other requests close the connection.
    #[error("replicated state unavailable: {0}")]
    Unavailable(String),
    /// The connection no longer owns the session (it was taken over).
    #[error("session is owned by another connection")]
    NotOwner,
    /// A limit of the replicated store (e.g. subscriptions per client).
    #[error("quota exceeded: {0}")]
    Quota(String),
}

/// A connection's claim on a client id.
#[derive(Debug, Clone)]
pub struct SessionClaim {
    pub client: ClientId,
    pub epoch: Epoch,
    /// Discard any existing session (3.x clean session, 5.0 clean start).
    pub clean_start: bool,
    /// Seconds the session lives after the connection ends (0 = ends with
    /// it, u32::MAX = never expires).
    pub expiry_interval: u32,
    /// The runtime to install on this node: a fresh one, or the existing
    /// runtime when resuming a session held here.
    pub runtime: Arc<Session>,
    /// The connection's will, kept with the replicated session so that it
    /// is published even if this node dies.
    pub will: Option<WillSpec>,
}

#[derive(Debug, Clone)]
pub struct ClaimOutcome {
    /// A previous session was resumed (CONNACK session present).
    pub session_present: bool,
    /// The runtime of a session this claim ended (clean start over an
    /// existing session), so its pending will can be published.
    pub discarded: Option<Arc<Session>>,
}

/// One entry of a SUBSCRIBE.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// How a connection's end affects its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The session ended (expiry 0) and its subscriptions are gone.
    Ended,
    /// The session stays, disconnected, until it expires or is resumed.
    Kept,
    /// Another connection owns the session now; nothing changed.
    NotOwner,
}

#[async_trait]
pub trait StatePort: Send + Sync + 'static {
    /// Claims `claim.client` for `claim.epoch`; the previous owner, on any
    /// node, is told to close with "session taken over".
    async fn claim_session(&self, claim: SessionClaim) -> Result<ClaimOutcome, PortError>;

    /// Connection `epoch` ended. With `expiry_interval` 0 the session and
    /// its subscriptions are removed; otherwise it is kept, disconnected.
    async fn release_session(
        &self,
        client: &ClientId,
        epoch: Epoch,
        expiry_interval: u32,
    ) -> Result<Released, PortError>;

    /// Removes a disconnected session whose expiry passed, if `epoch` was
    /// still its last owner. Returns whether it was removed.
    async fn expire_session(&self, client: &ClientId, epoch: Epoch) -> Result<bool, PortError>;

    /// Adds or replaces subscriptions. Returns, per request, whether the
    /// subscription already existed (for retain handling 1).
    async fn subscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        subs: Vec<SubscribeRequest>,
    ) -> Result<Vec<bool>, PortError>;

    /// Removes subscriptions; returns, per filter, whether it existed.
    async fn unsubscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<bool>, PortError>;

    /// Sets (`Some`) or clears (`None`) the retained message of `topic`.
    async fn set_retained(&self, topic: &str, message: Option<Arc<Message>>) -> Result<(), PortError>;

    /// Whether this node can commit changes now (readiness).
    fn is_ready(&self) -> bool;

    /// The filters `client` is subscribed to, as applied on this node.
    fn subscription_filters(&self, client: &ClientId) -> Vec<String>;
}
