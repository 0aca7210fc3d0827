//! `LocalViews`: carries out the local effects of applied commands on this
//! node's derived views — the route table, the retained view, the session
//! registry — and on its connections (closing one whose session moved,
//! delivering a will released by a replicated command).

use std::collections::HashMap;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::Mutex;
use starling_broker::ids::ClientId;
use starling_broker::memory::Views;
use starling_broker::metrics::Metrics;
use starling_broker::routes::{Route, RouteTarget};
use starling_broker::session::{Session, SessionLimits};
use starling_broker::topic::{TopicFilter, TopicLimits};
use starling_broker::Broker;
use starling_codec::ReasonCode;

use crate::state::{Effect, ReplicatedState};
use crate::types::{wall_ms, EpochRec, NodeId, SubRecord};

/// Filters were validated by the node that proposed them; applying must
/// never fail on a limit changed since, so parsing here uses the widest.
const APPLY_LIMITS: TopicLimits = TopicLimits { max_len: 65_535, max_levels: usize::MAX };

pub struct LocalViews {
    pub node_id: NodeId,
    pub views: Views,
    limits: SessionLimits,
    metrics: Arc<Metrics>,
    /// Runtimes of claims this node proposed, installed when they apply.
    pending: Mutex<HashMap<(String, EpochRec), Arc<Session>>>,
    /// Runtimes of sessions that moved to another node, kept until that
    /// node takes their queued messages (`TakeSession`).
    handoff: Mutex<HashMap<String, Arc<Session>>>,
    broker: OnceLock<Broker>,
}

impl LocalViews {
    pub fn new(node_id: NodeId, views: Views, limits: SessionLimits, metrics: Arc<Metrics>) -> LocalViews {
        LocalViews {
            node_id,
            views,
            limits,
            metrics,
            pending: Mutex::new(HashMap::new()),
            handoff: Mutex::new(HashMap::new()),
            broker: OnceLock::new(),
        }
    }

    /// Connects the views to the broker; its auth service receives the
    /// replicated users and rules applied so far.
    pub fn set_broker(&self, b: Broker, state: &ReplicatedState) {
        let _ = self.broker.set(b);
        self.sync_auth(state, true, true);
    }

    /// Registers the runtime a claim proposed here will install.
    pub fn add_pending(&self, client: &str, epoch: EpochRec, runtime: Arc<Session>) {
        self.pending.lock().insert((client.to_string(), epoch), runtime);
    }

    pub fn drop_pending(&self, client: &str, epoch: EpochRec) {
        self.pending.lock().remove(&(client.to_string(), epoch));
    }

    /// The runtime of a session that moved away, for its new owner.
    pub fn take_handoff(&self, client: &str) -> Option<Arc<Session>> {
        self.handoff.lock().remove(client)
    }

    fn runtime(&self, client: &str) -> Arc<Session> {
        let id = ClientId::new(client);
        if let Some(s) = self.views.registry.get(&id) {
            return s;
        }
        // A session owned here with no connection (e.g. after a restart):
        // an offline runtime queues its messages.
        let s = Arc::new(Session::new(id, self.limits, self.metrics.clone()));
        self.views.registry.insert(s.clone());
        s
    }

    fn target(&self, client: &str, owner: Option<NodeId>) -> RouteTarget {
        match owner {
            Some(n) if n == self.node_id => RouteTarget::Local(self.runtime(client)),
            Some(n) => RouteTarget::Remote(starling_broker::ids::NodeId(n)),
            None => RouteTarget::Unowned,
        }
    }

    fn route(&self, client: &str, sub: &SubRecord, target: RouteTarget) -> Route {
        Route {
            client: ClientId::new(client),
            options: sub.options(),
            subscription_id: sub.subscription_id,
            target,
        }
    }

    /// Removes a local runtime from the registry and marks it ended. A
    /// connection still attached to it (a clean start by another
    /// connection discarded the session) is closed as taken over.
    fn end_local(&self, client: &str) {
        if let Some(s) = self.views.registry.remove(&ClientId::new(client)) {
            s.kick(None, ReasonCode::SESSION_TAKEN_OVER);
            s.mark_ended();
        }
        self.handoff.lock().remove(client);
    }

    fn sync_auth(&self, state: &ReplicatedState, users: bool, acl: bool) {
        if let Some(b) = self.broker.get() {
            if users {
                b.auth().set_replicated_users(state.users.clone());
            }
            if acl {
                b.auth().set_replicated_rules(state.acl.clone());
            }
        }
    }

    pub fn apply(&self, effects: Vec<Effect>, state: &ReplicatedState) {
        let now_wall = wall_ms();
        let now = Instant::now();
        for fx in effects {
            match fx {
                Effect::RouteAdd { client, filter, sub, owner } => {
                    let Ok(f) = TopicFilter::parse(&filter, &APPLY_LIMITS) else { continue };
                    let target = self.target(&client, owner);
                    self.views.routes.insert(&f, self.route(&client, &sub, target));
                }
                Effect::RouteRemove { client, filter } => {
                    if let Ok(f) = TopicFilter::parse(&filter, &APPLY_LIMITS) {
                        self.views.routes.remove(&f, &ClientId::new(&client));
                    }
                }
                Effect::Owner { client, owner, filters } => {
                    if owner != Some(self.node_id) {
                        // Keep a runtime that moved to another node for its
                        // handoff; drop one that nobody owns any more.
                        if let Some(s) = self.views.registry.remove(&ClientId::new(&client)) {
                            if owner.is_some() {
                                self.handoff.lock().insert(client.clone(), s);
                            } else {
                                s.mark_ended();
                            }
                        }
                    }
                    let target = self.target(&client, owner);
                    let id = ClientId::new(&client);
                    for filter in filters {
                        if let Ok(f) = TopicFilter::parse(&filter, &APPLY_LIMITS) {
                            self.views.routes.retarget(&f, &id, target.clone());
                        }
                    }
                }
                Effect::RetainedSet { topic, message } => {
                    let m = message.map(|m| m.to_message(now_wall, now));
                    self.views.retained.set(&topic, m);
                }
                Effect::Claimed { client, epoch, previous, discarded } => {
                    let id = ClientId::new(&client);
                    if let Some((node, old)) = previous {
                        if node == self.node_id {
                            self.views.registry.kick(&id, Some(old.into()), ReasonCode::SESSION_TAKEN_OVER);
                        }
                    }
                    if discarded || epoch.node != self.node_id {
                        // Clean start elsewhere, or a fresh session here:
                        // a local runtime from before is finished.
                        if discarded {
                            self.end_local(&client);
                        }
                    }
                    if epoch.node == self.node_id {
                        let runtime = self.pending.lock().remove(&(client.clone(), epoch));
                        match runtime {
                            Some(r) => {
                                self.handoff.lock().remove(&client);
                                if let Some(prev) = self.views.registry.insert(r.clone()) {
                                    if !Arc::ptr_eq(&prev, &r) {
                                        prev.mark_ended();
                                    }
                                }
                            }
                            None => {
                                // Replayed after a restart: no connection is
                                // waiting; an offline runtime holds the place.
                                self.runtime(&client);
                            }
                        }
                    }
                }
                Effect::Ended { client, .. } => self.end_local(&client),
                Effect::Orphaned { client, old_owner, epoch } => {
                    if old_owner == self.node_id {
                        // This node was declared gone while the client was
                        // still connected here: send it elsewhere.
                        self.views.registry.kick(
                            &ClientId::new(&client),
                            Some(epoch.into()),
                            ReasonCode::USE_ANOTHER_SERVER,
                        );
                    }
                }
                Effect::Users => self.sync_auth(state, true, false),
                Effect::Acl => self.sync_auth(state, false, true),
                Effect::Will { message } => {
                    if let Some(b) = self.broker.get() {
                        let m = message.to_message(now_wall, now);
                        b.metrics().wills_published.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        b.deliver_replicated(&m);
                    }
                }
            }
        }
    }

    /// Rebuilds every view from a full state (snapshot install, start).
    pub fn rebuild(&self, state: &ReplicatedState) {
        self.sync_auth(state, true, true);
        let now_wall = wall_ms();
        let now = Instant::now();
        self.views.routes.clear();
        self.views.retained.clear();
        for (topic, m) in &state.retained {
            self.views.retained.set(topic, Some(m.to_message(now_wall, now)));
        }
        // Local runtimes: keep those still owned here, end the others.
        for s in self.views.registry.all() {
            let keep =
                state.sessions.get(s.client_id().as_str()).is_some_and(|r| r.owner == Some(self.node_id));
            if !keep {
                if let Some(old) = self.views.registry.remove(s.client_id()) {
                    old.kick(None, ReasonCode::USE_ANOTHER_SERVER);
                    old.mark_ended();
                }
            }
        }
        for (client, rec) in &state.sessions {
            let target = self.target(client, rec.owner);
            for (filter, sub) in &rec.subscriptions {
                if let Ok(f) = TopicFilter::parse(filter, &APPLY_LIMITS) {
                    self.views.routes.insert(&f, self.route(client, sub, target.clone()));
                }
            }
        }
    }
}
