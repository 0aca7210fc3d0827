//! The port for delivering to subscribers on other nodes.
//!
//! The router decides, per publish, which other nodes must receive it and
//! what for (`RemotePlan`); the cluster implements `Forwarder` with one
//! ordered stream per peer. A node that receives a forwarded message
//! delivers it to its own local subscribers only (`Broker::deliver_local`)
//! and never forwards it again.

use std::sync::Arc;

use starling_codec::QoS;
use tokio::sync::oneshot;

use crate::ids::{ClientId, NodeId};
use crate::message::Message;

/// A `$share` member on another node, chosen by the publishing node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SharedTarget {
    pub client: ClientId,
    pub qos: QoS,
    pub subscription_id: Option<u32>,
}

/// What one remote node must do with a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemotePlan {
    pub node: NodeId,
    /// Deliver to the node's matching (non-shared) local subscribers.
    pub deliver_normal: bool,
    /// Shared-subscription members on that node that were picked.
    pub shared: Vec<SharedTarget>,
}

/// Completes when every node in the plans acknowledged the message (or
/// was given up on, e.g. because it is down).
pub type AckWaiter = oneshot::Receiver<()>;

pub trait Forwarder: Send + Sync + 'static {
    /// Queues `msg` for each planned node. With `want_ack` (QoS 1/2) it
    /// returns a waiter the publisher's acknowledgement waits for.
    fn forward(&self, msg: &Arc<Message>, plans: Vec<RemotePlan>, want_ack: bool) -> Option<AckWaiter>;
}
