//! `LocalState`: the one place that carries out what applied commands
//! mean for this node — its session runtimes, route table, retained view,
//! wills and auth data. Every `StatePort` implementation feeds it the
//! `StateChange`s of each applied command, in log order; it never reads
//! the replicated state back, and holds no reference to the broker or the
//! port (wiring goes one way: port → applier → views).

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use starling_codec::ReasonCode;

use crate::auth::AuthService;
use crate::ids::{ClientId, Epoch, Incarnation, NodeId};
use crate::message::{Delivery, DurableRef};
use crate::metrics::Metrics;
use crate::registry::SessionRegistry;
use crate::replicated::change::StateChange;
use crate::replicated::queue::{DurableQueue, QueueState, QueuedMessage};
use crate::replicated::records::{SessionRecord, Subscription};
use crate::replicated::state::ReplicatedState;
use crate::retained::RetainedStore;
use crate::router::deliver_replicated;
use crate::routes::{Route, RouteTable, RouteTarget};
use crate::session::{Session, SessionLimits};
use crate::topic::TopicFilter;

/// The views of replicated state a node derives for its publish path.
#[derive(Debug, Clone, Default)]
pub struct Views {
    pub routes: Arc<RouteTable>,
    pub retained: Arc<RetainedStore>,
    pub registry: Arc<SessionRegistry>,
}

pub struct LocalState {
    node: NodeId,
    views: Views,
    auth: Arc<AuthService>,
    metrics: Arc<Metrics>,
    limits: SessionLimits,
    /// Runtimes of claims proposed on this node, by connection epoch,
    /// installed when the claim applies. At most one per CONNECT in
    /// progress: removed when applied or when the claim fails.
    pending: Mutex<HashMap<Epoch, Arc<Session>>>,
    /// Runtimes of sessions that moved to another node, kept until that
    /// node takes what they still queue (at most one per session; dropped
    /// when taken, when the session ends, or when it comes back here).
    handoff: Mutex<HashMap<ClientId, Arc<Session>>>,
}

impl std::fmt::Debug for LocalState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalState").field("node", &self.node).finish()
    }
}

impl LocalState {
    pub fn new(
        node: NodeId,
        auth: Arc<AuthService>,
        metrics: Arc<Metrics>,
        limits: SessionLimits,
    ) -> LocalState {
        LocalState {
            node,
            views: Views::default(),
            auth,
            metrics,
            limits,
            pending: Mutex::new(HashMap::new()),
            handoff: Mutex::new(HashMap::new()),
        }
    }

    pub fn node(&self) -> NodeId {
        self.node
    }

    pub fn views(&self) -> &Views {
        &self.views
    }

    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.metrics
    }

    pub fn auth(&self) -> &Arc<AuthService> {
        &self.auth
    }

    /// Registers the runtime a claim proposed here installs when it applies.
    pub fn expect_claim(&self, epoch: Epoch, runtime: Arc<Session>) {
        self.pending.lock().insert(epoch, runtime);
    }

    /// Forgets a claim that failed.
    pub fn forget_claim(&self, epoch: Epoch) {
        self.pending.lock().remove(&epoch);
    }

    /// The runtime of a session that moved away, for its new owner.
    pub fn take_handoff(&self, client: &ClientId) -> Option<Arc<Session>> {
        self.handoff.lock().remove(client)
    }

    /// Carries out `changes` of an entry applied at replicated time `time_ms`.
    pub fn apply(&self, time_ms: u64, changes: Vec<StateChange>) {
        let now = Instant::now();
        for change in changes {
            self.apply_one(time_ms, now, change);
        }
    }

    fn apply_one(&self, time_ms: u64, now: Instant, change: StateChange) {
        match change {
            StateChange::SessionClaimed { client, epoch, taken_over, filters, durable, queued } => {
                let runtime = self.claimed(client, epoch, taken_over, &filters, durable);
                if let (Some(r), Some(queued)) = (runtime, queued) {
                    // A session resumed here delivers from its replicated
                    // queue (possibly sent before, by another node).
                    let entries =
                        queued.iter().map(|e| (durable_delivery(e, time_ms, now, true), e.released));
                    r.load_durable(entries.collect());
                }
            }
            StateChange::SessionAdopted { client, owner, orphaned, filters, durable } => {
                self.adopted(client, owner, orphaned, filters, durable)
            }
            StateChange::SessionEnded { client, expired } => self.ended(&client, expired),
            StateChange::SubscriptionAdded { client, owner, filter, subscription, durable } => {
                let target = self.target(&client, owner);
                self.views.routes.insert(&filter, route(client, subscription, target, durable));
            }
            StateChange::Queued { client, incarnation, entry } => {
                if let Some(r) = self.holder(&client, incarnation) {
                    r.enqueue(durable_delivery(&entry, time_ms, now, false));
                }
            }
            StateChange::QueueFull { client, incarnation, qos, counted_by } => {
                let here = match counted_by {
                    Some(node) => node == self.node,
                    None => self.holder(&client, incarnation).is_some(),
                };
                if here {
                    self.metrics.durable_queue_full.fetch_add(1, Ordering::Relaxed);
                    self.metrics.dropped(crate::metrics::DropReason::QueueFull, qos);
                }
            }
            StateChange::Released { client, incarnation, seqs } => {
                if let Some(r) = self.holder(&client, incarnation) {
                    r.release_committed(&seqs);
                }
            }
            StateChange::SubscriptionRemoved { client, filter } => {
                self.views.routes.remove(&filter, &client);
            }
            StateChange::RetainedSet { topic, message } => {
                self.views.retained.set(&topic, message.map(|m| m.to_message(time_ms, now)));
            }
            StateChange::WillPublished { message, counted_by } => {
                if counted_by == Some(self.node) {
                    self.metrics.wills_published.fetch_add(1, Ordering::Relaxed);
                }
                tracing::debug!(topic = %message.topic, publisher = ?message.publisher, "will published");
                deliver_replicated(&self.views.routes, &message.to_message(time_ms, now));
            }
            StateChange::UsersChanged(users) => self.auth.set_replicated_users(users),
            StateChange::AclChanged(rules) => self.auth.set_replicated_rules(rules),
        }
    }

    /// The runtime of session life `incarnation` of `client`, if this node
    /// holds it: the one node that delivers its durable queue. Decided here
    /// rather than from the session record, because the cluster applies
    /// the queues in a Raft group of their own.
    fn holder(&self, client: &ClientId, incarnation: Incarnation) -> Option<Arc<Session>> {
        self.views.registry.get(client).filter(|r| r.durable() == Some(incarnation))
    }

    /// Returns the session's runtime when it is now owned here.
    fn claimed(
        &self,
        client: ClientId,
        epoch: Epoch,
        taken_over: Option<Epoch>,
        filters: &[TopicFilter],
        durable: Option<Incarnation>,
    ) -> Option<Arc<Session>> {
        if let Some(old) = taken_over.filter(|e| e.node == self.node) {
            self.views.registry.kick(&client, Some(old), ReasonCode::SESSION_TAKEN_OVER);
        }
        let target = if epoch.node == self.node {
            self.handoff.lock().remove(&client);
            let runtime = match self.pending.lock().remove(&epoch) {
                Some(r) => {
                    if let Some(prev) = self.views.registry.insert(r.clone()) {
                        if !Arc::ptr_eq(&prev, &r) {
                            prev.mark_ended();
                        }
                    }
                    r
                }
                // Replayed after a restart: no connection waits for it; an
                // offline runtime holds the session's place.
                None => self.runtime(&client),
            };
            runtime.set_durable(durable);
            RouteTarget::Local(runtime)
        } else {
            // The session lives on another node now; what a runtime of it
            // here still queues waits for that node to take it.
            if let Some(s) = self.views.registry.remove(&client) {
                self.handoff.lock().insert(client.clone(), s);
            }
            RouteTarget::Remote(epoch.node)
        };
        for f in filters {
            self.views.routes.retarget(f, &client, target.clone(), durable);
        }
        match target {
            RouteTarget::Local(r) => Some(r),
            _ => None,
        }
    }

    fn adopted(
        &self,
        client: ClientId,
        owner: Option<NodeId>,
        orphaned: Option<Epoch>,
        filters: Vec<TopicFilter>,
        durable: Option<Incarnation>,
    ) {
        if let Some(e) = orphaned.filter(|e| e.node == self.node) {
            // This node was declared gone while the client was still
            // connected here: send it elsewhere; it resumes there.
            self.views.registry.kick(&client, Some(e), ReasonCode::USE_ANOTHER_SERVER);
        }
        let target = match owner {
            Some(n) if n == self.node => {
                let runtime = self.runtime(&client);
                runtime.set_durable(durable);
                RouteTarget::Local(runtime)
            }
            other => {
                if let Some(s) = self.views.registry.remove(&client) {
                    match other {
                        Some(_) => {
                            self.handoff.lock().insert(client.clone(), s);
                        }
                        None => s.mark_ended(),
                    }
                }
                other.map_or(RouteTarget::Unowned, RouteTarget::Remote)
            }
        };
        for f in &filters {
            self.views.routes.retarget(f, &client, target.clone(), durable);
        }
    }

    /// The session is gone: its local runtime ends, and a connection
    /// still attached to it (a clean start elsewhere discarded the
    /// session) closes as taken over.
    fn ended(&self, client: &ClientId, expired: bool) {
        if let Some(s) = self.views.registry.remove(client) {
            s.kick(None, ReasonCode::SESSION_TAKEN_OVER);
            s.mark_ended();
            if expired {
                self.metrics.sessions_expired.fetch_add(1, Ordering::Relaxed);
                tracing::debug!(%client, "session expired");
            }
        }
        self.handoff.lock().remove(client);
    }

    /// The local runtime of `client`, created offline (queueing for its
    /// client) when the session is owned here with no connection.
    fn runtime(&self, client: &ClientId) -> Arc<Session> {
        if let Some(s) = self.views.registry.get(client) {
            return s;
        }
        let s = Arc::new(Session::new(client.clone(), self.limits, self.metrics.clone()));
        self.views.registry.insert(s.clone());
        s
    }

    fn target(&self, client: &ClientId, owner: Option<NodeId>) -> RouteTarget {
        match owner {
            Some(n) if n == self.node => RouteTarget::Local(self.runtime(client)),
            Some(n) => RouteTarget::Remote(n),
            None => RouteTarget::Unowned,
        }
    }

    /// Where the queues are kept apart from the session records (the
    /// cluster's queue group): makes the durable deliveries of the runtime
    /// holding life `incarnation` of `client` what `queue` holds (a claim
    /// loads it this way). `time_ms`: the replicated time now.
    pub fn load_queue(
        &self,
        client: &ClientId,
        incarnation: Incarnation,
        queue: Option<&DurableQueue>,
        time_ms: u64,
    ) {
        let Some(r) = self.holder(client, incarnation) else { return };
        let now = Instant::now();
        let entries = queue.into_iter().flat_map(|q| q.entries().iter());
        r.load_durable(entries.map(|e| (durable_delivery(e, time_ms, now, true), e.released)).collect());
    }

    /// Where the queues are kept apart: every durable runtime here takes
    /// its queue from a whole new queue state (start, snapshot install).
    pub fn reload_queues(&self, queues: &QueueState, time_ms: u64) {
        for r in self.views.registry.all() {
            if let Some(life) = r.durable() {
                self.load_queue(r.client_id(), life, queues.of(r.client_id(), life), time_ms);
            }
        }
    }

    /// Makes the route of `client` for `filter` what its applied session
    /// record says (a provisional route taken back).
    pub fn restore_route(&self, rec: Option<&SessionRecord>, client: &ClientId, filter: &TopicFilter) {
        let durable = |r: &SessionRecord| (r.expiry_interval > 0).then_some(r.incarnation);
        match rec.and_then(|r| r.subscriptions.get(filter).map(|s| (*s, r.owner, durable(r)))) {
            Some((sub, owner, durable)) => {
                let target = self.target(client, owner);
                self.views.routes.insert(filter, route(client.clone(), sub, target, durable));
            }
            None => {
                self.views.routes.remove(filter, client);
            }
        }
    }

    /// Rebuilds every view from a whole state (start, snapshot install).
    /// Local runtimes of sessions still owned here are kept; the others
    /// end, their connections sent elsewhere.
    pub fn rebuild(&self, state: &ReplicatedState) {
        self.auth.set_replicated_users(state.users().clone());
        self.auth.set_replicated_rules(state.acl().to_vec());
        let now = Instant::now();
        self.views.routes.clear();
        self.views.retained.clear();
        for (topic, m) in state.retained() {
            self.views.retained.set(topic, Some(m.to_message(state.time_ms(), now)));
        }
        for s in self.views.registry.all() {
            let kept = state.session(s.client_id()).is_some_and(|r| r.owner == Some(self.node));
            if !kept {
                if let Some(old) = self.views.registry.remove(s.client_id()) {
                    old.kick(None, ReasonCode::USE_ANOTHER_SERVER);
                    old.mark_ended();
                }
            }
        }
        for (client, rec) in state.sessions() {
            let target = self.target(client, rec.owner);
            let durable = (rec.expiry_interval > 0).then_some(rec.incarnation);
            for (filter, sub) in &rec.subscriptions {
                self.views.routes.insert(filter, route(client.clone(), *sub, target.clone(), durable));
            }
            if let RouteTarget::Local(r) = &target {
                r.set_durable(durable);
                if let Some(q) = state.queues().of(client, rec.incarnation) {
                    let entries = q
                        .entries()
                        .iter()
                        .map(|e| (durable_delivery(e, state.time_ms(), now, true), e.released));
                    r.load_durable(entries.collect());
                }
            }
        }
    }
}

fn route(client: ClientId, sub: Subscription, target: RouteTarget, durable: Option<Incarnation>) -> Route {
    Route { client, options: sub.options, subscription_id: sub.id, target, durable }
}

/// A queued durable message as a delivery of this node, its expiry mapped
/// onto this process's clock (`time_ms` replicated is `now`).
fn durable_delivery(e: &QueuedMessage, time_ms: u64, now: Instant, maybe_sent: bool) -> Delivery {
    Delivery {
        message: e.message.to_message(time_ms, now),
        qos: e.qos,
        retain: e.retain,
        subscription_ids: e.subscription_ids.clone(),
        durable: Some(DurableRef { seq: e.seq, maybe_sent }),
    }
}
