//! `MemoryState`: the single-process implementation of `StatePort`.
//!
//! Applies every change immediately under one lock, with the same
//! semantics the replicated state machine has, so the broker can run and
//! be tested without a cluster. Nothing survives a restart.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use parking_lot::Mutex;
use starling_codec::{ReasonCode, SubscriptionOptions};

use crate::ids::{ClientId, Epoch};
use crate::message::Message;
use crate::port::{ClaimOutcome, PortError, Released, SessionClaim, StatePort, SubscribeRequest};
use crate::registry::SessionRegistry;
use crate::retained::RetainedStore;
use crate::routes::{Route, RouteTable, RouteTarget};
use crate::topic::TopicFilter;

#[derive(Debug)]
struct Record {
    owner: Epoch,
    connected: bool,
    subscriptions: HashMap<TopicFilter, (SubscriptionOptions, Option<u32>)>,
}

/// The derived views a `StatePort` implementation keeps current.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub routes: Arc<RouteTable>,
    pub retained: Arc<RetainedStore>,
    pub registry: Arc<SessionRegistry>,
}

#[derive(Debug)]
pub struct MemoryState {
    views: Views,
    records: Mutex<HashMap<ClientId, Record>>,
}

impl MemoryState {
    pub fn new(views: Views) -> MemoryState {
        MemoryState { views, records: Mutex::new(HashMap::new()) }
    }

    fn remove_routes(&self, client: &ClientId, rec: &Record) {
        for filter in rec.subscriptions.keys() {
            self.views.routes.remove(filter, client);
        }
    }
}

#[async_trait]
impl StatePort for MemoryState {
    async fn claim_session(&self, claim: SessionClaim) -> Result<ClaimOutcome, PortError> {
        let mut records = self.records.lock();
        let client = claim.client.clone();
        let mut session_present = false;
        let mut discarded = None;
        if let Some(old) = records.get_mut(&client) {
            if old.connected && old.owner != claim.epoch {
                self.views.registry.kick(&client, Some(old.owner), ReasonCode::SESSION_TAKEN_OVER);
            }
            if claim.clean_start {
                if let Some(old) = records.remove(&client) {
                    self.remove_routes(&client, &old);
                }
                if let Some(prev) = self.views.registry.get(&client) {
                    if !Arc::ptr_eq(&prev, &claim.runtime) {
                        discarded = Some(prev);
                    }
                }
            } else {
                session_present = true;
                old.owner = claim.epoch;
                old.connected = true;
                for filter in old.subscriptions.keys() {
                    self.views.routes.retarget(filter, &client, RouteTarget::Local(claim.runtime.clone()));
                }
            }
        }
        if !session_present {
            records.insert(
                client.clone(),
                Record { owner: claim.epoch, connected: true, subscriptions: HashMap::new() },
            );
        }
        self.views.registry.insert(claim.runtime.clone());
        Ok(ClaimOutcome { session_present, discarded })
    }

    async fn release_session(
        &self,
        client: &ClientId,
        epoch: Epoch,
        expiry_interval: u32,
    ) -> Result<Released, PortError> {
        let mut records = self.records.lock();
        let Some(rec) = records.get_mut(client) else { return Ok(Released::NotOwner) };
        if rec.owner != epoch {
            return Ok(Released::NotOwner);
        }
        if expiry_interval == 0 {
            if let Some(rec) = records.remove(client) {
                self.remove_routes(client, &rec);
            }
            if let Some(s) = self.views.registry.get(client) {
                self.views.registry.remove_if_same(&s);
            }
            Ok(Released::Ended)
        } else {
            rec.connected = false;
            Ok(Released::Kept)
        }
    }

    async fn expire_session(&self, client: &ClientId, epoch: Epoch) -> Result<bool, PortError> {
        let mut records = self.records.lock();
        match records.get(client) {
            Some(rec) if rec.owner == epoch && !rec.connected => {
                if let Some(rec) = records.remove(client) {
                    self.remove_routes(client, &rec);
                }
                if let Some(s) = self.views.registry.get(client) {
                    self.views.registry.remove_if_same(&s);
                }
                Ok(true)
            }
            _ => Ok(false),
        }
    }

    async fn subscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        subs: Vec<SubscribeRequest>,
    ) -> Result<Vec<bool>, PortError> {
        let mut records = self.records.lock();
        let rec = records.get_mut(client).filter(|r| r.owner == epoch).ok_or(PortError::NotOwner)?;
        let runtime = self.views.registry.get(client).ok_or(PortError::NotOwner)?;
        let mut existed = Vec::with_capacity(subs.len());
        for s in subs {
            let route = Route {
                client: client.clone(),
                options: s.options,
                subscription_id: s.subscription_id,
                target: RouteTarget::Local(runtime.clone()),
            };
            self.views.routes.insert(&s.filter, route);
            existed.push(rec.subscriptions.insert(s.filter, (s.options, s.subscription_id)).is_some());
        }
        Ok(existed)
    }

    async fn unsubscribe(
        &self,
        client: &ClientId,
        epoch: Epoch,
        filters: Vec<TopicFilter>,
    ) -> Result<Vec<bool>, PortError> {
        let mut records = self.records.lock();
        let rec = records.get_mut(client).filter(|r| r.owner == epoch).ok_or(PortError::NotOwner)?;
        Ok(filters
            .into_iter()
            .map(|f| {
                self.views.routes.remove(&f, client);
                rec.subscriptions.remove(&f).is_some()
            })
            .collect())
    }

    async fn set_retained(&self, topic: &str, message: Option<Arc<Message>>) -> Result<(), PortError> {
        self.views.retained.set(topic, message);
        Ok(())
    }

    fn is_ready(&self) -> bool {
        true
    }

    fn subscription_filters(&self, client: &ClientId) -> Vec<String> {
        self.records
            .lock()
            .get(client)
            .map(|r| r.subscriptions.keys().map(|f| f.as_str().to_string()).collect())
            .unwrap_or_default()
    }
}
