//! The broker's replicated operations: what a connection asks of the
//! cluster, as commands committed through the state port. Each returns
//! once the change is applied on this node; the rules of what it does to
//! sessions, routes and wills are in `replicated/`.

use std::sync::Arc;
use std::time::Instant;

use starling_codec::SubscriptionOptions;

use crate::broker::Broker;
use crate::ids::{ClientId, Epoch};
use crate::message::{Delivery, Message};
use crate::port::PortError;
use crate::replicated::{expires_in_ms, Command, CommandResult, StoredMessage, Subscription, WillOnRelease};
use crate::routes::{Route, RouteTarget};
use crate::session::Session;
use crate::topic::TopicFilter;
use crate::will::WillSpec;

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
    pub will: Option<Box<WillSpec>>,
}

/// One entry of a SUBSCRIBE.
#[derive(Debug, Clone)]
pub struct SubscribeRequest {
    pub filter: TopicFilter,
    pub options: SubscriptionOptions,
    pub subscription_id: Option<u32>,
}

/// How a connection's end affected its session.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Released {
    /// The session ended (expiry 0) and its subscriptions are gone.
    Ended,
    /// The session stays, disconnected, until it expires or is resumed.
    Kept,
    /// Another connection owns the session now; nothing changed.
    NotOwner,
}

fn unexpected(r: CommandResult) -> PortError {
    PortError::Unavailable(format!("unexpected result {r:?}"))
}

impl Broker {
    /// Claims the client id for `claim.epoch`: any live connection of it,
    /// on any node, is closed as taken over. Returns whether a previous
    /// session was resumed (CONNACK session present).
    pub async fn claim_session(&self, claim: SessionClaim) -> Result<bool, PortError> {
        let local = &self.inner.local;
        local.expect_claim(claim.epoch, claim.runtime);
        let cmd = Command::Claim {
            client: claim.client,
            epoch: claim.epoch,
            clean_start: claim.clean_start,
            expiry_interval: claim.expiry_interval,
            will: claim.will,
        };
        let result = self.inner.port.commit(cmd).await;
        match result {
            Ok(CommandResult::Claimed { session_present, .. }) => Ok(session_present),
            Ok(other) => {
                local.forget_claim(claim.epoch);
                Err(unexpected(other))
            }
            Err(e) => {
                local.forget_claim(claim.epoch);
                Err(e)
            }
        }
    }

    /// Connection `epoch` of `client` ended.
    pub async fn release_session(
        &self,
        client: &ClientId,
        epoch: Epoch,
        expiry_interval: u32,
        will: WillOnRelease,
    ) -> Result<Released, PortError> {
        let cmd = Command::Release { client: client.clone(), epoch, expiry_interval, will };
        match self.inner.port.commit(cmd).await? {
            CommandResult::Released { ended: true } => Ok(Released::Ended),
            CommandResult::Released { ended: false } => Ok(Released::Kept),
            _ => Ok(Released::NotOwner),
        }
    }

    /// Adds or replaces subscriptions; returns, per request, whether it
    /// already existed (for retain handling 1).
    pub async fn subscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        subs: Vec<SubscribeRequest>,
    ) -> Result<Vec<bool>, PortError> {
        let subs = subs
            .into_iter()
            .map(|s| (s.filter, Subscription { options: s.options, id: s.subscription_id }))
            .collect();
        match self.inner.port.commit(Command::Subscribe { client: client.clone(), epoch, subs }).await? {
            CommandResult::Subscribed(existed) => Ok(existed),
            CommandResult::NotOwner => Err(PortError::NotOwner),
            other => Err(unexpected(other)),
        }
    }

    /// Removes subscriptions; returns, per filter, whether it existed.
    pub async fn unsubscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<bool>, PortError> {
        match self.inner.port.commit(Command::Unsubscribe { client: client.clone(), epoch, filters }).await? {
            CommandResult::Unsubscribed(existed) => Ok(existed),
            CommandResult::NotOwner => Err(PortError::NotOwner),
            other => Err(unexpected(other)),
        }
    }

    /// Stores the retained state of a PUBLISH with RETAIN set (an empty
    /// payload clears the topic).
    pub async fn retain(&self, msg: &Arc<Message>) -> Result<(), PortError> {
        let (message, expires_in_ms) = if msg.payload.is_empty() {
            (None, None)
        } else {
            (Some(StoredMessage::from_message(msg)), expires_in_ms(msg, Instant::now()))
        };
        let cmd = Command::SetRetained { topic: msg.topic.clone(), message, expires_in_ms };
        self.inner.port.commit(cmd).await.map(|_| ())
    }

    /// Puts `subs` in force on this node at once, for `runtime`, with their
    /// retained messages queued first (per retain handling), so that no
    /// newer live message on the same topic overtakes them. A client that
    /// subscribes and then has another connection publish through this
    /// node expects delivery even before its SUBACK; the replicated
    /// subscribe that follows installs the same routes on every node (and
    /// the SUBACK waits for that), or, if it fails, `take_back` undoes
    /// these. Returns, per request, whether the subscription existed.
    pub(crate) fn subscribe_here(&self, runtime: &Arc<Session>, subs: &[SubscribeRequest]) -> Vec<bool> {
        let client = runtime.client_id();
        let mut existed = vec![false; subs.len()];
        self.inner.port.read(&mut |s| {
            if let Some(r) = s.session(client) {
                for (e, sub) in existed.iter_mut().zip(subs) {
                    *e = r.subscriptions.contains_key(&sub.filter);
                }
            }
        });
        for (sub, existed) in subs.iter().zip(&existed) {
            let rh = sub.options.retain_handling;
            if !(sub.filter.is_shared() || rh == 2 || (rh == 1 && *existed)) {
                for m in self.retained_matching(sub.filter.filter()) {
                    runtime.enqueue(Delivery {
                        qos: m.qos.min(sub.options.qos),
                        message: m,
                        retain: true,
                        subscription_ids: sub.subscription_id.into_iter().collect(),
                        durable: None,
                    });
                }
            }
            let route = Route {
                client: client.clone(),
                options: sub.options,
                subscription_id: sub.subscription_id,
                target: RouteTarget::Local(runtime.clone()),
                durable: runtime.durable(),
            };
            self.inner.views.routes.insert(&sub.filter, route);
        }
        existed
    }

    /// Undoes `subscribe_here` after the replicated subscribe failed: each
    /// route is again what the applied state says.
    pub(crate) fn take_back(&self, client: &ClientId, subs: &[SubscribeRequest]) {
        let local = &self.inner.local;
        self.inner.port.read(&mut |s| {
            for sub in subs {
                local.restore_route(s.session(client), client, &sub.filter);
            }
        });
    }

    /// The filters `client` is subscribed to, as applied on this node.
    pub fn subscription_filters(&self, client: &ClientId) -> Vec<TopicFilter> {
        let mut out = Vec::new();
        self.inner.port.read(&mut |s| {
            if let Some(r) = s.session(client) {
                out = r.filters();
            }
        });
        out
    }
}
