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
use crate::pb::peer::{TakeSessionRequest, WaitAppliedRequest};
use crate::sm::SmShared;
use crate::types::{wall_ms, Command, CommandResult, EpochRec, MessageRecord, NodeId, SubRecord, WillRecord};
use crate::writer::{WriteError, Writer};

/// How long a new owner waits for the previous owner's queued messages.
const TAKE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a SUBACK waits for one member to apply the subscription.
const PROPAGATE_TIMEOUT: Duration = Duration::from_secs(2);

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

/// Waits until every live member has applied `index` (each for at most
/// `PROPAGATE_TIMEOUT`; a member that does not answer is skipped: it is
/// down or cut off, and catches up before it is ready again). Used where a
/// client or an operator must be able to rely on a change being in force on
/// every node once it is acknowledged: SUBSCRIBE, users, ACL rules.
pub(crate) async fn propagate(
    node_id: NodeId,
    sm: &SmShared,
    channels: &Channels,
    cluster_id: &parking_lot::Mutex<String>,
    index: u64,
) {
    let down = sm.with_state(|s| s.down.clone());
    let members = sm.members();
    let cluster_id = cluster_id.lock().clone();
    let waits =
        members.into_iter().filter(|(id, _)| *id != node_id && !down.contains(id)).map(|(_, addr)| {
            let channels = channels.clone();
            let cluster_id = cluster_id.clone();
            async move {
                let Ok(mut c) = channels.peer(&addr) else { return };
                let mut req = tonic::Request::new(WaitAppliedRequest {
                    cluster_id,
                    index,
                    timeout_ms: PROPAGATE_TIMEOUT.as_millis() as u32,
                });
                req.set_timeout(PROPAGATE_TIMEOUT + Duration::from_millis(200));
                let _ = c.wait_applied(req).await;
            }
        });
    futures_util::future::join_all(waits).await;
}

impl ClusterPort {
    async fn write_indexed(&self, cmd: Command) -> Result<(CommandResult, u64), PortError> {
        if !(self.readiness)() {
            return Err(PortError::Unavailable("this node is not connected to a quorum".into()));
        }
        self.writer.write(cmd).await.map_err(unavailable)
    }

    async fn write(&self, cmd: Command) -> Result<CommandResult, PortError> {
        self.write_indexed(cmd).await.map(|(r, _)| r)
    }

    async fn propagate(&self, index: u64) {
        propagate(self.node_id, &self.sm, &self.channels, &self.cluster_id, index).await;
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
            will: claim.will.as_ref().map(|w| Box::new(WillRecord::from_spec(w))),
        };
        let result = self.write_indexed(cmd).await;
        match result {
            Ok((CommandResult::Claimed { session_present, previous_owner }, applied_at)) => {
                if session_present {
                    if let Some(prev) = previous_owner.filter(|p| *p != self.node_id) {
                        // Publishers everywhere must route to this node
                        // before the client is told it is connected.
                        self.propagate(applied_at).await;
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
            Ok((other, _)) => {
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
        match self.writer.write(cmd).await.map_err(unavailable)?.0 {
            CommandResult::Released { ended: true } => Ok(Released::Ended),
            CommandResult::Released { ended: false } => Ok(Released::Kept),
            _ => Ok(Released::NotOwner),
        }
    }

    async fn expire_session(&self, client: &ClientId, epoch: Epoch) -> Result<bool, PortError> {
        let cmd = Command::Expire { client: client.to_string(), epoch: Some(epoch.into()) };
        match self.writer.write(cmd).await.map_err(unavailable)?.0 {
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
        let cmd = Command::Subscribe { client: client.to_string(), epoch: epoch.into(), subs };
        match self.write_indexed(cmd).await? {
            (CommandResult::Subscribed(existed), index) => {
                self.propagate(index).await;
                Ok(existed)
            }
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

    fn subscription_filters(&self, client: &ClientId) -> Vec<String> {
        self.sm.with_state(|s| {
            s.sessions
                .get(client.as_str())
                .map(|r| r.subscriptions.keys().cloned().collect())
                .unwrap_or_default()
        })
    }
}
