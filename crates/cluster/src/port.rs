//! `ClusterPort`: the broker's `StatePort` on the Raft cluster. Each call
//! becomes a replicated command; it returns once the command is committed
//! and applied on this node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use starling_broker::ids::{ClientId, Epoch};
use starling_broker::message::Message;
use starling_broker::port::{ClaimOutcome, PortError, Released, SessionClaim, StatePort, SubscribeRequest};
use starling_broker::topic::TopicFilter;

use crate::forwarder::decode_delivery;
use crate::network::Channels;
use crate::pb::peer::TakeSessionRequest;
use crate::sm::SmShared;
use crate::types::{wall_ms, Command, CommandResult, EpochRec, MessageRecord, NodeId, SubRecord, WillRecord};
use crate::writer::{WriteError, Writer};

/// How long a new owner waits for the previous owner's queued messages.
const TAKE_TIMEOUT: Duration = Duration::from_secs(3);

pub struct ClusterPort {
    pub node_id: NodeId,
    pub writer: Writer,
    pub sm: Arc<SmShared>,
    pub channels: Channels,
    pub cluster_id: Arc<parking_lot::Mutex<String>>,
    pub readiness: Arc<dyn Fn() -> bool + Send + Sync>,
}

fn unavailable(e: WriteError) -> PortError {
    PortError::Unavailable(e.to_string())
}

impl ClusterPort {
    async fn write(&self, cmd: Command) -> Result<CommandResult, PortError> {
        if !(self.readiness)() {
            return Err(PortError::Unavailable("this node is not connected to a quorum".into()));
        }
        self.writer.write(cmd).await.map_err(unavailable)
    }

    /// Fetches what the previous owner still held for `client`.
    async fn take_from(
        &self,
        owner: NodeId,
        client: &str,
        claim_index: u64,
    ) -> Vec<starling_broker::message::Delivery> {
        let Some(grpc) = self.member_addr(owner) else { return Vec::new() };
        let Ok(mut c) = self.channels.peer(&grpc) else { return Vec::new() };
        let mut req = tonic::Request::new(TakeSessionRequest {
            cluster_id: self.cluster_id.lock().clone(),
            client: client.to_string(),
            claim_index,
        });
        req.set_timeout(TAKE_TIMEOUT);
        match c.take_session(req).await {
            Ok(r) => {
                let now = Instant::now();
                r.into_inner().messages.iter().map(|m| decode_delivery(m, now)).collect()
            }
            Err(e) => {
                tracing::info!(client, owner, error = %e.message(), "previous owner's queued messages not taken");
                Vec::new()
            }
        }
    }

    fn member_addr(&self, node: NodeId) -> Option<String> {
        self.sm.member_addr(node)
    }
}

#[async_trait]
impl StatePort for ClusterPort {
    async fn claim_session(&self, claim: SessionClaim) -> Result<ClaimOutcome, PortError> {
        let epoch = EpochRec::from(claim.epoch);
        let client = claim.client.to_string();
        self.sm.views.add_pending(&client, epoch, claim.runtime.clone());
        let cmd = Command::Claim {
            client: client.clone(),
            epoch,
            clean_start: claim.clean_start,
            expiry_interval: claim.expiry_interval,
            will: claim.will.as_ref().map(WillRecord::from_spec),
        };
        let result = self.write(cmd).await;
        let applied_at = self.sm.applied_index();
        match result {
            Ok(CommandResult::Claimed { session_present, previous_owner }) => {
                if session_present {
                    if let Some(prev) = previous_owner.filter(|p| *p != self.node_id) {
                        let handed = self.take_from(prev, &client, applied_at).await;
                        if !handed.is_empty() {
                            tracing::debug!(
                                client,
                                from = prev,
                                count = handed.len(),
                                "queued messages handed over"
                            );
                        }
                        claim.runtime.requeue_front(handed);
                    }
                }
                Ok(ClaimOutcome { session_present, discarded: None })
            }
            Ok(other) => {
                self.sm.views.drop_pending(&client, epoch);
                Err(PortError::Unavailable(format!("unexpected claim result {other:?}")))
            }
            Err(e) => {
                self.sm.views.drop_pending(&client, epoch);
                Err(e)
            }
        }
    }

    async fn release_session(
        &self,
        client: &ClientId,
        epoch: Epoch,
        expiry_interval: u32,
    ) -> Result<Released, PortError> {
        let cmd = Command::Release { client: client.to_string(), epoch: epoch.into(), expiry_interval };
        // Releasing must work while the node is draining, and is retried
        // by nobody: skip the readiness gate.
        match self.writer.write(cmd).await.map_err(unavailable)? {
            CommandResult::Released { ended: true } => Ok(Released::Ended),
            CommandResult::Released { ended: false } => Ok(Released::Kept),
            _ => Ok(Released::NotOwner),
        }
    }

    async fn expire_session(&self, client: &ClientId, epoch: Epoch) -> Result<bool, PortError> {
        let cmd = Command::Expire { client: client.to_string(), epoch: Some(epoch.into()) };
        match self.writer.write(cmd).await.map_err(unavailable)? {
            CommandResult::Expired(b) => Ok(b),
            _ => Ok(false),
        }
    }

    async fn subscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        subs: Vec<SubscribeRequest>,
    ) -> Result<Vec<bool>, PortError> {
        let subs = subs
            .into_iter()
            .map(|s| (s.filter.as_str().to_string(), SubRecord::new(&s.options, s.subscription_id)))
            .collect();
        match self.write(Command::Subscribe { client: client.to_string(), epoch: epoch.into(), subs }).await?
        {
            CommandResult::Subscribed(existed) => Ok(existed),
            _ => Err(PortError::NotOwner),
        }
    }

    async fn unsubscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<bool>, PortError> {
        let filters = filters.iter().map(|f| f.as_str().to_string()).collect();
        match self
            .write(Command::Unsubscribe { client: client.to_string(), epoch: epoch.into(), filters })
            .await?
        {
            CommandResult::Unsubscribed(existed) => Ok(existed),
            _ => Err(PortError::NotOwner),
        }
    }

    async fn set_retained(&self, topic: &str, message: Option<Arc<Message>>) -> Result<(), PortError> {
        let message = message.map(|m| MessageRecord::from_message(&m, wall_ms(), Instant::now()));
        self.write(Command::SetRetained { topic: topic.to_string(), message }).await.map(|_| ())
    }

    fn is_ready(&self) -> bool {
        (self.readiness)()
    }
}
